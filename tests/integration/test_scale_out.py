"""deploy/compose.yaml's topology on loopback: two `speakerid serve` replicas on one database behind
Debian's nginx, configured from deploy/nginx.conf.template (devtools/topology.py).

Enrollments through nginx spread over both replicas and each shows in both replicas' indexes within
a second (each follows the database's change log). One replica is then killed with SIGKILL while
clients enroll and identify: identifications never fail (nginx runs them again on the other
replica), an enrollment fails only if it was in flight on the dead replica when it died, a retry
of it is answered 201 or 409 DuplicateSample (stored once either way), and every acknowledged
enrollment is still there.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from devtools.realtime import ENROLL, conversation, grpc_stream, wav_chunk
from devtools.topology import (
    MAX_BODY_BYTES,
    Outcome,
    Topology,
    client,
    missing_reason,
    nginx_binary,
    post,
    scale_out,
    speech_bodies,
)
from tests.conftest import flac_body, needs_speech
from tests.databases import fresh_url, in_ci, kind_params

pytestmark = [pytest.mark.slow, needs_speech, pytest.mark.alone]

CONVERGENCE_S = 1.0  # every replica reflects an acknowledged write within a second


@pytest.fixture(params=kind_params())
def topology(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Topology]:
    if nginx_binary() is None:
        if in_ci():
            pytest.fail(f"{missing_reason()}; CI must run the scale-out test")
        pytest.skip(missing_reason())
    url = fresh_url(request.param, tmp_path)
    with scale_out(url, replicas=2, folder=tmp_path / "topology") as running:
        yield running


def one_replica_in(folder: Path) -> Iterator[Topology]:
    if nginx_binary() is None:
        if in_ci():
            pytest.fail(f"{missing_reason()}; CI must run the scale-out test")
        pytest.skip(missing_reason())
    with scale_out(fresh_url("sqlite", folder), replicas=1, folder=folder / "topology") as running:
        yield running


@pytest.fixture(scope="module")
def one_replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """One replica behind nginx, shared by the module's tests that leave both running (a start
    costs about 13 s)."""
    yield from one_replica_in(tmp_path_factory.mktemp("one-replica"))


@pytest.fixture()
def own_replica(tmp_path: Path) -> Iterator[Topology]:
    """One replica behind nginx for a test that stops nginx."""
    yield from one_replica_in(tmp_path)


def indexed(replica_url: str) -> int:
    """Speakers in a replica's own index, from its /metrics."""
    text = httpx.get(f"{replica_url}/metrics", timeout=5).text
    line = next(x for x in text.splitlines() if x.startswith("speakerid_index_speakers "))
    return int(float(line.split()[1]))


def seconds_until_indexed(replicas: list[str], count: int, since: float, give_up_s: float = 10.0) -> float:
    """Seconds from `since` until every replica (URL) has `count` speakers in its index."""
    while not all(indexed(url) >= count for url in replicas):
        if time.monotonic() - since > give_up_s:
            pytest.fail(f"not every replica indexed {count} speakers within {give_up_s} s")
        time.sleep(0.02)
    return time.monotonic() - since


def listed(topology: Topology, through: str) -> set[str]:
    with client(through, topology.key) as http:
        answer = http.get("/v1/speakers", params={"limit": 1000})
    assert answer.status_code == 200, answer.text
    return {s["speakerId"] for s in answer.json()["speakers"]}


def test_enrollments_spread_over_both_replicas_and_show_in_both_within_a_second(topology: Topology) -> None:
    bodies = speech_bodies(6)
    lags = []
    with client(topology.url, topology.key) as http:
        for n, (speaker, body) in enumerate(bodies, start=1):
            answer = http.post(f"/v1/speakers/{speaker}/enrollments", json=body)
            assert answer.status_code == 201, answer.text
            acknowledged = time.monotonic()
            lags.append(seconds_until_indexed([r.url for r in topology.replicas], n, acknowledged))
    print(f"slowest replica to index an acknowledged enrollment: {max(lags):.3f} s")
    assert max(lags) < CONVERGENCE_S, lags
    served = set(topology.nginx.upstreams()[-len(bodies) :])
    assert served == {topology.address(r) for r in topology.replicas}, served  # both took writes
    for replica in topology.replicas:
        assert listed(topology, replica.url) == {s for s, _ in bodies}


