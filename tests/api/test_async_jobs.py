"""Async identify and diarize, the job status and webhooks, over real HTTP with the real model on
real speech; `url` input fetched from a server on loopback (allowed by SPK_EGRESS__ALLOWED_HOSTS)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from devtools.clips import encode_recipe, load_clip, silence_flac
from devtools.webhooks import Receiver, receiver
from service.jobs.webhooks import SIGNATURE_HEADER, verify
from service.storage.jobs import SqlJobStore
from service.storage.tables import Job
from tests.conftest import LiveServer, b64, flac_body, needs_speech, new_key, serve_with_jobs
from tests.databases import tenant_of_key

pytestmark = [needs_speech, pytest.mark.model]

ASYNC_IDENTIFY = "/audio/generic/api/{version}/async/diarization/identify"
SYNC_IDENTIFY = "/audio/generic/api/v1/sync/diarization/identify"
ASYNC_DIARIZE = "/audio/generic/api/{version}/async/diarize"
SYNC_DIARIZE = "/audio/generic/api/v1/sync/diarize"
STATUS = "/transaction/generic/api/v1/async/status"
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
}
HELD_OUT = [
    "librispeech/test-other/367/367-130732-0007.flac",
    "librispeech/test-other/2609/2609-156975-0007.flac",
]


@pytest.fixture(scope="module")
def hooks() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Iterator[LiveServer]:
    yield from serve_with_jobs(tmp_path_factory, embedder)


@pytest.fixture(scope="module")
def key(live: LiveServer) -> str:
    return new_key(live.settings, "acme")


@pytest.fixture(scope="module")
def client(live: LiveServer, key: str) -> Iterator[httpx.Client]:
    with live.client(key) as c:
        for speaker, paths in ENROLLED.items():
            for path in paths:
                assert c.post(f"/v1/speakers/{speaker}/enrollments", json=flac_body(path)).status_code == 201
        yield c


@pytest.fixture(scope="module")
def conversation() -> bytes:
    """Alice's held-out clip, then Bob's, as one 16 kHz FLAC."""
    clips = [load_clip(p) for p in HELD_OUT]
    return encode_recipe(np.concatenate([c.samples for c in clips]), clips[0].sample_rate, "flac")


@pytest.fixture(scope="module")
def expected(client: httpx.Client, conversation: bytes) -> list[dict[str, Any]]:
    """What the synchronous identify answers for the conversation, in the webhook's field names."""
    answer = client.post(SYNC_IDENTIFY, json=body_of(conversation))
    assert answer.status_code == 200, answer.text
    segments = [{"speaker_id": s["speakerId"], "start": s["start"], "end": s["end"]} for s in answer.json()]
    assert [s["speaker_id"] for s in segments if s["speaker_id"] != "unknown"][:1] == ["alice"]
    assert "bob" in {s["speaker_id"] for s in segments}
    return segments


def body_of(audio: bytes, **extra: Any) -> dict[str, Any]:
    return {"content": b64(audio), "encoding": "FLAC", "sampleRate": 16000, "languageCode": "en-US", **extra}


def finished(client: httpx.Client, request_id: str, timeout_s: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        answer = client.get(STATUS, params={"request_id": request_id})
        assert answer.status_code == 200, answer.text
        status: dict[str, Any] = answer.json()
        if status["status"] != "Running":
            return status
        assert time.monotonic() < deadline, f"{request_id} still running"
        time.sleep(0.2)


def secret_of(live: LiveServer, key: str) -> str:
    return SqlJobStore(live.engine).webhook_secret(tenant_of_key(live.engine, key))


def job_row(live: LiveServer, request_id: str) -> Job:
    with Session(live.engine) as session:
        return session.scalars(select(Job).where(Job.request_id == request_id)).one()


def delivery_over(live: LiveServer, request_id: str, timeout_s: float = 30.0) -> Job:
    """The job's row once its delivery is recorded (the receiver may see it a moment before)."""
    deadline = time.monotonic() + timeout_s
    while (row := job_row(live, request_id)).delivery == "pending":
        assert time.monotonic() < deadline, f"{request_id}: delivery still pending"
        time.sleep(0.1)
    return row


def test_async_identify_posts_the_signed_result_to_the_webhook(
    live: LiveServer,
    key: str,
    client: httpx.Client,
    hooks: Receiver,
    conversation: bytes,
    expected: list[Any],
) -> None:
    path = ASYNC_IDENTIFY.format(version="v1")
    answer = client.post(
        path, params={"webhook": hooks.hook, "request_id": "call-1"}, json=body_of(conversation)
    )
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"request_id": "call-1", "api": path}

    delivery = hooks.wait_for("call-1")
    assert delivery.json == {"request_id": "call-1", "segments": expected}
    assert verify(secret_of(live, key), delivery.headers[SIGNATURE_HEADER], delivery.body)
    assert not verify("whsec_someone_else", delivery.headers[SIGNATURE_HEADER], delivery.body)

    status = finished(client, "call-1")
    assert status == {
        "status": "Completed",
        "response": {"request_id": "call-1", "response": delivery.json},
        "progress": 1.0,
    }
    row = delivery_over(live, "call-1")
    assert row.audio is None  # the input is dropped when the job ends
    assert row.delivery == "delivered" and row.delivery_attempts == 1
    assert len(hooks.received("call-1")) == 1


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_other_versions_and_a_generated_request_id(
    client: httpx.Client, conversation: bytes, expected: list[Any], version: str
) -> None:
    path = ASYNC_IDENTIFY.format(version=version)
    answer = client.post(path, json=body_of(conversation))  # no webhook: the status has the result
    assert answer.status_code == 202, answer.text
    rid = answer.json()["request_id"]
    assert len(rid) == 36 and answer.json()["api"] == path
    status = finished(client, rid)
    assert status["status"] == "Completed"
    assert status["response"]["response"] == {"request_id": rid, "segments": expected}


