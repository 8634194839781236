"""tools/build_demo_corpus.py: a deterministic corpus and a SentencePiece model, no download."""
import json

from megatron.tokenizer import build_tokenizer
from tests.unit.data.test_preprocess_data import load_tool


def test_corpus_is_deterministic_and_trains_a_tokenizer(tmp_path):
    tool = load_tool("build_demo_corpus")
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert tool.main(["--output", str(first), "--max-mb", "0.4"]) == 0
    assert tool.main(["--output", str(second), "--max-mb", "0.4",
                      "--sentencepiece-prefix", str(tmp_path / "sp"), "--vocab-size", "600"]) == 0
    assert first.read_bytes() == second.read_bytes()
    records = [json.loads(line) for line in first.read_text(encoding="utf-8").splitlines()]
    assert len(records) > 50 and all(r["text"].strip() for r in records)
    assert 0.4e6 <= first.stat().st_size < 0.4e6 + 20000
    tokenizer = build_tokenizer("GPTSentencePieceTokenizer",
                                tokenizer_model=str(tmp_path / "sp.model"))
    assert tokenizer.vocab_size == 600
    text = records[3]["text"]
    assert tokenizer.detokenize(tokenizer.tokenize(text)) == text
