"""Log lines parse with the regular expressions users' scripts apply to upstream logs."""
import math
import re

from megatron.training.train_state import TrainState
from megatron.training.log import (IterationReport, format_evaluation_line,
                                   format_iteration_line)

# A Megatron-DeepSpeed line, as printed by upstream (fields up to TFLOPs).
UPSTREAM_LINE = (" iteration       10/     100 | consumed samples:          160 | consumed tokens:"
                 "        40960 | elapsed time per iteration (ms): 1234.5 | learning rate: 6.000E-05 |"
                 " global batch size:    16 | lm loss: 1.012346E+01 | loss scale: 1.0 | grad norm: 1.234 |"
                 " actual seqlen:   256 | number of skipped iterations:   0 | number of nan iterations:"
                 "   0 | samples per second: 12.961 | TFLOPs: 1.23 |")


def _report(**overrides):
    values = dict(iteration=10, train_iters=100, consumed_samples=160, consumed_tokens=40960,
                  elapsed_ms_per_iteration=1234.5, learning_rate=6e-5, global_batch_size=16,
                  lm_loss=10.123456, loss_scale=1.0, grad_norm=1.234, seq_length=256,
                  skipped_iterations=0, nan_iterations=0, samples_per_second=12.961,
                  tflops_per_device=1.2345, tokens_per_second_per_device=3318.0, mfu=0.52)
    values.update(overrides)
    return IterationReport(**values)


def test_iteration_line_starts_with_upstream_line_byte_for_byte():
    line = format_iteration_line(_report())
    assert line.startswith(UPSTREAM_LINE)
    assert line.endswith(" tokens per second per device: 3318.0 | MFU: 52.0% |")


def test_fields_parse_like_upstream_logs():
    line = format_iteration_line(_report(lm_loss=2.5, iteration=1234, train_iters=5000))
    assert re.search(r"iteration\s+(\d+)/\s*(\d+)", line).groups() == ("1234", "5000")
    assert float(re.search(r"lm loss: ([0-9.E+-]+)", line).group(1)) == 2.5
    assert float(re.search(r"learning rate: ([0-9.E+-]+)", line).group(1)) == 6e-5


def test_optional_fields_are_left_out():
    line = format_iteration_line(_report(lm_loss=None, loss_scale=None, grad_norm=None, mfu=None))
    assert "lm loss" not in line and "loss scale" not in line and "grad norm" not in line
    assert "MFU" not in line


def test_validation_line():
    line = format_evaluation_line("iteration 100", 2.0)
    assert line == (" validation loss at iteration 100 | lm loss value: 2.000000E+00 | "
                    f"lm loss PPL: {math.e ** 2:.6E} | ")
    assert "lm loss PPL: 4.851652E+08" in format_evaluation_line("x", 50.0)  # capped at exp(20)


def test_train_state_round_trip_and_unknown_fields():
    state = TrainState(iteration=5, consumed_train_samples=80, consumed_train_tokens=20480)
    restored = TrainState()
    restored.load_state_dict(state.state_dict())
    assert restored == state
    try:
        restored.load_state_dict({"iterations": 3})
    except ValueError as error:
        assert "iterations" in str(error)
    else:
        raise AssertionError("unknown field accepted")


def test_memory_and_eta_come_after_every_other_field():
    from megatron.training.log import format_duration

    line = format_iteration_line(_report(peak_memory_bytes=3 * 2 ** 30 // 2, eta_seconds=93784.4))
    assert line.startswith(UPSTREAM_LINE)
    assert line.endswith(" MFU: 52.0% | peak memory (GiB): 1.50 | ETA: 26:03:04 |")
    assert format_duration(59.5) == "0:01:00" and format_duration(-3) == "0:00:00"


def test_iterations_left_stops_at_the_first_condition():
    from megatron.training.log import iterations_left

    common = dict(iteration=10, train_iters=100, consumed_tokens=10_000, tokens_per_iteration=1_000)
    assert iterations_left(**common, train_tokens=None) == 90
    assert iterations_left(**common, train_tokens=15_500) == 6  # 5.5 iterations of tokens, rounded up
    assert iterations_left(**common, train_tokens=500_000) == 90
    assert iterations_left(**{**common, "iteration": 120}, train_tokens=None) == 0


def test_zero_count_and_params_norm_follow_grad_norm_like_upstream():
    line = format_iteration_line(_report(num_zeros_in_grad=32512, params_norm=123.4567))
    assert " grad norm: 1.234 | num zeros: 32512.0 | params norm: 123.457 | actual seqlen:" in line
    without = format_iteration_line(_report())
    assert "num zeros" not in without and "params norm" not in without
