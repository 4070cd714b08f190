"""Test-wide settings."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # the suite's test problems are tiny: on 2 shared cores one thread is many
    # times faster than two (no thread hand-off per small kernel)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
