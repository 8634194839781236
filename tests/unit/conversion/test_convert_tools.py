"""tools/convert_checkpoint/{from_hf,to_hf}.py and upstream's tool names, in process:
transformers -> import -> export is tensor-for-tensor equal at every layout and both engines;
sharded files both ways; every bad input gives one line, exit code 1 and writes nothing."""
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file as load_safetensors

from tests import processes
from tests.dist.conversion.hf_models import gpt2_model, llama_model
from tools import hf2megads_weight_converter
from tools.convert_checkpoint import deepspeed_to_transformers, from_hf, to_hf

REPO = Path(__file__).resolve().parents[3]


def _saved(model, folder, **kwargs):
    model.save_pretrained(folder, **kwargs)
    return str(folder)


def _hf_tensors(folder):
    tensors = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            tensors.update(load_safetensors(os.path.join(folder, name)))
    return tensors


def _one_error_line(capsys, tool):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{tool}: error: "), err
    return err[0]


def _layout(tp, pp, engine):
    return ["--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp)] + (
        ["--no-pipeline-parallel"] if engine == "zero" else [])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("tp,pp,engine", [(1, 1, "zero"), (2, 1, "zero"), (1, 1, "pipeline"),
                                          (2, 2, "pipeline")])
def test_import_then_export_is_tensor_for_tensor_equal(arch, tp, pp, engine, tmp_path, capsys):
    model = gpt2_model(vocab_size=300) if arch == "gpt2" else llama_model(vocab_size=300)
    hf_dir = _saved(model, tmp_path / "hf")
    assert from_hf.main(["--hf", hf_dir, "--save", str(tmp_path / "ckpt"),
                         *_layout(tp, pp, engine)]) == 0
    printed = capsys.readouterr().out
    assert "--tensor-model-parallel-size " + str(tp) in printed and "--finetune" in printed
    assert to_hf.main(["--load", str(tmp_path / "ckpt"), "--output", str(tmp_path / "out")]) == 0
    original, exported = _hf_tensors(hf_dir), _hf_tensors(tmp_path / "out")
    assert sorted(exported) == sorted(original)
    for name, tensor in original.items():
        assert torch.equal(exported[name], tensor), name
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "hf", "out"]  # no staging folders left


def test_sharded_folders_both_ways(tmp_path):
    hf_dir = _saved(llama_model(vocab_size=300), tmp_path / "hf", max_shard_size="100KB")
    assert "model.safetensors.index.json" in os.listdir(hf_dir)
    assert from_hf.main(["--hf", hf_dir, "--save", str(tmp_path / "ckpt")]) == 0
    assert to_hf.main(["--load", str(tmp_path / "ckpt"), "--output", str(tmp_path / "out"),
                       "--max-shard-size", "50KB"]) == 0
    files = sorted(os.listdir(tmp_path / "out"))
    shards = [name for name in files if name.endswith(".safetensors")]
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert "model.safetensors.index.json" in files
    import transformers

    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    original = _hf_tensors(hf_dir)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name


def test_pickled_weights_only_with_allow_bin_and_only_weights(tmp_path, capsys):
    model = gpt2_model(vocab_size=300)
    hf_dir = _saved(model, tmp_path / "hf")
    os.remove(os.path.join(hf_dir, "model.safetensors"))
    torch.save(model.state_dict(), os.path.join(hf_dir, "pytorch_model.bin"))
    capsys.readouterr()
    assert from_hf.main(["--hf", hf_dir, "--save", str(tmp_path / "a")]) == 1
    assert "--allow-bin" in _one_error_line(capsys, "from_hf.py")
    assert from_hf.main(["--hf", hf_dir, "--save", str(tmp_path / "b"), "--allow-bin"]) == 0
    capsys.readouterr()
    assert to_hf.main(["--load", str(tmp_path / "b"), "--output", str(tmp_path / "out")]) == 0
    exported = _hf_tensors(tmp_path / "out")
    assert all(torch.equal(exported[k], v) for k, v in model.state_dict().items() if k in exported)

    class Payload:  # a pickle that would run a command when unpickled
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"transformer.wte.weight": Payload()}, os.path.join(hf_dir, "pytorch_model.bin"))
    assert from_hf.main(["--hf", hf_dir, "--save", str(tmp_path / "c"), "--allow-bin"]) == 1
    line = _one_error_line(capsys, "from_hf.py")
    assert "system" in line and "allow-list" in line
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "c").exists()