def test_a_queued_job_is_running_with_progress_then_completes(
    live: LiveServer, client: httpx.Client, conversation: bytes, expected: list[Any]
) -> None:
    worker = live.app.state.jobs
    worker.stop()
    try:
        answer = client.post(
            ASYNC_IDENTIFY.format(version="v1"), params={"request_id": "queued-1"}, json=body_of(conversation)
        )
        assert answer.status_code == 202
        status = client.get(STATUS, params={"request_id": "queued-1"}).json()
        assert status == {
            "status": "Running",
            "response": {"request_id": "queued-1", "response": None},
            "progress": 0.0,
        }
        assert job_row(live, "queued-1").audio is not None  # kept until the job ends
    finally:
        worker.start()
    assert finished(client, "queued-1")["response"]["response"]["segments"] == expected


def test_status_is_the_tenant_s_own(live: LiveServer, client: httpx.Client) -> None:
    with live.client(new_key(live.settings, "other")) as other:
        for rid in ("call-1", "no-such-job"):
            answer = other.get(STATUS, params={"request_id": rid})
            assert answer.status_code == 404
            assert answer.json()["fault"]["detail"]["errorcode"] == "job.NotFound"
    missing = client.get(STATUS)
    assert missing.status_code == 400 and "fault" in missing.json()
    assert client.get(STATUS, params={"request_id": "no-such-job"}).status_code == 404


def test_a_failing_receiver_is_retried_with_every_attempt_recorded(
    live: LiveServer, client: httpx.Client, hooks: Receiver, conversation: bytes
) -> None:
    hooks.fail_first["retried-1"] = 2
    answer = client.post(
        ASYNC_IDENTIFY.format(version="v1"),
        params={"webhook": hooks.hook, "request_id": "retried-1"},
        json=body_of(conversation),
    )
    assert answer.status_code == 202
    hooks.wait_for("retried-1")
    attempts = SqlJobStore(live.engine).attempts(delivery_over(live, "retried-1").id)
    assert [(a.status_code, a.delivered) for a in attempts] == [(500, False), (500, False), (200, True)]
    assert all(a.error == "HTTP 500" for a in attempts[:2])


def test_a_webhook_host_that_does_not_resolve_yet_is_accepted_and_its_attempts_recorded(
    live: LiveServer, client: httpx.Client, conversation: bytes
) -> None:
    answer = client.post(
        ASYNC_IDENTIFY.format(version="v1"),
        params={"webhook": "http://receiver.invalid/hook", "request_id": "unresolved"},
        json=body_of(conversation),
    )
    assert answer.status_code == 202, answer.text
    assert finished(client, "unresolved")["status"] == "Completed"
    store = SqlJobStore(live.engine)
    for _ in range(300):
        attempts = store.attempts(job_row(live, "unresolved").id)
        if attempts:
            break
        time.sleep(0.1)
    assert attempts and not attempts[0].delivered
    assert attempts[0].error is not None and "could not be resolved" in attempts[0].error


def test_a_failed_job_says_why(live: LiveServer, client: httpx.Client, hooks: Receiver) -> None:
    answer = client.post(
        ASYNC_IDENTIFY.format(version="v1"),
        params={"webhook": hooks.hook, "request_id": "bad-audio"},
        json=body_of(b"\0" * 4000),
    )
    assert answer.status_code == 202
    fault = {
        "faultstring": "Audio could not be decoded as FLAC",
        "detail": {"errorcode": "audio.Undecodable"},
    }
    assert hooks.wait_for("bad-audio").json == {"request_id": "bad-audio", "fault": fault}
    status = finished(client, "bad-audio")
    assert status["status"] == "Failed" and status["response"]["response"]["fault"] == fault
    assert job_row(live, "bad-audio").audio is None


