"""tools/plot_logs.py on hand-written logs: field-by-name parsing (this project's lines and
upstream's shorter ones), stitching of a resumed run, the summary table and --max-gap."""
import math

import pytest

from megatron.training.log import IterationReport, format_evaluation_line, format_iteration_line


@pytest.fixture(scope="module")
def series(plot_logs):
    return plot_logs.log_series


def project_line(iteration, loss, *, tokens_per_second=3200.0):
    return format_iteration_line(IterationReport(
        iteration=iteration, train_iters=4, consumed_samples=16 * iteration,
        consumed_tokens=16 * 256 * iteration, elapsed_ms_per_iteration=1250.0,
        learning_rate=1e-4 * iteration, global_batch_size=16, lm_loss=loss, loss_scale=1.0,
        grad_norm=0.5 * iteration, seq_length=256, skipped_iterations=0, nan_iterations=0,
        samples_per_second=tokens_per_second / 256, tflops_per_device=1.5,
        tokens_per_second_per_device=tokens_per_second / 2, mfu=0.25))


def upstream_line(iteration, loss, *, samples_per_second=10.0):
    """Megatron-DeepSpeed's line: it ends at TFLOPs (no tokens per second per device, no MFU)."""
    return (f" iteration {iteration:8d}/{4:8d} | consumed samples: {16 * iteration:12d} |"
            f" consumed tokens: {16 * 256 * iteration:12d} | elapsed time per iteration (ms): 1600.0 |"
            f" learning rate: {1e-4 * iteration:.3E} | global batch size:    16 |"
            f" lm loss: {loss:.6E} | loss scale: 1.0 | grad norm: 0.700 | actual seqlen:   256 |"
            f" number of skipped iterations:   0 | number of nan iterations:   0 |"
            f" samples per second: {samples_per_second:.3f} | TFLOPs: 1.20 |")


def validation_lines(prefix, loss):
    line = format_evaluation_line(prefix, loss)
    return ["-" * len(line), line, "-" * len(line)]


BASE_LOSSES = {1: 10.0, 2: 9.0, 3: 8.0, 4: 7.0}
CHANGE_LOSSES = {1: 10.05, 2: 8.9, 3: 8.25, 4: 7.1}  # largest gap: 0.25 at iteration 3


def write_base(path):
    lines = ["> training ..."]
    for iteration, loss in BASE_LOSSES.items():
        lines.append(project_line(iteration, loss, tokens_per_second=9999.0 if iteration == 1
                                  else 3000.0 + 100 * iteration))
        if iteration % 2 == 0:
            lines += validation_lines(f"iteration {iteration}", loss - 0.5)
    lines += validation_lines("the end of training for val data", 6.4)
    lines += validation_lines("the end of training for test data", 6.3)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def write_change(path):
    lines = [upstream_line(iteration, loss) for iteration, loss in CHANGE_LOSSES.items()]
    lines.insert(2, "[default0]:" + validation_lines("iteration 2", 8.2)[1])
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_fields_are_parsed_by_name(series, tmp_path):
    base = series.parse_log_file(write_base(tmp_path / "base.log"))
    change = series.parse_log_file(write_change(tmp_path / "change.log"))
    assert base.get("lm loss") == BASE_LOSSES
    assert change.get("lm loss") == CHANGE_LOSSES
    assert base.get("tokens per second per device")[3] == 1650.0
    assert base.get("MFU") == {it: 25.0 for it in BASE_LOSSES}
    assert "tokens per second per device" not in change.series and "MFU" not in change.series
    for run in (base, change):
        assert run.get("consumed tokens") == {it: 4096.0 * it for it in BASE_LOSSES}
        assert run.get("learning rate")[2] == 2e-4
        assert run.get("actual seqlen")[4] == 256.0
    assert change.get("TFLOPs")[1] == 1.2 and change.get("grad norm")[4] == 0.7
    # the interval evaluations, then the end-of-training one at the last iteration (it wins)
    assert base.validation == {2: 8.5, 4: 6.4} and base.test == {4: 6.3}
    assert change.validation == {2: 8.2}
    # throughput over all devices (samples/s x seqlen); the start-up line is left out
    assert change.get("tokens per second") == {it: 2560.0 for it in CHANGE_LOSSES}
    assert series.mean_throughput(base) == pytest.approx((3200 + 3300 + 3400) / 3, rel=1e-5)


