"""--ds-sequence-parallel-size at start-up: the sizes it derives and its one-line refusals."""
import pytest

from megatron.arguments import parse_args
from megatron.config import build_config

MODEL = ("--num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 16 "
         "--max-position-embeddings 16 --train-iters 10 --lr 1e-3 --vocab-file v --merge-file m "
         "--deepspeed --micro-batch-size 2 --global-batch-size 8").split()


def build(argv, *, world):
    return build_config(parse_args(MODEL + list(argv)), world_size=world, accelerator_name="cpu")


def test_sequence_parallel_ranks_share_samples():
    # 4 ranks = SP2 x DP2: two different micro batches per step, 2 accumulation steps.
    config = build(["--ds-sequence-parallel-size", "2", "--no-pipeline-parallel"], world=4)
    assert config.parallel.ds_sequence_parallel_size == 2
    assert config.parallel.data_parallel_size == 2 and config.batch.data_parallel_size == 2
    assert config.batch.gradient_accumulation_steps == 2
    assert config.model.ds_sequence_parallel_size == 2
    assert config.ds_config["train_batch_size"] == 8


def test_default_is_one():
    config = build(["--no-pipeline-parallel"], world=2)
    assert config.parallel.ds_sequence_parallel_size == 1 == config.model.ds_sequence_parallel_size
    assert config.parallel.data_parallel_size == 2


@pytest.mark.parametrize("argv,world,message", [
    (["--ds-sequence-parallel-size", "2"], 2,
     r"^--ds-sequence-parallel-size 2 needs --no-pipeline-parallel, --tensor-model-parallel-size 1 "
     r"and --pipeline-model-parallel-size 1 \(got the pipeline engine, "),
    (["--ds-sequence-parallel-size", "2", "--no-pipeline-parallel", "--tensor-model-parallel-size",
      "2"], 4, r"\(got --no-pipeline-parallel, --tensor-model-parallel-size 2, "),
    (["--ds-sequence-parallel-size", "2", "--pipeline-model-parallel-size", "2"], 4,
     r"--pipeline-model-parallel-size 2\): DeepSpeed-Ulysses is implemented only for the ZeRO engine"),
    (["--ds-sequence-parallel-size", "2", "--no-pipeline-parallel"], 3,
     r"^world size 3 is not divisible by --ds-sequence-parallel-size 2$"),
    (["--ds-sequence-parallel-size", "0", "--no-pipeline-parallel"], 2,
     r"^--ds-sequence-parallel-size must be >= 1, got 0$"),
    (["--ds-sequence-parallel-size", "4", "--no-pipeline-parallel", "--num-attention-heads", "2"], 4,
     r"--num-attention-heads 2 \(num_attention_heads\) / tensor_model_parallel_size must be "
     r"divisible by --ds-sequence-parallel-size 4"),
    (["--ds-sequence-parallel-size", "3", "--no-pipeline-parallel", "--num-attention-heads", "3",
      "--hidden-size", "30"], 3,
     r"--seq-length 16 \(seq_length\) must be divisible by --ds-sequence-parallel-size 3"),
    (["--ds-sequence-parallel-size", "2", "--no-pipeline-parallel", "--force-ds-sequence-parallel"],
     2, r"^--force-ds-sequence-parallel is not supported yet"),
])
def test_refusals_name_the_flags(argv, world, message):
    with pytest.raises(ValueError, match=message):
        build(argv, world=world)