def test_async_diarize_refuses_what_sync_diarize_refuses(client: httpx.Client, hooks: Receiver) -> None:
    """The job's front end applies the route's checks: silence is a failed job with the 422's fault,
    not a completed job with no speaker."""
    body = body_of(silence_flac(3.0))
    sync = client.post(SYNC_DIARIZE, json=body)
    assert sync.status_code == 422, sync.text
    fault = sync.json()["fault"]
    answer = client.post(
        ASYNC_DIARIZE.format(version="v1"), params={"webhook": hooks.hook, "request_id": "silent"}, json=body
    )
    assert answer.status_code == 202, answer.text
    assert hooks.wait_for("silent").json == {"request_id": "silent", "fault": fault}
    assert finished(client, "silent")["status"] == "Failed"


def test_bad_requests_are_refused_at_once_and_store_nothing(
    live: LiveServer, client: httpx.Client, conversation: bytes
) -> None:
    path = ASYNC_IDENTIFY.format(version="v1")
    with live.engine.connect() as conn:
        before = conn.scalar(select(func.count()).select_from(Job))
    both = {**body_of(conversation), "url": "http://127.0.0.1:9/a.flac"}
    zeros = body_of(b"\0" * 1000)
    cases = [
        ({}, both, 400, "request.Invalid"),
        ({}, {"encoding": "FLAC"}, 400, "request.Invalid"),
        ({"webhook": "http://10.1.2.3/hook"}, body_of(conversation), 400, "egress.Refused"),
        ({"webhook": "http://169.254.169.254/latest"}, body_of(conversation), 400, "egress.Refused"),
        ({"webhook": "ftp://127.0.0.1/hook"}, body_of(conversation), 400, "egress.Refused"),
        ({"request_id": "no spaces"}, body_of(conversation), 400, "request.Invalid"),
        ({"request_id": "call-1"}, body_of(conversation), 409, "job.DuplicateRequestId"),
        ({}, {"url": "http://10.1.2.3/a.flac", "encoding": "FLAC"}, 400, "egress.Refused"),
        ({}, {**body_of(conversation), "content": "not base64!"}, 400, "audio.InvalidBase64"),
        ({}, {**body_of(conversation), "speakerIds": ["nobody-here"]}, 404, "speaker.NotFound"),
        # What the bytes tell without decoding them is checked now, as the sync routes do.
        ({}, {**zeros, "encoding": "SPEEX"}, 400, "audio.UnsupportedEncoding"),
        (
            {},
            {**zeros, "encoding": "MULAW", "sampleRate": None},
            400,
            "audio.MissingSampleRate",
        ),
        ({}, {**zeros, "encoding": "LINEAR16", "sampleRate": 1}, 400, "audio.Undecodable"),
    ]
    for params, body, status, code in cases:
        answer = client.post(path, params=params, json=body)
        assert answer.status_code == status, (params, answer.text)
        assert answer.json()["fault"]["detail"]["errorcode"] == code
    with live.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Job)) == before


def test_url_input_sync_and_async(
    client: httpx.Client, hooks: Receiver, conversation: bytes, expected: list[Any]
) -> None:
    hooks.files["conversation.flac"] = conversation
    url = f"{hooks.url}/files/conversation.flac"
    by_url = {"url": url, "encoding": "FLAC", "sampleRate": "16000"}
    sync = client.post(SYNC_IDENTIFY, json=by_url)
    assert sync.status_code == 200, sync.text
    assert [
        {"speaker_id": s["speakerId"], "start": s["start"], "end": s["end"]} for s in sync.json()
    ] == expected
    answer = client.post(
        ASYNC_IDENTIFY.format(version="v1"),
        params={"webhook": hooks.hook, "request_id": "by-url"},
        json=by_url,
    )
    assert answer.status_code == 202, answer.text
    assert hooks.wait_for("by-url").json == {"request_id": "by-url", "segments": expected}
    missing = client.post(SYNC_IDENTIFY, json={**by_url, "url": f"{hooks.url}/files/missing.flac"})
    assert (
        missing.status_code == 400 and missing.json()["fault"]["detail"]["errorcode"] == "audio.FetchFailed"
    )


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_async_diarize_route_and_job_kind(
    client: httpx.Client, hooks: Receiver, conversation: bytes, version: str
) -> None:
    """The job runs the sync route's use case: the webhook gets what sync/diarize answers."""
    body = body_of(conversation, speakers=2, audioType="callcenter", speakerIds=["alice"], doVad=True)
    sync = client.post(SYNC_DIARIZE, json=body)
    assert sync.status_code == 200, sync.text
    assert sync.json()["num_speakers"] == 2
    path = ASYNC_DIARIZE.format(version=version)
    rid = f"diarize-{version}"
    answer = client.post(path, params={"webhook": hooks.hook, "request_id": rid}, json=body)
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"request_id": rid, "api": path}
    got = hooks.wait_for(rid).json
    assert got == {"request_id": rid, "response": sync.json()}
    assert finished(client, rid)["response"]["response"] == got
