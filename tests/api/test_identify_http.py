"""Identification and verification over real HTTP with the real model on real speech."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from devtools.clips import encode_recipe, load_clip
from service.audio.pipeline import SpeechDetector
from service.tools.client import parse_error
from tests.conftest import LiveServer, b64, flac_body, needs_speech, new_key

pytestmark = [needs_speech, pytest.mark.model]

COMPAT = "/audio/generic/api/v1/sync/diarization"
ENROLLED = {
    "alice": [  # ls-367, F
        "librispeech/test-other/367/367-130732-0002.flac",
        "librispeech/test-other/367/367-130732-0003.flac",
        "librispeech/test-other/367/367-130732-0005.flac",
    ],
    "bob": [  # ls-2609, M
        "librispeech/test-other/2609/2609-156975-0002.flac",
        "librispeech/test-other/2609/2609-156975-0004.flac",
        "librispeech/test-other/2609/2609-156975-0006.flac",
    ],
    "carol": [  # vctk-p225, F
        "vctk/p225/p225_003.wav",
        "vctk/p225/p225_011.wav",
        "vctk/p225/p225_008.wav",
    ],
    "dave": [  # ls-26, M
        "librispeech/train-clean-100/26/26-495-0000.flac",
        "librispeech/train-clean-100/26/26-495-0001.flac",
        "librispeech/train-clean-100/26/26-496-0000.flac",
    ],
}
HELD_OUT = {
    "alice": "librispeech/test-other/367/367-130732-0007.flac",
    "bob": "librispeech/test-other/2609/2609-156975-0007.flac",
    "carol": "vctk/p225/p225_016.wav",
    "dave": "librispeech/train-clean-100/26/26-496-0001.flac",
}
STRANGERS = [  # readers nobody enrolled
    "librispeech/impostors-train-clean-100/103-1240-0000.flac",
    "librispeech/impostors-train-clean-100/1034-121119-0000.flac",
    "librispeech/test-other/3080/3080-5032-0006.flac",
]


@pytest.fixture(scope="module")
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with live.client(new_key(live.settings, "acme")) as c:
        for speaker, paths in ENROLLED.items():
            for path in paths:
                answer = c.post(f"/v1/speakers/{speaker}/enrollments", json=flac_body(path))
                assert answer.status_code == 201, answer.text
        yield c


def identify(client: httpx.Client, path: str, **extra: object) -> httpx.Response:
    return client.post("/v1/identify", json={**flac_body(path), **extra})


@pytest.mark.parametrize("speaker", sorted(HELD_OUT))
def test_known_speaker_is_identified(client: httpx.Client, speaker: str) -> None:
    answer = identify(client, HELD_OUT[speaker])
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert found["speakerId"] == speaker
    assert found["score"] >= found["threshold"]
    scores = [c["score"] for c in found["candidates"]]
    assert scores == sorted(scores, reverse=True)
    top = found["candidates"][0]
    assert top["speakerId"] == speaker and top["score"] == found["score"]
    assert top["complete"] == (client.get(f"/v1/speakers/{speaker}").json()["status"] == "complete")
    assert found["speechSeconds"] > 3


@pytest.mark.parametrize("path", STRANGERS)
def test_unenrolled_speaker_is_rejected(client: httpx.Client, path: str) -> None:
    found = identify(client, path).json()
    assert found["speakerId"] is None
    assert found["score"] < found["threshold"]
    assert found["candidates"], "the nearest speakers are still reported, with their scores"


def test_verify_accepts_the_right_speaker_and_rejects_another(client: httpx.Client) -> None:
    same = client.post("/v1/verify", json={**flac_body(HELD_OUT["alice"]), "speakerId": "alice"}).json()
    other = client.post("/v1/verify", json={**flac_body(HELD_OUT["alice"]), "speakerId": "bob"}).json()
    assert same["match"] is True and same["score"] >= same["threshold"]
    assert other["match"] is False and other["score"] < other["threshold"]
    assert same["cosine"] > other["cosine"]


def test_eight_khz_telephone_clip_is_identified(client: httpx.Client) -> None:
    clip = load_clip(HELD_OUT["dave"])
    body = {"content": b64(encode_recipe(clip.samples, clip.sample_rate, "flac8k")), "encoding": "FLAC"}
    assert client.post("/v1/identify", json=body).json()["speakerId"] == "dave"


def test_speaker_ids_restrict_the_answer(client: httpx.Client) -> None:
    found = identify(client, HELD_OUT["alice"], speakerIds=["bob", "carol"], topK=10).json()
    assert {c["speakerId"] for c in found["candidates"]} <= {"bob", "carol"}
    assert found["speakerId"] is None  # alice is not among the allowed speakers
    unknown = identify(client, HELD_OUT["alice"], speakerIds=["nobody"])
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "speaker.NotFound"


def test_two_speakers_joined_give_two_stretches(client: httpx.Client) -> None:
    first, second = load_clip(HELD_OUT["alice"]), load_clip(HELD_OUT["bob"])
    joined = np.concatenate([first.samples, second.samples])
    join_at = first.duration_s
    body = {"content": b64(encode_recipe(joined, 16000, "flac")), "encoding": "FLAC", "sampleRate": 16000}
    answer = client.post(f"{COMPAT}/identify", json=body)
    assert answer.status_code == 200, answer.text
    stretches = answer.json()
    assert [s["speakerId"] for s in stretches] == ["alice", "bob"], stretches
    # The turn change is found within 0.5 s: alice's speech ends where silero-vad hears it end in
    # her clip alone, bob's starts where it starts in his (the clips' own silences lie between).
    detector = SpeechDetector()
    alice_ends = detector.regions(first.as_float())[-1][1]
    bob_starts = join_at + detector.regions(second.as_float())[0][0]
    assert abs(stretches[0]["end"] - alice_ends) <= 0.5, (stretches, alice_ends)
    assert abs(stretches[1]["start"] - bob_starts) <= 0.5, (stretches, bob_starts)
    assert stretches[0]["start"] < 1.0 and stretches[1]["end"] > joined.size / 16000 - 1.0
    restricted = client.post(f"{COMPAT}/identify", json={**body, "speakerIds": ["bob"]}).json()
    assert [s["speakerId"] for s in restricted] == ["unknown", "bob"]


def test_another_tenant_never_sees_these_speakers(client: httpx.Client, live: LiveServer) -> None:
    with live.client(new_key(live.settings, "globex")) as other:
        # No one enrolled there: the voice is unknown (the contract's null and "unknown"), not an error.
        empty = other.post("/v1/identify", json=flac_body(HELD_OUT["alice"]))
        assert empty.status_code == 200, empty.text
        assert empty.json()["speakerId"] is None and empty.json()["score"] is None
        assert empty.json()["candidates"] == [] and empty.json()["speechSeconds"] > 1
        compat = other.post(f"{COMPAT}/identify", json=flac_body(HELD_OUT["alice"]))
        assert compat.status_code == 200, compat.text
        assert compat.json() and {s["speakerId"] for s in compat.json()} == {"unknown"}
        denied = other.post("/v1/verify", json={**flac_body(HELD_OUT["alice"]), "speakerId": "alice"})
        assert denied.status_code == 404
        # Same speakerId, another voice, in the second tenant: only that one is ever returned.
        assert (
            other.post("/v1/speakers/alice/enrollments", json=flac_body(ENROLLED["dave"][0])).status_code
            == 201
        )
        found = other.post("/v1/identify", json={**flac_body(HELD_OUT["alice"]), "topK": 10}).json()
        assert [c["speakerId"] for c in found["candidates"]] == ["alice"]
        assert found["speakerId"] is None  # the first tenant's alice is not this tenant's alice
        assert (
            other.post(
                "/v1/identify", json={**flac_body(HELD_OUT["alice"]), "speakerIds": ["bob"]}
            ).status_code
            == 404
        )


@pytest.mark.parametrize("route", ["/v1/identify", "/v1/verify", f"{COMPAT}/identify"])
def test_bad_audio_gets_the_same_faults(client: httpx.Client, route: str) -> None:
    base = {"encoding": "FLAC", "sampleRate": 16000, "speakerId": "alice"}
    silence = encode_recipe(np.zeros(16000 * 3, dtype=np.int16), 16000, "flac")
    for content, status, code in [
        ("%%%", 400, "audio.InvalidBase64"),
        (b64(b"\x00" * 2000), 400, "audio.Undecodable"),
        (b64(silence), 422, "audio.InsufficientSpeech"),
    ]:
        answer = client.post(route, json={**base, "content": content})
        assert answer.status_code == status, answer.text
        assert parse_error(answer).code == code
