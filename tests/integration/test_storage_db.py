"""The store of record on both databases it supports: a SQLite file and a real PostgreSQL.

Every test runs once per kind in `tests.databases.KINDS` on a database of its own: migrations from
empty, the refusal of an unmigrated database, hashed keys and revocation, what one repository
transaction promises (all or nothing, invisible until committed, one writer per speaker), and
enrollment over real HTTP with the real model on real speech, through a restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from devtools.server import server_env, speakerid_command
from service.config import DatabaseSettings
from service.embedding.ecapa import EcapaEmbedder
from service.enrollment.ports import Aggregates, ChangeKind, NewSample, SpeakerStatus
from service.errors import StartupError
from service.main import build_services
from service.storage.database import (
    MIGRATION_LOCK,
    alembic_config,
    check_migrated,
    make_engine,
    migrate,
    unavailable,
)
from service.storage.index import FaissSpeakerIndex
from service.storage.repository import SqlStore
from service.storage.sync import IndexFollower
from service.storage.tables import ApiKey, Base, Change, Sample, Speaker, Tenant
from tests.conftest import LiveServer, flac_body, needs_speech, new_key, settings_for
from tests.databases import fresh_url, indexable_speakers, kind_params, speaker_rows

BY_KIND = pytest.mark.parametrize("kind", kind_params())

ENROLL = "/audio/generic/api/v1/sync/diarization/enroll"
DELETE = "/audio/generic/api/v1/sync/diarization/delete"

# One reader, one session, three different utterances of 11-16 s; a fourth one to identify.
ALICE = [
    "librispeech/test-other/367/367-130732-0002.flac",
    "librispeech/test-other/367/367-130732-0003.flac",
    "librispeech/test-other/367/367-130732-0005.flac",
]
ALICE_AGAIN = "librispeech/test-other/367/367-130732-0007.flac"
BOB = ["vctk/p226/p226_003.wav", "vctk/p226/p226_005.wav"]
BOB_AGAIN = "vctk/p226/p226_008.wav"


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    """A repository on a fresh migrated database of the test's `kind`."""
    engine = make_engine(fresh_url(request.getfixturevalue("kind"), tmp_path))
    yield SqlStore(engine)
    engine.dispose()


def unit_vector(seed: int, dim: int = 192) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def new_sample(vector: np.ndarray) -> NewSample:
    return NewSample(
        sample_id=uuid.uuid4().hex,
        vector=vector,
        model_sha256="0" * 64,
        speech_seconds=5.0,
        duration_seconds=6.0,
        snr_db=20.0,
        clipped_fraction=0.0,
        source_rate=16000,
        audio=None,
    )


def aggregates(vector: np.ndarray, count: int = 1) -> Aggregates:
    return Aggregates(SpeakerStatus.ENROLLING, count, 5.0 * count, 0.0, vector, "0" * 64)


def tenant_of(store: SqlStore, name: str = "acme") -> int:
    _, secret = store.create_key(name)
    found = store.authenticate(secret)
    assert found is not None
    return found.tenant_id


# --- schema ---------------------------------------------------------------------------------------


