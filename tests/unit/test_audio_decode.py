"""service.audio.decode on real speech: every supported encoding, G.711 tables, errors, budgets, fuzz."""

from __future__ import annotations

import base64
import struct
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from devtools.clips import (
    RECIPES,
    SHORT_CLIP,
    Clip,
    Recipe,
    clip_bytes,
    encode_recipe,
    ffmpeg_decode_raw,
    g711_bytes,
    linear16_bytes,
    load_clip,
    silence_flac,
)
from devtools.sets import REPO_ROOT
from service.audio import decode as D
from service.errors import (
    AudioTooLong,
    EmptyAudio,
    InvalidBase64,
    MissingSampleRate,
    ServiceError,
    UndecodableAudio,
    UnsupportedEncoding,
)
from tests.conftest import needs_speech

MAX_S = 60.0
TIMEOUT_S = 10.0

# Every name in decode.SUPPORTED -> how the test produces bytes for it: a RECIPES key for containers
# and codecs, or ("raw", kind, rate) for headerless audio.
CASES: dict[str, str | tuple[str, str, int]] = {
    "AAC": "adts_aac",  # raw ADTS: the "aac" demuxer, after "mov" fails
    "M4A": "m4a_aac",
    "M4A_AAC": "m4a_aac",
    "MP4": "mp4_aac",
    "AMR": "amr_nb",
    "AMR_NB": "amr_nb",
    # No AMR-WB encoder in this FFmpeg build; AMR_WB goes to the same "amr" demuxer, which reads the
    # mode from the file's magic, so an AMR-NB file stated as AMR_WB must decode.
    "AMR_WB": "amr_nb",
    "FLAC": "flac",
    "MKV": "mkv_flac",
    "MP3": "mp3",
    "OGG": "ogg_opus",
    "OGG_OPUS": "ogg_opus",
    "OPUS": "ogg_opus",
    "OGG_VORBIS": "ogg_vorbis",
    "VORBIS": "ogg_vorbis",
    "WAV": "wav",
    "WAVE": "wav",
    "WEBM": "webm_opus",
    "WEBM_OPUS": "webm_opus",
    "LINEAR16": ("raw", "linear16", 16_000),
    "PCM_S16LE": ("raw", "linear16", 16_000),
    "PCM_S16BE": ("raw", "linear16be", 16_000),
    "MULAW": ("raw", "mulaw", 8_000),
    "ULAW": ("raw", "mulaw", 8_000),
    "ALAW": ("raw", "alaw", 8_000),
}
# Raw ADTS carries no priming/padding information, so decode at 44.1 kHz where the 1024-sample
# priming and the last frame's padding stay well under the 0.1 s tolerance.
ADTS_44K = Recipe("adts", "aac", 44_100)


@pytest.fixture(scope="module")
def clip() -> Clip:
    c = load_clip(SHORT_CLIP)
    assert c.sample_rate == 16_000 and 2.5 < c.duration_s < 3.5
    return c


def make_bytes(clip: Clip, case: str | tuple[str, str, int]) -> tuple[bytes, int | None, int]:
    """(bytes, sampleRate to state, expected decoded rate)."""
    if isinstance(case, tuple):
        _, kind, rate = case
        if kind == "linear16":
            return linear16_bytes(clip.samples), rate, rate
        if kind == "linear16be":
            return np.asarray(clip.samples, dtype=">i2").tobytes(), rate, rate
        return g711_bytes(clip.samples, clip.sample_rate, kind, rate), rate, rate
    recipe = ADTS_44K if case == "adts_aac" else RECIPES[case]
    return encode_recipe(clip.samples, clip.sample_rate, recipe), None, recipe.rate


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


# --- every supported encoding ---------------------------------------------------------------------


def test_cases_cover_every_supported_encoding() -> None:
    assert set(CASES) == set(D.SUPPORTED)


