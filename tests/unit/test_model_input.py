"""The model-input study's variants: regions widened within the clip, sessions as the sets define
them, the narrowband variants' bands."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from devtools.embeddings import widened
from devtools.model_input import noise_above_band, session_of, telephone_cut
from service.audio import MODEL_RATE
from service.audio.pipeline import PreparedAudio
from service.tools.inputs import ManifestRow

HERE = Path(__file__)


def _prepared(speech: list[tuple[float, float]], seconds: float = 4.0) -> PreparedAudio:
    wave = np.arange(int(seconds * MODEL_RATE), dtype=np.float32)
    return PreparedAudio(wave=wave, source_rate=MODEL_RATE, speech=speech, clipped_fraction=0.0, snr_db=20.0)


def test_widened_regions_stay_in_the_clip_and_merge_where_they_meet() -> None:
    p = _prepared([(0.1, 1.0), (1.4, 2.0), (3.5, 3.9)])
    out = widened(p, 0.3)
    # (0, 1.3) and (1.1, 2.3) meet: one span 0-2.3 s; (3.2, 4.0) is cut at the clip's end.
    assert len(out) == round(2.3 * MODEL_RATE) + round(0.8 * MODEL_RATE)
    assert out[0] == 0 and out[round(2.3 * MODEL_RATE)] == round(3.2 * MODEL_RATE)
    assert np.array_equal(widened(p, 0.0), p.speech_wave())
    assert len(widened(_prepared([]), 0.3)) == 0


def test_a_speech_limit_keeps_the_first_seconds_of_speech_each_with_its_context() -> None:
    p = _prepared([(0.5, 1.5), (2.5, 3.5)])
    # 1.5 s of speech: the first region whole and half of the second, each widened by 0.2 s.
    out = widened(p, 0.2, speech_limit_s=1.5)
    assert len(out) == round(1.4 * MODEL_RATE) + round(0.9 * MODEL_RATE)
    assert out[round(1.4 * MODEL_RATE)] == round(2.3 * MODEL_RATE)
    assert len(widened(p, 0.2, speech_limit_s=5.0)) == len(widened(p, 0.2))


def test_sessions_are_calls_chapters_or_the_speaker() -> None:
    call = ManifestRow(path=HERE, name="gg_1/abc_c0.wav", speaker="gg_1", extra={"session": "abc"})
    chapter = ManifestRow(path=HERE, name="librispeech/367/367-130732-0001.flac", speaker="ls-367")
    vctk = ManifestRow(path=HERE, name="vctk/p226/p226_003.flac", speaker="vctk-p226")
    assert session_of(call) == "abc"
    assert session_of(chapter) == "ls-367/130732"
    assert session_of(vctk) == "vctk-p226"


def test_narrowband_variants_touch_only_their_bands() -> None:
    t = np.arange(2 * MODEL_RATE) / MODEL_RATE
    tone = (0.1 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    spectrum = np.abs(np.fft.rfft(noise_above_band(tone, -30.0) - tone))
    freqs = np.fft.rfftfreq(len(tone), 1 / MODEL_RATE)
    assert spectrum[freqs > 4500].sum() > 50 * spectrum[freqs < 3500].sum()
    low = (0.1 * np.sin(2 * np.pi * 100 * t)).astype(np.float32)
    assert np.std(telephone_cut(low)) < 0.1 * np.std(low)
    assert np.std(telephone_cut(tone)) > 0.9 * np.std(tone)
