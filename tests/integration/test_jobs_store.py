"""Job claims, leases, retries and purging on a real SQLite and PostgreSQL: several workers on one
database run each job once; a dead worker's job is claimed again after its lease; a job that keeps
killing its worker fails; webhook retries back off within a bounded time."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, update

from devtools.webhooks import receiver
from service import cli
from service.config import JobsSettings
from service.egress import Egress, EgressRule
from service.jobs.ports import Attempt, JobRecord, NewJob
from service.jobs.worker import JobContext, JobWorker
from service.storage.database import make_engine
from service.storage.jobs import SqlJobStore
from service.storage.repository import SqlStore
from service.storage.tables import Job
from tests.databases import fresh_url, kind_params


@pytest.fixture(params=kind_params())
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(fresh_url(request.param, tmp_path))
    yield engine
    engine.dispose()


@pytest.fixture
def tenant(engine: Engine) -> int:
    SqlStore(engine).create_key("acme")
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT id FROM tenants WHERE name = 'acme'").scalar_one())


def new_job(tenant: int, rid: str, webhook: str | None = None) -> NewJob:
    return NewJob(tenant, rid, "echo", "/test", {"n": rid}, b"audio", webhook)


def worker(store: SqlJobStore, handler: Any, **settings: Any) -> JobWorker:
    jobs = JobsSettings(**{"poll_seconds": 0.02, "lease_seconds": 5.0, **settings})
    return JobWorker(store, {"echo": handler}, jobs, Egress(EgressRule()))


def test_concurrent_workers_run_each_job_once(engine: Engine, tenant: int) -> None:
    store = SqlJobStore(engine)
    for i in range(40):
        store.create(new_job(tenant, f"r{i}"))
    runs: list[tuple[str, str]] = []
    lock = threading.Lock()

    def handler_of(name: str) -> Any:
        def run(job: JobRecord, ctx: JobContext) -> dict[str, Any]:
            time.sleep(0.005)
            with lock:
                runs.append((job.request_id, name))
            return {"echo": job.params["n"]}

        return run

    workers = [worker(SqlJobStore(engine), handler_of(f"w{i}")) for i in range(4)]
    threads = [threading.Thread(target=lambda w=w: [None for _ in iter(w.run_next, False)]) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(rid for rid, _ in runs) == sorted(f"r{i}" for i in range(40))  # each once
    assert len({name for _, name in runs}) > 1  # the work was shared
    for i in range(40):
        job = store.get(tenant, f"r{i}")
        assert job is not None and job.state == "completed" and job.runs == 1 and job.audio is None
        assert job.result == {"request_id": f"r{i}", "echo": f"r{i}"}


def test_a_dead_worker_s_job_is_claimed_again_after_its_lease(engine: Engine, tenant: int) -> None:
    store = SqlJobStore(engine)
    store.create(new_job(tenant, "r1"))
    dead = store.claim("dead-worker", lease_s=0.5)  # claimed, then the process "dies": no renewal
    assert dead is not None and dead.runs == 1
    assert store.claim("other", lease_s=5) is None  # the lease still holds
    time.sleep(0.7)
    again = store.claim("other", lease_s=5)
    assert again is not None and again.id == dead.id and again.runs == 2 and again.audio == b"audio"
    # The dead worker's late result is refused: the job is the other's now.
    assert not store.finish(dead.id, "dead-worker", "completed", {"request_id": "r1"})
    assert store.finish(again.id, "other", "completed", {"request_id": "r1", "by": "other"})
    job = store.get(tenant, "r1")
    assert job is not None and job.result == {"request_id": "r1", "by": "other"}


def test_a_job_that_keeps_dying_fails(engine: Engine, tenant: int) -> None:
    store = SqlJobStore(engine)
    store.create(new_job(tenant, "poison"))
    for _ in range(3):
        assert store.claim("w", lease_s=0.01) is not None
        time.sleep(0.05)
    w = worker(store, lambda job, ctx: {"never": True}, max_runs=3)
    assert w.run_next()
    job = store.get(tenant, "poison")
    assert job is not None and job.state == "failed" and job.audio is None
    assert job.result is not None and job.result["fault"]["detail"]["errorcode"] == "job.Abandoned"


def test_a_stopping_worker_gives_its_job_back(engine: Engine, tenant: int) -> None:
    store = SqlJobStore(engine)
    store.create(new_job(tenant, "long"))
    started = threading.Event()

    def long(job: JobRecord, ctx: JobContext) -> dict[str, Any]:
        started.set()
        while True:
            ctx.cancel.check()
            time.sleep(0.01)

    w = worker(store, long).start()
    assert started.wait(10)
    w.stop()
    job = store.get(tenant, "long")
    assert job is not None and job.state == "queued" and job.runs == 0 and job.audio == b"audio"


def test_webhook_backoff_grows_with_jitter_and_stops_in_time(engine: Engine, tenant: int) -> None:
    w = worker(
        SqlJobStore(engine), None, webhook_backoff_s=2, webhook_max_backoff_s=60, webhook_retry_seconds=300
    )
    first = datetime(2026, 1, 1, tzinfo=UTC)
    base = dict(
        id=1, tenant_id=tenant, request_id="r", kind="echo", api="/", state="completed", params={},
        audio=None, webhook="http://x", result={}, progress=1.0, runs=1, delivery="pending",
        first_delivery_at=first, created_at=first, finished_at=first,
    )  # fmt: skip
    for attempts, lo, hi in [(0, 1, 2), (1, 2, 4), (2, 4, 8), (5, 30, 60), (9, 30, 60), (2000, 30, 60)]:
        at = w.next_attempt(JobRecord(**base, delivery_attempts=attempts), first)  # type: ignore[arg-type]
        assert at is not None and lo <= (at - first).total_seconds() <= hi
    late = first + timedelta(seconds=290)
    assert w.next_attempt(JobRecord(**base, delivery_attempts=9), late) is None  # type: ignore[arg-type]


def test_deliveries_are_claimed_once_and_attempts_recorded(engine: Engine, tenant: int) -> None:
    store = SqlJobStore(engine)
    store.create(new_job(tenant, "r1", webhook="http://127.0.0.1:9/hook"))
    job = store.claim("w", 5)
    assert job is not None and store.finish(job.id, "w", "completed", {"request_id": "r1"})
    claimed = store.claim_delivery("a", 30)
    assert claimed is not None and store.claim_delivery("b", 30) is None
    store.record_attempt(
        job.id, "a", Attempt(None, "ConnectError", 0.01), datetime.now(UTC) - timedelta(seconds=1)
    )
    again = store.claim_delivery("b", 30)
    assert again is not None and again.delivery_attempts == 1
    store.record_attempt(job.id, "b", Attempt(204, None, 0.01), None)
    assert store.claim_delivery("c", 30) is None
    assert [(a.status_code, a.error) for a in store.attempts(job.id)] == [(None, "ConnectError"), (204, None)]
    final = store.get(tenant, "r1")
    assert final is not None and final.delivery == "delivered"


def handed_over(store: SqlJobStore, tenant: int) -> int:
    """A finished job whose delivery worker "a" claimed and lost at once (a receiver kept it
    waiting past its lease) and worker "b" holds now; its id."""
    store.create(new_job(tenant, "r1", webhook="http://127.0.0.1:9/hook"))
    job = store.claim("w", 5)
    assert job is not None and store.finish(job.id, "w", "completed", {"request_id": "r1"})
    assert store.claim_delivery("a", 0.0) is not None
    assert store.claim_delivery("b", 30) is not None
    return job.id


def test_a_worker_that_lost_its_delivery_lease_does_not_undo_the_delivery(
    engine: Engine, tenant: int
) -> None:
    store = SqlJobStore(engine)
    job_id = handed_over(store, tenant)
    store.record_attempt(job_id, "b", Attempt(204, None, 0.01), None)
    store.record_attempt(job_id, "a", Attempt(None, "ReadTimeout", 40.0), None)  # a gives up late
    final = store.get(tenant, "r1")
    assert final is not None and final.delivery == "delivered" and final.delivery_attempts == 2
    assert [a.error for a in store.attempts(job_id)] == [None, "ReadTimeout"]


def test_a_failure_of_a_worker_without_the_lease_leaves_the_schedule_to_the_holder(
    engine: Engine, tenant: int
) -> None:
    store = SqlJobStore(engine)
    job_id = handed_over(store, tenant)
    store.record_attempt(job_id, "a", Attempt(None, "ReadTimeout", 40.0), None)  # would be "failed"
    held = store.get(tenant, "r1")
    assert held is not None and held.delivery == "pending"
    store.record_attempt(job_id, "b", Attempt(204, None, 0.01), None)
    final = store.get(tenant, "r1")
    assert final is not None and final.delivery == "delivered"


def test_results_are_purged_after_their_time(engine: Engine, tenant: int) -> None:
    store = SqlJobStore(engine)
    for rid in ("done", "waiting"):
        store.create(new_job(tenant, rid, webhook="http://127.0.0.1:9/hook" if rid == "waiting" else None))
    for _ in range(2):
        job = store.claim("w", 5)
        assert job is not None and store.finish(job.id, "w", "completed", {"request_id": job.request_id})
    store.create(new_job(tenant, "queued"))
    assert store.purge(datetime.now(UTC) - timedelta(hours=1)) == 0  # too recent
    assert store.purge(datetime.now(UTC) + timedelta(hours=1)) == 1  # not the undelivered nor the queued
    assert store.get(tenant, "done") is None
    assert store.get(tenant, "waiting") is not None and store.get(tenant, "queued") is not None


def test_webhook_secrets_are_per_tenant_and_rotate(engine: Engine, tenant: int) -> None:
    store = SqlJobStore(engine)
    SqlStore(engine).create_key("other")
    first = store.webhook_secret(tenant)
    assert first.startswith("whsec_") and store.webhook_secret(tenant) == first
    assert store.tenant_webhook_secret("acme") == first
    assert store.tenant_webhook_secret("other") not in (None, first)
    rotated = store.tenant_webhook_secret("acme", rotate=True)
    assert rotated not in (None, first) and store.webhook_secret(tenant) == rotated
    assert store.tenant_webhook_secret("nobody") is None


def test_operator_command_shows_and_rotates_a_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = fresh_url("sqlite", tmp_path)
    monkeypatch.setenv("SPK_DATABASE_URL", url)
    engine = make_engine(url)
    try:
        SqlStore(engine).create_key("acme")
        assert cli.main(["webhooks", "secret", "--tenant", "acme"]) == 0
        shown = capsys.readouterr().out.strip()
        assert cli.main(["webhooks", "secret", "--tenant", "acme", "--rotate"]) == 0
        rotated = capsys.readouterr().out.strip()
        with engine.connect() as conn:
            tenant_id = int(conn.exec_driver_sql("SELECT id FROM tenants").scalar_one())
        assert shown.startswith("whsec_") and rotated != shown
        assert SqlJobStore(engine).webhook_secret(tenant_id) == rotated
        assert cli.main(["webhooks", "secret", "--tenant", "nobody"]) == 1
    finally:
        engine.dispose()


def test_progress_is_written_while_the_job_runs(engine: Engine, tenant: int) -> None:
    store = SqlJobStore(engine)
    store.create(new_job(tenant, "slow"))
    go_on = threading.Event()

    def slow(job: JobRecord, ctx: JobContext) -> dict[str, Any]:
        ctx.report(0.4)
        assert go_on.wait(10)
        return {}

    w = worker(store, slow, lease_seconds=60.0).start()  # no renewal due: the report writes it
    try:
        deadline = time.monotonic() + 10
        while (job := store.get(tenant, "slow")) is not None and job.progress != 0.4:
            assert time.monotonic() < deadline, job
            time.sleep(0.02)
        assert job is not None and job.state == "running"
        go_on.set()
        while (job := store.get(tenant, "slow")) is not None and job.state != "completed":
            assert time.monotonic() < deadline, job
            time.sleep(0.02)
        assert job is not None and job.progress == 1.0
    finally:
        go_on.set()
        w.stop()


def test_a_job_waiting_on_its_input_does_not_hold_up_the_queue(engine: Engine, tenant: int) -> None:
    """A job stuck on its `url` (here: a handler that waits) holds one of the process's job
    threads; the next job runs meanwhile."""
    store = SqlJobStore(engine)
    store.create(new_job(tenant, "stuck"))
    store.create(new_job(tenant, "quick"))
    go_on = threading.Event()

    def handler(job: JobRecord, ctx: JobContext) -> dict[str, Any]:
        if job.request_id == "stuck":
            assert go_on.wait(20)
        return {}

    w = worker(store, handler, workers=2).start()
    try:
        deadline = time.monotonic() + 20
        while (job := store.get(tenant, "quick")) is not None and job.state != "completed":
            assert time.monotonic() < deadline, job
            time.sleep(0.02)
        stuck = store.get(tenant, "stuck")
        assert stuck is not None and stuck.state == "running"
    finally:
        go_on.set()
        w.stop()
    stuck = store.get(tenant, "stuck")
    assert stuck is not None and stuck.state == "completed"


class HangingReceiver:
    """Accepts connections and never answers; counts how many it holds at once."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"
        self.open = self.most = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
                self.open += 1
                self.most = max(self.most, self.open)
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        while conn.recv(65536):  # read the request, answer nothing, until the client gives up
            pass
        with self._lock:
            self.open -= 1

    def close(self) -> None:
        self.server.close()
        with self._lock:
            for conn in self._conns:
                conn.close()


