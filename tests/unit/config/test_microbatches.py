"""Micro-batch counts, constant and with --rampup-batch-size, against upstream's formula."""
import pytest

from megatron.core.num_microbatches_calculator import build_num_microbatches_calculator, count_train_iters


def test_constant():
    calc = build_num_microbatches_calculator(global_batch_size=48, micro_batch_size=4, data_parallel_size=3)
    calc.update(10_000)
    assert (calc.get(), calc.get_current_global_batch_size()) == (4, 48)


@pytest.mark.parametrize("start,increment,ramp,final", [(16, 8, 300, 64), (8, 8, 100, 8), (4, 4, 0, 20)])
def test_rampup_follows_the_formula(start, increment, ramp, final):
    mbs, dp = 2, 2
    calc = build_num_microbatches_calculator(global_batch_size=final, micro_batch_size=mbs, data_parallel_size=dp,
                                             rampup_batch_size=[str(start), str(increment), str(ramp)])
    intervals = (final - start) // increment
    for consumed in range(0, ramp + 200, 7):
        calc.update(consumed)
        if consumed > ramp or intervals == 0 or ramp == 0:  # no ramp: final size at once
            want = final
        else:  # one increment every ramp / intervals samples
            want = start + increment * int(consumed // (ramp / intervals))
        assert calc.get_current_global_batch_size() == want, consumed
        assert calc.get() == want // (mbs * dp)


def test_train_iters_through_the_ramp():
    calc = build_num_microbatches_calculator(global_batch_size=12, micro_batch_size=1, data_parallel_size=2,
                                             rampup_batch_size=[4, 4, 20])
    # 2 increments over 20 samples: +4 every 10 samples. Batches at consumed 0, 4, 8 -> 4; 12 -> 8;
    # 20 -> 12. Consumed is then 32 > 20: 5 iterations, then (100 - 32) // 12 = 5 more.
    assert count_train_iters(calc, 100, 20) == 10
    assert calc.get_current_global_batch_size() == 4  # reset to the start afterwards, as upstream


@pytest.mark.parametrize("rampup,pattern", [
    ([4, 4], r"takes 3 values"),
    ([4, 3, 10], r"multiple of the increment"),
    ([2, 2, 10], r"multiples of --micro-batch-size"),
    ([16, 4, 10], r"non-negative multiple of the increment"),
    ([0, 4, 10], r"must be positive"),
])
def test_bad_rampup(rampup, pattern):
    with pytest.raises(ValueError, match=pattern):
        build_num_microbatches_calculator(global_batch_size=12, micro_batch_size=2, data_parallel_size=2,
                                          rampup_batch_size=rampup)


def test_bad_constant():
    with pytest.raises(ValueError, match=r"--global-batch-size 10 must be a positive multiple"):
        build_num_microbatches_calculator(global_batch_size=10, micro_batch_size=4, data_parallel_size=1)
