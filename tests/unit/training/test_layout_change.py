"""The vocabulary rows when the tensor-parallel size changes the padded vocabulary (GPT-2's
50257 tokens pad to 50304 at TP1 and 50432 at TP2), and the refusal of another tokenizer."""
import pytest
import torch

from megatron.checkpointing import CheckpointError
from megatron.model.transformer_config import TransformerConfig
from megatron.training.layout_change import check_vocabulary, resize_vocabulary_rows


def test_rows_are_trimmed_or_zero_padded():
    full = torch.arange(12.).reshape(6, 2)
    assert torch.equal(resize_vocabulary_rows(full, "language_model.embedding.word_embeddings.weight", 4),
                       full[:4])
    grown = resize_vocabulary_rows(full, "language_model.output_layer.weight", 8)
    assert torch.equal(grown[:6], full) and torch.equal(grown[6:], torch.zeros(2, 2))
    other = resize_vocabulary_rows(full, "language_model.encoder.final_layernorm.weight", 8)
    assert other is full


def _config(padded):
    return TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=2, seq_length=4,
                             max_position_embeddings=4, padded_vocab_size=padded)


def test_vocabulary_check():
    check_vocabulary(50304, _config(50432), vocab_size=50257, make_vocab_size_divisible_by=128,
                     saved_tensor_model_parallel_size=1, source="x")
    check_vocabulary(50432, _config(50304), vocab_size=50257, make_vocab_size_divisible_by=128,
                     saved_tensor_model_parallel_size=2, source="x")
    with pytest.raises(CheckpointError, match="checkpoint 32000, flags 50304; a tokenizer of "
                                              "50257 tokens pads to 50304"):
        check_vocabulary(32000, _config(50304), vocab_size=50257,
                         make_vocab_size_divisible_by=128, saved_tensor_model_parallel_size=1,
                         source="x")
