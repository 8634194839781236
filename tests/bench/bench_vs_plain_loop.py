"""pretrain_gpt.py against a plain single-file PyTorch loop (plain_gpt_loop.py), 125M shape.

    .venv/bin/python tests/bench/bench_vs_plain_loop.py                 # fp32 and bf16, 2 rounds
    .venv/bin/python tests/bench/bench_vs_plain_loop.py --precisions bf16 --rounds 3

GPT-3 125M (12 layers, hidden 768, 12 heads) at sequence 512, micro = global batch 2, one
process, one thread, with the training flags of examples/ds_pretrain_gpt_125M.sh minus
parallelism (Adam betas 0.9/0.95, weight decay 0.1, clipping 1.0, init std 0.02, cosine
schedule, dropout at its 0.1 default, ZeRO-1, the pipeline engine with one stage; no
activation recompute, which the plain loop does not do either; `--engine zero` takes the
ZeRO engine instead). Both read GPT-2 BPE tokens of the reference corpus (synthetic without
../shared/data). Per precision the two programs run alternately (plain, project, plain,
project, ...); the table gives medians of the iterations after the first `--skip` of every
run. Goal (issue 18): pretrain_gpt.py >= 1.0x the plain loop in fp32 and in bf16.
About 100 s per fp32 run and 60 s per bf16 run on the 2-core machine: ~11 min with defaults.
Profile the project's step with tests/bench/profile_step.py (its docstring).
"""
import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import side_by_side as sbs  # noqa: E402

LAYERS, HIDDEN, HEADS, SEQ, BATCH = 12, 768, 12, 512, 2
EXAMPLE_TRAINING_FLAGS = ["--lr", "6e-4", "--min-lr", "1e-6", "--lr-decay-style", "cosine",
                          "--lr-warmup-iters", "1", "--adam-beta1", "0.9", "--adam-beta2", "0.95",
                          "--init-method-std", "0.02", "--weight-decay", "0.1",
                          "--clip-grad", "1.0", "--hysteresis", "2", "--seed", "1234",
                          "--split", "949,50,1", "--eval-iters", "0", "--log-interval", "1"]


def project_flags(data_flags, *, iters: int, precision: str, engine: str) -> list:
    return ["--num-layers", str(LAYERS), "--hidden-size", str(HIDDEN),
            "--num-attention-heads", str(HEADS), "--seq-length", str(SEQ),
            "--max-position-embeddings", str(SEQ), "--micro-batch-size", str(BATCH),
            "--global-batch-size", str(BATCH), "--train-iters", str(iters),
            "--eval-interval", str(iters * 10), *EXAMPLE_TRAINING_FLAGS, *data_flags,
            "--deepspeed", "--zero-stage", "1",
            *(["--no-pipeline-parallel"] if engine == "zero" else []),
            *(["--bf16"] if precision == "bf16" else [])]


def plain_command(data_flags, *, iters: int, precision: str, retain_freed_memory: bool) -> list:
    data = data_flags[data_flags.index("--data-path") + 1]
    return [sys.executable, str(Path(__file__).resolve().parent / "plain_gpt_loop.py"),
            "--layers", str(LAYERS), "--hidden", str(HIDDEN), "--heads", str(HEADS),
            "--seq", str(SEQ), "--batch", str(BATCH), "--iters", str(iters),
            "--precision", precision, "--data-path", data,
            *(["--retain-freed-memory"] if retain_freed_memory else [])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=2, help="A B pairs per precision")
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--skip", type=int, default=2, help="iterations left out of the median")
    parser.add_argument("--engine", choices=["pipeline", "zero"], default="pipeline")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--plain-retains-freed-memory", action="store_true",
                        help="give the plain loop the malloc policy pretrain_gpt.py uses on CPU")
    args = parser.parse_args()

    tokens = BATCH * SEQ
    flops_per_token = sbs.training_flops_per_token(layers=LAYERS, hidden=HIDDEN, heads=HEADS, seq=SEQ)
    peak = sbs.MachinePeak(args.precisions, threads=1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_vs_plain_loop_") as tmp:
        data_flags = sbs.build_dataset(Path(tmp))
        if "--data-path" in data_flags and "NullTokenizer" in data_flags:
            print("(synthetic tokens: ../shared/data is absent)")
        for precision in args.precisions:
            runs = {"plain": [], "project": []}
            for round_index in range(args.rounds):
                for name in ("plain", "project"):
                    command = (plain_command(data_flags, iters=args.iters, precision=precision,
                                                 retain_freed_memory=args.plain_retains_freed_memory)
                               if name == "plain" else
                               sbs.project_command(1, project_flags(
                                   data_flags, iters=args.iters, precision=precision,
                                   engine=args.engine), port=29581))
                    run = sbs.launch(f"{name} {precision} round {round_index + 1}", command,
                                     threads=1, timeout=args.timeout)
                    sbs.report_failures([run])
                    print(f"  {run.name}: steady ms {[round(ms) for ms in run.steady_ms(args.skip)]}"
                          f", losses {[run.losses.get(i) for i in (1, 2)]}", flush=True)
                    runs[name].append(run)
            plain, project = (sbs.median_tokens_per_second(runs[name], tokens_per_iteration=tokens,
                                                           skip=args.skip)
                              for name in ("plain", "project"))
            rows.append((precision, plain, project))
    peak.measure_again()

    print(f"\n125M (12L h768 s512, batch 2), 1 process x 1 thread, engine: {args.engine}, plain "
          f"loop {'with' if args.plain_retains_freed_memory else 'without'} the CPU malloc policy")
    print(f"machine matmul peak, 1 thread (before / after the runs): {peak.describe()}; MFU = "
          f"tokens/s x {flops_per_token / 1e6:.1f} MFLOP per token / the higher peak")
    print("| precision | plain PyTorch loop tokens/s | pretrain_gpt.py tokens/s | ratio | goal "
          "| MFU plain loop | MFU pretrain_gpt.py |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for precision, plain, project in rows:
        print(f"| {precision} | {sbs.fmt(plain, 1)} | {sbs.fmt(project, 1)} | "
              f"{sbs.ratio(project, plain)} | >= 1.0x | "
              f"{sbs.mfu(plain, flops_per_token, peak.best(precision))} | "
              f"{sbs.mfu(project, flops_per_token, peak.best(precision))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
