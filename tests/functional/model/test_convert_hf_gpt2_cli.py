"""tools/convert_hf_gpt2.py as a program: a saved tiny GPT2LMHeadModel -> GPTModel state dict."""
import sys
from pathlib import Path

import pytest
import torch
import transformers

from tests import processes

REPO = Path(__file__).resolve().parents[3]


def _run(*args):
    return processes.run([sys.executable, str(REPO / "tools" / "convert_hf_gpt2.py"), *args],
                         cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_converts_a_saved_model(tmp_path):
    config = transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=64, n_layer=2,
                                     n_head=4, activation_function="gelu_new", bos_token_id=0,
                                     eos_token_id=0)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config)
    hf.save_pretrained(tmp_path / "hf")
    out = tmp_path / "gpt.pt"
    proc = _run("--hf-model-dir", str(tmp_path / "hf"), "--output", str(out),
                "--make-vocab-size-divisible-by", "128")
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = torch.load(out)
    state = saved["model"]
    assert saved["config"] == {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
                               "max_position_embeddings": 32, "layernorm_epsilon": 1e-5,
                               "openai_gelu": True}
    words = state["language_model.embedding.word_embeddings.weight"]
    assert words.shape == (128, 64)
    assert torch.equal(words[:100], hf.transformer.wte.weight.detach())
    assert not words[100:].any()
    # HF Conv1D [in, out] -> torch [out, in]
    assert torch.equal(state["language_model.encoder.layers.1.mlp.dense_4h_to_h.weight"],
                       hf.transformer.h[1].mlp.c_proj.weight.detach().t())
    # head 2's key rows come from HF's k block (columns h + 2*16 ... h + 3*16 of c_attn)
    qkv = state["language_model.encoder.layers.0.self_attention.query_key_value.weight"]
    hf_k_head2 = hf.transformer.h[0].attn.c_attn.weight.detach().t()[64 + 32:64 + 48]
    assert torch.equal(qkv.view(4, 3, 16, 64)[2, 1], hf_k_head2)
    assert len(state) == 2 + 2 * 12 + 2


@pytest.mark.slow
def test_cli_missing_directory_is_a_clear_error(tmp_path):
    proc = _run("--hf-model-dir", str(tmp_path / "nope"), "--output", str(tmp_path / "x.pt"))
    assert proc.returncode != 0
    assert "FileNotFoundError" in proc.stderr and "--hf-model-dir" in proc.stderr
