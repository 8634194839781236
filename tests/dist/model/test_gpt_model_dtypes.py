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
    assert bf16[:-1] == fp32 and bf16[-1] == "_to_fp32"
