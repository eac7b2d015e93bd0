"""The suite itself: a test cannot change the conditions of the tests after it."""

from __future__ import annotations

import torch

THREADS_AT_IMPORT = torch.get_num_threads()


def test_a_test_may_set_torchs_threads():
    from flowerfast.hardware.devices import use_threads

    assert use_threads(1) == 1 and torch.get_num_threads() == 1


def test_and_the_next_test_has_them_back():
    """Runs after the test above (pytest keeps a file's order): it fails if the thread count leaks."""
    assert torch.get_num_threads() == THREADS_AT_IMPORT
