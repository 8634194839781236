"""`F.linear` for the few rows of a generation step on a CPU.

A decode step multiplies a handful of rows (one token per sequence) by every weight. For some
row counts torch's CPU kernels (MKL and oneDNN in torch 2.13) are much slower for
input @ weight^T, the form `F.linear` takes, than for (weight @ input^T)^T, the same product
with the operands swapped: in bf16 at 2-32 rows by 1.2-1.7x, in fp32 at 8-15 rows by 1.1-2x
(the 50k-row LM head gains most); elsewhere they are equal or the swap is slower (fp32 at 2-6
rows by up to 2x; one row, a batch-1 decode step, measured equal in fp32 and slower in bf16
end to end). `tests/bench/bench_few_rows_linear.py` prints the table. The swapped form
sums the same products in another order: results differ by round-off only.

Used without autograd only (generation, evaluation), so training is untouched; on
accelerators `F.linear` is always taken.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

SWAPPED_ROW_COUNTS = {torch.float32: range(8, 16), torch.bfloat16: range(2, 33)}
"""Row counts for which the swapped product is used on a CPU, by dtype (measured above)."""


def uses_swapped_product(input: torch.Tensor, weight: torch.Tensor) -> bool:
    if input.device.type != "cpu" or input.dtype != weight.dtype:
        return False
    if torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad):
        return False
    rows = input.numel() // max(1, input.shape[-1])
    return rows in SWAPPED_ROW_COUNTS.get(input.dtype, ())


def linear(input: torch.Tensor, weight: torch.Tensor,
           bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """input [..., in] x weight [out, in] (+ bias [out]) -> [..., out], like `F.linear`."""
    if not uses_swapped_product(input, weight):
        return F.linear(input, weight, bias)
    rows = input.reshape(-1, input.shape[-1]).t()
    if bias is None:
        product = torch.mm(weight, rows)
    else:
        product = torch.addmm(bias.unsqueeze(1), weight, rows)
    return product.t().contiguous().view(*input.shape[:-1], weight.shape[0])
