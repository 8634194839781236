# Shared tail of the ds_pretrain_gpt_*.sh scripts: fills the DeepSpeed JSON template and
# launches. Sourced after a script has set its hyperparameter block; not run on its own.
# Unlike upstream's scripts nothing here ssh-es into nodes to repair tracker files or
# wget-s vocabularies: saves are atomic, and the data/vocab paths come from variables.
set -euo pipefail
dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

: "${HOSTFILE:=/job/hostfile}"          # DeepSpeed hostfile: lines like "worker-0 slots=8"
: "${DATA_PATH:?set DATA_PATH to the prefix of a preprocessed dataset (..._text_document)}"
: "${VOCAB_PATH:?set VOCAB_PATH to gpt2-vocab.json}"
: "${MERGE_PATH:?set MERGE_PATH to gpt2-merges.txt}"
: "${OUTPUT_DIR:=$dir/output}"

if [ "$zero_stage" -eq 0 ]; then prescale_grad=true; else prescale_grad=false; fi
jobname="gpt_${model_size}B_tok${train_tokens_in_billion}B_lr${lr}_min${min_lr}_gbs${global_batch_size}_mbs${batch_size}_tp${mp_size}_pp${pp_size}"
checkpoint_path="$OUTPUT_DIR/checkpoint/$jobname"
tensorboard_path="$OUTPUT_DIR/tensorboard/$jobname"
mkdir -p "$checkpoint_path" "$tensorboard_path" "$OUTPUT_DIR/log"

config_json="$OUTPUT_DIR/ds_config_gbs${global_batch_size}_mbs${batch_size}_log${log_interval}_zero${zero_stage}.json"
sed "s/GBSIZE/${global_batch_size}/; s/MBSIZE/${batch_size}/; s/LOG_INTERVAL/${log_interval}/; s/ZERO_STAGE/${zero_stage}/; s/PRESCALE_GRAD/${prescale_grad}/" \
    "$dir/ds_config_gpt_TEMPLATE.json" > "$config_json"
if [ "$precision" = "bf16" ]; then
    # bf16 instead of the template's fp16 (and what a CPU run needs).
    "${PYTHON:-python3}" - "$config_json" <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config.pop("fp16", None)
config["bf16"] = {"enabled": True}
json.dump(config, open(path, "w"), indent=2)
PY
fi

megatron_options=(
    --override-opt_param-scheduler
    --adam-beta1 0.9 --adam-beta2 0.95
    --tensor-model-parallel-size "$mp_size"
    --init-method-std "$init_std"
    --lr-decay-tokens "$lr_decay_tokens" --lr-warmup-tokens "$lr_warmup_tokens"
    --micro-batch-size "$batch_size" --exit-duration-in-mins "$exit_duration"
    --global-batch-size "$global_batch_size"
    --num-layers "$num_layers" --hidden-size "$hidden_size" --num-attention-heads "$num_attn_heads"
    --seq-length "$seq_len" --max-position-embeddings "$seq_len"
    --train-tokens "$train_tokens" --train-samples "$train_samples"
    --lr "$lr" --min-lr "$min_lr" --lr-decay-style "$lr_decay_style"
    --split 949,50,1 --log-interval "$log_interval" --eval-interval "$eval_interval"
    --eval-iters "$eval_iters" --save-interval "$save_interval"
    --weight-decay 0.1 --clip-grad 1.0 --hysteresis 2 --num-workers "$num_workers"
    "--$precision" --seed "$seed"
    --load "$checkpoint_path" --save "$checkpoint_path"
    --no-async-tensor-model-parallel-allreduce
    --tensorboard-queue-size 1 --log-timers-to-tensorboard --log-batch-size-to-tensorboard
    --log-validation-ppl-to-tensorboard --tensorboard-dir "$tensorboard_path"
)
if [ "$log_optimizer_state" = "true" ]; then megatron_options+=(--log-optimizer-states-to-tensorboard); fi
if [ "$activation_checkpoint" = "true" ]; then megatron_options+=(--checkpoint-activations); fi
data_options=(--vocab-file "$VOCAB_PATH" --merge-file "$MERGE_PATH" --data-path "$DATA_PATH" --data-impl mmap)
deepspeed_options=(--deepspeed --deepspeed_config "$config_json" --zero-stage "$zero_stage"
                   --pipeline-model-parallel-size "$pp_size")
if [ "$no_pp" = "true" ]; then deepspeed_options+=(--no-pipeline-parallel); fi
if [ "$activation_checkpoint" = "true" ]; then deepspeed_options+=(--deepspeed-activation-checkpointing); fi

launcher=(deepspeed)
if [ -f "$HOSTFILE" ]; then launcher+=(--hostfile "$HOSTFILE"); fi
if [ -n "${NUM_GPUS:-}" ]; then launcher+=(--num_gpus "$NUM_GPUS"); fi
# Nodes that cannot ssh to each other (or a scheduler that starts one task per node): run
# this script once on every node with NODE_RANK (0, 1, ...) and MASTER_ADDR (node 0's address).
if [ -n "${NODE_RANK:-}" ]; then
    : "${MASTER_ADDR:?set MASTER_ADDR to the address of node 0 when NODE_RANK is set}"
    launcher+=(--no_ssh --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR")
fi
if [ -n "${MASTER_PORT:-}" ]; then launcher+=(--master_port "$MASTER_PORT"); fi
log_file="$OUTPUT_DIR/log/${jobname}_$(hostname)_$(date +%Y%m%d-%H%M%S).log"
echo "launching $jobname; log: $log_file"
"${launcher[@]}" "$dir/../pretrain_gpt.py" "${megatron_options[@]}" "${data_options[@]}" \
    "${deepspeed_options[@]}" 2>&1 | tee "$log_file"
