"""Upstream Megatron-DeepSpeed's tool name and flags, run by this project's exporter:

    python tools/convert_checkpoint/deepspeed_to_transformers.py \
        --input_folder CHECKPOINT_DIR --output_folder HF_DIR

is `tools/convert_checkpoint/to_hf.py --load CHECKPOINT_DIR --output HF_DIR`. The input may
be a checkpoint directory (its `latest` names the step) or a `global_stepN` folder. Upstream's
--target_tp / --target_pp (the layout of an intermediate Megatron checkpoint; a transformers
folder is always whole) and --for_release are accepted and have no effect.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir)))

from tools.convert_checkpoint import to_hf  # noqa: E402


def translate(argv: Optional[List[str]] = None) -> List[str]:
    """Upstream's flags -> to_hf.py's."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input_folder", required=True, help="checkpoint directory or global_stepN folder")
    parser.add_argument("--output_folder", required=True, help="transformers folder to create")
    parser.add_argument("--target_tp", type=int, default=1, help="accepted, no effect")
    parser.add_argument("--target_pp", type=int, default=1, help="accepted, no effect")
    parser.add_argument("--for_release", action="store_true", help="accepted, no effect")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    options = parser.parse_args(argv)
    folder = os.path.normpath(options.input_folder)
    load = ["--load", folder]
    if (not os.path.isfile(os.path.join(folder, "latest"))
            and os.path.basename(folder).startswith("global_step")):
        load = ["--load", os.path.dirname(folder) or ".", "--load-tag", os.path.basename(folder)]
    return load + ["--output", options.output_folder] + (["--force"] if options.force else [])


def main(argv: Optional[List[str]] = None) -> int:
    return to_hf.main(translate(argv))


if __name__ == "__main__":
    sys.exit(main())