def _bad_import(tmp_path, case):
    hf_dir = tmp_path / "hf"
    extra = []
    if case == "unsupported architecture":
        model = gpt2_model(vocab_size=300)
        model.save_pretrained(hf_dir)
        config = (hf_dir / "config.json").read_text().replace('"gpt2"', '"gpt_neox"')
        (hf_dir / "config.json").write_text(config.replace("GPT2LMHeadModel", "GPTNeoXForCausalLM"))
        return hf_dir, extra, "GPTNeoXForCausalLM"
    if case == "heads do not divide":
        llama_model(vocab_size=300).save_pretrained(hf_dir)
        return hf_dir, ["--tensor-model-parallel-size", "3"], "--tensor-model-parallel-size"
    if case == "vocabulary does not fit":
        llama_model(vocab_size=300).save_pretrained(hf_dir)
        return hf_dir, ["--tokenizer-type", "NullTokenizer", "--vocab-size", "99"], "vocab_size 300"
    if case == "missing shard":
        llama_model(vocab_size=300).save_pretrained(hf_dir, max_shard_size="100KB")
        os.remove(hf_dir / "model-00002-of-00003.safetensors" if (
            hf_dir / "model-00002-of-00003.safetensors").exists() else sorted(
            hf_dir.glob("model-0000*.safetensors"))[1])
        return hf_dir, extra, "missing weight file"
    if case == "missing tensor":
        model = llama_model(vocab_size=300)
        state = {k: v for k, v in model.state_dict().items() if "layers.1.mlp.up_proj" not in k}
        model.save_pretrained(hf_dir, state_dict=state)
        return hf_dir, extra, "model.layers.1.mlp.up_proj.weight"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["unsupported architecture", "heads do not divide",
                                  "vocabulary does not fit", "missing shard", "missing tensor"])
def test_bad_imports_write_nothing(case, tmp_path, capsys):
    hf_dir, extra, named = _bad_import(tmp_path, case)
    capsys.readouterr()
    assert from_hf.main(["--hf", str(hf_dir), "--save", str(tmp_path / "ckpt"), *extra]) == 1
    assert named in _one_error_line(capsys, "from_hf.py")
    assert sorted(os.listdir(tmp_path)) == ["hf"]


def test_existing_outputs_need_force(tmp_path, capsys):
    hf_dir = _saved(gpt2_model(vocab_size=300), tmp_path / "hf")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "mine.txt").write_text("keep")
    capsys.readouterr()
    assert from_hf.main(["--hf", hf_dir, "--save", str(tmp_path / "ckpt")]) == 1
    assert "--force" in _one_error_line(capsys, "from_hf.py")
    assert os.listdir(tmp_path / "ckpt") == ["mine.txt"]
    assert from_hf.main(["--hf", hf_dir, "--save", str(tmp_path / "ckpt"), "--force"]) == 0
    assert to_hf.main(["--load", str(tmp_path / "ckpt"), "--output", hf_dir]) == 1
    assert "--force" in _one_error_line(capsys, "to_hf.py")
    assert "config.json" in os.listdir(hf_dir)


def test_bad_exports_write_nothing(tmp_path, capsys):
    hf_dir = _saved(llama_model(vocab_size=300), tmp_path / "hf")
    assert from_hf.main(["--hf", hf_dir, "--save", str(tmp_path / "ckpt"),
                         *_layout(2, 2, "pipeline")]) == 0
    capsys.readouterr()
    os.remove(tmp_path / "ckpt" / "global_step0" / "layer_03-model_01-model_states.pt")
    assert to_hf.main(["--load", str(tmp_path / "ckpt"), "--output", str(tmp_path / "out")]) == 1
    assert "layer_03-model_01-model_states.pt" in _one_error_line(capsys, "to_hf.py")
    assert not (tmp_path / "out").exists()


