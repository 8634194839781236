"""Import a Hugging Face transformers model folder (GPT2LMHeadModel or LlamaForCausalLM) as a
checkpoint that `pretrain_gpt.py --load DIR --finetune` loads at the chosen layout, and print
the model flags that run needs.

    python tools/convert_checkpoint/from_hf.py --hf HF_DIR --save DIR \
        --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2

Nothing from the folder runs: config.json is read as JSON, weights from safetensors
(`pytorch_model.bin` pickles only with --allow-bin, weights-only with the checkpoint
allow-list). The tokenizer flags follow the folder (tokenizer.json -> HFTokenizer, vocab.json
+ merges.txt -> GPT2BPETokenizer, tokenizer.model -> GPTSentencePieceTokenizer, none ->
NullTokenizer) unless given. The pipeline engine's files are written (the default of
pretrain_gpt.py); --no-pipeline-parallel writes the ZeRO engine's instead.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Callable, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir)))

import torch  # noqa: E402

from megatron.checkpointing import ModelFingerprint  # noqa: E402
from megatron.conversion import hf_mapping  # noqa: E402
from megatron.conversion.checkpoint_writer import check_output_dir, write_checkpoint  # noqa: E402
from megatron.conversion.hf_folder import HFWeights, read_json  # noqa: E402
from tools.convert_checkpoint._common import (add_tokenizer_flags,  # noqa: E402
                                              build_tokenizer_or_refuse, run_tool,
                                              tokenizer_flags)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf", required=True, help="transformers model folder (config.json + weights)")
    parser.add_argument("--save", required=True, help="checkpoint directory to create")
    parser.add_argument("--tensor-model-parallel-size", type=int, default=1)
    parser.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    parser.add_argument("--no-pipeline-parallel", action="store_true",
                        help="write the ZeRO engine's files (pretrain_gpt.py --no-pipeline-parallel)")
    parser.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default=None,
                        help="cast the weights (default: keep the folder's dtype)")
    parser.add_argument("--allow-bin", action="store_true",
                        help="read pytorch_model.bin pickles (weights only, with the allow-list)")
    parser.add_argument("--force", action="store_true", help="replace an existing --save folder")
    add_tokenizer_flags(parser)
    return parser


def _weight_lookup(weights: HFWeights, shape: hf_mapping.ModelShape) -> Callable[[str], str]:
    """transformers name -> the name in the files (GPT-2 files from older releases lack the
    `transformer.` prefix); refuses missing, misshapen or unused tensors first."""
    available = set(weights.names())
    bare_gpt2 = (shape.architecture == hf_mapping.GPT2 and "transformer.wte.weight" not in available
                 and "wte.weight" in available)

    def resolve(name: str) -> str:
        if bare_gpt2 and name.startswith("transformer."):
            return name[len("transformer."):]
        return name

    expected = hf_mapping.hf_tensor_shapes(shape)
    missing = [name for name, _ in expected if resolve(name) not in available]
    if missing:
        raise ValueError(f"--hf {weights.folder}: tensors missing from the weight files: "
                         + ", ".join(missing[:3]) + (f" and {len(missing) - 3} more"
                                                     if len(missing) > 3 else ""))
    for name, wanted in expected:
        found = weights.shape(resolve(name))
        if tuple(found) != tuple(wanted):
            raise ValueError(f"--hf {weights.folder}: {name} has shape {tuple(found)}, "
                             f"config.json implies {tuple(wanted)}")
    used = {resolve(name) for name, _ in expected}
    if not shape.untied:
        used |= {"lm_head.weight"}  # a tied head some files store as well
    unused = sorted(name for name in available - used if not hf_mapping.is_ignored_hf_tensor(name))
    if unused:
        raise ValueError(f"--hf {weights.folder}: the weight files hold tensors this "
                         f"{shape.architecture} mapping would drop: " + ", ".join(unused[:3]))
    return resolve


def _tokenizer_choice(options: argparse.Namespace, shape: hf_mapping.ModelShape) -> Dict:
    """Tokenizer keyword arguments: the flags given, else what the folder holds."""
    if options.tokenizer_type is not None:
        return dict(tokenizer_type=options.tokenizer_type, vocab_file=options.vocab_file,
                    merge_file=options.merge_file, tokenizer_model=options.tokenizer_model,
                    vocab_size=options.vocab_size)
    folder = os.path.abspath(options.hf)
    has = lambda name: os.path.isfile(os.path.join(folder, name))  # noqa: E731
    if has("tokenizer.json"):
        return dict(tokenizer_type="HFTokenizer", tokenizer_model=folder)
    if has("vocab.json") and has("merges.txt"):
        return dict(tokenizer_type="GPT2BPETokenizer", vocab_file=os.path.join(folder, "vocab.json"),
                    merge_file=os.path.join(folder, "merges.txt"))
    if has("tokenizer.model"):
        return dict(tokenizer_type="GPTSentencePieceTokenizer",
                    tokenizer_model=os.path.join(folder, "tokenizer.model"))
    # No tokenizer files: ids as integers, the last id of the vocabulary ending documents.
    return dict(tokenizer_type="NullTokenizer", vocab_size=shape.vocab_size - 1)


def _layout_flags(options: argparse.Namespace) -> List[str]:
    flags = ["--tensor-model-parallel-size", str(options.tensor_model_parallel_size),
             "--pipeline-model-parallel-size", str(options.pipeline_model_parallel_size)]
    return flags + (["--no-pipeline-parallel"] if options.no_pipeline_parallel else [])


def _model_config(flags: List[str], shape: hf_mapping.ModelShape, options: argparse.Namespace,
                  padded_vocab_size: int) -> Tuple[argparse.Namespace, ModelFingerprint]:
    """The run's args and fingerprint, validated the way pretrain_gpt.py validates them."""
    from megatron.arguments import parse_args
    from megatron.config.model import build_model_config

    args = parse_args(flags + ["--seq-length", str(shape.max_position_embeddings)])
    pipeline = 1 if options.no_pipeline_parallel else options.pipeline_model_parallel_size
    config = build_model_config(args, tensor_model_parallel_size=options.tensor_model_parallel_size,
                                pipeline_model_parallel_size=pipeline,
                                params_dtype=torch.float32).with_padded_vocab_size(padded_vocab_size)
    args.padded_vocab_size = padded_vocab_size
    return args, ModelFingerprint.of(config)


