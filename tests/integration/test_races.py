"""Concurrent writes to one speaker over real HTTP, on SQLite and on PostgreSQL.

Parallel enrollments of one speaker must each be stored exactly once with the aggregates counting
all of them; an enrollment racing a delete of the same speaker must end as one of the two serial
orders would. After each race the index holds exactly the database's speakers with a centroid.
`slow` variants hold the speaker's lock a little longer, so that the transactions surely overlap
instead of merely the requests (embedding the clip takes much longer than the transaction).
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from devtools.clips import manifest
from service.enrollment.ports import ChangeKind
from service.storage.repository import SqlTransaction
from service.storage.tables import Change, Sample, Speaker
from tests.conftest import LiveServer, flac_body, needs_speech, new_key
from tests.databases import indexable_speakers, speaker_rows

pytestmark = [needs_speech, pytest.mark.model, pytest.mark.alone]


def clips_of(speaker: str) -> list[str]:
    return [r.path for r in manifest() if r.speaker == speaker]


@pytest.fixture
def slow_lock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Hold every speaker lock `seconds` longer, for this test only."""

    def hold(seconds: float) -> None:
        original = SqlTransaction.lock_speaker

        def lock_speaker(self: SqlTransaction, *args: Any, **kwargs: Any) -> Any:
            found = original(self, *args, **kwargs)
            time.sleep(seconds)
            return found

        monkeypatch.setattr(SqlTransaction, "lock_speaker", lock_speaker)

    return hold


