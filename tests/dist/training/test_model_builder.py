"""megatron.training.model_builder.build_model, fed by the real flag parsing.

Flags go through `parse_args` and `build_config` (as pretrain_gpt.py does), the config is
completed with the padded vocabulary, and `build_model` builds the model on ranks of a
2-process gloo pool. Then:

1. What each flag must change is observed on the built model (which class, parameter dtype,
   which functions a training forward recomputes, whether attention runs through torch's
   scaled_dot_product_attention, sequence-parallel layer flags and gradient hooks), so a
   flag the builder or the config drops fails here.
2. With --sequence-parallel at TP2, the gradients after backward (two micro batches
   accumulated, with only the hooks build_model registers: no explicit all-reduce) gathered
   to full tensors equal the TP1 model's. Tolerance: rtol 1e-4, atol 1e-6 in fp32 (partial
   sums are added in another order; measured max abs difference 1.4e-7, while missing hooks
   or hooks registered twice move norm and bias gradients by about 0.57). Replicated
   parameters' gradients (norms, row-parallel biases: the ones the hooks sum) must be
   bit-identical on both TP ranks.
"""
from contextlib import contextmanager
from typing import Dict, List

import pytest
import torch
import torch.distributed as dist

from tests.dist.model.model_utils import (SEQ, VOCAB, full_params_and_grads, make_batch,
                                          setup_parallel)
from tests.harness import run_on_ranks

WORLD_SIZE = 2
NUM_LAYERS = 2
BASE = (f"--num-layers {NUM_LAYERS} --hidden-size 64 --num-attention-heads 8 --seq-length {SEQ} "
        f"--max-position-embeddings {SEQ} --micro-batch-size 2 --global-batch-size 4 "
        f"--train-iters 1 --lr 1e-3 --tokenizer-type NullTokenizer --vocab-size {VOCAB - 1} "
        "--deepspeed --use-cpu-initialization --hidden-dropout 0 --attention-dropout 0 "
        "--seed 1234").split()
GRAD_TOL = dict(rtol=1e-4, atol=1e-6)


def build_from_flags(flags: List[str]):
    """Parse, validate, set up the groups the config asks for, and build the model."""
    import deepspeed

    from megatron.arguments import parse_args
    from megatron.config import build_config
    from megatron.training.model_builder import build_model

    config = build_config(parse_args(BASE + list(flags)), world_size=dist.get_world_size(),
                          accelerator_name="cpu").with_padded_vocab_size(VOCAB)
    deepspeed.init_distributed(dist_backend="gloo")  # the pipeline module uses deepspeed.comm
    setup_parallel(config.parallel.tensor_model_parallel_size,
                   config.parallel.pipeline_model_parallel_size, seed=config.seed)
    return config, build_model(config)


@contextmanager
def _observed_calls(record: Dict[str, list]):
    """Record what the tensor-parallel checkpoint recomputes and every SDPA call."""
    import torch.nn.functional as F

    from megatron.core import tensor_parallel
    from megatron.model.attention import CoreAttention

    checkpoint, sdpa = tensor_parallel.checkpoint, F.scaled_dot_product_attention

    def recording_checkpoint(function, distribute, *args):
        record["recomputed"].append("attention" if isinstance(function, CoreAttention)
                                    else "layers")
        return checkpoint(function, distribute, *args)

    def recording_sdpa(*args, **kwargs):
        record["sdpa_calls"].append(1)
        return sdpa(*args, **kwargs)

    tensor_parallel.checkpoint = recording_checkpoint
    F.scaled_dot_product_attention = recording_sdpa
    try:
        yield
    finally:
        tensor_parallel.checkpoint, F.scaled_dot_product_attention = checkpoint, sdpa


