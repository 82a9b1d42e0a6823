"""The faiss index of speaker vectors: derived from the database, rebuilt from it at start.

One vector per speaker (its normalised centroid), searched by inner product (= cosine on normalised
vectors). Per-sample vectors are only needed inside one speaker (duplicate and mismatch checks) and
are read from the database there.

- faiss ids carry the tenant in their high bits (``tenant << 40 | speaker row id``), so a tenant's
  search is an O(1) id-range selector inside faiss: it never sees, and never returns, another
  tenant's speakers.
- Below `ivf_threshold` speakers in all, search is exact: inner products with the tenant's cached
  centroids (faster than faiss's filtered flat scan, which visits every tenant's vectors).
- Above it, the faiss index is an inverted file of ``sqrt(n) / 2`` lists (trained on the speakers
  themselves) holding 4-bit product-quantised codes scanned with SIMD ("fast scan": several times
  the speed of a flat scan, at 1/32 of its memory). `nprobe` lists are scanned per query, and the
  best `REFINE` x k codes are re-scored exactly against the centroids this class keeps anyway, so
  scores are exact cosines and the codes only have to make the shortlist. Recall then depends on
  the fraction of lists probed: at 1M speakers (500 lists), 400 probes find the exact top-1 of
  genuine-like queries (cosine 0.7 to an enrolled speaker) in 1000 of 1000 searches and of 99.6%
  of harder ones (cosine 0.5), on random unit vectors, the hardest population for an inverted
  file; 320 probes fall to 98% on the harder ones (`python -m scripts.bench --only index`). Small
  candidate sets (a tenant or a `speakerIds` list of up to `EXACT_LIMIT` speakers) are still scored
  exactly, where a filtered approximate search would lose recall.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import faiss as _faiss
import numpy as np

from service.audio import Band
from service.enrollment.ports import IndexEntry

# faiss's generated stubs describe the C++ signatures, not the numpy wrappers it installs.
faiss: Any = _faiss

TENANT_SHIFT = 40
EXACT_LIMIT = 4096
REFINE = 4  # codes shortlisted per result wanted, re-scored exactly
MIN_SHORTLIST = 32
TRAIN_PER_LIST = 64  # training points per IVF list (faiss asks for at least 39)
ADD_CHUNK = 65_536  # vectors stacked per add at build: bounds the temporary copy
# Speakers of a tenant that its scores are normalised against: enough for stable statistics, few
# enough that building them after a change takes milliseconds.
COHORT_LIMIT = 1000
# Tenants whose search matrix or cohort arrays are kept between requests: without a bound, a
# million speakers in 100,000 small tenants held four more copies of every centroid once each
# tenant had been searched. A tenant smaller than MATRIX_CACHE_MIN is stacked for each search.
MATRIX_CACHE_MIN = 256
MATRIX_CACHE_TENANTS = 1024
COHORT_CACHE_TENANTS = 4096


def faiss_id(tenant_id: int, speaker_id: int) -> int:
    return (tenant_id << TENANT_SHIFT) | speaker_id


class FaissSpeakerIndex:
    def __init__(self, dim: int, ivf_threshold: int = 200_000, nprobe: int = 400) -> None:
        self.dim = dim
        self.ivf_threshold = ivf_threshold
        self.nprobe = nprobe
        self._lock = threading.RLock()
        self._index: Any = self._flat()
        self._entries: dict[int, IndexEntry] = {}
        self._by_tenant: dict[int, set[int]] = {}
        self._by_key: dict[tuple[int, str], int] = {}
        # Per tenant searched exactly: its speaker ids and their centroids, built lazily
        # for tenants of `MATRIX_CACHE_MIN` speakers or more, the most recently searched kept.
        self._matrices: OrderedDict[int, _Rows] = OrderedDict()
        # Per tenant: its score cohort (see `cohort`): member speaker ids in the order they joined,
        # and the arrays handed out, rebuilt only when the members change (the most recently
        # used `COHORT_CACHE_TENANTS` kept).
        self._cohort_members: dict[int, dict[int, None]] = {}
        self._cohorts: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def kind(self) -> str:
        return "ivf" if isinstance(self._index, faiss.IndexIVF) else "flat"

    def ids(self) -> set[int]:
        with self._lock:
            return set(self._entries)

    def faiss_ids(self) -> set[int]:
        """The speaker ids faiss itself holds (for consistency checks)."""
        mask = (1 << TENANT_SHIFT) - 1
        with self._lock:
            if isinstance(self._index, faiss.IndexIVF):
                invlists = self._index.invlists
                raw = [
                    faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
                    for i in range(self._index.nlist)
                ]
                held = np.concatenate(raw) if raw else np.zeros(0, dtype=np.int64)
            else:
                held = faiss.vector_to_array(self._index.id_map)
            return {int(i) & mask for i in held}

    def get(self, speaker_id: int) -> IndexEntry | None:
        return self._entries.get(speaker_id)

    def band(self, band: Band) -> FaissSpeakerIndex:
        """One index for every band: each speaker's `centroid` serves all of them."""
        return self

    def lookup(self, tenant_id: int, external_id: str) -> IndexEntry | None:
        speaker_id = self._by_key.get((tenant_id, external_id))
        return None if speaker_id is None else self._entries.get(speaker_id)

    def replace(self, entries: Sequence[IndexEntry]) -> None:
        """Index exactly `entries`. The new index is built aside and swapped in at the end, so
        searches meanwhile run on the old one instead of waiting for the build (seconds at a
        million speakers). Only the follower writes, one call at a time."""
        fresh = FaissSpeakerIndex(self.dim, self.ivf_threshold, self.nprobe)
        for e in sorted(entries, key=lambda e: e.speaker_id):
            fresh._vector(e)  # shape check before anything is built
            fresh._remember(e)
        fresh._build(list(entries))
        with self._lock:
            self._index = fresh._index
            self._entries, self._by_tenant, self._by_key = fresh._entries, fresh._by_tenant, fresh._by_key
            self._matrices, self._cohorts = fresh._matrices, fresh._cohorts
            self._cohort_members = fresh._cohort_members

    def upsert(self, entry: IndexEntry) -> None:
        self.apply([entry], [])

    def remove(self, speaker_id: int) -> None:
        self.apply([], [speaker_id])

    def apply(self, upserts: Sequence[IndexEntry], removes: Sequence[int]) -> None:
        """Add or replace the speakers of `upserts` and drop those of `removes`, as one batch: faiss
        removes every old vector in one pass over the index (a pass per speaker made a catch-up
        over 1,000 changes take seconds at 100k speakers) and adds the new ones in one call."""
        latest = {e.speaker_id: e for e in upserts}
        for entry in latest.values():
            self._vector(entry)  # shape check before anything changes
        gone = {i for i in removes if i not in latest}
        with self._lock:
            old = {i: self._entries[i] for i in [*latest, *gone] if i in self._entries}
            if old:
                self._remove_ids(np.array([faiss_id(e.tenant_id, i) for i, e in old.items()], dtype=np.int64))
            for speaker_id, entry in old.items():
                new = latest.get(speaker_id)
                # The same speaker keeps its cohort seat. A row id the database gave out again
                # (SQLite reuses the highest one after a delete the follower has not applied yet)
                # is another speaker, maybe of another tenant: the old one leaves its cohort.
                key = (entry.tenant_id, entry.external_id)
                same = new is not None and (new.tenant_id, new.external_id) == key
                self._forget(entry, replacing=same)
            if latest:
                entries = list(latest.values())
                self._index.add_with_ids(
                    np.stack([self._vector(e) for e in entries]),
                    np.array([faiss_id(e.tenant_id, e.speaker_id) for e in entries], dtype=np.int64),
                )
                for entry in entries:
                    self._remember(entry)
            if self.kind == "flat" and len(self._entries) >= self.ivf_threshold:
                self._build(list(self._entries.values()))

    def _forget(self, entry: IndexEntry, *, replacing: bool) -> None:
        """Drop a speaker whose vector faiss no longer holds; `replacing`: it comes back at once
        (its cohort seat and its row of the tenant's matrix are kept)."""
        speaker_id = entry.speaker_id
        del self._entries[speaker_id]
        self._by_key.pop((entry.tenant_id, entry.external_id), None)
        members = self._by_tenant.get(entry.tenant_id)
        if members is not None:
            members.discard(speaker_id)
            if not members:
                del self._by_tenant[entry.tenant_id]
        if not replacing:
            rows = self._matrices.get(entry.tenant_id)
            if rows is not None:
                rows.drop(speaker_id)
            self._leave_cohort(entry)

    def tenant_size(self, tenant_id: int) -> int:
        return len(self._by_tenant.get(tenant_id, ()))

    def cohort(self, tenant_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The tenant's speakers that its scores are normalised against: speaker ids ``(c,)`` and
        their centroids ``(c, dim)``, at most `COHORT_LIMIT` of them, in the order they joined. Once
        a tenant has more, new speakers do not join (the cohort, and every score, stay put as it
        grows); a member that leaves is replaced by the earliest speaker outside. Every speaker with
        a sample counts, complete or not: a telephone caller enrolled from three short calls may
        never be complete, yet carries the tenant's channel (the scorer counts each voice once, so
        one voice under many ids does not weigh more). The same arrays are returned until the
        cohort changes, so callers may cache what they derive from them by identity; never modify
        them."""
        with self._lock:
            cached = self._cohorts.get(tenant_id)
            if cached is None:
                ids = list(self._cohort_members.get(tenant_id, {}))
                cached = (np.array(ids, dtype=np.int64), self._stack(ids))
                self._cohorts[tenant_id] = cached
                while len(self._cohorts) > COHORT_CACHE_TENANTS:  # the least recently used go
                    self._cohorts.popitem(last=False)
            else:
                self._cohorts.move_to_end(tenant_id)
            return cached

    def search(
        self, query: np.ndarray, tenant_id: int, k: int, only: Sequence[int] | None = None
    ) -> list[tuple[IndexEntry, float]]:
        """Top-`k` speakers of `tenant_id` (restricted to `only` if given) by cosine to `query`.

        `query` is a float (dim,) vector, L2-normalised. Scores are exact cosines on every path;
        above `ivf_threshold` the set of speakers considered is approximate (see the module doc).
        """
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        if q.shape != (self.dim,):
            raise ValueError(f"query of shape {q.shape}, not ({self.dim},)")
        with self._lock:
            members = self._by_tenant.get(tenant_id)
            if not members or k <= 0:
                return []
            # Exact scores over a cached matrix beat faiss's filtered flat scan; the matrix is
            # bounded by the IVF threshold or by EXACT_LIMIT.
            cached = self.kind == "flat" or len(members) <= EXACT_LIMIT
            if cached:
                rows = self._tenant_rows(tenant_id)
                ids, matrix = rows.ids, rows.matrix
                if only is not None:
                    chosen = rows.rows_of(only)
                    ids, matrix = ids[chosen], matrix[chosen]
                return self._exact(q, ids, matrix, k)
            if only is not None:
                wanted = np.unique(np.asarray(only, dtype=np.int64))
                wanted = wanted[(wanted >= 0) & (wanted < 1 << TENANT_SHIFT)]  # speaker ids fit there
                if len(wanted) <= EXACT_LIMIT:
                    allowed = [i for i in wanted.tolist() if i in members]
                    return self._exact(q, np.array(allowed, dtype=np.int64), self._stack(allowed), k)
                # Ids of other tenants or of no speaker carry this tenant's bits here: faiss holds
                # no such id, so they select nothing.
                selector = faiss.IDSelectorBatch(faiss_id(tenant_id, 0) | wanted)
                return self._approximate(q, tenant_id, selector, k, len(wanted))
            selector = faiss.IDSelectorRange(faiss_id(tenant_id, 0), faiss_id(tenant_id + 1, 0))
            return self._approximate(q, tenant_id, selector, k, len(members))

    # --- internals -------------------------------------------------------------------------------

    def _flat(self) -> Any:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _ivf(self, entries: list[IndexEntry]) -> Any:
        """An untrained-then-trained IVF fast-scan index sized for `entries`."""
        # Half of the usual sqrt(n) lists: the same recall per code scanned, and start-up (training
        # and assigning every vector to its list) about a third faster.
        nlist = max(1, round(math.sqrt(len(entries)) / 2))
        # 4-bit PQ on sub-vectors of up to 4 dimensions, at least 32 of them (fewer bits miss
        # neighbours in the shortlist); the exact re-scoring absorbs the rest of its error.
        sub = next(s for s in (4, 3, 2, 1) if self.dim % s == 0 and self.dim // s >= min(32, self.dim))
        index = faiss.IndexIVFPQFastScan(
            faiss.IndexFlatIP(self.dim), self.dim, nlist, self.dim // sub, 4, faiss.METRIC_INNER_PRODUCT
        )
        # Coarse centroids need not be exact (more iterations did not change recall); start-up
        # time matters.
        index.cp.niter = 10
        rng = np.random.default_rng(0)
        picked = rng.choice(len(entries), min(len(entries), TRAIN_PER_LIST * nlist), replace=False)
        index.train(np.stack([self._vector(entries[i]) for i in picked]))
        return index

    def _build(self, entries: list[IndexEntry]) -> None:
        """(Re)build the faiss index for `entries`: flat when small, IVF trained on them when large."""
        index = self._ivf(entries) if len(entries) >= self.ivf_threshold else self._flat()
        for start in range(0, len(entries), ADD_CHUNK):
            chunk = entries[start : start + ADD_CHUNK]
            ids = np.array([faiss_id(e.tenant_id, e.speaker_id) for e in chunk], dtype=np.int64)
            index.add_with_ids(np.stack([self._vector(e) for e in chunk]), ids)
        self._index = index

    def _remove_ids(self, ids: np.ndarray) -> None:
        index = self._index
        if not isinstance(index, faiss.IndexIVFFastScan):
            index.remove_ids(ids)
            return
        invlists = faiss.downcast_InvertedLists(index.invlists)
        before = [invlists.list_size(i) for i in range(index.nlist)]
        index.remove_ids(ids)
        _clear_freed_slots(invlists, before)

    def _tenant_rows(self, tenant_id: int) -> _Rows:
        """The tenant's speaker ids and their centroids. A tenant of fewer than `MATRIX_CACHE_MIN`
        speakers is stacked for each search (microseconds); a larger one is kept, and enrollments
        write into it row by row rather than making it again (65 ms at 100,000 speakers)."""
        rows = self._matrices.get(tenant_id)
        if rows is not None:
            self._matrices.move_to_end(tenant_id)
            return rows
        ids = sorted(self._by_tenant[tenant_id])
        rows = _Rows(np.array(ids, dtype=np.int64), self._stack(ids))
        if len(ids) >= MATRIX_CACHE_MIN:
            self._matrices[tenant_id] = rows
            while len(self._matrices) > MATRIX_CACHE_TENANTS:
                self._matrices.popitem(last=False)
        return rows

    def _stack(self, ids: list[int]) -> np.ndarray:
        if not ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._entries[i].centroid for i in ids]).astype(np.float32, copy=False)

    def _exact(
        self, q: np.ndarray, ids: np.ndarray, matrix: np.ndarray, k: int
    ) -> list[tuple[IndexEntry, float]]:
        """Top-`k` of the speakers `ids` (int64 (m,)) whose centroids are `matrix` (m, dim)."""
        if not len(ids):
            return []
        scores = _inner_products(matrix, q)
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top])]
        return [(self._entries[int(ids[j])], float(scores[j])) for j in top]

    def _approximate(
        self, q: np.ndarray, tenant_id: int, selector: Any, k: int, allowed: int
    ) -> list[tuple[IndexEntry, float]]:
        """IVF shortlist of up to `REFINE * k` speakers passing `selector`, re-scored exactly."""
        want = min(max(REFINE * k, MIN_SHORTLIST), allowed)
        params = faiss.SearchParametersIVF(sel=selector, nprobe=min(self.nprobe, self._index.nlist))
        _, found = self._index.search(q[None, :], want, params=params)
        mask = (1 << TENANT_SHIFT) - 1
        ids = [int(i) & mask for i in found[0] if i >= 0]
        ids = [i for i in ids if i in self._entries and self._entries[i].tenant_id == tenant_id]
        return self._exact(q, np.array(ids, dtype=np.int64), self._stack(ids), k)

    def _remember(self, entry: IndexEntry) -> None:
        self._entries[entry.speaker_id] = entry
        self._by_key[(entry.tenant_id, entry.external_id)] = entry.speaker_id
        self._by_tenant.setdefault(entry.tenant_id, set()).add(entry.speaker_id)
        rows = self._matrices.get(entry.tenant_id)
        if rows is not None:
            rows.put(entry.speaker_id, self._vector(entry))
        self._join_cohort(entry)

    def _join_cohort(self, entry: IndexEntry) -> None:
        members = self._cohort_members.setdefault(entry.tenant_id, {})
        if entry.speaker_id in members or len(members) < COHORT_LIMIT:
            members[entry.speaker_id] = None
            self._cohorts.pop(entry.tenant_id, None)  # a member's centroid moved, or one joined

    def _leave_cohort(self, entry: IndexEntry) -> None:
        members = self._cohort_members.get(entry.tenant_id)
        if members is None or entry.speaker_id not in members:
            return
        del members[entry.speaker_id]
        self._cohorts.pop(entry.tenant_id, None)
        if len(members) == COHORT_LIMIT - 1:  # it was full: the earliest speaker outside joins
            for other in sorted(self._by_tenant.get(entry.tenant_id, ())):
                if other not in members and other != entry.speaker_id:
                    members[other] = None
                    break
        if not members:
            del self._cohort_members[entry.tenant_id]

    def _vector(self, entry: IndexEntry) -> np.ndarray:
        vector = np.ascontiguousarray(entry.centroid, dtype=np.float32)
        if vector.shape != (self.dim,):
            raise ValueError(f"speaker {entry.speaker_id}: vector of shape {vector.shape}, not ({self.dim},)")
        return vector


class _Rows:
    """A tenant's speaker ids and centroids, in no particular order, with room to grow: an
    enrollment overwrites its speaker's row or appends one, and a removal moves the last row into
    the freed one, instead of the whole matrix being stacked again."""

    def __init__(self, ids: np.ndarray, matrix: np.ndarray) -> None:
        self._ids = ids
        self._matrix = matrix
        self.count = len(ids)

    @functools.cached_property
    def _row(self) -> dict[int, int]:
        """Each speaker's row: made on first use (a small tenant stacked for one search has none)."""
        return {int(speaker): row for row, speaker in enumerate(self.ids.tolist())}

    @property
    def ids(self) -> np.ndarray:
        return self._ids[: self.count]

    @property
    def matrix(self) -> np.ndarray:
        return self._matrix[: self.count]

    def rows_of(self, only: Sequence[int]) -> np.ndarray:
        """Rows of the speakers of `only` that are here, each once."""
        found = {self._row[i] for i in map(int, only) if i in self._row}
        return np.array(sorted(found), dtype=np.int64)

    def put(self, speaker_id: int, vector: np.ndarray) -> None:
        row = self._row.get(speaker_id)
        if row is None:
            if self.count == len(self._ids):
                capacity = max(16, 2 * self.count)
                self._ids = np.resize(self._ids, capacity)
                grown = np.empty((capacity, self._matrix.shape[1]), dtype=np.float32)
                grown[: self.count] = self._matrix[: self.count]
                self._matrix = grown
            row = self.count
            self.count += 1
            self._ids[row] = speaker_id
            self._row[speaker_id] = row
        self._matrix[row] = vector

    def drop(self, speaker_id: int) -> None:
        row = self._row.pop(speaker_id, None)
        if row is None:
            return
        last = self.count - 1
        if row != last:
            moved = int(self._ids[last])
            self._ids[row], self._matrix[row] = moved, self._matrix[last]
            self._row[moved] = row
        self.count = last


