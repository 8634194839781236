"""What GPTModel and GPTModelPipe check and decide at construction: the config must match
the initialized parallel groups, and every initialized weight is keyed by its name."""
import pytest
import torch

from megatron.core.tensor_parallel import layout_independent_init
from megatron.model.gpt_model import GPTModel
from tests.dist.model.model_utils import full_tensor, make_config, setup_parallel
from tests.harness import run_on_ranks


def _construction_errors(tp, pp, config_tp, config_pp):
    import deepspeed

    from megatron.model.gpt_model_pipe import GPTModelPipe

    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    setup_parallel(tp, pp)
    config = make_config(tp=config_tp, pp=config_pp)
    errors = []
    for build in (GPTModel, GPTModelPipe):
        try:
            build(config)
            errors.append(None)
        except ValueError as error:
            errors.append(str(error))
    return errors


def test_tensor_parallel_size_must_match_the_groups():
    gpt, pipe = run_on_ranks(_construction_errors, 2, 1, 1, 1, world_size=2)[0]
    for message in (gpt, pipe):
        assert "--tensor-model-parallel-size 1 but the initialized groups have 2" in message


def test_pipeline_parallel_size_must_match_the_groups():
    gpt, pipe = run_on_ranks(_construction_errors, 1, 2, 1, 1, world_size=2)[0]
    for message in (gpt, pipe):
        assert "--pipeline-model-parallel-size 1 but the initialized groups have 2" in message


def test_gpt_model_refuses_pipeline_stages():
    gpt, pipe = run_on_ranks(_construction_errors, 1, 2, 1, 2, world_size=2)[0]
    assert pipe is None  # the pipeline model is the one with stages
    assert "GPTModel holds the whole model" in gpt
    assert "--pipeline-model-parallel-size 1, got 2" in gpt


def _init_key(name: str) -> str:
    """The global name a weight is keyed by: its GPTModel name without the wrappers."""
    return name.removeprefix("language_model.").removeprefix("encoder.")


def _weights_and_expected(variant, tp):
    setup_parallel(tp)
    config = make_config(variant, tp=tp)
    model = GPTModel(config)
    checked = {}
    for name, param in model.named_parameters():
        if not name.endswith("weight") or "layernorm" in name:
            continue  # norms start at one, biases at zero
        output_layer = name.endswith(("dense.weight", "dense_4h_to_h.weight"))
        method = config.output_layer_init_method if output_layer else config.init_method
        full = full_tensor(param)
        expected = layout_independent_init(full.shape, method, seed=config.init_seed,
                                           key=_init_key(name))
        checked[name] = torch.equal(full, expected)
    return checked


@pytest.mark.parametrize("variant", ["default", "llama"])
@pytest.mark.parametrize("tp", [1, 2])
def test_weights_are_keyed_by_their_names(variant, tp):
    checked = run_on_ranks(_weights_and_expected, variant, tp, world_size=tp)[0]
    assert any("query_key_value" in name for name in checked)
    assert any("word_embeddings" in name for name in checked)
    assert checked and all(checked.values()), [name for name, ok in checked.items() if not ok]


def _unrecomputed_layers(checkpoint_num_layers):
    import deepspeed

    from megatron.model.gpt_model_pipe import GPTModelPipe

    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    setup_parallel(1, 1)
    config = make_config(num_layers=4, checkpoint_activations=True,
                         checkpoint_num_layers=checkpoint_num_layers)
    return GPTModelPipe(config).unrecomputed_layers


# The stage runs [cast, embed, 1, 2, 3, 4, final norm, tied head, ...]; DeepSpeed recomputes a
# chunk of N only when every entry is a transformer layer.
@pytest.mark.parametrize("checkpoint_num_layers,expected", [
    (1, []),            # [1] [2] [3] [4]: every layer alone
    (2, []),            # [cast, embed] [1, 2] [3, 4] [norm, head]
    (3, [1]),           # [cast, embed, 1] [2, 3, 4] [norm, head, ...]
    (4, [1, 2, 3, 4]),  # [cast, embed, 1, 2] [3, 4, norm, head]
])
def test_pipe_reports_layers_its_chunks_do_not_recompute(checkpoint_num_layers, expected):
    assert run_on_ranks(_unrecomputed_layers, checkpoint_num_layers,
                        world_size=1)[0] == expected
