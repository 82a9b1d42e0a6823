"""Tenant isolation, walked over every route of the served OpenAPI document.

Tenant A enrolls real speech; tenant B, with its own key and the same speaker ids, tries every
route against A's speakers: reading, listing, identifying, verifying, deleting (A's real sampleId
included). Each try is refused as if A's speakers did not exist (404, or an empty list), and A's
data is the same afterwards. The walk runs twice: while B has no speakers, and again after B has
enrolled its own `alice` through every enrollment route. A route that appears in the document
without an entry here (or among the public ones) fails the walk, so a new route cannot be forgotten.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts

from service.tools.client import parse_error
from tests.conftest import LiveServer, flac_body, needs_speech, new_key
from tests.databases import kind_params

# The whole module runs once on SQLite and once on PostgreSQL.
pytestmark = [needs_speech, pytest.mark.model, pytest.mark.parametrize("live", kind_params(), indirect=True)]

COMPAT = "/audio/generic/api/{version}/sync/diarization"
VERSIONS = ("v1", "v2")

A_ALICE = [
    "librispeech/test-other/367/367-130732-0001.flac",
    "librispeech/test-other/367/367-130732-0004.flac",
]
A_ALICE_HELD_OUT = "librispeech/test-other/367/367-130732-0008.flac"
A_BOB = "librispeech/test-other/2609/2609-156975-0005.flac"
B_ALICE = ["vctk/p226/p226_003.wav", "vctk/p226/p226_005.wav", "vctk/p226/p226_011.wav"]

# No key needed, no tenant data: checked separately.
PUBLIC = {"GET /healthz", "GET /readyz", "GET /metrics"}
# The docs pages, their static files and the document itself, outside the OpenAPI document; and
# the operator console's static files (its calls to the API carry the operator's key).
DOCS = {"/docs", "/docs/assets", "/redoc", "/openapi.json", "/console"}
REFUSED = {"speaker.NotFound", "sample.NotFound"}
# WebSocket routes (outside the OpenAPI document): their key and tenant refusals are walked in
# tests/api/test_realtime.py (a bad key closes 4401, another tenant's speakerIds 4404).
STREAMS = {"/v1/identify/stream"}


@dataclass
class Walk:
    a: httpx.Client
    b: httpx.Client
    a_samples: list[str]  # sampleIds of A's alice
    b_has_alice: bool = False


def code_of(answer: httpx.Response) -> str:
    return parse_error(answer).code


def refused(answer: httpx.Response, code: str | None = None) -> None:
    """A 404 that says the speaker (or sample) is not there: nothing of A's is revealed or touched."""
    assert answer.status_code == 404, answer.text
    assert code_of(answer) in ({code} if code else REFUSED), answer.text


def snapshot(client: httpx.Client) -> dict[str, Any]:
    """Everything A can see of its own speakers."""
    page = client.get("/v1/speakers", params={"limit": 1000}).json()
    return {
        "native": sorted(page["speakers"], key=lambda s: s["speakerId"]),
        "total": page["total"],
        "compat": {
            v: client.get(f"{COMPAT.format(version=v)}/get_enrolled_speakers").json() for v in VERSIONS
        },
        "each": {
            s["speakerId"]: client.get(f"/v1/speakers/{s['speakerId']}").json() for s in page["speakers"]
        },
    }


# --- what B tries on each route ---------------------------------------------------------------------


def get_speaker(w: Walk) -> None:
    refused(w.b.get("/v1/speakers/bob"), "speaker.NotFound")
    mine = w.b.get("/v1/speakers/alice")
    if w.b_has_alice:
        assert mine.status_code == 200 and mine.json()["samples"] == len(B_ALICE), mine.text
    else:
        refused(mine, "speaker.NotFound")


def list_speakers(w: Walk) -> None:
    page = w.b.get("/v1/speakers", params={"limit": 1000}).json()
    assert [s["speakerId"] for s in page["speakers"]] == (["alice"] if w.b_has_alice else [])
    assert page["total"] == (1 if w.b_has_alice else 0)
    if w.b_has_alice:
        assert page["speakers"][0]["samples"] == len(B_ALICE)


def compat_list(version: str) -> Callable[[Walk], None]:
    def attempt(w: Walk) -> None:
        listed = w.b.get(f"{COMPAT.format(version=version)}/get_enrolled_speakers").json()
        assert listed["developer_id"] == "tenant-b"
        assert [s["speaker_id"] for s in listed["enrolled_speaker_ids"]] == (
            ["alice"] if w.b_has_alice else []
        )

    return attempt