@BY_KIND
def test_migrations_build_the_schema_from_empty_and_back(kind: str, tmp_path: Path) -> None:
    url = fresh_url(kind, tmp_path, migrated=False)
    engine = make_engine(url)
    try:
        assert inspect(engine).get_table_names() == []
        with pytest.raises(StartupError, match=r"at migration none.*speakerid migrate"):
            check_migrated(engine, url)

        migrate(url)
        check_migrated(engine, url)
        assert set(inspect(engine).get_table_names()) == {*Base.metadata.tables, "alembic_version"}
        with engine.connect() as conn:  # the migrations build exactly what tables.py declares
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []

        command.downgrade(alembic_config(url), "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        migrate(url)
        check_migrated(engine, url)
    finally:
        engine.dispose()


def run_migrate(url: str, folder: Path) -> subprocess.Popen[bytes]:
    env = server_env(folder, SPK_DATABASE_URL=url)
    return subprocess.Popen(
        [*speakerid_command(), "migrate"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


@BY_KIND
def test_two_migrations_at_once_both_succeed(kind: str, tmp_path: Path) -> None:
    """Two containers started together on a new database each run `speakerid migrate`: the
    second waits for the first and finds the schema up to date."""
    url = fresh_url(kind, tmp_path, migrated=False)
    runs = [run_migrate(url, tmp_path) for _ in range(2)]
    outputs = [run.communicate(timeout=120)[0].decode() for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    engine = make_engine(url)
    try:
        check_migrated(engine, url)
    finally:
        engine.dispose()


def test_a_connection_to_a_new_sqlite_file_waits_for_a_writer(tmp_path: Path) -> None:
    """A new file is switched to write-ahead logging on connect, which SQLite refuses at once (no
    busy timeout) while another connection writes to it: the connection tries again instead."""
    path = tmp_path / "new.sqlite"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE t (x INTEGER)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t VALUES (1)")
    done = threading.Timer(1.0, writer.execute, ["COMMIT"])
    done.start()
    engine = make_engine(f"sqlite:///{path}")
    try:
        started = time.monotonic()
        with engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert c.exec_driver_sql("SELECT x FROM t").scalar() == 1
        assert time.monotonic() - started >= 0.5  # it waited for the writer
    finally:
        done.join()
        engine.dispose()
        writer.close()


def test_a_migration_waits_for_the_one_under_way(tmp_path: Path) -> None:
    """On PostgreSQL a migration holds an advisory lock for its transaction: one started meanwhile
    waits for it instead of creating the same tables at the same time (which failed one of them
    now and then on a duplicate type name)."""
    url = fresh_url("postgres", tmp_path, migrated=False)
    engine = make_engine(url)
    try:
        with engine.connect() as holder:  # a migration under way, as far as the lock goes
            holder.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK})")
            waiting = run_migrate(url, tmp_path)
            with pytest.raises(subprocess.TimeoutExpired):
                waiting.wait(timeout=8)  # the command starts and migrates in about 2 s when free
            assert inspect(engine).get_table_names() == []
            holder.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK})")
            output = waiting.communicate(timeout=120)[0].decode()
        assert waiting.returncode == 0, output
        check_migrated(engine, url)
    finally:
        engine.dispose()


@BY_KIND
def test_the_service_refuses_an_unmigrated_database(
    kind: str, tmp_path: Path, embedder: EcapaEmbedder
) -> None:
    url = fresh_url(kind, tmp_path, migrated=False)
    settings = settings_for(url, tmp_path)
    with pytest.raises(StartupError, match="run `speakerid migrate` first"):
        build_services(settings, embedder)

    command.upgrade(alembic_config(url), "0001")  # half-way is refused too
    with pytest.raises(StartupError, match="at migration 0001"):
        build_services(settings, embedder)

    migrate(url)
    services = build_services(settings, embedder)
    services.runtime.engine.dispose()


# --- keys -----------------------------------------------------------------------------------------


@BY_KIND
def test_keys_are_stored_hashed_and_revocation_takes_effect(kind: str, store: SqlStore) -> None:
    key_id, secret = store.create_key("acme")
    other_id, other = store.create_key("acme")
    with store.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(select(ApiKey))]
        assert conn.scalar(select(func.count()).select_from(Tenant)) == 1
    assert {r["key_hash"] for r in rows} == {hashlib.sha256(s.encode()).hexdigest() for s in (secret, other)}
    assert not any(secret in str(v) or other in str(v) for r in rows for v in r.values())

    found = store.authenticate(secret)
    assert found is not None and (found.tenant, found.key_id) == ("acme", key_id)
    assert store.authenticate(secret + "x") is None
    assert store.authenticate("") is None

    assert store.revoke_key(key_id)
    assert store.authenticate(secret) is None
    assert store.authenticate(other) is not None
    assert store.revoke_key(key_id)  # revoking twice is fine
    assert not store.revoke_key("key_missing")
    assert {(k.key_id, k.revoked) for k in store.list_keys()} == {(key_id, True), (other_id, False)}
    assert store.has_active_key()
    assert store.revoke_key(other_id)
    assert not store.has_active_key()


@BY_KIND
def test_keys_for_a_new_tenant_created_at_once_share_one_tenant(kind: str, store: SqlStore) -> None:
    start = threading.Barrier(8)
    secrets: list[str] = []
    errors: list[BaseException] = []

    def create() -> None:
        start.wait()
        try:
            secrets.append(store.create_key("newco")[1])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    tenants = {found.tenant_id for s in secrets if (found := store.authenticate(s)) is not None}
    assert len(secrets) == 8 and len(tenants) == 1


# --- transactions ---------------------------------------------------------------------------------


