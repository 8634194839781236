"""Half-precision parameters (bf16, as on CPU) run forward and backward and stay close to
the fp32 model built from the same seed: per-token loss within 2% relative (bf16 keeps 8
mantissa bits; the loss here is ~5)."""
import pytest
import torch

from megatron.model.gpt_model import GPTModel
from tests.dist.model.model_utils import make_batch, make_config, setup_parallel
from tests.harness import run_on_ranks


def losses_for(dtype, variant, overrides):
    setup_parallel(1)
    model = GPTModel(make_config(variant, params_dtype=dtype, **overrides))
    tokens, position_ids, mask, labels, _ = make_batch(document_mask=True)
    losses = model(tokens, position_ids, mask, labels=labels)
    losses.mean().backward()
    grads_finite = all(torch.isfinite(p.grad).all() for p in model.parameters())
    dtypes = {p.dtype for p in model.parameters()}
    return losses.detach(), grads_finite, dtypes


@pytest.mark.parametrize("variant,overrides", [
    ("default", {}),
    ("default", dict(fp32_residual_connection=True, apply_residual_connection_post_layernorm=True)),
    ("llama", dict(use_flash_attn=True)),
])
def test_bf16_close_to_fp32(variant, overrides):
    ref, _, _ = run_on_ranks(losses_for, torch.float32, variant, overrides, world_size=1)[0]
    got, finite, dtypes = run_on_ranks(losses_for, torch.bfloat16, variant, overrides,
                                       world_size=1)[0]
    assert got.dtype == torch.float32  # the loss is computed in fp32
    assert dtypes == {torch.bfloat16} and finite
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=0.0)


def pipe_tail(dtype):
    import deepspeed

    from megatron.model.gpt_model_pipe import build_specs

    deepspeed.init_distributed(dist_backend="gloo")
    setup_parallel(1)
    return [getattr(spec, "__name__", type(spec).__name__)
            for spec in build_specs(make_config(params_dtype=dtype))]


def test_pipe_specs_cast_back_only_for_half():
    fp32 = run_on_ranks(pipe_tail, torch.float32, world_size=1)[0]
    bf16 = run_on_ranks(pipe_tail, torch.bfloat16, world_size=1)[0]
    assert len(fp32) == 2 + 2 + 2 and fp32[0] == "_CastInputs"
    assert bf16[:-1] == fp32 and bf16[-1] == "_logits_to_loss"


def pipe_loss_with_and_without_cast(dtype, tp):
    """The pipe's loss on half-precision logits as they come (the last spec passes them
    through) and on the same logits cast to fp32 first (upstream's last spec): loss and
    logits gradient of each, on every TP rank."""
    from megatron.core import parallel_state
    from megatron.model.gpt_model_pipe import build_specs, pipe_loss

    setup_parallel(tp)
    last_spec = build_specs(make_config(params_dtype=dtype, tensor_model_parallel_size=tp))[-1]
    generator = torch.Generator().manual_seed(5)
    vocab, seq, batch = 256, 16, 2
    full = torch.randn(seq, batch, vocab, generator=generator) * 4
    rank = parallel_state.get_tensor_model_parallel_rank()
    local = full.chunk(tp, dim=-1)[rank].to(dtype)
    labels = torch.randint(0, vocab, (batch, seq), generator=generator)
    loss_mask = (torch.rand(batch, seq, generator=generator) > 0.2).float()
    assert last_spec(local).dtype == dtype  # no fp32 copy
    results = []
    for cast in (lambda x: x.float(), last_spec):
        logits = local.clone().requires_grad_()
        loss = pipe_loss(cast(logits), (labels, loss_mask))
        loss.backward()
        results.append((loss.detach(), logits.grad))
    return results


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("tp", [1, 2])
def test_pipe_loss_on_half_logits_is_bit_identical_to_casting_first(dtype, tp):
    for (cast_loss, cast_grad), (loss, grad) in run_on_ranks(
            pipe_loss_with_and_without_cast, dtype, tp, world_size=tp):
        assert loss.dtype == torch.float32 and grad.dtype == dtype
        assert torch.equal(loss, cast_loss)
        assert torch.equal(grad, cast_grad)