def native_identify(w: Walk) -> None:
    body = {**flac_body(A_ALICE_HELD_OUT), "topK": 100}
    refused(w.b.post("/v1/identify", json={**body, "speakerIds": ["bob"]}), "speaker.NotFound")
    anyone = w.b.post("/v1/identify", json=body)
    if not w.b_has_alice:
        # No one enrolled in B: the voice is unknown there, and nothing of A's is named.
        assert anyone.status_code == 200, anyone.text
        assert anyone.json()["speakerId"] is None and anyone.json()["candidates"] == []
        refused(w.b.post("/v1/identify", json={**body, "speakerIds": ["alice"]}), "speaker.NotFound")
        return
    assert anyone.status_code == 200, anyone.text
    assert [c["speakerId"] for c in anyone.json()["candidates"]] == ["alice"]  # B's own alice only


def compat_identify(version: str) -> Callable[[Walk], None]:
    def attempt(w: Walk) -> None:
        route = f"{COMPAT.format(version=version)}/identify"
        body = flac_body(A_ALICE_HELD_OUT)
        refused(w.b.post(route, json={**body, "speakerIds": ["bob"]}), "speaker.NotFound")
        anyone = w.b.post(route, json={**body, "speakerIds": []})
        assert anyone.status_code == 200, anyone.text
        labels = {s["speakerId"] for s in anyone.json()}
        assert labels <= ({"alice", "unknown"} if w.b_has_alice else {"unknown"}), labels
        if not w.b_has_alice:
            refused(w.b.post(route, json={**body, "speakerIds": ["alice"]}), "speaker.NotFound")

    return attempt


def diarize(w: Walk) -> None:
    route = "/audio/generic/api/v1/sync/diarize"
    body = flac_body(A_ALICE_HELD_OUT)
    refused(w.b.post(route, json={**body, "speakerIds": ["bob"]}), "speaker.NotFound")
    named = w.b.post(route, json={**body, "speakerIds": ["alice"]})
    if not w.b_has_alice:
        refused(named, "speaker.NotFound")
        return
    assert named.status_code == 200, named.text
    # Only B's own alice can name a voice; A's alice is never looked at.
    assert all(
        s["speaker_id"] == "alice" or s["speaker_id"].startswith("speaker_") for s in named.json()["segments"]
    )


def verify(w: Walk) -> None:
    body = flac_body(A_ALICE_HELD_OUT)
    refused(w.b.post("/v1/verify", json={**body, "speakerId": "bob"}), "speaker.NotFound")
    if not w.b_has_alice:
        refused(w.b.post("/v1/verify", json={**body, "speakerId": "alice"}), "speaker.NotFound")


def compat_delete(version: str) -> Callable[[Walk], None]:
    def attempt(w: Walk) -> None:
        route = f"{COMPAT.format(version=version)}/delete"
        refused(w.b.post(route, json={"speakerId": "bob"}), "speaker.NotFound")
        if not w.b_has_alice:
            refused(w.b.post(route, json={"speakerId": "alice"}), "speaker.NotFound")

    return attempt


def delete_speaker(w: Walk) -> None:
    refused(w.b.delete("/v1/speakers/bob"), "speaker.NotFound")
    if not w.b_has_alice:
        refused(w.b.delete("/v1/speakers/alice"), "speaker.NotFound")


def delete_sample(w: Walk) -> None:
    # A's real sampleIds, under A's ids: B has no bob, and its own alice (once it has one) holds
    # none of A's samples.
    for sample_id in w.a_samples:
        under_alice = w.b.delete(f"/v1/speakers/alice/enrollments/{sample_id}")
        refused(under_alice, "sample.NotFound" if w.b_has_alice else "speaker.NotFound")
        refused(w.b.delete(f"/v1/speakers/bob/enrollments/{sample_id}"), "speaker.NotFound")


def compat_enroll(version: str) -> Callable[[Walk], None]:
    def enroll(w: Walk) -> None:
        clip = B_ALICE[VERSIONS.index(version)]
        answer = w.b.post(f"{COMPAT.format(version=version)}/enroll", json=flac_body(clip, "alice"))
        assert answer.status_code == 200, answer.text

    return enroll


