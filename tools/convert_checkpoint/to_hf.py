"""Export a checkpoint of any layout (TP x PP, either engine, this project's or upstream
Megatron-DeepSpeed's) as a Hugging Face transformers model folder.

    python tools/convert_checkpoint/to_hf.py --load DIR [--load-tag TAG] --output HF_DIR

Writes config.json, model.safetensors (model-0000i-of-0000N.safetensors plus the index
above --max-shard-size), generation_config.json and, for GPT-2 BPE, SentencePiece and HF
tokenizers, the tokenizer files. Learned positions + LayerNorm + GeLU become
GPT2LMHeadModel; rotary + SwiGLU + RMSNorm become LlamaForCausalLM (grouped-query attention,
tied or untied head, with or without biases); anything else is refused naming the flag.
Padded vocabulary rows are dropped. Tensors stream one at a time from the checkpoint to the
files.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir)))

import torch  # noqa: E402

from megatron.conversion import hf_mapping  # noqa: E402
from megatron.conversion.checkpoint_reader import open_checkpoint  # noqa: E402
from megatron.conversion.checkpoint_writer import StagingFolder, check_output_dir  # noqa: E402
from megatron.conversion.hf_folder import (DEFAULT_MAX_SHARD_BYTES,  # noqa: E402
                                           SafetensorsWriter, parse_size, write_json)
from tools.convert_checkpoint._common import (add_tokenizer_flags,  # noqa: E402
                                              build_tokenizer_or_refuse, copy_file, run_tool)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", required=True, help="checkpoint directory")
    parser.add_argument("--load-tag", default=None, help="tag folder (default: latest)")
    parser.add_argument("--output", required=True, help="transformers folder to create")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default=None,
                        help="cast the weights (default: the checkpoint's dtype)")
    parser.add_argument("--max-shard-size", default=str(DEFAULT_MAX_SHARD_BYTES),
                        help="largest safetensors file, e.g. 5GB (default 5 GiB)")
    parser.add_argument("--no-verify-checkpoint", action="store_true",
                        help="skip the checksums of the checkpoint's files")
    parser.add_argument("--force", action="store_true", help="replace an existing --output")
    add_tokenizer_flags(parser)
    return parser


def run_tokenizer(options: argparse.Namespace, saved: argparse.Namespace):
    """The run's tokenizer (flags given here override the saved paths)."""
    tokenizer_type = options.tokenizer_type or getattr(saved, "tokenizer_type", None)
    if tokenizer_type is None:
        raise ValueError("the checkpoint's args name no tokenizer; pass --tokenizer-type")
    pick = lambda name: getattr(options, name) or getattr(saved, name, None)  # noqa: E731
    return tokenizer_type, build_tokenizer_or_refuse(
        tokenizer_type, vocab_file=pick("vocab_file"), merge_file=pick("merge_file"),
        tokenizer_model=pick("tokenizer_model"), vocab_size=pick("vocab_size"),
        make_vocab_size_divisible_by=int(getattr(saved, "make_vocab_size_divisible_by", 128)),
        tensor_model_parallel_size=int(getattr(saved, "tensor_model_parallel_size", 1) or 1),
        vocab_extra_ids=int(getattr(saved, "vocab_extra_ids", 0) or 0))


def write_tokenizer_files(folder: str, tokenizer_type: str, tokenizer, options: argparse.Namespace,
                          saved: argparse.Namespace, max_length: int) -> List[str]:
    """Copy the tokenizer's files with a tokenizer_config.json transformers understands."""
    pick = lambda name: getattr(options, name) or getattr(saved, name, None)  # noqa: E731
    eos = None
    if tokenizer_type == "GPT2BPETokenizer":
        copy_file(pick("vocab_file"), folder, "vocab.json")
        copy_file(pick("merge_file"), folder, "merges.txt")
        eos = "<|endoftext|>"
        config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False,
                  "bos_token": eos, "eos_token": eos, "unk_token": eos}
    elif tokenizer_type in ("SentencePieceTokenizer", "GPTSentencePieceTokenizer"):
        copy_file(pick("tokenizer_model"), folder, "tokenizer.model")
        config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": False,
                  "add_eos_token": False, "eos_token": tokenizer.detokenize([tokenizer.eod])}
    elif tokenizer_type == "HFTokenizer":
        source = pick("tokenizer_model")
        directory = source if os.path.isdir(source) else os.path.dirname(source)
        copy_file(os.path.join(source, "tokenizer.json") if os.path.isdir(source) else source,
                  folder, "tokenizer.json")
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if os.path.isfile(os.path.join(directory, name)):
                copy_file(os.path.join(directory, name), folder, name)
        if os.path.isfile(os.path.join(folder, "tokenizer_config.json")):
            return ["tokenizer.json", "tokenizer_config.json"]
        config = {"tokenizer_class": "PreTrainedTokenizerFast"}
    else:
        return []
    config["model_max_length"] = max_length
    write_json(os.path.join(folder, "tokenizer_config.json"), config)
    return sorted(name for name in os.listdir(folder) if "token" in name or name in
                  ("vocab.json", "merges.txt"))


def convert(options: argparse.Namespace) -> None:
    check_output_dir(options.output, force=options.force, flag="--output")
    max_shard_bytes = parse_size(options.max_shard_size)
    checkpoint = open_checkpoint(options.load, load_tag=options.load_tag,
                                 verify_checksums=not options.no_verify_checkpoint)
    hf_mapping.architecture_of_args(checkpoint.args)  # refuse before building anything
    tokenizer_type, tokenizer = run_tokenizer(options, checkpoint.args)
    shape = hf_mapping.shape_from_args(checkpoint.args, vocab_size=tokenizer.vocab_size)
    tensors = checkpoint.tensors()
    first = next(tensors)
    dtype = _DTYPES[options.dtype] if options.dtype else first[1].dtype
    with StagingFolder(options.output) as staging:
        writer = SafetensorsWriter(staging.path, hf_mapping.hf_tensor_shapes(shape), dtype,
                                   max_shard_bytes=max_shard_bytes)
        for name, tensor in itertools.chain([first], tensors):
            for hf_name, hf_tensor in hf_mapping.export_tensor(shape, name, tensor):
                writer.write(hf_name, hf_tensor)
        files = writer.finish()
        eod = tokenizer.eod
        write_json(os.path.join(staging.path, "config.json"),
                   hf_mapping.hf_config(shape, dtype=dtype, eos_token_id=eod))
        write_json(os.path.join(staging.path, "generation_config.json"),
                   {"bos_token_id": eod, "eos_token_id": eod})
        files += write_tokenizer_files(staging.path, tokenizer_type, tokenizer, options,
                                       checkpoint.args, shape.max_position_embeddings)
        staging.commit()
    print(f"wrote {shape.architecture} ({shape.num_layers} layers, vocabulary "
          f"{shape.vocab_size}, {str(dtype).replace('torch.', '')}) from {checkpoint.tag} of "
          f"{options.load} to {options.output}: config.json, generation_config.json, "
          + ", ".join(files))


def main(argv: Optional[List[str]] = None) -> int:
    options = build_parser().parse_args(argv)
    return run_tool("to_hf.py", lambda: convert(options))


if __name__ == "__main__":
    sys.exit(main())