def describe_built_model(flags: List[str]) -> dict:
    """What the flags turned into, on the built model and in one training forward."""
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

    config, model = build_from_flags(flags)
    tokens, position_ids, _, labels, _ = make_batch()
    record = {"recomputed": [], "sdpa_calls": []}
    model.train()
    with _observed_calls(record):
        if type(model).__name__ == "GPTModelPipe":
            causal = torch.ones(SEQ, SEQ, dtype=torch.bool).triu(1)
            causal = causal.expand(len(tokens), 1, SEQ, SEQ)
            # What DeepSpeed's PipelineEngine does when it takes the module: without it, a
            # module with a checkpoint interval returns its input unchanged.
            model.set_checkpoint_interval(model.activation_checkpoint_interval)
            logits = model((tokens, position_ids, causal))
            # DeepSpeed returns a 1-tuple when the last chunk was checkpointed
            (logits[0] if isinstance(logits, tuple) else logits).float().sum().backward()
        else:
            model(tokens, position_ids, None, labels=labels).sum().backward()
    linears = [module for module in model.modules()
               if isinstance(module, (ColumnParallelLinear, RowParallelLinear))]
    marked = [p for p in model.parameters() if getattr(p, "sequence_parallel", False)]
    return {
        "class": type(model).__name__,
        "dtypes": sorted({str(p.dtype) for p in model.parameters()}),
        "recomputed": record["recomputed"],
        "sdpa_calls": len(record["sdpa_calls"]),
        "sequence_parallel_linears": sorted({m.sequence_parallel for m in linears}),
        "sequence_parallel_params": len(marked),
        "gradient_hooks": sum(len(p._backward_hooks or {}) for p in marked),
        "tp": config.model.tensor_model_parallel_size,
    }


# Per layer: 2 norm weights + 2 norm biases + 2 row-parallel biases; then the final norm.
SEQUENCE_PARALLEL_PARAMS = 6 * NUM_LAYERS + 2
# fp32 without dropout on a CPU: the default attention is SDPA (the faster exact path there);
# every recomputed layer calls it once more in backward.
PLAIN = {"class": "GPTModel", "dtypes": ["torch.float32"], "recomputed": [], "sdpa_calls": NUM_LAYERS,
         "sequence_parallel_linears": [False], "sequence_parallel_params": 0,
         "gradient_hooks": 0, "tp": 1}
