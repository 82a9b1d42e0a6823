"""What the service shows to anyone who asks: response headers, and error bodies that must not
carry internals or echo what a client sent."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import LiveServer, b64, flac_body, needs_speech

ENROLL = "/audio/generic/api/v1/sync/diarization/enroll"
CLIP = "librispeech/test-other/367/367-130732-0002.flac"


# --- headers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def anonymous(live: LiveServer) -> Iterator[httpx.Client]:
    with live.client() as c:
        yield c


@needs_speech
@pytest.mark.model
def test_every_answer_says_nosniff_and_names_no_server(client: httpx.Client, anonymous: httpx.Client) -> None:
    answers = {
        "enroll": client.post(ENROLL, json=flac_body(CLIP, "headers")),
        "list": client.get("/v1/speakers"),
        "no key": anonymous.get("/v1/speakers"),
        "unknown speaker": client.get("/v1/speakers/nobody"),
        "bad json": client.post("/v1/identify", content=b"{", headers={"Content-Type": "application/json"}),
        "no route": client.get("/nowhere"),
        "health": anonymous.get("/healthz"),
        "docs": anonymous.get("/docs"),
        "openapi": anonymous.get("/openapi.json"),
    }
    for name, answer in answers.items():
        assert answer.headers.get("x-content-type-options") == "nosniff", name
        assert "server" not in answer.headers, (name, answer.headers.get("server"))
    for name in ("enroll", "list", "no key", "unknown speaker", "bad json"):
        assert answers[name].headers.get("cache-control") == "no-store", name


# --- error bodies --------------------------------------------------------------------------------


@needs_speech
@pytest.mark.model
def test_a_huge_encoding_name_is_not_echoed(client: httpx.Client) -> None:
    name = "\x00\x1b[31mX" + "Y" * 100_000
    answer = client.post(ENROLL, json={**flac_body(CLIP, "echo"), "encoding": name})
    assert answer.status_code == 400
    message = answer.json()["fault"]["faultstring"]
    assert len(answer.content) < 1000
    assert "Y" * 41 not in message
    assert "\x00" not in message and "\x1b" not in message


@needs_speech
@pytest.mark.model
@pytest.mark.parametrize("encoding", ["WAV", "MP3", "FLAC", "OGG_OPUS", "M4A"])
def test_undecodable_audio_says_so_without_ffmpeg_internals(client: httpx.Client, encoding: str) -> None:
    garbage = bytes(range(256)) * 64
    body = {**flac_body(CLIP, "garbage"), "encoding": encoding, "content": b64(garbage)}
    answer = client.post(ENROLL, json=body)
    assert answer.status_code == 400, answer.text
    fault = answer.json()["fault"]
    assert fault["detail"]["errorcode"] == "audio.Undecodable"
    message = fault["faultstring"]
    assert len(message) <= 120, message
    for internal in ("Errno", "Invalid data", "demux", "wav:", "mp3:", "ogg:", "mov:", "flac:", "<none>"):
        assert internal not in message, message
