"""Every parallel layout trains the same model as one process: losses, grad norms and weights.

fp32, dropout off, layout-independent initialization (--use-cpu-initialization) and a
vocabulary whose padded size is 512 for every TP used; the layouts differ only in the order
of floating-point reductions. Each run trains 10 iterations and saves its checkpoint; the
DeepSpeed files are merged back into full tensors named like the 1-process model's.

Tolerances (measured differences on this machine in brackets):
- loss, every iteration: 1e-4 relative (log lines carry 7 significant digits) [< 2e-6].
- grad norm, every iteration: 1.5e-3 absolute (printed with 3 decimals, values near 1.2, so
  one last-digit rounding flip is allowed) [0 or 1e-3]. Summed instead of averaged
  data-parallel gradients double it.
- final weights: 1e-6 absolute, about 1/1000 of one Adam update at lr 1e-3 [max 1.2e-7,
  one ulp of the norm weights near 1.0]. The exception is the key part of the fused QKV
  bias: softmax is invariant to it, so its true gradient is 0 and Adam turns the rounding
  noise of that gradient into updates: its entries stay below 3e-6 in every layout, and are
  compared with 1e-5 absolute [max 3.2e-6].
- replicated parameters (norms, row-parallel biases, position embeddings) must be
  bit-identical on every TP rank (a missing sequence-parallel gradient sum breaks that).
"""
import re
from pathlib import Path
from typing import Dict, Optional

import pytest
import torch

from megatron.conversion.checkpoint_reader import open_checkpoint
from tests.functional.launch import (field_by_iteration, losses_by_iteration, run_pretrain,
                                     tiny_gpt_args, write_random_dataset)

pytestmark = pytest.mark.slow
ITERATIONS = 10
NUM_LAYERS, NUM_HEADS, HEAD_DIM = 2, 4, 16  # the shape of tiny_gpt_args
NO_DROPOUT = ["--hidden-dropout", "0", "--attention-dropout", "0"]
LOSS_RTOL = 1e-4
GRAD_NORM_ATOL = 1.5e-3
WEIGHT_ATOL = 1e-6
KEY_BIAS_ATOL = 1e-5

# How tensor parallelism splits each parameter (`partition_dim` in
# megatron/core/tensor_parallel/layers.py, all with stride 1 for this GeLU model): column
# parallel (QKV, h->4h) and the vocabulary embedding split the output dim 0, row parallel
# (attention dense, 4h->h) the input dim 1. Every TP rank holds whole heads, laid out
# [heads on the rank, (query, key, value), head dim] (megatron/model/attention.py), so the
# shards of the fused QKV weight and bias concatenate into the 1-process layout. Everything
# else is replicated.
TP_SPLIT_DIM = {
    "word_embeddings.weight": 0,
    "self_attention.query_key_value.weight": 0,
    "self_attention.query_key_value.bias": 0,
    "mlp.dense_h_to_4h.weight": 0,
    "mlp.dense_h_to_4h.bias": 0,
    "self_attention.dense.weight": 1,
    "mlp.dense_4h_to_h.weight": 1,
}
_PIPE_FILE = re.compile(r"layer_(\d+)-model_(\d+)-model_states\.pt")
_MP_FILE = re.compile(r"mp_rank_(\d+)_model_states\.pt")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_random_dataset(tmp_path_factory.mktemp("layout") / "random_text_document")


def _tp_split_dim(name: str) -> Optional[int]:
    return next((dim for suffix, dim in TP_SPLIT_DIM.items() if name.endswith(suffix)), None)


def _pipeline_prefix(layer_index: int) -> str:
    """The GPTModel name prefix of a GPTModelPipe spec index (gpt_model_pipe.py docstring);
    the tied embedding is saved by its first stage only (index 1)."""
    if layer_index == 1:
        return "language_model.embedding."
    if 2 <= layer_index < NUM_LAYERS + 2:
        return f"language_model.encoder.layers.{layer_index - 2}."
    if layer_index == NUM_LAYERS + 2:
        return "language_model.encoder.final_layernorm."
    raise AssertionError(f"unexpected pipeline layer file {layer_index}")