class BandedIndex:
    """Speakers searchable in each band (`service.audio.band`): one `FaissSpeakerIndex` of the
    centroids (wideband clips) and one of the narrowband centroids (calls), whose entries carry the
    narrowband centroid as their `centroid`, so search, cohort, restrictions and the change-log
    follower work per band unchanged. A speaker without twins has the same vector in both. With
    `twins` off both bands are one index (no second copy). Reads not given a band are wideband."""

    def __init__(self, dim: int, ivf_threshold: int = 200_000, nprobe: int = 400, twins: bool = True) -> None:
        self.wide = FaissSpeakerIndex(dim, ivf_threshold, nprobe)
        self.narrow = FaissSpeakerIndex(dim, ivf_threshold, nprobe) if twins else self.wide
        self.dim = dim

    def band(self, band: Band) -> FaissSpeakerIndex:
        return self.narrow if band == Band.NARROW else self.wide

    def _bands(self) -> list[tuple[FaissSpeakerIndex, bool]]:
        return [(self.wide, False)] + ([(self.narrow, True)] if self.narrow is not self.wide else [])

    def replace(self, entries: Sequence[IndexEntry]) -> None:
        for index, narrow in self._bands():
            index.replace([_in_band(e, narrow) for e in entries])

    def upsert(self, entry: IndexEntry) -> None:
        for index, narrow in self._bands():
            index.upsert(_in_band(entry, narrow))

    def remove(self, speaker_id: int) -> None:
        for index, _ in self._bands():
            index.remove(speaker_id)

    def apply(self, upserts: Sequence[IndexEntry], removes: Sequence[int]) -> None:
        for index, narrow in self._bands():
            index.apply([_in_band(e, narrow) for e in upserts], removes)

    def __len__(self) -> int:
        return len(self.wide)

    @property
    def kind(self) -> str:
        return self.wide.kind

    def ids(self) -> set[int]:
        return self.wide.ids()

    def faiss_ids(self) -> set[int]:
        return self.wide.faiss_ids()

    def get(self, speaker_id: int) -> IndexEntry | None:
        return self.wide.get(speaker_id)

    def lookup(self, tenant_id: int, external_id: str) -> IndexEntry | None:
        return self.wide.lookup(tenant_id, external_id)

    def tenant_size(self, tenant_id: int) -> int:
        return self.wide.tenant_size(tenant_id)

    def cohort(self, tenant_id: int) -> tuple[np.ndarray, np.ndarray]:
        return self.wide.cohort(tenant_id)

    def search(
        self, query: np.ndarray, tenant_id: int, k: int, only: Sequence[int] | None = None
    ) -> list[tuple[IndexEntry, float]]:
        return self.wide.search(query, tenant_id, k, only)