def test_a_hanging_receiver_holds_only_its_own_hosts_slots(engine: Engine, tenant: int) -> None:
    """Results for a receiver that never answers do not hold up another receiver's: at most
    `webhook_per_host` attempts go to one host at once, and the other deliveries are made while
    those still wait."""
    store = SqlJobStore(engine)
    hanging = HangingReceiver()
    with receiver() as healthy:
        for i in range(5):
            store.create(new_job(tenant, f"h{i}", webhook=hanging.url))
        for i in range(3):
            store.create(new_job(tenant, f"ok{i}", webhook=healthy.hook))
        jobs = JobsSettings(poll_seconds=0.02, webhook_timeout_s=4.0, webhook_workers=4, webhook_per_host=2)
        w = JobWorker(store, {"echo": lambda job, ctx: {}}, jobs, Egress(EgressRule.parse("127.0.0.1")))
        w.start()
        try:
            for i in range(3):
                healthy.wait_for(f"ok{i}", timeout_s=30)
            # All three made while the first attempts to the hanging host were still waiting.
            pending = [store.get(tenant, f"h{i}") for i in range(5)]
            assert all(j is not None and j.delivery_attempts == 0 for j in pending), pending
        finally:
            w.stop()
            hanging.close()
    assert hanging.most == 2


