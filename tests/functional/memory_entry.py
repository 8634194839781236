"""Test-only entry point: pretrain_gpt.py that measures where each rank's memory goes.

Runs pretrain_gpt.main unchanged except that the first training iteration is observed:

- activations: bytes of the distinct tensors autograd saves for backward during the first
  micro batch's forward (storages counted once; parameters and their views excluded),
  measured with `torch.autograd.graph.saved_tensors_hooks`;
- gradients: bytes of the gradient buffers alive right after that micro batch's backward
  (`param.grad` and DeepSpeed's ZeRO bucket/partition buffers, storages counted once);
- parameters: bytes of the model's parameters (the module's tensors, shared ones once);
- optimizer state: after the first step (Adam creates its moments lazily), bytes of the
  inner torch optimizer's state tensors plus DeepSpeed's fp32 master partitions.

After every iteration each rank prints one line
``MEMORY_SPLIT {"rank": r, "iteration": i, "peak_rss": ..., ...}`` (JSON). Used by
tests/functional/test_memory_split.py and tests/bench/bench_memory.py; not part of the
product. Only the ZeRO engine path (--no-pipeline-parallel) measures activations and
gradients; the pipeline engine reports parameters and optimizer state.
"""
import json
import os
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# DeepSpeed optimizer wrappers keep fp32 master weights under these names.
_MASTER_ATTRIBUTES = ("single_partition_of_fp32_groups", "fp32_groups_flat_partition",
                      "fp32_groups_flat")
# ...and gradient buffers under these (ZeRO 1/2 buckets and partitions, bf16 optimizer).
_GRAD_ATTRIBUTES = ("averaged_gradients", "grads_in_partition", "fp32_groups_gradient_flat_partition",
                    "fp32_groups_gradients_flat")


def _tensors(value):
    """Every tensor in nested lists/tuples/dicts."""
    import torch

    if torch.is_tensor(value):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _storage_bytes(tensors, exclude=frozenset()) -> int:
    seen, total = set(), 0
    for tensor in tensors:
        if tensor is None or tensor.device.type == "meta":
            continue
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in seen or key in exclude or storage.nbytes() == 0:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def _optimizer_state_bytes(ds_optimizer) -> int:
    inner = getattr(ds_optimizer, "optimizer", ds_optimizer)
    tensors = list(_tensors(list(inner.state.values())))
    for name in _MASTER_ATTRIBUTES:
        tensors += list(_tensors(getattr(ds_optimizer, name, None)))
    # The master partitions are the inner optimizer's params: count state + masters, not grads.
    return _storage_bytes(t for t in tensors if t.numel() > 1)


def _grad_bytes(ds_optimizer, module) -> int:
    tensors = [p.grad for p in module.parameters() if p.grad is not None]
    tensors += [getattr(p, "grad_accum", None) for p in module.parameters()]
    for name in _GRAD_ATTRIBUTES:
        tensors += list(_tensors(getattr(ds_optimizer, name, None)))
    for bucket in (getattr(ds_optimizer, "ipg_buckets", None) or {}).values():
        tensors += list(_tensors(getattr(bucket, "buffer", None)))
    return _storage_bytes(t for t in tensors if t is not None)


def main() -> int:
    import torch

    import pretrain_gpt
    from megatron.training.engine import TrainingEngine

    rank = int(os.environ.get("RANK", "0"))
    original_step, original_loss = TrainingEngine.train_step, TrainingEngine._forward_loss
    measured = {"iteration": 0}

    def forward_loss(self, data_iterator):
        if "activations" in measured:
            return original_loss(self, data_iterator)
        param_ptrs = {p.untyped_storage().data_ptr() for p in self.module.parameters()}
        saved = []

        def pack(tensor):
            saved.append(tensor)
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = original_loss(self, data_iterator)
        measured["activations"] = _storage_bytes(saved, exclude=param_ptrs)
        del saved
        original_backward = self.engine.backward

        def backward(loss_, *args, **kwargs):
            result = original_backward(loss_, *args, **kwargs)
            measured.setdefault("gradients", _grad_bytes(self.engine.optimizer, self.module))
            measured.setdefault("peak_rss_before_step",
                                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
            self.engine.backward = original_backward
            return result

        self.engine.backward = backward
        return loss

    def train_step(self, data_iterator):
        result = original_step(self, data_iterator)
        measured["iteration"] += 1
        params = {id(p): p for p in self.module.parameters()}.values()
        report = {
            "rank": rank, "iteration": measured["iteration"],
            "num_parameters": sum(p.numel() for p in params),
            "parameters": sum(p.numel() * p.element_size() for p in params),
            "optimizer_state": _optimizer_state_bytes(self.engine.optimizer),
            "gradients": measured.get("gradients"), "activations": measured.get("activations"),
            "peak_rss_before_step": measured.get("peak_rss_before_step"),
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            # megatron.training.zero_grad_norm on the engine's ZeRO optimizer
            "chunked_grad_norm": "get_grad_norm_direct" in vars(self.engine.optimizer),
        }
        # One write() below PIPE_BUF: the lines of several ranks sharing a pipe never mix.
        sys.stdout.flush()
        os.write(1, ("\nMEMORY_SPLIT " + json.dumps(report) + "\n").encode())
        return result

    TrainingEngine.train_step, TrainingEngine._forward_loss = train_step, forward_loss
    return pretrain_gpt.main(sys.argv[1:])


if __name__ == "__main__":
    import pretrain_gpt

    pretrain_gpt.exit_process(main())  # as pretrain_gpt.py itself ends