@pytest.fixture
def key(live_db: LiveServer) -> str:
    return new_key(live_db.settings, f"racer-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def clients(live_db: LiveServer, key: str) -> Iterator[list[httpx.Client]]:
    made = [live_db.client(key) for _ in range(6)]
    yield made
    for c in made:
        c.close()


def in_parallel(calls: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    """Run the calls at once from threads (released together); their answers in call order."""
    start = threading.Barrier(len(calls))
    answers: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        start.wait()
        answers[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(isinstance(a, httpx.Response) for a in answers)
    return answers


def stored(live: LiveServer, speaker_row: int) -> tuple[Any, set[str], float]:
    """The speaker row (or None), its sample ids, and the sum of their speech seconds."""
    with live.engine.connect() as conn:
        row = conn.execute(select(Speaker).where(Speaker.id == speaker_row)).one_or_none()
        samples = conn.execute(
            select(Sample.sample_id, Sample.speech_seconds).where(Sample.speaker_id == speaker_row)
        ).all()
    return row, {s for s, _ in samples}, sum(x for _, x in samples)


def assert_index_matches_database(live: LiveServer) -> None:
    index = live.services.runtime.index
    assert live.index_ids() == index.ids() == indexable_speakers(live.engine)
    with live.engine.connect() as conn:
        for speaker_id, status, blob in conn.execute(
            select(Speaker.id, Speaker.status, Speaker.centroid).where(Speaker.centroid.is_not(None))
        ):
            entry = index.get(speaker_id)
            assert entry is not None and blob is not None
            assert entry.complete == (status == "complete")
            assert np.array_equal(entry.centroid, np.frombuffer(blob, dtype="<f4"))


@pytest.mark.parametrize("slow", [False, True], ids=["plain", "slow"])
def test_parallel_enrollments_of_one_speaker_are_each_stored_once(
    live_db: LiveServer, key: str, clients: list[httpx.Client], slow: bool, slow_lock: Callable[[float], None]
) -> None:
    if slow:
        slow_lock(0.15)
    paths = clips_of("vctk-p225")[:6]
    calls: list[Callable[[], httpx.Response]] = [
        functools.partial(c.post, "/v1/speakers/p225/enrollments", json=flac_body(p))
        for c, p in zip(clients, paths, strict=True)
    ]
    answers = in_parallel(calls)
    assert [a.status_code for a in answers] == [201] * 6, [a.text for a in answers]
    bodies = [a.json() for a in answers]
    # Serialised writes: each enrollment saw every one committed before it, so the counts it
    # answered are 1..6 in some order; the last one to commit saw all six.
    assert sorted(b["samples"] for b in bodies) == [1, 2, 3, 4, 5, 6]

    status = clients[0].get("/v1/speakers/p225").json()
    (speaker_row,) = speaker_rows(live_db.engine, key, "p225")
    with live_db.engine.connect() as conn:
        changes = conn.scalar(
            select(func.count()).where(
                Change.speaker_id == speaker_row, Change.kind == ChangeKind.SAMPLE_ADDED
            )
        )
    row, sample_ids, speech = stored(live_db, speaker_row)
    assert sample_ids == {b["lastSample"]["sampleId"] for b in bodies}
    assert row.sample_count == len(sample_ids) == status["samples"] == 6
    assert row.speech_seconds == pytest.approx(speech)
    assert changes == 6
    # Complete is decided on all six samples: the answer that saw six says what the row says.
    last = next(b for b in bodies if b["samples"] == 6)
    assert row.status == status["status"] == last["status"] == "complete"
    assert_index_matches_database(live_db)


@pytest.mark.parametrize("slow", [False, True], ids=["plain", "slow"])
def test_an_enrollment_racing_a_delete_ends_as_one_serial_order(
    live_db: LiveServer, key: str, clients: list[httpx.Client], slow: bool, slow_lock: Callable[[float], None]
) -> None:
    if slow:
        slow_lock(0.1)
    first, second = clips_of("vctk-p226")[:2]
    enroller, deleter = clients[0], clients[1]
    orders: list[str] = []
    # The delete is sent at staggered moments from well before the enrollment's transaction (while
    # its clip is decoded and embedded) to well after it, scaled by how long an enrollment takes.
    for round_, fraction in enumerate([0.0, 0.6, 0.9, 1.0, 1.1, 2.5]):
        sid = f"racer{round_}"
        began = time.monotonic()
        answer = enroller.post(f"/v1/speakers/{sid}/enrollments", json=flac_body(first))
        delay = fraction * (time.monotonic() - began)
        assert answer.status_code == 201, answer.text
        original = answer.json()["lastSample"]["sampleId"]

        def enroll(sid: str = sid) -> httpx.Response:
            return enroller.post(f"/v1/speakers/{sid}/enrollments", json=flac_body(second))

        def delete(sid: str = sid, delay: float = delay) -> httpx.Response:
            time.sleep(delay)
            return deleter.delete(f"/v1/speakers/{sid}")

        enrolled, deleted = in_parallel([enroll, delete])
        assert enrolled.status_code == 201, enrolled.text
        assert deleted.status_code == 204, deleted.text
        body = enrolled.json()
        with live_db.engine.connect() as conn:  # the delete took the first sample in either order
            assert conn.scalar(select(func.count()).where(Sample.sample_id == original)) == 0
        now = speaker_rows(live_db.engine, key, sid)
        if body["samples"] == 2:
            # enroll, then delete: the acknowledged sample went with the speaker
            orders.append("enroll first")
            assert now == []
            assert enroller.get(f"/v1/speakers/{sid}").status_code == 404
        else:
            # delete, then enroll: a new speaker with exactly the acknowledged sample
            orders.append("delete first")
            assert body["samples"] == 1 and len(now) == 1
            row, sample_ids, _ = stored(live_db, now[0])
            assert sample_ids == {body["lastSample"]["sampleId"]}
            assert row.sample_count == 1
            assert enroller.get(f"/v1/speakers/{sid}").json()["samples"] == 1
        assert_index_matches_database(live_db)
        # A recording belongs to one speaker of a tenant: free `second` for the next round's racer.
        enroller.delete(f"/v1/speakers/{sid}")
    print(f"{live_db.kind}, {'slow' if slow else 'plain'} lock: orders {orders}")
    assert set(orders) == {"enroll first", "delete first"}, "the sweep missed one of the orders"
