"""From the validated training configuration to the GPT model the engine will wrap."""
import dataclasses

import torch

from megatron.config.schema import TrainingConfig
from megatron.model.transformer_config import TransformerConfig

_PARAMS_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_transformer_config(config: TrainingConfig, *, padded_vocab_size: int) -> TransformerConfig:
    """The model's typed configuration (every field from a validated flag)."""
    model = config.model
    checkpointing = config.activation_checkpointing
    values = dict(
        num_layers=model.num_layers, hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_key_value_heads=model.num_key_value_heads, kv_channels=model.kv_channels,
        ffn_hidden_size=model.ffn_hidden_size, seq_length=model.seq_length,
        max_position_embeddings=model.max_position_embeddings,
        padded_vocab_size=padded_vocab_size, hidden_dropout=model.hidden_dropout,
        attention_dropout=model.attention_dropout, layernorm_epsilon=model.layernorm_epsilon,
        normalization=model.normalization, activation=model.activation,
        openai_gelu=model.openai_gelu, add_bias_linear=model.add_bias_linear,
        position_embedding_type=model.position_embedding_type,
        rotary_percent=model.rotary_percent, rotary_base=float(model.rope_theta),
        untie_embeddings_and_output_weights=model.untie_embeddings_and_output_weights,
        apply_query_key_layer_scaling=model.apply_query_key_layer_scaling,
        init_method_std=model.init_method_std,
        masked_softmax_fusion=model.masked_softmax_fusion,
        bias_gelu_fusion=model.bias_gelu_fusion, bias_dropout_fusion=model.bias_dropout_fusion,
        use_flash_attn=model.use_flash_attn,
        recompute_granularity=checkpointing.recompute_granularity,
        recompute_method=checkpointing.recompute_method,
        recompute_num_layers=checkpointing.recompute_num_layers,
        checkpoint_activations=checkpointing.checkpoint_activations,
        checkpoint_num_layers=checkpointing.checkpoint_num_layers,
        deepspeed_activation_checkpointing=checkpointing.deepspeed_activation_checkpointing,
        tensor_model_parallel_size=config.parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=config.parallel.pipeline_model_parallel_size,
        sequence_parallel=config.parallel.sequence_parallel,
        use_cpu_initialization=model.use_cpu_initialization,
        params_dtype=_PARAMS_DTYPES[config.precision.dtype],
        init_seed=config.seed,
    )
    # Options the model gained after this mapping was written are passed when both sides have them.
    known = {field.name for field in dataclasses.fields(TransformerConfig)}
    for name in ("attention_softmax_in_fp32", "fp32_residual_connection"):
        if name in known and hasattr(model, name):
            values[name] = getattr(model, name)
    return TransformerConfig(**values)


def build_model(config: TrainingConfig, transformer_config: TransformerConfig) -> torch.nn.Module:
    """`GPTModelPipe` for the pipeline engine, `GPTModel` with --no-pipeline-parallel.

    With --sequence-parallel, the replicated parameters that see only a sequence chunk
    (norms, row-parallel biases) get their gradients summed over the TP group in backward.
    """
    model = _build_model(config, transformer_config)
    if transformer_config.sequence_parallel:
        from megatron.core.tensor_parallel import register_sequence_parallel_gradient_hooks

        register_sequence_parallel_gradient_hooks(model)
    return model


def _build_model(config: TrainingConfig, transformer_config: TransformerConfig) -> torch.nn.Module:
    if config.parallel.pipeline_engine:
        from megatron.model.gpt_model_pipe import GPTModelPipe

        return GPTModelPipe(transformer_config,
                            partition_method=config.model.pipeline_partition_method,
                            causal_mask_only=not config.data.reset_attention_mask)
    from megatron.model.gpt_model import GPTModel

    return GPTModel(transformer_config, parallel_output=True)
