"""tools/plot_logs.py on real runs of pretrain_gpt.py: a straight 6-iteration run (log file and
tensorboard folder) and the same run stopped after 3 iterations and resumed (two log files)."""
from pathlib import Path

import pytest

from tests.functional.launch import (field_by_iteration, losses_by_iteration, run_pretrain,
                                     tiny_gpt_args, validation_results, write_random_dataset)

pytestmark = pytest.mark.slow

ITERATIONS = 6


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: log path}, plus the tensorboard folders, of the straight and the resumed run."""
    root = tmp_path_factory.mktemp("plot_logs")
    dataset = write_random_dataset(root / "random_text_document")

    def launch(name, *extra):
        output = run_pretrain(tiny_gpt_args(dataset, train_iters=ITERATIONS, extra=[
            "--eval-interval", "2", "--log-timers-to-tensorboard", *extra]))
        (root / f"{name}.log").write_text(output)
        return str(root / f"{name}.log")

    checkpoints = str(root / "checkpoints")
    logs = {
        "straight": launch("straight", "--tensorboard-dir", str(root / "tb_straight")),
        "part1": launch("part1", "--tensorboard-dir", str(root / "tb_resumed"),
                        "--save", checkpoints, "--save-interval", "100", "--exit-interval", "3"),
        "part2": launch("part2", "--tensorboard-dir", str(root / "tb_resumed"),
                        "--load", checkpoints),
    }
    return root, logs


def test_plots_and_table_of_a_run_and_its_resumed_twin(plot_logs, runs, capsys):
    root, logs = runs
    code = plot_logs.main(["--run", f"straight={logs['straight']}",
                           "--run", f"resumed={logs['part1']},{logs['part2']}",
                           "--output", str(root / "plots"), "--max-gap", "0"])
    output = capsys.readouterr().out
    assert code == 0, output  # resuming is bit-identical on CPU in fp32: no gap at all
    rows = {line.split()[0]: line.split() for line in output.splitlines()[-4:-1]}
    assert rows["resumed"][-2:] == ["0.000000", "(1)"]
    assert rows["straight"][1] == rows["resumed"][1] == f"1-{ITERATIONS}"

    import matplotlib.image

    assert sorted(path.name for path in (root / "plots").iterdir()) == sorted(plot_logs.PLOTS)
    for path in (root / "plots").iterdir():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path.name
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, path.name


def test_series_equal_the_logged_numbers(plot_logs, runs):
    _, logs = runs
    series = plot_logs.log_series
    text = Path(logs["straight"]).read_text()
    run = series.load_run("straight", [logs["straight"]])
    assert run.get("lm loss") == losses_by_iteration(text)
    assert sorted(run.get("lm loss")) == list(range(1, ITERATIONS + 1))
    assert run.get("grad norm") == field_by_iteration(text, "grad norm")
    assert run.get("learning rate") == field_by_iteration(text, "learning rate")
    # the interval evaluations at 2, 4, 6, then the end-of-training one (placed at 6, it wins)
    logged = validation_results(text)
    assert [prefix for prefix, _, _ in logged] == ["iteration 2", "iteration 4", "iteration 6",
                                                   "the end of training for val data",
                                                   "the end of training for test data"]
    assert run.validation == {2: logged[0][1], 4: logged[1][1], 6: logged[3][1]}
    assert run.test == {6: logged[4][1]}

    resumed = series.load_run("resumed", [logs["part1"], logs["part2"]])
    first_part = losses_by_iteration(Path(logs["part1"]).read_text())
    assert sorted(first_part) == [1, 2, 3]
    assert resumed.get("lm loss") == run.get("lm loss")
    for name in ("consumed samples", "consumed tokens", "learning rate", "grad norm"):
        assert resumed.get(name) == run.get(name), name
    assert resumed.validation == run.validation and resumed.test == run.test
    assert resumed.startup_iterations == {1, 4}


def test_tensorboard_folder_gives_the_logged_series(plot_logs, runs):
    root, logs = runs
    series = plot_logs.log_series
    from_log = series.load_run("log", [logs["straight"]])
    from_events = series.load_run("tb", [str(root / "tb_straight")])
    assert sorted(from_events.get("lm loss")) == sorted(from_log.get("lm loss"))
    for iteration, loss in from_log.get("lm loss").items():  # the log prints 7 digits
        assert from_events.get("lm loss")[iteration] == pytest.approx(loss, rel=1e-6)
    assert from_events.get("consumed tokens") == from_log.get("consumed tokens")
    assert from_events.validation == pytest.approx(from_log.validation, rel=1e-6)
    assert from_events.get("learning rate") == pytest.approx(from_log.get("learning rate"),
                                                             rel=1e-3)
    assert sorted(from_events.get("tokens per second")) == list(range(2, ITERATIONS + 1))
    # the resumed run's folder holds two event files, stitched like its two logs
    resumed = series.load_run("tb resumed", [str(root / "tb_resumed")])
    assert resumed.get("lm loss") == from_events.get("lm loss")
