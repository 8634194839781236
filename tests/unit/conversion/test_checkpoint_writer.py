"""megatron.conversion.checkpoint_writer: the files of docs/formats.md 3B-3C at a chosen
layout, read back by the checkpoint reader and by hand (shards indexed by hand, not through
the split code), and a failed or refused write leaving nothing behind. Exact equality."""
import os

import pytest
import torch

from megatron.arguments import parse_args
from megatron.checkpointing import CheckpointError, ModelFingerprint
from megatron.checkpointing.integrity import damaged_files
from megatron.checkpointing.layout import read_manifest
from megatron.conversion.checkpoint_reader import open_checkpoint
from megatron.conversion.checkpoint_writer import write_checkpoint

LAYERS, HIDDEN, HEADS, GROUPS, HEAD_DIM, FFN, PADDED = 2, 64, 4, 2, 16, 96, 256
FLAGS = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
         "--num-key-value-heads", "2", "--ffn-hidden-size", "96", "--seq-length", "32",
         "--max-position-embeddings", "32", "--use-rotary-position-embeddings",
         "--normalization", "rmsnorm", "--swiglu", "--untie-embeddings-and-output-weights",
         "--disable-bias-linear", "--tokenizer-type", "NullTokenizer", "--vocab-size", "200"]


def _llama_state():
    """A Llama-shaped GPTModel state dict (GQA, SwiGLU, untied, no biases), random values."""
    generator = torch.Generator().manual_seed(0)
    qkv_rows = (HEADS + 2 * GROUPS) * HEAD_DIM
    shapes = {"language_model.embedding.word_embeddings.weight": (PADDED, HIDDEN)}
    for layer in range(LAYERS):
        p = f"language_model.encoder.layers.{layer}."
        shapes.update({p + "input_layernorm.weight": (HIDDEN,),
                       p + "self_attention.query_key_value.weight": (qkv_rows, HIDDEN),
                       p + "self_attention.dense.weight": (HIDDEN, HEADS * HEAD_DIM),
                       p + "post_attention_layernorm.weight": (HIDDEN,),
                       p + "mlp.dense_h_to_4h.weight": (2 * FFN, HIDDEN),
                       p + "mlp.dense_4h_to_h.weight": (HIDDEN, FFN)})
    shapes["language_model.encoder.final_layernorm.weight"] = (HIDDEN,)
    shapes["language_model.output_layer.weight"] = (PADDED, HIDDEN)
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def _write(save_dir, state, *, tp, pp, pipeline=True, **kwargs):
    flags = FLAGS + ["--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size",
                     str(pp)] + ([] if pipeline else ["--no-pipeline-parallel"])
    fingerprint = ModelFingerprint(num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS,
                                   num_key_value_heads=GROUPS, ffn_hidden_size=FFN,
                                   padded_vocab_size=PADDED, tensor_model_parallel_size=tp,
                                   pipeline_model_parallel_size=pp)
    source = kwargs.pop("source", lambda: iter(state.items()))
    return write_checkpoint(str(save_dir), source, args=parse_args(flags),
                            fingerprint=fingerprint, pipeline_engine=pipeline, swiglu=True,
                            **kwargs)


