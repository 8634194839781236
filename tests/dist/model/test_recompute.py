"""Activation checkpointing in GPTModel vs no checkpointing, with dropout on, at TP=1 and TP=2.

Each mode must (a) give the same per-token losses and the same gradients as the plain model
built from the same seed and run from the same RNG state — bit for bit, since the recompute
repeats the same CPU operations under the restored RNG states — and (b) actually recompute:
forward hooks count how often each transformer layer (full) or core attention (selective)
runs in one forward+backward. DeepSpeed's options are checked by what DeepSpeed does with
them (partitioned saved inputs, contiguous buffers), not by reading back the settings.
"""
import pytest
import torch

from megatron.core import parallel_state, tensor_parallel
from megatron.model.gpt_model import GPTModel
from tests.dist.model.model_utils import full_params_and_grads, make_batch, make_config
from tests.harness import run_on_ranks

DROPOUT = dict(hidden_dropout=0.1, attention_dropout=0.1, num_layers=4)
DS_OFF = dict(partition_activations=False, contiguous_checkpointing=False, checkpoint_in_cpu=False,
              synchronize_each_layer=False, profile_backward=False)

MODES = {
    # name: (TransformerConfig overrides, DeepSpeed options or None, calls per layer)
    "legacy-1": (dict(checkpoint_activations=True, checkpoint_num_layers=1), None, [2, 2, 2, 2]),
    "legacy-2": (dict(checkpoint_activations=True, checkpoint_num_layers=2), None, [2, 2, 2, 2]),
    "full-uniform-3": (dict(recompute_granularity="full", recompute_method="uniform",
                            recompute_num_layers=3), None, [2, 2, 2, 2]),
    "full-block-1": (dict(recompute_granularity="full", recompute_method="block",
                          recompute_num_layers=1), None, [2, 1, 1, 1]),
    "selective": (dict(recompute_granularity="selective"), None, [2, 2, 2, 2]),
    "deepspeed": (dict(checkpoint_activations=True, deepspeed_activation_checkpointing=True),
                  dict(DS_OFF), [2, 2, 2, 2]),
    "deepspeed-partition-contiguous": (
        dict(checkpoint_activations=True, deepspeed_activation_checkpointing=True),
        dict(DS_OFF, partition_activations=True, contiguous_checkpointing=True), [2, 2, 2, 2]),
    "deepspeed-partition-cpu": (
        dict(checkpoint_activations=True, deepspeed_activation_checkpointing=True),
        dict(DS_OFF, partition_activations=True, checkpoint_in_cpu=True), [2, 2, 2, 2]),
}


def _configure_deepspeed(options):
    import deepspeed

    from megatron.model.recompute import configure_deepspeed_checkpointing

    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    configure_deepspeed_checkpointing(mpu=parallel_state.get_mpu(), num_layers=DROPOUT["num_layers"],
                                      **options)


def run_model(mode, tp):
    """Forward+backward; returns losses, gathered grads, per-layer call counts, DS evidence."""
    overrides, ds_options, _ = MODES[mode] if mode != "plain" else ({}, None, None)
    parallel_state.initialize_model_parallel(tp, 1)
    evidence = {}
    try:
        if ds_options is not None:
            _configure_deepspeed(ds_options)
            evidence["tracker_is_deepspeed"] = _tracker_is_deepspeeds()
        tensor_parallel.model_parallel_cuda_manual_seed(1234)
        config = make_config("default", tp=tp, **DROPOUT, **overrides)
        model = GPTModel(config)
        model.train()
        calls = _count_calls(model, selective=overrides.get("recompute_granularity") == "selective")
        partitioned = _record_partitions(evidence) if ds_options else None
        tokens, position_ids, mask, labels, loss_mask = make_batch(document_mask=True)
        torch.manual_seed(99)  # the same dropout stream for every mode
        losses = model(tokens, position_ids, mask, labels=labels)
        loss = (losses * loss_mask).sum() / loss_mask.sum()
        if partitioned is not None:
            from deepspeed.runtime.activation_checkpointing import checkpointing

            # Between forward and backward: DeepSpeed frees its buffers after the backward.
            evidence["contiguous_buffers"] = len(checkpointing.contiguous_data_buffers)
        loss.backward()
        if partitioned is not None:
            partitioned.restore()
        result = full_params_and_grads(model)
        result.update(losses=losses.detach(), calls=[calls[i] for i in range(len(calls))],
                      evidence=evidence)
        return result if torch.distributed.get_rank() == 0 else None
    finally:
        if ds_options is not None:
            _configure_deepspeed(DS_OFF)
            tensor_parallel.use_own_rng_tracker()
        parallel_state.destroy_model_parallel()


