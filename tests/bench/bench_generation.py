"""Benchmark: greedy generation with megatron.inference.generation.generate against Hugging
Face transformers' `generate`, on the same (random) GPT-2 weights, on CPU.

    OMP_NUM_THREADS=2 .venv/bin/python tests/bench/bench_generation.py \\
        [--layers 12 --hidden 768 --heads 12] [--prompt 128 --new 128] [--batches 1 8] \\
        [--dtypes fp32 bf16] [--long-context 1000]

For each dtype and batch: time to first token (prefill + one token) and decode tokens/s
(batch x (new - 1) tokens over the time after the first token), for both implementations in
the same process, one after the other. The weights are HF's random init copied into GPTModel
(GPT-2 layout: learned positions, tanh GeLU, LayerNorm, tied head); the first logits of both
are compared as a check. With --long-context L, the per-token decode time of a prompt of L
tokens is compared with that of --prompt tokens (the cache makes it grow little).

Each batch's line also gives the matmul floor: one decode step's weight matmuls alone (every
linear layer and the LM head on `batch` rows, nothing else), which bounds both programs: a
decode step reads every weight once, and at batch 1 that stream of weights is the step.
"""
from __future__ import annotations

import argparse
import time
from typing import Dict, List

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def hf_model(args, dtype):
    import transformers

    config = transformers.GPT2Config(
        vocab_size=args.vocab, n_positions=args.positions, n_embd=args.hidden,
        n_layer=args.layers, n_head=args.heads, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
        bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval().to(dtype)


def _per_head(fused: torch.Tensor, heads: int) -> torch.Tensor:
    """[q | k | v] rows -> Megatron's per-head [heads, (q, k, v), head_dim] rows."""
    rest = fused.shape[1:]
    return fused.reshape(3, heads, -1, *rest).transpose(0, 1).reshape(-1, *rest)


def megatron_model(hf, args, dtype, use_flash_attn: bool):
    from megatron.initialize import initialize_distributed
    from megatron.model.gpt_model import GPTModel
    from megatron.model.transformer_config import TransformerConfig

    initialize_distributed(tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
    padded = -(-args.vocab // 128) * 128
    config = TransformerConfig(
        num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.heads,
        max_position_embeddings=args.positions, seq_length=args.positions,
        padded_vocab_size=padded, hidden_dropout=0.0, attention_dropout=0.0,
        openai_gelu=True, layernorm_epsilon=1e-5, use_cpu_initialization=True,
        perform_initialization=False, params_dtype=dtype, use_flash_attn=use_flash_attn)
    model = GPTModel(config, parallel_output=False).eval()
    source = {name: tensor.float() for name, tensor in hf.transformer.state_dict().items()}
    words = source["wte.weight"]
    state = {"language_model.embedding.word_embeddings.weight":
             torch.cat([words, words.new_zeros(padded - words.shape[0], words.shape[1])]),
             "language_model.embedding.position_embeddings.weight": source["wpe.weight"],
             "language_model.encoder.final_layernorm.weight": source["ln_f.weight"],
             "language_model.encoder.final_layernorm.bias": source["ln_f.bias"]}
    for layer in range(args.layers):
        src, dst = f"h.{layer}.", f"language_model.encoder.layers.{layer}."
        pairs = {"input_layernorm": "ln_1", "post_attention_layernorm": "ln_2"}
        for ours, theirs in pairs.items():
            state[dst + ours + ".weight"] = source[src + theirs + ".weight"]
            state[dst + ours + ".bias"] = source[src + theirs + ".bias"]
        state[dst + "self_attention.query_key_value.weight"] = _per_head(
            source[src + "attn.c_attn.weight"].t(), args.heads)
        state[dst + "self_attention.query_key_value.bias"] = _per_head(
            source[src + "attn.c_attn.bias"], args.heads)
        for ours, theirs in {"self_attention.dense": "attn.c_proj",
                             "mlp.dense_h_to_4h": "mlp.c_fc",
                             "mlp.dense_4h_to_h": "mlp.c_proj"}.items():
            state[dst + ours + ".weight"] = source[src + theirs + ".weight"].t()
            state[dst + ours + ".bias"] = source[src + theirs + ".bias"]
    with torch.no_grad():
        parameters = dict(model.named_parameters())
        missing = set(parameters) - set(state)
        if missing:
            raise RuntimeError(f"unmapped parameters: {sorted(missing)[:3]}")
        for name, tensor in state.items():
            parameters[name].copy_(tensor)
    return model


def _timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(run, batch: int, new: int, repeats: int) -> Dict[str, float]:
    """run(tokens_to_generate) -> time to first token, decode tokens/s, per-step seconds
    (best of `repeats` after a warm-up call)."""
    run(2)
    first = _timed(lambda: run(1), repeats)
    full = _timed(lambda: run(new), repeats)
    step = (full - first) / (new - 1)
    return {"ttft_s": first, "decode_tok_s": batch / step, "step_s": step}


def bench_pair(hf, ours, args, batch: int, prompt_length: int, new: int) -> Dict[str, dict]:
    from megatron.inference.generation import generate
    from megatron.inference.sampling import SamplingParams

    prompts = torch.randint(1, args.vocab, (batch, prompt_length),
                            generator=torch.Generator().manual_seed(batch))

    def run_ours(count):
        generate(ours, prompts.tolist(), tokens_to_generate=count, vocab_size=args.vocab,
                 max_length=args.positions, sampling=SamplingParams(greedy=True))

    def run_hf(count):
        hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=count,
                    min_new_tokens=count, do_sample=False, use_cache=True, pad_token_id=0)

    with torch.no_grad():
        return {"megatron": measure(run_ours, batch, new, args.repeats),
                "transformers": measure(run_hf, batch, new, args.repeats)}


def matmul_floor_step(ours, batch: int, repeats: int) -> float:
    """Seconds of one decode step's weight matmuls alone, through the model's own linear
    path (best of `repeats` + 2)."""
    from megatron.core.tensor_parallel import few_rows_linear

    weights = [(module.weight, getattr(module, "bias", None))
               for module in ours.modules()
               if type(module).__name__ in ("ColumnParallelLinear", "RowParallelLinear")]
    weights.append((ours.shared_embedding_or_output_weight(), None))
    dtype = weights[0][0].dtype
    inputs = {weight.shape[1]: torch.randn(batch, weight.shape[1]).to(dtype)
              for weight, _ in weights}

    def sweep():
        for weight, bias in weights:
            few_rows_linear.linear(inputs[weight.shape[1]], weight, bias)

    with torch.no_grad():
        sweep()
        return _timed(sweep, repeats + 2)


def logits_difference(hf, ours, args) -> float:
    tokens = torch.randint(0, args.vocab, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = hf(tokens).logits.float()
        mine = ours(tokens, torch.arange(16)[None], None)[..., :args.vocab].float()
    return ((mine - theirs).abs().max() / theirs.abs().max()).item()


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--positions", type=int, default=1024)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--attention", choices=["classic", "sdpa"], default="sdpa",
                        help="GPTModel's attention path (sdpa: --use-flash-attn, torch SDPA).")
    parser.add_argument("--long-context", type=int, default=0,
                        help="Also time decoding after a prompt of this many tokens.")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"threads {torch.get_num_threads()}, {args.layers} layers h{args.hidden} "
          f"{args.heads} heads vocab {args.vocab}, prompt {args.prompt}, new {args.new}, "
          f"attention {args.attention}", flush=True)
    for name in args.dtypes:
        dtype = DTYPES[name]
        hf = hf_model(args, dtype)
        ours = megatron_model(hf, args, dtype, use_flash_attn=args.attention == "sdpa")
        print(f"[{name}] max |logit difference| / max |logit|: "
              f"{logits_difference(hf, ours, args):.2e}", flush=True)
        for batch in args.batches:
            result = bench_pair(hf, ours, args, batch, args.prompt, args.new)
            m, t = result["megatron"], result["transformers"]
            print(f"[{name}] batch {batch}: megatron ttft {m['ttft_s']:.3f} s, decode "
                  f"{m['decode_tok_s']:.1f} tok/s | transformers ttft {t['ttft_s']:.3f} s, "
                  f"decode {t['decode_tok_s']:.1f} tok/s | ratio "
                  f"{m['decode_tok_s'] / t['decode_tok_s']:.2f}x", flush=True)
            floor = matmul_floor_step(ours, batch, args.repeats)
            print(f"[{name}] batch {batch}: matmul floor {floor * 1e3:.1f} ms/step = "
                  f"{batch / floor:.1f} tok/s; megatron step {m['step_s'] * 1e3:.1f} ms, "
                  f"transformers {t['step_s'] * 1e3:.1f} ms: no program can beat transformers "
                  f"by more than {t['step_s'] / floor:.2f}x", flush=True)
        if args.long_context:
            short = bench_pair(hf, ours, args, 1, args.prompt, 17)["megatron"]["step_s"]
            long = bench_pair(hf, ours, args, 1, args.long_context, 17)["megatron"]["step_s"]
            print(f"[{name}] megatron batch 1 per-token decode: {short * 1e3:.1f} ms after "
                  f"{args.prompt} tokens, {long * 1e3:.1f} ms after {args.long_context} "
                  f"({long / short:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
