"""Shared test fixtures."""

from collections.abc import Iterator

import pytest
import torch

# One intra-op thread: the tests' tensors are tiny, and on a shared 2-core machine two threads per process
# oversubscribe the cores (seen: a tiny forward 25x slower with 2 threads under load).
torch.set_num_threads(1)


@pytest.fixture
def float64_default() -> Iterator[None]:
    """Run a test with float64 as torch's default dtype (hand-worked values), restoring it afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