def test_a_shape_without_equivalent_is_refused_on_export(tmp_path, capsys):
    """A checkpoint of rotary + LayerNorm + GeLU (written here with its args) has no
    transformers class: to_hf names the flag."""
    from megatron.arguments import parse_args
    from megatron.checkpointing import ModelFingerprint
    from megatron.conversion.checkpoint_writer import write_checkpoint

    args = parse_args(["--num-layers", "1", "--hidden-size", "8", "--num-attention-heads", "2",
                       "--seq-length", "4", "--max-position-embeddings", "4",
                       "--use-rotary-position-embeddings", "--tokenizer-type", "NullTokenizer",
                       "--vocab-size", "10"])
    fingerprint = ModelFingerprint(1, 8, 2, 2, 32, 128, 1, 1)
    write_checkpoint(str(tmp_path / "ckpt"), lambda: iter(
        [("language_model.embedding.word_embeddings.weight", torch.zeros(128, 8))]),
        args=args, fingerprint=fingerprint, pipeline_engine=False, swiglu=False)
    assert to_hf.main(["--load", str(tmp_path / "ckpt"), "--output", str(tmp_path / "out")]) == 1
    assert "--normalization layernorm" in _one_error_line(capsys, "to_hf.py")
    assert not (tmp_path / "out").exists()


def test_upstream_tool_names(tmp_path, capsys):
    hf_dir = _saved(gpt2_model(vocab_size=300), tmp_path / "hf")
    assert hf2megads_weight_converter.main([
        "--hf-ckpt-dir", hf_dir, "--save", str(tmp_path / "ckpt"), "--load-mode", "safetensor",
        "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
        "--num-layers", "2"]) == 0
    assert "ignored" in capsys.readouterr().out
    assert deepspeed_to_transformers.main([
        "--input_folder", str(tmp_path / "ckpt" / "global_step0"),
        "--output_folder", str(tmp_path / "out"), "--target_tp", "1"]) == 0
    original, exported = _hf_tensors(hf_dir), _hf_tensors(tmp_path / "out")
    assert all(torch.equal(exported[k], v) for k, v in original.items())
    assert hf2megads_weight_converter.main(["--to-hf-ckpt", "--load", str(tmp_path / "ckpt")]) == 2
    assert "tools/convert_checkpoint/to_hf.py --load" in capsys.readouterr().err


@pytest.mark.slow
def test_command_line_exit_code_and_one_line(tmp_path):
    script = REPO / "tools" / "convert_checkpoint" / "from_hf.py"
    completed = processes.run([sys.executable, str(script), "--hf", str(tmp_path / "none"),
                               "--save", str(tmp_path / "ckpt")], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines() == [
        f"from_hf.py: error: --hf {tmp_path / 'none'}: no such directory"]
    assert os.listdir(tmp_path) == []


def test_gpt2_tokenizer_files_travel_both_ways(shared_data, tmp_path, capsys):
    """A folder with vocab.json + merges.txt imports as GPT2BPETokenizer (vocabulary padded
    from 50257 to 50304) and exports with tokenizer files transformers reads: the same ids
    as this project's tokenizer on real text, and the weights tensor-for-tensor equal."""
    import json
    import shutil

    import transformers

    from megatron.tokenizer import build_tokenizer

    model = gpt2_model()
    hf_dir = _saved(model, tmp_path / "hf")
    shutil.copyfile(shared_data / "gpt2-vocab.json", tmp_path / "hf" / "vocab.json")
    shutil.copyfile(shared_data / "gpt2-merges.txt", tmp_path / "hf" / "merges.txt")
    assert from_hf.main(["--hf", hf_dir, "--save", str(tmp_path / "ckpt")]) == 0
    assert "--tokenizer-type GPT2BPETokenizer" in capsys.readouterr().out
    assert to_hf.main(["--load", str(tmp_path / "ckpt"), "--output", str(tmp_path / "out")]) == 0
    original, exported = _hf_tensors(hf_dir), _hf_tensors(tmp_path / "out")
    assert all(torch.equal(exported[k], v) for k, v in original.items())
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["vocab_size"] == 50257 and config["eos_token_id"] == 50256
    ours = build_tokenizer("GPT2BPETokenizer", vocab_file=str(shared_data / "gpt2-vocab.json"),
                           merge_file=str(shared_data / "gpt2-merges.txt"))
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    text = json.loads((shared_data / "corpus.jsonl").read_text().splitlines()[0])["text"][:2000]
    assert theirs(text)["input_ids"] == ours.tokenize(text)
    assert theirs.eos_token_id == 50256
