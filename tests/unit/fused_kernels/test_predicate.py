"""The dispatch predicate: golden cases at every bound it states."""
import re
from pathlib import Path

import pytest
import torch

from megatron.fused_kernels import MAX_KEY_LENGTH, fused_kernel_applies

HEADER = Path(__file__).resolve().parents[3] / "megatron" / "fused_kernels" / "fused_softmax.h"


def _applies(**overrides) -> bool:
    case = dict(dtype=torch.float16, mask_type="padding", seq_len_q=128, seq_len_k=128, batch=2,
                heads=4, device_type="cuda")
    case.update(overrides)
    return fused_kernel_applies(**case)


def test_python_bound_matches_the_cuda_header():
    found = re.search(r"constexpr int kMaxKeyLength = (\d+);", HEADER.read_text())
    assert found is not None, f"kMaxKeyLength not found in {HEADER}"
    assert MAX_KEY_LENGTH == int(found.group(1)) == 16384


@pytest.mark.parametrize("mask_type", ["causal", "padding", "none"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_cuda_applies(mask_type, dtype):
    assert _applies(mask_type=mask_type, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int8])
def test_other_dtypes_do_not_apply(dtype):
    assert not _applies(dtype=dtype)


@pytest.mark.parametrize("device_type", ["cpu", "meta", "xpu", "hpu"])
def test_non_cuda_devices_do_not_apply(device_type):
    assert not _applies(device_type=device_type)


@pytest.mark.parametrize("mask_type", ["causal", "padding", "none"])
@pytest.mark.parametrize("seq_len, expected", [(1, True), (3, True), (17, True), (4095, True),
                                               (16384, True), (16385, False), (32768, False)])
def test_key_length_bounds(mask_type, seq_len, expected):
    # Square scores so that the causal kernel's own condition holds.
    assert _applies(mask_type=mask_type, seq_len_q=seq_len, seq_len_k=seq_len) is expected


def test_causal_needs_square_scores_but_padding_does_not():
    assert not _applies(mask_type="causal", seq_len_q=1, seq_len_k=128)
    assert not _applies(mask_type="causal", seq_len_q=128, seq_len_k=256)
    assert _applies(mask_type="padding", seq_len_q=1, seq_len_k=128)
    assert _applies(mask_type="none", seq_len_q=64, seq_len_k=100)


@pytest.mark.parametrize("field", ["batch", "heads", "seq_len_q", "seq_len_k"])
def test_empty_shapes_do_not_apply(field):
    assert not _applies(**{field: 0})


def test_row_count_bound():
    # batch * heads * seq_len_q rows; the grid holds at most 2**31 - 1 blocks of >= 1 row.
    assert _applies(batch=2**31 - 1, heads=1, seq_len_q=1, seq_len_k=16)
    assert not _applies(batch=2**20, heads=2**11, seq_len_q=1, seq_len_k=16)


@pytest.mark.parametrize("mask_type", ["Causal", "triangular", "", None])
def test_unknown_mask_type_is_a_value_error(mask_type):
    with pytest.raises(ValueError, match="mask_type"):
        _applies(mask_type=mask_type)


def test_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        fused_kernel_applies(torch.float16, "causal", 8, 8, 1, 1, "cuda")  # noqa
