"""The one table of upstream flags that are accepted but not implemented (yet).

The parser accepts them so users' scripts parse; setting one to anything but its default
fails at start-up with "<flag> is not supported yet (...)": never silently ignored.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Tuple


@dataclass(frozen=True)
class UnsupportedFlag:
    """A flag whose non-default values are refused."""

    flag: str
    dest: str
    default: Any
    reason: str


def _u(flag: str, dest: str, default: Any, reason: str) -> UnsupportedFlag:
    return UnsupportedFlag(flag, dest, default, reason)


_MOE = "mixture of experts is not implemented"
_NON_DS = "only Megatron's own (non-DeepSpeed) training path uses it, and that path is not implemented"
_FP8 = "Transformer-Engine/FP8 is not implemented"
_NOOP_KERNEL = "it configures an apex/Megatron kernel this project does not use"

UNSUPPORTED_FLAGS: Tuple[UnsupportedFlag, ...] = (
    # Mixture of experts.
    _u("--num-experts", "num_experts", [1], _MOE),
    _u("--mlp-type", "mlp_type", "standard", _MOE),
    _u("--topk", "topk", 1, _MOE),
    _u("--expert-interval", "expert_interval", 2, _MOE),
    _u("--num-experts-switch", "num_experts_switch", None, _MOE),
    _u("--disable-moe-token-dropping", "moe_token_dropping", True, _MOE),
    _u("--moe-train-capacity-factor", "moe_train_capacity_factor", 1.0, _MOE),
    _u("--moe-eval-capacity-factor", "moe_eval_capacity_factor", 1.0, _MOE),
    _u("--moe-min-capacity", "moe_min_capacity", 4, _MOE),
    _u("--moe-loss-coeff", "moe_loss_coeff", 0.1, _MOE),
    _u("--create-moe-param-group", "create_moe_param_group", False, _MOE),
    _u("--disable-moe-top2-2nd-expert-sampling", "moe_top2_2nd_expert_sampling", True, _MOE),
    _u("--enable-expert-tensor-parallelism", "enable_expert_tensor_parallelism", False, _MOE),
    _u("--moe-expert-parallel-size", "moe_expert_parallel_size", 1, _MOE),
    _u("--use-tutel", "use_tutel", False, _MOE),
    # Parallelism and schedules beyond TP x PP x DP with DeepSpeed's engines.
    _u("--use-distributed-optimizer", "use_distributed_optimizer", False,
       "Megatron's distributed optimizer is not implemented; use ZeRO (--zero-stage) instead"),
    _u("--num-layers-per-virtual-pipeline-stage", "num_layers_per_virtual_pipeline_stage", None,
       "virtual (interleaved) pipeline stages are not implemented"),
    _u("--overlap-p2p-communication", "overlap_p2p_comm", False, "Megatron's own pipeline schedule is not used"),
    _u("--force-ds-sequence-parallel", "force_ds_sequence_parallel", False,
       "the Ulysses attention is only used with --ds-sequence-parallel-size > 1"),
    _u("--ds-sequence-parallel-fpdt", "ds_sequence_parallel_fpdt", False, "FPDT is not implemented"),
    _u("--ds-sequence-parallel-fpdt-chunk-size", "ds_sequence_parallel_fpdt_chunk_size", 65536,
       "FPDT is not implemented"),
    _u("--ds-sequence-parallel-fpdt-offloading", "ds_sequence_parallel_fpdt_offloading", False,
       "FPDT is not implemented"),
    _u("--enable-zbh1-pipeline", "enable_zbh1_pipeline", False, "the zero-bubble pipeline is not implemented"),
    _u("--enable-zbh1-exact-semantics", "enable_zbh1_exact_semantics", False,
       "the zero-bubble pipeline is not implemented"),
    _u("--standalone-embedding-stage", "standalone_embedding_stage", False,
       "use --pipeline-partition-method to place layers"),
    _u("--pipeline-model-parallel-split-rank", "pipeline_model_parallel_split_rank", None,
       "encoder-decoder models are not implemented"),
    _u("--DDP-impl", "DDP_impl", "local", _NON_DS),
    _u("--no-contiguous-buffers-in-local-ddp", "use_contiguous_buffers_in_local_ddp", True, _NON_DS),
    _u("--no-scatter-gather-tensors-in-pipeline", "scatter_gather_tensors_in_pipeline", True, _NON_DS),
    _u("--use-ring-exchange-p2p", "use_ring_exchange_p2p", False, _NON_DS),
    _u("--lazy-mpu-init", "lazy_mpu_init", None, "external DDP managers are not supported"),
    _u("--empty-unused-memory-level", "empty_unused_memory_level", 0, "emptying the cache is not implemented"),
    # Optimizer and engines.
    _u("--ds_fused_adam", "ds_fused_adam", False, "torch's fused AdamW is used on GPUs"),
    _u("--ds-inference", "ds_inference", False, "inference is not implemented"),
    _u("--inference", "inference", False, "inference is not implemented"),
    _u("--random-ltd", "random_ltd", False, "random layer-token drop is not implemented"),
    _u("--remote-device", "remote_device", "none", "ZeRO-3 parameter offload at model build is not implemented"),
    _u("--use-pin-memory", "use_pin_memory", False, "ZeRO-3 parameter offload at model build is not implemented"),
    # Model variants not implemented.
    _u("--squared-relu", "squared_relu", False, "the squared-ReLU activation is not implemented"),
    _u("--apply-layernorm-1p", "apply_layernorm_1p", False, "zero-centred layer norm is not implemented"),
    _u("--apply-residual-connection-post-layernorm", "apply_residual_connection_post_layernorm", False,
       "post-layernorm residuals (BERT ordering) are not implemented"),
    _u("--embedding-weights-in-fp32", "embedding_weights_in_fp32", False, "fp32 embeddings are not implemented"),
    _u("--init-method-xavier-uniform", "init_method_xavier_uniform", False, "Xavier init is not implemented"),
    _u("--data-parallel-random-init", "data_parallel_random_init", False,
       "every data-parallel rank starts from the same weights"),
    _u("--onnx-safe", "onnx_safe", None, "ONNX export is not implemented"),
    _u("--disable-mem-efficient-ln", "mem_efficient_ln", True, _NOOP_KERNEL),
    _u("--fp16-lm-cross-entropy", "fp16_lm_cross_entropy", False, "the loss is always computed in fp32"),
    _u("--distribute-saved-activations", "distribute_saved_activations", False,
       "distributing recomputed activations is not implemented"),
    _u("--distribute-checkpointed-activations", "distribute_checkpointed_activations", False,
       "use --partition-activations with --deepspeed-activation-checkpointing"),
    _u("--scattered-embeddings", "scattered_embeddings", False, "not implemented"),
    _u("--split-transformers", "split_transformers", False, "not implemented"),
    _u("--memory-centric-tiled-linear", "memory_centric_tiled_linear", False, "TiledLinear is not implemented"),
    _u("--tile-factor", "tile_factor", 1, "TiledLinear is not implemented"),
    _u("--fp8-e4m3", "fp8_e4m3", False, _FP8),
    _u("--fp8-hybrid", "fp8_hybrid", False, _FP8),
    _u("--no-fp8-wgrad", "fp8_wgrad", True, _FP8),
    _u("--fp8-margin", "fp8_margin", 0, _FP8),
    _u("--fp8-interval", "fp8_interval", 1, _FP8),
    _u("--transformer-impl", "transformer_impl", "local", _FP8),
    _u("--fp8-amax-history-len", "fp8_amax_history_len", 1, _FP8),
    _u("--fp8-amax-compute-algo", "fp8_amax_compute_algo", "most_recent", _FP8),
    _u("--decoder-num-layers", "decoder_num_layers", None, "encoder-decoder models are not implemented"),
    _u("--decoder-seq-length", "decoder_seq_length", None, "encoder-decoder models are not implemented"),
    _u("--vocab-extra-ids", "vocab_extra_ids", 0, "T5 sentinel tokens are not implemented"),
    # Checkpoints.
    _u("--universal-checkpoint", "universal_checkpoint", False, "universal checkpoints are not implemented"),
    _u("--no-load-lr-state", "no_load_lr_state", False, "use --override-opt_param-scheduler"),
    _u("--no-initialization", "perform_initialization", True, "weights are always initialized before loading"),
    _u("--use-checkpoint-args", "use_checkpoint_args", False, "give the model flags explicitly"),
    # Data.
    _u("--aml-data-download-path", "aml_data_download_path", None, "prefix --data-path yourself"),
    _u("--mmap-warmup", "mmap_warmup", False, "not implemented"),
    _u("--train-data-exact-num-epochs", "train_data_exact_num_epochs", None, "not implemented"),
    _u("--return-data-index", "return_data_index", False, "not implemented"),
    _u("--data-efficiency-curriculum-learning", "data_efficiency_curriculum_learning", False,
       "curriculum learning is not implemented"),
    _u("--train-idx-path", "train_idx_path", None, "index files are always built or loaded from the cache"),
    _u("--train-desc-path", "train_desc_path", None, "index files are always built or loaded from the cache"),
    _u("--train-doc-idx-path", "train_doc_idx_path", None, "index files are always built or loaded from the cache"),
    _u("--train-sample-idx-path", "train_sample_idx_path", None,
       "index files are always built or loaded from the cache"),
    _u("--train-shuffle-idx-path", "train_shuffle_idx_path", None,
       "index files are always built or loaded from the cache"),
    _u("--repeated-dataloader", "repeated_dataloader", False, "not implemented"),
    _u("--use-dataset-only", "use_dataset_only", False, "not implemented"),
    # Logging, profiling, cluster integration.
    _u("--adlr-autoresume", "adlr_autoresume", False, "use --exit-signal-handler"),
    _u("--adlr-autoresume-interval", "adlr_autoresume_interval", 1000, "use --exit-signal-handler"),
    _u("--kill-switch-file", "kill_switch_file", None, "use --exit-signal-handler"),
)


def check_unsupported_flags(args: argparse.Namespace) -> None:
    """Raise ValueError for the first flag of the table set to a non-default value."""
    for entry in UNSUPPORTED_FLAGS:
        value = getattr(args, entry.dest, entry.default)
        if value != entry.default:
            raise ValueError(f"{entry.flag} is not supported yet ({entry.reason}); got {value!r}")