@pytest.mark.parametrize("encoding", sorted(CASES))
def test_every_supported_encoding_decodes_a_real_clip(clip: Clip, encoding: str) -> None:
    data, stated_rate, expected_rate = make_bytes(clip, CASES[encoding])
    out = D.decode(data, encoding, stated_rate, max_seconds=MAX_S, timeout_s=TIMEOUT_S)

    assert out.sample_rate == expected_rate
    assert out.samples.dtype == np.float32
    assert out.samples.ndim == 2 and out.samples.shape[0] in (1, 2)
    assert abs(out.duration_s - clip.duration_s) < 0.1, (out.duration_s, clip.duration_s)
    assert np.isfinite(out.samples).all()
    assert np.abs(out.samples).max() <= 1.0
    # It is the clip, not silence or garbage: loudness within 25 % of the original's.
    assert rms(out.samples[0]) == pytest.approx(rms(clip.as_float()), rel=0.25)


@pytest.mark.parametrize(
    ("encoding", "case"),
    [
        ("FLAC", "flac"),
        ("FLAC", "ogg_flac"),  # FLAC in Ogg: the second demuxer tried for FLAC
        ("MKV", "mkv_flac"),
        ("WAV", "wav"),
        ("LINEAR16", "wav"),  # LINEAR16 with a RIFF header: the header is honoured
        ("LINEAR16", ("raw", "linear16", 16_000)),
    ],
)
def test_lossless_encodings_are_bit_exact(
    clip: Clip, encoding: str, case: str | tuple[str, str, int]
) -> None:
    data, stated_rate, _ = make_bytes(clip, case)
    out = D.decode(data, encoding, stated_rate, max_seconds=MAX_S, timeout_s=TIMEOUT_S)
    assert out.samples.shape == (1, len(clip.samples))
    np.testing.assert_array_equal(out.samples[0], clip.as_float())


def test_original_eval_speech_file_bytes_decode_exactly(clip: Clip) -> None:
    out = D.decode(clip_bytes(SHORT_CLIP), "FLAC", None, max_seconds=MAX_S, timeout_s=TIMEOUT_S)
    assert out.sample_rate == 16_000
    np.testing.assert_array_equal(out.samples[0], clip.as_float())


def test_linear16_with_wav_header_needs_no_sample_rate(clip: Clip) -> None:
    data = encode_recipe(clip.samples, clip.sample_rate, "wav")
    out = D.decode(data, "LINEAR16", None, max_seconds=MAX_S, timeout_s=TIMEOUT_S)
    assert out.sample_rate == 16_000 and out.samples.shape == (1, len(clip.samples))


@pytest.mark.parametrize(
    ("variant", "canonical", "case"),
    [
        ("flac", "FLAC", "flac"),
        ("  Flac \n", "FLAC", "flac"),
        ("wave", "WAVE", "wav"),
        ("ogg/opus", "OGG_OPUS", "ogg_opus"),
        ("Ogg-Opus", "OGG_OPUS", "ogg_opus"),
        ("Ogg-Vorbis", "OGG_VORBIS", "ogg_vorbis"),
        ("ogg vorbis", "OGG_VORBIS", "ogg_vorbis"),
        ("webm/opus", "WEBM_OPUS", "webm_opus"),
        ("m4a-aac", "M4A_AAC", "m4a_aac"),
        ("aac", "AAC", "m4a_aac"),  # AAC in an MP4 box: the "mov" demuxer, tried first for AAC
        ("amr-nb", "AMR_NB", "amr_nb"),
        ("mp3", "MP3", "mp3"),
        ("Linear16", "LINEAR16", ("raw", "linear16", 16_000)),
        ("pcm-s16le", "PCM_S16LE", ("raw", "linear16", 16_000)),
        ("mulaw", "MULAW", ("raw", "mulaw", 8_000)),
        ("uLaw", "ULAW", ("raw", "mulaw", 8_000)),
        ("aLaw", "ALAW", ("raw", "alaw", 8_000)),
    ],
)
def test_encoding_names_are_case_and_separator_insensitive(
    clip: Clip, variant: str, canonical: str, case: str | tuple[str, str, int]
) -> None:
    assert D.normalise_encoding(variant) == canonical
    data, stated_rate, expected_rate = make_bytes(clip, case)
    out = D.decode(data, variant, stated_rate, max_seconds=MAX_S, timeout_s=TIMEOUT_S)
    ref = D.decode(data, canonical, stated_rate, max_seconds=MAX_S, timeout_s=TIMEOUT_S)
    assert out.sample_rate == ref.sample_rate == expected_rate
    np.testing.assert_array_equal(out.samples, ref.samples)


