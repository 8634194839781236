"""The one mapping between this project's GPTModel (full, tensor-parallel size 1) and Hugging
Face transformers' `GPT2LMHeadModel` and `LlamaForCausalLM`: configurations, parameter names
and tensor layouts. Export, import and text generation all go through it.

Layouts (docs/formats.md, section 4):
- fused QKV: GPTModel's `query_key_value` rows are [groups, queries_per_group + 2, head_dim]
  (each key/value group's query heads, then its key head, then its value head). GPT-2's
  `c_attn` is [all q | all k | all v] and a `Conv1D` ([in, out], the transpose of a
  `Linear`); Llama has separate `q_proj`, `k_proj`, `v_proj`. Both transformers models rotate
  "half" of each head like this project's rotary embedding, so the heads need no further
  permutation (Meta's original Llama files would; transformers' files do not).
- SwiGLU: `dense_h_to_4h` is [gate; up] = Llama's [`gate_proj`; `up_proj`].
- vocabulary: this project pads the embedding (and an untied head) with rows up to the padded
  vocabulary; transformers gets the tokenizer's rows only, and imports are padded with zeros.

A model shape with no transformers equivalent is refused with a `ValueError` naming the flag
or config field (one line).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch

GPT2 = "GPT2LMHeadModel"
LLAMA = "LlamaForCausalLM"
ARCHITECTURES = (GPT2, LLAMA)

_EMBEDDING = "language_model.embedding."
_LAYER = "language_model.encoder.layers."
_FINAL_NORM = "language_model.encoder.final_layernorm."
_OUTPUT = "language_model.output_layer.weight"
# Buffers older transformers files carry next to the weights; they hold no learned values.
_IGNORED_HF_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


@dataclass(frozen=True)
class ModelShape:
    """Everything both sides need to agree on, in this project's terms."""

    architecture: str
    """`GPT2LMHeadModel` or `LlamaForCausalLM`."""
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    ffn_hidden_size: int
    vocab_size: int
    """The tokenizer's vocabulary: the rows transformers gets."""
    max_position_embeddings: int
    layernorm_epsilon: float
    untied: bool
    add_bias_linear: bool
    openai_gelu: bool = False
    rotary_base: float = 10000.0
    init_method_std: float = 0.02

    @property
    def queries_per_group(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads


# -- this project's flags -> shape ------------------------------------------------------------

def _refuse(option: str, value: Any, architecture: str, why: str) -> ValueError:
    return ValueError(f"{option} {value}: {why}; {architecture} has no equivalent")


def architecture_of_args(args: argparse.Namespace) -> str:
    """The transformers class for a run's flags, or ValueError naming the flag that has no
    equivalent there (learned positions -> GPT-2, rotary -> Llama)."""
    for flag, dest in (("--apply-layernorm-1p", "apply_layernorm_1p"),
                       ("--apply-residual-connection-post-layernorm",
                        "apply_residual_connection_post_layernorm"),
                       ("--squared-relu", "squared_relu")):
        if getattr(args, dest, False):
            raise ValueError(f"{flag} has no transformers equivalent (GPT2LMHeadModel or "
                             "LlamaForCausalLM)")
    experts = getattr(args, "num_experts", [1]) or [1]
    experts = experts if isinstance(experts, (list, tuple)) else [experts]
    if any(int(n) > 1 for n in experts):
        raise ValueError(f"--num-experts {' '.join(map(str, experts))}: mixture-of-experts "
                         "models have no GPT2LMHeadModel/LlamaForCausalLM equivalent")
    rotary = bool(getattr(args, "use_rotary_position_embeddings", False))
    learned = bool(getattr(args, "add_position_embedding", True)) and not rotary
    if not rotary and not learned:
        raise ValueError("--no-position-embedding: a model without position embeddings has no "
                         "transformers equivalent (learned positions -> GPT2LMHeadModel, "
                         "--use-rotary-position-embeddings -> LlamaForCausalLM)")
    normalization = getattr(args, "normalization", "layernorm")
    swiglu = bool(getattr(args, "swiglu", False))
    if learned:
        if normalization != "layernorm":
            raise _refuse("--normalization", normalization, GPT2, "learned positions mean GPT-2, "
                          "which uses LayerNorm")
        if swiglu:
            raise _refuse("--swiglu", "", GPT2, "learned positions mean GPT-2, whose MLP is GeLU")
        heads = int(args.num_attention_heads)
        kv_heads = getattr(args, "num_key_value_heads", None) or heads
        if kv_heads != heads:
            raise _refuse("--num-key-value-heads", kv_heads, GPT2,
                          "grouped-query attention")
        kv_channels = getattr(args, "kv_channels", None)
        if kv_channels is not None and kv_channels * heads != int(args.hidden_size):
            raise _refuse("--kv-channels", kv_channels, GPT2,
                          "a head size other than hidden size / heads")
        return GPT2
    if normalization != "rmsnorm":
        raise _refuse("--normalization", normalization, LLAMA,
                      "rotary positions mean Llama, which uses RMSNorm")
    if not swiglu:
        raise ValueError(f"--swiglu is missing: rotary positions mean Llama, whose MLP is "
                         f"SwiGLU; {LLAMA} has no GeLU MLP")
    percent = float(getattr(args, "rotary_percent", 1.0))
    if percent != 1.0:
        raise _refuse("--rotary-percent", percent, LLAMA,
                      "Llama rotates every dimension of each head")
    return LLAMA


def shape_from_args(args: argparse.Namespace, *, vocab_size: int) -> ModelShape:
    """The shape of a checkpoint's model from its saved flags (`SavedCheckpoint.args`);
    `vocab_size` is its tokenizer's (unpadded) vocabulary."""
    architecture = architecture_of_args(args)
    heads = int(args.num_attention_heads)
    hidden = int(args.hidden_size)
    kv_heads = int(getattr(args, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(args, "kv_channels", None) or hidden // heads)
    ffn = getattr(args, "ffn_hidden_size", None)
    swiglu = architecture == LLAMA
    if ffn is None:
        ffn = int(4 * hidden * 2 / 3 / 64) * 64 if swiglu else 4 * hidden
    padded = getattr(args, "padded_vocab_size", None)
    if padded is not None and vocab_size > int(padded):
        raise ValueError(f"the tokenizer's vocabulary ({vocab_size}) is larger than the "
                         f"checkpoint's padded vocabulary ({padded})")
    return ModelShape(
        architecture=architecture, num_layers=int(args.num_layers), hidden_size=hidden,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        ffn_hidden_size=int(ffn), vocab_size=int(vocab_size),
        max_position_embeddings=int(args.max_position_embeddings),
        layernorm_epsilon=float(getattr(args, "layernorm_epsilon", 1e-5)),
        untied=bool(getattr(args, "untie_embeddings_and_output_weights", False)),
        add_bias_linear=bool(getattr(args, "add_bias_linear", True)),
        openai_gelu=bool(getattr(args, "openai_gelu", False)),
        rotary_base=float(getattr(args, "rope_theta", 10000)),
        init_method_std=float(getattr(args, "init_method_std", 0.02)))


def megatron_flags(shape: ModelShape) -> List[str]:
    """The model flags pretrain_gpt.py needs for `shape` (tokenizer and layout flags apart)."""
    flags = ["--num-layers", str(shape.num_layers), "--hidden-size", str(shape.hidden_size),
             "--num-attention-heads", str(shape.num_attention_heads),
             "--ffn-hidden-size", str(shape.ffn_hidden_size),
             "--max-position-embeddings", str(shape.max_position_embeddings),
             "--layernorm-epsilon", repr(shape.layernorm_epsilon)]
    if shape.architecture == LLAMA:
        flags += ["--use-rotary-position-embeddings", "--normalization", "rmsnorm", "--swiglu",
                  "--rotary-position-embeddings-theta", str(int(shape.rotary_base))]
        if shape.num_key_value_heads != shape.num_attention_heads:
            flags += ["--num-key-value-heads", str(shape.num_key_value_heads)]
        if shape.head_dim * shape.num_attention_heads != shape.hidden_size:
            flags += ["--kv-channels", str(shape.head_dim)]
    elif shape.openai_gelu:
        flags.append("--openai-gelu")
    if shape.untied:
        flags.append("--untie-embeddings-and-output-weights")
    if not shape.add_bias_linear:
        flags.append("--disable-bias-linear")
    return flags


# -- transformers config.json <-> shape -------------------------------------------------------

def hf_config(shape: ModelShape, *, dtype: torch.dtype, eos_token_id: Optional[int],
              bos_token_id: Optional[int] = None) -> Dict[str, Any]:
    """config.json of the exported model (plain JSON values; dropout off)."""
    bos = eos_token_id if bos_token_id is None else bos_token_id
    dtype_name = str(dtype).replace("torch.", "")
    if shape.architecture == GPT2:
        return {
            "architectures": [GPT2], "model_type": "gpt2", "vocab_size": shape.vocab_size,
            "n_positions": shape.max_position_embeddings, "n_embd": shape.hidden_size,
            "n_layer": shape.num_layers, "n_head": shape.num_attention_heads,
            "n_inner": shape.ffn_hidden_size,
            "activation_function": "gelu_new" if shape.openai_gelu else "gelu",
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            "layer_norm_epsilon": shape.layernorm_epsilon,
            "initializer_range": shape.init_method_std, "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
            "tie_word_embeddings": not shape.untied, "bos_token_id": bos,
            "eos_token_id": eos_token_id, "use_cache": True, "dtype": dtype_name}
    return {
        "architectures": [LLAMA], "model_type": "llama", "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size, "intermediate_size": shape.ffn_hidden_size,
        "num_hidden_layers": shape.num_layers, "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads, "head_dim": shape.head_dim,
        "hidden_act": "silu", "max_position_embeddings": shape.max_position_embeddings,
        "rms_norm_eps": shape.layernorm_epsilon, "initializer_range": shape.init_method_std,
        # rope_parameters for transformers >= 5, rope_theta for older releases.
        "rope_parameters": {"rope_type": "default", "rope_theta": shape.rotary_base},
        "rope_theta": shape.rotary_base,
        "attention_bias": shape.add_bias_linear, "mlp_bias": shape.add_bias_linear,
        "attention_dropout": 0.0, "tie_word_embeddings": not shape.untied,
        "bos_token_id": bos, "eos_token_id": eos_token_id, "use_cache": True,
        "dtype": dtype_name}


def _architecture_of_config(config: Dict[str, Any]) -> str:
    names = config.get("architectures") or []
    model_type = config.get("model_type")
    if model_type == "gpt2" and (not names or names == [GPT2]):
        return GPT2
    if model_type == "llama" and (not names or names == [LLAMA]):
        return LLAMA
    shown = ", ".join(names) or f"model_type {model_type!r}"
    raise ValueError(f"architecture {shown} is not supported (only {GPT2} and {LLAMA})")


def _require_value(config: Dict[str, Any], key: str, expected: Any, architecture: str) -> None:
    value = config.get(key, expected)
    if value != expected:
        raise ValueError(f"config.json {key}={value!r} has no equivalent in this project "
                         f"({architecture} is supported with {key}={expected!r})")


def shape_from_hf_config(config: Dict[str, Any]) -> ModelShape:
    """The shape of a transformers model from its config.json (read as JSON: no code runs)."""
    architecture = _architecture_of_config(config)
    if architecture == GPT2:
        activation = config.get("activation_function", "gelu_new")
        if activation not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"config.json activation_function={activation!r} has no "
                             "equivalent here (gelu -> exact GeLU; gelu_new or "
                             "gelu_pytorch_tanh -> --openai-gelu)")
        for key, expected in (("scale_attn_weights", True),
                              ("scale_attn_by_inverse_layer_idx", False),
                              ("add_cross_attention", False)):
            _require_value(config, key, expected, architecture)
        hidden, heads = int(config.get("n_embd", 768)), int(config.get("n_head", 12))
        return ModelShape(
            architecture=GPT2, num_layers=int(config.get("n_layer", 12)), hidden_size=hidden,
            num_attention_heads=heads, num_key_value_heads=heads, head_dim=hidden // heads,
            ffn_hidden_size=int(config.get("n_inner") or 4 * hidden),
            vocab_size=int(config.get("vocab_size", 50257)),
            max_position_embeddings=int(config.get("n_positions", 1024)),
            layernorm_epsilon=float(config.get("layer_norm_epsilon", 1e-5)),
            untied=not config.get("tie_word_embeddings", True), add_bias_linear=True,
            openai_gelu=activation != "gelu",
            init_method_std=float(config.get("initializer_range", 0.02)))
    _require_value(config, "hidden_act", "silu", architecture)
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"config.json rope type {rope_type!r} has no equivalent here (only "
                         "the default rotary embedding)")
    if float(rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))) != 1.0:
        raise ValueError("config.json partial_rotary_factor < 1 has no equivalent for "
                         f"{LLAMA} here")
    theta = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    if theta != int(theta):
        raise ValueError(f"config.json rope_theta={theta} is not an integer, which "
                         "--rotary-position-embeddings-theta needs")
    attention_bias = bool(config.get("attention_bias", False))
    mlp_bias = bool(config.get("mlp_bias", False))
    if attention_bias != mlp_bias:
        raise ValueError(f"config.json attention_bias={attention_bias} with mlp_bias={mlp_bias} "
                         "has no equivalent here (--disable-bias-linear drops both or neither)")
    hidden, heads = int(config.get("hidden_size", 4096)), int(config.get("num_attention_heads", 32))
    return ModelShape(
        architecture=LLAMA, num_layers=int(config.get("num_hidden_layers", 32)),
        hidden_size=hidden, num_attention_heads=heads,
        num_key_value_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
        ffn_hidden_size=int(config.get("intermediate_size", 11008)),
        vocab_size=int(config.get("vocab_size", 32000)),
        max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
        layernorm_epsilon=float(config.get("rms_norm_eps", 1e-6)),
        untied=not config.get("tie_word_embeddings", False), add_bias_linear=attention_bias,
        rotary_base=theta, init_method_std=float(config.get("initializer_range", 0.02)))


