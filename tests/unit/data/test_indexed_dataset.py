"""Mmap indexed dataset: byte layout checked by an independent reader/writer written here."""
import struct

import numpy as np
import pytest

from megatron.data import indexed_dataset as ids

CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3,
         np.dtype(np.int32): 4, np.dtype(np.int64): 5, np.dtype(np.float64): 6,
         np.dtype(np.float32): 7, np.dtype(np.uint16): 8}


def parse_idx(path):
    """Independent parse of the .idx layout (docs/formats.md, section 1)."""
    data = open(path, "rb").read()
    assert data[:9] == b"MMIDIDX\x00\x00"
    version, = struct.unpack_from("<Q", data, 9)
    code = data[17]
    n, d = struct.unpack_from("<QQ", data, 18)
    sizes = list(struct.unpack_from(f"<{n}i", data, 34))
    pointers = list(struct.unpack_from(f"<{n}q", data, 34 + 4 * n))
    doc_idx = list(struct.unpack_from(f"<{d}q", data, 34 + 12 * n))
    assert len(data) == 34 + 12 * n + 8 * d
    return version, code, sizes, pointers, doc_idx


def write_raw(prefix, docs, dtype, *, sizes=None, magic=b"MMIDIDX\x00\x00", version=1, code=None,
              bin_extra=b""):
    """Independent writer; `sizes` may differ from the real lengths (upstream EOD defect)."""
    dtype = np.dtype(dtype)
    blob = b"".join(np.asarray(d, dtype=dtype).tobytes() for d in docs) + bin_extra
    lengths = [len(d) for d in docs]
    sizes = lengths if sizes is None else sizes
    pointers = list(np.concatenate([[0], np.cumsum(lengths)[:-1]]) * dtype.itemsize)
    n = len(docs)
    with open(f"{prefix}.idx", "wb") as f:
        f.write(magic + struct.pack("<Q", version) + bytes([code or CODES[dtype]])
                + struct.pack("<QQ", n, n + 1) + struct.pack(f"<{n}i", *sizes)
                + struct.pack(f"<{n}q", *pointers) + struct.pack(f"<{n + 1}q", *range(n + 1)))
    with open(f"{prefix}.bin", "wb") as f:
        f.write(blob)


DOCS = [[5, 6, 7], [1], [9, 8, 7, 6, 5, 4], [65000, 0]]


def test_builder_layout_matches_format(tmp_path):
    prefix = str(tmp_path / "d")
    builder = ids.MMapIndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    builder.add_item(DOCS[0])
    builder.add_item(DOCS[1])
    builder.end_document()
    for doc in DOCS[2:]:
        builder.add_document(doc)
    builder.finalize(prefix + ".idx")
    version, code, sizes, pointers, doc_idx = parse_idx(prefix + ".idx")
    assert (version, code) == (1, 8)
    assert sizes == [3, 1, 6, 2]
    assert pointers == [0, 6, 8, 20]
    assert doc_idx == [0, 2, 3, 4]
    blob = open(prefix + ".bin", "rb").read()
    assert blob == np.array(sum(DOCS, []), dtype="<u2").tobytes()


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64, np.uint8])
def test_reader_round_trip(tmp_path, dtype):
    prefix = str(tmp_path / "d")
    docs = [[d % 200 for d in doc] for doc in DOCS]
    write_raw(prefix, docs, dtype)
    dataset = ids.make_dataset(prefix, "infer")
    assert isinstance(dataset, ids.MMapIndexedDataset)
    assert len(dataset) == 4 and dataset.dtype == np.dtype(dtype)
    assert list(dataset.sizes) == [3, 1, 6, 2]
    assert list(dataset.doc_idx) == [0, 1, 2, 3, 4]
    for i, doc in enumerate(docs):
        assert dataset[i].tolist() == doc
    assert dataset.get(2, offset=1, length=3).tolist() == [8, 7, 6]
    assert dataset.get(2, offset=4).tolist() == [5, 4]
    with pytest.raises(IndexError):
        dataset.get(2, offset=5, length=2)
    assert ids.exists(prefix) and not ids.exists(prefix + "x")