@pytest.mark.parametrize(
    ("encoding", "case"), [("WAV", "wav_stereo"), ("MP3", "mp3_stereo"), ("OGG", "ogg_vorbis")]
)
def test_stereo_is_kept_as_two_channels(clip: Clip, encoding: str, case: str) -> None:
    data = encode_recipe(clip.samples, clip.sample_rate, case)
    out = D.decode(data, encoding, None, max_seconds=MAX_S, timeout_s=TIMEOUT_S)
    assert out.samples.shape[0] == 2
    assert out.sample_rate == RECIPES[case].rate
    assert abs(out.duration_s - clip.duration_s) < 0.1
    # Both channels carry the (same) speech.
    np.testing.assert_allclose(out.samples[0], out.samples[1], atol=0.05)
    assert rms(out.samples[1]) > 0.5 * rms(clip.as_float())


def test_8khz_flac_keeps_its_rate_and_samples(clip: Clip) -> None:
    data = encode_recipe(clip.samples, clip.sample_rate, "flac8k")
    out = D.decode(data, "FLAC", None, max_seconds=MAX_S, timeout_s=TIMEOUT_S)
    assert out.sample_rate == 8_000
    assert out.samples.shape == (1, len(clip.samples) // 2)


def test_raw_sample_rate_sets_duration(clip: Clip) -> None:
    data = linear16_bytes(clip.samples)
    out = D.decode(data, "LINEAR16", 8_000, max_seconds=MAX_S, timeout_s=TIMEOUT_S)
    assert out.sample_rate == 8_000
    assert out.duration_s == pytest.approx(2 * clip.duration_s)


# --- G.711 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("law", "table"), [("mulaw", "_ULAW"), ("alaw", "_ALAW")])
def test_g711_tables_match_ffmpeg_for_all_256_codes(law: str, table: str) -> None:
    codes = bytes(range(256))
    ffmpeg = ffmpeg_decode_raw(codes, law, 8_000)
    ours = getattr(D, table)
    assert ours.shape == (256,) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ffmpeg)
    # And through decode() itself, with the code order preserved.
    encoding = "MULAW" if law == "mulaw" else "ALAW"
    out = D.decode(codes, encoding, 8_000, max_seconds=MAX_S, timeout_s=TIMEOUT_S)
    np.testing.assert_array_equal(out.samples[0], ffmpeg)


@pytest.mark.parametrize("law", ["mulaw", "alaw"])
def test_g711_real_speech_round_trip(clip: Clip, law: str) -> None:
    data = g711_bytes(clip.samples, clip.sample_rate, law, 16_000)
    out = D.decode(data, law.upper(), 16_000, max_seconds=MAX_S, timeout_s=TIMEOUT_S)
    np.testing.assert_array_equal(out.samples[0], ffmpeg_decode_raw(data, law, 16_000))
    # G.711 is ~8 bits of log-companded precision: the waveform is close to the original.
    err = out.samples[0] - clip.as_float()
    assert 10 * np.log10(rms(clip.as_float()) ** 2 / rms(err) ** 2) > 25.0


# --- errors -------------------------------------------------------------------------------------------