# -- tensor names and layouts -----------------------------------------------------------------

def _qkv_rows(shape: ModelShape) -> Tuple[int, int]:
    return shape.num_attention_heads * shape.head_dim, shape.num_key_value_heads * shape.head_dim


def split_qkv(shape: ModelShape, fused: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor,
                                                                  torch.Tensor]:
    """GPTModel's full fused QKV (weight [rows, in] or bias [rows]) -> q, k, v in head order."""
    rest = fused.shape[1:]
    grouped = fused.reshape(shape.num_key_value_heads, shape.queries_per_group + 2,
                            shape.head_dim, *rest)
    q_rows, kv_rows = _qkv_rows(shape)
    query = grouped[:, :shape.queries_per_group].reshape(q_rows, *rest)
    key = grouped[:, shape.queries_per_group].reshape(kv_rows, *rest)
    value = grouped[:, shape.queries_per_group + 1].reshape(kv_rows, *rest)
    return query, key, value


def fuse_qkv(shape: ModelShape, query: torch.Tensor, key: torch.Tensor,
             value: torch.Tensor) -> torch.Tensor:
    """The inverse of `split_qkv`."""
    rest = query.shape[1:]
    groups, per_group, head_dim = (shape.num_key_value_heads, shape.queries_per_group,
                                   shape.head_dim)
    fused = torch.cat([query.reshape(groups, per_group, head_dim, *rest),
                       key.reshape(groups, 1, head_dim, *rest),
                       value.reshape(groups, 1, head_dim, *rest)], dim=1)
    return fused.reshape(-1, *rest).contiguous()


