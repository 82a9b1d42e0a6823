"""Content fingerprints on real speech: copies of one recording match, other utterances do not."""

from __future__ import annotations

import numpy as np
import pytest

from devtools.clips import encode_recipe, load_clip
from service.audio.decode import DecodedAudio, decode
from service.audio.fingerprint import fingerprint, similarity
from service.audio.pipeline import to_mono_16k
from service.calibration import DUPLICATE_FINGERPRINT
from tests.conftest import needs_speech

pytestmark = needs_speech

SAME_SESSION = [
    "librispeech/test-other/367/367-130732-0002.flac",
    "librispeech/test-other/367/367-130732-0003.flac",
    "librispeech/test-other/367/367-130732-0005.flac",
    "vctk/p225/p225_003.wav",
    "vctk/p225/p225_011.wav",
]


def fp_of(data: bytes, encoding: str = "FLAC") -> bytes:
    wave, _ = to_mono_16k(decode(data, encoding, None, max_seconds=300, timeout_s=20))
    return fingerprint(wave)


def noisy(samples: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    x = samples.astype(np.float64)
    noise = np.random.default_rng(seed).standard_normal(len(x)) * np.sqrt(np.mean(x**2) / 10 ** (snr_db / 10))
    return np.asarray(np.clip(x + noise, -32768, 32767), dtype=np.int16)


@pytest.mark.parametrize("path", SAME_SESSION[:3])
def test_copies_of_one_recording_match(path: str) -> None:
    clip = load_clip(path)
    original = fp_of(encode_recipe(clip.samples, 16000, "flac"))
    copies = {
        "8 kHz FLAC": fp_of(encode_recipe(clip.samples, 16000, "flac8k")),
        "MP3": fp_of(encode_recipe(clip.samples, 16000, "mp3"), "MP3"),
        "noise at 20 dB": fp_of(encode_recipe(noisy(clip.samples, 20), 16000, "flac")),
        "half a second trimmed": fp_of(encode_recipe(clip.samples[8000:], 16000, "flac")),
        "half the gain": fp_of(encode_recipe((clip.samples // 2).astype(np.int16), 16000, "flac")),
    }
    for name, copy in copies.items():
        assert similarity(original, copy) >= DUPLICATE_FINGERPRINT, name
    assert similarity(original, original) == pytest.approx(1.0)


@pytest.mark.parametrize("path", SAME_SESSION[:3])
def test_copies_played_faster_slower_or_backwards_match(path: str) -> None:
    clip = load_clip(path)
    original = fingerprint(to_mono_16k(DecodedAudio(clip.as_float()[None, :], 16000))[0])
    for speed in (0.9, 0.95, 1.05, 1.1, 48000 / 44100, 44100 / 48000):
        # The same samples declared at another rate: played that much faster or slower.
        wave, _ = to_mono_16k(DecodedAudio(clip.as_float()[None, :], round(16000 * speed)))
        assert similarity(fingerprint(wave), original) >= DUPLICATE_FINGERPRINT, speed
    backwards = clip.as_float()[::-1].copy()
    wave, _ = to_mono_16k(DecodedAudio(backwards[None, :], 16000))
    assert similarity(fingerprint(wave), original) >= DUPLICATE_FINGERPRINT


def test_shared_digital_silence_is_no_match() -> None:
    silence = np.zeros(3 * 16000, dtype=np.float32)
    a, b = (np.concatenate([silence, load_clip(p).as_float()]) for p in SAME_SESSION[:2])
    assert similarity(fingerprint(a), fingerprint(b)) < DUPLICATE_FINGERPRINT


def test_different_utterances_of_one_speaker_do_not_match() -> None:
    prints = [
        fp_of(load_clip(p).path.read_bytes(), "WAV" if p.endswith(".wav") else "FLAC") for p in SAME_SESSION
    ]
    for i in range(len(prints)):
        for j in range(i + 1, len(prints)):
            assert similarity(prints[i], prints[j]) < DUPLICATE_FINGERPRINT, (
                SAME_SESSION[i],
                SAME_SESSION[j],
            )


def test_fingerprint_is_compact_and_short_clips_never_match() -> None:
    clip = load_clip(SAME_SESSION[0])
    blob = fp_of(encode_recipe(clip.samples, 16000, "flac"))
    assert len(blob) < 2.5 * clip.duration_s * 50  # 16 bits per 20 ms: 100 bytes per second
    short = fp_of(encode_recipe(clip.samples[:16000], 16000, "flac"))
    assert similarity(short, short) == 0.0  # under 2 s of overlap: no verdict
