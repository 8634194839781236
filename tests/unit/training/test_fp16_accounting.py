"""The fp16 pieces that can be checked without running fp16 (which needs a GPU): the flags as
DeepSpeed reads them, DeepSpeed's own loss scaler driven by them, how an overflow becomes a
skipped step with its loss scale in the log line, and the fp16 softmax dispatch from the flags.

DeepSpeed's classes used here (DeepSpeedConfig, its loss scalers) are pure Python: nothing
depends on whether this host's DeepSpeed accepts fp16 on a CPU.
"""
import pytest
import torch

from megatron.arguments import parse_args
from megatron.config import build_config
from megatron.training.engine import step_outcome
from megatron.training.log import IterationReport, LogInterval, format_iteration_line

MODEL = ("--num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 16 "
         "--max-position-embeddings 16 --train-iters 10 --lr 1e-3 --vocab-file v --merge-file m "
         "--deepspeed --micro-batch-size 2 --fp16").split()


def fp16_config(*flags):
    return build_config(parse_args(MODEL + list(flags)), world_size=1, accelerator_name="cuda")


@pytest.fixture(autouse=True)
def _no_deepspeed_logging(monkeypatch):
    # The scalers ask deepspeed.comm for the rank to log an overflow: no process group here.
    from types import SimpleNamespace

    from deepspeed.runtime.fp16 import loss_scaler

    monkeypatch.setattr(loss_scaler, "log_dist", lambda *args, **kwargs: None)
    monkeypatch.setattr(loss_scaler, "dist", SimpleNamespace(get_rank=lambda: 0))


def deepspeed_loss_scaler(ds_config):
    """The loss scaler DeepSpeed's fp16 optimizers build from this config (their own code path:
    DeepSpeedConfig -> float16_config -> CreateLossScaler)."""
    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.runtime.fp16.loss_scaler import CreateLossScaler

    fp16 = DeepSpeedConfig(dict(ds_config)).float16_config
    assert fp16.enabled
    return CreateLossScaler(torch.half, static_loss_scale=fp16.loss_scale,
                            dynamic_scaling=fp16.loss_scale == 0,
                            dynamic_loss_args=fp16.dynamic_loss_scale_args())


def test_dynamic_scaling_follows_the_flags_inside_deepspeed():
    scaler = deepspeed_loss_scaler(fp16_config(
        "--initial-loss-scale", "1024", "--min-loss-scale", "256", "--loss-scale-window", "3",
        "--hysteresis", "2").ds_config)
    assert scaler.cur_scale == 1024 and scaler.dynamic
    scaler.update_scale(True)            # hysteresis 2: the first overflow keeps the scale
    assert scaler.cur_scale == 1024
    scaler.update_scale(True)            # the second one halves it
    assert scaler.cur_scale == 512
    # --loss-scale-window clean steps after the overflowed one double it again.
    for _ in range(1 + 3):
        assert scaler.cur_scale == 512
        scaler.update_scale(False)
    assert scaler.cur_scale == 1024
    scaler.update_scale(True)            # the clean window refilled the hysteresis ...
    assert scaler.cur_scale == 1024
    scaler.update_scale(True)            # ... which a halving does not: every overflow halves now
    scaler.update_scale(True)
    assert scaler.cur_scale == 256
    with pytest.raises(Exception, match="minimum"):  # DeepSpeed stops at --min-loss-scale
        scaler.update_scale(True)


def test_static_loss_scale_inside_deepspeed():
    scaler = deepspeed_loss_scaler(fp16_config("--loss-scale", "4096").ds_config)
    assert scaler.cur_scale == 4096 and not scaler.dynamic
    scaler.update_scale(True)
    assert scaler.cur_scale == 4096


class _Fp16Optimizer:
    """What step_outcome reads of DeepSpeed's fp16 optimizers: the `loss_scale` property."""

    def __init__(self, scaler):
        self.scaler = scaler

    @property
    def loss_scale(self):
        return self.scaler.cur_scale


class _Engine:
    """The DeepSpeed engine methods step_outcome calls, after one step."""

    def __init__(self, *, applied, grad_norm, optimizer, fp16=True):
        self._applied, self._grad_norm, self.optimizer, self._fp16 = applied, grad_norm, optimizer, fp16

    def was_step_applied(self):
        return self._applied

    def get_global_grad_norm(self):
        return self._grad_norm

    def fp16_enabled(self):
        return self._fp16