def merged_weights(save_dir: Path) -> Dict[str, torch.Tensor]:
    """The latest checkpoint under `save_dir` as full tensors with GPTModel's names.

    Pipeline runs save `layer_NN-model_TT-model_states.pt` (layer NN, TP rank TT), the others
    `mp_rank_TT_model_states.pt` whose "module" is the GPTModel state dict of TP rank TT.
    """
    tag_dir = save_dir / (save_dir / "latest").read_text().strip()
    shards: Dict[str, Dict[int, torch.Tensor]] = {}
    layer_files = sorted(tag_dir.glob("layer_*-model_*-model_states.pt"))
    for path in layer_files or sorted(tag_dir.glob("mp_rank_*_model_states.pt")):
        content = torch.load(path, map_location="cpu", weights_only=False)
        if layer_files:
            layer_index, tp_rank = map(int, _PIPE_FILE.fullmatch(path.name).groups())
            prefix = _pipeline_prefix(layer_index)
        else:
            tp_rank = int(_MP_FILE.fullmatch(path.name).group(1))
            content, prefix = content["module"], ""
        for name, tensor in content.items():
            shards.setdefault(prefix + name, {})[tp_rank] = tensor
    full = {}
    for name, by_rank in shards.items():
        parts = [by_rank[rank] for rank in sorted(by_rank)]
        dim = _tp_split_dim(name)
        if dim is None or len(parts) == 1:
            for rank, part in enumerate(parts[1:], start=1):
                assert torch.equal(part, parts[0]), f"{name}: TP rank {rank} differs from rank 0"
            full[name] = parts[0]
        else:
            full[name] = torch.cat(parts, dim=dim)
    return full


