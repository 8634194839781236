"""Shared pytest fixtures: paths, the optional reference data, and pool shutdown."""
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


def pytest_sessionfinish(session, exitstatus):
    from tests.harness import shutdown_pools

    shutdown_pools()
