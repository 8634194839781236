"""Fixtures shared by whole-program test modules."""
import pytest

from tests.functional.launch import write_random_dataset
from tests.functional.zero_runs import straight_runner


@pytest.fixture(scope="session")
def zero_dataset(tmp_path_factory):
    return write_random_dataset(tmp_path_factory.mktemp("zero-data") / "random_text_document")


@pytest.fixture(scope="session")
def zero_straight_run(zero_dataset, tmp_path_factory):
    """case of zero_runs.CASES -> (checkpoint directory, output) of its uninterrupted run."""
    return straight_runner(zero_dataset, tmp_path_factory.mktemp)
