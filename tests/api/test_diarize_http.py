"""Sync diarization over real HTTP with the real model on real speech: who speaks when, found from
the audio, enrolled voices named by the identify rule, bad input answered with a fault."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from devtools.clips import encode_recipe, load_clip
from tests.conftest import LiveServer, b64, flac_body, needs_speech, new_key

pytestmark = [needs_speech, pytest.mark.model]

DIARIZE = "/audio/generic/api/v1/sync/diarize"
ALICE = [  # ls-367
    "librispeech/test-other/367/367-130732-0002.flac",
    "librispeech/test-other/367/367-130732-0003.flac",
    "librispeech/test-other/367/367-130732-0005.flac",
]
# alice (held out, 9.8 s), a reader nobody enrolled (14.1 s), alice again (4.3 s); 1 s pauses.
TURNS = [
    "librispeech/test-other/367/367-130732-0007.flac",
    "librispeech/impostors-train-clean-100/103-1240-0000.flac",
    "librispeech/test-other/367/367-130732-0008.flac",
]
PAUSE_S = 1.0


@pytest.fixture(scope="module")
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with live.client(new_key(live.settings, "diarize-acme")) as c:
        for path in ALICE:
            answer = c.post("/v1/speakers/alice/enrollments", json=flac_body(path))
            assert answer.status_code == 201, answer.text
        yield c


@pytest.fixture(scope="module")
def call() -> tuple[dict[str, Any], list[float]]:
    """The three turns joined with pauses, as a diarize body, and where each turn starts."""
    pause = np.zeros(int(PAUSE_S * 16000), dtype=np.int16)
    parts, starts, t = [], [], 0.0
    for path in TURNS:
        clip = load_clip(path)
        parts += [clip.samples, pause]
        starts.append(t)
        t += clip.duration_s + PAUSE_S
    joined = np.concatenate(parts)
    body = {"content": b64(encode_recipe(joined, 16000, "flac")), "encoding": "FLAC", "sampleRate": 16000}
    return body, starts


def diarize(client: httpx.Client, body: dict[str, Any], **extra: Any) -> dict[str, Any]:
    answer = client.post(DIARIZE, json={"languageCode": "en-US", "audioType": "callcenter", **body, **extra})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_speakers_are_found_and_numbered_in_order(client: httpx.Client, call: Any) -> None:
    body, starts = call
    found = diarize(client, body, speakers=-1)
    assert found["num_speakers"] == 2
    segments = found["segments"]
    assert [s["speaker_id"] for s in segments] == ["speaker_1", "speaker_2", "speaker_1"], segments
    # Each turn starts where its clip does, or a little later: LibriSpeech clips open with up to
    # about half a second of silence, which the segments leave out.
    for segment, start in zip(segments, starts, strict=True):
        assert start - 0.1 <= segment["start"] <= start + 1.0, segments
    assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(segments))


def test_enrolled_voice_carries_its_id(client: httpx.Client, call: Any) -> None:
    body, _ = call
    found = diarize(client, body, speakerIds=["alice"])
    assert [s["speaker_id"] for s in found["segments"]] == ["alice", "speaker_1", "alice"]
    assert found["num_speakers"] == 2


def test_a_given_count_is_obeyed(client: httpx.Client, call: Any) -> None:
    body, _ = call
    assert diarize(client, body, speakers=1)["num_speakers"] == 1
    three = diarize(client, body, speakers=3, doVad=True)
    assert three["num_speakers"] == 3


def test_vad_leaves_the_pauses_out(client: httpx.Client, call: Any) -> None:
    body, _ = call
    joined = diarize(client, body)["segments"]
    apart = diarize(client, body, doVad=True)["segments"]
    assert len(apart) >= len(joined)
    speech = sum(s["end"] - s["start"] for s in apart)
    assert speech <= sum(s["end"] - s["start"] for s in joined)


@pytest.mark.parametrize(
    ("extra", "status", "code"),
    [
        ({"url": "https://example.org/call.flac"}, 400, "request.Invalid"),
        ({"speakers": 0}, 400, "request.Invalid"),
        ({"speakers": -2}, 400, "request.Invalid"),
        ({"speakerIds": ["nobody"]}, 404, "speaker.NotFound"),
        ({"content": "not base64!!"}, 400, "audio.InvalidBase64"),
    ],
)
def test_bad_requests_get_a_fault(
    client: httpx.Client, call: Any, extra: dict[str, Any], status: int, code: str
) -> None:
    body, _ = call
    answer = client.post(DIARIZE, json={**body, **extra})
    assert answer.status_code == status, answer.text
    assert answer.json()["fault"]["detail"]["errorcode"] == code


def test_url_alone_is_refused_clearly(client: httpx.Client) -> None:
    answer = client.post(DIARIZE, json={"url": "https://example.org/call.flac", "encoding": "FLAC"})
    assert answer.status_code == 400
    assert "SPK_EGRESS__ALLOWED_HOSTS" in answer.json()["fault"]["faultstring"]
    neither = client.post(DIARIZE, json={"encoding": "FLAC"})
    assert neither.status_code == 400 and "exactly one" in neither.json()["fault"]["faultstring"]


def test_a_key_is_needed(live: LiveServer, call: Any) -> None:
    body, _ = call
    with live.client() as anonymous:
        assert anonymous.post(DIARIZE, json=body).status_code == 401
