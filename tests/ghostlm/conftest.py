"""Shared test setup for ghostlm.

The models under test are tiny; with several threads, OpenMP barriers dominate and a busy shared CPU makes
them crawl (measured: 33 s with 2 threads vs 10 s with 1 on a loaded 2-core box). Run single-threaded.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_thread_torch() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
