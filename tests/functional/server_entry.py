"""Test-only entry point: tools/run_text_generation_server.py with a process-group timeout
of SERVER_TIMEOUT_S seconds (the flag --distributed-timeout-minutes counts whole minutes,
too long to idle past in a test). SERVER_HEARTBEAT_S, when set, replaces the heartbeat
interval the tool derives from the timeout (a huge value shows what happens without one).
Not part of the product.
"""
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    spec = importlib.util.spec_from_file_location(
        "run_text_generation_server", ROOT / "tools" / "run_text_generation_server.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    args = tool.parse(sys.argv[1:])
    args.distributed_timeout_minutes = float(os.environ["SERVER_TIMEOUT_S"]) / 60.0
    heartbeat = os.environ.get("SERVER_HEARTBEAT_S")
    return tool.serve(args, heartbeat_s=float(heartbeat) if heartbeat else None)


if __name__ == "__main__":
    sys.exit(main())
