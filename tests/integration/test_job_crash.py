"""Async jobs survive SIGKILL: `speakerid serve` (a child process, real model, real speech) is killed
while it runs a job, twice, and restarted; a webhook receiver on loopback then holds every job's
result, signed with the tenant's secret, the same result as the jobs no kill touched, and once
(a second copy is allowed only for a job whose delivery was in flight at a kill)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import Engine, select

from devtools.clips import encode_recipe, load_clip
from devtools.server import ServerProcess, create_key, server_env
from devtools.webhooks import Receiver, receiver
from service.jobs.webhooks import SIGNATURE_HEADER, verify
from service.storage.database import make_engine
from service.storage.jobs import SqlJobStore
from service.storage.tables import Job
from tests.conftest import b64, flac_body, needs_speech
from tests.databases import fresh_url, kind_params, tenant_of_key

pytestmark = [needs_speech, pytest.mark.model, pytest.mark.slow]

ENROLLED = {
    "alice": [f"librispeech/test-other/367/367-130732-000{i}.flac" for i in (2, 3, 5)],
    "bob": [f"librispeech/test-other/2609/2609-156975-000{i}.flac" for i in (2, 4, 6)],
}
HELD_OUT = [
    "librispeech/test-other/367/367-130732-0007.flac",
    "librispeech/test-other/2609/2609-156975-0007.flac",
]
JOBS = 6
KILLS = 2
ASYNC = "/audio/generic/api/v1/async/diarization/identify"
SYNC = "/audio/generic/api/v1/sync/diarization/identify"


@pytest.fixture
def hooks() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


def rows(engine: Engine) -> list[Job]:
    with engine.connect() as conn:
        return list(conn.execute(select(Job).order_by(Job.id)).all())  # type: ignore[arg-type]


def wait_for_a_running_job(engine: Engine, server: ServerProcess, timeout_s: float = 120) -> list[Job]:
    """The jobs' rows at a moment when one of them runs in `server` (not one left by a dead one)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.proc is not None and server.proc.poll() is None, server.log_tail()
        now = rows(engine)
        if any(r.state == "running" and r.worker and str(server.proc.pid) in r.worker for r in now):
            return now
        time.sleep(0.02)
    raise AssertionError(f"no job started within {timeout_s} s:\n{server.log_tail()}")


@pytest.mark.parametrize("kind", kind_params())
def test_every_result_is_delivered_once_across_kills(kind: str, tmp_path: Path, hooks: Receiver) -> None:
    url = fresh_url(kind, tmp_path)
    env = server_env(
        tmp_path,
        SPK_DATABASE_URL=url,
        SPK_EGRESS__ALLOWED_HOSTS="127.0.0.1",
        SPK_JOBS__LEASE_SECONDS="2",
        SPK_JOBS__POLL_SECONDS="0.1",
        SPK_JOBS__WEBHOOK_BACKOFF_S="0.2",
        SPK_JOBS__WEBHOOK_MAX_BACKOFF_S="1",
    )
    key = create_key(env, "crash")
    engine = make_engine(url)
    server = ServerProcess(env, tmp_path)
    clips = [load_clip(p) for p in HELD_OUT]
    conversation = encode_recipe(np.concatenate([c.samples for c in clips]), clips[0].sample_rate, "flac")
    body = {"content": b64(conversation), "encoding": "FLAC", "sampleRate": 16000}
    try:
        server.start()
        server.wait_ready()
        with httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=120) as http:
            for speaker, paths in ENROLLED.items():
                for path in paths:
                    assert (
                        http.post(f"/v1/speakers/{speaker}/enrollments", json=flac_body(path)).status_code
                        == 201
                    )
            expected = [
                {"speaker_id": s["speakerId"], "start": s["start"], "end": s["end"]}
                for s in http.post(SYNC, json=body).json()
            ]
            assert {s["speaker_id"] for s in expected} >= {"alice", "bob"}
            for i in range(JOBS):
                answer = http.post(ASYNC, params={"webhook": hooks.hook, "request_id": f"job-{i}"}, json=body)
                assert answer.status_code == 202, answer.text

        in_flight: set[str] = set()
        killed_mid_job: set[str] = set()
        for _ in range(KILLS):
            at_kill = wait_for_a_running_job(engine, server)
            server.kill()
            killed_mid_job |= {r.request_id for r in at_kill if r.state == "running"}
            in_flight |= {r.request_id for r in at_kill if r.delivery == "pending"}
            server.start()
            server.wait_ready()
        assert killed_mid_job

        for i in range(JOBS):
            hooks.wait_for(f"job-{i}", timeout_s=300)
        secret = SqlJobStore(engine).webhook_secret(tenant_of_key(engine, key))
        for i in range(JOBS):
            rid = f"job-{i}"
            got = hooks.received(rid)
            assert len(got) == 1 or (rid in in_flight and len(got) == 2), (rid, len(got))
            for delivery in got:
                assert verify(secret, delivery.headers[SIGNATURE_HEADER], delivery.body)
                assert delivery.json == {"request_id": rid, "segments": expected}
        deadline = time.monotonic() + 30
        while any(r.delivery == "pending" for r in rows(engine)) and time.monotonic() < deadline:
            time.sleep(0.1)
        final = {r.request_id: r for r in rows(engine)}
        assert all(
            r.state == "completed" and r.audio is None and r.delivery == "delivered" for r in final.values()
        )
        assert all(final[rid].runs >= 2 for rid in killed_mid_job)  # run again after the kill
    finally:
        server.stop()
        engine.dispose()
