"""Freed heap memory goes back to the OS (see service/memory.py for why and what it measured)."""

from __future__ import annotations

import ctypes.util

import numpy as np
import pytest

from devtools.server import resident_bytes
from service import memory

pytestmark = pytest.mark.alone  # run with the machine to itself (scripts/test.sh)


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="no C library to trim")
def test_trim_returns_freed_fragmented_blocks() -> None:
    # Many mid-sized blocks freed out of order leave holes glibc keeps mapped until trimmed.
    blocks = [np.ones(64 * 1024 + 4096 * (i % 7), dtype=np.uint8) for i in range(4000)]
    keep = blocks[::50]
    del blocks
    before = resident_bytes()
    assert memory.trim_heap()
    after = resident_bytes()
    assert before - after > 50 * 1024 * 1024, (before, after)
    assert all(int(k[0]) == 1 for k in keep)
