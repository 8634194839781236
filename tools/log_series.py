"""A run's curves, read from its log files or tensorboard folders (the logic of plot_logs.py).

Log lines are parsed field by field, by name: a line of this project has every field of
Megatron-DeepSpeed's line plus a few after them (tokens per second per device, MFU); an
upstream line simply lacks those. Tensorboard scalars are mapped onto the same names, so a
run reads the same whichever way it was recorded.

Several sources of one resumed run are stitched in order: each later source replaces
everything the earlier ones hold from its first logged iteration on (a run resumed from an
older checkpoint redoes those iterations).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

Series = Dict[int, float]  # iteration (or consumed tokens) -> value

LOSS = "lm loss"
TOKENS = "consumed tokens"
TOKENS_PER_SECOND = "tokens per second"  # all devices: samples per second x sequence length

_ITERATION = re.compile(r"\biteration\s+(\d+)/\s*(\d+)\s*\|(.*)")
_VALIDATION = re.compile(r"\bvalidation loss at (.*?) \|(.*)")
_PREFIX_ITERATION = re.compile(r"^iteration (\d+)$")
# This project's "> loaded checkpoint global_stepN from DIR at iteration N" and upstream's
# "successfully loaded checkpoint from DIR at iteration N".
_LOADED = re.compile(r"\bloaded checkpoint .* at iteration (\d+)")
_NUMBER = re.compile(r"^[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf)$",
                     re.IGNORECASE)

# tensorboard tag -> (series name, scale); the x of each is the iteration.
_TENSORBOARD_TAGS = {
    "lm-loss-training/lm loss": (LOSS, 1.0),
    "learning-rate/learning-rate": ("learning rate", 1.0),
    "grad-norm/grad-norm": ("grad norm", 1.0),
    "loss-scale/loss-scale": ("loss scale", 1.0),
    "batch-size/batch-size": ("global batch size", 1.0),
    "iteration-time/iteration-time": ("elapsed time per iteration (ms)", 1000.0),
    "world-size/world-size": ("world size", 1.0),
}
# Tags whose step is a count, written at the same calls as "lm loss" (so paired by order).
_TENSORBOARD_COUNTS = {
    "lm-loss-training/lm loss vs tokens": TOKENS,
    "lm-loss-training/lm loss vs samples": "consumed samples",
}
_TENSORBOARD_VALIDATION = "lm-loss-validation/lm loss validation"
_TENSORBOARD_TEST = "lm-loss-validation/lm loss test"


@dataclass
class Run:
    """One run's curves: training fields by their log-line names, validation and test loss."""

    label: str
    series: Dict[str, Series] = field(default_factory=dict)
    validation: Series = field(default_factory=dict)
    test: Series = field(default_factory=dict)
    # First logged iteration of each source: its interval includes start-up, so the mean
    # throughput leaves it out.
    startup_iterations: Set[int] = field(default_factory=set)
    resumed_at: List[int] = field(default_factory=list)
    """Where each later part of a stitched (resumed) run starts: the iteration its log says
    it loaded, else the one before its first logged iteration."""
    loaded_iteration: Optional[int] = None
    """The iteration this log's run resumed from (its checkpoint-loaded line), if any."""

    def get(self, name: str) -> Series:
        return self.series.get(name, {})

    def iterations(self) -> List[int]:
        return sorted(set().union(*self.series.values())) if self.series else []


def _number(text: str) -> Optional[float]:
    text = text.strip().rstrip("%").strip()
    return float(text) if _NUMBER.match(text) else None


def parse_fields(text: str) -> Dict[str, float]:
    """`name: value | name: value | ...` -> {name: value}; parts that are not numbers are skipped."""
    fields = {}
    for part in text.split("|"):
        name, colon, value = part.rpartition(":")
        number = _number(value) if colon else None
        if number is not None and name.strip():
            fields[name.strip()] = number
    return fields


def _add_derived(run: Run) -> None:
    """Tokens per second over all devices, from the fields the log or tensorboard has."""
    samples_per_second = run.get("samples per second")
    seq_length = run.get("actual seqlen")
    derived = {it: value * seq_length[it] for it, value in samples_per_second.items()
               if it in seq_length}
    if not derived:  # tensorboard: tokens per iteration over the iteration's time
        milliseconds, tokens = run.get("elapsed time per iteration (ms)"), run.get(TOKENS)
        previous = None
        for iteration in sorted(tokens):
            if previous is not None and iteration in milliseconds and milliseconds[iteration] > 0:
                per_iteration = (tokens[iteration] - tokens[previous]) / (iteration - previous)
                derived[iteration] = per_iteration / (milliseconds[iteration] / 1000.0)
            previous = iteration
    if derived:
        run.series[TOKENS_PER_SECOND] = derived


def parse_log_lines(lines: Iterable[str], *, label: str = "") -> Run:
    """A run from the lines of one log file (iteration and validation lines; others ignored).

    A validation line whose prefix names no iteration (`the end of training for val data`) is
    placed at the last iteration logged before it; `... for test data` goes to `test`.
    """
    run = Run(label)
    last_iteration: Optional[int] = None
    for line in lines:
        loaded = _LOADED.search(line)
        if loaded and run.loaded_iteration is None and not run.series:
            run.loaded_iteration = int(loaded.group(1))
            continue
        match = _ITERATION.search(line)
        if match:
            last_iteration = int(match.group(1))
            if not run.startup_iterations:
                run.startup_iterations.add(last_iteration)
            for name, value in parse_fields(match.group(3)).items():
                run.series.setdefault(name, {})[last_iteration] = value
            continue
        match = _VALIDATION.search(line)
        if match:
            prefix, fields = match.group(1).strip(), parse_fields(match.group(2))
            at = _PREFIX_ITERATION.match(prefix)
            iteration = int(at.group(1)) if at else last_iteration
            if "lm loss value" in fields and iteration is not None:
                target = run.test if "test data" in prefix else run.validation
                target[iteration] = fields["lm loss value"]
    _add_derived(run)
    return run


