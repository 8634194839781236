"""Tensor-, pipeline-, sequence- and data-parallel process groups, derived from DeepSpeed's
topology.

The rank layout is DeepSpeed's `PipeModelDataParallelTopology` (axes pipe, data, model;
tensor-parallel ranks adjacent). `build_rank_groups` is the pure part: it builds that
topology once and reads every group's rank list from it, so the Megatron groups and
DeepSpeed's pipeline engine can never disagree. `initialize_model_parallel` turns the lists
into process groups; the getters answer for the calling rank.

DeepSpeed-Ulysses sequence parallelism (`--ds-sequence-parallel-size`) splits the
topology's data axis in two: consecutive ranks of it form a sequence-parallel group (the
same samples, different sequence chunks), and the ranks at the same position of every
sequence-parallel group form a data-parallel group (different samples). The whole axis is
DeepSpeed's "sequence-data-parallel" group, over which it reduces gradients and ZeRO
partitions the optimizer.
"""
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

import torch.distributed as dist

RankLists = Tuple[Tuple[int, ...], ...]


@dataclass(frozen=True)
class RankGroups:
    """Every group's rank list for one (world size, TP, PP, SP) layout."""

    world_size: int
    tensor_model_parallel_size: int
    pipeline_model_parallel_size: int
    data_parallel_size: int
    """world_size / (TP x PP x SP): the number of different micro batches per step."""
    tensor: RankLists
    """Ranks that split each layer (the topology's `model` axis)."""
    pipeline: RankLists
    """Ranks holding consecutive stages of one model replica (`pipe` axis)."""
    data: RankLists
    """Ranks holding the same model shard and reading different samples (the `data` axis,
    every SP-th rank of it)."""
    model: RankLists
    """All ranks of one model replica (TP x PP), one list per data-axis index."""
    embedding: RankLists
    """First and last stage of each pipeline (they share the word embeddings)."""
    ds_sequence_parallel_size: int = 1
    """Ranks that split each sample's sequence (`--ds-sequence-parallel-size`)."""
    sequence: RankLists = ()
    """Consecutive ranks of the `data` axis that hold chunks of the same samples."""
    sequence_data: RankLists = ()
    """The whole `data` axis (sequence x data parallel): where gradients are reduced."""
    topology: Any = field(default=None, compare=False, repr=False)
    """The DeepSpeed topology object the lists were read from."""

    def group_of(self, kind: str, rank: int) -> Tuple[int, ...]:
        """The `kind` ("tensor", "pipeline", ...) rank list that contains `rank`."""
        for ranks in getattr(self, kind):
            if rank in ranks:
                return ranks
        raise ValueError(f"rank {rank} is in no {kind} group of a world of {self.world_size}")


def _check_sizes(world_size: int, tensor_model_parallel_size: int,
                 pipeline_model_parallel_size: int, ds_sequence_parallel_size: int) -> None:
    sizes = (f"world_size={world_size}, tensor_model_parallel_size={tensor_model_parallel_size}, "
             f"pipeline_model_parallel_size={pipeline_model_parallel_size}, "
             f"ds_sequence_parallel_size={ds_sequence_parallel_size}")
    for value in (world_size, tensor_model_parallel_size, pipeline_model_parallel_size,
                  ds_sequence_parallel_size):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"parallel sizes must be integers >= 1 ({sizes})")
    if world_size % (tensor_model_parallel_size * pipeline_model_parallel_size
                     * ds_sequence_parallel_size):
        raise ValueError(f"world_size must be divisible by tensor_model_parallel_size x "
                         f"pipeline_model_parallel_size x ds_sequence_parallel_size ({sizes})")


def _split_sequence_data(axis_lists: RankLists, sequence_size: int
                         ) -> Tuple[RankLists, RankLists]:
    """(sequence groups, data groups) of each data-axis list: consecutive runs of
    `sequence_size` ranks, and the ranks at the same offset of every run."""
    sequence, data = [], []
    for ranks in axis_lists:
        sequence.extend(ranks[start:start + sequence_size]
                        for start in range(0, len(ranks), sequence_size))
        data.extend(ranks[offset::sequence_size] for offset in range(sequence_size))
    return tuple(sequence), tuple(data)