def convert(options: argparse.Namespace) -> List[str]:
    """Write the checkpoint; returns the flags a run loading it needs."""
    check_output_dir(options.save, force=options.force, flag="--save")
    if options.no_pipeline_parallel and options.pipeline_model_parallel_size != 1:
        raise ValueError("--no-pipeline-parallel needs --pipeline-model-parallel-size 1")
    if not os.path.isdir(options.hf):
        raise ValueError(f"--hf {options.hf}: no such directory")
    shape = hf_mapping.shape_from_hf_config(read_json(os.path.join(options.hf, "config.json")))
    weights = HFWeights(options.hf, allow_bin=options.allow_bin)
    resolve = _weight_lookup(weights, shape)
    choice = _tokenizer_choice(options, shape)
    tokenizer = build_tokenizer_or_refuse(
        make_vocab_size_divisible_by=options.make_vocab_size_divisible_by,
        tensor_model_parallel_size=options.tensor_model_parallel_size, **choice)
    padded = tokenizer.padded_vocab_size
    if shape.vocab_size > padded:
        raise ValueError(f"config.json vocab_size {shape.vocab_size} exceeds the padded "
                         f"vocabulary {padded} of the tokenizer ({choice['tokenizer_type']}, "
                         f"{tokenizer.vocab_size} entries)")
    flags = (hf_mapping.megatron_flags(shape) + tokenizer_flags(**choice)
             + ["--make-vocab-size-divisible-by", str(options.make_vocab_size_divisible_by)]
             + _layout_flags(options))
    args, fingerprint = _model_config(flags, shape, options, padded)
    dtype = _DTYPES.get(options.dtype)

    def get(name: str) -> torch.Tensor:
        tensor = weights.get(resolve(name))
        return tensor if dtype is None else tensor.to(dtype)

    write_checkpoint(options.save,
                     lambda: hf_mapping.import_tensors(shape, get, padded_vocab_size=padded),
                     args=args, fingerprint=fingerprint,
                     pipeline_engine=not options.no_pipeline_parallel,
                     swiglu=shape.architecture == hf_mapping.LLAMA, force=options.force)
    if tokenizer.vocab_size != shape.vocab_size:
        print(f"note: the tokenizer has {tokenizer.vocab_size} entries and the model "
              f"{shape.vocab_size} embedding rows")
    return flags


def main(argv: Optional[List[str]] = None) -> int:
    options = build_parser().parse_args(argv)
    flags: List[str] = []

    def body() -> None:
        flags.extend(convert(options))

    code = run_tool("from_hf.py", body)
    if code == 0:
        print(f"wrote {options.save}; load it with:")
        print("  pretrain_gpt.py --load " + shlex.quote(options.save) + " --finetune "
              + " ".join(shlex.quote(flag) for flag in flags))
        print("  (--finetune, or --no-load-optim to continue pretraining; add the data, "
              "batch and schedule flags, --seq-length up to "
              f"{_max_positions(flags)})")
    return code


def _max_positions(flags: List[str]) -> str:
    return flags[flags.index("--max-position-embeddings") + 1]


if __name__ == "__main__":
    sys.exit(main())
