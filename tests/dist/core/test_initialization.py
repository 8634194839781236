"""Layout-independent initialization: the TP=2 and TP=4 shards are exactly the slices of
the TP=1 parameters built with the same seed, whatever was built before. Layers built
without `init_key` (upstream-style) follow upstream's rule instead: full weights from the
default CPU generator, or shards from the model-parallel RNG stream."""
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


# Upstream-style calls (no init_key): upstream's rule, documented in `initialization`.

def _build_keyless(tp, use_cpu_initialization):
    """The three layers as upstream code builds them, plus what upstream's rule predicts."""
    from megatron.core.tensor_parallel import get_cuda_rng_tracker, model_parallel_cuda_manual_seed

    setup(tp)
    model_parallel_cuda_manual_seed(5)
    config = ModelParallelConfig(tensor_model_parallel_size=tp,
                                 use_cpu_initialization=use_cpu_initialization)
    torch.manual_seed(21)
    column = ColumnParallelLinear(IN, OUT, config=config, init_method=_init, stride=3,
                                  keep_master_weight_for_test=True)
    row = RowParallelLinear(OUT, IN, config=config, init_method=_init, bias=True,
                            input_is_parallel=False, skip_bias_add=False)
    embedding = VocabParallelEmbedding(VOCAB, IN, init_method=_init, config=config)
    built = {"column": column.weight.detach(), "row": row.weight.detach(),
             "embedding": embedding.weight.detach(), "master": column.master_weight}
    expected = {}
    if use_cpu_initialization:
        # The full weights, drawn one after the other from the default CPU generator.
        torch.manual_seed(21)
        for name, shape in (("column", (OUT, IN)), ("row", (IN, OUT)),
                            ("embedding", (VOCAB, IN))):
            expected[name] = torch.empty(shape)
            _init(expected[name])
    else:
        # Each shard drawn in place on the model-parallel stream of this TP rank.
        model_parallel_cuda_manual_seed(5)
        with get_cuda_rng_tracker().fork():
            for name, weight in built.items():
                if name != "master":
                    expected[name] = torch.empty_like(weight)
                    _init(expected[name])
    return built, expected


@pytest.mark.parametrize("tp", [1, 2])
def test_keyless_cpu_initialization_slices_upstreams_full_weights(tp):
    for rank, (built, full) in enumerate(run_on_ranks(_build_keyless, tp, True, world_size=tp)):
        per_block = OUT // (3 * tp)
        strided_rows = [b * per_block + i for b in range(rank, 3 * tp, tp)
                        for i in range(per_block)]
        assert torch.equal(built["column"], _rows(full["column"], strided_rows))
        assert torch.equal(built["master"], full["column"])
        cols = OUT // tp
        assert torch.equal(built["row"], full["row"][:, rank * cols:(rank + 1) * cols])
        vocab = VOCAB // tp
        assert torch.equal(built["embedding"], full["embedding"][rank * vocab:(rank + 1) * vocab])


@pytest.mark.parametrize("tp", [1, 2])
def test_keyless_device_initialization_uses_the_model_parallel_stream(tp):
    results = run_on_ranks(_build_keyless, tp, False, world_size=tp)
    for built, expected in results:
        assert built["master"] is None  # no full weight is drawn on this path
        for name, weight in expected.items():
            assert torch.equal(built[name], weight), name
    if tp == 2:
        assert not torch.equal(results[0][0]["column"], results[1][0]["column"])


def _keyed_ignores_global_rng(tp):
    setup(tp)
    config = ModelParallelConfig(tensor_model_parallel_size=tp, init_seed=77,
                                 use_cpu_initialization=True)
    weights = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        weights.append(ColumnParallelLinear(IN, OUT, config=config, init_method=_init,
                                            init_key="l0.qkv").weight.detach())
        torch.manual_seed(seed)
        keyless = ColumnParallelLinear(IN, OUT, config=config, init_method=_init)
        weights.append(keyless.weight.detach())
    return weights


@pytest.mark.parametrize("tp", [1, 2])
def test_keyed_init_ignores_the_global_generator_and_keyless_follows_it(tp):
    for keyed_1, keyless_1, keyed_2, keyless_2 in run_on_ranks(_keyed_ignores_global_rng, tp,
                                                               world_size=tp):
        assert torch.equal(keyed_1, keyed_2)
        assert not torch.equal(keyless_1, keyless_2)