@BY_KIND
def test_a_transaction_is_invisible_until_it_commits_and_all_or_nothing(kind: str, store: SqlStore) -> None:
    tenant = tenant_of(store)
    before = store.last_change_seq()

    class Abort(Exception):
        pass

    with pytest.raises(Abort), store.transaction() as tx:
        speaker = tx.lock_speaker(tenant, "ghost", create=True)
        assert speaker is not None
        tx.add_sample(speaker.id, new_sample(unit_vector(1)))
        tx.update_speaker(speaker.id, aggregates(unit_vector(1)))
        tx.log_change(tenant, speaker.id, ChangeKind.SAMPLE_ADDED)
        raise Abort
    assert store.get_speaker(tenant, "ghost") is None
    assert store.counts()["speakers"] == 0 and store.counts()["samples"] == 0
    assert store.last_change_seq() == before

    seen: list[tuple[object, ...]] = []

    def read() -> None:
        found = store.get_speaker(tenant, "alice")
        seen.append((found, store.counts()["samples"], store.index_entries(), store.last_change_seq()))

    reader = threading.Thread(target=read)
    with store.transaction() as tx:
        speaker = tx.lock_speaker(tenant, "alice", create=True)
        assert speaker is not None
        tx.add_sample(speaker.id, new_sample(unit_vector(2)))
        tx.update_speaker(speaker.id, aggregates(unit_vector(2)))
        tx.log_change(tenant, speaker.id, ChangeKind.SAMPLE_ADDED)
        reader.start()
        reader.join(1.0)
        answered_before_commit = not reader.is_alive()
    reader.join(40)
    # No other connection sees any of it before the commit. (PostgreSQL answers readers at once;
    # SQLite's BEGIN IMMEDIATE on every transaction makes the reader wait for the commit.)
    if answered_before_commit:
        assert seen == [(None, 0, [], before)]
    else:
        assert kind == "sqlite"
    stored = store.get_speaker(tenant, "alice")
    assert stored is not None and stored.sample_count == 1
    assert np.allclose(stored.centroid, unit_vector(2))  # type: ignore[arg-type]
    assert [e.speaker_id for e in store.index_entries()] == [stored.id]
    changes = store.changes_since(before)
    assert [(c.tenant_id, c.speaker_id) for c in changes] == [(tenant, stored.id)]
    assert store.last_change_seq() == changes[0].seq > before


@BY_KIND
@pytest.mark.parametrize("first", ["commits", "rolls back", "deletes"])
def test_one_writer_at_a_time_per_speaker(kind: str, store: SqlStore, first: str) -> None:
    """A second transaction locking the same speaker waits for the first, then sees its outcome."""
    tenant = tenant_of(store)
    if first == "deletes":
        with store.transaction() as tx:
            existing = tx.lock_speaker(tenant, "bob", create=True)
            assert existing is not None
            tx.update_speaker(existing.id, aggregates(unit_vector(3)))
    holding, release = threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    class Abort(Exception):
        pass

    def first_writer() -> None:
        with contextlib.suppress(Abort), store.transaction() as tx:
            speaker = tx.lock_speaker(tenant, "bob", create=True)
            assert speaker is not None
            seen["first"] = speaker.id
            if first == "deletes":
                tx.delete_speaker(speaker.id)
            else:
                tx.update_speaker(speaker.id, aggregates(unit_vector(4)))
            holding.set()
            release.wait(10)
            if first == "rolls back":
                raise Abort

    def second_writer() -> None:
        with store.transaction() as tx:
            speaker = tx.lock_speaker(tenant, "bob", create=True)
            assert speaker is not None
            seen["second"] = speaker.id

    a = threading.Thread(target=first_writer)
    a.start()
    assert holding.wait(10)
    b = threading.Thread(target=second_writer)
    b.start()
    time.sleep(0.5)
    assert "second" not in seen, "the second writer did not wait for the first"
    release.set()
    a.join(10)
    b.join(10)
    assert "second" in seen
    final = store.get_speaker(tenant, "bob")
    assert final is not None and final.id == seen["second"]
    assert store.count_speakers(tenant) == 1
    # After a commit the second writer locked the first one's row; otherwise a new, empty one.
    assert (final.centroid is not None) == (first == "commits")


# --- the enroll path over HTTP on each database ----------------------------------------------------