def _gpt2_layer_names(layer: int) -> Dict[str, str]:
    """GPTModel layer suffix -> GPT-2 name."""
    hf = f"transformer.h.{layer}."
    names = {"input_layernorm.weight": "ln_1.weight", "input_layernorm.bias": "ln_1.bias",
             "self_attention.query_key_value.weight": "attn.c_attn.weight",
             "self_attention.query_key_value.bias": "attn.c_attn.bias",
             "self_attention.dense.weight": "attn.c_proj.weight",
             "self_attention.dense.bias": "attn.c_proj.bias",
             "post_attention_layernorm.weight": "ln_2.weight",
             "post_attention_layernorm.bias": "ln_2.bias",
             "mlp.dense_h_to_4h.weight": "mlp.c_fc.weight", "mlp.dense_h_to_4h.bias": "mlp.c_fc.bias",
             "mlp.dense_4h_to_h.weight": "mlp.c_proj.weight",
             "mlp.dense_4h_to_h.bias": "mlp.c_proj.bias"}
    return {ours: hf + theirs for ours, theirs in names.items()}


def _llama_linear_names(layer: int) -> Dict[str, List[str]]:
    hf = f"model.layers.{layer}."
    return {"self_attention.query_key_value": [hf + "self_attn.q_proj", hf + "self_attn.k_proj",
                                               hf + "self_attn.v_proj"],
            "self_attention.dense": [hf + "self_attn.o_proj"],
            "mlp.dense_h_to_4h": [hf + "mlp.gate_proj", hf + "mlp.up_proj"],
            "mlp.dense_4h_to_h": [hf + "mlp.down_proj"]}


