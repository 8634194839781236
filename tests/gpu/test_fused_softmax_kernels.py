"""The fused softmax CUDA kernels against the torch path (needs a CUDA device).

Reference: the torch path in fp32 on the same half-precision inputs,
softmax(masked_fill(scale * x, mask, -10000)) with the causal mask as a triangular mask,
differentiated by autograd. Tolerances follow from the storage precision (eps = 2**-10 for
float16, 2**-7 for bfloat16, i.e. twice the rounding of the stored result):
  forward   |y - y_ref| <= eps * y_ref + tiny
  backward  |dx - dx_ref| <= scale * (eps * y_ref + tiny) * (|g| + |sum(g * y_ref)| + 1)
                            + scale * tiny * y_ref * sum(|g|) + eps * |dx_ref| + tiny
(the kernels' backward reads the stored y, hence the scale terms; tiny = 2**-24 covers
float16 subnormals). Masked entries must be
exactly 0 where the torch path gives exactly 0. Runs without deepspeed installed.
"""
import pytest
import torch

from megatron.fused_kernels import (MAX_KEY_LENGTH, fused_kernel_applies,
                                    fused_scale_mask_softmax, load_fused_kernels)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

FILL = -10000.0
EPS = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
TINY = {torch.float16: 2.0**-24, torch.bfloat16: 1e-30}
DTYPES = [torch.float16, torch.bfloat16]


def _device() -> torch.device:
    try:
        from deepspeed.accelerator import get_accelerator
    except ImportError:  # the kernels are testable without deepspeed
        return torch.device("cuda")
    return torch.device(get_accelerator().device_name())


@pytest.fixture(scope="module", autouse=True)
def kernels():
    module = load_fused_kernels(verbose=True)
    if module is None:
        pytest.fail("the fused softmax extension did not build on this CUDA machine (see the "
                    "RuntimeWarning above)")
    return module


def _causal_mask(seq_q, seq_k, device):
    return torch.ones(seq_q, seq_k, dtype=torch.bool, device=device).triu(1)


def _reference(x, mask, scale, mask_type):
    """The torch path in fp32 (x: fp32 leaf holding the half-precision values)."""
    scores = x * scale
    if mask_type == "causal":
        mask = _causal_mask(x.shape[-2], x.shape[-1], x.device)
    if mask is not None:
        scores = scores.masked_fill(mask.bool(), FILL)
    return torch.softmax(scores, dim=-1)


def _run(scores, mask, scale, mask_type, grad):
    """Fused forward/backward and the reference; returns (y, dx, y_ref, dx_ref, eff_mask)."""
    fused_in = scores.detach().requires_grad_(True)  # same storage: keeps its alignment
    y = fused_scale_mask_softmax(fused_in, mask, scale, mask_type)
    y.backward(grad)
    ref_in = scores.detach().float().requires_grad_(True)
    y_ref = _reference(ref_in, mask, scale, mask_type)
    y_ref.backward(grad.float())
    if mask_type == "causal":
        mask = _causal_mask(scores.shape[-2], scores.shape[-1], scores.device)
    eff_mask = None if mask is None else mask.bool().expand(scores.shape)
    return y, fused_in.grad, y_ref.detach(), ref_in.grad, eff_mask


def _assert_within(actual, expected, bound, what):
    err = (actual.float() - expected).abs()
    bad = err > bound
    if bad.any():
        worst = (err / bound).argmax()
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {err.numel()} entries outside the bound; worst at "
            f"flat index {int(worst)}: got {actual.flatten()[worst].item()}, expected "
            f"{expected.flatten()[worst].item()}, bound {bound.flatten()[worst].item()}")


def _misaligned_copy(tensor):
    """The same values in contiguous storage that starts one element past an 8-byte boundary."""
    buffer = torch.empty(tensor.numel() + 1, dtype=tensor.dtype, device=tensor.device)
    copy = buffer[1:].view(tensor.shape).copy_(tensor)
    assert copy.data_ptr() % 8 != 0 and copy.is_contiguous()
    return copy


def _assert_matches(y, dx, y_ref, dx_ref, grad, scale):
    """The bounds of the module docstring; y, dx half precision, the references fp32."""
    dtype = y.dtype
    assert dx.dtype == dtype and y.shape == y_ref.shape == dx.shape
    eps, tiny = EPS[dtype], TINY[dtype]
    _assert_within(y, y_ref, eps * y_ref + tiny, "forward")
    g = grad.float()
    dot = (g * y_ref).sum(-1, keepdim=True)
    spread = g.abs() + dot.abs() + 1
    # The backward reads the stored y: relative error eps, plus `tiny` absolute where y is
    # subnormal (float16), which also shifts sum(g * y) by up to tiny * sum(|g|).
    y_error = abs(scale) * (eps * y_ref * spread + tiny * (spread + y_ref * g.abs().sum(-1, True)))
    _assert_within(dx, dx_ref, y_error + eps * dx_ref.abs() + tiny, "backward")


