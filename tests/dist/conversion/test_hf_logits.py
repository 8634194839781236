"""GPTModel with weights imported from transformers (megatron.conversion.hf_mapping) computes
the transformers model's logits, on real text, for every supported shape, at TP 1 and 2.

transformers is the independent implementation; the GPTModel configuration is written from
the transformers config field by field (tests/dist/conversion/hf_models.py), not by the code
under test. Tolerance: fp32, max |difference| <= 1e-5 x max |logit| (the issue's bound; the
measured figure is printed with -s). Padded vocabulary rows are zero, so their logits are 0.
"""
import pytest
import torch

from megatron.conversion.hf_mapping import import_tensors, shape_from_hf_config
from tests.dist.conversion.hf_models import (gpt2_model, gpt_config_kwargs, llama_model,
                                             logits_from_full_state, relative_difference,
                                             text_batch)
from tests.harness import run_on_ranks

RTOL = 1e-5
VOCAB = 50257
PADDED = {1: 50304, 2: 50432}  # GPT-2's vocabulary padded to 128 x TP, as training pads it

MODELS = {
    "gpt2-gelu_new-tied": lambda: gpt2_model(activation="gelu_new"),
    "gpt2-gelu-untied": lambda: gpt2_model(activation="gelu", tied=False),
    "llama-gqa-untied": lambda: llama_model(kv_heads=2),
    "llama-mha-tied-bias": lambda: llama_model(kv_heads=4, tied=True, bias=True),
    "llama-mqa": lambda: llama_model(kv_heads=1),
}


def _imported(hf, padded):
    state = hf.state_dict()
    shape = shape_from_hf_config(hf.config.to_dict())
    return dict(import_tensors(shape, state.__getitem__, padded_vocab_size=padded))


# One key/value head (multi-query attention) cannot be split over two tensor-parallel ranks.
@pytest.mark.parametrize("variant,tp", [(variant, tp) for variant in MODELS for tp in (1, 2)
                                        if not (tp == 2 and variant == "llama-mqa")])
def test_imported_model_computes_the_transformers_logits(variant, tp):
    hf = MODELS[variant]()
    tokens = text_batch()
    with torch.no_grad():
        expected = hf(tokens).logits
    kwargs = gpt_config_kwargs(hf.config, padded_vocab_size=PADDED[tp], tp=tp)
    logits = run_on_ranks(logits_from_full_state, kwargs, _imported(hf, PADDED[tp]), tokens,
                          world_size=tp)[0]
    assert logits.shape == (2, tokens.shape[1], PADDED[tp])
    assert torch.all(logits[..., VOCAB:] == 0)
    difference = relative_difference(logits[..., :VOCAB], expected)
    print(f"{variant} TP{tp}: max relative logit difference {difference:.2e}")
    assert difference <= RTOL


def test_a_wrong_head_layout_is_detected():
    """Without the per-group reorder (q, k, v blocks concatenated as they are) the logits
    differ far beyond the tolerance: the comparison above can fail."""
    hf = llama_model(kv_heads=2)
    state = _imported(hf, PADDED[1])
    hf_state = hf.state_dict()
    for layer in range(2):
        prefix = f"model.layers.{layer}.self_attn."
        state[f"language_model.encoder.layers.{layer}.self_attention.query_key_value.weight"] = (
            torch.cat([hf_state[prefix + p + ".weight"] for p in ("q_proj", "k_proj", "v_proj")]))
    tokens = text_batch()
    with torch.no_grad():
        expected = hf(tokens).logits
    kwargs = gpt_config_kwargs(hf.config, padded_vocab_size=PADDED[1])
    logits = run_on_ranks(logits_from_full_state, kwargs, state, tokens, world_size=1)[0]
    assert relative_difference(logits[..., :VOCAB], expected) > 1e-2