def hf_tensor_shapes(shape: ModelShape) -> List[Tuple[str, Tuple[int, ...]]]:
    """Every tensor of the transformers model (name, shape), in export order."""
    h, ffn, vocab = shape.hidden_size, shape.ffn_hidden_size, shape.vocab_size
    q_rows, kv_rows = _qkv_rows(shape)
    out: List[Tuple[str, Tuple[int, ...]]] = []
    if shape.architecture == GPT2:
        out += [("transformer.wte.weight", (vocab, h)),
                ("transformer.wpe.weight", (shape.max_position_embeddings, h))]
        for layer in range(shape.num_layers):
            p = f"transformer.h.{layer}."
            out += [(p + "ln_1.weight", (h,)), (p + "ln_1.bias", (h,)),
                    (p + "attn.c_attn.weight", (h, q_rows + 2 * kv_rows)),
                    (p + "attn.c_attn.bias", (q_rows + 2 * kv_rows,)),
                    (p + "attn.c_proj.weight", (q_rows, h)), (p + "attn.c_proj.bias", (h,)),
                    (p + "ln_2.weight", (h,)), (p + "ln_2.bias", (h,)),
                    (p + "mlp.c_fc.weight", (h, ffn)), (p + "mlp.c_fc.bias", (ffn,)),
                    (p + "mlp.c_proj.weight", (ffn, h)), (p + "mlp.c_proj.bias", (h,))]
        out += [("transformer.ln_f.weight", (h,)), ("transformer.ln_f.bias", (h,))]
    else:
        out.append(("model.embed_tokens.weight", (vocab, h)))
        for layer in range(shape.num_layers):
            p = f"model.layers.{layer}."
            linears = [("self_attn.q_proj", q_rows, h), ("self_attn.k_proj", kv_rows, h),
                       ("self_attn.v_proj", kv_rows, h), ("self_attn.o_proj", h, q_rows),
                       ("mlp.gate_proj", ffn, h), ("mlp.up_proj", ffn, h),
                       ("mlp.down_proj", h, ffn)]
            out.append((p + "input_layernorm.weight", (h,)))
            for name, rows, columns in linears[:4]:
                out.append((f"{p}{name}.weight", (rows, columns)))
                if shape.add_bias_linear:
                    out.append((f"{p}{name}.bias", (rows,)))
            out.append((p + "post_attention_layernorm.weight", (h,)))
            for name, rows, columns in linears[4:]:
                out.append((f"{p}{name}.weight", (rows, columns)))
                if shape.add_bias_linear:
                    out.append((f"{p}{name}.bias", (rows,)))
        out.append(("model.norm.weight", (h,)))
    if shape.untied:
        out.append(("lm_head.weight", (vocab, h)))
    return out