def _check(scores, mask, scale, mask_type, seed=0, misaligned_grad=False):
    dtype = scores.dtype
    generator = torch.Generator(device=scores.device).manual_seed(seed)
    grad = torch.randn(scores.shape, generator=generator, device=scores.device).to(dtype)
    if misaligned_grad:
        grad = _misaligned_copy(grad)
    y, dx, y_ref, dx_ref, eff_mask = _run(scores, mask, scale, mask_type, grad)
    _assert_matches(y, dx, y_ref, dx_ref, grad, scale)
    if eff_mask is not None:
        assert (dx[eff_mask] == 0).all(), "gradient must be exactly 0 where masked"
    if mask_type == "causal":
        assert (y[eff_mask] == 0).all(), "causal probabilities above the diagonal must be 0"


def _scores(shape, dtype, seed=0, spread=3.0):
    generator = torch.Generator(device=_device()).manual_seed(seed)
    return (spread * torch.randn(shape, generator=generator, device=_device())).to(dtype)


# Lengths around every change of the kernels' geometry: threads per row 1..1024 (16 elements
# each), one warp (512) vs several, vector loads (multiple of 4) vs scalar.
SQUARE_LENGTHS = [1, 2, 3, 15, 16, 17, 31, 64, 100, 127, 128, 255, 511, 512, 513, 1024, 2047]
KEY_LENGTHS = [1, 5, 16, 33, 500, 512, 516, 1023, 2048, 4096, 4099, 8192, 16383, 16384]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seq", SQUARE_LENGTHS)
def test_causal_matches_torch_path(dtype, seq):
    _check(_scores((2, 3, seq, seq), dtype, seed=seq), None, 0.125, "causal")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seq", [4096, 8192, MAX_KEY_LENGTH])
def test_causal_long_sequences(dtype, seq):
    _check(_scores((1, 1, seq, seq), dtype, seed=seq), None, 0.5, "causal")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seq_k", KEY_LENGTHS)
def test_no_mask_matches_torch_path(dtype, seq_k):
    _check(_scores((2, 2, 3, seq_k), dtype, seed=seq_k), None, 0.7, "none")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seq_k", KEY_LENGTHS)
def test_padding_matches_torch_path(dtype, seq_k):
    scores = _scores((2, 2, 3, seq_k), dtype, seed=seq_k)
    generator = torch.Generator(device=_device()).manual_seed(seq_k + 1)
    mask = torch.rand((2, 1, 3, seq_k), generator=generator, device=_device()) < 0.3
    _check(scores, mask, 0.25, "padding")


MASK_KINDS = ["per_batch", "uint8", "shared", "per_key", "per_head", "three_dims",
              "non_contiguous", "fully_masked_row", "nothing_masked"]