def native_enroll(w: Walk) -> None:
    answer = w.b.post("/v1/speakers/alice/enrollments", json=flac_body(B_ALICE[2]))
    assert answer.status_code == 201, answer.text
    # B's alice is B's alone: three samples of B's own voice, none of A's two.
    assert answer.json()["samples"] == len(B_ALICE)


ASYNC = "/audio/generic/api/{version}/async"
STATUS = "/transaction/generic/api/v1/async/status"


def job_outcome(client: httpx.Client, answer: httpx.Response) -> dict[str, Any]:
    """The finished job of a 202, as its submitter sees it."""
    assert answer.status_code == 202, answer.text
    rid = answer.json()["request_id"]
    deadline = time.monotonic() + 120
    while (status := client.get(STATUS, params={"request_id": rid}).json())["status"] == "Running":
        assert time.monotonic() < deadline, f"job {rid} still running"
        time.sleep(0.2)
    outcome: dict[str, Any] = status["response"]["response"]
    return outcome


def failed_with(outcome: dict[str, Any], code: str) -> None:
    assert outcome.get("fault", {}).get("detail", {}).get("errorcode") == code, outcome


def async_identify(version: str) -> Callable[[Walk], None]:
    def attempt(w: Walk) -> None:
        route = f"{ASYNC.format(version=version)}/diarization/identify"
        body = flac_body(A_ALICE_HELD_OUT)
        refused(w.b.post(route, json={**body, "speakerIds": ["bob"]}), "speaker.NotFound")  # at once
        anyone = job_outcome(w.b, w.b.post(route, json={**body, "speakerIds": []}))
        labels = {s["speaker_id"] for s in anyone["segments"]}
        assert labels <= ({"alice", "unknown"} if w.b_has_alice else {"unknown"}), labels

    return attempt


def async_diarize(version: str) -> Callable[[Walk], None]:
    def attempt(w: Walk) -> None:
        body = {**flac_body(A_ALICE_HELD_OUT), "speakers": -1, "speakerIds": ["bob"]}
        # A's bob is no id of B's: refused when the job is submitted, as sync diarize refuses it.
        refused(w.b.post(f"{ASYNC.format(version=version)}/diarize", json=body), "speaker.NotFound")

    return attempt


def job_status(w: Walk) -> None:
    route = f"{ASYNC.format(version='v1')}/diarization/identify"
    mine = w.a.post(route, json=flac_body(A_ALICE_HELD_OUT))
    assert mine.status_code == 202, mine.text
    refused(w.b.get(STATUS, params={"request_id": mine.json()["request_id"]}), "job.NotFound")


# Every operation of the OpenAPI document that needs a key, and what B tries with it.
REFUSALS: dict[str, Callable[[Walk], None]] = {
    "GET /v1/speakers/{speakerId}": get_speaker,
    "GET /v1/speakers": list_speakers,
    "POST /v1/identify": native_identify,
    "POST /v1/verify": verify,
    "POST /audio/generic/api/v1/sync/diarize": diarize,
    "DELETE /v1/speakers/{speakerId}": delete_speaker,
    "DELETE /v1/speakers/{speakerId}/enrollments/{sampleId}": delete_sample,
    **{f"GET {COMPAT.format(version=v)}/get_enrolled_speakers": compat_list(v) for v in VERSIONS},
    **{f"POST {COMPAT.format(version=v)}/identify": compat_identify(v) for v in VERSIONS},
    **{f"POST {COMPAT.format(version=v)}/delete": compat_delete(v) for v in VERSIONS},
    **{f"POST {ASYNC.format(version=v)}/diarization/identify": async_identify(v) for v in ("v1", "v2", "v3")},
    **{f"POST {ASYNC.format(version=v)}/diarize": async_diarize(v) for v in VERSIONS},
    f"GET {STATUS}": job_status,
}
ENROLLS: dict[str, Callable[[Walk], None]] = {
    **{f"POST {COMPAT.format(version=v)}/enroll": compat_enroll(v) for v in VERSIONS},
    "POST /v1/speakers/{speakerId}/enrollments": native_enroll,
}


# --- the walk --------------------------------------------------------------------------------------


def documented_operations(client: httpx.Client) -> set[str]:
    paths = client.get("/openapi.json").json()["paths"]
    return {f"{method.upper()} {path}" for path, methods in paths.items() for method in methods}


