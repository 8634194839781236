"""Set up a pretraining run from a validated configuration and run it."""
import argparse
import contextlib
import functools
import time
from typing import Optional

from megatron.checkpointing import SaveHooks
from megatron.config.schema import TrainingConfig
from megatron.core.utils import print_rank_0
from megatron.training.context import RunContext
from megatron.training.evaluation import evaluate
from megatron.training.loop import train
from megatron.training.train_state import TrainState


def _device_type() -> str:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name()


def build_run(config: TrainingConfig, *, args: Optional[argparse.Namespace] = None,
              save_hooks: Optional[SaveHooks] = None) -> RunContext:
    """Tokenizer and data files (checked before the first collective), process groups, seeds,
    model, optimizer, engine, checkpoint and data loaders, in that order. `args` (the parsed
    flags) is stored in checkpoints as upstream does; `save_hooks` are the checkpoint
    fault-injection points tests use."""
    from megatron.checkpointing import Checkpointer, ModelFingerprint
    from megatron.training.layout_change import load_on_other_layout
    from megatron.config.scheduler_args import optimizer_param_scheduler_kwargs
    from megatron.training.data_iterators import build_data_iterators, check_data_inputs
    from megatron.training.engine import BatchOptions, TrainingEngine
    from megatron.initialize import initialize_distributed, set_random_seeds
    from megatron.training.model_builder import build_model
    from megatron.training.optimizer import build_optimizer, get_param_groups
    from megatron.training.optimizer_param_scheduler import OptimizerParamScheduler
    from megatron.training.timers import Timers
    from megatron.tokenizer import build_tokenizer

    start_time = time.monotonic()
    parallel = config.parallel
    data = config.data
    # Input files are read before the first collective: a bad one stops every rank alike, and
    # no rank waits in a rendezvous or a collective for one that has already left.
    tokenizer = build_tokenizer(
        data.tokenizer_type, vocab_file=data.vocab_file, merge_file=data.merge_file,
        tokenizer_model=data.tokenizer_model, vocab_size=data.vocab_size,
        make_vocab_size_divisible_by=data.make_vocab_size_divisible_by,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        trust_remote_code=data.trust_remote_code)
    check_data_inputs(config)
    with _rendezvous_error():
        initialize_distributed(tensor_model_parallel_size=parallel.tensor_model_parallel_size,
                               pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
                               ds_sequence_parallel_size=parallel.ds_sequence_parallel_size,
                               timeout_minutes=parallel.distributed_timeout_minutes,
                               backend=parallel.distributed_backend)
    checkpointing = config.activation_checkpointing
    if config.model.deepspeed_activation_checkpointing:
        from megatron.core import parallel_state
        from megatron.model.recompute import configure_deepspeed_checkpointing

        configure_deepspeed_checkpointing(
            mpu=parallel_state.get_mpu(), num_layers=config.model.num_layers,
            partition_activations=checkpointing.partition_activations,
            contiguous_checkpointing=checkpointing.contigious_checkpointing,
            checkpoint_in_cpu=checkpointing.checkpoint_in_cpu,
            synchronize_each_layer=checkpointing.synchronize_each_layer,
            profile_backward=checkpointing.profile_backward)
    set_random_seeds(config.seed)
    print_rank_0(f"> {_parallel_layout_summary(config)}")

    print_rank_0(f"> tokenizer {data.tokenizer_type}: vocab {tokenizer.vocab_size}, "
                 f"padded to {tokenizer.padded_vocab_size}")

    if _device_type() == "cpu":
        from megatron.training.cpu_allocator import retain_freed_memory

        retain_freed_memory()  # reuse the pages of each micro-batch's large tensors
    config = config.with_padded_vocab_size(tokenizer.padded_vocab_size)
    model = build_model(config)
    optimizer = build_optimizer(get_param_groups(model, weight_decay=config.optimizer.weight_decay),
                                config.optimizer, device_type=_device_type())
    scheduler = OptimizerParamScheduler(optimizer, **optimizer_param_scheduler_kwargs(config))
    engine = TrainingEngine(
        model, optimizer=optimizer, ds_config=config.ds_config, pipeline=parallel.pipeline_engine,
        batch_options=BatchOptions(eod_token=tokenizer.eod,
                                   reset_position_ids=data.reset_position_ids,
                                   reset_attention_mask=data.reset_attention_mask,
                                   eod_mask_loss=data.eod_mask_loss),
        log_params_norm=config.logging.log_params_norm,
        log_num_zeros_in_grad=config.logging.log_num_zeros_in_grad,
        timers=Timers(log_level=config.logging.timing_log_level,
                      log_option=config.logging.timing_log_option,
                      barrier_with_level_1=config.logging.barrier_with_L1_time))
    state = TrainState()
    writer = _scalar_writer(config, args)
    checkpointer = Checkpointer(engine=engine.engine, scheduler=scheduler, state=state,
                                config=config.checkpoint,
                                fingerprint=ModelFingerprint.of(config.model), args=args,
                                save_hooks=save_hooks, layout=_parallel_layout(config),
                                load_other_layout=functools.partial(
                                    load_on_other_layout, engine.engine, config.model,
                                    pipeline=parallel.pipeline_engine,
                                    vocab_size=tokenizer.vocab_size,
                                    make_vocab_size_divisible_by=data.make_vocab_size_divisible_by))
    checkpointer.recover_interrupted_saves()
    checkpointer.load()
    # The loaders start at the loaded consumed-samples count; the RNG states are restored
    # after everything that draws random numbers while being built.
    iterators = build_data_iterators(config, state)
    checkpointer.restore_rng()
    context = RunContext(config=config, engine=engine, scheduler=scheduler, state=state,
                         iterators=iterators,
                         writer=writer,
                         checkpointer=checkpointer, batch_sizes=_batch_sizes(config))
    if config.logging.profile is not None:
        import torch.distributed as dist
        from megatron.training.profiler import StepProfiler

        context.profiler = StepProfiler(config.logging, rank=dist.get_rank(),
                                        device_name=_device_type())
    context.on_iteration_end.append(
        _save_and_exit_hook(checkpointer, _exit_conditions(config, start_time), config))
    return context


