"""This project against upstream Megatron-DeepSpeed, same flags and data, one sitting.

    .venv/bin/python tests/bench/bench_vs_upstream.py            # 1 rank, TP2, PP2; 2 rounds
    .venv/bin/python tests/bench/bench_vs_upstream.py --layouts tp2 --rounds 3 --iters 15

Tiny GPT (4 layers, hidden 256, 8 heads, seq 256, global batch 16, micro batch 4), fp32,
ZeRO-1, GPT-2 BPE on the reference corpus (synthetic tokens without ../shared/data), both
programs through the deepspeed launcher. Per layout the two programs run alternately
(upstream, this project, upstream, this project, ...), and the table gives the median
tokens/s over iterations after the first `--skip` of every run of a program, and the ratio.
Targets (issue 18): >= 1.25x upstream on 1 rank, >= 1.3x on TP2, >= 1.2x on PP2.
Upstream comes from $UPSTREAM (default /tmp/upstream-mds, set up with
../shared/peer/setup_upstream.sh); without it only this project's figures are printed.
About 80 s per run on the 2-core machine: 12 runs (~16 min) with the defaults.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import side_by_side as sbs  # noqa: E402

SHAPE = dict(layers=4, hidden=256, heads=8, seq=256, micro_batch=4, global_batch=16)
LAYOUTS = {  # ranks, threads per rank, flags, target ratio
    "1": (1, 2, ["--no-pipeline-parallel"], 1.25),
    "tp2": (2, 1, ["--tensor-model-parallel-size", "2", "--no-pipeline-parallel"], 1.3),
    "pp2": (2, 1, ["--pipeline-model-parallel-size", "2"], 1.2),
}


def deepspeed_config(directory: Path) -> str:
    """fp32 ZeRO-1, the peer kit's ds_zero1_fp32.json with this shape's batch sizes."""
    path = directory / "ds_zero1_fp32.json"
    path.write_text(json.dumps({
        "train_batch_size": SHAPE["global_batch"],
        "train_micro_batch_size_per_gpu": SHAPE["micro_batch"],
        "steps_per_print": 1000000, "zero_optimization": {"stage": 1},
        "gradient_clipping": 1.0, "prescale_gradients": False,
        "fp16": {"enabled": False}, "bf16": {"enabled": False}, "wall_clock_breakdown": False}))
    return str(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--rounds", type=int, default=2, help="A B pairs per layout")
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--skip", type=int, default=3, help="iterations left out of the median")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    args = parser.parse_args()

    upstream = sbs.upstream_dir()
    if upstream is None:
        print("no upstream setup ($UPSTREAM or /tmp/upstream-mds): this project only")
    tokens = SHAPE["global_batch"] * SHAPE["seq"]
    flops_per_token = sbs.training_flops_per_token(layers=SHAPE["layers"], hidden=SHAPE["hidden"],
                                                   heads=SHAPE["heads"], seq=SHAPE["seq"])
    peak = sbs.MachinePeak(["fp32"], threads=2)  # every layout uses both cores
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_vs_upstream_") as tmp:
        common = (sbs.model_flags(iters=args.iters, **SHAPE) + sbs.build_dataset(Path(tmp))
                  + ["--deepspeed", "--deepspeed_config", deepspeed_config(Path(tmp)),
                     "--zero-stage", "1"])
        for layout in args.layouts:
            ranks, threads, layout_flags, target = LAYOUTS[layout]
            flags = common + layout_flags
            runs = {"upstream": [], "project": []}
            for round_index in range(args.rounds):
                for name in (("upstream", "project") if upstream else ("project",)):
                    command = (sbs.upstream_command(ranks, flags) if name == "upstream" else
                               sbs.project_command(ranks, flags, port=29571))
                    env = {"UPSTREAM": str(upstream)} if name == "upstream" else {}
                    run = sbs.launch(f"{name} {layout} round {round_index + 1}", command,
                                     threads=threads, timeout=args.timeout, env=env)
                    sbs.report_failures([run])
                    print(f"  {run.name}: iterations {len(run.iteration_ms)}, first losses "
                          f"{[run.losses.get(i) for i in (1, 2, 3)]}, steady ms "
                          f"{[round(ms) for ms in run.steady_ms(args.skip)]}", flush=True)
                    runs[name].append(run)
            figures = {name: sbs.median_tokens_per_second(found, tokens_per_iteration=tokens,
                                                          skip=args.skip)
                       for name, found in runs.items()}
            rows.append((layout, ranks, threads, figures["upstream"], figures["project"], target))
    peak.measure_again()

    print(f"\nmachine matmul peak, 2 threads (before / after the runs): {peak.describe()}; "
          f"MFU = tokens/s x {flops_per_token / 1e6:.1f} MFLOP per token / the higher peak")
    print("| layout | ranks x threads | upstream tokens/s | this project tokens/s | ratio | target "
          "| MFU upstream | MFU this project |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for layout, ranks, threads, theirs, ours, target in rows:
        print(f"| {layout} | {ranks} x {threads} | {sbs.fmt(theirs)} | {sbs.fmt(ours)} | "
              f"{sbs.ratio(ours, theirs)} | >= {target}x | "
              f"{sbs.mfu(theirs, flops_per_token, peak.best('fp32'))} | "
              f"{sbs.mfu(ours, flops_per_token, peak.best('fp32'))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