def _in_band(entry: IndexEntry, narrow: bool) -> IndexEntry:
    """`entry` as the band's index holds it: its narrowband centroid as `centroid` in the narrow band."""
    if not narrow or entry.narrow_centroid is None:
        return entry
    return dataclasses.replace(entry, centroid=entry.narrow_centroid)


def _inner_products(matrix: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``matrix @ q`` for a float32 (m, dim) matrix and (dim,) query, on the calling thread.

    numpy's BLAS splits even one matrix-vector product over its threads, and waking them took
    ~12 ms per search whenever the cores were busy (the model shares them); faiss's SIMD kernel on
    one thread took 0.2 ms for 10k speakers and 7 ms for 200k on the same loaded machine.
    """
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    out = np.empty(len(matrix), dtype=np.float32)
    faiss.fvec_inner_products_ny(
        faiss.swig_ptr(out), faiss.swig_ptr(q), faiss.swig_ptr(matrix), matrix.shape[1], len(matrix)
    )
    return out


def _clear_freed_slots(invlists: Any, before: list[int]) -> None:
    """Zero the code slots `remove_ids` freed at the end of each fast-scan list's last block.

    faiss (1.15.1) moves the last code of a list into a removed one's place but leaves the old
    bits in the freed slot, and the next add to that list ORs its 4-bit code into the slot,
    assuming zeros: the new speaker's code is garbage, so faiss ranks it wrongly and the shortlist
    misses it. The slots beyond a list's new size inside its last (still allocated) block are
    exactly those to clear; clearing them is harmless where faiss already does.
    """
    packer = invlists.packer
    zero = np.zeros(packer.code_size, dtype=np.uint8)
    for list_no, size in enumerate(before):
        after = invlists.list_size(list_no)
        end = min(size, -(-after // packer.nvec) * packer.nvec)
        if end <= after:
            continue
        blocks = -(-after // packer.nvec)
        codes = faiss.rev_swig_ptr(invlists.get_codes(list_no), blocks * packer.block_size)
        codes = codes.reshape(blocks, packer.block_size)
        for slot in range(after, end):
            packer.pack_1(zero, slot, codes)
