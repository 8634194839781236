"""Checksums of checkpoint files, in one process: the CRC-32 value and what damage is found."""
from megatron.checkpointing.integrity import damaged_files, file_checksum, shared_checksums


def test_checksums_are_the_standard_crc32c_and_crc32(tmp_path):
    path = tmp_path / "check"
    path.write_bytes(b"123456789")  # the standards' check input
    assert file_checksum(str(path)) == "crc32c:e3069283"
    assert file_checksum(str(path), "crc32") == "crc32:cbf43926"


def test_large_files_are_read_in_chunks(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(bytes(range(256)) * (70_000 * 3))  # about 50 MB: several chunks
    import zlib

    assert file_checksum(str(path), "crc32") == f"crc32:{zlib.crc32(path.read_bytes()):08x}"


def test_flipped_byte_truncation_and_missing_file_are_found(tmp_path):
    for name in ("a.pt", "b.pt", "c.pt", "sub/d.pt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(name.encode() * 1000)
    recorded = shared_checksums(str(tmp_path), ["a.pt", "b.pt", "c.pt", "sub/d.pt"])
    assert damaged_files(str(tmp_path), recorded) == []

    data = bytearray((tmp_path / "a.pt").read_bytes())
    data[1234] ^= 0x01
    (tmp_path / "a.pt").write_bytes(bytes(data))
    (tmp_path / "b.pt").write_bytes((tmp_path / "b.pt").read_bytes()[:-1])
    (tmp_path / "sub" / "d.pt").unlink()
    problems = damaged_files(str(tmp_path), recorded)
    assert [p.split(" (")[0] for p in problems] == [
        str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), str(tmp_path / "sub" / "d.pt")]
    assert "recorded crc32c:" in problems[0] and problems[2].endswith("(missing)")


def test_a_record_of_another_algorithm_is_verified_with_it(tmp_path):
    (tmp_path / "a.pt").write_bytes(b"123456789")
    assert damaged_files(str(tmp_path), {"a.pt": "crc32:cbf43926"}) == []
    assert damaged_files(str(tmp_path), {"a.pt": "md5:00"}) == [
        f"{tmp_path / 'a.pt'} (checksum unknown algorithm 'md5', recorded md5:00)"]
