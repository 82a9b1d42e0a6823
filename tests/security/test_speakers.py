"""Speaker ids and speaker lifetimes: no id a URL cannot reach, no speaker left without samples."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import LiveServer, flac_body, needs_speech

pytestmark = [needs_speech, pytest.mark.model]

ENROLL = "/audio/generic/api/v1/sync/diarization/enroll"
LIST = "/audio/generic/api/v1/sync/diarization/get_enrolled_speakers"
CLIP = "librispeech/test-other/367/367-130732-0002.flac"
OTHER_CLIP = "librispeech/test-other/367/367-130732-0003.flac"


@pytest.mark.parametrize("speaker", [".", "..", "..."])
def test_dots_alone_are_no_speaker_id(own_client: httpx.Client, live: LiveServer, speaker: str) -> None:
    before = live.services.store.counts()
    compat = own_client.post(ENROLL, json=flac_body(CLIP, speaker))
    assert compat.status_code == 400, compat.text
    assert compat.json()["fault"]["detail"]["errorcode"] == "request.InvalidSpeakerId"
    assert "dots" in compat.json()["fault"]["faultstring"]
    encoded = speaker.replace(".", "%2E")  # as a client must send them to keep them in the path
    native = own_client.post(f"/v1/speakers/{encoded}/enrollments", json=flac_body(CLIP))
    assert native.status_code == 400, native.text
    assert native.json()["error"]["code"] == "request.InvalidSpeakerId"
    verify = own_client.post("/v1/verify", json=flac_body(CLIP, speaker))
    assert verify.status_code == 400, verify.text
    assert live.services.store.counts() == before


def test_ids_with_dots_and_more_are_fine(own_client: httpx.Client) -> None:
    answer = own_client.post(ENROLL, json=flac_body(CLIP, "j.doe..2"))
    assert answer.status_code == 200, answer.text
    assert own_client.get("/v1/speakers/j.doe..2").json()["samples"] == 1


def test_deleting_the_last_sample_deletes_the_speaker(
    own_client: httpx.Client, live: LiveServer, own_key: str
) -> None:
    first = own_client.post("/v1/speakers/fleeting/enrollments", json=flac_body(CLIP))
    second = own_client.post("/v1/speakers/fleeting/enrollments", json=flac_body(OTHER_CLIP))
    assert first.status_code == second.status_code == 201, (first.text, second.text)
    samples = [a.json()["lastSample"]["sampleId"] for a in (first, second)]
    store = live.services.store
    authenticated = store.authenticate(own_key)
    assert authenticated is not None
    own_tenant = authenticated.tenant_id
    speaker = store.get_speaker(own_tenant, "fleeting")
    assert speaker is not None
    row = speaker.id
    before = store.counts()

    assert own_client.delete(f"/v1/speakers/fleeting/enrollments/{samples[0]}").status_code == 204
    assert own_client.get("/v1/speakers/fleeting").json()["samples"] == 1  # one left: still a speaker

    assert own_client.delete(f"/v1/speakers/fleeting/enrollments/{samples[1]}").status_code == 204
    assert own_client.get("/v1/speakers/fleeting").status_code == 404
    assert "fleeting" not in [s["speakerId"] for s in own_client.get("/v1/speakers").json()["speakers"]]
    assert "fleeting" not in [s["speaker_id"] for s in own_client.get(LIST).json()["enrolled_speaker_ids"]]
    assert store.counts()["speakers"] == before["speakers"] - 1
    assert store.get_speaker(own_tenant, "fleeting") is None
    assert row not in live.index_ids()
    # The id is free again, as if it had never been used.
    again = own_client.post("/v1/speakers/fleeting/enrollments", json=flac_body(CLIP))
    assert again.status_code == 201 and again.json()["samples"] == 1