def test_reads_upstream_eod_defect_files(tmp_path):
    """Upstream wrote the EOD to .bin without counting it in sizes; read as the index says."""
    prefix = str(tmp_path / "d")
    docs = [[11, 12, 50256], [13, 14, 15, 50256], [16, 50256]]
    eod_excluded = [2, 3, 1]
    write_raw(prefix, docs, np.uint16, sizes=eod_excluded)
    dataset = ids.MMapIndexedDataset(prefix)
    assert [dataset[i].tolist() for i in range(3)] == [[11, 12], [13, 14, 15], [16]]


def test_bad_files_are_named(tmp_path):
    prefix = str(tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="d.idx"):
        ids.MMapIndexedDataset(prefix)
    write_raw(prefix, DOCS, np.uint16, magic=b"NOTMAGIC!")
    with pytest.raises(ValueError, match="d.idx: wrong magic"):
        ids.MMapIndexedDataset(prefix)
    write_raw(prefix, DOCS, np.uint16, version=2)
    with pytest.raises(ValueError, match="d.idx: unsupported index version 2"):
        ids.MMapIndexedDataset(prefix)
    write_raw(prefix, DOCS, np.uint16, code=9)
    with pytest.raises(ValueError, match="unknown dtype code 9"):
        ids.MMapIndexedDataset(prefix)
    write_raw(prefix, DOCS, np.uint16)
    with open(prefix + ".bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(ValueError, match="d.bin: data file is 10 bytes"):
        ids.MMapIndexedDataset(prefix)
    write_raw(prefix, DOCS, np.uint16)
    (tmp_path / "d.bin").unlink()
    with pytest.raises(FileNotFoundError, match="d.bin"):
        ids.make_dataset(prefix)


def test_merge_concatenates(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_raw(a, DOCS[:2], np.uint16)
    write_raw(b, DOCS[2:], np.uint16)
    out = str(tmp_path / "m")
    builder = ids.MMapIndexedDatasetBuilder(out + ".bin", dtype=np.uint16)
    builder.merge_file_(a)
    builder.merge_file_(b)
    builder.finalize(out + ".idx")
    _, _, sizes, pointers, doc_idx = parse_idx(out + ".idx")
    assert sizes == [3, 1, 6, 2] and doc_idx == [0, 1, 2, 3, 4] and pointers == [0, 6, 8, 20]
    merged = ids.MMapIndexedDataset(out)
    assert [merged[i].tolist() for i in range(4)] == DOCS
    write_raw(b, DOCS[2:], np.int32)
    with pytest.raises(ValueError, match="dtype"):
        builder = ids.MMapIndexedDatasetBuilder(str(tmp_path / "z.bin"), dtype=np.uint16)
        builder.merge_file_(b)


def test_legacy_format_reader(tmp_path):
    prefix = str(tmp_path / "legacy")
    docs = [[3, 4, 5], [6], [7, 8]]
    data_offsets = [0, 3, 4, 6]
    with open(prefix + ".idx", "wb") as f:
        f.write(b"TNTIDX\x00\x00" + struct.pack("<QQQQQQ", 1, 4, 4, 3, 3, 4))
        f.write(struct.pack("<4q", 0, 1, 2, 3))  # dim_offsets
        f.write(struct.pack("<4q", *data_offsets))
        f.write(struct.pack("<3q", 3, 1, 2))  # sizes
        f.write(struct.pack("<4q", 0, 1, 2, 3))  # doc_idx
    with open(prefix + ".bin", "wb") as f:
        f.write(np.array(sum(docs, []), dtype=np.int32).tobytes())
    dataset = ids.make_dataset(prefix, "infer")
    assert isinstance(dataset, ids.LegacyIndexedDataset)
    assert list(dataset.sizes) == [3, 1, 2]
    assert [dataset.get(i).tolist() for i in range(3)] == docs
    assert dataset.get(0, offset=1, length=2).tolist() == [4, 5]


def test_best_fitting_dtype():
    assert ids.best_fitting_dtype(50257) is np.uint16
    assert ids.best_fitting_dtype(65500) is np.int32
    assert ids.best_fitting_dtype(None) is np.int32
