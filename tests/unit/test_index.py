"""The faiss speaker index and the follower that keeps it equal to the database."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from devtools.bench.index import format_rows, run_index_bench
from service.enrollment.ports import ChangeRecord, IndexEntry
from service.enrollment.scoring import DecisionRule, Scorer, unit_rows
from service.storage import index as index_module
from service.storage import sync
from service.storage.index import BandedIndex, FaissSpeakerIndex


def entry(speaker_id: int, tenant_id: int, vector: np.ndarray) -> IndexEntry:
    v = (vector / np.linalg.norm(vector)).astype(np.float32)
    return IndexEntry(speaker_id, tenant_id, f"s{speaker_id}", True, v)


@pytest.fixture
def vectors() -> np.ndarray:
    raw = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
    return unit_rows(raw)


def test_search_stays_inside_the_tenant_and_the_restriction(vectors: np.ndarray) -> None:
    index = FaissSpeakerIndex(8)
    index.replace([entry(i, 1 if i < 5 else 2, vectors[i]) for i in range(10)])
    # The query is speaker 7's own vector, but speaker 7 belongs to tenant 2.
    hits = index.search(vectors[7], tenant_id=1, k=10)
    assert {e.speaker_id for e, _ in hits} == {0, 1, 2, 3, 4}
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    own = index.search(vectors[7], tenant_id=2, k=1)
    assert own[0][0].speaker_id == 7 and own[0][1] == pytest.approx(1.0, abs=1e-5)
    only = index.search(vectors[7], tenant_id=2, k=10, only=[5, 6, 1])
    assert {e.speaker_id for e, _ in only} == {5, 6}
    assert index.search(vectors[0], tenant_id=3, k=5) == []


def test_upsert_replaces_and_remove_forgets(vectors: np.ndarray) -> None:
    index = FaissSpeakerIndex(8)
    index.upsert(entry(1, 1, vectors[0]))
    index.upsert(entry(1, 1, vectors[1]))
    assert len(index) == 1 and index.faiss_ids() == {1}
    assert index.search(vectors[1], 1, 1)[0][1] == pytest.approx(1.0, abs=1e-5)
    index.remove(1)
    index.remove(1)
    assert len(index) == 0 and index.faiss_ids() == set() and index.tenant_size(1) == 0


def test_a_row_id_given_out_again_to_another_tenant_leaves_no_trace_of_the_first(vectors: np.ndarray) -> None:
    """SQLite gives the highest row id out again after a delete; when the follower sees the new
    speaker before the old one's delete, the id's old tenant must lose it from its cohort too
    (else its scores are normalised against another tenant's voice, then fail once that goes)."""
    index = FaissSpeakerIndex(8)
    index.upsert(entry(1, 1, vectors[0]))  # tenant 1's speaker, row 1
    reused = IndexEntry(1, 2, "y", True, vectors[1])  # row 1 again: tenant 2's new speaker
    index.upsert(reused)
    assert index.tenant_size(1) == 0 and index.cohort(1)[0].tolist() == []
    assert index.cohort(2)[0].tolist() == [1] and np.allclose(index.cohort(2)[1][0], vectors[1])
    assert index.search(vectors[1], 1, 5) == [] and index.lookup(1, "s1") is None
    index.remove(1)
    index.upsert(entry(2, 1, vectors[2]))  # tenant 1 goes on: its cohort is its own speaker only
    assert index.cohort(1)[0].tolist() == [2] and index.cohort(2)[0].tolist() == []


class FakeStore:
    """Just enough of `Store` for the follower: a change log and speaker rows."""

    def __init__(self) -> None:
        self.changes: list[ChangeRecord] = []
        self.rows: dict[int, IndexEntry] = {}

    def last_change_seq(self) -> int:
        return max((c.seq for c in self.changes), default=0)

    def index_entries(self, ids: Any = None, model_sha256: str | None = None) -> list[IndexEntry]:
        return [e for i, e in self.rows.items() if ids is None or i in ids]

    def changes_since(self, seq: int, limit: int = 10_000) -> list[ChangeRecord]:
        return sorted((c for c in self.changes if c.seq > seq), key=lambda c: c.seq)[:limit]

    def purge_changes(self, before: datetime) -> int:
        kept = [c for c in self.changes if c.at is None or c.at >= before]
        purged, self.changes = len(self.changes) - len(kept), kept
        return purged


def test_the_change_log_is_purged_and_a_follower_long_behind_rebuilds(
    vectors: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log keeps a day of changes, each replica purging now and then; a follower that could not
    catch up for over an hour (its database away) may have lost rows to a purge: it rebuilds."""
    store = FakeStore()
    index = FaissSpeakerIndex(8)
    follower = sync.IndexFollower(store, index)  # type: ignore[arg-type]
    follower.rebuild()
    old, recent = datetime.now(UTC) - timedelta(days=2), datetime.now(UTC)
    store.rows[1] = entry(1, 1, vectors[1])
    store.changes += [ChangeRecord(1, 1, 1, old), ChangeRecord(2, 1, 1, recent)]
    follower.catch_up()
    assert [c.seq for c in store.changes] == [2]  # the day-old row went, on the first catch-up
    store.rows[3] = entry(3, 1, vectors[3])  # committed while this follower was cut off; its log row
    follower.catch_up()  # already purged by another replica: nothing says so
    assert index.ids() == {1}
    monkeypatch.setattr(sync, "RESYNC_AFTER_S", -1.0)  # as if its last catch-up were an hour ago
    follower.catch_up()
    assert index.ids() == {1, 3}


def test_follower_applies_out_of_order_commits(vectors: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FakeStore()
    index = FaissSpeakerIndex(8)
    follower = sync.IndexFollower(store, index)  # type: ignore[arg-type]
    follower.rebuild()
    # seq 2 commits before seq 1 (PostgreSQL allows that): the follower must still apply seq 1.
    store.rows[2] = entry(2, 1, vectors[2])
    store.changes.append(ChangeRecord(2, 1, 2))
    assert follower.catch_up() == 1
    assert index.ids() == {2}
    store.rows[1] = entry(1, 1, vectors[1])
    store.changes.append(ChangeRecord(1, 1, 1))
    follower.catch_up()
    assert index.ids() == {1, 2}
    # A deleted speaker disappears; a gap that never fills (a rollback) is skipped after the grace.
    del store.rows[2]
    store.changes.append(ChangeRecord(4, 1, 2))
    follower.catch_up()
    assert index.ids() == {1}
    monkeypatch.setattr(sync, "GAP_GRACE_S", 0.0)
    follower.catch_up()
    assert follower.applied_seq == 4 and follower.catch_up() == 0


def _population(n: int, tenants: int, seed: int = 0) -> list[IndexEntry]:
    raw = np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    return [entry(i + 1, 1 + i % tenants, raw[i]) for i in range(n)]


def _near(vector: np.ndarray, rng: np.random.Generator, cos: float = 0.8) -> np.ndarray:
    noise = rng.standard_normal(vector.shape).astype(np.float32)
    noise -= (noise @ vector) * vector
    noise /= np.linalg.norm(noise)
    return np.asarray(cos * vector + np.sqrt(1 - cos**2) * noise, dtype=np.float32)


def test_large_index_is_ivf_stays_in_tenant_and_finds_the_nearest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "EXACT_LIMIT", 50)  # make tenants "large" for this test
    population = _population(3000, tenants=2)
    index = FaissSpeakerIndex(16, ivf_threshold=1000, nprobe=64)
    index.replace(population)
    assert index.kind == "ivf" and index.faiss_ids() == {e.speaker_id for e in population}
    rng = np.random.default_rng(1)
    matrix = np.stack([e.centroid for e in population])
    hits = 0
    for target in rng.choice(len(population), 200, replace=False):
        t = population[target]
        query = _near(t.centroid, rng)
        found = index.search(query, t.tenant_id, k=5)
        assert found and all(e.tenant_id == t.tenant_id for e, _ in found)
        mine = [j for j, e in enumerate(population) if e.tenant_id == t.tenant_id]
        exact = mine[int(np.argmax(matrix[mine] @ query))]
        hits += found[0][0].speaker_id == population[exact].speaker_id
    assert hits / 200 >= 0.99
    only = [e.speaker_id for e in population[:120]]
    restricted = index.search(population[7].centroid, population[7].tenant_id, k=200, only=only)
    assert {e.speaker_id for e, _ in restricted} <= set(only)
    assert restricted[0][0].speaker_id == population[7].speaker_id


def test_removal_and_growth_past_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "EXACT_LIMIT", 50)
    population = _population(1200, tenants=1)
    index = FaissSpeakerIndex(16, ivf_threshold=1000, nprobe=64)
    index.replace(population[:900])
    assert index.kind == "flat"
    for e in population[900:]:
        index.upsert(e)
    assert index.kind == "ivf" and len(index) == 1200
    gone = population[500]
    index.remove(gone.speaker_id)
    assert gone.speaker_id not in index.faiss_ids() and len(index.faiss_ids()) == 1199
    found = index.search(gone.centroid, gone.tenant_id, k=10)
    assert gone.speaker_id not in {e.speaker_id for e, _ in found}


# --- the IVF path at a size that runs fast: 2,000 speakers of dimension 192 above a threshold of 1,000


def _ivf_index(population: list[IndexEntry], nprobe: int = 12) -> FaissSpeakerIndex:
    index = FaissSpeakerIndex(192, ivf_threshold=1000, nprobe=nprobe)
    index.replace(population)
    assert index.kind == "ivf"
    return index


def _exact_top(population: list[IndexEntry], query: np.ndarray, allowed: set[int], k: int) -> list[int]:
    pool = [e for e in population if e.speaker_id in allowed]
    scores = np.stack([e.centroid for e in pool]) @ query
    return [pool[j].speaker_id for j in np.argsort(-scores)[:k]]


@pytest.mark.slow
def test_ivf_search_matches_exact_search_on_genuine_like_queries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "EXACT_LIMIT", 50)  # both tenants go through faiss
    population = _population_192(2000, tenants=2)
    index = _ivf_index(population)  # 12 of 22 lists probed: the shortlist is really approximate
    rng = np.random.default_rng(2)
    hits = 0
    for target in rng.choice(len(population), 300, replace=False):
        t = population[target]
        query = _near(t.centroid, rng, cos=0.7)
        found = index.search(query, t.tenant_id, k=10)
        assert len(found) == 10 and all(e.tenant_id == t.tenant_id for e, _ in found)
        for e, score in found:  # scores are exact cosines, best first
            assert score == pytest.approx(float(e.centroid @ query), abs=1e-5)
        assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)
        mine = {e.speaker_id for e in population if e.tenant_id == t.tenant_id}
        hits += found[0][0].speaker_id == _exact_top(population, query, mine, 1)[0]
    assert hits / 300 >= 0.98


def test_ivf_tenants_with_the_same_external_ids_stay_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "EXACT_LIMIT", 50)
    raw = np.random.default_rng(3).standard_normal((2000, 192)).astype(np.float32)
    # Speaker j of tenant 7 and speaker j of tenant 8 share the external id "s{j}".
    population = [
        IndexEntry(i + 1, 7 + i % 2, f"s{i // 2}", True, (raw[i] / np.linalg.norm(raw[i])).astype(np.float32))
        for i in range(2000)
    ]
    index = _ivf_index(population)
    for j in (0, 1, 500, 999):
        seven, eight = index.lookup(7, f"s{j}"), index.lookup(8, f"s{j}")
        assert seven is population[2 * j] and eight is population[2 * j + 1]
    for e in population[1:400:2]:  # tenant 8's speakers, searched by their own vectors
        assert index.search(e.centroid, 8, k=1)[0][0] is e
        elsewhere = index.search(e.centroid, 7, k=50)
        assert elsewhere and all(f.tenant_id == 7 for f, _ in elsewhere)
    assert index.search(population[0].centroid, 9, k=5) == []


@pytest.mark.parametrize("size", [40, 400])  # below and above EXACT_LIMIT (100 here)
def test_ivf_only_restriction_stays_inside_the_allowed_set(
    monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    monkeypatch.setattr(index_module, "EXACT_LIMIT", 100)
    population = _population_192(2000, tenants=2)
    index = _ivf_index(population)
    rng = np.random.default_rng(4)
    tenant_one = [e.speaker_id for e in population if e.tenant_id == 1]
    allowed = {int(i) for i in rng.choice(tenant_one, size, replace=False)}
    other_tenant = [e.speaker_id for e in population if e.tenant_id == 2][:20]
    # Other tenants' speakers, unknown ids, ids no speaker can have, duplicates: all harmless.
    only = [*allowed, *other_tenant, 10**6, 3 << 40 | 5, -1, *list(allowed)[:5]]
    hits = 0
    for target in rng.choice(sorted(allowed), 40, replace=False):
        query = _near(population[int(target) - 1].centroid, rng, cos=0.7)
        found = index.search(query, 1, k=20, only=only)
        assert found and {e.speaker_id for e, _ in found} <= allowed
        exact = _exact_top(population, query, allowed, 20)
        if size <= index_module.EXACT_LIMIT:  # scored exactly: the same list
            assert [e.speaker_id for e, _ in found] == exact
        hits += found[0][0].speaker_id == exact[0]
    assert hits / 40 >= 0.95
    everyone = index.search(population[0].centroid, 1, k=10**6, only=only)
    assert {e.speaker_id for e, _ in everyone} <= allowed
    if size <= index_module.EXACT_LIMIT:
        assert len(everyone) == size


@pytest.mark.slow
def test_ivf_deletes_and_re_adds_stay_correct() -> None:
    population = _population_192(2000, tenants=1)
    index = _ivf_index(population)
    rng = np.random.default_rng(5)
    gone = [population[int(i)] for i in rng.choice(len(population), 300, replace=False)]
    for e in gone:
        index.remove(e.speaker_id)
        found = index.search(e.centroid, 1, k=10)
        assert e.speaker_id not in {f.speaker_id for f, _ in found}
    kept = [e for e in population if e not in gone]
    assert index.faiss_ids() == {e.speaker_id for e in kept} and len(index) == len(kept)
    # Removing moves other speakers' codes around inside faiss: every one left is still found.
    assert all(index.search(e.centroid, 1, k=1)[0][0] is e for e in kept)
    for e in gone:  # added back into the slots the removals freed
        index.upsert(e)
    assert all(index.search(e.centroid, 1, k=1)[0][0] is e for e in population)
    # The exact re-scoring would hide a damaged code; faiss's own ranking must find them too.
    raw = index._index
    queries = np.stack([e.centroid for e in gone])
    _, top = raw.search(queries, 1, params=index_module.faiss.SearchParametersIVF(nprobe=raw.nlist))
    assert np.mean(top[:, 0] == [index_module.faiss_id(1, e.speaker_id) for e in gone]) >= 0.98
    # An update moves a speaker: it is found where it now is, not where it was.
    moved = entry(gone[0].speaker_id, 1, _near(population[7].centroid, rng, cos=0.95))
    index.upsert(moved)
    assert index.search(moved.centroid, 1, k=1)[0][0] is moved
    assert moved.speaker_id not in {f.speaker_id for f, _ in index.search(gone[0].centroid, 1, k=3)}
    assert index.faiss_ids() == {e.speaker_id for e in population}


def _population_192(n: int, tenants: int) -> list[IndexEntry]:
    raw = np.random.default_rng(6).standard_normal((n, 192)).astype(np.float32)
    return [entry(i + 1, 1 + i % tenants, raw[i]) for i in range(n)]


@pytest.mark.slow
def test_index_bench_runs_the_ivf_path_and_finds_no_errors() -> None:
    (row,) = run_index_bench([3000], queries=50, nprobe=12, ivf_threshold=1000)
    assert row["kind"] == "ivf" and row["speakers"] == 3000
    assert row["leaks"] == 0 and row["delete_errors"] == 0
    assert row["recall_at_1"] >= 0.95 and row["tenant_recall_at_1"] == 1.0
    assert "3000" in format_rows([row])


def test_the_score_cohort_is_the_tenants_speakers_bounded_and_stable(
    vectors: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "COHORT_LIMIT", 3)
    index = FaissSpeakerIndex(8)

    def speaker(i: int, complete: bool = True, tenant: int = 1) -> IndexEntry:
        return IndexEntry(i, tenant, f"s{i}", complete, vectors[i])

    index.replace([speaker(5), speaker(2, complete=False), speaker(9, tenant=2)])
    ids, centroids = index.cohort(1)
    assert ids.tolist() == [2, 5]  # every speaker of this tenant, complete or not
    assert np.allclose(centroids, vectors[[2, 5]])
    assert index.cohort(1)[0] is ids  # the same arrays until the cohort changes

    index.upsert(speaker(7))
    index.upsert(speaker(8))  # the cohort is full: 8 does not join, nor change it
    full = index.cohort(1)[0]
    assert full.tolist() == [2, 5, 7]
    index.upsert(speaker(5, complete=False))  # a member re-scored keeps its seat, new arrays
    assert index.cohort(1)[0].tolist() == [2, 5, 7] and index.cohort(1)[0] is not full

    index.remove(2)  # a member leaves: the earliest speaker outside takes its place
    assert index.cohort(1)[0].tolist() == [5, 7, 8]
    assert index.cohort(2)[0].tolist() == [9] and index.cohort(3)[0].size == 0


def _exact_reference(live: dict[int, IndexEntry], q: np.ndarray, tenant: int, k: int) -> list[int]:
    mine = [e for e in live.values() if e.tenant_id == tenant]
    mine.sort(key=lambda e: -float(e.centroid @ q))
    return [e.speaker_id for e in mine[:k]]


@pytest.mark.parametrize("ivf_threshold", [200_000, 300])
def test_batches_of_changes_leave_every_tenant_searchable_as_an_exact_search_over_what_is_live(
    monkeypatch: pytest.MonkeyPatch, ivf_threshold: int
) -> None:
    """Enrollments write into a large tenant's kept matrix row by row (appends, overwrites, deletes,
    a row id reused by another tenant), small tenants are stacked per search, and the follower
    applies whole batches; after each batch every tenant's search equals an exact search over the
    speakers that are live, with no speaker of another tenant. Above the IVF threshold searches of
    small tenants stay exact too."""
    monkeypatch.setattr(index_module, "MATRIX_CACHE_MIN", 8)
    rng = np.random.default_rng(3)
    dim = 16
    index = FaissSpeakerIndex(dim, ivf_threshold=ivf_threshold, nprobe=64)
    live: dict[int, IndexEntry] = {}

    def make(speaker: int, tenant: int) -> IndexEntry:
        return entry(speaker, tenant, rng.standard_normal(dim).astype(np.float32))

    first = [make(i, 1 if i % 3 else 2) for i in range(1, 40)]
    index.replace(first)
    live.update((e.speaker_id, e) for e in first)
    next_id = 40
    for round_no in range(60):
        upserts, removes = [], []
        for _ in range(int(rng.integers(1, 12))):
            roll = rng.random()
            if roll < 0.4 or not live:  # a new speaker: the highest row id so far
                upserts.append(make(next_id, int(rng.integers(1, 4))))
                next_id += 1
            elif roll < 0.7:  # a new sample moves a speaker's centroid
                old = live[int(rng.choice(list(live)))]
                upserts.append(make(old.speaker_id, old.tenant_id))
            elif roll < 0.9:
                removes.append(int(rng.choice(list(live))))
            else:  # SQLite hands the highest id out again, to another tenant
                reused = max(live)
                upserts.append(make(reused, 1 + live[reused].tenant_id % 3))
        index.apply(upserts, removes)
        for speaker in removes:
            if speaker not in {e.speaker_id for e in upserts}:
                live.pop(speaker, None)
        live.update((e.speaker_id, e) for e in upserts)
        assert index.ids() == set(live) == index.faiss_ids()
        for tenant in (1, 2, 3):
            assert index.tenant_size(tenant) == sum(e.tenant_id == tenant for e in live.values())
            q = unit_rows(rng.standard_normal((1, dim)).astype(np.float32))[0]
            found = [e.speaker_id for e, _ in index.search(q, tenant, 5)]
            assert found == _exact_reference(live, q, tenant, 5), (round_no, tenant)
    assert len(live) > 50
    if index.kind == "flat":
        assert index._matrices  # the kept matrices were written row by row, not only stacked


def test_a_catch_up_removes_every_old_vector_in_one_pass_over_the_index(
    vectors: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass of faiss's remove_ids visits every vector: one per changed speaker made a follower's
    catch-up over 1,000 changes hold its lock (and every enrollment waiting on it) for 13 s at
    100,000 speakers. A batch of changes is now one pass per band."""
    store = FakeStore()
    index = BandedIndex(8)
    follower = sync.IndexFollower(store, index)  # type: ignore[arg-type]
    for i in range(1, 8):
        store.rows[i] = entry(i, 1, vectors[i])
    follower.rebuild()
    passes: list[int] = []
    real = FaissSpeakerIndex._remove_ids

    def counted(self: FaissSpeakerIndex, ids: np.ndarray) -> None:
        passes.append(len(ids))
        real(self, ids)

    monkeypatch.setattr(FaissSpeakerIndex, "_remove_ids", counted)
    for seq, i in enumerate(range(1, 8), start=1):
        if i % 2:
            store.rows[i] = entry(i, 1, vectors[(i + 3) % 10])
        else:
            del store.rows[i]
        store.changes.append(ChangeRecord(seq, 1, i))
    assert follower.catch_up() == 7
    assert passes == [7, 7]  # the wide band and the narrow band, each once, every speaker in it
    assert index.ids() == {1, 3, 5, 7}
    assert index.search(vectors[4], 1, 1)[0][0].speaker_id == 1  # speaker 1's new centroid


def test_a_rebuild_is_made_aside_and_searches_go_on_meanwhile(
    vectors: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`replace` builds the new index without holding the one searches use (seconds at a million
    speakers: identify stalled 6.5 s during a resync), then swaps it in."""
    index = FaissSpeakerIndex(8)
    index.replace([entry(i, 1, vectors[i]) for i in range(5)])
    searchable_during_build: list[bool] = []
    build = FaissSpeakerIndex._build

    def search_meanwhile() -> None:
        if index._lock.acquire(timeout=5):
            searchable_during_build.append(bool(index.search(vectors[0], 1, 1)))
            index._lock.release()
        else:
            searchable_during_build.append(False)

    def watched(self: FaissSpeakerIndex, entries: list[IndexEntry]) -> None:
        if self is not index:
            searcher = threading.Thread(target=search_meanwhile)
            searcher.start()
            searcher.join()
        build(self, entries)

    monkeypatch.setattr(FaissSpeakerIndex, "_build", watched)
    index.replace([entry(i, 1, vectors[i]) for i in range(3, 10)])
    assert searchable_during_build == [True]
    assert index.ids() == set(range(3, 10)) == index.faiss_ids()
    assert index.search(vectors[9], 1, 1)[0][0].speaker_id == 9


def test_what_is_kept_per_tenant_is_bounded_however_many_tenants_are_searched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Search matrices and cohorts are kept for the most recently used tenants only, small tenants'
    matrices not at all: a million speakers in 100,000 tenants of ten held four more copies of every
    centroid once each tenant had been searched."""
    monkeypatch.setattr(index_module, "COHORT_CACHE_TENANTS", 16)
    monkeypatch.setattr(Scorer, "TENANTS", 16)
    population = _population(2000, tenants=200)
    index = FaissSpeakerIndex(16)
    index.replace(population)
    scorer = Scorer(DecisionRule.calibrated(np.zeros(16, dtype=np.float32)))
    for e in population[:200]:
        assert index.search(e.centroid, e.tenant_id, 1)[0][0].speaker_id == e.speaker_id
        ids, centroids = index.cohort(e.tenant_id)
        assert len(ids) == 10 and scorer.scale(e.tenant_id, ids, centroids) is scorer.scale(
            e.tenant_id, *index.cohort(e.tenant_id)
        )
    assert len(index._matrices) == 0  # tenants of 10, under MATRIX_CACHE_MIN
    assert len(index._cohorts) == 16 and len(scorer._cache) == 16