def test_b64decode_round_trip(clip: Clip) -> None:
    raw = clip_bytes(SHORT_CLIP)
    assert D.b64decode(base64.b64encode(raw).decode()) == raw
    assert D.b64decode("  " + base64.b64encode(b"abc").decode() + "\n") == b"abc"


@pytest.mark.parametrize("content", ["not base64!", "Q", "QUJ", "QUJ=D", "=QUJD", "QU$D", "ÄÖÜ=", "QUJD\x00"])
def test_invalid_base64(content: str) -> None:
    with pytest.raises(InvalidBase64) as err:
        D.b64decode(content)
    assert err.value.status == 400


@pytest.mark.parametrize("content", ["", "   ", "\n"])
def test_empty_base64(content: str) -> None:
    with pytest.raises(EmptyAudio):
        D.b64decode(content)


@pytest.mark.parametrize(("encoding", "rate"), [("FLAC", None), ("LINEAR16", 16_000), ("MULAW", 8_000)])
def test_empty_bytes(encoding: str, rate: int | None) -> None:
    with pytest.raises(EmptyAudio) as err:
        D.decode(b"", encoding, rate, max_seconds=MAX_S, timeout_s=TIMEOUT_S)
    assert err.value.status == 400


@pytest.mark.parametrize("encoding", ["SPEEX", "WMA", "mp3x", "", "ogg+opus"])
def test_unknown_encoding(clip: Clip, encoding: str) -> None:
    # Headerless samples: nothing in the bytes says what they are, so the name must.
    with pytest.raises(UnsupportedEncoding) as err:
        D.decode(linear16_bytes(clip.samples), encoding, 16_000, max_seconds=MAX_S, timeout_s=TIMEOUT_S)
    assert err.value.status == 400
    assert "FLAC" in err.value.message and "LINEAR16" in err.value.message


@pytest.mark.parametrize("encoding", ["LINEAR16", "PCM_S16LE", "MULAW", "ULAW", "ALAW"])
def test_raw_without_sample_rate(clip: Clip, encoding: str) -> None:
    with pytest.raises(MissingSampleRate) as err:
        D.decode(linear16_bytes(clip.samples), encoding, None, max_seconds=MAX_S, timeout_s=TIMEOUT_S)
    assert err.value.status == 400


@pytest.mark.parametrize("rate", [0, 1, 3_999, 384_001, 10_000_000])
def test_raw_sample_rate_out_of_range(clip: Clip, rate: int) -> None:
    with pytest.raises(UndecodableAudio):
        D.decode(linear16_bytes(clip.samples), "LINEAR16", rate, max_seconds=1e9, timeout_s=TIMEOUT_S)


@needs_speech
def test_truncated_flac() -> None:
    data = clip_bytes(SHORT_CLIP)[:200]
    with pytest.raises(UndecodableAudio) as err:
        D.decode(data, "FLAC", None, max_seconds=MAX_S, timeout_s=TIMEOUT_S)
    assert err.value.status == 400


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("encoding", ["WAV", "FLAC", "MP3", "OGG", "OGG_VORBIS", "WEBM", "M4A", "AMR"])
def test_random_bytes_are_undecodable(encoding: str, seed: int) -> None:
    data = np.random.default_rng(seed).integers(0, 256, 8192, dtype=np.uint8).tobytes()
    with pytest.raises(UndecodableAudio):
        D.decode(data, encoding, None, max_seconds=MAX_S, timeout_s=TIMEOUT_S)


def test_odd_length_linear16() -> None:
    with pytest.raises(UndecodableAudio):
        D.decode(b"\x01\x02\x03", "LINEAR16", 16_000, max_seconds=MAX_S, timeout_s=TIMEOUT_S)


