"""Ranks share the checksum work and all see the same result as one process computes."""
from tests.harness import run_on_ranks


def _checksums_and_damage(directory, names):
    from megatron.checkpointing.integrity import damaged_files, shared_checksums

    recorded = shared_checksums(directory, names)
    return recorded, damaged_files(directory, {**recorded, names[-1]: "crc32c:00000000"})


def test_shared_checksums_equal_one_process(tmp_path):
    from megatron.checkpointing.integrity import file_checksum

    names = [f"file_{i}.pt" for i in range(5)]
    for index, name in enumerate(names):
        (tmp_path / name).write_bytes(bytes([index]) * (1000 + index))
    expected = {name: file_checksum(str(tmp_path / name)) for name in names}
    results = run_on_ranks(_checksums_and_damage, str(tmp_path), names, world_size=2)
    for recorded, damaged in results:  # rank 0 checked file_4; every rank sees the result
        assert recorded == expected
        assert damaged == [f"{tmp_path / names[-1]} (checksum {expected[names[-1]]}, "
                           f"recorded crc32c:00000000)"]
