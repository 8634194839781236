"""Command-line flags of Megatron-DeepSpeed's GPT pretraining, with upstream spelling and dests.

This module only declares flags. Turning the namespace into validated, typed configuration
happens once, in `megatron.config.build_config`. Flags that are accepted for compatibility but
not implemented are listed in `megatron.config.unsupported` and rejected there when set.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Mapping, Optional, Sequence

__all__ = ["build_parser", "parse_args"]

_ExtraArgsProvider = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]


def _network_size(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("network size")
    g.add_argument("--num-layers", type=int, default=None, help="Number of transformer layers.")
    g.add_argument("--encoder-num-layers", type=int, default=None,
                   help="Synonym of --num-layers (encoder-only naming).")
    g.add_argument("--decoder-num-layers", type=int, default=None,
                   help="Decoder layers (encoder-decoder models only).")
    g.add_argument("--hidden-size", type=int, default=None, help="Transformer hidden size.")
    g.add_argument("--ffn-hidden-size", type=int, default=None,
                   help="MLP inner size; default 4*hidden (or 2/3 of that, rounded to 64, with --swiglu).")
    g.add_argument("--num-attention-heads", type=int, default=None, help="Attention heads.")
    g.add_argument("--num-key-value-heads", type=int, default=None,
                   help="Key/value heads for grouped-query attention; default: one per attention head.")
    g.add_argument("--kv-channels", type=int, default=None,
                   help="Per-head projection size; default hidden-size / num-attention-heads.")
    g.add_argument("--max-position-embeddings", type=int, default=None,
                   help="Size of the position-embedding table (upper bound on --seq-length).")
    g.add_argument("--use-rotary-position-embeddings", action="store_true",
                   help="Use rotary position embeddings instead of learned absolute ones.")
    g.add_argument("--rotary-position-embeddings-theta", type=int, default=10000, dest="rope_theta",
                   help="Rotary embedding base (theta).")
    g.add_argument("--rotary-percent", type=float, default=1.0,
                   help="Fraction of each head's dimensions that is rotated.")
    g.add_argument("--no-position-embedding", action="store_false", dest="add_position_embedding",
                   help="Do not add any position embedding.")
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                   help="Pad the vocabulary to a multiple of this times the tensor-parallel size.")
    g.add_argument("--normalization", type=str, default="layernorm", choices=["layernorm", "rmsnorm"],
                   help="Normalization layer type.")
    g.add_argument("--layernorm-epsilon", type=float, default=1e-5, help="Normalization epsilon.")
    g.add_argument("--apply-layernorm-1p", action="store_true",
                   help="Zero-centred layer-norm weights (weight stored as gamma - 1).")
    g.add_argument("--disable-mem-efficient-ln", action="store_false", dest="mem_efficient_ln",
                   help="Disable apex's memory-efficient fused layer norm.")
    g.add_argument("--apply-residual-connection-post-layernorm", action="store_true",
                   help="Take the residual after the layer norm (original BERT ordering).")
    g.add_argument("--openai-gelu", action="store_true", help="Tanh-approximated GeLU (GPT-2's gelu_new).")
    g.add_argument("--squared-relu", action="store_true", help="Squared ReLU activation.")
    g.add_argument("--swiglu", action="store_true", help="SwiGLU gated MLP instead of GeLU.")
    g.add_argument("--onnx-safe", type=bool, required=False, help="ONNX exporter workarounds.")
    g.add_argument("--untie-embeddings-and-output-weights", action="store_true",
                   help="Separate output-layer weights instead of reusing the word embeddings.")
    g.add_argument("--embedding-weights-in-fp32", action="store_true",
                   help="Keep word-embedding weights in fp32.")
    g.add_argument("--kill-switch-file", type=str, default=None,
                   help="Exit when this file appears.")
    # Mixture of experts.
    g.add_argument("--num-experts", type=int, nargs="+", default=[1], help="Experts per MoE layer.")
    g.add_argument("--mlp-type", type=str, default="standard", help="MoE MLP type (standard, residual).")
    g.add_argument("--topk", type=int, default=1, help="Top-k gating for MoE.")
    g.add_argument("--expert-interval", type=int, default=2, help="Use experts every N layers.")
    g.add_argument("--num-experts-switch", type=int, default=None, help="Switch-transformer experts.")


def _logging(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("logging")
    g.add_argument("--log-params-norm", action="store_true", help="Compute and log the parameter norm.")
    g.add_argument("--log-num-zeros-in-grad", action="store_true",
                   help="Compute and log the number of zeros in the gradient.")
    g.add_argument("--timing-log-level", type=int, default=0, choices=range(0, 3),
                   help="Timer detail: 0 iteration time only, 1 once-per-iteration ops, 2 everything.")
    g.add_argument("--no-barrier-with-level-1-timing", action="store_false", dest="barrier_with_L1_time",
                   help="Do not put a barrier around level-1 timers.")
    g.add_argument("--timing-log-option", type=str, default="minmax", choices=["max", "minmax", "all"],
                   help="How timers are reduced across ranks.")
    g.add_argument("--tensorboard-log-interval", type=int, default=1,
                   help="Iterations between tensorboard writes.")
    g.add_argument("--tensorboard-queue-size", type=int, default=1000,
                   help="Pending tensorboard events before a flush.")
    g.add_argument("--log-timers-to-tensorboard", action="store_true", help="Write timers to tensorboard.")
    g.add_argument("--log-batch-size-to-tensorboard", action="store_true",
                   help="Write the global batch size to tensorboard.")
    g.add_argument("--no-log-learnig-rate-to-tensorboard", action="store_false",
                   dest="log_learning_rate_to_tensorboard", help="Do not write the learning rate.")
    g.add_argument("--no-log-loss-scale-to-tensorboard", action="store_false",
                   dest="log_loss_scale_to_tensorboard", help="Do not write the loss scale.")
    g.add_argument("--log-validation-ppl-to-tensorboard", action="store_true",
                   help="Write validation perplexity to tensorboard.")
    g.add_argument("--log-optimizer-states-to-tensorboard", action="store_true",
                   help="Write optimizer-state statistics to tensorboard.")
    g.add_argument("--log-memory-to-tensorboard", action="store_true", help="Write memory use.")
    g.add_argument("--log-world-size-to-tensorboard", action="store_true", help="Write the world size.")
    g.add_argument("--wandb-project", type=str, default="", help="Weights & Biases project.")
    g.add_argument("--wandb-exp-name", type=str, default="", help="Weights & Biases run name.")
    g.add_argument("--wandb-save-dir", type=str, default="", help="Weights & Biases local directory.")


def _regularization(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("regularization")
    g.add_argument("--attention-dropout", type=float, default=0.1, help="Dropout on attention probabilities.")
    g.add_argument("--hidden-dropout", type=float, default=0.1, help="Dropout on hidden states.")
    g.add_argument("--weight-decay", type=float, default=0.01,
                   help="Decoupled weight decay (AdamW); not applied to biases and norm weights.")
    g.add_argument("--start-weight-decay", type=float, help="Initial weight decay of the increment schedule.")
    g.add_argument("--end-weight-decay", type=float, help="Final weight decay of the increment schedule.")
    g.add_argument("--weight-decay-incr-style", type=str, default="constant",
                   choices=["constant", "linear", "cosine"], help="Weight-decay increment schedule.")
    g.add_argument("--clip-grad", type=float, default=1.0, help="Clip gradients to this global L2 norm.")
    g.add_argument("--adam-beta1", type=float, default=0.9, help="Adam beta1.")
    g.add_argument("--adam-beta2", type=float, default=0.999, help="Adam beta2.")
    g.add_argument("--adam-eps", type=float, default=1e-08, help="Adam epsilon.")
    g.add_argument("--sgd-momentum", type=float, default=0.9, help="SGD momentum.")


def _training(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=int, default=None, help="Samples per micro batch per model replica.")
    g.add_argument("--batch-size", type=int, default=None, help="Removed; use --micro-batch-size.")
    g.add_argument("--global-batch-size", type=int, default=None,
                   help="Samples per optimizer step; default micro-batch-size * data-parallel size.")
    g.add_argument("--rampup-batch-size", nargs="*", default=None,
                   help="<start> <increment> <ramp-up samples>: grow the global batch linearly.")
    g.add_argument("--recompute-activations", action="store_true",
                   help="Shorthand for --recompute-granularity selective.")
    g.add_argument("--recompute-granularity", type=str, default=None, choices=["full", "selective"],
                   help="Recompute whole layers (full) or only core attention (selective).")
    g.add_argument("--distribute-saved-activations", action="store_true",
                   help="Split recomputed activations across the tensor-parallel group.")
    g.add_argument("--recompute-method", type=str, default=None, choices=["uniform", "block"],
                   help="Which layers full recompute applies to.")
    g.add_argument("--recompute-num-layers", type=int, default=1,
                   help="Layers per recompute chunk (uniform) or recomputed layers per stage (block).")
    g.add_argument("--enable-zbh1-pipeline", action="store_true", help="Zero-bubble H1 pipeline schedule.")
    g.add_argument("--enable-zbh1-exact-semantics", action="store_true", help="Exact zero-bubble semantics.")
    g.add_argument("--checkpoint-activations", action="store_true",
                   help="Legacy activation checkpointing (the path DeepSpeed activation checkpointing uses).")
    g.add_argument("--distribute-checkpointed-activations", action="store_true",
                   help="Split checkpointed activations across the model-parallel group.")
    g.add_argument("--checkpoint-num-layers", type=int, default=1, help="Layers per checkpointed chunk.")
    g.add_argument("--train-iters", type=int, default=None, help="Training length in iterations.")
    g.add_argument("--train-samples", type=int, default=None, help="Training length in samples.")
    g.add_argument("--train-tokens", type=int, default=None, help="Stop after this many tokens.")
    g.add_argument("--random-ltd", action="store_true", help="Random layer-token drop.")
    g.add_argument("--log-interval", type=int, default=100, help="Iterations between log lines.")
    g.add_argument("--exit-interval", type=int, default=None, help="Exit when the iteration is a multiple of this.")
    g.add_argument("--exit-duration-in-mins", type=float, default=None,
                   help="Exit (saving first with --save) once this many minutes have passed; fractions allowed.")
    g.add_argument("--exit-signal-handler", action="store_true", help="Save and exit on SIGTERM.")
    g.add_argument("--tensorboard-dir", type=str, default=None, help="Write tensorboard logs here.")
    g.add_argument("--no-masked-softmax-fusion", action="store_false", dest="masked_softmax_fusion",
                   help="Do not fuse scale, mask and softmax.")
    g.add_argument("--no-bias-gelu-fusion", action="store_false", dest="bias_gelu_fusion",
                   help="Do not fuse bias and GeLU.")
    g.add_argument("--no-bias-dropout-fusion", action="store_false", dest="bias_dropout_fusion",
                   help="Do not fuse bias, dropout and residual add.")
    g.add_argument("--disable-moe-token-dropping", action="store_false", dest="moe_token_dropping",
                   help="MoE: do not drop tokens.")
    g.add_argument("--moe-train-capacity-factor", type=float, default=1.0, help="MoE train capacity factor.")
    g.add_argument("--moe-eval-capacity-factor", type=float, default=1.0, help="MoE eval capacity factor.")
    g.add_argument("--moe-min-capacity", type=int, default=4, help="MoE minimum expert capacity.")
    g.add_argument("--moe-loss-coeff", type=float, default=0.1, help="MoE auxiliary-loss coefficient.")
    g.add_argument("--create-moe-param-group", action="store_true", help="Separate MoE parameter groups.")
    g.add_argument("--disable-moe-top2-2nd-expert-sampling", action="store_false",
                   dest="moe_top2_2nd_expert_sampling", help="MoE top-2: argmax the second expert.")
    g.add_argument("--use-flash-attn", "--use-flash-attn-v1", dest="use_flash_attn_v1", action="store_true",
                   help="Flash attention (v1 API; scaled_dot_product_attention when flash-attn is absent).")
    g.add_argument("--use-flash-attn-v2", action="store_true", help="Flash attention (v2 API).")
    g.add_argument("--use-flash-attn-triton", action="store_true", help="Flash attention (Triton).")
    g.add_argument("--use-flash-attn-builder", action="store_true", help="Flash attention (DeepSpeed op builder).")
    g.add_argument("--use-classic-attention", action="store_true",
                   help="Always use the classic baddbmm + softmax + bmm core attention (where the "
                        "fused softmax kernels plug in); by default each call takes the faster of "
                        "it and scaled_dot_product_attention.")
    g.add_argument("--disable-bias-linear", action="store_false", dest="add_bias_linear",
                   help="No biases in the linear layers.")
    g.add_argument("--optimizer", type=str, default="adam", choices=["adam", "sgd"],
                   help="adam (decoupled weight decay, i.e. AdamW) or sgd.")
    g.add_argument("--dataloader-type", type=str, default=None, choices=["single", "cyclic"],
                   help="Single pass (default) or cyclic random sampling.")
    g.add_argument("--ds-inference", action="store_true", help="DeepSpeed inference engine.")
    g.add_argument("--cpu-optimizer", action="store_true",
                   help="DeepSpeed's CPU Adam, for ZeRO-Offload: needs \"zero_optimization\": "
                        "{\"offload_optimizer\": {\"device\": \"cpu\"}} in --deepspeed_config, "
                        "ZeRO stage 1 or 2 and --no-pipeline-parallel.")
    g.add_argument("--torch_adam", action="store_true", help="Use torch's Adam (always the case here).")
    g.add_argument("--ds_fused_adam", action="store_true", help="Use DeepSpeed's FusedAdam.")
    g.add_argument("--no-pipeline-parallel", action="store_true",
                   help="Plain GPTModel instead of the DeepSpeed pipeline model (needs PP=1).")
    g.add_argument("--use-tutel", action="store_true", help="Tutel MoE kernels.")
    g.add_argument("--inference", action="store_true", help="Inference only (no optimizer).")
    g.add_argument("--no-async-tensor-model-parallel-allreduce", action="store_false",
                   dest="async_tensor_model_parallel_allreduce",
                   help="Do not overlap the TP all-reduce with weight-gradient compute (always off with DeepSpeed).")
    g.add_argument("--no-persist-layer-norm", action="store_true",
                   help="Do not use apex's persistent layer-norm kernel.")
    g.add_argument("--sequence-parallel", action="store_true",
                   help="Megatron sequence parallelism (needs tensor parallelism).")
    g.add_argument("--ds-sequence-parallel-size", type=int, default=1,
                   help="DeepSpeed-Ulysses sequence parallelism: ranks that split each sample's "
                   "sequence, exchanging attention heads by all-to-all (needs --no-pipeline-parallel "
                   "and tensor/pipeline parallel size 1; --seq-length and --num-attention-heads "
                   "divisible by it). Data parallel size = world size / (TP x PP x this).")
    g.add_argument("--force-ds-sequence-parallel", action="store_true", help="Force DeepSpeed sequence parallelism.")
    g.add_argument("--ds-sequence-parallel-fpdt", action="store_true", help="DeepSpeed FPDT sequence parallelism.")
    g.add_argument("--ds-sequence-parallel-fpdt-chunk-size", type=int, default=65536, help="FPDT chunk size.")
    g.add_argument("--ds-sequence-parallel-fpdt-offloading", action="store_true", help="FPDT offloading.")
    g.add_argument("--no-gradient-accumulation-fusion", action="store_false", dest="gradient_accumulation_fusion",
                   help="Do not fuse gradient accumulation into the weight-gradient GEMM.")
    g.add_argument("--use-dataset-only", type=bool, required=False, default=False,
                   help="Only build the datasets (for external trainers).")


def _initialization(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("initialization")
    g.add_argument("--seed", type=int, default=1234, help="Seed for python, numpy, torch and the accelerator.")
    g.add_argument("--data-parallel-random-init", action="store_true",
                   help="Different initial weights on each data-parallel rank.")
    g.add_argument("--init-method-std", type=float, default=0.02, help="Std of the normal weight init.")
    g.add_argument("--init-method-xavier-uniform", action="store_true", help="Xavier-uniform weight init.")


def _learning_rate(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("learning rate")
    g.add_argument("--lr", type=float, default=None, help="Peak learning rate.")
    g.add_argument("--lr-decay-style", type=str, default="linear",
                   choices=["constant", "linear", "cosine", "inverse-square-root"], help="Decay shape.")
    g.add_argument("--lr-decay-iters", type=int, default=None, help="Decay length in iterations (default --train-iters).")
    g.add_argument("--lr-decay-samples", type=int, default=None,
                   help="Decay length in samples (default --train-samples).")
    g.add_argument("--lr-decay-tokens", type=int, default=None,
                   help="Decay length in tokens; replaces iteration/sample-based decay.")
    g.add_argument("--lr-warmup-fraction", type=float, default=None, help="Warmup as a fraction of the decay length.")
    g.add_argument("--lr-warmup-iters", type=int, default=0, help="Linear warmup in iterations.")
    g.add_argument("--lr-warmup-samples", type=int, default=0, help="Linear warmup in samples.")
    g.add_argument("--lr-warmup-tokens", type=int, default=None, help="Linear warmup in tokens.")
    g.add_argument("--warmup", type=int, default=None, help="Removed; use --lr-warmup-fraction or --lr-warmup-*.")
    g.add_argument("--min-lr", type=float, default=0.0, help="Floor of the learning rate.")
    g.add_argument("--override-opt_param-scheduler", action="store_true",
                   help="On load, take scheduler settings from the flags, not the checkpoint.")
    g.add_argument("--use-checkpoint-opt_param-scheduler", action="store_true",
                   help="On load, take scheduler settings from the checkpoint, not the flags.")


def _checkpointing(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("checkpointing")
    g.add_argument("--save", type=str, default=None, help="Directory to save checkpoints to.")
    g.add_argument("--save-interval", type=int, default=None, help="Iterations between saves.")
    g.add_argument("--no-save-optim", action="store_true", default=None, help="Do not save optimizer state.")
    g.add_argument("--no-save-rng", action="store_true", default=None, help="Do not save RNG state.")
    g.add_argument("--load", type=str, default=None, help="Directory to load a checkpoint from.")
    g.add_argument("--load-tag", type=str, default=None, help="Load this tag instead of the latest one.")
    g.add_argument("--no-load-optim", action="store_true", default=None, help="Do not load optimizer state.")
    g.add_argument("--no-load-rng", action="store_true", default=None, help="Do not load RNG state.")
    g.add_argument("--no-load-lr-state", action="store_true", help="Do not load the scheduler state.")
    g.add_argument("--finetune", action="store_true",
                   help="Load weights only and restart at iteration 0.")
    g.add_argument("--no-initialization", action="store_false", dest="perform_initialization",
                   help="Skip weight initialization (a checkpoint will be loaded).")
    g.add_argument("--use-checkpoint-args", action="store_true", help="Take the model flags from the checkpoint.")
    g.add_argument("--exit-on-missing-checkpoint", action="store_true", help="Fail when --load finds nothing.")
    g.add_argument("--universal-checkpoint", action="store_true", help="Load a DeepSpeed universal checkpoint.")


def _mixed_precision(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("mixed precision")
    g.add_argument("--fp16", action="store_true", help="fp16 with dynamic loss scaling (GPU only).")
    g.add_argument("--bf16", action="store_true", help="bfloat16.")
    g.add_argument("--loss-scale", type=float, default=None, help="Static loss scale; default dynamic.")
    g.add_argument("--initial-loss-scale", type=float, default=2**32, help="Initial dynamic loss scale (power of 2).")
    g.add_argument("--min-loss-scale", type=float, default=1.0, help="Minimum dynamic loss scale.")
    g.add_argument("--loss-scale-window", type=float, default=1000, help="Overflow-free steps before raising the scale.")
    g.add_argument("--hysteresis", type=int, default=2, help="Overflows tolerated before lowering the scale.")
    g.add_argument("--fp32-residual-connection", action="store_true", help="Residual stream in fp32.")
    g.add_argument("--no-query-key-layer-scaling", action="store_false", dest="apply_query_key_layer_scaling",
                   help="Do not scale Q*K^T by 1/layer-number.")
    g.add_argument("--attention-softmax-in-fp32", action="store_true", help="Attention softmax in fp32.")
    g.add_argument("--accumulate-allreduce-grads-in-fp32", action="store_true",
                   help="Accumulate and all-reduce gradients in fp32.")
    g.add_argument("--fp16-lm-cross-entropy", action="store_true", help="LM cross entropy in fp16.")


def _distributed(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("distributed")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1, help="Tensor-parallel size.")
    g.add_argument("--enable-expert-tensor-parallelism", action="store_true", default=False,
                   help="Tensor parallelism inside MoE experts.")
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1, help="Pipeline-parallel size.")
    g.add_argument("--pipeline-model-parallel-split-rank", type=int, default=None,
                   help="Encoder/decoder split rank.")
    g.add_argument("--pipeline-partition-method", type=str, default="parameters",
                   help="DeepSpeed PipelineModule partition method: parameters, uniform or type:<regex>; or "
                        "flops: stages balanced by estimated training FLOPs, the embedding and LM head "
                        "included (faster when the head is a large share of the model).")
    g.add_argument("--moe-expert-parallel-size", type=int, default=1, help="MoE expert-parallel size.")
    g.add_argument("--model-parallel-size", type=int, default=None,
                   help="Removed; use --tensor-model-parallel-size.")
    g.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None,
                   help="Interleaved (virtual) pipeline stages.")
    g.add_argument("--overlap-p2p-communication", action="store_true", dest="overlap_p2p_comm",
                   help="Overlap pipeline send/receive with compute.")
    g.add_argument("--distributed-backend", default="nccl", choices=["nccl", "gloo", "ccl", "hccl"],
                   help="torch.distributed backend; the accelerator's own backend is used unless given.")
    g.add_argument("--distributed-timeout-minutes", type=int, default=10, help="Collective timeout.")
    g.add_argument("--DDP-impl", default="local", choices=["local", "torch", "FSDP"],
                   help="Data-parallel wrapper of the non-DeepSpeed path.")
    g.add_argument("--no-contiguous-buffers-in-local-ddp", action="store_false",
                   dest="use_contiguous_buffers_in_local_ddp", help="Local DDP without contiguous buffers.")
    g.add_argument("--no-scatter-gather-tensors-in-pipeline", action="store_false",
                   dest="scatter_gather_tensors_in_pipeline", help="Megatron pipeline scatter/gather off.")
    g.add_argument("--use-ring-exchange-p2p", action="store_true", default=False, help="Ring-exchange p2p.")
    g.add_argument("--local-rank", "--local_rank", type=int, default=None, help="Set by the launcher.")
    g.add_argument("--lazy-mpu-init", type=bool, required=False, help="Defer model-parallel init.")
    g.add_argument("--use-cpu-initialization", action="store_true", default=None,
                   help="Initialize full weights on CPU from the seed, then keep this rank's slice.")
    g.add_argument("--empty-unused-memory-level", default=0, type=int, choices=[0, 1, 2],
                   help="Empty the accelerator cache each iteration (0 off).")
    g.add_argument("--standalone-embedding-stage", action="store_true", default=False,
                   help="Input embedding on its own pipeline stage.")
    g.add_argument("--use-distributed-optimizer", action="store_true", help="Megatron distributed optimizer.")


def _validation(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("validation")
    g.add_argument("--eval-iters", type=int, default=100, help="Batches per evaluation.")
    g.add_argument("--eval-interval", type=int, default=1000, help="Iterations between evaluations.")
    g.add_argument("--skip-train", action="store_true", default=False, help="Only evaluate.")


def _data(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data and dataloader")
    g.add_argument("--aml-data-download-path", type=str, default=None, help="Prefix for --data-path (AzureML).")
    g.add_argument("--data-path", nargs="*", default=None,
                   help="One prefix, or weight/prefix pairs, split by --split.")
    g.add_argument("--split", type=str, default="969, 30, 1",
                   help="Train/valid/test proportions, e.g. 949,50,1.")
    g.add_argument("--train-data-path", nargs="*", default=None, help="Training prefix(es), weighted pairs allowed.")
    g.add_argument("--valid-data-path", nargs="*", default=None, help="Validation prefix(es).")
    g.add_argument("--test-data-path", nargs="*", default=None, help="Test prefix(es).")
    g.add_argument("--data-cache-path", default=None, help="Directory for the cached index files.")
    g.add_argument("--vocab-size", type=int, default=None, help="Vocabulary size (NullTokenizer).")
    g.add_argument("--vocab-file", type=str, default=None, help="Vocabulary file.")
    g.add_argument("--merge-file", type=str, default=None, help="BPE merges file.")
    g.add_argument("--vocab-extra-ids", type=int, default=0, help="Extra sentinel tokens (T5).")
    g.add_argument("--seq-length", type=int, default=None, help="Tokens per sample.")
    g.add_argument("--encoder-seq-length", type=int, default=None, help="Synonym of --seq-length.")
    g.add_argument("--decoder-seq-length", type=int, default=None, help="Decoder sequence length.")
    g.add_argument("--mmap-warmup", action="store_true", help="Read through the mmap files once.")
    g.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes.")
    g.add_argument("--tokenizer-type", type=str, default=None,
                   choices=["BertWordPieceLowerCase", "BertWordPieceCase", "GPT2BPETokenizer",
                            "SentencePieceTokenizer", "GPTSentencePieceTokenizer", "HFTokenizer",
                            "NullTokenizer"],
                   help="Tokenizer (GPT pretraining defaults to GPT2BPETokenizer).")
    g.add_argument("--tokenizer-model", type=str, default=None, help="SentencePiece model or HF tokenizer path.")
    g.add_argument("--trust-remote-code", action="store_true", default=False,
                   help="Allow code shipped with a local HF tokenizer.")
    g.add_argument("--data-impl", type=str, default="infer", choices=["mmap", "infer"],
                   help="Indexed dataset implementation.")
    g.add_argument("--reset-position-ids", action="store_true", help="Restart position ids after each EOD.")
    g.add_argument("--reset-attention-mask", action="store_true", help="Do not attend across EOD tokens.")
    g.add_argument("--eod-mask-loss", action="store_true", help="No loss on EOD tokens.")
    g.add_argument("--train-data-exact-num-epochs", type=int, default=None, help="Exact number of train epochs.")
    g.add_argument("--return-data-index", action="store_true", help="Return sample indices.")
    g.add_argument("--data-efficiency-curriculum-learning", action="store_true",
                   help="DeepSpeed data-efficiency curriculum learning.")
    g.add_argument("--train-idx-path", type=str, default=None, help="Forced index file.")
    g.add_argument("--train-desc-path", type=str, default=None, help="Forced index file.")
    g.add_argument("--train-doc-idx-path", type=str, default=None, help="Forced document index file.")
    g.add_argument("--train-sample-idx-path", type=str, default=None, help="Forced sample index file.")
    g.add_argument("--train-shuffle-idx-path", type=str, default=None, help="Forced shuffle index file.")
    g.add_argument("--repeated-dataloader", action="store_true", help="Reuse the DataLoader after one pass.")


def _autoresume(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("autoresume")
    g.add_argument("--adlr-autoresume", action="store_true", help="ADLR cluster autoresume.")
    g.add_argument("--adlr-autoresume-interval", type=int, default=1000, help="Autoresume check interval.")


def _zero(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("ZeRO configurations", "Merged into the DeepSpeed JSON's zero_optimization.")
    g.add_argument("--zero-stage", type=int, default=1.0, help="ZeRO stage (0-3; 2 and 3 need --no-pipeline-parallel; "
                        "3 saves the weights only in its shard files, so not with --no-save-optim).")
    g.add_argument("--zero-reduce-scatter", action="store_true", help="zero_optimization.reduce_scatter.")
    g.add_argument("--zero-contigious-gradients", action="store_true",
                   help="zero_optimization.contiguous_gradients.")
    g.add_argument("--zero-reduce-bucket-size", type=int, default=0.0, help="zero_optimization.reduce_bucket_size.")
    g.add_argument("--zero-allgather-bucket-size", type=int, default=0.0,
                   help="zero_optimization.allgather_bucket_size.")
    g.add_argument("--remote-device", type=str, default="none", choices=["none", "cpu", "nvme"],
                   help="ZeRO-3 parameter offload device.")
    g.add_argument("--use-pin-memory", action="store_true", help="Pinned memory for ZeRO-3 offload.")


def _memory_optimizations(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("Memory optimizations", "configurations")
    g.add_argument("--scattered-embeddings", action="store_true", help="Scatter embedding activations.")
    g.add_argument("--split-transformers", action="store_true", help="Split layers for finer checkpointing.")
    g.add_argument("--memory-centric-tiled-linear", action="store_true", help="deepspeed.zero.TiledLinear.")
    g.add_argument("--tile-factor", type=int, default=1, help="TiledLinear tile factor.")


def _activation_checkpointing(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("Activation Checkpointing", "DeepSpeed activation checkpointing options.")
    g.add_argument("--deepspeed-activation-checkpointing", action="store_true",
                   help="Use deepspeed.checkpointing for --checkpoint-activations.")
    g.add_argument("--partition-activations", action="store_true",
                   help="Partition checkpointed activations across the TP group.")
    g.add_argument("--contigious-checkpointing", action="store_true",
                   help="Copy checkpoints into one contiguous buffer.")
    g.add_argument("--checkpoint-in-cpu", action="store_true", help="Keep activation checkpoints in CPU memory.")
    g.add_argument("--synchronize-each-layer", action="store_true",
                   help="Synchronize at the start and end of each checkpointed layer.")
    g.add_argument("--profile-backward", action="store_true", help="Profile checkpointed backward passes.")


def _transformer_engine_and_profiler(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("Transformer-Engine")
    g.add_argument("--fp8-e4m3", action="store_true", dest="fp8_e4m3", help="FP8 E4M3.")
    g.add_argument("--fp8-hybrid", action="store_true", dest="fp8_hybrid", help="FP8 hybrid.")
    g.add_argument("--no-fp8-wgrad", action="store_false", dest="fp8_wgrad", help="wgrad in higher precision.")
    g.add_argument("--fp8-margin", type=int, default=0, dest="fp8_margin", help="FP8 scaling margin.")
    g.add_argument("--fp8-interval", type=int, default=1, dest="fp8_interval", help="FP8 scaling interval.")
    g.add_argument("--transformer-impl", default="local", choices=["local", "transformer_engine"],
                   dest="transformer_impl", help="Transformer implementation.")
    g.add_argument("--fp8-amax-history-len", type=int, default=1, dest="fp8_amax_history_len",
                   help="FP8 amax history length.")
    g.add_argument("--fp8-amax-compute-algo", default="most_recent", choices=["most_recent", "max"],
                   dest="fp8_amax_compute_algo", help="FP8 amax algorithm.")
    p = parser.add_argument_group("profiling configuration")
    p.add_argument("--profile", type=str, default=None, choices=["pt", "pt-full"], help="torch profiler.")
    p.add_argument("--profile_steps", type=str, default="2,3", help="<start>,<end> profiled steps.")
    p.add_argument("--profile-ranks", type=int, nargs="+", default=None, help="Profiled ranks.")


def _run_safety_and_reporting(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("run safety and reporting (this project)")
    g.add_argument("--max-consecutive-nonfinite-iterations", type=int, default=10,
                   help="Stop the run after this many consecutive iterations whose loss is NaN/Inf "
                        "(their updates are skipped).")
    g.add_argument("--no-verify-checkpoint", action="store_false", dest="verify_checkpoint",
                   help="Load without verifying the checksums that the checkpoint's manifest "
                        "records (for a step known to be intact on a slow filesystem).")
    g.add_argument("--peak-tflops-per-device", type=float, default=None,
                   help="Peak TFLOP/s of one device for the MFU column of the log (e.g. 989 for an "
                        "H100 in bf16). Without it no MFU is printed.")


_GROUPS = (_network_size, _regularization, _training, _initialization, _learning_rate, _checkpointing,
           _mixed_precision, _distributed, _validation, _data, _autoresume, _logging, _zero,
           _memory_optimizations, _activation_checkpointing, _transformer_engine_and_profiler,
           _run_safety_and_reporting)


class _OneLineErrors(argparse.ArgumentParser):
    """A bad flag is one line on stderr (exit code 2): argparse's usage of some 300 flags,
    printed by every rank, would bury it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the flags)\n")


