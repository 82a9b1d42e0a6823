"""The hosted API's official Python client (PyPI `deepaffects` 1.4.1) against this service, only the
host changed: enroll, delete, list and identify through its `ApiClient.call_api`, and async identify
with the result at a webhook on loopback. Bodies come from its model classes (its `from_file`
helpers read a MediaInfo field current MediaInfo no longer has), with encoding names as MediaInfo
gives them ("Wave") and the sample rate as the string its `Audio` model declares."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from devtools.clips import clip_bytes
from devtools.webhooks import Receiver, receiver
from service.jobs.webhooks import SIGNATURE_HEADER, verify
from service.storage.jobs import SqlJobStore
from tests.conftest import LiveServer, needs_speech, new_key, serve_with_jobs
from tests.databases import tenant_of_key

deepaffects = pytest.importorskip(
    "deepaffects", reason="the official client: scripts/setup.sh dev installs it"
)
from deepaffects.models.async_response import AsyncResponse  # noqa: E402
from deepaffects.models.audio import Audio  # noqa: E402
from deepaffects.models.diarize_audio import DiarizeAudio  # noqa: E402
from deepaffects.rest import ApiException  # noqa: E402

pytestmark = [needs_speech, pytest.mark.model]

SYNC = "/audio/generic/api/v1/sync/diarization"
CAROL = ["vctk/p225/p225_003.wav", "vctk/p225/p225_011.wav", "vctk/p225/p225_008.wav"]
CAROL_HELD_OUT = "vctk/p225/p225_016.wav"
DAVE = [
    "librispeech/train-clean-100/26/26-495-0000.flac",
    "librispeech/train-clean-100/26/26-495-0001.flac",
    "librispeech/train-clean-100/26/26-496-0000.flac",
]
DAVE_HELD_OUT = "librispeech/train-clean-100/26/26-496-0001.flac"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Iterator[LiveServer]:
    yield from serve_with_jobs(tmp_path_factory, embedder)


@pytest.fixture(scope="module")
def key(live: LiveServer) -> str:
    return new_key(live.settings, "client-app")


@pytest.fixture(scope="module")
def api(live: LiveServer, key: str) -> Iterator[Any]:
    """The client as an app configures it: its module-wide configuration holds the key."""
    config = deepaffects.configuration
    saved = dict(config.api_key)
    config.api_key["apikey"] = key
    yield deepaffects.ApiClient(host=live.url)
    config.api_key.clear()
    config.api_key.update(saved)


@pytest.fixture(scope="module")
def hooks() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


def audio(api: Any, path: str, **fields: Any) -> dict[str, Any]:
    """The client's `Audio` model as JSON, as its API classes would send it, plus route fields."""
    model = Audio(
        encoding="Wave" if path.endswith(".wav") else "FLAC",
        sample_rate="16000",
        language_code="en-US",
        content=base64.b64encode(clip_bytes(path)).decode(),
    )
    body: dict[str, Any] = api.sanitize_for_serialization(model)
    return {**body, **fields}


def call(api: Any, path: str, method: str = "POST", body: Any = None, **kwargs: Any) -> Any:
    return api.call_api(
        path,
        method,
        body=body,
        header_params={"Accept": "application/json", "Content-Type": "application/json"},
        auth_settings=["UserSecurity"],
        _return_http_data_only=True,
        **{"response_type": "object", "query_params": [], **kwargs},
    )