def test_stitching_a_resumed_run(series, tmp_path):
    first = tmp_path / "part1.log"  # ran to iteration 4, but its last checkpoint was at 2
    first.write_text("\n".join([project_line(it, 10.0 - it) for it in (1, 2, 3, 4)]
                               + validation_lines("iteration 4", 5.0)) + "\n")
    second = tmp_path / "part2.log"
    second.write_text("\n".join([project_line(it, 20.0 - it) for it in (3, 4)]) + "\n")
    run = series.load_run("resumed", [str(first), str(second)])
    assert run.get("lm loss") == {1: 9.0, 2: 8.0, 3: 17.0, 4: 16.0}
    assert run.validation == {}  # iteration 4 of the first part was redone without evaluating
    assert run.startup_iterations == {1, 3}
    assert run.resumed_at == [2]  # the iteration before part 2's first line
    second.write_text("> loaded checkpoint global_step2 from ckpt at iteration 2 (consumed "
                      "samples 16) in 0.1 s\n" + second.read_text())
    assert series.load_run("resumed", [str(first), str(second)]).resumed_at == [2]
    second.write_text(" successfully loaded checkpoint from ckpt at iteration 1\n"
                      + "\n".join([project_line(it, 20.0 - it) for it in (3, 4)]) + "\n")
    assert series.load_run("upstream", [str(first), str(second)]).resumed_at == [1]
    assert series.load_run("one part", [str(first)]).resumed_at == []


def test_table_and_max_gap(plot_logs, tmp_path, capsys):
    runs = ["--run", f"base={write_base(tmp_path / 'base.log')}",
            "--run", f"change={write_change(tmp_path / 'change.log')}"]
    assert plot_logs.main(runs) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split("  ")[0] == "run" and "max |train loss - base| (at iter)" in table[0]
    base_row, change_row = table[1].split(), table[2].split()
    assert base_row == ["base", "1-4", "6.400000", "(4)", "6.400000", "(4)", "3300.0", "-"]
    assert change_row == ["change", "1-4", "8.200000", "(2)", "8.200000", "(2)", "2560.0",
                          "0.250000", "(3)"]

    assert plot_logs.main(runs + ["--max-gap", "0.3"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(": ok")
    assert plot_logs.main(runs + ["--max-gap", "0.2"]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        "--max-gap 0.2: largest gap 0.250000 (change vs base): FAILED")


def test_smoothing_and_token_alignment(plot_logs, series, tmp_path):
    base = series.load_run("base", [write_base(tmp_path / "base.log")])
    change = series.load_run("change", [write_change(tmp_path / "change.log")])
    gap = plot_logs.gaps([base, change], align="tokens", window=1)["change"]
    assert (gap.value, gap.at, gap.common_points) == (pytest.approx(0.25), 3 * 4096, 4)
    smoothed = plot_logs.gaps([base, change], align="iters", window=2)["change"]
    # moving averages: base 10, 9.5, 8.5, 7.5; change 10.05, 9.475, 8.575, 7.675
    assert (smoothed.value, smoothed.at) == (pytest.approx(0.175), 4)
    assert series.smooth({1: 1.0, 2: 3.0, 3: 5.0}, 2) == {1: 1.0, 2: 2.0, 3: 4.0}


def test_a_diverged_run_fails_the_gap_check(series):
    gap = series.largest_gap({1: 2.0, 2: 1.5}, {1: 2.0, 2: math.nan})
    assert (gap.value, gap.at) == (math.inf, 2)
    assert series.largest_gap({1: 2.0}, {2: 2.0}) is None


def test_plots_from_logs(plot_logs, tmp_path, capsys):
    runs = ["--run", f"base={write_base(tmp_path / 'base.log')}",
            "--run", f"change={write_change(tmp_path / 'change.log')}"]
    assert plot_logs.main(runs + ["--output", str(tmp_path / "plots"), "--smooth", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(plot_logs.PLOTS)
    for path in (tmp_path / "plots").iterdir():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_user_errors(plot_logs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plot_logs.main(["--run", f"a={tmp_path / 'missing.log'}"])
    assert exit_info.value.code == 2
    assert "missing.log: no such log file or tensorboard folder" in capsys.readouterr().err
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    with pytest.raises(SystemExit):
        plot_logs.main(["--run", str(empty)])
    assert "--run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plot_logs.main(["--run", str(empty), "--max-gap", "0.1"])
    assert "--max-gap needs at least two --run" in capsys.readouterr().err
    assert plot_logs.parse_run_spec("logs/a.log,logs/b.log") == ("a", ["logs/a.log", "logs/b.log"])
