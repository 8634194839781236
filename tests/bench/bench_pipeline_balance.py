"""Pipeline balance: PP2 (2 ranks x 1 thread) against 1 rank x 2 threads, tiny GPT, one sitting.

    .venv/bin/python tests/bench/bench_pipeline_balance.py        # both batch settings, 2 rounds
    .venv/bin/python tests/bench/bench_pipeline_balance.py --settings mb16 --rounds 3

Tiny GPT (4 layers, hidden 256, 8 heads, seq 256), fp32, ZeRO-1, GPT-2 BPE on the reference
corpus, this project's pretrain_gpt.py through the deepspeed launcher. Settings: `mb4` = global
batch 16, micro batch 4 (4 micro-batches per step); `mb16` = global batch 32, micro batch 2
(16 micro-batches). Per setting, alternately: 1 rank x 2 threads (--no-pipeline-parallel),
PP2 with DeepSpeed's `parameters` partition (the default) and PP2 with
`--pipeline-partition-method flops` (stages balanced by estimated cost, the LM head counted).
Goals (issue 18): PP2 >= 0.75x the 1-rank tokens/s with 4 micro-batches (1F1B's bubble caps
it at 4/5 = 0.8x with equal stages), >= 0.9x with 16.
About 60-90 s per run on the 2-core machine: 12 runs (~15 min) with the defaults.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import side_by_side as sbs  # noqa: E402

SHAPE = dict(layers=4, hidden=256, heads=8, seq=256)
SETTINGS = {"mb4": (16, 4, 0.75), "mb16": (32, 2, 0.9)}  # global batch, micro batch, goal
VARIANTS = {  # ranks, threads per rank, flags
    "1 rank x 2 threads": (1, 2, ["--no-pipeline-parallel"]),
    "PP2, parameters partition": (2, 1, ["--pipeline-model-parallel-size", "2"]),
    "PP2, flops partition": (2, 1, ["--pipeline-model-parallel-size", "2",
                                    "--pipeline-partition-method", "flops"]),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--skip", type=int, default=3, help="iterations left out of the median")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    args = parser.parse_args()

    flops_per_token = sbs.training_flops_per_token(layers=SHAPE["layers"], hidden=SHAPE["hidden"],
                                                   heads=SHAPE["heads"], seq=SHAPE["seq"])
    peak = sbs.MachinePeak(["fp32"], threads=2)  # every variant uses both cores
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_balance_") as tmp:
        data_flags = sbs.build_dataset(Path(tmp))
        for setting in args.settings:
            global_batch, micro_batch, goal = SETTINGS[setting]
            config = Path(tmp) / f"ds_{setting}.json"
            config.write_text(json.dumps({
                "train_batch_size": global_batch, "train_micro_batch_size_per_gpu": micro_batch,
                "steps_per_print": 1000000, "zero_optimization": {"stage": 1},
                "gradient_clipping": 1.0, "wall_clock_breakdown": False}))
            common = (sbs.model_flags(iters=args.iters, micro_batch=micro_batch,
                                      global_batch=global_batch, **SHAPE)
                      + data_flags + ["--deepspeed", "--deepspeed_config", str(config),
                                      "--zero-stage", "1"])
            runs = {name: [] for name in VARIANTS}
            for round_index in range(args.rounds):
                for name, (ranks, threads, flags) in VARIANTS.items():
                    run = sbs.launch(f"{setting} {name} round {round_index + 1}",
                                     sbs.project_command(ranks, common + flags, port=29591),
                                     threads=threads, timeout=args.timeout)
                    sbs.report_failures([run])
                    print(f"  {run.name}: steady ms {[round(ms) for ms in run.steady_ms(args.skip)]}"
                          f", first losses {[run.losses.get(i) for i in (1, 2)]}", flush=True)
                    runs[name].append(run)
            figures = {name: sbs.median_tokens_per_second(
                found, tokens_per_iteration=global_batch * SHAPE["seq"], skip=args.skip)
                for name, found in runs.items()}
            rows.append((setting, global_batch, micro_batch, goal, figures))
    peak.measure_again()

    names = list(VARIANTS)
    print(f"\nmachine matmul peak, 2 threads (before / after the runs): {peak.describe()}; MFU = "
          f"tokens/s x {flops_per_token / 1e6:.1f} MFLOP per token / the higher peak")
    print("Tiny GPT (4L h256 s256), fp32 ZeRO-1; tokens/s (ratio to 1 rank x 2 threads; MFU)")
    print("| setting | " + " | ".join(names) + " | goal for PP2 |")
    print("| --- " * (len(names) + 2) + "|")
    for setting, global_batch, micro_batch, goal, figures in rows:
        base = figures[names[0]]
        cells = [f"{sbs.fmt(base)} ({sbs.mfu(base, flops_per_token, peak.best('fp32'))})"] + [
            f"{sbs.fmt(figures[name])} ({sbs.ratio(figures[name], base)}; "
            f"{sbs.mfu(figures[name], flops_per_token, peak.best('fp32'))})"
            for name in names[1:]]
        print(f"| {setting}: gbs {global_batch}, mbs {micro_batch} | " + " | ".join(cells)
              + f" | >= {goal}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
