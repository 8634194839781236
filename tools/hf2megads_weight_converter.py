"""Upstream Megatron-DeepSpeed's tool name and flags, run by this project's importer:

    python tools/hf2megads_weight_converter.py --hf-ckpt-dir HF_DIR --save DIR \
        --tensor-model-parallel-size T --pipeline-model-parallel-size P

is `tools/convert_checkpoint/from_hf.py --hf HF_DIR --save DIR ...` (one process, no
launcher needed). The model shape comes from HF_DIR/config.json, so upstream's model flags
(--num-layers, --hidden-size, ...) are not needed and are ignored with a note; --load-mode
torchbin reads pytorch_model.bin weights-only (from_hf.py --allow-bin). The reverse direction
(--to-hf-ckpt) prints the to_hf.py command that replaces it.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import List, Optional

sys.path.insert(0, os.path.abspath(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tools.convert_checkpoint import from_hf  # noqa: E402

_PASSED = ("--tensor-model-parallel-size", "--pipeline-model-parallel-size",
           "--make-vocab-size-divisible-by", "--tokenizer-type", "--vocab-file", "--merge-file",
           "--tokenizer-model", "--vocab-size")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf-ckpt-dir", default=None, help="the transformers folder")
    parser.add_argument("--hf-ckpt-num-shards", type=int, default=-1,
                        help="accepted; the shards are found from the folder's index")
    parser.add_argument("--load-mode", choices=["torchbin", "safetensor", "auto"], default=None)
    parser.add_argument("--to-hf-ckpt", action="store_true")
    parser.add_argument("--save", default=None)
    parser.add_argument("--load", default=None)
    parser.add_argument("--no-pipeline-parallel", action="store_true")
    for flag in _PASSED:
        parser.add_argument(flag, default=None)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    options, ignored = _parser().parse_known_args(argv)
    if options.to_hf_ckpt:
        command = ["python", "tools/convert_checkpoint/to_hf.py", "--load",
                   options.load or "CHECKPOINT_DIR", "--output", "HF_DIR"]
        print("hf2megads_weight_converter.py --to-hf-ckpt is replaced by:\n  "
              + " ".join(shlex.quote(part) for part in command), file=sys.stderr)
        return 2
    if not options.hf_ckpt_dir or not options.save:
        print("hf2megads_weight_converter.py: error: --hf-ckpt-dir and --save are required",
              file=sys.stderr)
        return 2
    if ignored:
        print("note: ignored (the model shape comes from config.json): " + " ".join(ignored))
    args = ["--hf", options.hf_ckpt_dir, "--save", options.save]
    for flag in _PASSED:
        value = getattr(options, flag[2:].replace("-", "_"))
        if value is not None:
            args += [flag, value]
    if options.no_pipeline_parallel:
        args.append("--no-pipeline-parallel")
    if options.load_mode == "torchbin":
        args.append("--allow-bin")
    return from_hf.main(args)


if __name__ == "__main__":
    sys.exit(main())
