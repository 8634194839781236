"""Start-up time: launch -> first iteration's log line for the demo model, against `import deepspeed`.

    .venv/bin/python tests/bench/bench_startup.py               # 3 launches of each
    .venv/bin/python tests/bench/bench_startup.py --repeats 5

The demo model of examples/demo.sh (4 layers, hidden 256, 8 heads, seq 256, global batch 16,
micro batch 4, PP2 on 2 CPU ranks x 1 thread, ZeRO-1, fp32) through the `deepspeed` launcher,
on GPT-2 BPE tokens of the reference corpus (synthetic without ../shared/data; the demo's own
SentencePiece corpus takes minutes to build and is not what is timed here), two iterations.
Printed, as medians: `import deepspeed` alone in a fresh interpreter; the launch to the
"> training ..." line (everything before the first step) and to the first iteration's log line;
the first iteration's own time (from its log line); and what the project adds beyond one
`import deepspeed`: the time to "> training ..." minus three imports of deepspeed (the
launcher, its per-node launch script and the ranks each import it, one after the other).
Goal (issue 18): under 10 s beyond `import deepspeed`. About 20 s per launch here.
Find slow imports with `.venv/bin/python -X importtime pretrain_gpt.py --help 2>imports.txt`.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import side_by_side as sbs  # noqa: E402

TRAINING_MARKER = "> training ..."


def import_seconds(module: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per launch")
    args = parser.parse_args()

    imports, launches = [], []
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        config = Path(tmp) / "ds_config.json"
        config.write_text(json.dumps({
            "train_batch_size": 16, "train_micro_batch_size_per_gpu": 4,
            "steps_per_print": 1000000, "zero_optimization": {"stage": 1},
            "gradient_clipping": 1.0, "wall_clock_breakdown": False}))
        flags = (sbs.model_flags(layers=4, hidden=256, heads=8, seq=256, micro_batch=4,
                                 global_batch=16, iters=2)
                 + sbs.build_dataset(Path(tmp))
                 + ["--pipeline-model-parallel-size", "2", "--deepspeed",
                    "--deepspeed_config", str(config), "--zero-stage", "1"])
        for repeat in range(args.repeats):  # alternate, so both see the same machine load
            imports.append(import_seconds("deepspeed"))
            run = sbs.launch(f"demo model launch {repeat + 1}",
                             sbs.project_command(2, flags, port=29601), threads=1,
                             timeout=args.timeout, markers=[TRAINING_MARKER])
            sbs.report_failures([run])
            launches.append(run)
            print(f"  import deepspeed {imports[-1]:.2f} s; launch -> '> training ...' "
                  f"{sbs.fmt(run.seconds_to_marker.get(TRAINING_MARKER), 2)} s, -> first "
                  f"iteration line {sbs.fmt(run.seconds_to_first_iteration, 2)} s", flush=True)

    def median(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    import_s = median(imports)
    to_training = median([r.seconds_to_marker.get(TRAINING_MARKER) for r in launches])
    to_first = median([r.seconds_to_first_iteration for r in launches])
    first_iteration = median([r.iteration_ms.get(1, 0.0) / 1000.0 for r in launches])
    beyond = None if to_training is None else to_training - 3 * import_s
    print("\n| figure (median of %d) | seconds |" % args.repeats)
    print("| --- | --- |")
    print(f"| import deepspeed (fresh interpreter) | {sbs.fmt(import_s, 2)} |")
    print(f"| launch -> '> training ...' (PP2 demo model, deepspeed launcher) | {sbs.fmt(to_training, 2)} |")
    print(f"| launch -> first iteration's log line | {sbs.fmt(to_first, 2)} |")
    print(f"| first iteration itself (its log line) | {sbs.fmt(first_iteration, 2)} |")
    print(f"| project's start-up beyond import deepspeed (to '> training ...' minus 3 imports) "
          f"| {sbs.fmt(beyond, 2)} (goal < 10) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
