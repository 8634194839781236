"""OptimizerParamScheduler against closed-form schedules written here, independently of the code."""
import math

import pytest
import torch

from megatron.arguments import parse_args
from megatron.config import build_config, optimizer_param_scheduler_kwargs
from megatron.training.optimizer_param_scheduler import OptimizerParamScheduler

MAX_LR, MIN_LR = 1.0, 0.1


def optimizer(groups=None):
    params = groups or [{"params": [torch.nn.Parameter(torch.zeros(2))]}]
    return torch.optim.SGD(params, lr=0.0)


def scheduler(opt=None, **overrides):
    kwargs = dict(max_lr=MAX_LR, min_lr=MIN_LR, lr_warmup_steps=10, lr_decay_steps=110, lr_decay_style="linear",
                  start_wd=0.05, end_wd=0.05, wd_incr_steps=110, wd_incr_style="constant",
                  use_checkpoint_opt_param_scheduler=False, override_opt_param_scheduler=False)
    kwargs.update(overrides)
    return OptimizerParamScheduler(opt or optimizer(), **kwargs)


def expected_lr(style, now, warmup, decay, max_lr=MAX_LR, min_lr=MIN_LR):
    """Closed forms: linear warmup to max_lr, then the decay style down to min_lr at `decay`."""
    if warmup > 0 and now <= warmup:
        return max_lr * now / warmup
    if style == "constant":
        return max_lr
    if now > decay:
        return min_lr
    if style == "inverse-square-root":
        return max(min_lr, max_lr * math.sqrt(max(warmup, 1)) / math.sqrt(max(now, 1)))
    progress = (now - warmup) / (decay - warmup)
    shape = 1 - progress if style == "linear" else (1 + math.cos(math.pi * progress)) / 2
    return min_lr + (max_lr - min_lr) * shape


@pytest.mark.parametrize("style", ["constant", "linear", "cosine", "inverse-square-root"])
def test_step_based_styles(style):
    sched = scheduler(lr_decay_style=style)
    assert sched.get_lr() == 0.0
    for now in range(1, 131):
        sched.step(1)
        want = expected_lr(style, now, 10, 110)
        assert sched.get_lr() == pytest.approx(want, rel=1e-12), now
        assert sched.optimizer.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12)


def test_min_lr_after_decay_and_exact_points():
    sched = scheduler(lr_decay_style="cosine")
    sched.step(10)
    assert sched.get_lr() == pytest.approx(MAX_LR)
    sched.step(50)  # halfway through the decay: cos(pi/2) = 0
    assert sched.get_lr() == pytest.approx((MAX_LR + MIN_LR) / 2)
    sched.step(50)
    assert sched.get_lr() == pytest.approx(MIN_LR)
    sched.step(1000)
    assert sched.get_lr() == MIN_LR


@pytest.mark.parametrize("style", ["linear", "cosine", "inverse-square-root"])
def test_token_based_warmup_and_decay(style):
    sched = scheduler(lr_decay_style=style, lr_warmup_steps=0, lr_decay_steps=1,
                      lr_warmup_tokens=1000, lr_decay_tokens=10000)
    for tokens in range(0, 12001, 250):
        sched.step(1, token_num=tokens)
        assert sched.get_lr() == pytest.approx(expected_lr(style, tokens, 1000, 10000), rel=1e-12), tokens


def test_step_warmup_then_token_decay_starts_where_warmup_ended():
    sched = scheduler(lr_decay_style="linear", lr_warmup_steps=4, lr_decay_steps=1, lr_decay_tokens=10000)
    for step in range(1, 20):
        tokens = 100 * step
        sched.step(1, token_num=tokens)
        if step <= 4:
            want = MAX_LR * step / 4
        else:  # linear from max at 400 tokens to min at 10000 tokens
            want = MIN_LR + (MAX_LR - MIN_LR) * (1 - (tokens - 400) / (10000 - 400))
        assert sched.get_lr() == pytest.approx(want, rel=1e-12), step


@pytest.mark.parametrize("style", ["linear", "cosine"])
def test_weight_decay_increment(style):
    decayed = torch.nn.Parameter(torch.zeros(2, 2))
    norm = torch.nn.Parameter(torch.zeros(2))
    opt = optimizer([{"params": [decayed], "wd_mult": 1.0}, {"params": [norm], "wd_mult": 0.0}])
    sched = scheduler(opt, start_wd=0.0, end_wd=0.1, wd_incr_steps=100, wd_incr_style=style)
    for now in range(1, 121):
        sched.step(1)
        ratio = min(now / 100, 1.0)
        shape = ratio if style == "linear" else (math.cos(math.pi * (1 - ratio)) + 1) / 2
        want = 0.1 * shape if now <= 100 else 0.1
        assert opt.param_groups[0]["weight_decay"] == pytest.approx(want, abs=1e-15), now
        assert opt.param_groups[1]["weight_decay"] == 0.0


def test_lr_mult_scales_a_group():
    opt = optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr_mult": 0.5}])
    sched = scheduler(opt, lr_decay_style="constant")
    sched.step(20)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * MAX_LR)


