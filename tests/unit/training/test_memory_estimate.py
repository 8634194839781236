"""megatron.training.memory_estimate against figures computed by hand for small shapes.

Every expected value below is worked out in the comment next to it from the shapes (no call
into the code under test); the comparisons are exact (integer bytes).
"""
import pytest

from megatron.arguments import parse_args
from megatron.config.build import build_config
from megatron.training import memory_estimate as me

# 2 layers, h64, 4 heads (head 16), s32, ffn 4h = 256, NullTokenizer 511 + EOD -> padded 512.
TINY = ("--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 "
        "--max-position-embeddings 32 --micro-batch-size 2 --train-iters 3 --lr 1e-3 "
        "--tokenizer-type NullTokenizer --vocab-size 511 --deepspeed").split()


def config(*extra, world_size=1, global_batch=8, accelerator="cpu"):
    flags = TINY + ["--global-batch-size", str(global_batch)] + list(extra)
    return build_config(parse_args(flags), world_size=world_size, accelerator_name=accelerator)


def test_layer_parameters_by_hand():
    model = config().model
    # QKV 64*192 + 192, dense 64*64 + 64, two LayerNorms 2*128, fc1 64*256 + 256, fc2 256*64 + 64
    assert me.layer_parameters(model, 1) == 12480 + 4160 + 256 + 16640 + 16448  # 49984
    # TP2: QKV 64*96 + 96, dense 32*64 + 64 (bias replicated), norms 256, fc1 64*128 + 128,
    # fc2 128*64 + 64
    assert me.layer_parameters(config("--tensor-model-parallel-size", "2", world_size=2).model,
                               2) == 6240 + 2112 + 256 + 8320 + 8256


def test_whole_model_parameters_match_the_built_model():
    # 2 layers 2*49984 + word embeddings 512*64 + positions 32*64 + final norm 128 (tied head);
    # 134912 is also what the built model reports (tests/functional/test_memory_split.py).
    [(layers, params, first, last)] = me.stage_parameters(config("--no-pipeline-parallel"), 512)
    assert (layers, params, first, last) == (2, 99968 + 32768 + 2048 + 128, True, True)


def test_pipeline_stages_hold_embedding_and_tied_head_copy():
    # PP2 with type:transformer: one layer per stage; stage 0 has the embedding (32768 + 2048),
    # stage 1 the final norm (128) and the tied head's copy of the word embeddings + positions.
    cfg = config("--pipeline-model-parallel-size", "2", "--pipeline-partition-method",
                 "type:transformer", world_size=2)
    assert me.stage_parameters(cfg, 512) == [(1, 49984 + 34816, True, False),
                                             (1, 49984 + 128 + 34816, False, True)]


def test_model_states_fp32_zero1_on_cpu():
    n, largest = 134912, 32768
    states = me.model_state_bytes(config("--no-pipeline-parallel", "--zero-stage", "1"), n,
                                  accelerator="cpu", largest_parameter=largest)
    # params 4n; fp32 master + two Adam moments 12n (DP1); gradients 4n plus the reduce bucket's
    # resident part (min(5e8, n) elements of 4 bytes), which backward releases; step: the fp32
    # gradient partition 4n (a CPU's chunked norm makes no fp64 copy of the largest gradient).
    assert states == {"parameters": 4 * n, "gradients": 8 * n, "reduce_bucket": 4 * n,
                      "optimizer_state": 12 * n, "step_buffers": 4 * n}


def test_model_states_bf16_zero1_dp4_on_gpu():
    n = 1000
    cfg = config("--no-pipeline-parallel", "--zero-stage", "1", "--bf16", world_size=4,
                 accelerator="cuda")
    states = me.model_state_bytes(cfg, n, accelerator="cuda", largest_parameter=100)
    # bf16 params 2n; optimizer (master + moments) 12 bytes x n/4; bf16 gradients 2n plus the
    # whole 5e8-element bf16 bucket; step: the bf16 flat partition 2 x n/4 and its fp32 copy
    # 4 x n/4 (1500), more than the fp64 norm copy 8 x min(100, n/4) (800): the larger on a GPU.
    assert states == {"parameters": 2000, "gradients": 2000 + 10 ** 9, "reduce_bucket": 10 ** 9,
                      "optimizer_state": 3000, "step_buffers": 1500}