NO_PIPE = ["--no-pipeline-parallel"]
CASES = {
    "pipeline-engine": ([], {"class": "GPTModelPipe"}),
    "no-pipeline-parallel": (NO_PIPE, {}),
    # bf16 on a CPU: the classic path is the faster one, unless SDPA is forced.
    "bf16": (NO_PIPE + ["--bf16"], {"dtypes": ["torch.bfloat16"], "sdpa_calls": 0}),
    "bf16-use-flash-attn": (NO_PIPE + ["--bf16", "--use-flash-attn"],
                            {"dtypes": ["torch.bfloat16"], "sdpa_calls": NUM_LAYERS}),
    "use-classic-attention": (NO_PIPE + ["--use-classic-attention"], {"sdpa_calls": 0}),
    "checkpoint-activations": (NO_PIPE + ["--checkpoint-activations"],
                               {"recomputed": ["layers"] * NUM_LAYERS, "sdpa_calls": 2 * NUM_LAYERS}),
    "full-uniform": (NO_PIPE + ["--recompute-granularity", "full", "--recompute-method",
                                "uniform", "--recompute-num-layers", "2"],
                     {"recomputed": ["layers"], "sdpa_calls": 2 * NUM_LAYERS}),
    "full-block": (NO_PIPE + ["--recompute-granularity", "full", "--recompute-method", "block",
                              "--recompute-num-layers", "1"],
                   {"recomputed": ["layers"], "sdpa_calls": NUM_LAYERS + 1}),
    "selective": (NO_PIPE + ["--recompute-granularity", "selective"],
                  {"recomputed": ["attention"] * NUM_LAYERS, "sdpa_calls": 2 * NUM_LAYERS}),
    "recompute-activations": (NO_PIPE + ["--recompute-activations"],
                              {"recomputed": ["attention"] * NUM_LAYERS,
                               "sdpa_calls": 2 * NUM_LAYERS}),
    "sequence-parallel": (NO_PIPE + ["--tensor-model-parallel-size", "2", "--sequence-parallel"],
                          {"tp": 2, "sequence_parallel_linears": [True],
                           "sequence_parallel_params": SEQUENCE_PARALLEL_PARAMS,
                           "gradient_hooks": SEQUENCE_PARALLEL_PARAMS}),
    "tp2-without-sequence-parallel": (NO_PIPE + ["--tensor-model-parallel-size", "2"], {"tp": 2}),
    "pipeline-sequence-parallel-bf16-flash": (
        ["--tensor-model-parallel-size", "2", "--sequence-parallel", "--bf16", "--use-flash-attn"],
        {"class": "GPTModelPipe", "tp": 2, "dtypes": ["torch.bfloat16"], "sdpa_calls": NUM_LAYERS,
         "sequence_parallel_linears": [True], "sequence_parallel_params": SEQUENCE_PARALLEL_PARAMS,
         "gradient_hooks": SEQUENCE_PARALLEL_PARAMS}),
    "pipeline-checkpoint-activations": (["--checkpoint-activations"],
                                        {"class": "GPTModelPipe",
                                         "recomputed": ["layers"] * NUM_LAYERS,
                                         "sdpa_calls": 2 * NUM_LAYERS}),
    "pipeline-full-block": (["--recompute-granularity", "full", "--recompute-method", "block",
                             "--recompute-num-layers", "1"],
                            {"class": "GPTModelPipe", "recomputed": ["layers"],
                             "sdpa_calls": NUM_LAYERS + 1}),
    "pipeline-selective": (["--recompute-granularity", "selective"],
                           {"class": "GPTModelPipe", "recomputed": ["attention"] * NUM_LAYERS,
                            "sdpa_calls": 2 * NUM_LAYERS}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_flags_reach_the_built_model(case):
    flags, changes = CASES[case]
    described = run_on_ranks(describe_built_model, flags, world_size=WORLD_SIZE)
    assert described[0] == described[1], "the two ranks built different models"
    assert described[0] == {**PLAIN, **changes}


def sequence_parallel_gradients(flags: List[str]) -> dict:
    """Gradients of two accumulated micro batches, through build_model's hooks only."""
    _, model = build_from_flags(NO_PIPE + list(flags))
    for seed in (0, 1):
        tokens, position_ids, mask, labels, loss_mask = make_batch(seed, document_mask=seed == 1)
        losses = model(tokens, position_ids, mask, labels=labels)
        ((losses * loss_mask).sum() / loss_mask.sum()).backward()
    full = full_params_and_grads(model)
    replicated = {name: param.grad.clone() for name, param in model.named_parameters()
                  if getattr(param, "sequence_parallel", False)}
    return {"grads": full["grads"], "replicated": replicated}


def test_sequence_parallel_hooks_give_the_tp1_gradients():
    reference = run_on_ranks(sequence_parallel_gradients, [], world_size=WORLD_SIZE)[0]
    ranks = run_on_ranks(sequence_parallel_gradients,
                         ["--tensor-model-parallel-size", "2", "--sequence-parallel"],
                         world_size=WORLD_SIZE)
    got = ranks[0]
    assert sorted(got["grads"]) == sorted(reference["grads"])
    assert len(got["replicated"]) == SEQUENCE_PARALLEL_PARAMS
    for name, grad in ranks[1]["replicated"].items():
        assert torch.equal(grad, got["replicated"][name]), f"{name}: TP ranks hold different sums"
    for name, expected in reference["grads"].items():
        assert expected is not None and expected.abs().max() > 0, name
        torch.testing.assert_close(got["grads"][name], expected, **GRAD_TOL,
                                   msg=lambda message: f"{name}: {message}")
