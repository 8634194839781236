"""From the validated, completed training configuration to the GPT model the engine wraps."""
import torch

from megatron.config.schema import TrainingConfig


def build_model(config: TrainingConfig) -> torch.nn.Module:
    """`GPTModelPipe` for the pipeline engine, `GPTModel` with --no-pipeline-parallel.

    `config.model` must be complete (`TrainingConfig.with_padded_vocab_size`). With
    --sequence-parallel, the replicated parameters that see only a sequence chunk (norms,
    row-parallel biases) get their gradients summed over the TP group in backward.
    """
    config.model.require_padded_vocab_size()
    model = _build_model(config)
    if config.model.sequence_parallel:
        from megatron.core.tensor_parallel import register_sequence_parallel_gradient_hooks

        register_sequence_parallel_gradient_hooks(model)
    return model


def _build_model(config: TrainingConfig) -> torch.nn.Module:
    if config.parallel.pipeline_engine:
        from megatron.model.gpt_model_pipe import GPTModelPipe

        return GPTModelPipe(config.model,
                            partition_method=config.parallel.pipeline_partition_method,
                            causal_mask_only=not config.data.reset_attention_mask)
    from megatron.model.gpt_model import GPTModel

    return GPTModel(config.model, parallel_output=True)