def _key_rows(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Mask of the key entries of a fused QKV bias (all False for other tensors)."""
    mask = torch.zeros_like(tensor, dtype=torch.bool)
    if name.endswith("query_key_value.bias"):
        mask.view(NUM_HEADS, 3, HEAD_DIM)[:, 1] = True
    return mask


def assert_same_weights(got: Dict[str, torch.Tensor], ref: Dict[str, torch.Tensor], label: str):
    assert sorted(got) == sorted(ref), f"{label}: parameter names differ"
    for name, expected in ref.items():
        value = got[name]
        assert value.shape == expected.shape and value.dtype == expected.dtype == torch.float32, (
            f"{label}: {name} {tuple(value.shape)} {value.dtype} vs {tuple(expected.shape)}")
        keys = _key_rows(name, expected)
        difference = (value - expected).abs()
        worst = difference[~keys].max().item()
        assert worst <= WEIGHT_ATOL, f"{label}: {name} differs by up to {worst:.3g}"
        if keys.any():
            worst = difference[keys].max().item()
            assert worst <= KEY_BIAS_ATOL, f"{label}: key bias {name} differs by up to {worst:.3g}"


def _train(dataset, save_dir: Path, flags, *, num_procs: int = 1, launcher: str = "torchrun",
           iterations: int = ITERATIONS):
    output = run_pretrain(tiny_gpt_args(dataset, train_iters=iterations,
                                        extra=[*NO_DROPOUT, *flags, "--save", str(save_dir),
                                               "--save-interval", str(iterations)]),
                          num_procs=num_procs, launcher=launcher, timeout=600)
    losses = losses_by_iteration(output)
    assert sorted(losses) == list(range(1, iterations + 1)), output[-3000:]
    return output, merged_weights(save_dir)


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    return _train(dataset, tmp_path_factory.mktemp("reference"), ["--no-pipeline-parallel"])


LAYOUTS = {
    "tp2": (2, ["--tensor-model-parallel-size", "2", "--no-pipeline-parallel"], "deepspeed"),
    "tp2-sequence-parallel": (2, ["--tensor-model-parallel-size", "2", "--sequence-parallel",
                                  "--no-pipeline-parallel"], "torchrun"),
    "pp2": (2, ["--pipeline-model-parallel-size", "2"], "deepspeed"),
    "dp2-zero1": (2, ["--no-pipeline-parallel"], "torchrun"),
    "tp2-pp2": (4, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"],
                "torchrun"),
    "tp2-pp2-sequence-parallel": (4, ["--tensor-model-parallel-size", "2",
                                      "--pipeline-model-parallel-size", "2", "--sequence-parallel"],
                                  "torchrun"),
    "tp2-pp2-dp2": (8, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"],
                    "torchrun"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_single_process(layout, dataset, reference, tmp_path):
    num_procs, flags, launcher = LAYOUTS[layout]
    output, weights = _train(dataset, tmp_path / "save", flags, num_procs=num_procs,
                             launcher=launcher)
    ref_output, ref_weights = reference
    losses, ref_losses = losses_by_iteration(output), losses_by_iteration(ref_output)
    for iteration, expected in ref_losses.items():
        assert losses[iteration] == pytest.approx(expected, rel=LOSS_RTOL), (
            f"{layout}: iteration {iteration}: loss {losses[iteration]} vs 1-process {expected}")
    norms = field_by_iteration(output, "grad norm")
    ref_norms = field_by_iteration(ref_output, "grad norm")
    assert sorted(ref_norms) == list(range(1, ITERATIONS + 1)), ref_output[-3000:]
    for iteration, expected in ref_norms.items():
        assert norms.get(iteration) == pytest.approx(expected, abs=GRAD_NORM_ATOL), (
            f"{layout}: iteration {iteration}: grad norm {norms.get(iteration)} "
            f"vs 1-process {expected}")
    assert_same_weights(weights, ref_weights, layout)
    # The project's reader (used by generation and conversion) merges the same tensors.
    read = open_checkpoint(str(tmp_path / "save")).state_dict()
    assert sorted(read) == sorted(weights)
    for name, tensor in weights.items():
        assert torch.equal(read[name], tensor), f"{layout}: reader's {name} differs"


# One SGD step (no momentum, weight decay or clipping, constant lr): the update is exactly
# -lr * gradient, so data-parallel gradients summed instead of averaged would move every
# weight by lr * g more than the 1-process run (lr * grad norm = 0.6 in norm here), and the
# grad norm would double. (Under Adam the update hardly depends on the gradient's scale, so
# the weights of the layout runs above cannot show this; their grad norms do.)
SGD_LR = 0.5
SGD_STEP = ["--no-pipeline-parallel", "--optimizer", "sgd", "--sgd-momentum", "0",
            "--lr", str(SGD_LR), "--lr-warmup-iters", "0", "--lr-decay-style", "constant",
            "--weight-decay", "0", "--clip-grad", "0"]
SGD_WEIGHT_ATOL = 1e-7  # fp32 rounding of w - lr * g with |w| < 1 [measured max 3.7e-9]


def test_data_parallel_update_uses_the_averaged_gradient(dataset, tmp_path):
    ref_output, ref_weights = _train(dataset, tmp_path / "one", SGD_STEP, iterations=1)
    output, weights = _train(dataset, tmp_path / "dp2", SGD_STEP, num_procs=2, iterations=1)
    grad_norm = field_by_iteration(ref_output, "grad norm")[1]
    assert field_by_iteration(output, "grad norm")[1] == pytest.approx(grad_norm,
                                                                       abs=GRAD_NORM_ATOL)
    # A summed gradient's extra step lr * g has an entry of at least lr * |g| / sqrt(#entries):
    # far above the tolerance, so the comparison below would see it.
    num_entries = sum(tensor.numel() for tensor in ref_weights.values())
    assert SGD_LR * grad_norm / num_entries ** 0.5 > 1000 * SGD_WEIGHT_ATOL
    for name, expected in ref_weights.items():
        worst = (weights[name] - expected).abs().max().item()
        assert worst <= SGD_WEIGHT_ATOL, f"dp2 SGD step: {name} differs by up to {worst:.3g}"
