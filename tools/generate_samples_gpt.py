"""Generate text from a checkpoint (upstream Megatron-DeepSpeed's tool and flags).

    python tools/generate_samples_gpt.py --load DIR --use-checkpoint-args \\
        --sample-input-file prompts.txt --out-seq-length 64 --greedy
    deepspeed --num_gpus 2 tools/generate_samples_gpt.py --load DIR --use-checkpoint-args \\
        --tensor-model-parallel-size 2 --num-samples 8 --genfile samples.jsonl

Modes, as upstream: `--num-samples N` writes N unconditional samples to `--genfile` as JSON
lines (`text`, `length`, `finished`); otherwise `--sample-input-file` continues each line of
the file (one prompt per line; an empty line is an unconditional prompt) into
`--sample-output-file` (default: the input file + `.out`); with neither, prompts are read
from the terminal. `--out-seq-length` is the number of tokens to generate per prompt.
Unlike upstream, every input line is used (a line containing "stop" does not end the run,
the last line is not dropped) and a prompt too long for the model is an error, not skipped.
An existing output file is kept unless --overwrite-output is given.
"""
from __future__ import annotations

import json
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROGRAM = "generate_samples_gpt.py"


def add_text_generate_args(parser):
    """Upstream's text generation flags, plus --overwrite-output."""
    group = parser.add_argument_group("text generation")
    group.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature.")
    group.add_argument("--greedy", action="store_true", help="Always take the most likely token.")
    group.add_argument("--top_p", type=float, default=0.0,
                       help="Nucleus sampling: keep the most likely tokens up to this probability "
                            "(0: off).")
    group.add_argument("--top_k", type=int, default=0,
                       help="Keep the k most likely tokens (0: off).")
    group.add_argument("--out-seq-length", type=int, default=1024,
                       help="Tokens to generate after each prompt (capped by the model's length).")
    group.add_argument("--sample-input-file", type=str, default=None,
                       help="Prompts, one per line (otherwise interactive).")
    group.add_argument("--sample-output-file", type=str, default=None,
                       help="Where the continuations of --sample-input-file go "
                            "(default: the input file + .out).")
    group.add_argument("--num-samples", type=int, default=0,
                       help="Unconditional samples to write to --genfile (0: conditional mode).")
    group.add_argument("--genfile", type=str, default=None,
                       help="JSON-lines output of the unconditional samples.")
    group.add_argument("--recompute", action="store_true",
                       help="Recompute the whole sequence every step instead of caching keys "
                            "and values (slower; same result).")
    group.add_argument("--overwrite-output", action="store_true",
                       help="Replace an existing --genfile / --sample-output-file.")
    return parser


def _error(message: str) -> None:
    sys.stderr.write(f"{PROGRAM}: error: {message}\n")
    sys.stderr.flush()


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _output_path(args) -> Optional[str]:
    if args.num_samples > 0:
        return args.genfile
    if args.sample_input_file is not None:
        return args.sample_output_file or args.sample_input_file + ".out"
    return None


def check_io_flags(args) -> None:
    """Input/output flags, before anything is loaded. ValueError names the flag."""
    if args.num_samples < 0:
        raise ValueError(f"--num-samples must be >= 0, got {args.num_samples}")
    if args.out_seq_length < 0:
        raise ValueError(f"--out-seq-length must be >= 0, got {args.out_seq_length}")
    if args.num_samples > 0 and not args.genfile:
        raise ValueError("--num-samples needs --genfile, the file the samples are written to")
    if args.num_samples == 0 and args.sample_input_file is not None \
            and not os.path.isfile(args.sample_input_file):
        raise ValueError(f"--sample-input-file {args.sample_input_file}: no such file")
    output = _output_path(args)
    if output is not None and os.path.exists(output) and not args.overwrite_output:
        flag = "--genfile" if args.num_samples > 0 else "--sample-output-file"
        raise ValueError(f"{flag} {output} already exists; pass --overwrite-output to replace it")


def _sampling(args):
    from megatron.inference.sampling import SamplingParams

    return SamplingParams(greedy=args.greedy, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p)


