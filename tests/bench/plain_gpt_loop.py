"""A plain single-file PyTorch GPT training loop: the reference pretrain_gpt.py is measured against.

    OMP_NUM_THREADS=1 .venv/bin/python tests/bench/plain_gpt_loop.py --layers 12 --hidden 768 \
        --heads 12 --seq 512 --batch 2 --iters 8 --precision bf16

Written to be honest rather than slow: GPT-2 block (pre-LayerNorm, fused QKV, GELU MLP, tied
LM head), torch's scaled_dot_product_attention where it is the faster (on CPU: fp32 without
dropout; else matmul + softmax, `--attention`), torch.optim.AdamW with `fused=True` (the
foreach kernels where fused is refused), gradient clipping, no DeepSpeed, no wrappers.
bf16 is `torch.autocast` bf16 over fp32 weights (the usual mixed precision of a plain loop).
It prints one line per iteration in the format pretrain_gpt.py logs, so the same parser reads
both: `iteration N/ M | elapsed time per iteration (ms): X | lm loss: L |`.
"""
import argparse
import math
import time
from contextlib import nullcontext
from typing import Optional

import torch
import torch.nn.functional as F


def _sdpa_is_faster(query: torch.Tensor, dropout: float) -> bool:
    """SDPA's CPU flash kernel wins in fp32 without dropout; with dropout (a math fallback)
    or in bf16 the explicit matmul + softmax is faster here (tests/bench/RESULTS.md)."""
    return query.is_cuda or (query.dtype == torch.float32 and dropout == 0.0)


class Block(torch.nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float, attention: str) -> None:
        super().__init__()
        self.heads = heads
        self.attention = attention
        self.dropout = dropout
        self.ln_attn = torch.nn.LayerNorm(hidden)
        self.qkv = torch.nn.Linear(hidden, 3 * hidden)
        self.proj = torch.nn.Linear(hidden, hidden)
        self.ln_mlp = torch.nn.LayerNorm(hidden)
        self.fc_in = torch.nn.Linear(hidden, 4 * hidden)
        self.fc_out = torch.nn.Linear(4 * hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [b, s, h]
        b, s, h = x.shape
        q, k, v = self.qkv(self.ln_attn(x)).view(b, s, 3, self.heads, h // self.heads).unbind(2)
        p = self.dropout if self.training else 0.0
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [b, heads, s, d]
        if self.attention == "sdpa" or (self.attention == "auto" and _sdpa_is_faster(q, p)):
            context = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
            causal = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
            probs = F.dropout(torch.softmax(scores.masked_fill(causal, float("-inf")), dim=-1),
                              p, self.training)
            context = probs @ v
        x = x + F.dropout(self.proj(context.transpose(1, 2).reshape(b, s, h)), p, self.training)
        mlp = self.fc_out(F.gelu(self.fc_in(self.ln_mlp(x)), approximate="tanh"))
        return x + F.dropout(mlp, p, self.training)


class PlainGPT(torch.nn.Module):
    def __init__(self, *, vocab: int, layers: int, hidden: int, heads: int, seq: int,
                 dropout: float, attention: str = "auto") -> None:
        super().__init__()
        self.tokens = torch.nn.Embedding(vocab, hidden)
        self.positions = torch.nn.Embedding(seq, hidden)
        self.dropout = dropout
        self.blocks = torch.nn.ModuleList(Block(hidden, heads, dropout, attention) for _ in range(layers))
        self.ln_final = torch.nn.LayerNorm(hidden)
        for name, param in self.named_parameters():
            if name.endswith("bias"):
                torch.nn.init.zeros_(param)
            elif param.dim() > 1:
                # GPT-2 init: N(0, 0.02), output projections scaled down by depth
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "fc_out.weight")) else 0.02
                torch.nn.init.normal_(param, std=std)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = F.dropout(self.tokens(tokens) + self.positions(positions), self.dropout, self.training)
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.ln_final(x), self.tokens.weight)  # tied head
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.reshape(-1))


def batches(data_prefix: Optional[str], *, vocab: int, batch: int, seq: int):
    """Consecutive (tokens, labels) windows of the token file `<prefix>.bin` (uint16, as
    preprocess_data writes for GPT-2's vocabulary), or random tokens without a prefix."""
    if data_prefix is None:
        generator = torch.Generator().manual_seed(0)
        while True:
            sample = torch.randint(0, vocab, (batch, seq + 1), generator=generator)
            yield sample[:, :-1], sample[:, 1:]
    import numpy as np

    stream = np.memmap(data_prefix + ".bin", dtype=np.uint16, mode="r")
    window = batch * (seq + 1)
    offset = 0
    while True:
        if offset + window > len(stream):
            offset = 0
        sample = torch.from_numpy(stream[offset:offset + window].astype(np.int64)).view(batch, seq + 1)
        offset += window
        yield sample[:, :-1], sample[:, 1:]


def make_optimizer(model: torch.nn.Module, *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    except (RuntimeError, ValueError):  # a build without fused CPU kernels
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, foreach=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=50304)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--attention", choices=["auto", "sdpa", "manual"], default="auto",
                        help="auto: the faster of SDPA and matmul+softmax for the call")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--data-path", default=None, help="indexed dataset prefix (uint16 .bin)")
    parser.add_argument("--retain-freed-memory", action="store_true",
                        help="the malloc policy pretrain_gpt.py applies on CPU "
                             "(megatron/training/cpu_allocator.py); off: what a plain loop does")
    args = parser.parse_args()
    if args.retain_freed_memory:
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from megatron.training.cpu_allocator import retain_freed_memory

        retain_freed_memory()

    torch.manual_seed(1234)
    model = PlainGPT(vocab=args.vocab, layers=args.layers, hidden=args.hidden, heads=args.heads,
                     seq=args.seq, dropout=args.dropout, attention=args.attention)
    optimizer = make_optimizer(model, lr=6e-4, weight_decay=0.1)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16"
                else nullcontext())
    data = batches(args.data_path, vocab=args.vocab, batch=args.batch, seq=args.seq)
    print(f"plain loop: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"optimizer {'fused' if optimizer.defaults.get('fused') else 'foreach'} AdamW, "
          f"{args.precision}, {torch.get_num_threads()} threads", flush=True)
    for iteration in range(1, args.iters + 1):
        start = time.perf_counter()
        tokens, labels = next(data)
        with autocast:
            loss = model(tokens, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.item()
        ms = (time.perf_counter() - start) * 1000.0
        print(f" iteration {iteration:8d}/{args.iters:8d} | elapsed time per iteration (ms): "
              f"{ms:.1f} | lm loss: {value:.6E} |", flush=True)


if __name__ == "__main__":
    main()
