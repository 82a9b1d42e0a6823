"""service.audio.pipeline on real speech: mixdown, resampling, silero-vad regions, SNR, clipping, check()."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from devtools.clips import (
    MEDIUM_CLIP,
    SHORT_CLIP,
    VCTK_CLIP,
    Clip,
    SetClip,
    encode,
    encode_recipe,
    load_clip,
    manifest,
    set_clips,
)
from devtools.sets import EVAL_TELEPHONE
from devtools.vad import ReferenceDetector, boundary_difference, service_wave
from service.audio import MODEL_RATE, pipeline
from service.audio import decode as D
from service.audio.decode import DecodedAudio
from service.audio.pipeline import (
    PreparedAudio,
    QualityLimits,
    SpeechDetector,
    distinct_channels,
    estimate_snr_db,
    prepare,
    to_mono_16k,
)
from service.calibration import VAD_NARROWBAND_THRESHOLD
from service.errors import ClippedAudio, InsufficientSpeech, NoisyAudio
from tests.conftest import needs_speech

LIMITS = QualityLimits(min_speech_seconds=1.0, max_clipped_fraction=0.01, min_snr_db=3.0)
# One or two utterances from each LibriSpeech subset. (About one LibriSpeech clip in eight, mostly
# the sub-3 s ones, has enough leading/trailing silence to fall under 70 % speech.)
LIBRISPEECH_CLIPS = [
    SHORT_CLIP,
    MEDIUM_CLIP,
    "librispeech/test-clean/237/237-126133-0001.flac",
    "librispeech/train-clean-100/19/19-198-0002.flac",
    "librispeech/test-other/1688/1688-142285-0006.flac",
    "librispeech/test-other/367/367-130732-0002.flac",
]


@pytest.fixture(scope="module")
def detector() -> SpeechDetector:
    return SpeechDetector()


@pytest.fixture(scope="module")
def clip() -> Clip:
    return load_clip(MEDIUM_CLIP)


def as_decoded(wave: np.ndarray, rate: int = 16_000) -> DecodedAudio:
    samples = np.asarray(wave, dtype=np.float32)
    return DecodedAudio(samples[None, :] if samples.ndim == 1 else samples, rate)


def run(wave: np.ndarray, detector: SpeechDetector, rate: int = 16_000) -> PreparedAudio:
    return prepare(as_decoded(wave, rate), detector)


def assert_regions_close(
    got: list[tuple[float, float]], want: list[tuple[float, float]], tol: float = 0.3
) -> None:
    assert len(got) == len(want), (got, want)
    for (gs, ge), (ws, we) in zip(got, want, strict=True):
        assert abs(gs - ws) <= tol and abs(ge - we) <= tol, (got, want)


# --- real speech ------------------------------------------------------------------------------------


@needs_speech
@pytest.mark.parametrize("path", LIBRISPEECH_CLIPS)
def test_real_clip_is_mostly_speech_with_good_snr(detector: SpeechDetector, path: str) -> None:
    c = load_clip(path)
    row = next(r for r in manifest() if r.path == path)
    assert c.duration_s == pytest.approx(row.duration_s, abs=0.01)

    p = run(c.as_float(), detector)
    assert p.source_rate == 16_000
    assert p.wave.dtype == np.float32 and p.wave.ndim == 1
    assert p.duration_s == pytest.approx(c.duration_s, abs=1e-3)
    assert p.speech_seconds > 0.7 * c.duration_s
    assert p.speech_seconds <= p.duration_s
    assert p.snr_db > 10.0
    assert p.clipped_fraction == 0.0
    # Regions are ordered, disjoint and inside the clip.
    bounds = [t for region in p.speech for t in region]
    assert bounds == sorted(bounds) and bounds[0] >= 0.0 and bounds[-1] <= p.duration_s + 1e-6
    p.check(LIMITS)  # a clean clip passes


@needs_speech
@pytest.mark.parametrize("path", [SHORT_CLIP, MEDIUM_CLIP, VCTK_CLIP])
def test_speech_regions_match_silero_on_the_raw_clip(detector: SpeechDetector, path: str) -> None:
    """The pipeline's filtering must not change what the VAD hears: regions from prepare() agree with
    silero run directly on the unfiltered 16 kHz clip."""
    c = load_clip(path)
    expected = detector.regions(c.as_float())
    assert sum(e - s for s, e in expected) > 0.7 * c.duration_s
    p = run(c.as_float(), detector)
    assert p.speech_seconds == pytest.approx(sum(e - s for s, e in expected), rel=0.05)
    assert_regions_close(p.speech, expected, tol=0.1)


@needs_speech
def test_speech_wave_length_is_the_sum_of_region_lengths(detector: SpeechDetector) -> None:
    for path in (SHORT_CLIP, MEDIUM_CLIP, VCTK_CLIP):
        p = run(load_clip(path).as_float(), detector)
        assert p.speech, path
        region_samples = [round(e * MODEL_RATE) - round(s * MODEL_RATE) for s, e in p.speech]
        sw = p.speech_wave()
        assert sw.dtype == np.float32 and sw.ndim == 1
        assert len(sw) == sum(region_samples)
        assert len(sw) == pytest.approx(p.speech_seconds * MODEL_RATE, abs=len(p.speech))
        # The joined wave is the regions' samples in order.
        first = p.segment(*p.speech[0])
        np.testing.assert_array_equal(sw[: len(first)], first)
        assert p.speech_wave() is sw  # cached


def test_segment_is_exact_on_sample_boundaries() -> None:
    """Region bounds are VAD sample indices / 16000; segment() must map them back exactly."""
    wave = np.arange(20 * MODEL_RATE, dtype=np.float32)
    p = PreparedAudio(wave=wave, source_rate=16_000, speech=[], clipped_fraction=0.0, snr_db=0.0)
    for start in range(0, 10 * MODEL_RATE, 997):
        end = start + 1001
        seg = p.segment(start / MODEL_RATE, end / MODEL_RATE)
        assert len(seg) == 1001 and seg[0] == start, start


def test_no_speech_gives_empty_speech_wave(detector: SpeechDetector) -> None:
    p = run(np.zeros(2 * MODEL_RATE, dtype=np.float32), detector)
    assert p.speech == []
    assert p.speech_wave().shape == (0,)
    assert p.speech_wave().dtype == np.float32


# --- mixdown and resampling ---------------------------------------------------------------------------


@pytest.mark.parametrize(("encoding", "case"), [("OGG_VORBIS", "ogg_vorbis"), ("MP3", "mp3_stereo")])
def test_stereo_input_is_mixed_down(detector: SpeechDetector, clip: Clip, encoding: str, case: str) -> None:
    decoded = D.decode(
        encode_recipe(clip.samples, clip.sample_rate, case), encoding, None, max_seconds=60, timeout_s=10
    )
    assert decoded.samples.shape[0] == 2
    p = prepare(decoded, detector)
    assert p.wave.ndim == 1
    assert len(p.wave) == pytest.approx(clip.duration_s * MODEL_RATE, abs=0.1 * MODEL_RATE)
    assert p.speech_seconds > 0.7 * clip.duration_s


def test_stereo_mixdown_is_the_channel_mean(detector: SpeechDetector, clip: Clip) -> None:
    x = clip.as_float()
    stereo = np.stack([x, np.zeros_like(x)])  # speech on the left only
    mixed = run(stereo, detector)
    ref = run(0.5 * x, detector)
    assert mixed.wave.shape == ref.wave.shape == (len(x),)
    np.testing.assert_allclose(mixed.wave, ref.wave, atol=1e-5)
    assert_regions_close(mixed.speech, ref.speech, tol=0.05)


@pytest.mark.parametrize(("encoding", "case"), [("OGG_VORBIS", "ogg_vorbis"), ("MP3", "mp3_stereo")])
def test_one_signal_on_every_channel_is_only_mixed(
    detector: SpeechDetector, clip: Clip, encoding: str, case: str
) -> None:
    decoded = D.decode(
        encode_recipe(clip.samples, clip.sample_rate, case), encoding, None, max_seconds=60, timeout_s=10
    )
    assert prepare(decoded, detector, channels=True).channel_speech == []
    left_only = DecodedAudio(np.stack([clip.as_float(), np.zeros_like(clip.as_float())]), clip.sample_rate)
    assert distinct_channels(left_only.samples) == [0]
    assert prepare(left_only, detector, channels=True).channel_speech == []


@needs_speech
def test_different_signals_on_two_channels_are_prepared_one_by_one(detector: SpeechDetector) -> None:
    a, b = load_clip(SHORT_CLIP).as_float(), load_clip(MEDIUM_CLIP).as_float()
    n = min(len(a), len(b))
    decoded = DecodedAudio(np.stack([a[:n], b[:n]]), MODEL_RATE)
    prepared = prepare(decoded, detector, channels=True)
    assert len(prepared.channel_speech) == 2
    for wave in prepared.channel_speech:
        assert 0.5 * n < len(wave) <= n
    assert prepare(decoded, detector).channel_speech == []  # only when asked for


def test_8khz_flac_becomes_16khz_with_twice_the_samples(detector: SpeechDetector, clip: Clip) -> None:
    decoded = D.decode(
        encode_recipe(clip.samples, clip.sample_rate, "flac8k"), "FLAC", None, max_seconds=60, timeout_s=10
    )
    assert decoded.sample_rate == 8_000
    n8 = decoded.samples.shape[1]
    p = prepare(decoded, detector)
    assert p.source_rate == 8_000
    assert len(p.wave) == 2 * n8
    assert p.duration_s == pytest.approx(clip.duration_s, abs=1e-3)
    assert p.speech_seconds > 0.7 * clip.duration_s


def test_44k_input_is_resampled_to_16k(clip: Clip) -> None:
    # 16 kHz -> 44.1 kHz by FFmpeg, then back by the pipeline: the original waveform returns.
    data = encode(clip.samples, clip.sample_rate, "wav", "pcm_s16le", 44_100)
    up = D.decode(data, "WAV", None, max_seconds=60, timeout_s=10)
    assert up.sample_rate == 44_100
    wave, clipped = to_mono_16k(up)
    ref, _ = to_mono_16k(as_decoded(clip.as_float()))
    assert clipped == 0.0
    assert len(wave) == pytest.approx(len(ref), abs=2)
    n = min(len(wave), len(ref))
    assert np.corrcoef(wave[:n], ref[:n])[0, 1] > 0.99


# --- check() failures ------------------------------------------------------------------------------------


def test_digital_silence_is_insufficient_speech(detector: SpeechDetector) -> None:
    p = run(np.zeros(3 * MODEL_RATE, dtype=np.float32), detector)
    assert p.speech_seconds == 0.0
    assert p.clipped_fraction == 0.0
    with pytest.raises(InsufficientSpeech) as err:
        p.check(LIMITS)
    assert err.value.status == 422
    assert "0.0 s of speech" in err.value.message


def test_half_a_second_of_speech_is_insufficient(detector: SpeechDetector, clip: Clip) -> None:
    full = run(clip.as_float(), detector)
    start, end = max(full.speech, key=lambda r: r[1] - r[0])
    assert end - start > 1.0
    mid = (start + end) / 2
    part = clip.as_float()[int((mid - 0.25) * MODEL_RATE) : int((mid + 0.25) * MODEL_RATE)]
    assert len(part) == MODEL_RATE // 2
    p = run(part, detector)
    assert 0.0 < p.speech_seconds <= 0.5  # it is speech, just too little of it
    with pytest.raises(InsufficientSpeech):
        p.check(LIMITS)
    p.check(QualityLimits(min_speech_seconds=0.2, max_clipped_fraction=1.0, min_snr_db=-99.0))


def test_clipped_clip_fails_with_clipped_audio(detector: SpeechDetector, clip: Clip) -> None:
    x = clip.as_float()
    gain = 1.0 / float(np.quantile(np.abs(x), 0.92))  # about 8 % of samples end up at full scale
    y = np.clip(x * gain, -1.0, 1.0)
    fraction = float(np.mean(np.abs(y) >= 0.999))
    assert fraction > 0.05
    p = run(y, detector)
    assert p.clipped_fraction == pytest.approx(fraction, abs=1e-3)
    assert p.speech_seconds >= LIMITS.min_speech_seconds  # the speech check passes first
    with pytest.raises(ClippedAudio) as err:
        p.check(LIMITS)
    assert err.value.status == 422


def test_clipping_counts_any_channel(detector: SpeechDetector, clip: Clip) -> None:
    x = clip.as_float()
    loud = np.clip(x * 1.0 / float(np.quantile(np.abs(x), 0.9)), -1.0, 1.0)
    p = run(np.stack([x, loud]), detector)
    assert p.clipped_fraction > 0.05
    with pytest.raises(ClippedAudio):
        p.check(LIMITS)


def test_loud_white_noise_fails_with_noisy_audio(detector: SpeechDetector, clip: Clip) -> None:
    x = clip.as_float()
    noise = np.random.default_rng(1234).standard_normal(len(x)).astype(np.float32)
    noise *= np.sqrt(np.mean(x**2) / 10 ** (-5.0 / 10))  # SNR -5 dB over the whole clip
    measured = 10 * np.log10(np.mean(x**2) / np.mean(noise**2))
    assert measured == pytest.approx(-5.0, abs=0.1)
    y = x + noise
    assert np.abs(y).max() < 0.999  # noisy, not clipped
    p = run(y, detector)
    assert p.speech_seconds >= LIMITS.min_speech_seconds
    assert p.clipped_fraction <= LIMITS.max_clipped_fraction
    assert p.snr_db < LIMITS.min_snr_db
    with pytest.raises(NoisyAudio) as err:
        p.check(LIMITS)
    assert err.value.status == 422
    # The clean clip scores far higher.
    assert run(x, detector).snr_db > p.snr_db + 10.0


def test_snr_falls_as_noise_rises(detector: SpeechDetector, clip: Clip) -> None:
    x = clip.as_float()
    rng = np.random.default_rng(7)
    white = rng.standard_normal(len(x)).astype(np.float32)
    snrs = []
    for snr_in in (30.0, 15.0, 5.0):
        noise = white * np.sqrt(np.mean(x**2) / 10 ** (snr_in / 10))
        snrs.append(run(x + noise, detector).snr_db)
    assert snrs[0] > snrs[1] > snrs[2]


# --- DC offset -------------------------------------------------------------------------------------------


@needs_speech
@pytest.mark.parametrize("path", [SHORT_CLIP, MEDIUM_CLIP, VCTK_CLIP])
def test_dc_offset_does_not_move_speech_regions(detector: SpeechDetector, path: str) -> None:
    x = load_clip(path).as_float()
    x *= 0.5 / np.abs(x).max()  # headroom for the offset
    clean = run(x, detector)
    n = len(x)
    offsets = {
        "constant": np.full(n, 0.4, dtype=np.float32),
        "negative": np.full(n, -0.4, dtype=np.float32),
        # Slow drift: the mean subtraction alone cannot remove it, the 40 Hz high-pass must.
        "drift": (0.3 * np.sin(2 * np.pi * 0.3 * np.arange(n) / MODEL_RATE)).astype(np.float32),
    }
    for name, dc in offsets.items():
        y = x + dc
        assert np.abs(y).max() < 0.999, name
        shifted = run(y, detector)
        assert_regions_close(shifted.speech, clean.speech, tol=0.3)
        assert shifted.speech_seconds == pytest.approx(clean.speech_seconds, abs=0.3), name
        assert shifted.clipped_fraction == 0.0
        assert shifted.snr_db > 10.0, name


def test_to_mono_16k_removes_dc(clip: Clip) -> None:
    x = clip.as_float()
    wave, clipped = to_mono_16k(as_decoded(x + 0.4))
    assert clipped == 0.0
    assert abs(float(wave.mean())) < 1e-3
    ref, _ = to_mono_16k(as_decoded(x))
    np.testing.assert_allclose(wave, ref, atol=1e-4)


# --- SNR estimator ----------------------------------------------------------------------------------------


def test_estimate_snr_edge_cases() -> None:
    assert estimate_snr_db(np.zeros(100, dtype=np.float32), [(0.0, 0.005)]) == 0.0  # under one frame
    assert estimate_snr_db(np.ones(16_000, dtype=np.float32), []) == 0.0  # no speech regions
    # A tone in the first half, silence after: capped at 99 dB rather than infinite.
    wave = np.zeros(2 * MODEL_RATE, dtype=np.float32)
    wave[:MODEL_RATE] = 0.5 * np.sin(2 * np.pi * 200 * np.arange(MODEL_RATE) / MODEL_RATE)
    assert estimate_snr_db(wave, [(0.0, 1.0)]) == 99.0
    # Tone over a -20 dB (power) noise floor -> about 20 dB.
    rng = np.random.default_rng(0)
    noisy = wave + rng.standard_normal(len(wave)).astype(np.float32) * np.sqrt(0.125 / 100)
    assert estimate_snr_db(noisy, [(0.0, 1.0)]) == pytest.approx(20.0, abs=1.0)


@needs_speech
def test_parallel_front_end_prepares_clips_at_once_with_one_detector_each() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from devtools.clips import clip_bytes
    from service.audio.frontend import AudioFrontEnd, AudioInput

    one = AudioFrontEnd(max_seconds=60, decode_timeout_s=10, vad_threshold=0.5)
    four = AudioFrontEnd(max_seconds=60, decode_timeout_s=10, vad_threshold=0.5, parallel=4)
    clips = [AudioInput(clip_bytes(p), "flac") for p in LIBRISPEECH_CLIPS]
    expected = [one.load(c).speech for c in clips]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda c: four.load(c).speech, clips * 3))
    assert got == expected * 3
    assert four._detectors.qsize() == 4  # every detector handed back


# --- the detector against silero's own loop ---------------------------------------------------------


# The 8 kHz network at the threshold measured on diarization half 0 (off by default).
NARROWBAND = 0.25


@pytest.fixture(scope="module")
def narrowband() -> SpeechDetector:
    return SpeechDetector(narrowband_threshold=NARROWBAND)


@pytest.fixture(scope="module")
def reference() -> ReferenceDetector:
    return ReferenceDetector(threshold=0.5, narrowband_threshold=NARROWBAND)


def telephone_clips(count: int) -> list[SetClip]:
    if not (EVAL_TELEPHONE / "manifest.csv").is_file():
        pytest.skip(f"telephone set not found at {EVAL_TELEPHONE}")
    return set_clips(EVAL_TELEPHONE)[:count]


@needs_speech
def test_regions_are_silero_loops_on_speech_and_telephone(
    narrowband: SpeechDetector, reference: ReferenceDetector
) -> None:
    """The batched detector finds the regions silero's per-window loop finds, to the sample, on
    studio speech and on real 8 kHz calls (resampled as the service does): both of silero's
    networks, the 8 kHz one for a narrowband source."""
    clips = [c for c in manifest() if c.path in [*LIBRISPEECH_CLIPS, VCTK_CLIP]] + telephone_clips(6)
    for clip in clips:
        wave, _, rate = service_wave(clip)
        for source_rate in sorted({MODEL_RATE, rate}):
            got = narrowband.regions(wave, source_rate=source_rate)
            want = reference.regions(wave, source_rate)
            assert want, clip.path
            step = 1 / min(source_rate, MODEL_RATE)
            assert boundary_difference(got, want) <= step, (clip.path, source_rate, got, want)


@needs_speech
def test_regions_do_not_depend_on_how_the_clip_is_cut_into_turns(
    detector: SpeechDetector, narrowband: SpeechDetector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The LSTM state and each window's context carry over from one turn on the compute thread to
    the next: cut into turns of 7 windows, the clip gives the regions it gives in one turn."""
    wave = np.concatenate([load_clip(p).as_float() for p in (MEDIUM_CLIP, SHORT_CLIP, VCTK_CLIP)])
    whole = detector.regions(wave)
    whole_narrowband = narrowband.regions(wave, source_rate=pipeline.NARROWBAND_RATE)
    turns: list[int] = []

    def counted(fn: Callable[..., Any], *args: Any) -> Any:
        turns.append(1)
        return fn(*args)

    monkeypatch.setattr(pipeline, "VAD_STEP_WINDOWS", 7)
    cut = detector.regions(wave, counted)
    assert len(turns) == -(-len(wave) // (7 * pipeline.VAD_WINDOW))
    assert len(whole) >= 2
    assert boundary_difference(cut, whole) <= 1 / MODEL_RATE
    # The 8 kHz network: half the samples per window, the same count of windows per second.
    turns.clear()
    narrow = narrowband.regions(wave, counted, pipeline.NARROWBAND_RATE)
    assert len(turns) == -(-len(wave[::2]) // (7 * pipeline.VAD_WINDOW // 2))
    assert len(whole_narrowband) >= 2
    assert boundary_difference(narrow, whole_narrowband) <= 1 / pipeline.NARROWBAND_RATE


@needs_speech
def test_narrowband_calls_go_to_the_8_khz_network_when_asked(
    detector: SpeechDetector, narrowband: SpeechDetector
) -> None:
    """With a narrowband threshold, `prepare` gives a real 8 kHz call's speech as silero's 8 kHz
    network hears it, which hears more of the callers than the 16 kHz network given the call
    upsampled (on all 206 calls, 1290 s against 1113 s; 6 calls under 0.5 s of speech against 13).
    By default the 16 kHz network hears every clip, whatever its source rate."""
    assert VAD_NARROWBAND_THRESHOLD is None and detector.narrowband_threshold is None
    heard = {"8 kHz network": 0.0, "16 kHz network": 0.0}
    for clip in telephone_clips(12):
        decoded = D.decode(clip.file.read_bytes(), clip.encoding, None, max_seconds=60, timeout_s=10)
        assert decoded.sample_rate == 8000
        wave, _ = to_mono_16k(decoded)
        narrow, wide = narrowband.regions(wave, source_rate=8000), detector.regions(wave)
        assert prepare(decoded, narrowband).speech == narrow, clip.path
        assert prepare(decoded, detector).speech == wide, clip.path
        heard["8 kHz network"] += sum(b - a for a, b in narrow)
        heard["16 kHz network"] += sum(b - a for a, b in wide)
    assert heard["8 kHz network"] > 1.05 * heard["16 kHz network"], heard


def test_empty_and_sub_window_input_give_no_regions(detector: SpeechDetector) -> None:
    assert detector.regions(np.zeros(0, dtype=np.float32)) == []
    assert detector.regions(np.zeros(100, dtype=np.float32)) == []