@pytest.mark.parametrize(
    ("encoding", "case"),
    [
        ("LINEAR16", ("raw", "linear16", 16_000)),
        ("MULAW", ("raw", "mulaw", 8_000)),
        ("ALAW", ("raw", "alaw", 8_000)),
        ("FLAC", "flac"),
        ("WAV", "wav"),
        ("MP3", "mp3"),
        ("OGG_OPUS", "ogg_opus"),
        ("M4A", "m4a_aac"),
    ],
)
def test_audio_longer_than_max_seconds(clip: Clip, encoding: str, case: str | tuple[str, str, int]) -> None:
    data, stated_rate, _ = make_bytes(clip, case)
    with pytest.raises(AudioTooLong) as err:
        D.decode(data, encoding, stated_rate, max_seconds=2.0, timeout_s=TIMEOUT_S)
    assert err.value.status == 413
    # ... and the same bytes pass with room to spare.
    out = D.decode(data, encoding, stated_rate, max_seconds=3.2, timeout_s=TIMEOUT_S)
    assert out.duration_s <= 3.2


def wav_header(
    rate: int, *, channels: int = 1, bits: int = 16, payload: bytes = b"", data_len: int | None = None
) -> bytes:
    """A canonical 44-byte PCM WAV header (fields masked to their widths) followed by payload."""
    block = channels * bits // 8
    size = len(payload) if data_len is None else data_len
    fmt = struct.pack(
        "<IHHIIHH",
        16,
        1,
        channels & 0xFFFF,
        rate & 0xFFFFFFFF,
        (rate * block) & 0xFFFFFFFF,
        block & 0xFFFF,
        bits & 0xFFFF,
    )
    riff = (36 + size) & 0xFFFFFFFF
    return b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", size) + payload


@pytest.mark.parametrize("rate", [10_000_000, 0xFFFFFFFF, 1, 0])
def test_wav_header_with_absurd_sample_rate(clip: Clip, rate: int) -> None:
    data = wav_header(rate, payload=linear16_bytes(clip.samples))
    with pytest.raises(ServiceError) as err:
        D.decode(data, "WAV", None, max_seconds=MAX_S, timeout_s=TIMEOUT_S)
    assert 400 <= err.value.status < 500


@pytest.mark.parametrize("encoding", ["WAV", "LINEAR16"])
def test_wav_header_with_absurd_length(clip: Clip, encoding: str) -> None:
    payload = linear16_bytes(clip.samples)
    data = wav_header(16_000, payload=payload, data_len=0xFFFFFFF0)  # claims ~37 hours
    # What is really there (2.97 s) decodes: the claimed length is not trusted or allocated.
    out = D.decode(data, encoding, None, max_seconds=MAX_S, timeout_s=TIMEOUT_S)
    np.testing.assert_array_equal(out.samples[0], clip.as_float())
    # With a budget below the real length, it is refused as too long.
    with pytest.raises(AudioTooLong) as err:
        D.decode(data, encoding, None, max_seconds=1.0, timeout_s=TIMEOUT_S)
    assert err.value.status == 413


@pytest.mark.parametrize("channels", [0, 1024, 65535])
def test_wav_header_with_absurd_channel_count(clip: Clip, channels: int) -> None:
    data = wav_header(16_000, channels=channels, payload=linear16_bytes(clip.samples))
    with pytest.raises(ServiceError) as err:
        D.decode(data, "WAV", None, max_seconds=MAX_S, timeout_s=TIMEOUT_S)
    assert 400 <= err.value.status < 500


