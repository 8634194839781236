"""`--pipeline-partition-method flops`: one cost per GPTModelPipe spec, and stage bounds that
put the LM head's cost where it belongs (no process group needed)."""
import pytest
import torch

from megatron.model.gpt_model_pipe import build_specs
from megatron.model.pipeline_partition import balanced_bounds, spec_costs
from megatron.model.transformer_config import TransformerConfig


def config(layers, hidden, heads, seq, **overrides):
    return TransformerConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                             seq_length=seq, max_position_embeddings=seq, padded_vocab_size=50304,
                             use_cpu_initialization=True, **overrides)


@pytest.mark.parametrize("overrides", [{}, dict(params_dtype=torch.bfloat16),
                                       dict(untie_embeddings_and_output_weights=True)])
def test_one_cost_per_spec(overrides):
    cfg = config(4, 256, 8, 256, **overrides)
    assert len(spec_costs(cfg)) == len(build_specs(cfg))


def test_tiny_model_gives_the_head_a_stage_of_its_own():
    # 4 layers h256 with a 50k vocabulary: the head is ~78% of the work, so every
    # transformer layer goes to stage 0 (DeepSpeed's `parameters` splits them 2/2); the
    # final norm stays with the head (every stage needs parameters of both weight-decay groups).
    cfg = config(4, 256, 8, 256)
    costs = spec_costs(cfg)
    assert balanced_bounds(cfg, 2) == [0, 6, 8]
    assert 0.75 < costs[-1] / sum(costs) < 0.8


@pytest.mark.parametrize("stages", [2, 3, 4])
def test_embedding_and_head_keep_a_neighbour(stages):
    cfg = config(8, 256, 8, 256, params_dtype=torch.bfloat16)
    bounds = balanced_bounds(cfg, stages)
    assert bounds[0] == 0 and bounds[-1] == len(spec_costs(cfg)) and len(bounds) == stages + 1
    assert bounds[1] >= 3  # cast, embedding and the first layer together
    assert bounds[-2] <= 2 + cfg.num_layers  # the final norm with the head


def test_more_stages_than_layers_refused():
    with pytest.raises(ValueError, match="--num-layers 2, --pipeline-model-parallel-size 3"):
        balanced_bounds(config(2, 256, 8, 256), 3)


def test_125m_stages_within_ten_percent():
    cfg = config(12, 768, 12, 512)
    costs = spec_costs(cfg)
    bounds = balanced_bounds(cfg, 2)
    shares = [sum(costs[a:b]) for a, b in zip(bounds, bounds[1:])]
    assert bounds[1] == 10  # 8 layers on stage 0, 4 layers + head on stage 1
    assert max(shares) / min(shares) < 1.15


def test_full_recompute_weighs_layers_more():
    plain = spec_costs(config(4, 256, 8, 256))
    recomputed = spec_costs(config(4, 256, 8, 256, recompute_granularity="full",
                                   recompute_method="uniform", recompute_num_layers=1))
    assert recomputed[2] == pytest.approx(plain[2] * 4 / 3)
    assert recomputed[-1] == plain[-1]


def test_needs_the_vocabulary():
    with pytest.raises(ValueError, match="padded_vocab_size"):
        spec_costs(TransformerConfig(num_layers=2, hidden_size=64, num_attention_heads=4,
                                     seq_length=16, max_position_embeddings=16))