def test_the_retry_window_opens_at_the_first_attempt(engine: Engine, tenant: int) -> None:
    """A result whose first attempt came long after the job finished (deliveries queued behind
    others) is still retried: attempts stop `webhook_retry_seconds` after the first attempt."""
    store = SqlJobStore(engine)
    store.create(new_job(tenant, "r1", webhook="http://127.0.0.1:9/hook"))
    job = store.claim("w", 5)
    assert job is not None and store.finish(job.id, "w", "completed", {"request_id": "r1"})
    with engine.begin() as conn:  # finished an hour ago, never attempted
        conn.execute(
            update(Job).where(Job.id == job.id).values(finished_at=datetime.now(UTC) - timedelta(hours=1))
        )
    w = worker(store, None, webhook_retry_seconds=60)
    claimed = store.claim_delivery("w", 30)
    assert claimed is not None and claimed.first_delivery_at is None
    retry_at = w.next_attempt(claimed, datetime.now(UTC))
    assert retry_at is not None  # the window opens now, not when the job finished
    store.record_attempt(job.id, "w", Attempt(None, "ConnectError", 2.0), retry_at)
    again = store.get(tenant, "r1")
    assert again is not None and again.first_delivery_at is not None
    assert abs((datetime.now(UTC) - again.first_delivery_at).total_seconds() - 2.0) < 5
    late = again.first_delivery_at + timedelta(seconds=61)
    assert w.next_attempt(again, late) is None


def test_a_job_claimed_while_the_worker_stops_goes_back_unrun(engine: Engine, tenant: int) -> None:
    """A second job thread whose claim was under way as `stop` ran (it may take the very job the
    first thread just gave back) gives it back instead of running it past the stop."""
    store = SqlJobStore(engine)
    ran: list[str] = []

    def handler(job: JobRecord, ctx: JobContext) -> dict[str, Any]:
        ran.append(job.request_id)
        return {}

    w = worker(store, handler).start()
    w.stop()
    store.create(new_job(tenant, "late"))
    assert w.run_next()  # what the other thread's claim in flight does next
    job = store.get(tenant, "late")
    assert ran == [] and job is not None and job.state == "queued" and job.runs == 0
