"""Upstream's pipeline layer files map onto GPTModelPipe's specs by index, explicitly: for the
PP2 fixture (tests/fixtures/upstream/checkpoint_pp2), `layer_NN` holds exactly the tensors, with
the same names and shapes, that spec NN of this project's GPTModelPipe builds, and the tied
head (the last spec) has no file of its own (docs/formats.md, section 3B)."""
from pathlib import Path

import torch

from tests.harness import run_on_ranks

STEP = Path(__file__).resolve().parents[2] / "fixtures" / "upstream" / "checkpoint_pp2" / "global_step5"


def _spec_tensors():
    """{spec index: {name: shape}} for upstream's model (2 layers, h32, 4 heads, vocab 1024)."""
    from deepspeed.pipe import LayerSpec

    from megatron.model.gpt_model_pipe import build_specs
    from megatron.model.transformer_config import TransformerConfig
    from tests.dist.model.model_utils import setup_parallel

    setup_parallel(1)
    config = TransformerConfig(num_layers=2, hidden_size=32, num_attention_heads=4,
                               seq_length=64, max_position_embeddings=64, padded_vocab_size=1024,
                               use_cpu_initialization=True)
    built = {}
    for index, spec in enumerate(build_specs(config)):
        if isinstance(spec, LayerSpec):
            built[index] = {name: tuple(tensor.shape)
                            for name, tensor in spec.build().state_dict().items()}
    return built


def test_layer_files_match_the_specs_by_index():
    from megatron.checkpointing import load_file

    files = {int(path.name[len("layer_"):len("layer_") + 2]): path
             for path in STEP.glob("layer_*-model_00-model_states.pt")}
    assert sorted(files) == [1, 2, 3, 4]  # embedding, two transformer layers, final norm
    built = run_on_ranks(_spec_tensors, world_size=1)[0]
    assert sorted(built) == [1, 2, 3, 4, 5]  # spec 5: the tied head, stored with spec 1
    for index, path in files.items():
        saved = {name: tuple(tensor.shape) for name, tensor in load_file(str(path)).items()}
        assert saved == built[index], index
    assert set(built[5]) == {"word_embeddings.weight", "position_embeddings.weight"}
    assert torch.Size(built[1]["word_embeddings.weight"]) == torch.Size([1024, 32])
