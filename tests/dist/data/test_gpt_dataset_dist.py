"""Rank 0 builds the index cache while the other ranks wait; failures reach every rank."""
import time

import numpy as np
import torch.distributed as dist

from megatron.data import gpt_dataset, indexed_dataset
from tests.harness import run_on_ranks

KWARGS = dict(splits_string="90,10,0", train_valid_test_num_samples=[60, 4, 0], seq_length=16,
              seed=99)


def _write_corpus(prefix):
    rng = np.random.default_rng(3)
    builder = indexed_dataset.MMapIndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for _ in range(30):
        builder.add_document(rng.integers(0, 50000, size=int(rng.integers(5, 80))))
    builder.finalize(prefix + ".idx")


def _build_with_slow_rank_0(prefix):
    original = gpt_dataset.build_index_arrays

    def slow(*args, **kwargs):
        time.sleep(1.0)  # rank 1 must not read the cache before this finishes
        return original(*args, **kwargs)

    gpt_dataset.build_index_arrays = slow
    try:
        train, _, _ = gpt_dataset.build_train_valid_test_datasets(data_prefix=[prefix], **KWARGS)
    finally:
        gpt_dataset.build_index_arrays = original
    return (dist.get_rank(), train.cache_built, np.array(train.doc_idx),
            np.array(train.sample_idx), np.array(train.shuffle_idx), train[3]["text"])


def _build_into_unwritable_cache(prefix, cache_path):
    try:
        gpt_dataset.build_train_valid_test_datasets(data_prefix=[prefix],
                                                    data_cache_path=cache_path, **KWARGS)
    except ValueError as error:  # pretrain_gpt.py turns it into its one-line error
        return str(error)
    return "no error"


def test_rank_0_builds_others_wait(tmp_path):
    prefix = str(tmp_path / "shared" / "corpus")
    (tmp_path / "shared").mkdir()
    _write_corpus(prefix)
    results = run_on_ranks(_build_with_slow_rank_0, prefix, world_size=2, timeout=120)
    assert [r[0] for r in results] == [0, 1]
    assert [r[1] for r in results] == [True, False]
    # Single-process reference: same corpus, built from scratch in another directory.
    reference_prefix = str(tmp_path / "reference" / "corpus")
    (tmp_path / "reference").mkdir()
    _write_corpus(reference_prefix)
    reference, _, _ = gpt_dataset.build_train_valid_test_datasets(data_prefix=[reference_prefix],
                                                                 **KWARGS)
    for rank_result in results:
        np.testing.assert_array_equal(rank_result[2], reference.doc_idx)
        np.testing.assert_array_equal(rank_result[3], reference.sample_idx)
        np.testing.assert_array_equal(rank_result[4], reference.shuffle_idx)
        np.testing.assert_array_equal(rank_result[5], reference[3]["text"])


def test_cache_failure_is_reported_on_every_rank(tmp_path):
    prefix = str(tmp_path / "corpus")
    _write_corpus(prefix)
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where the cache directory should go")
    messages = run_on_ranks(_build_into_unwritable_cache, prefix, str(blocker), world_size=2,
                            timeout=120)
    assert all("could not write the data index cache" in m for m in messages)
    assert "on another rank" in messages[1]