def test_a_replica_killed_mid_load_fails_only_what_it_held_and_loses_no_write(topology: Topology) -> None:
    bodies = speech_bodies(30)
    seed, fresh = bodies[:4], bodies[4:]
    with client(topology.url, topology.key) as http:
        for speaker, body in seed:
            assert http.post(f"/v1/speakers/{speaker}/enrollments", json=body).status_code == 201
    probes = [body for _, body in speech_bodies(4, seconds=3.0)]

    outcomes: list[Outcome] = []
    enrolled: dict[str, Outcome] = {}
    stop = threading.Event()
    pending = iter(fresh)
    lock = threading.Lock()

    def enroller() -> None:
        with client(topology.url, topology.key) as http:
            while not stop.is_set():
                with lock:
                    item = next(pending, None)
                if item is None:
                    return
                speaker, body = item
                outcome = post(http, speaker, f"/v1/speakers/{speaker}/enrollments", body)
                enrolled[speaker] = outcome
                outcomes.append(outcome)

    def identifier(offset: int) -> None:
        with client(topology.url, topology.key) as http:
            i = offset
            while not stop.is_set():
                outcomes.append(post(http, "identify", "/v1/identify", probes[i % len(probes)]))
                i += 1

    victim, survivor = topology.replicas
    with ThreadPoolExecutor(5) as pool:
        running = [pool.submit(enroller) for _ in range(3)] + [pool.submit(identifier, i) for i in range(2)]
        # Kill once both replicas have acknowledged writes under this load.
        began = time.monotonic()
        while sum(o.ok for o in enrolled.values()) < 4 and time.monotonic() - began < 120:
            time.sleep(0.05)
        killing = time.monotonic()
        victim.kill()  # returns once the process is gone
        killed = time.monotonic()
        while sum(o.ok for o in outcomes if o.start > killed) < 8 and time.monotonic() - killed < 120:
            time.sleep(0.05)
        stop.set()
        for future in running:
            future.result()

    after = [o for o in outcomes if o.start > killed]
    assert sum(o.ok for o in after) >= 8, "no load went on after the kill"
    failed = [o for o in outcomes if not o.ok]
    print(
        f"{len(outcomes)} requests, {len(failed)} failed; the replica was killed {killing - began:.1f} s in"
    )
    # Identifications are run again on the survivor; enrollments fail only if in flight at the kill.
    assert not [o for o in failed if o.what == "identify"], failed
    for o in failed:
        assert o.start < killed and o.end > killing, o
        assert o.status in (None, 502), o
    assert len(failed) <= 3, failed  # at most one per enrolling client

    # The client's retry of a failed enrollment: stored once, whether or not the first try was.
    with client(topology.url, topology.key) as http:
        for o in failed:
            body = dict(fresh)[o.what]
            again = http.post(f"/v1/speakers/{o.what}/enrollments", json=body)
            assert again.status_code == 201 or (
                again.status_code == 409 and again.json()["error"]["code"] == "enrollment.DuplicateSample"
            ), again.text
            enrolled[o.what] = Outcome(o.what, 0, 0, 201)

    acknowledged = {s for s, _ in seed} | {s for s, o in enrolled.items() if o.ok}
    assert listed(topology, topology.url) == acknowledged
    assert listed(topology, survivor.url) == acknowledged
    assert seconds_until_indexed([survivor.url], len(acknowledged), time.monotonic()) < CONVERGENCE_S


