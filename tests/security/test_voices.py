"""One voice per voiceprint: two people on the two channels of a clip are not enrolled as one."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from tests.audio_fixtures import encode, load_clip
from tests.conftest import b64, flac_body, needs_speech

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
    body = answer.json()
    return str(body["fault"]["detail"]["errorcode"] if "fault" in body else body["error"]["code"])


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
