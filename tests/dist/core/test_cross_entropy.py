"""vocab_parallel_cross_entropy at TP=1, 2, 4 versus log-softmax on the full logits:
per-token loss and logits gradient, with and without label smoothing, fp32 and bf16 logits,
the rows in one chunk, one row per chunk and chunks of 4 rows (18 rows: a short last chunk)."""
import pytest
import torch
import torch.nn.functional as F

from megatron.core.tensor_parallel import vocab_parallel_cross_entropy
from tests.dist.core.common import assert_close, chunk, randn, setup
from tests.harness import run_on_ranks

S, B, VOCAB = 6, 3, 32


def _reference(logits, target, label_smoothing):
    """Loss against the target distribution 1 - ls on the target, ls / (V - 1) elsewhere."""
    logits = logits.clone().requires_grad_()
    log_probs = F.log_softmax(logits, dim=-1)
    q = torch.full_like(log_probs, label_smoothing / (VOCAB - 1))
    q.scatter_(-1, target.unsqueeze(-1), 1.0 - label_smoothing)
    loss = -(q * log_probs).sum(dim=-1)
    return loss, logits


def _check_cross_entropy(tp, label_smoothing, rows_per_chunk, dtype):
    rank = setup(tp)
    logits = (randn(S, B, VOCAB, seed=31) * 3).to(dtype)
    target = torch.randint(0, VOCAB, (S, B), generator=torch.Generator().manual_seed(32))
    target[0] = torch.tensor([0, VOCAB - 1, VOCAB // 2])  # partition edges
    weights = randn(S, B, seed=33)
    ref_loss, ref_logits = _reference(logits.float(), target, label_smoothing)
    (ref_loss * weights).sum().backward()

    local = chunk(logits, 2, rank, tp).clone().requires_grad_()
    chunk_bytes = {} if rows_per_chunk is None else {
        "chunk_bytes": rows_per_chunk * 4 * (VOCAB // tp)}
    loss = vocab_parallel_cross_entropy(local, target, label_smoothing=label_smoothing,
                                        **chunk_bytes)
    assert loss.dtype == torch.float32
    assert_close(loss.detach(), ref_loss.detach(), "loss")
    (loss * weights).sum().backward()
    assert local.grad.dtype == dtype
    # bf16: the reference gradient rounded to bf16 (8 bits of mantissa) is what can be expected.
    expected_grad = chunk(ref_logits.grad, 2, rank, tp).to(dtype)
    if dtype == torch.float32:
        assert_close(local.grad, expected_grad, "logits grad")
    else:
        assert torch.allclose(local.grad.float(), expected_grad.float(), rtol=1e-2, atol=1e-3)
    # the input logits must not be modified in place
    assert_close(local.detach(), chunk(logits, 2, rank, tp), "logits untouched")
    return rank


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("rows_per_chunk", [None, 1, 4])
def test_vocab_parallel_cross_entropy(tp, label_smoothing, rows_per_chunk):
    assert run_on_ranks(_check_cross_entropy, tp, label_smoothing, rows_per_chunk, torch.float32,
                        world_size=tp) == list(range(tp))


@pytest.mark.parametrize("tp", [1, 2])
def test_bf16_logits(tp):
    assert run_on_ranks(_check_cross_entropy, tp, 0.1, 4, torch.bfloat16,
                        world_size=tp) == list(range(tp))


def test_plain_cross_entropy_matches_torch():
    # Without smoothing the reference is torch's own cross-entropy (a second opinion).
    logits = randn(4, 2, VOCAB, seed=1)
    target = torch.randint(0, VOCAB, (4, 2), generator=torch.Generator().manual_seed(2))
    loss, _ = _reference(logits, target, 0.0)
    expected = F.cross_entropy(logits.view(-1, VOCAB), target.view(-1), reduction="none")
    assert torch.allclose(loss.detach().view(-1), expected, atol=1e-6)


def _half_gradient_is_the_rounded_fp32_gradient(tp, dtype):
    """fp16/bf16 logits: loss and gradient bit-identical to running the loss on the fp32 copy
    of the logits and rounding its gradient to the logits' dtype (the backward writes the
    half-precision gradient chunk by chunk instead), for every chunking."""
    rank = setup(tp)
    logits = chunk((randn(S, B, VOCAB, seed=41) * 3).to(dtype), 2, rank, tp)
    target = torch.randint(0, VOCAB, (S, B), generator=torch.Generator().manual_seed(42))
    weights = randn(S, B, seed=43)
    for smoothing in (0.0, 0.1):
        wide = logits.float().requires_grad_()
        wide_loss = vocab_parallel_cross_entropy(wide, target, label_smoothing=smoothing)
        (wide_loss * weights).sum().backward()
        for rows_per_chunk in (None, 1, 4):
            chunk_bytes = {} if rows_per_chunk is None else {
                "chunk_bytes": rows_per_chunk * 4 * (VOCAB // tp)}
            half = logits.clone().requires_grad_()
            loss = vocab_parallel_cross_entropy(half, target, label_smoothing=smoothing,
                                                **chunk_bytes)
            (loss * weights).sum().backward()
            assert torch.equal(loss, wide_loss), (smoothing, rows_per_chunk)
            assert half.grad.dtype == dtype
            assert torch.equal(half.grad, wide.grad.to(dtype)), (smoothing, rows_per_chunk)
            assert half.grad.abs().max() > 0
    return rank


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_logits_gradient_is_bit_identical_to_rounding_the_fp32_one(tp, dtype):
    assert run_on_ranks(_half_gradient_is_the_rounded_fp32_gradient, tp, dtype,
                        world_size=tp) == list(range(tp))