def build_rank_groups(world_size: int, tensor_model_parallel_size: int,
                      pipeline_model_parallel_size: int,
                      ds_sequence_parallel_size: int = 1) -> RankGroups:
    """Rank lists of every group, read from DeepSpeed's (pipe, data, model) topology."""
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    _check_sizes(world_size, tensor_model_parallel_size, pipeline_model_parallel_size,
                 ds_sequence_parallel_size)
    data_axis_size = world_size // (tensor_model_parallel_size * pipeline_model_parallel_size)
    topology = PipeModelDataParallelTopology(num_pp=pipeline_model_parallel_size,
                                             num_mp=tensor_model_parallel_size,
                                             num_dp=data_axis_size)

    def lists(axis: str) -> RankLists:
        return tuple(tuple(ranks) for ranks in topology.get_axis_comm_lists(axis))

    pipeline = lists("pipe")
    model = tuple(tuple(sorted(topology.filter_match(data=index)))
                  for index in range(data_axis_size))
    embedding = tuple((ranks[0], ranks[-1]) if len(ranks) > 1 else (ranks[0],)
                      for ranks in pipeline)
    sequence_data = lists("data")
    sequence, data = _split_sequence_data(sequence_data, ds_sequence_parallel_size)
    return RankGroups(
        world_size=world_size,
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        data_parallel_size=data_axis_size // ds_sequence_parallel_size,
        tensor=lists("model"), pipeline=pipeline, data=data, model=model,
        embedding=embedding, ds_sequence_parallel_size=ds_sequence_parallel_size,
        sequence=sequence, sequence_data=sequence_data, topology=topology)


@dataclass
class _ParallelState:
    """The calling rank's groups: rank lists plus the process-group handles."""

    rank_groups: RankGroups
    ranks: dict
    groups: dict
    created: List[Any]


_STATE: Optional[_ParallelState] = None
_KINDS = ("tensor", "pipeline", "data", "model", "embedding")
# Only created with sequence parallelism; without it they are the data group and no group.
_SEQUENCE_KINDS = ("sequence", "sequence_data")


def initialize_model_parallel(tensor_model_parallel_size: int = 1,
                              pipeline_model_parallel_size: int = 1,
                              ds_sequence_parallel_size: int = 1) -> None:
    """Create the process groups on every rank (collective: all ranks call it, same order).

    Groups use the default process group's backend: gloo on CPU, the accelerator's
    backend (NCCL, ...) when `deepspeed.init_distributed` set it up that way.
    """
    global _STATE
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("torch.distributed must be initialized before initialize_model_parallel "
                           "(deepspeed.init_distributed() does it)")
    if _STATE is not None:
        raise RuntimeError("model parallel groups are already initialized; "
                           "call destroy_model_parallel() first")
    rank_groups = build_rank_groups(dist.get_world_size(), tensor_model_parallel_size,
                                    pipeline_model_parallel_size, ds_sequence_parallel_size)
    rank = dist.get_rank()
    ranks, groups, created = {}, {}, []
    kinds = _KINDS + (_SEQUENCE_KINDS if ds_sequence_parallel_size > 1 else ())
    for kind in kinds:
        for members in getattr(rank_groups, kind):
            group = dist.new_group(ranks=list(members))
            if rank in members:
                ranks[kind], groups[kind] = members, group
                created.append(group)
    if ds_sequence_parallel_size == 1:
        # Every new_group call is a world-wide barrier: reuse rather than create copies.
        ranks["sequence"], groups["sequence"] = (rank,), None
        ranks["sequence_data"], groups["sequence_data"] = ranks["data"], groups["data"]
    _STATE = _ParallelState(rank_groups=rank_groups, ranks=ranks, groups=groups, created=created)


def destroy_model_parallel() -> None:
    """Forget (and free) the groups; safe to call when nothing is initialized."""
    global _STATE
    state, _STATE = _STATE, None
    if state is None or not dist.is_initialized():
        return
    for group in state.created:
        try:
            dist.destroy_process_group(group)
        except (RuntimeError, ValueError):
            pass  # already gone with the world group


def model_parallel_is_initialized() -> bool:
    """Whether initialize_model_parallel has run (and not been undone)."""
    return _STATE is not None