@pytest.fixture(scope="module")
def walk(live: LiveServer) -> Iterator[Walk]:
    with (
        live.client(new_key(live.settings, "tenant-a")) as a,
        live.client(new_key(live.settings, "tenant-b")) as b,
    ):
        samples = []
        for clip in A_ALICE:
            answer = a.post("/v1/speakers/alice/enrollments", json=flac_body(clip))
            assert answer.status_code == 201, answer.text
            samples.append(answer.json()["lastSample"]["sampleId"])
        bob = a.post(f"{COMPAT.format(version='v1')}/enroll", json=flac_body(A_BOB, "bob"))
        assert bob.status_code == 200, bob.text
        yield Walk(a=a, b=b, a_samples=samples)


def test_every_route_is_walked_or_public(live: LiveServer, walk: Walk) -> None:
    documented = documented_operations(walk.a)
    walked = set(REFUSALS) | set(ENROLLS)
    assert not walked & PUBLIC
    assert documented - walked - PUBLIC == set(), "a route no isolation walk covers: add it to REFUSALS"
    assert walked - documented == set(), "the walk names a route the service no longer has"
    # A route left out of the document would slip past the check above: the app serves no other.
    served = set()
    for route in iter_route_contexts(live.app.routes):
        if isinstance(route.original_route, APIRoute):
            served |= {f"{method} {route.path}" for method in route.methods or ()}
        else:
            assert route.path in DOCS | STREAMS, f"a route outside the OpenAPI document: {route.path}"
    assert served == documented


def test_tenant_b_reaches_none_of_tenant_a(walk: Walk) -> None:
    before = snapshot(walk.a)
    assert before["total"] == 2 and before["each"]["alice"]["samples"] == len(A_ALICE)

    for attempt in REFUSALS.values():  # B has no speakers at all
        attempt(walk)
    assert snapshot(walk.a) == before

    for enroll in ENROLLS.values():  # B enrolls its own alice, with its own voice
        enroll(walk)
    walk.b_has_alice = True
    assert snapshot(walk.a) == before

    for attempt in REFUSALS.values():  # and tries again, now that it has an alice of its own
        attempt(walk)
    assert walk.b.delete("/v1/speakers/alice").status_code == 204  # B's own alice, not A's
    walk.b_has_alice = False
    list_speakers(walk)
    assert snapshot(walk.a) == before

    # A's speakers still work for A: identified, and its sampleIds were real.
    found = walk.a.post("/v1/identify", json=flac_body(A_ALICE_HELD_OUT)).json()
    assert found["speakerId"] == "alice", found
    assert walk.a.delete(f"/v1/speakers/alice/enrollments/{walk.a_samples[1]}").status_code == 204
    assert walk.a.get("/v1/speakers/alice").json()["samples"] == len(A_ALICE) - 1


def test_every_route_refuses_a_missing_or_wrong_key(live: LiveServer, walk: Walk) -> None:
    before = snapshot(walk.a)
    fill = {"{speakerId}": "alice", "{sampleId}": walk.a_samples[0]}
    body = {**flac_body(A_ALICE_HELD_OUT), "speakerId": "alice"}
    with live.client() as anonymous:
        for operation in sorted(documented_operations(walk.a) - PUBLIC):
            method, path = operation.split(" ", 1)
            for placeholder, value in fill.items():
                path = path.replace(placeholder, value)
            json = body if method == "POST" else None
            for credentials in ({}, {"X-API-Key": "sk_wrong"}, {"Authorization": "Bearer sk_wrong"}):
                answer = anonymous.request(method, path, json=json, headers=credentials)
                assert answer.status_code == 401, f"{operation} {credentials}: {answer.text}"
                assert code_of(answer) == "auth.InvalidKey"
            answer = anonymous.request(method, path, json=json, params={"apikey": "sk_wrong"})
            assert answer.status_code == 401, f"{operation} ?apikey: {answer.text}"
    assert snapshot(walk.a) == before


def test_public_routes_reveal_no_tenant_data(live: LiveServer, walk: Walk) -> None:
    with live.client() as anonymous:
        for operation in sorted(PUBLIC):
            method, path = operation.split(" ", 1)
            answer = anonymous.request(method, path)
            assert answer.status_code == 200, answer.text
            for secret in ("alice", "tenant-a", "tenant-b", *walk.a_samples):
                assert secret not in answer.text, f"{path} shows {secret}"
