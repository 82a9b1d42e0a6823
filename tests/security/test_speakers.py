"""Speaker ids and speaker lifetimes: no id a URL cannot reach, no speaker left without samples."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import LiveServer, flac_body, needs_speech

pytestmark = [needs_speech, pytest.mark.model]

ENROLL = "/audio/generic/api/v1/sync/diarization/enroll"
CLIP = "librispeech/test-other/367/367-130732-0002.flac"


@pytest.mark.parametrize("speaker", [".", "..", "..."])
def test_dots_alone_are_no_speaker_id(client: httpx.Client, live: LiveServer, speaker: str) -> None:
    before = live.services.store.counts()
    compat = client.post(ENROLL, json=flac_body(CLIP, speaker))
    assert compat.status_code == 400, compat.text
    assert compat.json()["fault"]["detail"]["errorcode"] == "request.InvalidSpeakerId"
    assert "dots" in compat.json()["fault"]["faultstring"]
    encoded = speaker.replace(".", "%2E")  # as a client must send them to keep them in the path
    native = client.post(f"/v1/speakers/{encoded}/enrollments", json=flac_body(CLIP))
    assert native.status_code == 400, native.text
    assert native.json()["error"]["code"] == "request.InvalidSpeakerId"
    verify = client.post("/v1/verify", json=flac_body(CLIP, speaker))
    assert verify.status_code == 400, verify.text
    assert live.services.store.counts() == before


def test_ids_with_dots_and_more_are_fine(client: httpx.Client) -> None:
    answer = client.post(ENROLL, json=flac_body(CLIP, "j.doe..2"))
    assert answer.status_code == 200, answer.text
    assert client.get("/v1/speakers/j.doe..2").json()["samples"] == 1