def _layer_of(name: str) -> Tuple[int, str]:
    layer, _, suffix = name[len(_LAYER):].partition(".")
    return int(layer), suffix


def export_tensor(shape: ModelShape, name: str,
                  tensor: torch.Tensor) -> List[Tuple[str, torch.Tensor]]:
    """One full GPTModel tensor -> the transformers tensor(s) it becomes (views where possible;
    padded vocabulary rows dropped). Raises ValueError for a name the model does not have."""
    if name == _EMBEDDING + "word_embeddings.weight":
        target = ("transformer.wte.weight" if shape.architecture == GPT2
                  else "model.embed_tokens.weight")
        return [(target, tensor[:shape.vocab_size])]
    if name == _OUTPUT:
        return [("lm_head.weight", tensor[:shape.vocab_size])]
    if name == _EMBEDDING + "position_embeddings.weight" and shape.architecture == GPT2:
        return [("transformer.wpe.weight", tensor)]
    if name.startswith(_FINAL_NORM):
        suffix = name[len(_FINAL_NORM):]
        if shape.architecture == GPT2:
            return [("transformer.ln_f." + suffix, tensor)]
        if suffix == "weight":
            return [("model.norm.weight", tensor)]
    if name.startswith(_LAYER):
        layer, suffix = _layer_of(name)
        if shape.architecture == GPT2:
            return _export_gpt2_layer(shape, layer, suffix, tensor)
        return _export_llama_layer(shape, layer, suffix, tensor)
    raise ValueError(f"checkpoint tensor {name} has no place in {shape.architecture}")


