"""build_tokenizer, the vocabulary padding rule and the non-BPE tokenizers."""
import json

import pytest

from megatron.tokenizer import build_tokenizer, pad_vocab_size


@pytest.mark.parametrize("orig,divisor,tp,expected", [
    (50257, 128, 1, 50304), (50257, 128, 2, 50432), (50304, 128, 1, 50304),
    (8192, 128, 8, 8192), (1, 1, 1, 1), (100, 64, 3, 192)])
def test_pad_vocab_size(orig, divisor, tp, expected):
    assert pad_vocab_size(orig, make_vocab_size_divisible_by=divisor,
                          tensor_model_parallel_size=tp) == expected


def test_pad_vocab_size_rejects_bad_values():
    with pytest.raises(ValueError, match="make-vocab-size-divisible-by"):
        pad_vocab_size(10, make_vocab_size_divisible_by=0, tensor_model_parallel_size=1)
    with pytest.raises(ValueError, match="tensor-model-parallel-size"):
        pad_vocab_size(10, make_vocab_size_divisible_by=8, tensor_model_parallel_size=0)


def test_unknown_type_and_missing_flags():
    with pytest.raises(ValueError, match="unknown --tokenizer-type"):
        build_tokenizer("BertWordPieceCase")
    with pytest.raises(ValueError, match="--tokenizer-model"):
        build_tokenizer("GPTSentencePieceTokenizer")
    with pytest.raises(ValueError, match="--vocab-size"):
        build_tokenizer("NullTokenizer")
    with pytest.raises(FileNotFoundError, match="--tokenizer-model"):
        build_tokenizer("SentencePieceTokenizer", tokenizer_model="/nonexistent/x.model")


def test_null_tokenizer():
    tokenizer = build_tokenizer("NullTokenizer", vocab_size=1000, tensor_model_parallel_size=2,
                                make_vocab_size_divisible_by=128)
    assert tokenizer.tokenize("5 17 999") == [5, 17, 999]
    assert tokenizer.detokenize([5, 17]) == "5 17"
    assert tokenizer.eod == 1000 and tokenizer.vocab_size == 1001
    assert tokenizer.padded_vocab_size == 1024


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    import sentencepiece

    root = tmp_path_factory.mktemp("sp")
    text = root / "train.txt"
    lines = [f"sentence number {i} talks about {w} and more {w}s" for i, w in
             enumerate(["cats", "dogs", "trees", "rivers", "stones", "clouds"] * 40)]
    text.write_text("\n".join(lines), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(input=str(text), model_prefix=str(root / "m"),
                                             vocab_size=120, model_type="bpe", minloglevel=2)
    return str(root / "m.model")


def test_gpt_sentencepiece(sp_model):
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=sp_model)
    tokenizer = build_tokenizer("GPTSentencePieceTokenizer", tokenizer_model=sp_model)
    text = "sentence about dogs and clouds"
    assert tokenizer.tokenize(text) == processor.encode_as_ids(text)
    assert tokenizer.detokenize(tokenizer.tokenize(text)) == text
    assert tokenizer.eod == processor.eos_id() == 2
    assert tokenizer.vocab_size == 120 and tokenizer.padded_vocab_size == 128


def test_sentencepiece_adds_upstream_specials(sp_model):
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=sp_model)
    tokenizer = build_tokenizer("SentencePieceTokenizer", tokenizer_model=sp_model,
                                vocab_extra_ids=2)
    # <CLS> <SEP> <EOD> <MASK> are new (ids 120..123); pad is absent (-1) so <PAD> is new
    # (124); bos/eos exist as <s>/</s>; two extra ids follow (125, 126).
    assert tokenizer.vocab_size == 127
    assert tokenizer.eod == 122
    ids = tokenizer.tokenize("dogs<EOD>cats<extra_id_1>")
    assert ids == (processor.encode_as_ids("dogs") + [122] + processor.encode_as_ids("cats")
                   + [126])
    assert tokenizer.detokenize(ids) == "dogs <EOD> cats <extra_id_1> "


def test_hf_tokenizer_from_local_file(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "hello": 1, "world": 2, "</s>": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    tokenizer = build_tokenizer("HFTokenizer", tokenizer_model=str(tmp_path))
    assert tokenizer.tokenize("hello world zzz") == [1, 2, 0]
    assert tokenizer.eod == 3 and tokenizer.vocab_size == 4
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        build_tokenizer("HFTokenizer", tokenizer_model=str(tmp_path / "missing"))


def test_hf_tokenizer_from_vocab_and_merges_directory(tmp_path, shared_data):
    """A directory with only vocab.json + merges.txt is converted offline by transformers."""
    import shutil

    shutil.copy(shared_data / "gpt2-vocab.json", tmp_path / "vocab.json")
    shutil.copy(shared_data / "gpt2-merges.txt", tmp_path / "merges.txt")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    tokenizer = build_tokenizer("HFTokenizer", tokenizer_model=str(tmp_path))
    assert tokenizer.eod == 50256 and tokenizer.vocab_size == 50257
    # Known GPT-2 ids, independent of this package's BPE.
    assert tokenizer.tokenize("Hello world") == [15496, 995]