def rows(engine: Engine, key: str, speaker_id: str) -> tuple[list[int], int]:
    """(speaker row ids, sample row count) of one speakerId of the key's tenant."""
    ids = speaker_rows(engine, key, speaker_id)
    with engine.connect() as conn:
        samples = conn.scalar(select(func.count()).where(Sample.speaker_id.in_(ids)))
    return ids, samples or 0


def change_kinds(engine: Engine, speaker_row: int) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.scalars(select(Change.kind).where(Change.speaker_id == speaker_row).order_by(Change.seq))
        )


def identify(client: httpx.Client, path: str) -> tuple[str | None, set[str]]:
    """The speakerId a clip is identified as (or None), and every candidate named."""
    answer = client.post("/v1/identify", json=flac_body(path))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return body["speakerId"], {c["speakerId"] for c in body["candidates"]}


@needs_speech
@pytest.mark.model
def test_enroll_to_complete_then_delete_over_http(live_db: LiveServer, embedder: EcapaEmbedder) -> None:
    key = new_key(live_db.settings, f"acme-{uuid.uuid4().hex[:6]}")
    with live_db.client(key) as client:
        answers = [client.post(ENROLL, json=flac_body(path, "alice")) for path in ALICE]
        assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
        assert [a.json()["message"] for a in answers] == ["Success", "Success", "Complete"]
        (speaker,), samples = rows(live_db.engine, key, "alice")
        assert samples == 3 and change_kinds(live_db.engine, speaker) == ["sample+"] * 3
        with live_db.engine.connect() as conn:
            row = conn.execute(select(Speaker).where(Speaker.id == speaker)).one()
            vectors = list(conn.scalars(select(Sample.vector).where(Sample.speaker_id == speaker)))
        assert (row.status, row.sample_count) == ("complete", 3)
        assert [len(v) for v in vectors] == [4 * embedder.dim] * 3
        entry = live_db.services.runtime.index.get(speaker)
        assert entry is not None and entry.complete
        assert np.array_equal(entry.centroid, np.frombuffer(row.centroid, dtype="<f4"))
        assert live_db.index_ids() == indexable_speakers(live_db.engine)
        assert client.post(ENROLL, json=flac_body(BOB[0], "bob")).status_code == 200
        assert identify(client, ALICE_AGAIN) == ("alice", {"alice", "bob"})

        answer = client.post(DELETE, json={"speakerId": "alice"})
        assert answer.status_code == 200 and answer.json() == {"message": "Success"}
        assert rows(live_db.engine, key, "alice") == ([], 0)
        assert change_kinds(live_db.engine, speaker) == ["sample+"] * 3 + ["speaker-"]
        assert speaker not in live_db.index_ids()
        assert live_db.index_ids() == indexable_speakers(live_db.engine)
        assert client.get("/v1/speakers/alice").status_code == 404
        assert identify(client, ALICE_AGAIN) == (None, {"bob"})


@needs_speech
@pytest.mark.model
def test_a_restart_keeps_every_speaker_and_the_index(live_db: LiveServer) -> None:
    key = new_key(live_db.settings, f"acme-{uuid.uuid4().hex[:6]}")
    with live_db.client(key) as client:
        for path in BOB:
            assert client.post(ENROLL, json=flac_body(path, "bob")).status_code == 200
        assert client.post(ENROLL, json=flac_body(ALICE[0], "alice")).status_code == 200
        before = {s: client.get(f"/v1/speakers/{s}").json() for s in ("bob", "alice")}
        ids_before = live_db.index_ids()

    live_db.restart()

    assert live_db.index_ids() == ids_before == indexable_speakers(live_db.engine)
    with live_db.client(key) as client:
        assert {s: client.get(f"/v1/speakers/{s}").json() for s in ("bob", "alice")} == before
        assert before["bob"]["samples"] == 2
        assert identify(client, BOB_AGAIN)[0] == "bob"
        assert client.post(ENROLL, json=flac_body(ALICE[1], "alice")).status_code == 200
        assert client.get("/v1/speakers/alice").json()["samples"] == 2
    (speaker,), samples = rows(live_db.engine, key, "alice")
    assert samples == 2 and change_kinds(live_db.engine, speaker) == ["sample+"] * 2


