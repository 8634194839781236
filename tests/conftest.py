"""Shared pytest fixtures: paths, the optional reference data, tools as modules, and pool
shutdown."""
import importlib.util
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# Reference data beside the checkout (not part of the project): tests using it skip when absent.
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "corpus.jsonl").exists():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def plot_logs():
    """tools/plot_logs.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("tool_plot_logs",
                                                  REPO_ROOT / "tools" / "plot_logs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def pytest_sessionfinish(session, exitstatus):
    from tests.harness import shutdown_pools

    shutdown_pools()
