"""GPTModel loaded with a Hugging Face GPT2LMHeadModel's weights gives the same logits.

HF transformers is the independent implementation (a small random GPT2Config built here,
nothing downloaded). Tolerance: fp32, max |difference| <= 1e-5 x max |logit|, on TP=1 and
on TP=2 (the converted full state dict sliced onto two ranks).
"""
import pytest
import torch
import transformers

from megatron.conversion.hf_mapping import import_tensors, shape_from_hf_config
from megatron.model.gpt_model import GPTModel
from tests.dist.model.model_utils import load_full_state_dict, setup_parallel
from tests.harness import run_on_ranks

N_LAYER, N_EMBD, N_HEAD, N_POS, VOCAB, PADDED_VOCAB = 2, 64, 4, 32, 100, 128


def _hf_model(activation: str):
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=N_POS, n_embd=N_EMBD, n_layer=N_LAYER, n_head=N_HEAD,
        activation_function=activation, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5, attn_implementation="eager", bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # larger-than-default random weights: O(1) logits, every param used
        for name, param in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or "ln_f.weight" in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 0.15)
    return model


def convert_hf_gpt2_state_dict(hf_state, config, *, padded_vocab_size):
    """HF GPT-2 tensors -> GPTModel's full state dict (megatron.conversion.hf_mapping)."""
    shape = shape_from_hf_config(config.to_dict())
    return dict(import_tensors(shape, hf_state.__getitem__, padded_vocab_size=padded_vocab_size))


def gpt_logits(full_state, tokens, tp, openai_gelu):
    from tests.dist.model.model_utils import make_config

    setup_parallel(tp)
    config = make_config(tp=tp, num_layers=N_LAYER, hidden_size=N_EMBD,
                         num_attention_heads=N_HEAD, max_position_embeddings=N_POS,
                         seq_length=N_POS, padded_vocab_size=PADDED_VOCAB,
                         openai_gelu=openai_gelu, layernorm_epsilon=1e-5)
    model = GPTModel(config, parallel_output=False).eval()
    load_full_state_dict(model, full_state)
    position_ids = torch.arange(tokens.shape[1]).expand_as(tokens)
    with torch.no_grad():
        logits = model(tokens, position_ids, None)
    return logits if torch.distributed.get_rank() == 0 else None


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("activation,openai_gelu", [("gelu", False), ("gelu_new", True)])
def test_logits_match_hf_gpt2(activation, openai_gelu, tp):
    hf = _hf_model(activation)
    tokens = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(tokens).logits
    state = convert_hf_gpt2_state_dict(hf.state_dict(), hf.config,
                                       padded_vocab_size=PADDED_VOCAB)
    logits = run_on_ranks(gpt_logits, state, tokens, tp, openai_gelu, world_size=tp)[0]
    assert logits.shape == (2, 24, PADDED_VOCAB)
    assert torch.all(logits[..., VOCAB:] == 0)  # zero padding rows give zero logits
    scale = expected.abs().max()
    assert scale > 1.0
    err = (logits[..., :VOCAB] - expected).abs().max()
    assert err <= 1e-5 * scale, f"max |diff| {err:.3g} vs logit scale {scale:.3g}"


def test_wrong_activation_is_detected():
    """The exact/tanh GeLU difference is visible at this tolerance (the test can fail)."""
    hf = _hf_model("gelu_new")
    tokens = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(tokens).logits
    state = convert_hf_gpt2_state_dict(hf.state_dict(), hf.config,
                                       padded_vocab_size=PADDED_VOCAB)
    logits = run_on_ranks(gpt_logits, state, tokens, 1, False, world_size=1)[0]
    assert (logits[..., :VOCAB] - expected).abs().max() > 1e-5 * expected.abs().max()


def test_converter_rejects_small_padding():
    hf = _hf_model("gelu")
    with pytest.raises(ValueError, match="larger than the padded vocabulary"):
        convert_hf_gpt2_state_dict(hf.state_dict(), hf.config, padded_vocab_size=VOCAB - 1)