@contextlib.contextmanager
def _rendezvous_error():
    """A process group that cannot start (e.g. its port taken) is one line naming
    MASTER_ADDR:MASTER_PORT, not a traceback."""
    import os

    import torch.distributed as dist
    from megatron.training.loop import TrainingError

    try:
        yield
    except dist.DistError as error:
        address = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        lines = str(error).strip().splitlines()
        reason = lines[0] if lines else type(error).__name__
        raise TrainingError(f"cannot start the process group at MASTER_ADDR:MASTER_PORT "
                            f"{address} ({reason}); is the port in use? give the launcher "
                            "another --master_port") from None


def _scalar_writer(config: TrainingConfig, args: Optional[argparse.Namespace]):
    """Tensorboard and/or wandb on the last rank (as upstream); None elsewhere or when off."""
    import torch.distributed as dist
    from megatron.training.log import ScalarWriters, TensorboardWriter

    logging = config.logging
    if not logging.writes_scalars or dist.get_rank() != dist.get_world_size() - 1:
        return None
    writers = []
    if logging.tensorboard_dir:
        writers.append(TensorboardWriter(logging.tensorboard_dir,
                                         queue_size=logging.tensorboard_queue_size))
    if logging.wandb:
        from megatron.checkpointing.safe_load import plain_args
        from megatron.training.wandb_writer import WandbWriter

        writers.append(WandbWriter(project=logging.wandb_project, name=logging.wandb_exp_name,
                                   save_dir=logging.wandb_save_dir,
                                   run_config=vars(plain_args(args)) if args is not None else {}))
    return writers[0] if len(writers) == 1 else ScalarWriters(writers)