@BY_KIND
def test_twins_round_trip_and_a_row_without_one_falls_back(store: SqlStore, kind: str) -> None:
    wide, twin, plain = unit_vector(1), unit_vector(2), unit_vector(3)
    narrow_centroid = unit_vector(4)
    with store.transaction() as tx:
        speaker = tx.lock_speaker(tenant_of(store), "alice", create=True)
        assert speaker is not None
        tx.add_sample(speaker.id, replace(new_sample(wide), narrow_vector=twin))
        tx.add_sample(speaker.id, new_sample(plain))  # enrolled before twins, or narrowband
        tx.update_speaker(speaker.id, replace(aggregates(wide), narrow_centroid=narrow_centroid))
        tx.log_change(speaker.tenant_id, speaker.id, ChangeKind.SAMPLE_ADDED)
    with store.transaction() as tx:
        first, second = tx.samples(speaker.id)
    assert first.narrow_vector is not None and np.array_equal(first.band_vector, twin)
    assert second.narrow_vector is None and np.array_equal(second.band_vector, plain)
    (entry,) = store.index_entries([speaker.id])
    assert entry.narrow_centroid is not None and np.array_equal(entry.narrow_centroid, narrow_centroid)
    record = store.get_speaker(speaker.tenant_id, "alice")
    assert record is not None and record.narrow_centroid is not None


@BY_KIND
def test_the_index_is_given_only_the_running_models_voiceprints(store: SqlStore, kind: str) -> None:
    """After a model change and before `rebuild-index` (or while replicas run two models in an
    upgrade), a speaker's voiceprint of the other model is left out, not scored against."""
    tenant = tenant_of(store)
    for name, model in (("old", "a" * 64), ("new", "b" * 64)):
        with store.transaction() as tx:
            speaker = tx.lock_speaker(tenant, name, create=True)
            assert speaker is not None
            tx.add_sample(speaker.id, new_sample(unit_vector(5)))
            tx.update_speaker(speaker.id, replace(aggregates(unit_vector(5)), model_sha256=model))
            tx.log_change(tenant, speaker.id, ChangeKind.SAMPLE_ADDED)
    assert {e.external_id for e in store.index_entries()} == {"old", "new"}
    assert {e.external_id for e in store.index_entries(model_sha256="b" * 64)} == {"new"}
    index = FaissSpeakerIndex(192)
    follower = IndexFollower(store, index, "b" * 64)
    follower.rebuild()
    assert index.lookup(tenant, "new") is not None and index.lookup(tenant, "old") is None


@BY_KIND
def test_a_page_of_speakers_gets_each_ones_latest_sample_in_one_query(store: SqlStore, kind: str) -> None:
    tenant = tenant_of(store)
    added: dict[int, list[str]] = {}
    for name, count in (("alice", 3), ("bob", 1), ("carol", 2)):
        with store.transaction() as tx:
            speaker = tx.lock_speaker(tenant, name, create=True)
            assert speaker is not None
            for i in range(count):
                sample = replace(new_sample(unit_vector(10 * count + i)), speech_seconds=1.0 + i)
                tx.add_sample(speaker.id, sample)
                added.setdefault(speaker.id, []).append(sample.sample_id)
    latest = store.latest_samples(list(added))
    assert {i: s.sample_id for i, s in latest.items()} == {i: ids[-1] for i, ids in added.items()}
    for speaker_row, summary in latest.items():
        single = store.latest_sample(speaker_row)
        assert single is not None and (summary.speech_seconds, summary.snr_db) == (
            single.speech_seconds,
            single.snr_db,
        )
    assert store.latest_samples([]) == {}


