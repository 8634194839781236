"""The launch scripts in examples/ produce a command line the configuration accepts.

A stub `deepspeed` on PATH records the arguments instead of launching; they are then parsed
and validated exactly as pretrain_gpt.py would, for the world size the script's layout needs
on a CUDA machine (the scripts use fp16, which only GPUs run).
"""
import json
import os
import stat

import pytest

from megatron.arguments import parse_args
from megatron.config.build import build_config
from tests import processes
from tests.functional.launch import REPO_ROOT

SCRIPTS = {  # script: (world size, tp, pp, pipeline engine)
    "ds_pretrain_gpt_125M.sh": (4, 2, 2, True),
    "ds_pretrain_gpt_1.3B.sh": (2, 2, 1, False),
    "ds_pretrain_gpt_13B.sh": (32, 4, 8, True),
}


def _record_launch(script, tmp_path, *, whole=False, **env_extra):
    """The arguments the script gives pretrain_gpt.py (`whole`: the launcher's too)."""
    stub_dir = tmp_path / "bin"
    stub_dir.mkdir()
    record = tmp_path / "argv.json"
    stub = stub_dir / "deepspeed"
    stub.write_text("#!/usr/bin/env python3\nimport json, sys\n"
                    f"json.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{stub_dir}:{os.environ['PATH']}", DATA_PATH="/data/pile_text_document",
               VOCAB_PATH="/data/gpt2-vocab.json", MERGE_PATH="/data/gpt2-merges.txt",
               OUTPUT_DIR=str(tmp_path / "out"), HOSTFILE=str(tmp_path / "no-hostfile"))
    env.update(env_extra)
    processes.run(["bash", str(REPO_ROOT / "examples" / script)], env=env, check=True,
                  capture_output=True, text=True, timeout=120)
    argv = json.loads(record.read_text())
    if whole:
        return argv
    return argv[argv.index(next(a for a in argv if a.endswith("pretrain_gpt.py"))) + 1:]


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_script_command_line_is_valid(script, tmp_path):
    world_size, tp, pp, pipeline = SCRIPTS[script]
    argv = _record_launch(script, tmp_path)
    config = build_config(parse_args(argv, defaults={"tokenizer_type": "GPT2BPETokenizer"}),
                          world_size=world_size, accelerator_name="cuda")
    assert config.parallel.tensor_model_parallel_size == tp
    assert config.parallel.pipeline_model_parallel_size == pp
    assert config.parallel.pipeline_engine == pipeline
    assert config.ds_config["fp16"]["enabled"] is True
    written = json.loads(open(argv[argv.index("--deepspeed_config") + 1]).read())
    assert written["train_batch_size"] == config.batch.global_batch_size


def test_node_rank_launches_one_node_without_ssh(tmp_path):
    """NODE_RANK + MASTER_ADDR (+ MASTER_PORT): the launcher form of the multi-node test."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("worker-0 slots=8\nworker-1 slots=8\n")
    argv = _record_launch("ds_pretrain_gpt_125M.sh", tmp_path, whole=True, HOSTFILE=str(hostfile),
                          NODE_RANK="1", MASTER_ADDR="10.0.0.1", MASTER_PORT="29700")
    launcher = argv[:argv.index(next(a for a in argv if a.endswith("pretrain_gpt.py")))]
    assert launcher == ["--hostfile", str(hostfile), "--no_ssh", "--node_rank", "1",
                        "--master_addr", "10.0.0.1", "--master_port", "29700"]