def _config(extra):
    argv = ("--num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 16 --max-position-embeddings 16 "
            "--micro-batch-size 2 --global-batch-size 8 --lr 1.0 --min-lr 0.1 --vocab-file v --merge-file m "
            "--deepspeed").split() + extra
    return build_config(parse_args(argv), world_size=2, accelerator_name="cpu")


@pytest.mark.parametrize("style", ["linear", "cosine"])
def test_iteration_flags_count_samples_like_upstream(style):
    config = _config(f"--train-iters 50 --lr-warmup-iters 5 --lr-decay-style {style}".split())
    kwargs = optimizer_param_scheduler_kwargs(config)
    assert (kwargs["lr_warmup_steps"], kwargs["lr_decay_steps"], kwargs["wd_incr_steps"]) == (40, 400, 400)
    sched = OptimizerParamScheduler(optimizer(), **kwargs)
    for iteration in range(1, 60):
        sched.step(increment=8)  # the training loop passes the global batch size
        assert sched.get_lr() == pytest.approx(expected_lr(style, iteration, 5, 50), rel=1e-12), iteration


def test_sample_flags_and_warmup_fraction():
    config = _config("--train-samples 800 --lr-decay-samples 640 --lr-warmup-fraction 0.25".split())
    kwargs = optimizer_param_scheduler_kwargs(config)
    assert (kwargs["lr_warmup_steps"], kwargs["lr_decay_steps"], kwargs["wd_incr_steps"]) == (160, 640, 800)
    sched = OptimizerParamScheduler(optimizer(), **kwargs)
    for iteration in range(1, 100):
        sched.step(increment=8)
        assert sched.get_lr() == pytest.approx(expected_lr("linear", 8 * iteration, 160, 640), rel=1e-12)


def test_state_dict_has_upstream_keys_and_resume_is_exact():
    sched = scheduler(lr_decay_style="cosine", lr_warmup_tokens=100, lr_decay_tokens=5000)
    for step in range(1, 8):
        sched.step(1, token_num=300 * step)
    state = sched.state_dict()
    assert set(state) >= {"max_lr", "lr_warmup_steps", "lr_warmup_tokens", "num_steps", "num_tokens",
                          "lr_decay_style", "lr_decay_steps", "lr_decay_tokens", "min_lr", "start_wd", "end_wd",
                          "wd_incr_style", "wd_incr_steps"}
    assert (state["num_steps"], state["num_tokens"]) == (7, 2100)
    resumed = scheduler(lr_decay_style="cosine", lr_warmup_tokens=100, lr_decay_tokens=5000)
    resumed.load_state_dict(state)
    assert resumed.get_lr() == sched.get_lr()
    sched.step(1, token_num=2400)
    resumed.step(1, token_num=2400)
    assert resumed.get_lr() == sched.get_lr()


def test_override_keeps_the_flags():
    state = scheduler(max_lr=2.0, lr_decay_style="cosine").state_dict()
    state["num_steps"] = 60
    sched = scheduler(override_opt_param_scheduler=True)
    sched.load_state_dict(state)
    assert (sched.max_lr, sched.lr_decay_style, sched.num_steps) == (MAX_LR, "linear", 60)
    assert sched.get_lr() == pytest.approx(expected_lr("linear", 60, 10, 110))


def test_use_checkpoint_takes_the_checkpoint():
    state = scheduler(max_lr=2.0, lr_decay_style="cosine").state_dict()
    state["num_steps"] = 60
    sched = scheduler(use_checkpoint_opt_param_scheduler=True)
    sched.load_state_dict(state)
    assert (sched.max_lr, sched.lr_decay_style) == (2.0, "cosine")
    assert sched.get_lr() == pytest.approx(expected_lr("cosine", 60, 10, 110, max_lr=2.0))


def test_mismatch_without_either_flag_is_an_error():
    state = scheduler(max_lr=2.0).state_dict()
    with pytest.raises(ValueError, match=r"learning rate is 1.0 from the flags but 2.0 in the checkpoint.*"
                                         r"--override-opt_param-scheduler"):
        scheduler().load_state_dict(state)


def test_legacy_checkpoint_keys():
    legacy = {"start_lr": MAX_LR, "min_lr": MIN_LR, "warmup_iter": 10, "end_iter": 110, "decay_style": "linear",
              "num_iters": 30}
    sched = scheduler()
    sched.load_state_dict(legacy)
    assert sched.num_steps == 30 and sched.get_lr() == pytest.approx(expected_lr("linear", 30, 10, 110))


@pytest.mark.parametrize("overrides,pattern", [
    (dict(lr_decay_style="exp"), r"--lr-decay-style 'exp'"),
    (dict(min_lr=2.0), r"min_lr \(2.0\) <= max_lr"),
    (dict(lr_warmup_steps=200), r"lr_warmup_steps \(200\) < lr_decay_steps \(110\)"),
    (dict(start_wd=0.2, end_wd=0.1, wd_incr_style="linear"), r"start_wd \(0.2\) <= end_wd \(0.1\)"),
    (dict(override_opt_param_scheduler=True, use_checkpoint_opt_param_scheduler=True), r"mutually exclusive"),
])
def test_bad_arguments(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        scheduler(**overrides)
