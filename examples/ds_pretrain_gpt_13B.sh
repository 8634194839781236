#!/usr/bin/env bash
# GPT-3 13B: tensor parallel 4 x pipeline parallel 8, ZeRO-1.
# Edit the hyperparameter block below, set DATA_PATH, VOCAB_PATH and MERGE_PATH (and
# HOSTFILE for several nodes), then run: bash examples/ds_pretrain_gpt_13B.sh
###############################################################################
### Main configs
## GPT-3 13B
seq_len=2048
model_size=13
num_layers=40
hidden_size=5120
num_attn_heads=40
global_batch_size=1024
lr=1.0e-4
min_lr=1.0e-6
init_std=0.008

### Training duration configs
## The main termination condition: GPT-3 trains on 300B tokens.
train_tokens_in_billion=300
train_tokens=$((train_tokens_in_billion * 1000000000))
## train_samples sizes the data index: keep it large enough for train_tokens.
train_samples=$(( 300 * 1000000000 * 2 / seq_len ))
## Exit (saving a checkpoint first) after this many minutes.
exit_duration=30000000

### lr configs
lr_warmup_tokens_in_million=3000
lr_warmup_tokens=$((lr_warmup_tokens_in_million * 1000000))
lr_decay_tokens_in_billion=${train_tokens_in_billion}
lr_decay_tokens=$((lr_decay_tokens_in_billion * 1000000000))
lr_decay_style="cosine"

### Parallelism configs
## Tensor (model) parallel size.
mp_size=4
## Pipeline parallel size; no_pp=true uses the non-pipeline engine (needs pp_size=1).
pp_size=8
no_pp="false"
## ZeRO stage (0 or 1; 2 and 3 do not combine with pipeline parallelism).
zero_stage=1
## Micro batch size per GPU.
batch_size=2

### Misc configs
log_interval=10
eval_iters=10
eval_interval=100
save_interval=100
num_workers=0
seed=1234
## fp16 as upstream's scripts; bf16 on Ampere+ GPUs (and on CPU, where fp16 is refused).
precision=fp16
activation_checkpoint="true"
log_optimizer_state="true"
###############################################################################
source "$(dirname "$0")/_launch_common.sh"