def test_an_overflow_is_a_skipped_step_with_the_lowered_scale():
    scaler = deepspeed_loss_scaler(fp16_config("--initial-loss-scale", "4096", "--hysteresis", "1").ds_config)
    optimizer = _Fp16Optimizer(scaler)
    clean = step_outcome(_Engine(applied=True, grad_norm=torch.tensor(0.75), optimizer=optimizer),
                         guard_skipped=False)
    assert clean == (False, 0.75, 4096.0)
    scaler.update_scale(True)  # what DeepSpeed's optimizer does on overflow, before step() returns
    overflow = step_outcome(_Engine(applied=False, grad_norm=float("inf"), optimizer=optimizer),
                            guard_skipped=False)
    assert overflow == (True, None, 2048.0)


def test_no_loss_scale_without_fp16_and_the_guard_verdict_counts():
    engine = _Engine(applied=True, grad_norm=1.5, optimizer=object(), fp16=False)
    assert step_outcome(engine, guard_skipped=False) == (False, 1.5, None)
    assert step_outcome(engine, guard_skipped=True) == (True, None, None)


def test_skipped_steps_in_the_log_line():
    interval = LogInterval()
    interval.add(2.0, skipped=False)
    interval.add(9.0, skipped=True)      # an overflow: its loss stays out of the average
    interval.add(4.0, skipped=False)
    assert (interval.iterations, interval.skipped, interval.losses_counted) == (3, 1, 2)
    line = format_iteration_line(IterationReport(
        iteration=3, train_iters=10, consumed_samples=24, consumed_tokens=384,
        elapsed_ms_per_iteration=10.0, learning_rate=1e-3, global_batch_size=8,
        lm_loss=interval.loss_sum / interval.losses_counted, loss_scale=2048.0, grad_norm=None,
        seq_length=16, skipped_iterations=interval.skipped, nan_iterations=interval.nonfinite,
        samples_per_second=1.0, tflops_per_device=0.0, tokens_per_second_per_device=1.0, mfu=None))
    # Upstream's order: lm loss, loss scale, (grad norm), ..., skipped and nan counts.
    assert " lm loss: 3.000000E+00 | loss scale: 2048.0 | actual seqlen:" in line
    assert " number of skipped iterations:   1 | number of nan iterations:   0 |" in line


@pytest.mark.parametrize("layer_number", [1, 3])
def test_fp16_softmax_dispatch_from_the_flags(monkeypatch, layer_number):
    from megatron import fused_kernels
    from megatron.model.attention import CoreAttention

    model = fp16_config().model
    assert model.params_dtype == torch.float16
    softmax = CoreAttention(model, layer_number).scale_mask_softmax
    # Query-key layer scaling (on by default) multiplies the scores back inside an fp32 softmax.
    assert softmax.input_in_fp16 and softmax.softmax_in_fp32 and softmax.scale == float(layer_number)
    monkeypatch.setattr(fused_kernels, "fused_kernels_available", lambda: True)
    assert softmax.is_kernel_available(None, 2, 4, 16, 16, dtype=torch.float16, device_type="cuda")
    assert not softmax.is_kernel_available(None, 2, 4, 16, 16, dtype=torch.float16, device_type="cpu")
    no_fusion = CoreAttention(fp16_config("--no-masked-softmax-fusion").model, layer_number)
    assert not no_fusion.scale_mask_softmax.is_kernel_available(None, 2, 4, 16, 16, dtype=torch.float16,
                                                                device_type="cuda")
    # The exact path (what a CPU or an unfused GPU runs): fp32 inside, fp16 out, scores that
    # would overflow fp16 if multiplied back in fp16.
    scores = torch.full((1, 1, 4, 4), 30000.0, dtype=torch.float16)
    scores[..., 0] = 29000.0
    probs = softmax(scores, None)
    assert probs.dtype == torch.float16 and torch.isfinite(probs).all()
    expected = torch.softmax(torch.tril(scores.double() * layer_number)
                             .masked_fill(torch.ones(4, 4).triu(1).bool(), float("-inf")), dim=-1)
    torch.testing.assert_close(probs.double(), expected, rtol=0, atol=1e-3)  # fp16 output rounding
