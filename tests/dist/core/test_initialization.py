"""Layout-independent initialization: the TP=2 and TP=4 shards are exactly the slices of
the TP=1 parameters built with the same seed, whatever was built before."""
import pytest
import torch

from megatron.core import ModelParallelConfig
from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    layout_independent_init,
)
from tests.dist.core.common import setup
from tests.harness import run_on_ranks

IN, OUT, VOCAB = 8, 24, 16


def _init(tensor):
    torch.nn.init.normal_(tensor, std=0.02)


def _build_weights(tp, use_cpu_initialization, consume_rng_first):
    setup(tp)
    config = ModelParallelConfig(tensor_model_parallel_size=tp, init_seed=77,
                                 use_cpu_initialization=use_cpu_initialization)
    if consume_rng_first:
        torch.manual_seed(tp * 1000)
        torch.rand(1000)
        ColumnParallelLinear(IN, OUT, config=config, init_method=_init, init_key="unrelated")
    column = ColumnParallelLinear(IN, OUT, config=config, init_method=_init, init_key="l0.qkv")
    strided = ColumnParallelLinear(IN, OUT, config=config, init_method=_init, stride=3,
                                   init_key="l0.qkv_strided")
    row = RowParallelLinear(OUT, IN, config=config, init_method=_init, init_key="l0.dense")
    embedding = VocabParallelEmbedding(VOCAB, IN, init_method=_init, config=config,
                                       init_key="embedding.word_embeddings")
    assert torch.count_nonzero(column.bias) == 0 and torch.count_nonzero(row.bias) == 0
    return {"column": column.weight.detach(), "strided": strided.weight.detach(),
            "row": row.weight.detach(), "embedding": embedding.weight.detach()}


def _rows(tensor, indices):
    return tensor[torch.tensor(indices)]


@pytest.mark.parametrize("tp", [2, 4])
def test_shards_are_slices_of_the_single_rank_model(tp):
    full = run_on_ranks(_build_weights, 1, True, False, world_size=1)[0]
    shards = run_on_ranks(_build_weights, tp, True, True, world_size=tp)
    out_per_rank, in_per_rank, vocab_per_rank = OUT // tp, OUT // tp, VOCAB // tp
    for rank, shard in enumerate(shards):
        rows = list(range(rank * out_per_rank, (rank + 1) * out_per_rank))
        assert torch.equal(shard["column"], _rows(full["column"], rows))
        assert torch.equal(shard["row"], full["row"][:, rank * in_per_rank:(rank + 1) * in_per_rank])
        vocab_rows = list(range(rank * vocab_per_rank, (rank + 1) * vocab_per_rank))
        assert torch.equal(shard["embedding"], _rows(full["embedding"], vocab_rows))
        # stride 3: the output rows form 3 * tp blocks; this rank owns blocks rank, rank + tp, ...
        block = OUT // (3 * tp)
        strided_rows = [b * block + i for b in range(rank, 3 * tp, tp) for i in range(block)]
        assert torch.equal(shard["strided"], _rows(full["strided"], strided_rows))
    # the full tensor is the public helper's draw for that name
    expected = layout_independent_init((OUT, IN), _init, seed=77, key="l0.qkv.weight")
    assert torch.equal(full["column"], expected)
    assert not torch.equal(full["column"], full["strided"])


def test_device_initialization_is_independent_of_build_order():
    first = run_on_ranks(_build_weights, 2, False, False, world_size=2)
    second = run_on_ranks(_build_weights, 2, False, True, world_size=2)
    for a, b in zip(first, second):
        for name in a:
            assert torch.equal(a[name], b[name]), name
    assert not torch.equal(first[0]["column"], first[1]["column"])  # ranks draw different shards
