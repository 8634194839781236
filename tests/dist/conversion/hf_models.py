"""Tiny transformers models, real text, and this project's logits for the conversion tests.

Both sides are spelled out here independently of `megatron.conversion`: the transformers
models come from transformers' own config classes, and the GPTModel configurations that must
compute the same function are written field by field from those configs.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Dict, Optional

import torch
import transformers

from megatron.core import parallel_state
from megatron.model.gpt_model import GPTModel
from megatron.model.transformer_config import TransformerConfig
from tests.dist.model.model_utils import load_full_state_dict, setup_parallel

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "hf_conversion" / "shakespeare_gpt2_ids.json"
GPT2_VOCAB = 50257
SEQ = 32


def text_documents():
    """Real text: tiny-Shakespeare documents as GPT-2 token ids (see the fixture's description)."""
    with open(FIXTURE) as handle:
        return json.load(handle)["documents"]


def text_batch(batch: int = 2, seq: int = SEQ) -> torch.Tensor:
    """[batch, seq] consecutive windows of real text."""
    tokens = [t for document in text_documents() for t in document]
    return torch.tensor([tokens[i * seq:(i + 1) * seq] for i in range(batch)], dtype=torch.long)


def _scramble(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Larger-than-default random weights, so every tensor visibly moves the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1 and ("ln" in name or "norm" in name):
                param.copy_(torch.rand(param.shape, generator=generator) + 0.5)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.eval()


def gpt2_model(*, vocab_size: int = GPT2_VOCAB, activation: str = "gelu_new", tied: bool = True,
               layers: int = 2, seed: int = 0) -> transformers.GPT2LMHeadModel:
    config = transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=SEQ, n_embd=64, n_layer=layers, n_head=4,
        activation_function=activation, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        tie_word_embeddings=tied, bos_token_id=50256, eos_token_id=50256)
    return _scramble(transformers.GPT2LMHeadModel(config), seed)


def llama_model(*, vocab_size: int = GPT2_VOCAB, kv_heads: int = 2, tied: bool = False,
                bias: bool = False, layers: int = 2, seed: int = 0) -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=SEQ,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attention_bias=bias, mlp_bias=bias, tie_word_embeddings=tied,
        bos_token_id=50256, eos_token_id=50256)
    return _scramble(transformers.LlamaForCausalLM(config), seed)


def gpt_config_kwargs(hf_config, *, padded_vocab_size: int, tp: int = 1) -> Dict:
    """TransformerConfig fields computing what the transformers model computes."""
    common = dict(hidden_dropout=0.0, attention_dropout=0.0, use_cpu_initialization=True,
                  padded_vocab_size=padded_vocab_size, tensor_model_parallel_size=tp,
                  untie_embeddings_and_output_weights=not hf_config.tie_word_embeddings)
    if hf_config.model_type == "gpt2":
        return dict(common, num_layers=hf_config.n_layer, hidden_size=hf_config.n_embd,
                    num_attention_heads=hf_config.n_head,
                    ffn_hidden_size=hf_config.n_inner or 4 * hf_config.n_embd,
                    max_position_embeddings=hf_config.n_positions,
                    seq_length=hf_config.n_positions,
                    layernorm_epsilon=hf_config.layer_norm_epsilon,
                    openai_gelu=hf_config.activation_function != "gelu")
    return dict(common, num_layers=hf_config.num_hidden_layers, hidden_size=hf_config.hidden_size,
                num_attention_heads=hf_config.num_attention_heads,
                num_key_value_heads=hf_config.num_key_value_heads,
                kv_channels=hf_config.head_dim, ffn_hidden_size=hf_config.intermediate_size,
                max_position_embeddings=hf_config.max_position_embeddings,
                seq_length=hf_config.max_position_embeddings,
                layernorm_epsilon=hf_config.rms_norm_eps, normalization="rmsnorm",
                activation="swiglu", position_embedding_type="rope",
                rotary_base=float(hf_config.rope_parameters["rope_theta"]),
                add_bias_linear=hf_config.attention_bias)


def _logits(model: GPTModel, tokens: torch.Tensor) -> Optional[torch.Tensor]:
    position_ids = torch.arange(tokens.shape[1]).expand_as(tokens)
    with torch.no_grad():
        logits = model(tokens, position_ids, None)
    return logits if parallel_state.get_tensor_model_parallel_rank() == 0 else None


def logits_from_full_state(config_kwargs: Dict, full_state: Dict[str, torch.Tensor],
                           tokens: torch.Tensor) -> Optional[torch.Tensor]:
    """(On every rank of a pool) GPTModel's logits [b, s, padded V] with a full state dict."""
    setup_parallel(config_kwargs["tensor_model_parallel_size"])
    model = GPTModel(TransformerConfig(**config_kwargs), parallel_output=False).eval()
    load_full_state_dict(model, full_state)
    return _logits(model, tokens)


_LAYER_FILE = re.compile(r"^layer_(\d+)-model_(\d+)-model_states\.pt$")


def rank_shards(tag_dir: str, tp_rank: int, num_layers: int) -> Dict[str, torch.Tensor]:
    """This tensor-parallel rank's tensors in a checkpoint folder, with GPTModel's names, read
    file by file as docs/formats.md (3B, 4) describes them: no merging."""
    layer_files = sorted(name for name in os.listdir(tag_dir) if _LAYER_FILE.match(name)
                         and int(_LAYER_FILE.match(name).group(2)) == tp_rank)
    if not layer_files:
        path = os.path.join(tag_dir, f"mp_rank_{tp_rank:02d}_model_states.pt")
        return dict(torch.load(path, map_location="cpu", weights_only=False)["module"])
    state = {}
    for name in layer_files:
        index = int(_LAYER_FILE.match(name).group(1))
        content = torch.load(os.path.join(tag_dir, name), map_location="cpu", weights_only=True)
        for key, tensor in content.items():
            if index == 1:
                full = "language_model.embedding." + key
            elif index <= num_layers + 1:
                full = f"language_model.encoder.layers.{index - 2}.{key}"
            elif index == num_layers + 2:
                full = "language_model.encoder.final_layernorm." + key
            else:
                assert key == "lm_head.weight", key
                full = "language_model.output_layer.weight"
            state[full] = tensor
    return state


def logits_from_checkpoint(config_kwargs: Dict, tag_dir: str,
                           tokens: torch.Tensor) -> Optional[torch.Tensor]:
    """(On every rank of a pool of TP ranks) GPTModel's logits with each rank's own shards
    loaded straight from the checkpoint's files."""
    setup_parallel(config_kwargs["tensor_model_parallel_size"])
    model = GPTModel(TransformerConfig(**config_kwargs), parallel_output=False).eval()
    rank = parallel_state.get_tensor_model_parallel_rank()
    model.load_state_dict(rank_shards(tag_dir, rank, config_kwargs["num_layers"]), strict=True)
    return _logits(model, tokens)


def relative_difference(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected| / max |expected|."""
    return float((got - expected).abs().max() / expected.abs().max())
