"""Convert a Hugging Face GPT-2 (`GPT2LMHeadModel`) state dict to GPTModel parameter names.

The result is the full (tensor-parallel size 1) state dict of `GPTModel` with
`TransformerConfig(normalization="layernorm", activation="gelu", openai_gelu=<HF
activation_function == "gelu_new">, position_embedding_type="learned_absolute",
add_bias_linear=True)`, tied embeddings, and the vocabulary padded with zero rows.

Usage: python tools/convert_hf_gpt2.py --hf-model-dir DIR --output FILE.pt
           [--make-vocab-size-divisible-by 128]
(DIR holds a saved GPT2LMHeadModel; nothing is downloaded.)
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, Mapping, Optional

import torch


def _qkv_to_megatron(fused: torch.Tensor, num_heads: int) -> torch.Tensor:
    """HF c_attn output order [q (all heads) | k | v] -> per-head interleaved
    [heads, (q, k, v), head_dim] (the classic Megatron layout), along dim 0."""
    rest = fused.shape[1:]
    head_dim = fused.shape[0] // (3 * num_heads)
    return (fused.reshape(3, num_heads, head_dim, *rest).transpose(0, 1)
            .reshape(3 * num_heads * head_dim, *rest).contiguous())


def convert_hf_gpt2_state_dict(hf: Mapping[str, torch.Tensor], *, num_attention_heads: int,
                               padded_vocab_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Map HF GPT-2 tensors to GPTModel names. HF's Conv1D weights are [in, out] and are
    transposed to torch's [out, in]."""
    prefix = "transformer." if "transformer.wte.weight" in hf else ""
    get = lambda name: hf[prefix + name]  # noqa: E731
    words = get("wte.weight")
    if padded_vocab_size is not None:
        if padded_vocab_size < words.shape[0]:
            raise ValueError(f"padded_vocab_size ({padded_vocab_size}) is smaller than the "
                             f"HF vocabulary ({words.shape[0]})")
        words = torch.cat([words, words.new_zeros(padded_vocab_size - words.shape[0],
                                                  words.shape[1])])
    out = {"language_model.embedding.word_embeddings.weight": words.clone(),
           "language_model.embedding.position_embeddings.weight": get("wpe.weight").clone()}
    layer = 0
    while f"{prefix}h.{layer}.ln_1.weight" in hf:
        src, dst = f"h.{layer}.", f"language_model.encoder.layers.{layer}."
        out[dst + "input_layernorm.weight"] = get(src + "ln_1.weight").clone()
        out[dst + "input_layernorm.bias"] = get(src + "ln_1.bias").clone()
        out[dst + "self_attention.query_key_value.weight"] = _qkv_to_megatron(
            get(src + "attn.c_attn.weight").t(), num_attention_heads)
        out[dst + "self_attention.query_key_value.bias"] = _qkv_to_megatron(
            get(src + "attn.c_attn.bias"), num_attention_heads)
        out[dst + "self_attention.dense.weight"] = get(src + "attn.c_proj.weight").t().contiguous()
        out[dst + "self_attention.dense.bias"] = get(src + "attn.c_proj.bias").clone()
        out[dst + "post_attention_layernorm.weight"] = get(src + "ln_2.weight").clone()
        out[dst + "post_attention_layernorm.bias"] = get(src + "ln_2.bias").clone()
        out[dst + "mlp.dense_h_to_4h.weight"] = get(src + "mlp.c_fc.weight").t().contiguous()
        out[dst + "mlp.dense_h_to_4h.bias"] = get(src + "mlp.c_fc.bias").clone()
        out[dst + "mlp.dense_4h_to_h.weight"] = get(src + "mlp.c_proj.weight").t().contiguous()
        out[dst + "mlp.dense_4h_to_h.bias"] = get(src + "mlp.c_proj.bias").clone()
        layer += 1
    if layer == 0:
        raise ValueError("no transformer layers (h.<i>.*) found in the HF state dict")
    out["language_model.encoder.final_layernorm.weight"] = get("ln_f.weight").clone()
    out["language_model.encoder.final_layernorm.bias"] = get("ln_f.bias").clone()
    return out


def _padded_size(vocab_size: int, divisible_by: int) -> int:
    return -(-vocab_size // divisible_by) * divisible_by


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hf-model-dir", required=True,
                        help="directory of a saved GPT2LMHeadModel (config.json + weights)")
    parser.add_argument("--output", required=True, help="where to torch.save the state dict")
    parser.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    args = parser.parse_args(argv)
    if not os.path.isdir(args.hf_model_dir):
        raise FileNotFoundError(f"--hf-model-dir {args.hf_model_dir} is not a directory")
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(args.hf_model_dir, local_files_only=True)
    cfg = hf.config
    if cfg.activation_function not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"activation_function {cfg.activation_function!r} in "
                         f"{args.hf_model_dir}/config.json has no GPTModel equivalent "
                         "(gelu -> exact GeLU, gelu_new -> --openai-gelu)")
    state = convert_hf_gpt2_state_dict(
        hf.state_dict(), num_attention_heads=cfg.n_head,
        padded_vocab_size=_padded_size(cfg.vocab_size, args.make_vocab_size_divisible_by))
    torch.save({"model": state,
                "config": {"num_layers": cfg.n_layer, "hidden_size": cfg.n_embd,
                           "num_attention_heads": cfg.n_head,
                           "max_position_embeddings": cfg.n_positions,
                           "layernorm_epsilon": cfg.layer_norm_epsilon,
                           "openai_gelu": cfg.activation_function != "gelu"}},
               args.output)


if __name__ == "__main__":
    main()