def _parallel_layout(config: TrainingConfig):
    from megatron.checkpointing.layout import ParallelLayout

    parallel = config.parallel
    zero_partitions = parallel.zero_stage >= 1 or config.precision.dtype == "bf16"
    # DeepSpeed partitions over the sequence x data-parallel ranks (DeepSpeed-Ulysses ranks
    # hold the same weights), so that many optimizer files are written.
    partitions = parallel.data_parallel_size * parallel.ds_sequence_parallel_size
    return ParallelLayout(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        data_parallel_size=partitions if zero_partitions else 0,
        pipeline_engine=parallel.pipeline_engine)


def _batch_sizes(config: TrainingConfig):
    from megatron.core.num_microbatches_calculator import build_num_microbatches_calculator

    batch = config.batch
    return build_num_microbatches_calculator(
        global_batch_size=batch.global_batch_size, micro_batch_size=batch.micro_batch_size,
        data_parallel_size=config.parallel.data_parallel_size,
        rampup_batch_size=batch.rampup_batch_size)


def _exit_conditions(config: TrainingConfig, start_time: float):
    from megatron.training.exit_conditions import ExitConditions, TerminationSignalHandler

    schedule = config.schedule
    return ExitConditions(
        exit_interval=schedule.exit_interval, exit_duration_minutes=schedule.exit_duration_in_mins,
        signal_handler=TerminationSignalHandler() if schedule.exit_signal_handler else None,
        start_time=start_time)


def _save_and_exit_hook(checkpointer, exit_conditions, config: TrainingConfig):
    """After each iteration: save every --save-interval, and save before an early exit."""
    save_dir, save_interval = config.checkpoint.save, config.checkpoint.save_interval

    def hook(context: RunContext) -> bool:
        iteration = context.state.iteration
        reason = exit_conditions.reason_to_stop(iteration)
        if save_dir and (reason is not None or iteration % save_interval == 0):
            checkpointer.save(save_dir)
        if reason is not None:
            context.stop_reason = reason
            print_rank_0(f"> {reason}")
            return True
        return False

    return hook


def run(context: RunContext) -> TrainState:
    """Train (unless --skip-train), then evaluate on the validation and test splits. The
    tensorboard/wandb writers are closed however the run ends: the last points before a failure
    (a loss going non-finite) are the ones a user looks at."""
    try:
        return _train_and_evaluate(context)
    finally:
        if context.writer is not None:
            context.writer.close()


def _train_and_evaluate(context: RunContext) -> TrainState:
    config = context.config
    start = time.monotonic()
    if not config.schedule.skip_train and config.schedule.train_iters > 0:
        print_rank_0("> training ...")
        train(context)
        print_rank_0(f"> training done: {context.state.iteration} iterations in "
                     f"{time.monotonic() - start:.1f} s")
        save_dir = config.checkpoint.save
        if save_dir and context.state.iteration > 0:
            context.checkpointer.save(save_dir)  # a no-op when this iteration is saved
    if context.stop_reason is not None:
        return context.state  # stopped by an exit condition: leave now (short grace periods)
    if context.iterators.has_valid:
        evaluate(context, context.iterators.valid, prefix="the end of training for val data")
    if context.iterators.has_test:
        evaluate(context, context.iterators.test, prefix="the end of training for test data",
                 test=True)
    return context.state


def _parallel_layout_summary(config: TrainingConfig) -> str:
    parallel = config.parallel
    return (f"world size {parallel.world_size}: tensor parallel {parallel.tensor_model_parallel_size}"
            f" x pipeline parallel {parallel.pipeline_model_parallel_size}"
            f" x data parallel {parallel.data_parallel_size}"
            f"{_ulysses_summary(parallel.ds_sequence_parallel_size)}"
            f" ({'pipeline engine' if parallel.pipeline_engine else 'ZeRO engine, no pipeline'},"
            f" ZeRO stage {parallel.zero_stage}, {config.precision.dtype})")


def _ulysses_summary(ds_sequence_parallel_size: int) -> str:
    if ds_sequence_parallel_size == 1:
        return ""
    return f" x DeepSpeed-Ulysses sequence parallel {ds_sequence_parallel_size}"
