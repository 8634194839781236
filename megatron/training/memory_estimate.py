"""Memory per rank from the configuration alone: parameters, gradients, optimizer state and
activations, before anything is launched (`tools/estimate_memory.py` prints it).

The arithmetic follows what this project's model and DeepSpeed 0.19 allocate:

- Parameters: exact counts of `GPTModel` / `GPTModelPipe` (fused QKV with GQA, GeLU or
  SwiGLU MLP, LayerNorm or RMSNorm, learned positions or none/rope, tied or untied head),
  split over tensor-parallel ranks like the model, over pipeline stages like DeepSpeed's
  `PipelineModule` (`--pipeline-partition-method`), over data-parallel ranks with ZeRO-3.
- Gradients: the model's gradients in the gradient-accumulation dtype (full size at ZeRO 0/1,
  1/DP at ZeRO 2/3), plus DeepSpeed's reduce bucket (`reduce_bucket_size` elements, twice with
  `overlap_comm`; on a CPU only the touched pages, at most one model's worth, are resident).
  ZeRO 1/2 allocate the bucket at each backward and release it at its end.
- Step buffers, what the optimizer step allocates (ZeRO 1/2, `DeepSpeedZeroOptimizer.step`):
  on a GPU the gradient norm upcasts each gradient slice of the partition to fp64 in turn
  (DeepSpeed's `get_norm_dtype`; on a CPU `zero_grad_norm` takes it over cache-sized chunks
  instead: no copy), then each parameter group's gradients are flattened into one partition
  (1/DP) in the accumulation dtype and, when that is not fp32, copied to fp32 (both alive).
  torch's fused AdamW and the fp32->model copy work in place. The bf16 optimizer and ZeRO-0
  step on the gradients they hold (their norms `.float()` fp32 tensors: no copy): none.
- Optimizer state: Adam's two fp32 moments (SGD: one with momentum) and DeepSpeed's fp32
  master weights (ZeRO >= 1 clones them even in fp32; fp16/bf16 always have them), divided
  by DP with ZeRO >= 1 (and with DeepSpeed's bf16 optimizer).
- Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models", generalised to the element size): per layer and micro batch
  s·b·h·(4e + 2m) replicated over TP ranks (norm inputs, QKV and MLP inputs, dropout masks)
  plus the TP-split part (QKV output, context, MLP intermediates) and the attention scores
  a·s²·b·(softmax + dropout mask + dropout output); e = activation bytes, m = 1 per dropout
  mask (on a CPU torch's dropout keeps its mask in the activation dtype: m = e). Sequence
  parallel splits the replicated part too. DeepSpeed-Ulysses (`--ds-sequence-parallel-size`
  N) gives each rank s/N tokens everywhere but in the core attention, which sees all s
  tokens for heads/N heads; ZeRO then partitions over DP x N ranks. Selective recompute
  drops the s² part, SDPA (--use-flash-attn) keeps only a log-sum-exp per row; full recompute keeps
  each chunk's input and rebuilds one chunk in backward. Pipeline stage k holds
  min(PP - k, micro batches) micro batches in flight (1F1B). The last stage adds the logits
  and the loss's fp32 exp(logits - max).

The peak of a rank is the larger of two phases, each on top of `overhead`, parameters and
optimizer state: forward/backward (gradients with the bucket, activations) and the optimizer
step (gradients, step buffers; backward has freed the activations and the bucket). On a CPU
the process keeps the pages it frees (`cpu_allocator.retain_freed_memory`: glibc never trims
or unmaps them) and does not reliably place the step's large blocks on the pages backward
freed (the bucket, allocated anew each backward, moves), so there the step's buffers, all of
them, add to everything backward left resident (activations, bucket). The measured peaks of
the 125M run were 0.99-1.08 x that at first and 1.10 x (no recompute) and 1.20 x (full
recompute) on a later machine: the step holds transients not modelled here
(tests/bench/RESULTS.md; glibc's placement varies).
`overhead` is the runtime itself: on a CPU the measured resident set of a training process
with a negligible model (Python, torch, DeepSpeed, gloo; RSS includes it), on a GPU an
allowance for what `max_memory_allocated` does not see (CUDA context, NCCL buffers,
fragmentation).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from megatron.config.schema import TrainingConfig
from megatron.model.pipeline_partition import FLOPS_METHOD, balanced_bounds
from megatron.model.transformer_config import TransformerConfig

GIB = 2 ** 30
# Peak RSS of pretrain_gpt.py with a 135K-parameter model, one process, fp32 (measured on the
# 2-core CPU machines, torch 2.13 / deepspeed 0.19.8: 0.39 GiB; tests/bench/RESULTS.md).
CPU_RUNTIME_BYTES = int(0.39 * GIB)
# CUDA context + NCCL + allocator fragmentation allowance on a GPU (an assumption, not measured).
GPU_RUNTIME_BYTES = int(1.5 * GIB)
DEEPSPEED_REDUCE_BUCKET_SIZE = 500_000_000  # DeepSpeed's default, in elements
_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


@dataclass(frozen=True)
class StageMemory:
    """Bytes held by one rank of a pipeline stage."""

    stage: int
    num_layers: int
    num_parameters: int
    """Parameters of this rank (its tensor-parallel shard of the stage), before ZeRO-3."""
    parameters: int
    gradients: int
    """Gradients, `reduce_bucket` included."""
    reduce_bucket: int
    """The part of `gradients` that ZeRO 1/2 allocate in backward and release before the step."""
    optimizer_state: int
    activations: int
    step_buffers: int
    """What the optimizer step allocates on top (flat gradient partition; on a GPU also the
    norm's fp64 copy of one gradient)."""
    overhead: int
    micro_batches_in_flight: int
    retains_freed_memory: bool = False
    """CPU: freed pages stay resident (cpu_allocator), so the step adds to backward's pages."""

    @property
    def backward_peak(self) -> int:
        return (self.overhead + self.parameters + self.optimizer_state + self.gradients
                + self.activations)

    @property
    def step_peak(self) -> int:
        if self.retains_freed_memory:  # backward's pages are still resident under the step's
            return self.backward_peak + self.step_buffers
        return (self.overhead + self.parameters + self.optimizer_state
                + self.gradients - self.reduce_bucket + self.step_buffers)

    @property
    def peak(self) -> int:
        return max(self.backward_peak, self.step_peak)

    @property
    def peak_phase(self) -> str:
        """Where the peak is: "step" (optimizer step) or "backward" (forward/backward)."""
        return "step" if self.step_peak > self.backward_peak else "backward"


@dataclass(frozen=True)
class MemoryEstimate:
    stages: Tuple[StageMemory, ...]
    data_parallel_size: int

    @property
    def worst(self) -> StageMemory:
        """The stage whose ranks need the most memory."""
        return max(self.stages, key=lambda stage: stage.peak)

    def fits(self, device_bytes: float) -> bool:
        return self.worst.peak <= device_bytes


# ---------------------------------------------------------------- parameters


def layer_parameters(model: TransformerConfig, tensor_model_parallel_size: int) -> int:
    """Parameters of one transformer layer on one tensor-parallel rank."""
    t, h = tensor_model_parallel_size, model.hidden_size
    query = model.num_attention_heads * model.kv_channels
    kv = model.num_key_value_heads * model.kv_channels
    ffn = model.ffn_hidden_size
    fc1_out = 2 * ffn if model.activation == "swiglu" else ffn
    bias = 1 if model.add_bias_linear else 0
    norm = 2 * h if model.normalization == "layernorm" else h
    attention = h * (query + 2 * kv) // t + bias * (query + 2 * kv) // t + query // t * h + bias * h
    mlp = h * fc1_out // t + bias * fc1_out // t + ffn // t * h + bias * h
    return attention + mlp + 2 * norm


def _embedding_parameters(model: TransformerConfig, vocab: int, t: int) -> int:
    positions = (model.max_position_embeddings * model.hidden_size
                 if model.position_embedding_type == "learned_absolute" else 0)
    return vocab // t * model.hidden_size + positions


def _spec_weights(model: TransformerConfig, vocab: int, t: int) -> List[Tuple[str, int]]:
    """(layer type, parameters) of each spec of GPTModelPipe, in its order."""
    norm = 2 * model.hidden_size if model.normalization == "layernorm" else model.hidden_size
    embedding = _embedding_parameters(model, vocab, t)
    tied = not model.untie_embeddings_and_output_weights
    specs = [("_CastInputs", 0), ("EmbeddingPipe", embedding)]
    specs += [("ParallelTransformerLayerPipe", layer_parameters(model, t))] * model.num_layers
    specs.append(("LayerNormPipe" if model.normalization == "layernorm" else "RMSNormPipe", norm))
    specs.append(("EmbeddingPipe", embedding) if tied
                 else ("LMHeadPipe", vocab // t * model.hidden_size))
    if _BYTES_OF_DTYPE.get(str(model.params_dtype), 4) == 2:
        specs.append(("_logits_to_loss", 0))
    return specs


_BYTES_OF_DTYPE = {"torch.float32": 4, "torch.float16": 2, "torch.bfloat16": 2}


def _stage_bounds(weights: Sequence[int], names: Sequence[str], num_stages: int,
                  method: str) -> List[int]:
    """DeepSpeed's own partitioning of the specs into stages."""
    from deepspeed.runtime import utils as ds_utils

    method = method.lower()
    if method == "uniform":
        return ds_utils.partition_uniform(num_items=len(weights), num_parts=num_stages)
    if method == "parameters":
        return ds_utils.partition_balanced(weights=list(weights), num_parts=num_stages)
    if method.startswith("type:"):
        pattern = re.compile(method.split(":", 1)[1], re.IGNORECASE)
        binary = [1 if pattern.search(name) else 0 for name in names]
        return ds_utils.partition_balanced(weights=binary, num_parts=num_stages)
    raise ValueError(f"--pipeline-partition-method {method!r}: the estimate knows parameters, "
                     "uniform and type:<regex>")


def stage_parameters(config: TrainingConfig, vocab: int) -> List[Tuple[int, int, bool, bool]]:
    """(transformer layers, parameters per rank, holds the embedding, holds the LM head) of
    each pipeline stage."""
    model, parallel = config.model, config.parallel
    t, p = parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size
    specs = _spec_weights(model, vocab, t)
    if not parallel.pipeline_engine or p == 1:
        norm = specs[2 + model.num_layers][1]
        head = specs[3 + model.num_layers][1] if model.untie_embeddings_and_output_weights else 0
        total = specs[1][1] + model.num_layers * layer_parameters(model, t) + norm + head
        return [(model.num_layers, total, True, True)]
    names, weights = [name for name, _ in specs], [weight for _, weight in specs]
    head_index = 3 + model.num_layers
    if parallel.pipeline_partition_method.lower() == FLOPS_METHOD:
        bounds = balanced_bounds(model.with_padded_vocab_size(vocab), p)
    else:
        bounds = _stage_bounds(weights, names, p, parallel.pipeline_partition_method)
    stages = []
    for stage in range(p):
        chosen = range(bounds[stage], bounds[stage + 1])
        stages.append((sum(names[i] == "ParallelTransformerLayerPipe" for i in chosen),
                       sum(weights[i] for i in chosen), 1 in chosen, head_index in chosen))
    return stages


# ---------------------------------------------------------------- activations


def layer_activation_bytes(model: TransformerConfig, *, micro_batch_size: int, seq_length: int,
                           tensor_model_parallel_size: int, sequence_parallel: bool,
                           element_size: int, fused_softmax: bool = False,
                           dropout_mask_size: int = 1, ulysses_size: int = 1) -> dict:
    """Bytes one transformer layer saves for backward for one micro batch, split into
    `replicated` (norm/linear inputs and dropout masks, split by TP only with sequence
    parallelism), `split` (TP-split activations) and `scores` (the s x s attention part).
    `ulysses_size` N: this rank holds s/N tokens, and the core attention all s tokens of
    heads/N heads (the same q/k/v/context bytes, traded by all-to-all)."""
    full_s = seq_length
    s, b, h, t, e = (seq_length // ulysses_size, micro_batch_size, model.hidden_size,
                     tensor_model_parallel_size, element_size)
    sbh = s * b * h
    hidden_mask = dropout_mask_size if model.hidden_dropout > 0 else 0
    replicated = sbh * (4 * e + 2 * hidden_mask)
    query = model.num_attention_heads * model.kv_channels
    kv = model.num_key_value_heads * model.kv_channels
    fc1_out = 2 * model.ffn_hidden_size if model.activation == "swiglu" else model.ffn_hidden_size
    split = s * b * e * ((query + 2 * kv) + query + fc1_out + model.ffn_hidden_size) // t
    heads = model.num_attention_heads // t // ulysses_size
    if model.use_flash_attn:
        scores = heads * full_s * b * 4  # SDPA keeps the output (counted above) and a log-sum-exp
    else:
        half = e == 2
        softmax = 4 if (half and model.attention_softmax_in_fp32 and not fused_softmax) else e
        dropout = (dropout_mask_size + e) if model.attention_dropout > 0 else 0
        scores = heads * full_s * full_s * b * (softmax + dropout)
    if sequence_parallel:
        replicated //= t
    return {"replicated": replicated, "split": split, "scores": scores}


def _recompute(model: TransformerConfig) -> Tuple[str, int]:
    """(kind, layers per chunk or recomputed layers)."""
    if model.checkpoint_activations:
        return "uniform", model.checkpoint_num_layers
    if model.recompute_granularity == "full":
        return model.recompute_method, model.recompute_num_layers or 1
    if model.recompute_granularity == "selective":
        return "selective", 0
    return "none", 0


def stage_activation_bytes(config: TrainingConfig, *, num_layers: int, vocab: int, first: bool,
                           last: bool, in_flight: int, fused_softmax: bool,
                           dropout_mask_size: int = 1) -> int:
    """Activations one rank of a stage holds at its peak (in-flight micro batches included)."""
    model, parallel = config.model, config.parallel
    t, ulysses = parallel.tensor_model_parallel_size, parallel.ds_sequence_parallel_size
    b = config.batch.micro_batch_size
    e = _BYTES[config.precision.dtype]
    if model.fp32_residual_connection:
        e = 4
    parts = layer_activation_bytes(model, micro_batch_size=b, seq_length=config.data.seq_length,
                                   tensor_model_parallel_size=t,
                                   sequence_parallel=parallel.sequence_parallel,
                                   element_size=e, fused_softmax=fused_softmax,
                                   dropout_mask_size=dropout_mask_size, ulysses_size=ulysses)
    s = config.data.seq_length // ulysses  # this rank's tokens outside the core attention
    full_layer = parts["replicated"] + parts["split"] + parts["scores"]
    layer_input = s * b * model.hidden_size * e // (t if parallel.sequence_parallel else 1)
    kind, chunk = _recompute(model)
    if kind == "none":
        per_micro_batch, rebuilt = num_layers * full_layer, 0
    elif kind == "selective":
        per_micro_batch = num_layers * (parts["replicated"] + parts["split"])
        rebuilt = parts["scores"]
    elif kind == "uniform":
        chunk = min(chunk, num_layers) or 1
        per_micro_batch, rebuilt = math.ceil(num_layers / chunk) * layer_input, chunk * full_layer
    else:  # block: the first `chunk` layers of the stage keep only their input
        kept = min(chunk, num_layers)
        per_micro_batch = kept * layer_input + (num_layers - kept) * full_layer
        rebuilt = full_layer if kept else 0
    total = in_flight * per_micro_batch + rebuilt
    sbh = s * b * model.hidden_size // (t if parallel.sequence_parallel else 1)
    if first and model.hidden_dropout > 0:
        total += in_flight * sbh * dropout_mask_size  # the embedding dropout's mask
    if last:
        logits = s * b * vocab // t
        # final norm input and LM-head input; while the loss runs: the logits (model dtype)
        # and the loss's fp32 exp(logits - max), which it fills a chunk of rows at a time
        # from logits of any dtype and saves (the backward turns it into the gradient in place).
        total += 2 * sbh * e + logits * (e + 4)
    return total


# ---------------------------------------------------------------- model states


def _ds_zero_value(config: TrainingConfig, key: str, default):
    return (config.ds_config.get("zero_optimization") or {}).get(key, default)


def _grad_accum_bytes(config: TrainingConfig) -> int:
    """DeepSpeed accumulates in `data_types.grad_accum_dtype`, else in the model's dtype."""
    dtype = (config.ds_config.get("data_types") or {}).get("grad_accum_dtype")
    return _BYTES.get(dtype, _BYTES[config.precision.dtype])


def model_state_bytes(config: TrainingConfig, num_parameters: int, *, accelerator: str,
                      largest_parameter: int = 0) -> dict:
    """parameters, gradients (reduce_bucket: the part released before the step),
    optimizer_state and step_buffers bytes of one rank holding `num_parameters` (its TP/PP
    shard), whose largest parameter tensor has `largest_parameter` elements."""
    # ZeRO partitions over every rank holding the same weights: DP x Ulysses ranks.
    zero = config.parallel.zero_stage
    dp = config.parallel.data_parallel_size * config.parallel.ds_sequence_parallel_size
    dtype = config.precision.dtype
    e, g = _BYTES[dtype], _grad_accum_bytes(config)
    n, shard = num_parameters, math.ceil(num_parameters / dp)
    if config.optimizer.optimizer == "adam":
        moments = 8
    else:
        moments = 4 if config.optimizer.sgd_momentum > 0 else 0
    bf16_optimizer = dtype == "bf16" and ((zero == 0 and config.parallel.pipeline_engine)
                                          or (zero == 1 and g == 4))
    if zero >= 1 or bf16_optimizer:  # DeepSpeed ZeRO / bf16 optimizer: fp32 master, sharded
        optimizer_state = shard * (4 + moments)
    elif dtype == "fp32":  # plain torch optimizer on the model's own parameters
        optimizer_state = n * moments
    else:  # fp16 / bf16 optimizer without ZeRO: full fp32 master copy
        optimizer_state = n * (4 + moments)
    parameters = (shard if zero == 3 else n) * e
    step_buffers = reduce_bucket = 0
    if zero == 0:
        gradients = n * g
        if dtype != "fp32":
            gradients += n * (4 if not bf16_optimizer else 0)  # fp32 gradients of the master copy
    else:
        gradients = (n if zero == 1 else shard) * g
        contiguous = _ds_zero_value(config, "contiguous_gradients", True)
        overlap = _ds_zero_value(config, "overlap_comm", zero == 3)
        bucket = 0
        if contiguous or overlap or zero >= 2:
            bucket = int(_ds_zero_value(config, "reduce_bucket_size", DEEPSPEED_REDUCE_BUCKET_SIZE))
            if accelerator == "cpu":  # untouched pages of torch.empty are not resident
                bucket = min(bucket, n)
            bucket *= g * (2 if overlap else 1)
            gradients += bucket
        if zero == 3:  # (its own step, not examined here: the fp32 gradient partition only)
            step_buffers = shard * 4
        elif not bf16_optimizer:  # DeepSpeedZeroOptimizer.step (the bf16 optimizer: none)
            reduce_bucket = bucket  # released by the backward epilogue (_release_ipg_buffers)
            # The flat partition of the largest group (at most the shard) in the accumulation
            # dtype plus its fp32 copy when that differs; on a GPU before it the norm's fp64
            # copy of one gradient slice at a time, freed before the flattening (a CPU's norm,
            # megatron.training.zero_grad_norm, copies nothing).
            flat_partition = shard * (g + (4 if g != 4 else 0))
            step_buffers = (flat_partition if accelerator == "cpu"
                            else max(8 * min(largest_parameter, shard), flat_partition))
    return {"parameters": parameters, "gradients": gradients, "reduce_bucket": reduce_bucket,
            "optimizer_state": optimizer_state, "step_buffers": step_buffers}


def largest_parameter(config: TrainingConfig, vocab: int, *, num_layers: int,
                      holds_embedding: bool, holds_head: bool) -> int:
    """Elements of the largest parameter tensor one rank of a stage holds (its TP shard)."""
    model, t = config.model, config.parallel.tensor_model_parallel_size
    h = model.hidden_size
    query = model.num_attention_heads * model.kv_channels
    kv = model.num_key_value_heads * model.kv_channels
    fc1_out = 2 * model.ffn_hidden_size if model.activation == "swiglu" else model.ffn_hidden_size
    sizes = [0]
    if num_layers:
        sizes += [h * (query + 2 * kv) // t, query // t * h, h * fc1_out // t,
                  model.ffn_hidden_size // t * h]
    if holds_embedding or holds_head:  # the head is the tied word embeddings or its own matrix
        sizes.append(vocab // t * h)
    if holds_embedding and model.position_embedding_type == "learned_absolute":
        sizes.append(model.max_position_embeddings * h)
    return max(sizes)


# ---------------------------------------------------------------- the estimate


def padded_vocab_size(config: TrainingConfig) -> Optional[int]:
    """The padded vocabulary the tokenizer will give, when the flags alone tell it
    (NullTokenizer: --vocab-size + EOD; GPT2BPETokenizer: GPT-2's 50257); else None."""
    from megatron.tokenizer.tokenizer import pad_vocab_size

    data = config.data
    if config.model.padded_vocab_size is not None:
        return config.model.padded_vocab_size
    if data.tokenizer_type == "NullTokenizer" and data.vocab_size is not None:
        orig = data.vocab_size + 1
    elif data.tokenizer_type == "GPT2BPETokenizer":
        orig = 50257
    else:
        return None
    return pad_vocab_size(orig, make_vocab_size_divisible_by=data.make_vocab_size_divisible_by,
                          tensor_model_parallel_size=config.parallel.tensor_model_parallel_size)


def estimate_memory(config: TrainingConfig, *, padded_vocab: Optional[int] = None,
                    accelerator: Optional[str] = None,
                    overhead_bytes: Optional[int] = None) -> MemoryEstimate:
    """Per-rank memory of every pipeline stage of the run `config` describes.

    `padded_vocab`: default from the tokenizer flags (`padded_vocab_size`); `accelerator`:
    "cpu" or a GPU name (default `config.accelerator_name`); `overhead_bytes`: the runtime's
    own memory (default `CPU_RUNTIME_BYTES` on a CPU, `GPU_RUNTIME_BYTES` elsewhere).
    """
    vocab = padded_vocab or padded_vocab_size(config)
    if vocab is None:
        raise ValueError(f"--tokenizer-type {config.data.tokenizer_type}: the padded vocabulary "
                         "is not known from the flags; give it (--padded-vocab-size)")
    accelerator = accelerator or config.accelerator_name
    if overhead_bytes is None:
        overhead_bytes = CPU_RUNTIME_BYTES if accelerator == "cpu" else GPU_RUNTIME_BYTES
    half = config.precision.dtype in ("fp16", "bf16")
    fused_softmax = accelerator != "cpu" and half and config.model.masked_softmax_fusion
    num_micro_batches = config.batch.gradient_accumulation_steps
    # torch's CPU dropout keeps its mask in the input's dtype; the GPU kernel a bool mask.
    mask_size = _BYTES[config.precision.dtype] if accelerator == "cpu" else 1
    stages = []
    layout = stage_parameters(config, vocab)
    pipelined = config.parallel.pipeline_engine and len(layout) > 1
    for index, (num_layers, num_parameters, first, last) in enumerate(layout):
        in_flight = min(len(layout) - index, num_micro_batches) if pipelined else 1
        largest = largest_parameter(config, vocab, num_layers=num_layers,
                                    holds_embedding=first, holds_head=last)
        states = model_state_bytes(config, num_parameters, accelerator=accelerator,
                                   largest_parameter=largest)
        activations = stage_activation_bytes(config, num_layers=num_layers, vocab=vocab,
                                             first=first, last=last, in_flight=in_flight,
                                             fused_softmax=fused_softmax,
                                             dropout_mask_size=mask_size)
        stages.append(StageMemory(stage=index, num_layers=num_layers, num_parameters=num_parameters,
                                  activations=activations, overhead=overhead_bytes,
                                  micro_batches_in_flight=in_flight,
                                  retains_freed_memory=accelerator == "cpu", **states))
    return MemoryEstimate(stages=tuple(stages),
                          data_parallel_size=config.parallel.data_parallel_size)