def test_the_readiness_ping_neither_takes_nor_waits_for_sqlites_write_lock(tmp_path: Path) -> None:
    """Every session on SQLite begins with BEGIN IMMEDIATE; the ping must not, or a probe waits out
    a long write (up to the 30 s busy timeout) and the replica flaps to not ready."""
    url = fresh_url("sqlite", tmp_path)
    engine = make_engine(url)
    writer = sqlite3.connect(str(make_url(url).database), isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # another process's long write holds the lock
        pinged = threading.Event()

        def ping() -> None:
            SqlStore(engine).ping()
            pinged.set()

        threading.Thread(target=ping, daemon=True).start()
        assert pinged.wait(10), "the ping waited for the write lock"
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        engine.dispose()


@pytest.mark.postgres
def test_a_stalled_holder_of_a_tenants_lock_stops_no_one_for_long(tmp_path: Path) -> None:
    """A replica whose link stalls inside an enrollment holds its speaker's row and its tenant's
    lock: another replica waits for the row at most the lock timeout (a 503, not a hang), for the
    tenant's lock at most 4x that, and the server ends the stalled session once it has been idle in
    its transaction past its timeout, which frees both; the stalled transaction cannot commit."""
    url = fresh_url("postgres", tmp_path)
    timeouts = DatabaseSettings(lock_timeout_s=1.0, idle_in_transaction_timeout_s=2.5)
    stalled, healthy = SqlStore(make_engine(url, timeouts)), SqlStore(make_engine(url, timeouts))
    tenant = tenant_of(healthy)
    with healthy.transaction() as tx:
        tx.lock_speaker(tenant, "alice", create=True)
    try:
        held = stalled.transaction()
        tx = held.__enter__()
        tx.lock_tenant(tenant)
        tx.lock_speaker(tenant, "alice", create=False)  # ... then nothing more: it stalled
        started = time.monotonic()
        with pytest.raises(SQLAlchemyError) as waited, healthy.transaction() as other:
            other.lock_speaker(tenant, "alice", create=False)
        assert unavailable(waited.value) and time.monotonic() - started < 2.0
        with healthy.transaction() as other:  # the tenant's lock: free once the stalled session ends
            other.lock_tenant(tenant)
            other.lock_speaker(tenant, "alice", create=False)
        assert time.monotonic() - started < 4.5
        with pytest.raises(SQLAlchemyError) as ended:
            held.__exit__(None, None, None)  # its commit
        assert unavailable(ended.value)
    finally:
        stalled.engine.dispose()
        healthy.engine.dispose()


@BY_KIND
def test_an_outage_is_told_from_a_bug(store: SqlStore, kind: str) -> None:
    """A missing table is a bug to see (500, traceback), not an outage to wait out (503)."""
    with pytest.raises(SQLAlchemyError) as bug, store.engine.connect() as conn:
        conn.execute(text("SELECT * FROM no_such_table"))
    assert not unavailable(bug.value)
    if kind == "sqlite":  # the write lock not had in time
        impatient = create_engine(store.engine.url, connect_args={"timeout": 0.1})
        # The store's connection begins IMMEDIATE, taking the write lock; the other waits 0.1 s.
        with store.engine.begin(), impatient.connect() as waiter, pytest.raises(SQLAlchemyError) as down:
            waiter.exec_driver_sql("BEGIN IMMEDIATE")
        impatient.dispose()
    else:  # no server there
        unreachable = make_engine(store.engine.url.set(port=1).render_as_string(hide_password=False))
        with pytest.raises(SQLAlchemyError) as down, unreachable.connect():
            pass
    assert unavailable(down.value)


@BY_KIND
def test_the_change_log_is_purged_of_rows_older_than_asked_but_its_newest(store: SqlStore, kind: str) -> None:
    """Old rows go; the newest stays whatever its age, so the next number is still above every
    follower's floor (SQLite numbers a row max(seq) + 1: an empty table would start at 1 again)."""
    tenant = tenant_of(store)

    def log(name: str) -> None:
        with store.transaction() as tx:
            speaker = tx.lock_speaker(tenant, name, create=True)
            assert speaker is not None
            tx.log_change(tenant, speaker.id, ChangeKind.SAMPLE_ADDED)

    for name in ("old", "new", "newest"):
        log(name)
    seqs = [c.seq for c in store.changes_since(0)]
    with Session(store.engine) as s, s.begin():
        s.query(Change).update({"created_at": datetime.now(UTC) - timedelta(days=2)})
    assert store.purge_changes(datetime.now(UTC) - timedelta(days=1)) == 2
    assert [c.seq for c in store.changes_since(0)] == seqs[-1:]
    log("later")
    assert store.changes_since(seqs[-1])[0].seq > seqs[-1]


@pytest.mark.postgres
def test_the_session_limits_come_on_top_of_an_operators_own_options(tmp_path: Path) -> None:
    """Set on each connection, not as a startup parameter: an `options` in the URL (or PGOPTIONS)
    keeps working, and poolers that refuse startup options are not asked for any."""
    url = make_url(fresh_url("postgres", tmp_path)).update_query_dict(
        {"options": "-c statement_timeout=7000"}
    )
    engine = make_engine(url.render_as_string(hide_password=False), DatabaseSettings(lock_timeout_s=3.0))
    try:
        with engine.connect() as conn:
            shown = {
                name: conn.execute(text(f"SHOW {name}")).scalar_one()
                for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
            }
        assert shown == {
            "statement_timeout": "7s",
            "lock_timeout": "3s",
            "idle_in_transaction_session_timeout": "15s",
        }
    finally:
        engine.dispose()
