r"""Plot and compare training runs from their log files or tensorboard folders.

    python tools/plot_logs.py --run baseline=logs/base.log \
        --run change=logs/part1.log,logs/part2.log --output plots/ [--smooth 10] \
        [--align iters|tokens] [--max-gap 0.05]

A run is `LABEL=PATH[,PATH...]` (or a bare PATH, labelled by its file name): log files of
pretrain_gpt.py or of upstream Megatron-DeepSpeed, and tensorboard folders or event files;
the paths of one resumed run are stitched in order. With `--output DIR` the curves are drawn
into PNG files there, the runs overlaid. A table follows: per run the last and best validation
loss, the mean throughput, and the largest gap between its training loss and the first run's
(at common iterations, or common consumed-token counts with --align tokens; on the curves as
smoothed by --smooth). `--max-gap X` makes the exit status 1 when a gap exceeds X, so that CI
can compare a change with a baseline run.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import log_series  # noqa: E402
from log_series import Gap, Run, Series  # noqa: E402

# file name -> (title, y label, the curve (see `curve`), log scale when all values are > 0)
PLOTS = {
    "train_loss_vs_iteration.png": ("training (and validation) loss", "lm loss", "loss-iters",
                                    False),
    "train_loss_vs_tokens.png": ("training loss", "lm loss", "loss-tokens", False),
    "validation_loss.png": ("validation loss", "lm loss", "validation", False),
    "learning_rate.png": ("learning rate", "learning rate", "learning rate", False),
    "grad_norm.png": ("gradient norm", "grad norm", "grad norm", True),
    "tokens_per_second.png": ("throughput", "tokens/s (all devices)",
                              log_series.TOKENS_PER_SECOND, False),
    "tflops.png": ("throughput", "TFLOP/s per device", "TFLOPs", False),
}


def parse_run_spec(spec: str) -> Tuple[str, List[str]]:
    """`LABEL=PATH[,PATH...]` or `PATH[,PATH...]` (labelled by the first file's name)."""
    label, equals, paths = spec.partition("=")
    if not equals:
        label, paths = "", spec
    files = [path for path in paths.split(",") if path]
    if not files:
        raise ValueError(f"--run {spec!r}: no path given (expected LABEL=PATH[,PATH...])")
    if not label:
        label = os.path.splitext(os.path.basename(os.path.normpath(files[0])))[0]
    return label, files


def curve(run: Run, what: str, *, align: str, window: int) -> Series:
    """The x -> y points a plot or the gap uses for `run`."""
    if what == "loss-iters":
        return log_series.smooth(run.get(log_series.LOSS), window)
    if what == "loss-tokens":
        return log_series.by_tokens(run, log_series.smooth(run.get(log_series.LOSS), window))
    series = run.validation if what == "validation" else log_series.smooth(run.get(what), window)
    return log_series.by_tokens(run, series) if align == "tokens" else series


def _mark_validation_and_resumes(axes, runs: Sequence[Run]) -> None:
    """On the training-loss plot: each run's validation losses as points, and a dashed line
    where a resumed run's later parts start."""
    resume_labelled = False
    for run in runs:
        if run.validation:
            axes.plot(list(run.validation), list(run.validation.values()), linestyle="none",
                      marker="s", markersize=5, label=f"{run.label} validation")
        for iteration in run.resumed_at:
            axes.axvline(iteration, color="gray", linestyle="--", linewidth=1,
                         label=None if resume_labelled else "resumed")
            resume_labelled = True


def write_plots(runs: Sequence[Run], output: str, *, align: str, window: int) -> List[str]:
    """One PNG per plot that some run has data for; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(output, exist_ok=True)
    written = []
    for name, (title, y_label, what, log_y) in PLOTS.items():
        curves = [(run.label, curve(run, what, align=align, window=window)) for run in runs]
        if not any(points for _, points in curves):
            continue
        figure, axes = plt.subplots(figsize=(8, 5))
        for label, points in curves:
            if points:
                marker = "o" if what == "validation" or len(points) < 30 else None
                axes.plot(list(points), list(points.values()), label=label, marker=marker,
                          markersize=3)
        if what == "loss-iters":
            _mark_validation_and_resumes(axes, runs)
        tokens_axis = what == "loss-tokens" or (align == "tokens" and what != "loss-iters")
        axes.set_xlabel("consumed tokens" if tokens_axis else "iteration")
        axes.set_ylabel(y_label)
        smoothed = f" (moving average of {window})" if window > 1 and what != "validation" else ""
        axes.set_title(title + smoothed)
        if log_y and all(v > 0 for _, points in curves for v in points.values()):
            axes.set_yscale("log")
        axes.grid(True, alpha=0.3)
        axes.legend()
        figure.tight_layout()
        path = os.path.join(output, name)
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def gaps(runs: Sequence[Run], *, align: str, window: int) -> Dict[str, Optional[Gap]]:
    """Each run after the first -> its largest training-loss gap to the first run."""
    what = "loss-tokens" if align == "tokens" else "loss-iters"
    reference = curve(runs[0], what, align=align, window=window)
    return {run.label: log_series.largest_gap(reference, curve(run, what, align=align,
                                                                 window=window))
            for run in runs[1:]}


def _loss(series: Series, pick) -> str:
    if not series:
        return "-"
    iteration = pick(series)
    return f"{series[iteration]:.6f} ({iteration})"


def format_table(runs: Sequence[Run], run_gaps: Dict[str, Optional[Gap]], *, align: str) -> str:
    """The summary table, one row per run, columns aligned."""
    where = "tokens" if align == "tokens" else "iter"
    header = ["run", "iterations", "last val loss (iter)", "best val loss (iter)",
              "mean tokens/s", f"max |train loss - {runs[0].label}| (at {where})"]
    rows = [header]
    for index, run in enumerate(runs):
        iterations = run.get(log_series.LOSS) or {it: 0 for it in run.iterations()}
        span = f"{min(iterations)}-{max(iterations)}" if iterations else "-"
        throughput = log_series.mean_throughput(run)
        gap = run_gaps.get(run.label)
        gap_text = ("-" if index == 0 else "no common points" if gap is None
                    else f"{gap.value:.6f} ({gap.at})")
        rows.append([run.label, span,
                     _loss(run.validation, lambda s: max(s)),
                     _loss(run.validation, lambda s: min(s, key=s.get)),
                     "-" if throughput is None else f"{throughput:.1f}", gap_text])
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=PATH[,PATH...]",
                        help="a run: log files and/or tensorboard folders, stitched in order "
                             "(repeat for several runs; the first is the reference for gaps)")
    parser.add_argument("--output", metavar="DIR", help="write the plots (PNG) into DIR")
    parser.add_argument("--smooth", type=int, default=1, metavar="N",
                        help="moving average over N logged points (plots and gaps; default 1: raw)")
    parser.add_argument("--align", choices=("iters", "tokens"), default="iters",
                        help="x axis of the plots and points compared by the gap "
                             "(the training-loss plot exists against both anyway)")
    parser.add_argument("--max-gap", type=float, metavar="X",
                        help="exit 1 when a run's training loss differs from the first run's by "
                             "more than X at a common point (or they share none)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.smooth < 1:
        parser.error(f"--smooth {args.smooth}: must be at least 1")
    if args.max_gap is not None and len(args.run) < 2:
        parser.error("--max-gap needs at least two --run (the first is the reference)")
    runs = []
    try:
        for spec in args.run:
            label, paths = parse_run_spec(spec)
            runs.append(log_series.load_run(label, paths))
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    labels = [run.label for run in runs]
    if len(set(labels)) != len(labels):
        parser.error(f"--run labels must differ: {', '.join(labels)}")
    for run, spec in zip(runs, args.run):
        if not run.series and not run.validation:
            parser.error(f"--run {spec}: no iteration or validation lines found")
    if args.output:
        for path in write_plots(runs, args.output, align=args.align, window=args.smooth):
            print(f"wrote {path}")
    run_gaps = gaps(runs, align=args.align, window=args.smooth)
    print(format_table(runs, run_gaps, align=args.align))
    if args.max_gap is None:
        return 0
    worst = max(((gap.value if gap else math.inf), label) for label, gap in run_gaps.items())
    verdict = "ok" if worst[0] <= args.max_gap else "FAILED"
    print(f"--max-gap {args.max_gap:g}: largest gap {worst[0]:.6f} ({worst[1]} vs "
          f"{runs[0].label}): {verdict}")
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