def _state() -> _ParallelState:
    if _STATE is None:
        raise RuntimeError("model parallel groups are not initialized; "
                           "call megatron.core.parallel_state.initialize_model_parallel first")
    return _STATE


def _ranks(kind: str) -> Tuple[int, ...]:
    return _state().ranks[kind]


def _rank_in(kind: str) -> int:
    return _ranks(kind).index(dist.get_rank())


def get_rank_groups() -> RankGroups:
    """The rank lists of the current layout."""
    return _state().rank_groups


def get_topology() -> Any:
    """DeepSpeed's topology object (for `PipelineModule(topology=...)`)."""
    return _state().rank_groups.topology


def get_tensor_model_parallel_group() -> Any:
    return _state().groups["tensor"]


def get_tensor_model_parallel_group_if_none(group: Optional[Any] = None) -> Any:
    """`group` itself, or the caller's tensor-parallel group when None (what layers and
    mappings fall back to when their caller passes no group)."""
    return get_tensor_model_parallel_group() if group is None else group


def get_tensor_model_parallel_world_size() -> int:
    return len(_ranks("tensor"))


def get_tensor_model_parallel_rank() -> int:
    return _rank_in("tensor")


def get_tensor_model_parallel_src_rank() -> int:
    """Global rank of tensor-parallel rank 0 in the caller's group."""
    return _ranks("tensor")[0]


def get_tensor_model_parallel_ranks() -> Tuple[int, ...]:
    return _ranks("tensor")


def get_pipeline_model_parallel_group() -> Any:
    return _state().groups["pipeline"]


def get_pipeline_model_parallel_world_size() -> int:
    return len(_ranks("pipeline"))


def get_pipeline_model_parallel_rank() -> int:
    return _rank_in("pipeline")


def get_pipeline_model_parallel_first_rank() -> int:
    return _ranks("pipeline")[0]


def get_pipeline_model_parallel_last_rank() -> int:
    return _ranks("pipeline")[-1]


def get_pipeline_model_parallel_next_rank() -> int:
    """Global rank of the next stage (wrapping around)."""
    ranks = _ranks("pipeline")
    return ranks[(_rank_in("pipeline") + 1) % len(ranks)]


def get_pipeline_model_parallel_prev_rank() -> int:
    """Global rank of the previous stage (wrapping around)."""
    ranks = _ranks("pipeline")
    return ranks[(_rank_in("pipeline") - 1) % len(ranks)]


def is_pipeline_first_stage(ignore_virtual: bool = False) -> bool:
    """Whether the caller is on pipeline stage 0 (no virtual stages here)."""
    return get_pipeline_model_parallel_rank() == 0


def is_pipeline_last_stage(ignore_virtual: bool = False) -> bool:
    """Whether the caller is on the last pipeline stage (no virtual stages here)."""
    return get_pipeline_model_parallel_rank() == get_pipeline_model_parallel_world_size() - 1


def get_data_parallel_group() -> Any:
    return _state().groups["data"]


def get_data_parallel_world_size() -> int:
    return len(_ranks("data"))


def get_data_parallel_rank() -> int:
    return _rank_in("data")


def get_data_parallel_group_ranks() -> List[int]:
    return list(_ranks("data"))


def get_sequence_parallel_group() -> Any:
    """Ranks holding chunks of the same samples (DeepSpeed-Ulysses); None when
    --ds-sequence-parallel-size is 1 (the caller alone: nothing to exchange)."""
    return _state().groups["sequence"]


def get_sequence_parallel_world_size() -> int:
    return len(_ranks("sequence"))


def get_sequence_parallel_rank() -> int:
    """Which chunk of the sequence the caller holds."""
    return _rank_in("sequence")


def get_sequence_data_parallel_group() -> Any:
    """Sequence x data-parallel ranks: every rank holding the same weights (the data
    group itself without sequence parallelism)."""
    return _state().groups["sequence_data"]


def get_sequence_data_parallel_world_size() -> int:
    return len(_ranks("sequence_data"))


def get_sequence_data_parallel_rank() -> int:
    return _rank_in("sequence_data")


def get_model_parallel_group() -> Any:
    """All ranks of the caller's model replica (TP x PP)."""
    return _state().groups["model"]


def get_embedding_group() -> Any:
    """First and last stage of the caller's pipeline; None on a middle stage."""
    return _state().groups.get("embedding")