def build_parser(extra_args_provider: Optional[_ExtraArgsProvider] = None) -> argparse.ArgumentParser:
    """Return the parser with every flag (DeepSpeed's `--deepspeed`/`--deepspeed_config` included)."""
    import deepspeed  # deferred: importing deepspeed is slow and not needed to import this module

    parser = _OneLineErrors(
        description="GPT pretraining on DeepSpeed (Megatron-DeepSpeed compatible flags).",
        allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for add_group in _GROUPS:
        add_group(parser)
    if extra_args_provider is not None:
        parser = extra_args_provider(parser)
    return deepspeed.add_config_arguments(parser)


def _explicit_dests(parser: argparse.ArgumentParser, argv: Sequence[str]) -> frozenset:
    """Dests of the options spelled out in `argv` (so defaults can be told from given values)."""
    given = set()
    for token in argv:
        if token == "--":
            break
        if token.startswith("-"):
            action = parser._option_string_actions.get(token.split("=", 1)[0])
            if action is not None:
                given.add(action.dest)
    return frozenset(given)


def parse_args(argv: Optional[Sequence[str]] = None, *,
               extra_args_provider: Optional[_ExtraArgsProvider] = None,
               defaults: Optional[Mapping[str, Any]] = None) -> argparse.Namespace:
    """Parse `argv` (default `sys.argv[1:]`) into a namespace with upstream dests.

    `defaults` fills dests the command line left at None (as upstream's `args_defaults`, e.g.
    `{"tokenizer_type": "GPT2BPETokenizer"}`). The namespace also carries `explicit_args`, the
    frozenset of dests given on the command line, which the configuration uses to tell a flag
    left at its default from one that must agree with the DeepSpeed JSON. Unknown flags are an
    argparse error.
    """
    import sys

    parser = build_parser(extra_args_provider)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    for key, value in (defaults or {}).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.explicit_args = _explicit_dests(parser, argv)
    return args