def _padding_masks(batch, heads, seq_q, seq_k, device):
    generator = torch.Generator(device=device).manual_seed(7)

    def rand(shape):
        return torch.rand(shape, generator=generator, device=device) < 0.4

    fully_masked_row = rand((batch, 1, seq_q, seq_k))
    fully_masked_row[0, 0, 1] = True
    return {
        "per_batch": rand((batch, 1, seq_q, seq_k)),
        "uint8": rand((batch, 1, seq_q, seq_k)).to(torch.uint8),
        "shared": rand((1, 1, seq_q, seq_k)),
        "per_key": rand((batch, 1, 1, seq_k)),
        "per_head": rand((batch, heads, seq_q, seq_k)),
        "three_dims": rand((1, seq_q, seq_k)),
        "non_contiguous": rand((batch, 1, seq_k, seq_q)).transpose(-1, -2),
        "fully_masked_row": fully_masked_row,
        "nothing_masked": torch.zeros((batch, 1, seq_q, seq_k), dtype=torch.bool, device=device),
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_padding_mask_layouts(dtype, kind):
    batch, heads, seq_q, seq_k = 3, 4, 6, 40
    mask = _padding_masks(batch, heads, seq_q, seq_k, _device())[kind]
    _check(_scores((batch, heads, seq_q, seq_k), dtype), mask, 0.5, "padding")


@pytest.mark.parametrize("dtype", DTYPES)
def test_fully_masked_rows_are_uniform_like_the_torch_path(dtype):
    scores = _scores((1, 2, 3, 64), dtype)
    mask = torch.ones((1, 1, 3, 64), dtype=torch.bool, device=_device())
    probs = fused_scale_mask_softmax(scores, mask, 1.0, "padding")
    torch.testing.assert_close(probs.float(), torch.full_like(probs.float(), 1 / 64),
                               atol=0, rtol=EPS[dtype])


@pytest.mark.parametrize("mask_type", ["causal", "padding", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_misaligned_storage_takes_the_scalar_path(dtype, mask_type):
    # seq_k is a multiple of 4 but the data starts 2 bytes past an 8-byte boundary.
    scores = _misaligned_copy(_scores((2, 2, 64, 64), dtype))
    mask = _padding_masks(2, 2, 64, 64, _device())["per_batch"] if mask_type == "padding" else None
    _check(scores, mask, 0.3, mask_type, misaligned_grad=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_scale_and_extreme_values(dtype):
    scores = _scores((2, 2, 32, 32), dtype, spread=20.0)
    _check(scores, None, 4.0, "causal")
    _check(scores, None, 4.0, "none")


def test_runs_on_the_current_stream():
    scores = _scores((2, 4, 128, 128), torch.float16)
    expected = fused_scale_mask_softmax(scores, None, 1.0, "causal")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = fused_scale_mask_softmax(scores, None, 1.0, "causal")
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(got, expected)


# The dispatch predicate: where it says yes the kernels run and agree with the torch path;
# at the bounds where it says no, the kernels refuse too (so the predicate is not too strict
# or too loose there).
PREDICATE_CASES = [
    # (dtype, mask_type, batch, heads, seq_q, seq_k)
    (torch.float16, "causal", 1, 2, 16, 16),
    (torch.bfloat16, "padding", 2, 1, 1, 77),
    (torch.float16, "none", 1, 1, 2, MAX_KEY_LENGTH),
    (torch.bfloat16, "none", 1, 1, 1, 1),
]


@pytest.mark.parametrize("dtype, mask_type, batch, heads, seq_q, seq_k", PREDICATE_CASES)
def test_predicate_true_means_the_kernel_runs(dtype, mask_type, batch, heads, seq_q, seq_k):
    device = _device()
    assert fused_kernel_applies(dtype=dtype, mask_type=mask_type, seq_len_q=seq_q,
                                seq_len_k=seq_k, batch=batch, heads=heads,
                                device_type=device.type)
    mask = None
    if mask_type == "padding":
        mask = torch.zeros((batch, 1, seq_q, seq_k), dtype=torch.bool, device=device)
        mask[..., -1] = True
    _check(_scores((batch, heads, seq_q, seq_k), dtype), mask, 1.0, mask_type)


def test_predicate_false_where_the_kernels_refuse():
    device = _device()
    too_long = MAX_KEY_LENGTH + 1
    assert not fused_kernel_applies(dtype=torch.float16, mask_type="none", seq_len_q=1,
                                    seq_len_k=too_long, batch=1, heads=1,
                                    device_type=device.type)
    with pytest.raises(RuntimeError, match="key length"):
        fused_scale_mask_softmax(_scores((1, 1, 1, too_long), torch.float16), None, 1.0, "none")
    assert not fused_kernel_applies(dtype=torch.float32, mask_type="none", seq_len_q=4,
                                    seq_len_k=4, batch=1, heads=1, device_type=device.type)
    with pytest.raises(RuntimeError, match="float16 or bfloat16"):
        fused_scale_mask_softmax(_scores((1, 1, 4, 4), torch.float32), None, 1.0, "none")
    assert not fused_kernel_applies(dtype=torch.float16, mask_type="causal", seq_len_q=4,
                                    seq_len_k=8, batch=1, heads=1, device_type=device.type)
    with pytest.raises(ValueError, match="square"):
        fused_scale_mask_softmax(_scores((1, 1, 4, 8), torch.float16), None, 1.0, "causal")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_mask", [False, True])
def test_model_softmax_module_uses_the_kernels(dtype, with_mask):
    """FusedScaleMaskSoftmax (the model's entry point) dispatches here and matches its own
    torch path; a causal layer given a padding mask goes through the masked kernel."""
    from megatron.model import fused_softmax as model_softmax

    module_cls, causal = model_softmax.FusedScaleMaskSoftmax, model_softmax.AttnMaskType.causal
    batch, heads, seq, scale = 2, 4, 96, 0.125
    fused = module_cls(dtype == torch.float16, dtype == torch.bfloat16, causal, True,
                       scale=scale)
    reference = module_cls(False, False, causal, False, scale=scale)  # fp32 torch path
    mask = None
    if with_mask:
        generator = torch.Generator(device=_device()).manual_seed(3)
        mask = torch.rand((batch, 1, seq, seq), generator=generator, device=_device()) < 0.2
    assert fused.is_kernel_available(mask, batch, heads, seq, seq, dtype=dtype,
                                     device_type=_device().type)
    scores = _scores((batch, heads, seq, seq), dtype)
    grad = torch.randn(scores.shape, device=_device()).to(dtype)
    fused_in = scores.detach().requires_grad_(True)
    ref_in = scores.detach().float().requires_grad_(True)
    y = fused(fused_in, mask)
    y.backward(grad)
    y_ref = reference(ref_in, mask)
    y_ref.backward(grad.float())
    _assert_matches(y, fused_in.grad, y_ref.detach(), ref_in.grad, grad, scale)