def test_pipeline_layout_tp2_pp2(tmp_path):
    state = _llama_state()
    tag_dir = _write(tmp_path / "ckpt", state, tp=2, pp=2)
    assert (tmp_path / "ckpt" / "latest").read_text() == "global_step0"
    assert (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text() == "0"
    expected = sorted([f"layer_{i:02d}-model_{t:02d}-model_states.pt"
                       for i in range(1, LAYERS + 4) for t in range(2)]
                      + [f"mp_rank_{r:02d}_model_states.pt" for r in range(4)]
                      + ["megatron_manifest.json"])
    assert sorted(os.listdir(tag_dir)) == expected
    manifest = read_manifest(tag_dir)
    assert manifest["model"]["tensor_model_parallel_size"] == 2
    assert manifest["has_optimizer_states"] is False
    assert sorted(manifest["checksums"]) == sorted(set(expected) - {"megatron_manifest.json"})
    assert damaged_files(tag_dir, manifest["checksums"]) == []
    # TP rank 1's shards, by hand: its key/value group, its halves of gate and up.
    layer = torch.load(os.path.join(tag_dir, "layer_03-model_01-model_states.pt"),
                       weights_only=True)
    p = "language_model.encoder.layers.1."
    qkv = state[p + "self_attention.query_key_value.weight"]
    assert torch.equal(layer["self_attention.query_key_value.weight"], qkv[64:])  # group 1
    h_to_4h = state[p + "mlp.dense_h_to_4h.weight"]
    assert torch.equal(layer["mlp.dense_h_to_4h.weight"],
                       torch.cat([h_to_4h[48:96], h_to_4h[144:192]]))
    assert torch.equal(layer["mlp.dense_4h_to_h.weight"], state[p + "mlp.dense_4h_to_h.weight"][:, 48:])
    head = torch.load(os.path.join(tag_dir, "layer_05-model_00-model_states.pt"), weights_only=True)
    assert torch.equal(head["lm_head.weight"], state["language_model.output_layer.weight"][:128])
    # Shards own their storage (a view would drag the whole tensor into the file).
    assert os.path.getsize(os.path.join(tag_dir, "layer_01-model_00-model_states.pt")) < 128 * 64 * 4 * 1.1
    saved = open_checkpoint(str(tmp_path / "ckpt"))
    assert (saved.tensor_model_parallel_size, saved.pipeline_model_parallel_size) == (2, 2)
    merged = saved.state_dict()
    assert list(merged) == list(state)
    assert all(torch.equal(merged[name], state[name]) for name in state)


def test_zero_engine_layout_tp2(tmp_path):
    state = _llama_state()
    tag_dir = _write(tmp_path / "ckpt", state, tp=2, pp=1, pipeline=False, iteration=7)
    assert sorted(os.listdir(tag_dir)) == ["megatron_manifest.json", "mp_rank_00_model_states.pt",
                                           "mp_rank_01_model_states.pt"]
    content = torch.load(os.path.join(tag_dir, "mp_rank_01_model_states.pt"), weights_only=False)
    assert content["iteration"] == 7 and content["args"].padded_vocab_size == PADDED
    assert content["train_state"]["iteration"] == 7 and content["optimizer"] is None
    module = content["module"]
    assert list(module) == list(state)
    assert torch.equal(module["language_model.embedding.word_embeddings.weight"],
                       state["language_model.embedding.word_embeddings.weight"][128:])
    merged = open_checkpoint(str(tmp_path / "ckpt")).state_dict()
    assert all(torch.equal(merged[name], state[name]) for name in state)


def test_existing_folder_needs_force(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(CheckpointError, match="already exists; pass --force"):
        _write(target, _llama_state(), tp=1, pp=1)
    assert os.listdir(target) == ["keep.txt"]
    _write(target, _llama_state(), tp=1, pp=1, force=True)
    assert sorted(os.listdir(target)) == ["global_step0", "latest",
                                          "latest_checkpointed_iteration.txt"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_a_failure_midway_leaves_nothing(tmp_path):
    state = _llama_state()

    def failing():
        for index, item in enumerate(state.items()):
            if index == 5:
                raise ValueError("source broke")
            yield item

    with pytest.raises(ValueError, match="source broke"):
        _write(tmp_path / "ckpt", state, tp=2, pp=1, source=failing)
    assert os.listdir(tmp_path) == []


def test_sizes_that_do_not_split_are_refused(tmp_path):
    state = _llama_state()
    state["language_model.embedding.word_embeddings.weight"] = torch.zeros(255, HIDDEN)
    with pytest.raises(ValueError, match="tensor-model-parallel-size 2"):
        _write(tmp_path / "ckpt", state, tp=2, pp=1)
    assert os.listdir(tmp_path) == []
