"""GPTModelPipe vs GPTModel on the same weights, in one process (TP=1 and TP=2, PP=1).

Both models are built independently from the same seed; with layout-independent init
they must hold bit-identical weights once the pipeline's spec indices are mapped to
GPTModel names (which checks upstream's `layer_NN` numbering). Then the pipeline's
loss_fn(forward) must equal GPTModel's masked mean loss and every gradient must match:
rtol 1e-5 atol 1e-6 (fp32, same operations in the same order up to reassociation).
"""
import re

import pytest
import torch

from megatron.core import tensor_parallel
from megatron.model.gpt_model import GPTModel
from tests.dist.model.model_utils import (full_params_and_grads, make_batch, make_config,
                                          setup_parallel)
from tests.harness import run_on_ranks

TOL = dict(rtol=1e-5, atol=1e-6)


def pipe_to_gpt_name(name: str, num_layers: int) -> str:
    """GPTModelPipe parameter name -> GPTModel parameter name (docs/formats.md, sections 3B and 4)."""
    tied = re.fullmatch(r"tied_modules\.embed\.(.+)", name)
    if tied:
        return "language_model.embedding." + tied.group(1)
    index, rest = name.split(".", 1)
    index = int(index)
    if index == 1:
        return "language_model.embedding." + rest
    if 2 <= index <= num_layers + 1:
        return f"language_model.encoder.layers.{index - 2}.{rest}"
    if index == num_layers + 2:
        return "language_model.encoder.final_layernorm." + rest
    if index == num_layers + 3 and rest == "lm_head.weight":
        return "language_model.output_layer.weight"
    raise AssertionError(f"unexpected pipeline parameter {name}")


def run_both(variant: str, tp: int, sequence_parallel: bool, document_mask: bool):
    import deepspeed
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    from megatron.model.gpt_model_pipe import GPTModelPipe

    deepspeed.init_distributed(dist_backend="gloo")
    setup_parallel(tp)
    config = make_config(variant, tp=tp, sequence_parallel=sequence_parallel)
    tokens, position_ids, mask, labels, loss_mask = make_batch(document_mask=document_mask)
    if mask is None:  # the pipeline always receives a mask tensor: use the causal one
        mask = torch.ones(16, 16, dtype=torch.bool).triu(1).expand(tokens.shape[0], 1, 16, 16)

    gpt = GPTModel(config)
    losses = gpt(tokens, position_ids, mask, labels=labels)
    gpt_loss = (losses * loss_mask).sum() / loss_mask.sum()
    gpt_loss.backward()
    tensor_parallel.allreduce_sequence_parallel_gradients(gpt.parameters())

    pipe = GPTModelPipe(config)
    layer_names = [type(f).__name__ if isinstance(f, torch.nn.Module) else "fn"
                   for f in pipe.forward_funcs]
    pipe_loss = pipe.loss_fn(pipe((tokens, position_ids, mask)), (labels, loss_mask))
    pipe_loss.backward()
    tensor_parallel.allreduce_sequence_parallel_gradients(pipe.parameters())

    built_counts = []
    for index, spec in enumerate(pipe._layer_specs):
        if isinstance(spec, TiedLayerSpec):
            module = pipe.tied_modules[spec.key]
        elif isinstance(spec, LayerSpec):
            module = getattr(pipe, str(index))
        else:
            module = torch.nn.Module()
        built_counts.append(sum(p.numel() for p in module.parameters()))

    result = {"gpt": full_params_and_grads(gpt), "pipe": full_params_and_grads(pipe),
              "gpt_loss": gpt_loss.detach(), "pipe_loss": pipe_loss.detach(),
              "layers": layer_names, "counted": pipe._count_layer_params(),
              "built_counts": built_counts}
    return result if torch.distributed.get_rank() == 0 else None


@pytest.mark.parametrize("variant,tp,sequence_parallel,document_mask", [
    ("default", 1, False, True),
    ("llama", 1, False, False),
    ("default", 2, True, False),
    ("llama", 2, False, True),
])
def test_pipe_matches_gpt_model(variant, tp, sequence_parallel, document_mask):
    out = run_on_ranks(run_both, variant, tp, sequence_parallel, document_mask, world_size=tp)[0]
    num_layers = 2
    assert out["layers"][0] == "fn" and out["layers"][1] == "EmbeddingPipe"
    assert out["layers"][2:2 + num_layers] == ["ParallelTransformerLayerPipe"] * num_layers
    # the cheap parameter count used for partition_method="parameters" matches the layers
    assert out["counted"] == out["built_counts"]
    gpt, pipe = out["gpt"], out["pipe"]
    mapped = {pipe_to_gpt_name(name, num_layers): name for name in pipe["params"]}
    assert sorted(mapped) == sorted(gpt["params"])
    for gpt_name, pipe_name in mapped.items():
        assert torch.equal(gpt["params"][gpt_name], pipe["params"][pipe_name]), gpt_name
    torch.testing.assert_close(out["pipe_loss"], out["gpt_loss"], **TOL)
    for gpt_name, pipe_name in mapped.items():
        torch.testing.assert_close(pipe["grads"][pipe_name], gpt["grads"][gpt_name], **TOL,
                                   msg=lambda m: f"{gpt_name}: {m}")


def test_name_mapping_is_upstream_numbering():
    # 40 layers: embedding layer_01, transformer layers layer_02..layer_41,
    # final norm layer_42, head layer_43 (docs/formats.md, section 3B, the 40-layer example).
    assert pipe_to_gpt_name("1.word_embeddings.weight", 40) == \
        "language_model.embedding.word_embeddings.weight"
    assert pipe_to_gpt_name("41.mlp.dense_4h_to_h.bias", 40) == \
        "language_model.encoder.layers.39.mlp.dense_4h_to_h.bias"
    assert pipe_to_gpt_name("42.weight", 40) == "language_model.encoder.final_layernorm.weight"
    assert pipe_to_gpt_name("43.lm_head.weight", 40) == "language_model.output_layer.weight"