def test_model_states_bf16_optimizer_has_no_step_buffers():
    # bf16 with fp32 gradient accumulation at ZeRO-1 runs DeepSpeed's bf16 optimizer: its fp32
    # gradients (4n, whole) are the flat partitions the step uses; the norm of fp32 copies nothing.
    n = 1000
    cfg = config("--no-pipeline-parallel", "--zero-stage", "1", "--bf16",
                 "--accumulate-allreduce-grads-in-fp32", world_size=4, accelerator="cuda")
    states = me.model_state_bytes(cfg, n, accelerator="cuda", largest_parameter=100)
    assert states["step_buffers"] == 0 and states["reduce_bucket"] == 0
    assert states["optimizer_state"] == 3000


def test_model_states_zero3_and_zero0():
    n = 1000
    cfg = config("--no-pipeline-parallel", "--zero-stage", "3", "--bf16", world_size=4,
                 accelerator="cuda")
    states = me.model_state_bytes(cfg, n, accelerator="cuda")
    # ZeRO-3: params 2 x n/4, gradients 2 x n/4 + bucket twice (overlap_comm defaults on at 3)
    assert states["parameters"] == 500 and states["optimizer_state"] == 3000
    assert states["gradients"] == 500 + 2 * 10 ** 9
    assert states["step_buffers"] == 4 * 250 and states["reduce_bucket"] == 0
    cfg0 = config("--no-pipeline-parallel", "--zero-stage", "0", world_size=2)
    # ZeRO-0 fp32: torch AdamW's two moments on every rank, no master copy, plain gradients
    assert me.model_state_bytes(cfg0, n, accelerator="cpu") == {
        "parameters": 4000, "gradients": 4000, "reduce_bucket": 0, "optimizer_state": 8000,
        "step_buffers": 0}


def test_largest_parameter_by_hand():
    cfg = config("--no-pipeline-parallel")
    # word embeddings 512 x 64 = 32768 beat fc1/fc2 (64 x 256 = 16384), QKV 64 x 192, positions
    # 32 x 64; a stage without embedding or head: the MLP's 16384; TP2 halves both.
    assert me.largest_parameter(cfg, 512, num_layers=2, holds_embedding=True,
                                holds_head=True) == 32768
    assert me.largest_parameter(cfg, 512, num_layers=1, holds_embedding=False,
                                holds_head=False) == 16384
    tp2 = config("--tensor-model-parallel-size", "2", world_size=2)
    assert me.largest_parameter(tp2, 512, num_layers=1, holds_embedding=False,
                                holds_head=True) == 16384


def test_layer_activations_fp32_by_hand():
    model = config().model
    # sbh = 32*2*64 = 4096. Replicated: 2 norm inputs + QKV input + MLP input (4 bytes each)
    # + 2 dropout masks (1 byte) = 18 sbh; split: QKV output 3h, context h, GeLU in and out
    # 4h each = 12h x 4 bytes = 48 sbh; scores: 4 heads x 32^2 x b2 x (fp32 softmax 4 +
    # mask 1 + dropout output 4).
    parts = me.layer_activation_bytes(model, micro_batch_size=2, seq_length=32,
                                      tensor_model_parallel_size=1, sequence_parallel=False,
                                      element_size=4)
    assert parts == {"replicated": 18 * 4096, "split": 48 * 4096, "scores": 4 * 1024 * 2 * 9}


def test_cpu_dropout_masks_have_the_activation_dtype():
    # torch's CPU dropout keeps a float mask: masks cost 4 bytes in fp32, so replicated
    # 4 x 4 + 2 x 4 = 24 sbh and scores 4 x 32^2 x 2 x (4 + 4 + 4).
    parts = me.layer_activation_bytes(config().model, micro_batch_size=2, seq_length=32,
                                      tensor_model_parallel_size=1, sequence_parallel=False,
                                      element_size=4, dropout_mask_size=4)
    assert parts == {"replicated": 24 * 4096, "split": 48 * 4096, "scores": 4 * 1024 * 2 * 12}


