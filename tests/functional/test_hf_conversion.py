"""transformers -> from_hf.py -> pretrain_gpt.py --finetune -> to_hf.py -> transformers, for
GPT2LMHeadModel and LlamaForCausalLM (grouped-query attention, untied head), at TP1 (GPT-2 on
the ZeRO engine, Llama on the pipeline engine) and at TP2 x PP2 (4 processes):

- the loss pretrain_gpt.py logs at iteration 1 after --finetune from the imported model
  equals the loss transformers computes on that same batch (read back through megatron/data
  exactly as training reads it): 1e-5 relative (the log prints 7 significant digits);
- the checkpoint training then saves (2 iterations later, weights moved) exports to a folder
  whose logits in transformers equal this project's on real text: GPTModel built at the
  checkpoint's TP size with each rank's own shards loaded straight from the files (no merge
  code involved). max |difference| <= 1e-5 x max |logit|, fp32.

The vocabulary (50304 rows, NullTokenizer, --make-vocab-size-divisible-by 64) needs no padding
at TP 1 or 2: the training loss takes its softmax over the padded vocabulary too (as upstream),
so zero padding rows would add exp(0) terms transformers does not have. Padding itself is
covered by tests/dist/conversion/test_hf_logits.py.
"""
import os

import pytest
import torch
import transformers

from megatron.data.gpt_dataset import build_train_valid_test_datasets
from megatron.data.indexed_dataset import MMapIndexedDatasetBuilder, index_file_path
from tests.dist.conversion.hf_models import (SEQ, gpt2_model, gpt_config_kwargs, llama_model,
                                             logits_from_checkpoint, relative_difference,
                                             text_batch, text_documents)
from tests.functional.launch import losses_by_iteration, run_pretrain
from tests.harness import run_on_ranks
from tools.convert_checkpoint import from_hf, to_hf

pytestmark = pytest.mark.slow
VOCAB = 50304
LOSS_RTOL = 1e-5
LOGITS_RTOL = 1e-5
MICRO, GLOBAL, ITERATIONS, SEED = 2, 4, 2, 1234
MODELS = {"gpt2": lambda: gpt2_model(vocab_size=VOCAB, activation="gelu_new"),
          "llama": lambda: llama_model(vocab_size=VOCAB, kv_heads=2)}
LAYOUTS = {  # (TP, PP, engine)
    ("gpt2", "tp1"): (1, 1, "zero"), ("llama", "tp1"): (1, 1, "pipeline"),
    ("gpt2", "tp2pp2"): (2, 2, "pipeline"), ("llama", "tp2pp2"): (2, 2, "pipeline")}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The real-text fixture as an indexed dataset (GPT-2 ids, uint16)."""
    prefix = str(tmp_path_factory.mktemp("hf_text") / "shakespeare_text_document")
    builder = MMapIndexedDatasetBuilder(prefix + ".bin", dtype="uint16")
    for document in text_documents():
        builder.add_document(document)
    builder.finalize(index_file_path(prefix))
    return prefix


def _first_batch(prefix: str) -> torch.Tensor:
    """Training's first global batch: samples 0 .. GLOBAL-1 of the train split (one
    data-parallel rank), each SEQ + 1 tokens, from the index cache the run built."""
    train, _, _ = build_train_valid_test_datasets(
        data_prefix=[prefix], splits_string="100,0,0",
        train_valid_test_num_samples=(ITERATIONS * GLOBAL, GLOBAL, GLOBAL), seq_length=SEQ,
        seed=SEED)
    return torch.stack([torch.as_tensor(train[i]["text"]) for i in range(GLOBAL)])


def _transformers_loss(model, batch: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(batch[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(),
                                             batch[:, 1:].reshape(-1)).item()


@pytest.mark.parametrize("arch,layout", list(LAYOUTS))
def test_import_train_export(arch, layout, dataset, tmp_path):
    tp, pp, engine = LAYOUTS[(arch, layout)]
    model = MODELS[arch]()
    model.save_pretrained(tmp_path / "hf")
    options = from_hf.build_parser().parse_args([
        "--hf", str(tmp_path / "hf"), "--save", str(tmp_path / "imported"),
        "--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp),
        "--make-vocab-size-divisible-by", "64"] + (["--no-pipeline-parallel"] if engine == "zero" else []))
    model_flags = from_hf.convert(options)

    output = run_pretrain(model_flags + [
        "--load", str(tmp_path / "imported"), "--finetune", "--seq-length", str(SEQ),
        "--micro-batch-size", str(MICRO), "--global-batch-size", str(GLOBAL),
        "--train-iters", str(ITERATIONS), "--lr", "1e-3", "--lr-decay-style", "constant",
        "--log-interval", "1", "--eval-interval", "1000", "--eval-iters", "1",
        "--split", "100,0,0", "--data-path", dataset, "--seed", str(SEED), "--deepspeed",
        "--zero-stage", "1", "--hidden-dropout", "0", "--attention-dropout", "0",
        "--save", str(tmp_path / "trained"), "--save-interval", str(ITERATIONS)],
        num_procs=tp * pp, timeout=300)
    logged = losses_by_iteration(output)[1]
    expected = _transformers_loss(model, _first_batch(dataset))
    print(f"{arch} {layout}: loss at iteration 1 {logged} (log), {expected:.9g} (transformers), "
          f"relative difference {abs(logged - expected) / expected:.1e}")
    assert logged == pytest.approx(expected, rel=LOSS_RTOL)

    assert to_hf.main(["--load", str(tmp_path / "trained"), "--output", str(tmp_path / "out")]) == 0
    exported = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    assert type(exported) is type(model)
    moved = [name for name, tensor in exported.state_dict().items()
             if not torch.equal(tensor, model.state_dict()[name])]
    assert moved, "training changed no weight: the export would not show a trained checkpoint"
    tokens = text_batch()
    with torch.no_grad():
        got = exported(tokens).logits
    kwargs = gpt_config_kwargs(model.config, padded_vocab_size=VOCAB, tp=tp)
    tag_dir = os.path.join(tmp_path / "trained", "global_step2")
    ours = run_on_ranks(logits_from_checkpoint, kwargs, tag_dir, tokens, world_size=tp)[0]
    difference = relative_difference(got, ours)
    print(f"{arch} {layout}: exported logits, max relative difference {difference:.2e}")
    assert difference <= LOGITS_RTOL