def test_eight_or_more_channels_do_not_crash_the_process() -> None:
    """Regression: planar frames with 8+ channels made PyAV's to_ndarray read past AVFrame.data[]
    and segfault. Run in a child process so a regression fails this test, not the whole run."""
    code = textwrap.dedent(
        """
        import struct, numpy as np
        from service.audio.decode import decode
        from service.errors import TooManyChannels
        for ch in (8, 9, 12):
            x = (np.arange(4000 * ch) % 2000 - 1000).astype("<i2")
            pay = x.tobytes()
            hdr = (b"RIFF" + struct.pack("<I", 36 + len(pay)) + b"WAVEfmt "
                   + struct.pack("<IHHIIHH", 16, 1, ch, 16000, 16000 * 2 * ch, 2 * ch, 16)
                   + b"data" + struct.pack("<I", len(pay)))
            try:
                out = decode(hdr + pay, "WAV", None, max_seconds=10, timeout_s=10)
            except TooManyChannels as exc:  # more than 8: refused whole, not cut to 8
                assert ch > 8 and exc.status == 400, ch
                continue
            ref = x.reshape(4000, ch).T.astype(np.float32) / 32768
            assert ch <= 8 and out.samples.shape == ref.shape, (ch, out.samples.shape)
            assert np.array_equal(out.samples, ref), ch
        print("ok")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.strip() == "ok"


def test_a_high_rate_many_channel_file_decodes_at_48_khz() -> None:
    """Eight channels at 384 kHz are 12 MB of float samples a second at their own rate: gigabytes
    for a long file, from a few kB of FLAC silence. They are decoded at 48 kHz."""
    rate, seconds = 384_000, 2
    tone = (1000 * np.sin(np.arange(rate * seconds) * 2 * np.pi * 440 / rate)).astype("<i2")
    payload = np.repeat(tone[:, None], 8, axis=1).tobytes()
    wav = wav_header(rate, channels=8, payload=payload)
    out = D.decode(wav, "WAV", None, max_seconds=MAX_S, timeout_s=TIMEOUT_S)
    assert out.sample_rate == D.MAX_DECODED_RATE == 48_000
    assert out.samples.shape[0] == 8 and abs(out.samples.shape[1] - 48_000 * seconds) <= 48
    assert abs(rms(out.samples[0]) - rms(tone / 32768)) < 0.01 * rms(tone / 32768)  # the tone survives


def test_decompression_bomb_stops_at_the_budget() -> None:
    data = silence_flac(600.0, 8_000)  # 10 minutes of digital silence
    assert len(data) < 300_000  # tiny next to the 9.6 MB of PCM it stands for
    with pytest.raises(AudioTooLong):
        D.decode(data, "FLAC", None, max_seconds=300.0, timeout_s=TIMEOUT_S)


def test_wall_clock_budget(clip: Clip) -> None:
    data = encode_recipe(clip.samples, clip.sample_rate, "mp3")
    with pytest.raises(UndecodableAudio, match="longer than"):
        D.decode(data, "MP3", None, max_seconds=MAX_S, timeout_s=1e-9)


# --- fuzz -----------------------------------------------------------------------------------------

FUZZ_CASES = {
    "WAV": "wav",
    "LINEAR16": "wav",
    "FLAC": "flac",
    "MP3": "mp3",
    "OGG_OPUS": "ogg_opus",
    "OGG_VORBIS": "ogg_vorbis",
    "WEBM": "webm_opus",
    "M4A": "m4a_aac",
    "AAC": "adts_aac",
    "AMR": "amr_nb",
}
FUZZ_MAX_S = 2.0
FUZZ_TIMEOUT_S = 2.0
_fuzz_blobs: dict[str, bytes] = {}


def fuzz_blob(encoding: str) -> bytes:
    """A real 1 s excerpt of speech, encoded once per encoding."""
    if encoding not in _fuzz_blobs:
        clip = load_clip(SHORT_CLIP)
        part = Clip(clip.path, clip.samples[8_000:24_000], clip.sample_rate)
        _fuzz_blobs[encoding], _, _ = make_bytes(part, FUZZ_CASES[encoding])
    return _fuzz_blobs[encoding]


position = st.floats(min_value=0.0, max_value=1.0)
mutation = st.one_of(
    st.tuples(st.just("truncate"), position),
    st.tuples(st.just("flip"), position, st.integers(min_value=0, max_value=7)),
    st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("overwrite"), position, st.binary(min_size=1, max_size=16)),
    # Header region, where a flip changes rates, sizes and channel counts.
    st.tuples(st.just("flip_head"), st.integers(min_value=0, max_value=63), st.integers(0, 7)),
)


def mutate(data: bytes, mutations: list[tuple[Any, ...]]) -> bytes:
    buf = bytearray(data)
    for op, where, *arg in mutations:
        if op == "flip_head":
            if where < len(buf):
                buf[where] ^= 1 << arg[0]
            continue
        at = min(int(where * len(buf)), max(len(buf) - 1, 0))
        if op == "truncate":
            del buf[at:]
        elif op == "flip" and buf:
            buf[at] ^= 1 << arg[0]
        elif op == "insert":
            buf[at:at] = arg[0]
        elif op == "overwrite":
            buf[at : at + len(arg[0])] = arg[0]
    return bytes(buf)


@needs_speech
@pytest.mark.parametrize("encoding", sorted(FUZZ_CASES))
@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(mutations=st.lists(mutation, min_size=1, max_size=6))
def test_fuzz_mutated_real_clip(encoding: str, mutations: list[tuple[Any, ...]]) -> None:
    data = mutate(fuzz_blob(encoding), mutations)
    try:
        out = D.decode(data, encoding, None, max_seconds=FUZZ_MAX_S, timeout_s=FUZZ_TIMEOUT_S)
    except ServiceError as exc:
        event(type(exc).__name__)
        assert 400 <= exc.status < 500, exc
        assert isinstance(exc.message, str) and exc.message
    else:
        event("decoded")
        samples = out.samples
        assert isinstance(samples, np.ndarray) and samples.dtype == np.float32
        assert samples.ndim == 2 and 1 <= samples.shape[0] <= 8 and samples.shape[1] > 0
        assert np.isfinite(samples).all()
        assert np.abs(samples).max() <= 1.0
        assert D.MIN_RATE <= out.sample_rate <= D.MAX_RATE
        assert out.duration_s <= FUZZ_MAX_S + 0.1


@needs_speech
def test_fuzz_mutate_changes_bytes() -> None:
    """The fuzz's mutations do what they say, so the fuzz is not testing the pristine file."""
    blob = fuzz_blob("FLAC")
    assert mutate(blob, [("truncate", 0.5)]) == blob[: len(blob) // 2]
    flipped = mutate(blob, [("flip", 0.0, 3)])
    assert flipped[0] == blob[0] ^ 8 and flipped[1:] == blob[1:]
    assert mutate(blob, [("insert", 1.0, b"xyz")]) == blob[:-1] + b"xyz" + blob[-1:]
    assert mutate(blob, [("flip_head", 5, 0)])[5] == blob[5] ^ 1


@pytest.mark.parametrize(("recipe", "name"), [("flac", "FLAC"), ("adts_aac", "AAC"), ("amr_nb", "AMR")])
def test_a_file_cut_short_gives_the_frames_before_the_cut(clip: Clip, recipe: str, name: str) -> None:
    """As FFmpeg's MP3, WAV and Ogg readers do by themselves: an upload one byte short is not lost
    whole. Only for bytes whose own signature names the demuxer (a wrong guess still falls through)."""
    data = encode_recipe(clip.samples, clip.sample_rate, recipe)
    whole = D.decode(data, name, None, max_seconds=MAX_S, timeout_s=TIMEOUT_S)
    for cut in (1, len(data) // 2):
        part = D.decode(data[:-cut], name, None, max_seconds=MAX_S, timeout_s=TIMEOUT_S)
        assert 0.3 * whole.duration_s < part.duration_s <= whole.duration_s
        n = part.samples.shape[1] - 2048  # the decoder's last frame before the cut may differ
        np.testing.assert_allclose(part.samples[:, :n], whole.samples[:, :n], atol=1e-6)
