"""Encoding names as clients really send them: MediaInfo's names, vague or wrong names on a container
the bytes identify, and sampleRate as a string. Real speech, FFmpeg's own encoders."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from devtools.clips import SHORT_CLIP, encode_recipe, linear16_bytes, load_clip
from service.api.convert import encoding_for, media_type
from service.api.schemas import CompatDiarizeRequest, CompatEnrollRequest, CompatIdentifyRequest
from service.audio import decode as D
from service.errors import UndecodableAudio, UnsupportedEncoding
from tests.conftest import needs_speech

MAX_S = 60.0
TIMEOUT_S = 10.0


def recipe_bytes(recipe: str) -> bytes:
    clip = load_clip(SHORT_CLIP)
    return encode_recipe(clip.samples, clip.sample_rate, recipe)


def decoded(data: bytes, encoding: str, rate: int | None = None) -> D.DecodedAudio:
    return D.decode(data, encoding, rate, max_seconds=MAX_S, timeout_s=TIMEOUT_S)


@needs_speech
@pytest.mark.parametrize(
    ("name", "canonical", "recipe"),
    [
        ("Wave", "WAV", "wav"),
        ("MPEG Audio", "MP3", "mp3"),
        ("Ogg", "OGG", "ogg_opus"),
        ("Opus", "OPUS", "ogg_opus"),
        ("Vorbis", "VORBIS", "ogg_vorbis"),
        ("FLAC", "FLAC", "flac"),
        ("MPEG-4", "M4A", "m4a_aac"),
        ("ADTS", "AAC", "adts_aac"),
        ("AMR", "AMR", "amr_nb"),
        ("WebM", "WEBM", "webm_opus"),
        ("Matroska", "MKV", "mkv_flac"),
        ("PCM", "LINEAR16", "wav"),  # MediaInfo's codec of a WAV file
    ],
)
def test_mediainfo_names(name: str, canonical: str, recipe: str) -> None:
    data = recipe_bytes(recipe)
    out, ref = decoded(data, name), decoded(data, canonical)
    assert out.sample_rate == ref.sample_rate
    np.testing.assert_array_equal(out.samples, ref.samples)


@needs_speech
def test_pcm_without_a_header_is_linear16() -> None:
    clip = load_clip(SHORT_CLIP)
    out = decoded(linear16_bytes(clip.samples), "pcm", 16_000)
    np.testing.assert_array_equal(out.samples[0], clip.as_float())


@needs_speech
@pytest.mark.parametrize(
    ("stated", "recipe", "true_name"),
    [
        ("MP3", "flac", "FLAC"),  # a wrong name: the FLAC signature is tried after the MP3 demuxer
        ("OGG", "wav", "WAV"),
        ("WAV", "ogg_opus", "OGG"),
        ("FLAC", "m4a_aac", "M4A"),
        ("LINEAR16", "flac", "FLAC"),  # a raw name on a container: the header wins
        ("MULAW", "wav", "WAV"),
        ("audio", "mp3", "MP3"),  # vague names: the bytes say what they are
        ("application/octet-stream", "adts_aac", "AAC"),
        ("", "webm_opus", "WEBM"),
        ("SPEEX", "flac", "FLAC"),
    ],
)
def test_the_container_is_recognised_from_the_bytes(stated: str, recipe: str, true_name: str) -> None:
    data = recipe_bytes(recipe)
    out, ref = decoded(data, stated, 8_000), decoded(data, true_name)
    assert out.sample_rate == ref.sample_rate
    np.testing.assert_array_equal(out.samples, ref.samples)


def test_a_vague_name_on_bytes_that_lie_is_refused() -> None:
    with pytest.raises(UnsupportedEncoding):
        decoded(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk", "SPEEX_MAGIC")
    with pytest.raises(UndecodableAudio):
        decoded(b"fLaC" + bytes(4000), "MP3")


@pytest.mark.parametrize(
    ("sent", "read"), [("8000", 8000), (" 16000 ", 16000), ("44100.0", 44100), (8000.0, 8000)]
)
def test_sample_rate_may_be_a_string(sent: object, read: int) -> None:
    body = CompatEnrollRequest.model_validate(
        {"content": "AAAA", "encoding": "FLAC", "sampleRate": sent, "speakerId": "a"}
    )
    assert body.sampleRate == read


@pytest.mark.parametrize("sent", ["8 kHz", "8000.5", "-8000", "", 0])
def test_a_sample_rate_that_is_no_rate_is_ignored_for_a_container_and_refused_for_raw(sent: object) -> None:
    body = {"content": "AAAA", "sampleRate": sent, "speakerId": "a"}
    for container in ("FLAC", "Wave", "audio", ""):
        assert CompatEnrollRequest.model_validate({**body, "encoding": container}).sampleRate is None
    for raw in ("MULAW", "linear16", "PCM"):
        with pytest.raises(ValidationError):
            CompatEnrollRequest.model_validate({**body, "encoding": raw})


def test_missing_encoding_and_language_mean_recognise_the_bytes_and_en_us() -> None:
    for absent in ({}, {"encoding": None, "languageCode": None}):
        body = CompatEnrollRequest.model_validate({"content": "AAAA", "speakerId": "a", **absent})
        assert (body.encoding, body.languageCode) == ("", "en-US")


def _without_id3(data: bytes) -> bytes:
    assert data[:3] == b"ID3"
    size = (data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9]  # syncsafe
    return data[10 + size :]


@needs_speech
@pytest.mark.parametrize(
    ("stated", "recipe"),
    [("WAV", "mp3"), ("FLAC", "mp3"), ("MP3", "adts_aac"), ("WAV", "adts_aac"), ("M4A", "adts_aac")],
)
def test_a_wrong_known_name_on_bare_frames_falls_back_to_their_header(stated: str, recipe: str) -> None:
    data = recipe_bytes(recipe)
    if data[:3] == b"ID3":
        data = _without_id3(data)
    assert D.sniff(data) is None and D.sniff(data, weak=True) is not None
    out, ref = decoded(data, stated), decoded(data, "")
    np.testing.assert_array_equal(out.samples, ref.samples)


@needs_speech
def test_big_endian_pcm_as_audio_l16_sends_it() -> None:
    clip = load_clip(SHORT_CLIP)
    big = np.asarray(clip.samples, dtype=">i2").tobytes()
    out = decoded(big, "PCM_S16BE", 16_000)
    np.testing.assert_array_equal(out.samples[0], clip.as_float())


@pytest.mark.parametrize(
    ("content_type", "name"),
    [
        ("audio/flac", "FLAC"),
        ("audio/L16; rate=8000; channels=1", "PCM_S16BE"),
        ("application/octet-stream", ""),
        ("audio/x-caf", ""),
        ("text/plain", None),
        ("multipart/form-data; boundary=x", None),
    ],
)
def test_a_raw_bodys_content_type_names_its_encoding(content_type: str, name: str | None) -> None:
    assert encoding_for(content_type) == name


def test_content_type_parameters() -> None:
    parsed = media_type('Audio/L16; rate="8000" ;channels=1')
    assert parsed == ("audio/l16", {"rate": "8000", "channels": "1"})


@pytest.mark.parametrize("model", [CompatIdentifyRequest, CompatDiarizeRequest])
def test_url_and_content_are_exclusive(model: type[CompatIdentifyRequest]) -> None:
    model.model_validate({"content": "AAAA", "encoding": "FLAC"})
    model.model_validate({"url": "https://example.com/a.flac", "encoding": "FLAC"})
    for both_or_neither in ({"content": "AAAA", "url": "https://example.com/a.flac"}, {}):
        with pytest.raises(ValidationError, match="exactly one of content and url"):
            model.model_validate({**both_or_neither, "encoding": "FLAC"})