def _tracker_is_deepspeeds():
    from deepspeed.runtime.activation_checkpointing import checkpointing

    return tensor_parallel.get_cuda_rng_tracker() is checkpointing.get_cuda_rng_tracker()


def _count_calls(model, *, selective):
    calls = {}
    for index, layer in enumerate(model.language_model.encoder.layers):
        target = layer.self_attention.core_attention if selective else layer
        calls[index] = 0

        def hook(module, inputs, output, index=index):
            calls[index] += 1
        target.register_forward_hook(hook)
    return calls


class _PartitionRecorder:
    """Wraps DeepSpeed's partitioning to record the sizes of what it keeps for backward."""

    def __init__(self, evidence):
        from deepspeed.runtime.activation_checkpointing import checkpointing

        self.module = checkpointing
        self.original = checkpointing.partition_activations
        evidence["partitioned"] = []

        def recording(args, cpu_checkpoint, contiguous_checkpoint):
            kept = self.original(args, cpu_checkpoint, contiguous_checkpoint)
            evidence["partitioned"].append(
                [(arg.numel(), part.numel(), str(part.device)) for arg, part in zip(args, kept)
                 if torch.is_tensor(arg) and arg.is_floating_point()])
            return kept
        checkpointing.partition_activations = recording

    def restore(self):
        self.module.partition_activations = self.original


def _record_partitions(evidence):
    return _PartitionRecorder(evidence)


_PLAIN = {}


def _plain(tp):
    if tp not in _PLAIN:
        _PLAIN[tp] = run_on_ranks(run_model, "plain", tp, world_size=tp)[0]
    return _PLAIN[tp]


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("mode", list(MODES))
def test_recompute_matches_plain_and_recomputes(mode, tp):
    plain = _plain(tp)
    got = run_on_ranks(run_model, mode, tp, world_size=tp)[0]
    assert plain["calls"] == [1, 1, 1, 1]
    assert got["calls"] == MODES[mode][2]
    assert torch.equal(got["losses"], plain["losses"])
    assert plain["grads"].keys() == got["grads"].keys()
    for name, grad in plain["grads"].items():
        assert torch.equal(got["grads"][name], grad), name
    evidence = got["evidence"]
    ds_options = MODES[mode][1]
    if ds_options is not None:
        assert evidence["tracker_is_deepspeed"]
        if ds_options["partition_activations"]:
            # Every checkpointed chunk kept 1/TP of its input hidden state.
            assert len(evidence["partitioned"]) == 4
            for entries in evidence["partitioned"]:
                full, kept, _ = entries[0]
                assert kept == full // tp
        else:
            assert evidence["partitioned"] == []  # DeepSpeed kept whole inputs
        assert (evidence["contiguous_buffers"] > 0) == ds_options["contiguous_checkpointing"]


def test_dropout_is_really_on():
    """The equality above would be vacuous without dropout: two draws must differ."""
    first = run_on_ranks(run_model, "plain", 1, world_size=1)[0]
    assert first["losses"].std() > 0
    assert not torch.equal(first["losses"], _plain_without_seed_reset())


def _plain_without_seed_reset():
    return run_on_ranks(run_model_other_seed, world_size=1)[0]


def run_model_other_seed():
    parallel_state.initialize_model_parallel(1, 1)
    try:
        tensor_parallel.model_parallel_cuda_manual_seed(1234)
        model = GPTModel(make_config("default", **DROPOUT))
        tokens, position_ids, mask, labels, _ = make_batch(document_mask=True)
        torch.manual_seed(100)  # another dropout stream
        return model(tokens, position_ids, mask, labels=labels).detach()
    finally:
        parallel_state.destroy_model_parallel()