def test_layer_activations_match_korthikanti_for_half_precision():
    # The paper's per-layer figure for 2-byte activations: s*b*h*(10 + 24/t) + 5*a*s^2*b/t
    # without sequence parallelism, s*b*h*34/t + 5*a*s^2*b/t with it (fp16 softmax output).
    model = config("--no-query-key-layer-scaling", "--tensor-model-parallel-size", "2",
                   "--sequence-parallel", world_size=2).model
    s, b, h, a, t = 32, 2, 64, 4, 2
    for sp, replicated in ((False, 10 * s * b * h), (True, 10 * s * b * h // t)):
        parts = me.layer_activation_bytes(model, micro_batch_size=b, seq_length=s,
                                          tensor_model_parallel_size=t, sequence_parallel=sp,
                                          element_size=2)
        assert parts == {"replicated": replicated, "split": 24 * s * b * h // t,
                         "scores": 5 * a * s * s * b // t}


def _activations(cfg, **kwargs):
    return me.stage_activation_bytes(cfg, vocab=512, first=False, last=False, fused_softmax=False,
                                     **kwargs)


def test_recompute_keeps_layer_inputs_and_rebuilds_one_chunk():
    full_layer = (18 + 48) * 4096 + 4 * 1024 * 2 * 9  # from test_layer_activations_fp32_by_hand
    plain = config("--no-pipeline-parallel")
    assert _activations(plain, num_layers=2, in_flight=1) == 2 * full_layer
    # --checkpoint-activations (chunks of 1): each layer's input sbh x 4 bytes, and one layer
    # rebuilt in full during backward.
    recomputed = config("--no-pipeline-parallel", "--checkpoint-activations")
    assert _activations(recomputed, num_layers=2, in_flight=1) == 2 * 4 * 4096 + full_layer
    # selective: no s^2 part kept; one layer's scores rebuilt in backward.
    selective = config("--no-pipeline-parallel", "--recompute-activations")
    assert _activations(selective, num_layers=2, in_flight=1) == 2 * 66 * 4096 + 4 * 1024 * 2 * 9


def test_1f1b_micro_batches_in_flight_per_stage():
    # PP4 with 8 micro batches per step: stage k holds min(4 - k, 8) micro batches.
    # (accelerator cuda: 1-byte dropout masks, so the full layer of the fp32 test above)
    cfg = config("--pipeline-model-parallel-size", "4", "--num-layers", "4",
                 "--pipeline-partition-method", "type:transformer", world_size=4, global_batch=16)
    estimate = me.estimate_memory(cfg, accelerator="cuda")
    assert [stage.micro_batches_in_flight for stage in estimate.stages] == [4, 3, 2, 1]
    assert [stage.num_layers for stage in estimate.stages] == [1, 1, 1, 1]
    full_layer = (18 + 48) * 4096 + 4 * 1024 * 2 * 9
    # Stage 1 (middle): 3 micro batches of one layer, nothing else.
    assert estimate.stages[1].activations == 3 * full_layer


def test_last_stage_adds_logits_and_loss():
    cfg = config("--no-pipeline-parallel")
    with_head = me.stage_activation_bytes(cfg, num_layers=0, vocab=512, first=False, last=True,
                                          in_flight=1, fused_softmax=False)
    # final-norm input + LM-head input (2 x sbh x 4) + fp32 logits s*b*V x 4 held while the
    # loss keeps its fp32 exp(logits - max) (4): 2*4096*4 + 32*2*512*8
    assert with_head == 2 * 4096 * 4 + 32 * 2 * 512 * 8
    bf16 = config("--no-pipeline-parallel", "--bf16")
    # bf16: inputs 2 x sbh x 2; logits 2 bytes + the loss's fp32 exp 4 (it converts a chunk
    # of rows at a time: no full fp32 copy of the logits)
    assert me.stage_activation_bytes(bf16, num_layers=0, vocab=512, first=False, last=True,
                                     in_flight=1, fused_softmax=False) == (
        2 * 4096 * 2 + 32 * 2 * 512 * 6)


def test_fits_and_overhead():
    estimate = me.estimate_memory(config("--no-pipeline-parallel"), overhead_bytes=1000)
    worst = estimate.worst
    assert worst.overhead == 1000
    assert estimate.fits(worst.peak) and not estimate.fits(worst.peak - 1)


def test_unknown_vocabulary_is_refused():
    cfg = build_config(parse_args(TINY[:-5] + ["--deepspeed", "--global-batch-size", "8",
                                               "--tokenizer-type", "HFTokenizer",
                                               "--tokenizer-model", "x"]),
                       world_size=1, accelerator_name="cpu")
    with pytest.raises(ValueError, match="--padded-vocab-size"):
        me.estimate_memory(cfg)


def test_ulysses_halves_layer_activations_and_shards_zero_over_its_ranks():
    """SP2 (DeepSpeed-Ulysses): s/2 tokens per rank outside the core attention, all s tokens of
    2 of the 4 heads inside it: every part of a layer's activations is exactly half of one
    rank's (s32 and 4 heads divide by 2); ZeRO-1 shards over DP1 x SP2 like DP2."""
    one = config("--no-pipeline-parallel")
    two = config("--no-pipeline-parallel", "--ds-sequence-parallel-size", "2", world_size=2)
    assert two.parallel.data_parallel_size == 1
    kwargs = dict(micro_batch_size=2, tensor_model_parallel_size=1, sequence_parallel=False,
                  element_size=4)
    whole = me.layer_activation_bytes(one.model, seq_length=32, **kwargs)
    half = me.layer_activation_bytes(two.model, seq_length=32, ulysses_size=2, **kwargs)
    # scores: 4 heads * 32 * 32 * b2 * (softmax 4 + dropout mask 1 + dropout output 4) vs 2 heads
    assert whole["scores"] == 4 * 32 * 32 * 2 * 9 and half["scores"] == 2 * 32 * 32 * 2 * 9
    assert {key: 2 * value for key, value in half.items()} == whole
    dp2 = config("--no-pipeline-parallel", world_size=2)
    n = 134912
    assert (me.model_state_bytes(two, n, accelerator="cpu")
            == me.model_state_bytes(dp2, n, accelerator="cpu"))


# Activations of TINY with --checkpoint-activations, worked out as in the tests above
# (sbh = 32 x 2 x 64 = 4096): two layer inputs 2 x 4 x 4096, one layer rebuilt in backward,
# the embedding dropout's mask 4096 x mask bytes, final-norm and head inputs 2 x 4096 x 4,
# logits + fp32 softmax 32 x 2 x 512 x 8.
_REBUILT_LAYER_CPU = (24 + 48) * 4096 + 4 * 1024 * 2 * 12  # float dropout masks (4 bytes)
_RECOMPUTE_ACTIVATIONS_CPU = (2 * 4 * 4096 + _REBUILT_LAYER_CPU + 4096 * 4 + 2 * 4096 * 4
                              + 32 * 2 * 512 * 8)


def test_full_recompute_on_cpu_peaks_in_the_step():
    """On a CPU the pages backward freed stay resident: the step adds its flat fp32 gradient
    partition to backward's resident set (its chunked norm copies nothing)."""
    cfg = config("--no-pipeline-parallel", "--zero-stage", "1", "--checkpoint-activations")
    [stage] = me.estimate_memory(cfg, overhead_bytes=1000).stages
    n = 134912  # the whole model (test_whole_model_parameters_match_the_built_model)
    assert stage.activations == _RECOMPUTE_ACTIVATIONS_CPU == 737280
    params, grads, bucket, state = 4 * n, 4 * n, 4 * n, 12 * n
    step_buffers = 4 * n  # the flat fp32 partition
    assert stage.step_buffers == step_buffers
    backward = 1000 + params + grads + bucket + state + _RECOMPUTE_ACTIVATIONS_CPU
    assert stage.backward_peak == backward
    assert stage.step_peak == backward + step_buffers
    assert stage.peak == backward + step_buffers and stage.peak_phase == "step"


def test_full_recompute_on_gpu_step_peak_is_states_plus_transients():
    """Without retained pages the step holds parameters, gradients, optimizer state and the
    larger of its transients; backward's activations and reduce bucket are gone. With a small
    bucket and micro batch 1 that is more than forward/backward's peak."""
    cfg = config("--no-pipeline-parallel", "--zero-stage", "1", "--checkpoint-activations",
                 "--micro-batch-size", "1", "--zero-reduce-bucket-size", "1000",
                 accelerator="cuda")
    [stage] = me.estimate_memory(cfg, overhead_bytes=1000).stages
    n = 134912
    params, grads, bucket, state = 4 * n, 4 * n, 4 * 1000, 12 * n
    # sbh = 32 x 1 x 64 = 2048; 1-byte dropout masks on a GPU: replicated 18 sbh, split 48 sbh,
    # scores 4 x 32^2 x 1 x 9; logits 32 x 512 x 8.
    rebuilt = (18 + 48) * 2048 + 4 * 1024 * 9
    activations = 2 * 4 * 2048 + rebuilt + 2048 + 2 * 2048 * 4 + 32 * 512 * 8
    assert stage.activations == activations == 337920
    transients = max(4 * n, 8 * 32768)  # flat fp32 partition; the fp64 norm copy is freed first
    assert stage.step_buffers == transients
    assert stage.backward_peak == 1000 + params + grads + bucket + state + activations
    assert stage.step_peak == 1000 + params + grads + state + transients
    assert stage.peak == stage.step_peak and stage.peak_phase == "step"
