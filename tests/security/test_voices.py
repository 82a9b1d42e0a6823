"""One voice per voiceprint, one voiceprint per recording: two people on the two channels of a clip
are not enrolled as one, and a recording enrolled for one speaker of an account is refused for any
other (without saying which), while another account may still enroll it."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from devtools.clips import encode, encode_recipe, load_clip
from service.tools.client import parse_error
from tests.conftest import LiveServer, b64, flac_body, needs_speech, new_key

pytestmark = [needs_speech, pytest.mark.model]

ENROLL = "/audio/generic/api/v1/sync/diarization/enroll"
# A woman reading: three utterances of 11-16 s to complete her, more for later samples.
READER = [
    "librispeech/test-other/367/367-130732-0002.flac",
    "librispeech/test-other/367/367-130732-0003.flac",
    "librispeech/test-other/367/367-130732-0005.flac",
]
READER_LATER = "librispeech/test-other/367/367-130732-0007.flac"  # 9.8 s
READER_OTHER = "librispeech/test-other/367/367-130732-0004.flac"  # 5.9 s
OTHER_WOMAN = "vctk/p225/p225_021.wav"  # 8.2 s, a different woman
OTHER_MAN = "librispeech/test-other/2609/2609-156975-0004.flac"
SHORT = "librispeech/test-clean/237/237-134500-0001.flac"  # 1.81 s


def stereo_body(left: str, right: str, right_seconds: float | None = None) -> dict[str, Any]:
    """A 16 kHz stereo WAV with one clip on each channel (the right one cut to `right_seconds`; the
    shorter padded with silence)."""
    a, b = load_clip(left).samples, load_clip(right).samples[: int((right_seconds or 1e6) * 16_000)]
    n = max(len(a), len(b))
    both = np.zeros((2, n), dtype=np.int16)
    both[0, : len(a)], both[1, : len(b)] = a, b
    return {"content": b64(encode(both, 16_000, "wav", "pcm_s16le", 16_000, channels=2)), "encoding": "WAV"}


def samples_of(client: httpx.Client, speaker: str) -> int:
    count: int = client.get(f"/v1/speakers/{speaker}").json()["samples"]
    return count


def error_code(answer: httpx.Response) -> str:
    return parse_error(answer).code


@pytest.fixture(scope="module")
def reader(client: httpx.Client) -> str:
    """The reader, complete on three clips at 16 kHz."""
    answers = [client.post(ENROLL, json=flac_body(path, "reader")) for path in READER]
    assert answers[-1].json() == {"message": "Complete"}, [a.text for a in answers]
    return "reader"


# --- two voices in one clip ----------------------------------------------------------------------


def test_two_voices_on_two_channels_are_refused(client: httpx.Client, reader: str) -> None:
    """Another woman speaking for 4 s of the reader's 10, on the other channel: mixed, the clip passed
    the complete speaker's voice check and her voice went into the voiceprint."""
    two = stereo_body(READER_LATER, OTHER_WOMAN, right_seconds=4.0)
    answer = client.post(ENROLL, json={**two, "speakerId": reader})
    assert answer.status_code == 422, answer.text
    assert error_code(answer) == "audio.MultipleSpeakers"
    assert "different voices" in answer.json()["fault"]["faultstring"]
    assert samples_of(client, reader) == 3
    # Not a first sample either: nothing to compare with yet, the channels disagree all the same.
    fresh = client.post("/v1/speakers/duet/enrollments", json=stereo_body(OTHER_MAN, READER_LATER))
    assert fresh.status_code == 422 and error_code(fresh) == "audio.MultipleSpeakers", fresh.text
    assert client.get("/v1/speakers/duet").status_code == 404


def test_one_voice_on_both_channels_is_enrolled(client: httpx.Client, reader: str) -> None:
    answer = client.post(ENROLL, json={**stereo_body(READER_LATER, READER_LATER), "speakerId": reader})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"message": "Complete"}
    assert samples_of(client, reader) == 4


# --- one recording, one speaker ------------------------------------------------------------------


def test_a_recording_of_one_speaker_is_refused_for_another(client: httpx.Client, reader: str) -> None:
    again = client.post(ENROLL, json=flac_body(READER[0], "someone-else"))
    assert again.status_code == 409, again.text
    assert error_code(again) == "enrollment.DuplicateRecording"
    message = again.json()["fault"]["faultstring"]
    assert "another speaker of this account" in message and reader not in message
    assert client.get("/v1/speakers/someone-else").status_code == 404

    # Re-encoded for the telephone, on the native route: the same recording all the same.
    clip = load_clip(READER[1])
    phone = {"content": b64(encode_recipe(clip.samples, clip.sample_rate, "flac8k")), "encoding": "FLAC"}
    native = client.post("/v1/speakers/someone-else/enrollments", json=phone)
    assert native.status_code == 409, native.text
    assert native.json()["error"]["code"] == "enrollment.DuplicateRecording"
    assert reader not in native.json()["error"]["message"]


def test_a_recording_too_short_for_a_fingerprint_is_refused_for_another(client: httpx.Client) -> None:
    """1.81 s of audio (1.15 s of speech): fingerprints need 2 s in common, the vector says copy."""
    first = client.post(ENROLL, json=flac_body(SHORT, "short-first"))
    assert first.status_code == 200, first.text
    again = client.post("/v1/speakers/short-second/enrollments", json=flac_body(SHORT))
    assert again.status_code == 409 and again.json()["error"]["code"] == "enrollment.DuplicateRecording"
    assert client.get("/v1/speakers/short-second").status_code == 404


def test_another_account_may_enroll_the_same_recording(
    client: httpx.Client, live: LiveServer, reader: str
) -> None:
    before = samples_of(client, reader)
    with live.client(new_key(live.settings, "other-account")) as other:
        answer = other.post(ENROLL, json=flac_body(READER[0], reader))
        assert answer.status_code == 200 and answer.json() == {"message": "Success"}, answer.text
        # Within that account, the rule holds as in any other.
        again = other.post(ENROLL, json=flac_body(READER[0], "someone-else"))
        assert again.status_code == 409 and error_code(again) == "enrollment.DuplicateRecording"
    assert samples_of(client, reader) == before


def test_a_voice_close_to_another_speaker_is_flagged_without_naming_it(
    client: httpx.Client, reader: str
) -> None:
    twin = client.post("/v1/speakers/twin/enrollments", json=flac_body(READER_OTHER))
    assert twin.status_code == 201, twin.text
    assert twin.json()["warnings"] == ["voice very close to another enrolled speaker"]
    assert client.get("/v1/speakers/twin").json()["warnings"] == twin.json()["warnings"]
    assert reader not in twin.text

    stranger = client.post("/v1/speakers/stranger/enrollments", json=flac_body(OTHER_MAN))
    assert stranger.status_code == 201 and stranger.json()["warnings"] == [], stranger.text
    listed = client.get("/v1/speakers").json()["speakers"]
    assert {s["speakerId"]: s["warnings"] for s in listed}["twin"] is None  # not worked out in lists
    compat = client.post(ENROLL, json=flac_body(OTHER_WOMAN, "stranger-2"))
    assert compat.json() == {"message": "Success"}  # the compatible shape is unchanged