def _generate(setup, prompts: List[List[int]], args, seed: int):
    from megatron.inference.generation import generate

    return generate(setup.model, prompts, tokens_to_generate=args.out_seq_length,
                    vocab_size=setup.vocab_size, max_length=setup.max_length,
                    sampling=_sampling(args), stop_tokens=(setup.tokenizer.eod,), seed=seed,
                    use_cache=not args.recompute)


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _write_atomically(path: str, lines: List[str]) -> None:
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w") as handle:
        handle.writelines(lines)
    os.replace(temporary, path)


def unconditional(setup, args) -> None:
    batch_size = args.micro_batch_size or 1
    eod = setup.tokenizer.eod
    lines = []
    for index, batch in enumerate(_batches(list(range(args.num_samples)), batch_size)):
        for result in _generate(setup, [[eod]] * len(batch), args, seed=args.seed + index):
            lines.append(json.dumps({"text": setup.tokenizer.detokenize(result.generated),
                                     "length": len(result.generated),
                                     "finished": result.finished}) + "\n")
    if _rank() == 0:
        _write_atomically(args.genfile, lines)
        print(f"> wrote {len(lines)} samples to {args.genfile}", flush=True)


def _prompt_tokens(setup, text: str, where: str) -> List[int]:
    try:
        tokens = setup.tokenizer.tokenize(text) if text else [setup.tokenizer.eod]
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    if len(tokens) > setup.max_length:
        raise ValueError(f"{where}: the prompt has {len(tokens)} tokens, more than the model's "
                         f"{setup.max_length} (--max-position-embeddings / --seq-length)")
    return tokens


def conditional_from_file(setup, args) -> None:
    from megatron.inference.generation import share_from_rank_0

    texts = None
    if _rank() == 0:
        with open(args.sample_input_file, encoding="utf-8") as handle:
            texts = [line.rstrip("\n") for line in handle]
    texts = share_from_rank_0(texts)
    prompts = [_prompt_tokens(setup, text, f"--sample-input-file {args.sample_input_file} "
                                           f"line {number}")
               for number, text in enumerate(texts, start=1)]
    out = []
    batch_size = args.micro_batch_size or 1
    for index, (batch_texts, batch) in enumerate(zip(_batches(texts, batch_size),
                                                     _batches(prompts, batch_size))):
        for text, result in zip(batch_texts, _generate(setup, batch, args, seed=args.seed + index)):
            continuation = setup.tokenizer.detokenize(result.generated)
            out.append(f"\nContext:{text}\n\n\nMegatron-LM:{continuation}\n")
    if _rank() == 0:
        output = _output_path(args)
        _write_atomically(output, out)
        print(f"> wrote the continuations of {len(texts)} prompts to {output}", flush=True)


def interactive(setup, args) -> None:
    from megatron.inference.generation import share_from_rank_0

    seed = args.seed
    while True:
        text = None
        if _rank() == 0:
            try:
                text = input("\nContext prompt (an empty input or end of input to exit) >>> ")
            except EOFError:
                text = None
        text = share_from_rank_0(text)
        if not text:
            return
        try:
            prompt = _prompt_tokens(setup, text, "the prompt")
        except ValueError as error:
            if _rank() == 0:
                print(f"{error}; give a shorter one", flush=True)
            continue
        result = _generate(setup, [prompt], args, seed=seed)[0]
        seed += 1
        if _rank() == 0:
            print(f"\nMegatron-LM: {setup.tokenizer.detokenize(result.generated)}", flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    from megatron.arguments import parse_args

    args = parse_args(argv, extra_args_provider=add_text_generate_args,
                      defaults={"tokenizer_type": "GPT2BPETokenizer"})
    try:
        check_io_flags(args)
        _sampling(args)
        from megatron.inference.setup import finish_generation, setup_generation

        setup = setup_generation(args)
        if args.num_samples > 0:
            unconditional(setup, args)
        elif args.sample_input_file is not None:
            conditional_from_file(setup, args)
        else:
            interactive(setup, args)
        finish_generation()
    except (ValueError, FileNotFoundError) as error:
        _error(str(error))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
