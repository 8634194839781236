"""The one configuration of the GPT model: built and validated once from the flags
(`megatron.config.model.build_model_config`), completed with the padded vocabulary once the
tokenizer exists (`with_padded_vocab_size`), then read by the model, the FLOP count, the
checkpoint fingerprint and the log."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from megatron.core.model_parallel_config import ModelParallelConfig

NORMALIZATIONS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu", "swiglu")
POSITION_EMBEDDING_TYPES = ("learned_absolute", "rope", "none")
RECOMPUTE_GRANULARITIES = ("full", "selective")
RECOMPUTE_METHODS = ("uniform", "block")

InitMethod = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class TransformerConfig(ModelParallelConfig):
    """Shape, numerics and options of the GPT model.

    Every field names the upstream flag it comes from. `__post_init__` fills the derived
    defaults (kv heads, head size, FFN size, init methods) and raises `ValueError` naming
    the flags and fields of invalid combinations. Upstream-style code may build it directly.
    """

    num_layers: int = 0
    """Transformer layers (`--num-layers`)."""

    hidden_size: int = 0
    """Model width (`--hidden-size`)."""

    num_attention_heads: int = 0
    """Query heads (`--num-attention-heads`)."""

    num_key_value_heads: Optional[int] = None
    """Key/value heads for grouped-query attention (`--num-key-value-heads`); None means
    equal to num_attention_heads (plain multi-head attention)."""

    kv_channels: Optional[int] = None
    """Size of one attention head (`--kv-channels`); None means hidden_size // heads."""

    ffn_hidden_size: Optional[int] = None
    """MLP width (`--ffn-hidden-size`); None means 4 * hidden_size, or with SwiGLU
    int(8 * hidden_size / 3 / 64) * 64 as upstream."""

    seq_length: int = 0
    """Training sequence length (`--seq-length`); 0 means max_position_embeddings."""

    max_position_embeddings: int = 0
    """Rows of the learned position table (`--max-position-embeddings`)."""

    padded_vocab_size: Optional[int] = None
    """Vocabulary rows after padding (the tokenizer's size rounded up to
    `--make-vocab-size-divisible-by` * tensor_model_parallel_size); None until the tokenizer
    exists, and a model needs it set."""

    hidden_dropout: float = 0.1
    """Dropout on embeddings and residual branches (`--hidden-dropout`)."""

    attention_dropout: float = 0.1
    """Dropout on attention probabilities (`--attention-dropout`)."""

    layernorm_epsilon: float = 1e-5
    """Epsilon of LayerNorm/RMSNorm (`--layernorm-epsilon`)."""

    normalization: str = "layernorm"
    """`layernorm` or `rmsnorm` (`--normalization`)."""

    activation: str = "gelu"
    """MLP activation: `gelu` or `swiglu` (`--swiglu`)."""

    openai_gelu: bool = False
    """Tanh-approximated GeLU (HF GPT-2's `gelu_new`) instead of the exact erf GeLU
    (`--openai-gelu`)."""

    add_bias_linear: bool = True
    """Biases in the QKV, dense and MLP linears (`--disable-bias-linear` clears it)."""

    position_embedding_type: str = "learned_absolute"
    """`learned_absolute` (default), `rope` (`--use-rotary-position-embeddings`) or `none`
    (`--no-position-embedding`)."""

    rotary_percent: float = 1.0
    """Fraction of each head's dimensions that rotary embeddings rotate (`--rotary-percent`)."""

    rotary_base: float = 10000.0
    """Rotary frequency base theta (`--rotary-position-embeddings-theta`)."""

    untie_embeddings_and_output_weights: bool = False
    """Separate LM-head weight instead of the word embeddings
    (`--untie-embeddings-and-output-weights`)."""

    apply_query_key_layer_scaling: bool = True
    """Divide the attention scores by the layer number before the softmax and multiply back
    inside it (fp16 range trick; `--no-query-key-layer-scaling` clears it). Forces
    attention_softmax_in_fp32 as upstream. Exact in fp32."""

    attention_softmax_in_fp32: bool = False
    """Run the attention softmax in fp32 for half inputs (`--attention-softmax-in-fp32`)."""

    fp32_residual_connection: bool = False
    """Keep the residual stream in fp32 (`--fp32-residual-connection`)."""

    apply_residual_connection_post_layernorm: bool = False
    """Take the residual after the layer norm (`--apply-residual-connection-post-layernorm`)."""

    init_method_std: float = 0.02
    """Std of the normal init (`--init-method-std`); output projections use
    std / sqrt(2 * num_layers)."""

    init_method: Optional[InitMethod] = None
    """Init of ordinary weights; None means normal(0, init_method_std)."""

    output_layer_init_method: Optional[InitMethod] = None
    """Init of the attention-dense and MLP-output weights; None means the scaled normal."""

    masked_softmax_fusion: bool = True
    """Allow the fused scale-mask-softmax kernels (`--no-masked-softmax-fusion` clears it)."""

    bias_gelu_fusion: bool = True
    """Allow the fused bias+GeLU (`--no-bias-gelu-fusion` clears it); same math either way."""

    bias_dropout_fusion: bool = True
    """Allow the fused bias+dropout+add (`--no-bias-dropout-fusion` clears it)."""

    use_flash_attn: bool = False
    """Always use torch's scaled_dot_product_attention (flash kernels on GPUs) for the core
    attention (`--use-flash-attn`, `--use-flash-attn-v1`, `--use-flash-attn-v2`). With
    neither this nor `use_classic_attention`, each call takes the faster of the two exact
    paths (`megatron.model.attention.sdpa_is_faster`)."""

    use_classic_attention: bool = False
    """Always use the classic baddbmm + scale-mask-softmax + bmm core attention, where the
    fused CUDA softmax kernels plug in (`--use-classic-attention`)."""

    recompute_granularity: Optional[str] = None
    """`full` or `selective` activation recompute (`--recompute-granularity`)."""

    recompute_method: Optional[str] = None
    """`uniform` or `block` (`--recompute-method`), with full recompute."""

    recompute_num_layers: Optional[int] = None
    """Layers per recompute chunk or recomputed layers (`--recompute-num-layers`)."""

    checkpoint_activations: bool = False
    """Legacy activation checkpointing (`--checkpoint-activations`)."""

    checkpoint_num_layers: int = 1
    """Layers per checkpointed chunk (`--checkpoint-num-layers`)."""

    distribute_saved_activations: bool = False
    """Split checkpointed activations across tensor-parallel ranks
    (`--distribute-saved-activations`)."""

    ds_sequence_parallel_size: int = 1
    """Ranks splitting each sequence for DeepSpeed-Ulysses attention
    (`--ds-sequence-parallel-size`): each holds seq_length / N tokens and, inside the core
    attention, the whole sequence for num_attention_heads / N heads
    (`megatron.model.ulysses_attention`)."""

    deepspeed_activation_checkpointing: bool = False
    """Recompute with `deepspeed.checkpointing.checkpoint` (configured from the flags by
    `megatron.model.recompute.configure_deepspeed_checkpointing`) instead of the
    tensor-parallel `checkpoint` (`--deepspeed-activation-checkpointing`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_shape()
        self._check_options()
        if self.apply_query_key_layer_scaling:
            self.attention_softmax_in_fp32 = True
        if self.init_method is None:
            from megatron.model.utils import init_method_normal

            self.init_method = init_method_normal(self.init_method_std)
        if self.output_layer_init_method is None:
            from megatron.model.utils import scaled_init_method_normal

            self.output_layer_init_method = scaled_init_method_normal(
                self.init_method_std, self.num_layers)

    def _check_shape(self) -> None:
        names = ["num_layers", "hidden_size", "num_attention_heads"]
        if self.padded_vocab_size is not None:
            names.append("padded_vocab_size")
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{_named(name, value)} must be a positive integer")
        tp = self.tensor_model_parallel_size
        heads = self.num_attention_heads
        tp_named = _named("tensor_model_parallel_size", tp)
        if heads % tp:
            raise ValueError(f"{_named('num_attention_heads', heads)} must be divisible by {tp_named}")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = heads
        kv_heads = self.num_key_value_heads
        if kv_heads < 1 or heads % kv_heads:
            raise ValueError(f"{_named('num_key_value_heads', kv_heads)} must divide "
                             f"{_named('num_attention_heads', heads)}")
        if kv_heads % tp:
            raise ValueError(f"{_named('num_key_value_heads', kv_heads)} must be divisible by {tp_named}")
        if self.kv_channels is None:
            if self.hidden_size % heads:
                raise ValueError(f"{_named('hidden_size', self.hidden_size)} must be divisible by "
                                 f"{_named('num_attention_heads', heads)} unless --kv-channels "
                                 "(kv_channels) is given")
            self.kv_channels = self.hidden_size // heads
        if self.ffn_hidden_size is None:
            if self.activation == "swiglu":
                self.ffn_hidden_size = int(4 * self.hidden_size * 2 / 3 / 64) * 64
            else:
                self.ffn_hidden_size = 4 * self.hidden_size
        if self.ffn_hidden_size < 1 or self.ffn_hidden_size % tp:
            raise ValueError(f"{_named('ffn_hidden_size', self.ffn_hidden_size)} must be positive "
                             f"and divisible by {tp_named}")
        if self.padded_vocab_size is not None and self.padded_vocab_size % tp:
            raise ValueError(f"{_named('padded_vocab_size', self.padded_vocab_size)} must be "
                             f"divisible by {tp_named}")
        if self.num_layers % self.pipeline_model_parallel_size:
            raise ValueError(f"{_named('num_layers', self.num_layers)} must be divisible by "
                             f"{_named('pipeline_model_parallel_size', self.pipeline_model_parallel_size)}")
        if self.seq_length == 0:
            self.seq_length = self.max_position_embeddings
        self._check_ulysses()
        if self.position_embedding_type == "learned_absolute":
            if self.max_position_embeddings < 1:
                raise ValueError(f"{_named('max_position_embeddings', self.max_position_embeddings)} "
                                 "must be >= 1 with learned absolute position embeddings")
            if self.seq_length > self.max_position_embeddings:
                raise ValueError(f"{_named('seq_length', self.seq_length)} exceeds "
                                 f"{_named('max_position_embeddings', self.max_position_embeddings)}")

    def _check_ulysses(self) -> None:
        size = self.ds_sequence_parallel_size
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"{_named('ds_sequence_parallel_size', size)} must be an integer >= 1")
        if size == 1:
            return
        sp_named = _named("ds_sequence_parallel_size", size)
        # The all-to-all trades sequence chunks for whole heads: both must split evenly.
        local_heads = self.num_attention_heads // self.tensor_model_parallel_size
        if local_heads % size:
            raise ValueError(f"{_named('num_attention_heads', self.num_attention_heads)} / "
                             f"tensor_model_parallel_size must be divisible by {sp_named}")
        if self.seq_length % size:
            raise ValueError(f"{_named('seq_length', self.seq_length)} must be divisible by "
                             f"{sp_named}")
        if self.sequence_parallel:
            raise ValueError(f"--sequence-parallel (Megatron's, across tensor-parallel ranks) "
                             f"and {sp_named} both split the sequence; give only one")

    def _check_options(self) -> None:
        _check_choice("normalization", self.normalization, NORMALIZATIONS)
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("position_embedding_type", self.position_embedding_type,
                      POSITION_EMBEDDING_TYPES)
        if self.openai_gelu and self.activation != "gelu":
            raise ValueError("--openai-gelu and --swiglu are mutually exclusive "
                             f"(openai_gelu=True, activation={self.activation!r})")
        if self.use_flash_attn and self.use_classic_attention:
            raise ValueError("--use-flash-attn and --use-classic-attention contradict each other "
                             "(use_flash_attn=True, use_classic_attention=True)")
        for name in ("hidden_dropout", "attention_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{_named(name, value)} must be in [0, 1)")
        if not self.layernorm_epsilon > 0:
            raise ValueError(f"{_named('layernorm_epsilon', self.layernorm_epsilon)} must be > 0")
        if self.position_embedding_type == "rope":
            if not 0.0 < self.rotary_percent <= 1.0:
                raise ValueError(f"{_named('rotary_percent', self.rotary_percent)} must be in (0, 1]")
            rotary_dim = int(self.kv_channels * self.rotary_percent)
            if rotary_dim < 2 or rotary_dim % 2:
                raise ValueError(
                    f"{_named('rotary_percent', self.rotary_percent)} x "
                    f"{_named('kv_channels', self.kv_channels)} gives {rotary_dim} rotary "
                    "dimensions; it must be even and >= 2")
        if not (self.init_method_std > 0 and math.isfinite(self.init_method_std)):
            raise ValueError(f"{_named('init_method_std', self.init_method_std)} must be > 0")
        self._check_recompute()

    def _check_recompute(self) -> None:
        if self.recompute_granularity is not None:
            _check_choice("recompute_granularity", self.recompute_granularity,
                          RECOMPUTE_GRANULARITIES)
        if self.recompute_method is not None:
            _check_choice("recompute_method", self.recompute_method, RECOMPUTE_METHODS)
            if self.recompute_granularity != "full":
                raise ValueError(f"--recompute-method applies to --recompute-granularity full only "
                                 f"(recompute_method={self.recompute_method!r}, "
                                 f"recompute_granularity={self.recompute_granularity!r})")
        if self.recompute_granularity == "full" and self.recompute_method is None:
            raise ValueError("--recompute-granularity full needs --recompute-method uniform or "
                             "block (recompute_granularity='full', recompute_method=None)")
        if self.recompute_num_layers is not None and self.recompute_num_layers < 1:
            raise ValueError(f"{_named('recompute_num_layers', self.recompute_num_layers)} must be >= 1")
        if self.checkpoint_num_layers < 1:
            raise ValueError(f"{_named('checkpoint_num_layers', self.checkpoint_num_layers)} "
                             "must be >= 1")
        if self.checkpoint_activations and self.recompute_granularity is not None:
            raise ValueError("--checkpoint-activations and --recompute-granularity (or "
                             "--recompute-activations) are two activation-checkpointing mechanisms; "
                             "give only one (checkpoint_activations=True, "
                             f"recompute_granularity={self.recompute_granularity!r})")
        if self.deepspeed_activation_checkpointing and not (
                self.checkpoint_activations or self.recompute_granularity == "full"):
            raise ValueError("--deepspeed-activation-checkpointing needs --checkpoint-activations "
                             "(or --recompute-granularity full) (deepspeed_activation_checkpointing=True)")

    def with_padded_vocab_size(self, padded_vocab_size: int) -> "TransformerConfig":
        """A copy completed with the tokenizer's padded vocabulary (validated again)."""
        return dataclasses.replace(self, padded_vocab_size=padded_vocab_size)

    def require_padded_vocab_size(self) -> int:
        """The padded vocabulary; a model cannot be built before the tokenizer set it."""
        if self.padded_vocab_size is None:
            raise ValueError("padded_vocab_size is not set: build the tokenizer first and "
                             "complete the config with with_padded_vocab_size()")
        return self.padded_vocab_size

    @property
    def num_query_groups(self) -> int:
        """Key/value heads (one per group of query heads)."""
        return int(self.num_key_value_heads)

    @property
    def rotary_dim(self) -> int:
        """Dimensions of each head that rotary embeddings rotate (0 without rope)."""
        if self.position_embedding_type != "rope":
            return 0
        return int(self.kv_channels * self.rotary_percent)