def test_enroll_list_identify_delete(api: Any) -> None:
    messages = [call(api, f"{SYNC}/enroll", body=audio(api, p, speakerId="carol")) for p in CAROL]
    messages += [call(api, f"{SYNC}/enroll", body=audio(api, p, speakerId="dave")) for p in DAVE]
    assert messages[0] == {"message": "Success"}
    assert all(m in ({"message": "Success"}, {"message": "Complete"}) for m in messages)

    listed = call(api, f"{SYNC}/get_enrolled_speakers", "GET")
    assert listed["developer_id"] == "client-app"
    assert {s["speaker_id"] for s in listed["enrolled_speaker_ids"]} == {"carol", "dave"}

    for held_out, speaker in ((CAROL_HELD_OUT, "carol"), (DAVE_HELD_OUT, "dave")):
        segments = call(api, f"{SYNC}/identify", body=audio(api, held_out, speakerIds=["carol", "dave"]))
        named = [s["speakerId"] for s in segments if s["speakerId"] != "unknown"]
        assert named and set(named) == {speaker}, segments

    assert call(api, f"{SYNC}/delete", body={"speakerId": "dave"}) == {"message": "Success"}
    with pytest.raises(ApiException) as missing:
        call(api, f"{SYNC}/delete", body={"speakerId": "dave"})
    assert missing.value.status == 404
    assert "speaker.NotFound" in str(missing.value.body)
    listed = call(api, f"{SYNC}/get_enrolled_speakers", "GET")
    assert [s["speaker_id"] for s in listed["enrolled_speaker_ids"]] == ["carol"]


def test_async_identify_with_a_webhook(live: LiveServer, key: str, api: Any, hooks: Receiver) -> None:
    if not any(
        s["speaker_id"] == "carol"
        for s in call(api, f"{SYNC}/get_enrolled_speakers", "GET")["enrolled_speaker_ids"]
    ):
        for p in CAROL:
            call(api, f"{SYNC}/enroll", body=audio(api, p, speakerId="carol"))
    path = "/audio/generic/api/v2/async/diarization/identify"
    accepted = call(
        api,
        path,
        body=audio(api, CAROL_HELD_OUT, speakerIds=["carol"]),
        query_params=[("webhook", hooks.hook), ("request_id", "client-async-1")],
        response_type="AsyncResponse",
    )
    assert isinstance(accepted, AsyncResponse)
    assert (accepted.request_id, accepted.api) == ("client-async-1", path)
    delivery = hooks.wait_for("client-async-1")
    secret = SqlJobStore(live.engine).webhook_secret(tenant_of_key(live.engine, key))
    assert verify(secret, delivery.headers[SIGNATURE_HEADER], delivery.body)
    named = {s["speaker_id"] for s in delivery.json["segments"]} - {"unknown"}
    assert named == {"carol"}

    status = call(
        api,
        "/transaction/generic/api/v1/async/status",
        "GET",
        query_params=[("request_id", "client-async-1")],
    )
    assert status["status"] == "Completed" and status["response"]["response"] == delivery.json


def test_diarize_api_classes(live: LiveServer, api: Any, hooks: Receiver) -> None:
    """The client's own DiarizeApi / DiarizeApiV2 async calls reach the async diarize route; what
    diarization answers is tested where it is built."""
    body = DiarizeAudio(
        encoding="Wave",
        sample_rate=16000,
        language_code="en-US",
        content=base64.b64encode(clip_bytes(CAROL_HELD_OUT)).decode(),
        speakers=-1,
        audio_type="callcenter",
    )
    for client_api, rid in (
        (deepaffects.DiarizeApi(api), "client-diarize-1"),
        (deepaffects.DiarizeApiV2(api), "client-diarize-2"),
    ):
        accepted = client_api.async_diarize_audio(body, hooks.hook, request_id=rid)
        assert isinstance(accepted, AsyncResponse) and accepted.request_id == rid
        delivered = hooks.wait_for(rid).json
        assert delivered["request_id"] == rid, delivered
        assert_diarization(delivered["response"])
    # The client declares list[Audio] for the synchronous answer, which the contract's
    # {num_speakers, segments} is not: it parses that into empty objects without failing, and an
    # app reads the answer itself with the client's own _preload_content=False.
    assert isinstance(deepaffects.DiarizeApi(api).sync_diarize_audio(body), list)
    raw = deepaffects.DiarizeApi(api).sync_diarize_audio(body, _preload_content=False)
    assert raw.status == 200
    assert_diarization(json.loads(raw.data))


def assert_diarization(answer: dict[str, Any]) -> None:
    """Carol's clip alone: at least one voice, every stretch labelled with one of them, in order."""
    segments = answer["segments"]
    assert segments and answer["num_speakers"] == len({s["speaker_id"] for s in segments}) >= 1, answer
    assert all(0 <= s["start"] < s["end"] for s in segments), answer
    assert [s["start"] for s in segments] == sorted(s["start"] for s in segments), answer