def _export_gpt2_layer(shape: ModelShape, layer: int, suffix: str,
                       tensor: torch.Tensor) -> List[Tuple[str, torch.Tensor]]:
    target = _gpt2_layer_names(layer).get(suffix)
    if target is None:
        raise ValueError(f"checkpoint tensor layers.{layer}.{suffix} has no place in {GPT2}")
    if suffix.startswith("self_attention.query_key_value"):
        tensor = torch.cat(split_qkv(shape, tensor), dim=0)  # [q | k | v], heads in order
    if tensor.dim() == 2:  # Conv1D stores [in, out]
        tensor = tensor.t()
    return [(target, tensor)]


def _export_llama_layer(shape: ModelShape, layer: int, suffix: str,
                        tensor: torch.Tensor) -> List[Tuple[str, torch.Tensor]]:
    hf = f"model.layers.{layer}."
    if suffix in ("input_layernorm.weight", "post_attention_layernorm.weight"):
        return [(hf + suffix, tensor)]
    module, _, kind = suffix.rpartition(".")
    targets = _llama_linear_names(layer).get(module)
    if targets is None or kind not in ("weight", "bias"):
        raise ValueError(f"checkpoint tensor layers.{layer}.{suffix} has no place in {LLAMA}")
    if module == "self_attention.query_key_value":
        parts = split_qkv(shape, tensor)
    elif module == "mlp.dense_h_to_4h":
        parts = torch.chunk(tensor, 2, dim=0)  # [gate; up]
    else:
        parts = (tensor,)
    return [(f"{target}.{kind}", part) for target, part in zip(targets, parts)]