# The flag a user changes to fix each field (a field set by code has no flag of its own).
FIELD_FLAGS = {
    "num_layers": "--num-layers", "hidden_size": "--hidden-size",
    "num_attention_heads": "--num-attention-heads", "num_key_value_heads": "--num-key-value-heads",
    "kv_channels": "--kv-channels", "ffn_hidden_size": "--ffn-hidden-size",
    "seq_length": "--seq-length", "max_position_embeddings": "--max-position-embeddings",
    "padded_vocab_size": "--make-vocab-size-divisible-by", "hidden_dropout": "--hidden-dropout",
    "attention_dropout": "--attention-dropout", "layernorm_epsilon": "--layernorm-epsilon",
    "normalization": "--normalization", "openai_gelu": "--openai-gelu",
    "rotary_percent": "--rotary-percent", "init_method_std": "--init-method-std",
    "recompute_granularity": "--recompute-granularity", "recompute_method": "--recompute-method",
    "recompute_num_layers": "--recompute-num-layers",
    "checkpoint_activations": "--checkpoint-activations",
    "checkpoint_num_layers": "--checkpoint-num-layers",
    "deepspeed_activation_checkpointing": "--deepspeed-activation-checkpointing",
    "tensor_model_parallel_size": "--tensor-model-parallel-size",
    "pipeline_model_parallel_size": "--pipeline-model-parallel-size",
    "ds_sequence_parallel_size": "--ds-sequence-parallel-size",
}


def _named(name: str, value: object) -> str:
    """'--flag value (field)': the flag for command-line users, the field for code."""
    flag = FIELD_FLAGS.get(name)
    return f"{flag} {value} ({name})" if flag else f"{name}={value!r}"


def _check_choice(name: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{_named(name, value)} must be one of {', '.join(choices)}")
