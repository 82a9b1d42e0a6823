"""Bounded work per request, without the model: filtering in blocks."""

from __future__ import annotations

import numpy as np
import pytest

from service.audio.decode import DecodedAudio
from service.audio.pipeline import to_mono_16k


@pytest.mark.parametrize("rate", [8_000, 16_000, 44_100])
def test_filtering_in_blocks_gives_the_whole_clip_result(rate: int) -> None:
    rng = np.random.default_rng(rate)
    samples = (rng.standard_normal((2, int(rate * 23.4) + 5)) * 0.2 + 0.05).astype(np.float32)
    audio = DecodedAudio(samples, rate)
    whole, clipped_whole = to_mono_16k(audio, block_samples=10**12)
    blocks, clipped_blocks = to_mono_16k(audio, block_samples=rate * 5)
    assert blocks.shape == whole.shape and clipped_blocks == clipped_whole
    # float32 rounding of the IIR filter: the whole-clip result itself is this far from float64's
    np.testing.assert_allclose(blocks, whole, atol=5e-4)
