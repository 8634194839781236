"""Test-only entry point: pretrain_gpt.py that writes, on every rank once its process groups
exist, where the launcher put it and which ranks share each of its groups, as one JSON file
per rank in the folder named by RANK_REPORT_DIR (files, not stdout: the launcher's ranks share
one pipe and their lines can interleave):

    rank2.json: {"rank": 2, "local_rank": 0, "node": 1, "tensor": [2, 3], ...}

Used by the multi-node test to check the launcher's ranks and the parallel groups; not part of
the product.
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    import pretrain_gpt
    import torch.distributed as dist
    from megatron import initialize
    from megatron.core import parallel_state

    original = initialize.initialize_distributed

    def initialize_and_report(**kwargs):
        original(**kwargs)
        groups = {"tensor": parallel_state.get_tensor_model_parallel_group(),
                  "pipeline": parallel_state.get_pipeline_model_parallel_group(),
                  "data": parallel_state.get_data_parallel_group()}
        report = {"rank": dist.get_rank(), "world": dist.get_world_size(),
                  "env_rank": int(os.environ["RANK"]), "local_rank": int(os.environ["LOCAL_RANK"]),
                  "node": int(os.environ.get("CROSS_RANK", "0")),
                  "launched_by": int(os.environ["RANK_REPORT_LAUNCHER"]),
                  **{name: dist.get_process_group_ranks(group) for name, group in groups.items()}}
        path = Path(os.environ["RANK_REPORT_DIR"]) / f"rank{report['rank']}.json"
        path.write_text(json.dumps(report))

    initialize.initialize_distributed = initialize_and_report  # build_run imports it when called
    return pretrain_gpt.main(sys.argv[1:])


if __name__ == "__main__":
    import pretrain_gpt

    pretrain_gpt.exit_process(main())  # as pretrain_gpt.py itself ends
