"""The faiss index of speaker vectors: derived from the database, rebuilt from it at start.

One vector per speaker (its normalised centroid), keyed by the speaker's row id, searched by
inner product (= cosine on normalised vectors). Tenancy and `speakerIds` restrictions are applied
inside the search with a faiss ID selector, so a restricted search never sees, and never returns,
another tenant's speakers. Per-sample vectors are only needed inside one speaker (duplicate and
mismatch checks) and are read from the database there.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import faiss
import numpy as np

from service.enrollment.ports import IndexEntry


class FaissSpeakerIndex:
    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._lock = threading.RLock()
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._entries: dict[int, IndexEntry] = {}
        self._by_tenant: dict[int, set[int]] = {}
        self._by_key: dict[tuple[int, str], int] = {}
        self._sums: dict[int, np.ndarray] = {}  # per tenant: sum of centroids (float64)

    def __len__(self) -> int:
        return len(self._entries)

    def ids(self) -> set[int]:
        with self._lock:
            return set(self._entries)

    def faiss_ids(self) -> set[int]:
        """The ids faiss itself holds (for consistency checks)."""
        with self._lock:
            return {int(self._index.id_map.at(i)) for i in range(self._index.ntotal)}

    def get(self, speaker_id: int) -> IndexEntry | None:
        return self._entries.get(speaker_id)

    def lookup(self, tenant_id: int, external_id: str) -> IndexEntry | None:
        speaker_id = self._by_key.get((tenant_id, external_id))
        return None if speaker_id is None else self._entries.get(speaker_id)

    def replace(self, entries: Sequence[IndexEntry]) -> None:
        with self._lock:
            self._index.reset()
            self._entries.clear()
            self._by_tenant.clear()
            self._by_key.clear()
            self._sums.clear()
            if entries:
                ids = np.array([e.speaker_id for e in entries], dtype=np.int64)
                vectors = np.stack([self._vector(e) for e in entries])
                self._index.add_with_ids(vectors, ids)
                for e in entries:
                    self._remember(e)

    def upsert(self, entry: IndexEntry) -> None:
        with self._lock:
            if entry.speaker_id in self._entries:
                self.remove(entry.speaker_id)
            self._index.add_with_ids(
                self._vector(entry)[None, :], np.array([entry.speaker_id], dtype=np.int64)
            )
            self._remember(entry)

    def remove(self, speaker_id: int) -> None:
        with self._lock:
            entry = self._entries.pop(speaker_id, None)
            if entry is None:
                return
            # faiss's stubs describe the C++ signatures, not the numpy wrappers it installs.
            self._index.remove_ids(np.array([speaker_id], dtype=np.int64))  # type: ignore[arg-type]
            self._by_key.pop((entry.tenant_id, entry.external_id), None)
            self._sums[entry.tenant_id] -= entry.centroid
            members = self._by_tenant.get(entry.tenant_id)
            if members is not None:
                members.discard(speaker_id)
                if not members:
                    del self._by_tenant[entry.tenant_id]
                    del self._sums[entry.tenant_id]

    def tenant_size(self, tenant_id: int) -> int:
        return len(self._by_tenant.get(tenant_id, ()))

    def tenant_sum(self, tenant_id: int) -> tuple[np.ndarray, int]:
        """Sum of the tenant's centroids and their count, kept up to date on every change."""
        with self._lock:
            total = self._sums.get(tenant_id)
            count = len(self._by_tenant.get(tenant_id, ()))
            return (np.zeros(self.dim) if total is None else total.copy()), count

    def search(
        self, query: np.ndarray, tenant_id: int, k: int, only: Sequence[int] | None = None
    ) -> list[tuple[IndexEntry, float]]:
        """Top-`k` speakers of `tenant_id` (restricted to `only` if given) by cosine to `query`."""
        with self._lock:
            allowed = self._by_tenant.get(tenant_id, set())
            if only is not None:
                allowed = allowed.intersection(only)
            if not allowed or k <= 0:
                return []
            selector = faiss.IDSelectorBatch(np.fromiter(allowed, dtype=np.int64))
            params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
            q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
            scores, ids = self._index.search(q, min(k, len(allowed)), params=params)
            return [
                (self._entries[int(i)], float(s))
                for s, i in zip(scores[0], ids[0], strict=True)
                if i >= 0 and int(i) in self._entries
            ]

    def _remember(self, entry: IndexEntry) -> None:
        self._entries[entry.speaker_id] = entry
        self._by_key[(entry.tenant_id, entry.external_id)] = entry.speaker_id
        self._by_tenant.setdefault(entry.tenant_id, set()).add(entry.speaker_id)
        self._sums[entry.tenant_id] = self._sums.get(entry.tenant_id, np.zeros(self.dim)) + entry.centroid

    def _vector(self, entry: IndexEntry) -> np.ndarray:
        vector = np.ascontiguousarray(entry.centroid, dtype=np.float32)
        if vector.shape != (self.dim,):
            raise ValueError(f"speaker {entry.speaker_id}: vector of shape {vector.shape}, not ({self.dim},)")
        return vector
