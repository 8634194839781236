"""Run GPTModelPipe through DeepSpeed's PipelineEngine on CPU (gloo) in fresh processes.

    python -m tests.dist.model.pipe_engine_worker --tp 2 --pp 2 --variant default --out DIR

spawns tp*pp ranks; each runs one `train_batch` (2 micro-batches) with an optimizer that
only records the gradients, and one `eval_batch`, and writes DIR/rank<r>.pt with the
losses and its stage's TP-gathered gradients under GPTModel names. Used by the slow test
in test_gpt_model_pipe_engine.py (DeepSpeed keeps module-level state, hence the fresh
processes).
"""
from __future__ import annotations

import argparse
import datetime
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

MICRO_BATCHES = 2


class GradRecorder(torch.optim.Optimizer):
    """An 'optimizer' whose step records the gradients and leaves the weights alone."""

    def __init__(self, params):
        super().__init__(params, {})
        self.recorded = {}

    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self.recorded[id(param)] = param.grad.detach().clone()


def micro_batches(document_mask: bool):
    from tests.dist.model.model_utils import make_batch

    batches = []
    for index in range(MICRO_BATCHES):
        tokens, position_ids, mask, labels, loss_mask = make_batch(seed=index,
                                                                   document_mask=document_mask)
        if mask is None:
            seq = tokens.shape[1]
            mask = torch.ones(seq, seq, dtype=torch.bool).triu(1).expand(
                tokens.shape[0], 1, seq, seq).contiguous()
        batches.append(((tokens, position_ids, mask), (labels, loss_mask)))
    return batches


# --recompute choices: TransformerConfig overrides.
RECOMPUTE = {
    "none": {},
    "legacy": dict(checkpoint_activations=True, checkpoint_num_layers=1),
    "deepspeed": dict(checkpoint_activations=True, checkpoint_num_layers=1,
                      deepspeed_activation_checkpointing=True),
    "block": dict(recompute_granularity="full", recompute_method="block", recompute_num_layers=1),
    "selective": dict(recompute_granularity="selective"),
}


def _count_layer_calls(pipe, *, selective: bool) -> dict:
    """Forward calls of each transformer layer's attention (layer_number -> count) on this
    stage (its core attention with selective recompute); filled as the engine runs."""
    from megatron.model.gpt_model_pipe import ParallelTransformerLayerPipe

    calls = {}
    for module in pipe.forward_funcs:
        if isinstance(module, ParallelTransformerLayerPipe):
            attention = module.self_attention
            target = attention.core_attention if selective else attention
            calls[module.layer_number] = 0

            def hook(_module, _inputs, _output, number=module.layer_number):
                calls[number] += 1
            target.register_forward_hook(hook)
    return calls


def _rank_main(rank: int, world_size: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "LOCAL_WORLD_SIZE": str(world_size), "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    import deepspeed

    from megatron.core import parallel_state, tensor_parallel
    from megatron.model.gpt_model_pipe import GPTModelPipe
    from tests.dist.model.model_utils import full_tensor, make_config, setup_parallel
    from tests.dist.model.test_gpt_model_pipe import pipe_to_gpt_name

    deepspeed.init_distributed(dist_backend="gloo")
    recompute = RECOMPUTE[args.recompute]
    if recompute.get("deepspeed_activation_checkpointing"):
        from megatron.model.recompute import configure_deepspeed_checkpointing

        parallel_state.initialize_model_parallel(args.tp, args.pp)
        configure_deepspeed_checkpointing(
            mpu=parallel_state.get_mpu(), num_layers=2, partition_activations=args.tp > 1,
            contiguous_checkpointing=False, checkpoint_in_cpu=False, synchronize_each_layer=False,
            profile_backward=False)
        tensor_parallel.model_parallel_cuda_manual_seed(1234)  # seeds DeepSpeed's tracker now
    else:
        setup_parallel(args.tp, args.pp)
    config = make_config(args.variant, tp=args.tp, pp=args.pp, **recompute)
    pipe = GPTModelPipe(config, partition_method=args.partition_method)
    layer_calls = _count_layer_calls(pipe, selective="recompute_granularity" in recompute
                                     and recompute["recompute_granularity"] == "selective")
    recorder = GradRecorder(pipe.parameters())
    engine, _, _, _ = deepspeed.initialize(
        model=pipe, optimizer=recorder,
        config={"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": MICRO_BATCHES,
                "train_batch_size": 2 * MICRO_BATCHES, "steps_per_print": 10 ** 9,
                "zero_optimization": {"stage": 0}, "gradient_clipping": 0.0})
    batches = micro_batches(args.document_mask)
    train_loss = engine.train_batch(data_iter=iter(batches))
    eval_loss = engine.eval_batch(data_iter=iter(batches))
    grads = {}
    for name, param in pipe.named_parameters():
        grad = recorder.recorded.get(id(param))
        if grad is None:
            raise RuntimeError(f"rank {rank}: no gradient recorded for {name}")
        grads[pipe_to_gpt_name(name, config.num_layers)] = full_tensor(param, grad)
    if parallel_state.get_tensor_model_parallel_rank() == 0:
        torch.save({"train_loss": torch.as_tensor(train_loss).detach().clone(),
                    "eval_loss": torch.as_tensor(eval_loss).detach().clone(),
                    "stage": parallel_state.get_pipeline_model_parallel_rank(),
                    "layer_calls": layer_calls,
                    "grads": grads}, os.path.join(args.out, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=2)
    parser.add_argument("--variant", default="default")
    parser.add_argument("--partition-method", default="parameters")
    parser.add_argument("--document-mask", action="store_true")
    parser.add_argument("--recompute", choices=sorted(RECOMPUTE), default="none")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    world_size = args.tp * args.pp
    mp.start_processes(_rank_main, args=(world_size, port, args), nprocs=world_size,
                       start_method="spawn", join=True)


if __name__ == "__main__":
    main()
