"""Argument sets of Megatron-DeepSpeed's seven rebase launch scripts, at small sizes.

Transcribed from upstream's rebase scripts (their flag union, per-script layouts and the
DeepSpeed JSON template); only the sizes are shrunk so the configs build instantly.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

# Per script: TP, PP, no_pp, ZeRO stage, extra switches. mbs is 2 in every script.
SCRIPTS: Dict[str, dict] = {
    "125M": dict(tp=2, pp=2, no_pp=False, zero=1, extra=[]),
    "125M_flashattn": dict(tp=2, pp=2, no_pp=False, zero=1, extra=["--use-flash-attn"]),
    "1.3B": dict(tp=2, pp=1, no_pp=True, zero=0, extra=[]),
    "1.3B_megatron_checkpointing": dict(tp=2, pp=1, no_pp=True, zero=0, extra=[]),
    "1.3B_rope": dict(tp=4, pp=8, no_pp=False, zero=1,
                      extra=["--use-rotary-position-embeddings", "--rotary-percent", "0.25"]),
    "1.3B_rope_slw": dict(tp=4, pp=8, no_pp=False, zero=1,
                          extra=["--use-rotary-position-embeddings", "--rotary-percent", "0.25"]),
    "13B": dict(tp=4, pp=8, no_pp=False, zero=1, extra=[]),
}
MICRO_BATCH = 2
GLOBAL_BATCH = 16
SEQ_LEN = 64
LOG_INTERVAL = 10
DATA_PARALLEL = 2


def world_size(name: str) -> int:
    spec = SCRIPTS[name]
    return spec["tp"] * spec["pp"] * DATA_PARALLEL


def template_json(name: str) -> dict:
    """ds_config_gpt_TEMPLATE.json with the script's substitutions (slw adds curriculum_learning)."""
    zero = SCRIPTS[name]["zero"]
    config = {
        "train_batch_size": GLOBAL_BATCH,
        "train_micro_batch_size_per_gpu": MICRO_BATCH,
        "steps_per_print": LOG_INTERVAL,
        "zero_optimization": {"stage": zero},
        "gradient_clipping": 1.0,
        "prescale_gradients": zero == 0,
        "fp16": {"enabled": True, "loss_scale": 0, "loss_scale_window": 500, "hysteresis": 2,
                 "min_loss_scale": 1, "initial_scale_power": 11},
        "wall_clock_breakdown": False,
    }
    if name.endswith("_slw"):
        lr_warmup_tokens, cl_min = 30000, 8
        config["curriculum_learning"] = {
            "enabled": True, "curriculum_type": "seqlen", "min_difficulty": cl_min, "max_difficulty": SEQ_LEN,
            "schedule_type": "fixed_linear",
            "schedule_config": {"total_curriculum_step": lr_warmup_tokens // 3 // GLOBAL_BATCH // SEQ_LEN,
                                "difficulty_step": 8}}
    return config


def script_argv(name: str, directory: Path) -> List[str]:
    """megatron_options + data_options + deepspeed_options of the script, plus --local_rank."""
    spec = SCRIPTS[name]
    heads = 8
    argv = [
        "--override-opt_param-scheduler", "--adam-beta1", "0.9", "--adam-beta2", "0.95",
        "--tensor-model-parallel-size", str(spec["tp"]), "--init-method-std", "0.02",
        "--lr-decay-tokens", "300000", "--lr-warmup-tokens", "30000", "--micro-batch-size", str(MICRO_BATCH),
        "--exit-duration-in-mins", "30000000", "--global-batch-size", str(GLOBAL_BATCH),
        "--num-layers", "8", "--hidden-size", "64", "--num-attention-heads", str(heads),
        "--seq-length", str(SEQ_LEN), "--max-position-embeddings", str(SEQ_LEN),
        "--train-tokens", "300000", "--train-samples", str(300000 * 2 // SEQ_LEN),
        "--lr", "6e-4", "--min-lr", "1e-6", "--lr-decay-style", "cosine", "--split", "949,50,1",
        "--log-interval", str(LOG_INTERVAL), "--eval-interval", "100", "--eval-iters", "10",
        "--save-interval", "100", "--weight-decay", "0.1", "--clip-grad", "1.0", "--hysteresis", "2",
        "--num-workers", "0", "--fp16", "--seed", "1234",
        "--load", str(directory / "ckpt"), "--save", str(directory / "ckpt"),
        "--no-async-tensor-model-parallel-allreduce", "--tensorboard-queue-size", "1",
        "--log-timers-to-tensorboard", "--log-batch-size-to-tensorboard",
        "--log-validation-ppl-to-tensorboard", "--tensorboard-dir", str(directory / "tb"),
        "--log-optimizer-states-to-tensorboard",
    ]
    if name == "1.3B_megatron_checkpointing":
        argv += ["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1"]
    else:
        argv += ["--checkpoint-activations"]
    argv += spec["extra"]
    argv += ["--vocab-file", str(directory / "gpt2-vocab.json"), "--merge-file", str(directory / "gpt2-merges.txt"),
             "--data-path", str(directory / "pile_text_document"), "--data-impl", "mmap"]
    if name == "1.3B_megatron_checkpointing":
        argv += ["--pipeline-model-parallel-size", "1", "--no-pipeline-parallel"]
    else:
        json_path = directory / f"ds_config_{name}.json"
        json_path.write_text(json.dumps(template_json(name)))
        argv += ["--deepspeed", "--deepspeed_config", str(json_path), "--zero-stage", str(spec["zero"]),
                 "--pipeline-model-parallel-size", str(spec["pp"])]
        if spec["no_pp"]:
            argv += ["--no-pipeline-parallel"]
        argv += ["--deepspeed-activation-checkpointing"]
    return argv + ["--local_rank=0"]
