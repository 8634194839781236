#!/usr/bin/env bash
# The demo: from a fresh clone to a trained, checkpointed, resumed and evaluated GPT,
# with no download. It
#   1. sets up .venv (tools/setup_env.sh),
#   2. builds a real text corpus from the Python standard library and trains a
#      SentencePiece tokenizer on it (tools/build_demo_corpus.py),
#   3. preprocesses it into an mmap indexed dataset (tools/preprocess_data.py),
#   4. launches `deepspeed` on 2 ranks (pipeline parallel x2 + ZeRO-1; on a machine with a
#      single GPU: 1 rank) for the first half of the iterations, saving a checkpoint,
#   5. relaunches the same command, which resumes from the checkpoint, finishes training
#      and evaluates on the validation and test splits,
#   6. plots the run (both parts stitched) with tools/plot_logs.py,
#   7. continues the first words of a few corpus documents with the trained model
#      (tools/generate_samples_gpt.py, reading the pipeline checkpoint whole).
#
# Environment knobs: DEMO_TRAIN_ITERS (default 200), DEMO_DIR (default ./demo_output).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

bash tools/setup_env.sh
PYTHON="$ROOT/.venv/bin/python"
export PATH="$ROOT/.venv/bin:$PATH" PYTHONUNBUFFERED=1

DEMO_DIR=${DEMO_DIR:-$ROOT/demo_output}
TRAIN_ITERS=${DEMO_TRAIN_ITERS:-200}
HALF=$((TRAIN_ITERS / 2))
DATA_DIR=$DEMO_DIR/data
CHECKPOINT_DIR=$DEMO_DIR/checkpoints
TENSORBOARD_DIR=$DEMO_DIR/tensorboard
LOG_DIR=$DEMO_DIR/logs
mkdir -p "$DATA_DIR" "$LOG_DIR"

# Devices: every GPU up to 2 on a CUDA machine, else 2 CPU ranks of one thread each.
GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$GPUS" -ge 1 ]; then
    RANKS=$(( GPUS >= 2 ? 2 : 1 )); PRECISION="--bf16"
else
    RANKS=2; PRECISION=""; export OMP_NUM_THREADS=1
fi
PP=$RANKS

echo "== 1/6 building the demo corpus and tokenizer in $DATA_DIR"
if [ ! -f "$DATA_DIR/demo_text_document.idx" ]; then
    "$PYTHON" tools/build_demo_corpus.py --output "$DATA_DIR/corpus.jsonl" --max-mb 4 \
        --sentencepiece-prefix "$DATA_DIR/spm" --vocab-size 8192
    echo "== 2/6 preprocessing"
    "$PYTHON" tools/preprocess_data.py --input "$DATA_DIR/corpus.jsonl" \
        --output-prefix "$DATA_DIR/demo" --tokenizer-type GPTSentencePieceTokenizer \
        --tokenizer-model "$DATA_DIR/spm.model" --append-eod --workers 2
else
    echo "   (already there)"
fi

GLOBAL_BATCH=16
MICRO_BATCH=4
cat > "$DEMO_DIR/ds_config.json" <<EOF
{
  "train_batch_size": $GLOBAL_BATCH,
  "train_micro_batch_size_per_gpu": $MICRO_BATCH,
  "steps_per_print": 1000000,
  "zero_optimization": {"stage": 1},
  "gradient_clipping": 1.0,
  "wall_clock_breakdown": false
}
EOF

ARGS=(
    --num-layers 4 --hidden-size 256 --num-attention-heads 8
    --seq-length 256 --max-position-embeddings 256
    --micro-batch-size $MICRO_BATCH --global-batch-size $GLOBAL_BATCH
    --train-iters "$TRAIN_ITERS" --lr 1e-3 --min-lr 1e-4 --lr-decay-style cosine
    --lr-warmup-iters $((TRAIN_ITERS / 20 + 1)) --weight-decay 0.1 --clip-grad 1.0
    --adam-beta1 0.9 --adam-beta2 0.95 --init-method-std 0.02
    --tokenizer-type GPTSentencePieceTokenizer --tokenizer-model "$DATA_DIR/spm.model"
    --data-path "$DATA_DIR/demo_text_document" --split 949,50,1
    --log-interval $(( HALF < 10 ? HALF : 10 )) --eval-interval "$HALF" --eval-iters 5
    --save "$CHECKPOINT_DIR" --load "$CHECKPOINT_DIR" --save-interval "$HALF"
    --tensorboard-dir "$TENSORBOARD_DIR" --log-validation-ppl-to-tensorboard
    --pipeline-model-parallel-size "$PP" --seed 1234
    --deepspeed --deepspeed_config "$DEMO_DIR/ds_config.json" --zero-stage 1
    $PRECISION
)

echo "== 3/6 training iterations 1-$HALF on $RANKS rank(s), then stopping (--exit-interval $HALF)"
deepspeed --num_gpus "$RANKS" --master_port "${MASTER_PORT:-29517}" pretrain_gpt.py "${ARGS[@]}" \
    --exit-interval "$HALF" 2>&1 | grep --line-buffered -v "^\[20.*\] \[INFO\]" | tee "$LOG_DIR/part1.log"

echo "== 4/6 relaunching: resumes from $CHECKPOINT_DIR and trains to iteration $TRAIN_ITERS"
deepspeed --num_gpus "$RANKS" --master_port "${MASTER_PORT:-29517}" pretrain_gpt.py "${ARGS[@]}" \
    2>&1 | grep --line-buffered -v "^\[20.*\] \[INFO\]" | tee "$LOG_DIR/part2.log"

echo "== 5/6 plotting the run into $DEMO_DIR/plots"
"$PYTHON" tools/plot_logs.py --run "demo=$LOG_DIR/part1.log,$LOG_DIR/part2.log" \
    --output "$DEMO_DIR/plots"

echo "== 6/6 continuing the first words of three corpus documents"
"$PYTHON" - "$DATA_DIR/corpus.jsonl" "$DEMO_DIR/prompts.txt" <<'PROMPTS'
import json
import sys

with open(sys.argv[1]) as corpus:
    documents = [json.loads(line)["text"] for line in corpus]
step = max(1, len(documents) // 3)
prompts = [" ".join(document.split()[:8]) for document in documents[::step][:3]]
with open(sys.argv[2], "w") as out:
    out.write("\n".join(prompts) + "\n")
PROMPTS
"$PYTHON" tools/generate_samples_gpt.py --load "$CHECKPOINT_DIR" --use-checkpoint-args \
    --sample-input-file "$DEMO_DIR/prompts.txt" --sample-output-file "$DEMO_DIR/samples.txt" \
    --overwrite-output --out-seq-length 40 --top_k 10 --temperature 0.8 --micro-batch-size 3 \
    $PRECISION 2>&1 | grep --line-buffered -v "^\[20.*\] \[\(INFO\|WARNING\)\]"
cat "$DEMO_DIR/samples.txt"

echo
echo "Demo finished."
echo "  checkpoints : $CHECKPOINT_DIR (latest: $(cat "$CHECKPOINT_DIR/latest" 2>/dev/null || echo none))"
echo "  logs        : $LOG_DIR/part1.log, $LOG_DIR/part2.log"
echo "  tensorboard : tensorboard --logdir $TENSORBOARD_DIR"
echo "  plots       : $DEMO_DIR/plots/train_loss_vs_iteration.png (and the others there)"
echo "  samples     : $DEMO_DIR/samples.txt"