@pytest.mark.parametrize(
    "path",
    ["/audio/generic/api/v1/sync/diarization/enroll", "/v1/speakers/alice/enrollments", "/v1/identify"],
)
def test_a_body_over_the_limit_is_refused_by_nginx_in_the_services_own_error_shape(
    one_replica: Topology, path: str
) -> None:
    """nginx refuses it before a replica sees it, and answers exactly as the replica would."""
    body = b'{"content": "' + b"A" * MAX_BODY_BYTES + b'"}'
    headers = {"x-api-key": one_replica.key, "content-type": "application/json"}
    with httpx.Client(timeout=60) as http:
        through = http.post(one_replica.url + path, content=body, headers=headers)
        direct = http.post(one_replica.replicas[0].url + path, content=body, headers=headers)
    assert through.status_code == direct.status_code == 413
    assert through.headers["content-type"].startswith("application/json")
    assert through.json() == direct.json(), (through.text, direct.text)


def test_no_log_of_nginx_keeps_a_key_from_a_query(own_replica: Topology) -> None:
    """The access log records paths without their query; the error log, whose lines carry the
    whole request line, keeps nothing ordinary traffic causes: a body over 1 MiB (buffered to a
    file) and one over the limit (refused) both logged the key at nginx's `warn` level."""
    path = "/audio/generic/api/v2/sync/diarization/get_enrolled_speakers"
    enroll = "/audio/generic/api/v1/sync/diarization/enroll"
    query = {"apikey": own_replica.key}
    json_type = {"content-type": "application/json"}
    with httpx.Client(base_url=own_replica.url, timeout=60) as http:
        answer = http.get(path, params=query)
        assert answer.status_code == 200, answer.text
        for size in (2 * 1024 * 1024, MAX_BODY_BYTES + 1):
            body = b'{"content": "' + b"A" * size + b'", "speakerId": "x"}'
            refused = http.post(enroll, params=query, content=body, headers=json_type)
            assert refused.status_code in (400, 413), refused.text
    own_replica.nginx.stop()  # its logs are complete once it has stopped
    access = own_replica.nginx.access_log.read_text()
    assert f"GET {path} HTTP/1.1" in access and f"POST {enroll} HTTP/1.1" in access
    assert own_replica.key not in access
    errors = own_replica.nginx.error_log.read_text() if own_replica.nginx.error_log.exists() else ""
    assert own_replica.key not in errors


def test_a_grpc_stream_passes_through_nginx_and_is_answered_as_the_replica_answers(
    one_replica: Topology,
) -> None:
    """The official client's realtime stream (HTTP/2) reaches a replica's gRPC port through nginx:
    a refused key is refused, and a conversation gets the answers it gets without nginx."""
    with httpx.Client(base_url=one_replica.url, timeout=120) as http:
        for speaker, paths in ENROLL.items():
            for path in paths:
                done = http.post(
                    "/audio/generic/api/v1/sync/diarization/enroll",
                    params={"apikey": one_replica.key},
                    json=flac_body(path, speaker),
                )
                assert done.status_code == 200, done.text
    with pytest.raises(grpc.RpcError) as refused:
        list(grpc_stream(one_replica.nginx.grpc_target, "not-a-key", []))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    talk = conversation(turn_s=6.0)
    chunks = [wav_chunk(chunk, 3.0 * i) for i, chunk in enumerate(talk.chunks(3.0))]
    through = list(grpc_stream(one_replica.nginx.grpc_target, one_replica.key, chunks, "alice,bob"))
    direct = list(grpc_stream(one_replica.replicas[0].grpc_target, one_replica.key, chunks, "alice,bob"))
    assert [(a.id, a.speaker_id, a.Error) for a in through] == [(a.id, a.speaker_id, a.Error) for a in direct]
    named = {a.speaker_id for a in through}
    assert {"alice", "bob"} <= named, through


def test_a_websocket_stream_passes_through_nginx(one_replica: Topology) -> None:
    """The upgrade reaches the replica, which answers on the open socket (here: the key is refused,
    4401), as it does without nginx; an nginx that drops Upgrade fails the handshake instead."""
    url = one_replica.url.replace("http://", "ws://") + "/v1/identify/stream?apikey=not-a-key"
    with connect(url) as ws:
        assert json.loads(ws.recv(timeout=30))["error"]["code"] == "auth.InvalidKey"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
