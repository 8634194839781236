"""Concatenate mmap indexed datasets into one (`--input DIR` as upstream, or `--datasets`)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir)))

from megatron.data import indexed_dataset  # noqa: E402


def _prefixes_in(directory: str) -> List[str]:
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"--input {directory}: not a directory")
    prefixes = sorted(os.path.join(directory, name[:-4]) for name in os.listdir(directory)
                      if name.endswith(".idx"))
    missing = [p for p in prefixes if not os.path.isfile(p + ".bin")]
    if missing:
        raise FileNotFoundError(f"--input {directory}: no .bin for {', '.join(missing)}")
    if not prefixes:
        raise FileNotFoundError(f"--input {directory}: no .idx/.bin pairs found")
    return prefixes


def merge(prefixes: Sequence[str], output_prefix: str) -> None:
    """Write `output_prefix`.bin/.idx holding every dataset of `prefixes`, in order."""
    first = indexed_dataset.MMapIndexedDataset(prefixes[0])
    bin_path = indexed_dataset.data_file_path(output_prefix)
    idx_path = indexed_dataset.index_file_path(output_prefix)
    tag = f".tmp{os.getpid()}"
    builder = indexed_dataset.MMapIndexedDatasetBuilder(bin_path + tag, dtype=first.dtype)
    try:
        for prefix in prefixes:
            builder.merge_file_(prefix)
        builder.finalize(idx_path + tag)
        os.replace(bin_path + tag, bin_path)
        os.replace(idx_path + tag, idx_path)
    finally:
        builder._file.close()
        for path in (bin_path + tag, idx_path + tag):
            if os.path.exists(path):
                os.remove(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="directory whose .bin/.idx pairs are merged (sorted)")
    source.add_argument("--datasets", nargs="+", help="dataset prefixes, merged in this order")
    parser.add_argument("--output-prefix", required=True)
    args = parser.parse_args(argv)
    try:
        prefixes = args.datasets or _prefixes_in(args.input)
        merge(prefixes, args.output_prefix)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"merged {len(prefixes)} datasets into {args.output_prefix}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