def parse_log_file(path: str, *, label: str = "") -> Run:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return parse_log_lines(handle, label=label)


def _event_files(directory: str) -> List[str]:
    """Event files of a tensorboard folder, oldest first (their names hold the start time)."""
    names = [name for name in os.listdir(directory) if "tfevents" in name]

    def started(name: str) -> Tuple[int, str]:
        parts = name.split(".")
        stamp = parts[3] if len(parts) > 3 and parts[3].isdigit() else "0"
        return int(stamp), name

    return [os.path.join(directory, name) for name in sorted(names, key=started)]


def parse_event_file(path: str, *, label: str = "") -> Run:
    """A run from one tensorboard event file, with the tags upstream and this project write."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(path, size_guidance={"scalars": 0})  # 0: keep every event
    accumulator.Reload()
    tags = set(accumulator.Tags().get("scalars", []))
    run = Run(label)

    def events(tag: str):
        return accumulator.Scalars(tag) if tag in tags else []

    for tag, (name, scale) in _TENSORBOARD_TAGS.items():
        for event in events(tag):
            run.series.setdefault(name, {})[event.step] = event.value * scale
    loss_steps = [event.step for event in events("lm-loss-training/lm loss")]
    for tag, name in _TENSORBOARD_COUNTS.items():
        counts = events(tag)
        if len(counts) == len(loss_steps):
            run.series[name] = {step: float(event.step) for step, event in zip(loss_steps, counts)}
    for tag, target in ((_TENSORBOARD_VALIDATION, run.validation), (_TENSORBOARD_TEST, run.test)):
        for event in events(tag):
            target[event.step] = event.value
    iterations = run.iterations()
    if iterations:
        run.startup_iterations.add(iterations[0])
    _add_derived(run)
    return run


def _drop_from(series: Series, first: int) -> None:
    for iteration in [it for it in series if it >= first]:
        del series[iteration]


def stitch(pieces: Sequence[Run], *, label: str) -> Run:
    """One run from its pieces in order; each piece replaces what the earlier ones hold from
    its first logged iteration on."""
    run = Run(label)
    for piece in pieces:
        first = min(piece.iterations(), default=None)
        if first is not None:
            if any(run.series.values()):
                start = piece.loaded_iteration if piece.loaded_iteration is not None else first - 1
                run.resumed_at = [it for it in run.resumed_at if it < start] + [start]
            for series in [*run.series.values(), run.validation, run.test]:
                _drop_from(series, first)
            run.startup_iterations = {it for it in run.startup_iterations if it < first}
        for name, series in piece.series.items():
            run.series.setdefault(name, {}).update(series)
        run.validation.update(piece.validation)
        run.test.update(piece.test)
        run.startup_iterations |= piece.startup_iterations
    run.series = {name: dict(sorted(series.items())) for name, series in run.series.items()
                  if series}
    run.validation = dict(sorted(run.validation.items()))
    run.test = dict(sorted(run.test.items()))
    return run


def load_run(label: str, paths: Sequence[str]) -> Run:
    """A run from log files and tensorboard folders (or event files), stitched in order."""
    pieces = []
    for path in paths:
        if os.path.isdir(path):
            files = _event_files(path)
            if not files:
                raise FileNotFoundError(f"{path}: no tensorboard event files (events.out.tfevents.*)")
            pieces += [parse_event_file(file, label=label) for file in files]
        elif os.path.isfile(path):
            is_events = "tfevents" in os.path.basename(path)
            pieces.append(parse_event_file(path, label=label) if is_events
                          else parse_log_file(path, label=label))
        else:
            raise FileNotFoundError(f"{path}: no such log file or tensorboard folder")
    return stitch(pieces, label=label)


def smooth(series: Series, window: int) -> Series:
    """Trailing moving average over `window` points (fewer at the start)."""
    if window <= 1:
        return dict(series)
    keys, values = list(series), list(series.values())
    smoothed = {}
    for index, key in enumerate(keys):
        chunk = values[max(0, index - window + 1):index + 1]
        smoothed[key] = sum(chunk) / len(chunk)
    return smoothed


def by_tokens(run: Run, series: Series) -> Series:
    """`series` re-keyed by the consumed tokens at each iteration (iterations without a
    consumed-tokens value are dropped)."""
    tokens = run.get(TOKENS)
    return {int(tokens[it]): value for it, value in series.items() if it in tokens}


@dataclass
class Gap:
    """The largest |difference| of two curves at their common x values."""

    value: float
    at: int
    common_points: int


def largest_gap(reference: Series, other: Series) -> Optional[Gap]:
    """None when the curves share no x value; a non-finite value on either side is an
    infinite gap (a diverged run never passes a --max-gap check)."""
    common = sorted(set(reference) & set(other))
    if not common:
        return None
    best = None
    for x in common:
        a, b = reference[x], other[x]
        difference = abs(a - b) if math.isfinite(a) and math.isfinite(b) else math.inf
        if best is None or difference > best.value:
            best = Gap(difference, x, len(common))
    return best


def mean_throughput(run: Run) -> Optional[float]:
    """Mean tokens/s over the logged intervals, the start-up interval of each source left out
    (unless nothing else is left)."""
    values = run.get(TOKENS_PER_SECOND)
    steady = [v for it, v in values.items() if it not in run.startup_iterations] or list(values.values())
    return sum(steady) / len(steady) if steady else None
