"""torch_threads: the thread count inside, restored after, also after an error."""

from __future__ import annotations

import pytest
import torch

from lipbound.errors import InputError
from lipbound.runtime import torch_threads


def test_threads_are_set_and_restored():
    before = torch.get_num_threads()
    with torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(before + 1):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before


def test_bad_count_names_the_option():
    with pytest.raises(InputError, match="--workers-threads must be >= 1, got 0"):
        with torch_threads(0, "--workers-threads"):
            pass