def is_ignored_hf_tensor(name: str) -> bool:
    """Non-learned buffers some transformers files carry (causal masks, rotary frequencies)."""
    return name.endswith(_IGNORED_HF_SUFFIXES)


def megatron_names(shape: ModelShape) -> List[str]:
    """GPTModel's parameter names for `shape`, in the order `import_tensors` yields them."""
    names = [_EMBEDDING + "word_embeddings.weight"]
    if shape.architecture == GPT2:
        names.append(_EMBEDDING + "position_embeddings.weight")
    norm_suffixes = ("weight", "bias") if shape.architecture == GPT2 else ("weight",)
    linear_suffixes = ("weight", "bias") if shape.add_bias_linear else ("weight",)
    for layer in range(shape.num_layers):
        prefix = f"{_LAYER}{layer}."
        names += [f"{prefix}input_layernorm.{s}" for s in norm_suffixes]
        for module in ("self_attention.query_key_value", "self_attention.dense"):
            names += [f"{prefix}{module}.{s}" for s in linear_suffixes]
        names += [f"{prefix}post_attention_layernorm.{s}" for s in norm_suffixes]
        for module in ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"):
            names += [f"{prefix}{module}.{s}" for s in linear_suffixes]
    names += [_FINAL_NORM + s for s in norm_suffixes]
    if shape.untied:
        names.append(_OUTPUT)
    return names


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if rows < tensor.shape[0]:
        raise ValueError(f"the transformers vocabulary ({tensor.shape[0]} rows) is larger than "
                         f"the padded vocabulary ({rows}); use a tokenizer that covers it")
    return torch.cat([tensor, tensor.new_zeros(rows - tensor.shape[0], *tensor.shape[1:])])


def import_tensors(shape: ModelShape, get: Callable[[str], torch.Tensor], *,
                   padded_vocab_size: int) -> Iterator[Tuple[str, torch.Tensor]]:
    """(GPTModel name, full tensor) for every parameter, in `megatron_names` order, reading
    transformers tensors one at a time through `get(name)`; the embedding (and an untied
    head) padded with zero rows to `padded_vocab_size`."""
    for name in megatron_names(shape):
        yield name, _import_one(shape, name, get, padded_vocab_size)


def _import_one(shape: ModelShape, name: str, get: Callable[[str], torch.Tensor],
                padded_vocab_size: int) -> torch.Tensor:
    gpt2 = shape.architecture == GPT2
    if name == _EMBEDDING + "word_embeddings.weight":
        source = "transformer.wte.weight" if gpt2 else "model.embed_tokens.weight"
        return _pad_rows(get(source), padded_vocab_size)
    if name == _OUTPUT:
        return _pad_rows(get("lm_head.weight"), padded_vocab_size)
    if name == _EMBEDDING + "position_embeddings.weight":
        return get("transformer.wpe.weight")
    if name.startswith(_FINAL_NORM):
        suffix = name[len(_FINAL_NORM):]
        return get("transformer.ln_f." + suffix) if gpt2 else get("model.norm.weight")
    layer, suffix = _layer_of(name)
    if gpt2:
        tensor = get(_gpt2_layer_names(layer)[suffix])
        if tensor.dim() == 2:
            tensor = tensor.t()
        if suffix.startswith("self_attention.query_key_value"):
            q_rows, kv_rows = _qkv_rows(shape)
            tensor = fuse_qkv(shape, *torch.split(tensor, [q_rows, kv_rows, kv_rows], dim=0))
        return tensor.contiguous()
    if suffix in ("input_layernorm.weight", "post_attention_layernorm.weight"):
        return get(f"model.layers.{layer}.{suffix}")
    module, _, kind = suffix.rpartition(".")
    parts = [get(f"{target}.{kind}") for target in _llama_linear_names(layer)[module]]
    if module == "self_attention.query_key_value":
        return fuse_qkv(shape, *parts)
    return torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