def get_embedding_group_ranks() -> Tuple[int, ...]:
    """Ranks of the caller's embedding group; empty on a middle stage."""
    return _state().ranks.get("embedding", ())


def is_rank_in_embedding_group() -> bool:
    """Whether the caller holds a copy of the word embeddings (first or last stage)."""
    return "embedding" in _state().ranks


def check_model_parallel_sizes(*, tensor_model_parallel_size: int,
                               pipeline_model_parallel_size: int,
                               ds_sequence_parallel_size: int = 1) -> None:
    """Raise ValueError, naming the flags, when a model's configured sizes differ from the
    initialized groups (a config built for another layout would split wrongly)."""
    groups = get_rank_groups()
    mismatches = [
        f"--{flag} {configured} but the initialized groups have {initialized}"
        for flag, configured, initialized in (
            ("tensor-model-parallel-size", tensor_model_parallel_size,
             groups.tensor_model_parallel_size),
            ("pipeline-model-parallel-size", pipeline_model_parallel_size,
             groups.pipeline_model_parallel_size),
            ("ds-sequence-parallel-size", ds_sequence_parallel_size,
             groups.ds_sequence_parallel_size))
        if configured != initialized]
    if mismatches:
        raise ValueError("model config does not match the parallel groups: "
                         + "; ".join(mismatches))


class DeepSpeedMPU:
    """The model-parallel unit DeepSpeed expects (`deepspeed.initialize(mpu=...)`,
    `deepspeed.checkpointing.configure(mpu, ...)`).

    As in Megatron-DeepSpeed, "model parallel" means tensor parallel here; the pipeline
    engine brings its own grid (built from `get_topology()`), so this object is only used
    without pipeline parallelism, where the two coincide. It deliberately has no
    `initialize_sequence_parallel` (that would make ZeRO ignore the model-parallel group).
    """

    get_model_parallel_group = staticmethod(get_tensor_model_parallel_group)
    get_model_parallel_rank = staticmethod(get_tensor_model_parallel_rank)
    get_model_parallel_world_size = staticmethod(get_tensor_model_parallel_world_size)
    get_tensor_model_parallel_group = staticmethod(get_tensor_model_parallel_group)
    get_tensor_model_parallel_rank = staticmethod(get_tensor_model_parallel_rank)
    get_tensor_model_parallel_world_size = staticmethod(get_tensor_model_parallel_world_size)
    get_tensor_model_parallel_src_rank = staticmethod(get_tensor_model_parallel_src_rank)
    get_data_parallel_group = staticmethod(get_data_parallel_group)
    get_data_parallel_rank = staticmethod(get_data_parallel_rank)
    get_data_parallel_world_size = staticmethod(get_data_parallel_world_size)
    get_data_parallel_group_ranks = staticmethod(get_data_parallel_group_ranks)
    get_pipe_parallel_group = staticmethod(get_pipeline_model_parallel_group)
    get_pipe_parallel_rank = staticmethod(get_pipeline_model_parallel_rank)
    get_pipe_parallel_world_size = staticmethod(get_pipeline_model_parallel_world_size)
    get_pipeline_model_parallel_group = staticmethod(get_pipeline_model_parallel_group)
    get_pipeline_model_parallel_rank = staticmethod(get_pipeline_model_parallel_rank)
    get_pipeline_model_parallel_world_size = staticmethod(get_pipeline_model_parallel_world_size)
    # DeepSpeed reduces gradients and partitions ZeRO states over the sequence-data group,
    # dividing by its size / SP (the data-parallel size); without SP it is the data group.
    get_sequence_parallel_group = staticmethod(get_sequence_parallel_group)
    get_sequence_parallel_rank = staticmethod(get_sequence_parallel_rank)
    get_sequence_parallel_world_size = staticmethod(get_sequence_parallel_world_size)
    get_sequence_data_parallel_group = staticmethod(get_sequence_data_parallel_group)
    get_sequence_data_parallel_rank = staticmethod(get_sequence_data_parallel_rank)
    get_sequence_data_parallel_world_size = staticmethod(get_sequence_data_parallel_world_size)


def get_mpu() -> DeepSpeedMPU:
    """An object with DeepSpeed's mpu interface over the current groups."""
    _state()
    return DeepSpeedMPU()

