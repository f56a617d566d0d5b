"""Unit tests run torch on one thread: the tiny BERT gains nothing from more, and where cores are
shared (CI has two) threads that wait on one another at every operation slow training tests tenfold."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
