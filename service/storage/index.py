"""The faiss index of speaker vectors: derived from the database, rebuilt from it at start.

One vector per speaker (its normalised centroid), searched by inner product (= cosine on normalised
vectors). Per-sample vectors are only needed inside one speaker (duplicate and mismatch checks) and
are read from the database there.

- faiss ids carry the tenant in their high bits (``tenant << 40 | speaker row id``), so a tenant's
  search is an O(1) id-range selector inside faiss: it never sees, and never returns, another
  tenant's speakers.
- Below `ivf_threshold` speakers in all, search is exact: a matrix product over the tenant's cached
  centroids (faster than faiss's filtered flat scan, which cannot use BLAS).
- Above it, the faiss index is an inverted file (IVF, trained on the speakers themselves) probed at
  `nprobe` lists per query; small candidate sets (a tenant or a `speakerIds` list of up to
  `EXACT_LIMIT` speakers) are still scored exactly, where a filtered approximate search would lose
  recall.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import faiss as _faiss
import numpy as np

from service.enrollment.ports import IndexEntry

# faiss's generated stubs describe the C++ signatures, not the numpy wrappers it installs.
faiss: Any = _faiss

TENANT_SHIFT = 40
EXACT_LIMIT = 4096


def faiss_id(tenant_id: int, speaker_id: int) -> int:
    return (tenant_id << TENANT_SHIFT) | speaker_id


class FaissSpeakerIndex:
    def __init__(self, dim: int, ivf_threshold: int = 200_000, nprobe: int = 128) -> None:
        self.dim = dim
        self.ivf_threshold = ivf_threshold
        self.nprobe = nprobe
        self._lock = threading.RLock()
        self._index: Any = self._flat()
        self._entries: dict[int, IndexEntry] = {}
        self._by_tenant: dict[int, set[int]] = {}
        self._by_key: dict[tuple[int, str], int] = {}
        self._sums: dict[int, np.ndarray] = {}  # per tenant: sum of centroids (float64)
        self._matrices: dict[int, tuple[list[int], np.ndarray]] = {}  # small tenants, built lazily

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

    def lookup(self, tenant_id: int, external_id: str) -> IndexEntry | None:
        speaker_id = self._by_key.get((tenant_id, external_id))
        return None if speaker_id is None else self._entries.get(speaker_id)

    def replace(self, entries: Sequence[IndexEntry]) -> None:
        with self._lock:
            self._entries.clear()
            self._by_tenant.clear()
            self._by_key.clear()
            self._sums.clear()
            self._matrices.clear()
            for e in entries:
                self._vector(e)  # shape check before anything is built
                self._remember(e)
            self._build(list(entries))

    def upsert(self, entry: IndexEntry) -> None:
        with self._lock:
            if entry.speaker_id in self._entries:
                self.remove(entry.speaker_id)
            self._index.add_with_ids(
                self._vector(entry)[None, :],
                np.array([faiss_id(entry.tenant_id, entry.speaker_id)], dtype=np.int64),
            )
            self._remember(entry)
            if self.kind == "flat" and len(self._entries) >= self.ivf_threshold:
                self._build(list(self._entries.values()))

    def remove(self, speaker_id: int) -> None:
        with self._lock:
            entry = self._entries.pop(speaker_id, None)
            if entry is None:
                return
            doomed = np.array([faiss_id(entry.tenant_id, speaker_id)], dtype=np.int64)
            self._index.remove_ids(doomed)
            self._by_key.pop((entry.tenant_id, entry.external_id), None)
            self._matrices.pop(entry.tenant_id, None)
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
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        with self._lock:
            members = self._by_tenant.get(tenant_id)
            if not members or k <= 0:
                return []
            exact = self.kind == "flat"  # numpy over a cached matrix beats faiss's filtered flat scan
            if only is not None:
                allowed = [i for i in dict.fromkeys(only) if i in members]
                if exact or len(allowed) <= EXACT_LIMIT:
                    matrix = np.stack([self._entries[i].centroid for i in allowed]) if allowed else None
                    return self._exact(q, allowed, matrix, k)
                selector = faiss.IDSelectorBatch(
                    np.array([faiss_id(tenant_id, i) for i in allowed], dtype=np.int64)
                )
                return self._faiss(q, selector, min(k, len(allowed)))
            if exact or len(members) <= EXACT_LIMIT:
                ids, matrix = self._tenant_matrix(tenant_id)
                return self._exact(q, ids, matrix, k)
            selector = faiss.IDSelectorRange(faiss_id(tenant_id, 0), faiss_id(tenant_id + 1, 0))
            return self._faiss(q, selector, min(k, len(members)))

    # --- internals -------------------------------------------------------------------------------

    def _flat(self) -> Any:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _build(self, entries: list[IndexEntry]) -> None:
        """(Re)build the faiss index for `entries`: flat when small, IVF trained on them when large."""
        vectors = (
            np.stack([self._vector(e) for e in entries]) if entries else np.zeros((0, self.dim), np.float32)
        )
        if len(entries) >= self.ivf_threshold:
            nlist = int(2 * math.sqrt(len(entries)))
            index = faiss.IndexIVFFlat(
                faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT
            )
            index.cp.niter = 10  # coarse centroids need not be exact; start-up time matters
            sample = np.random.default_rng(0).permutation(len(vectors))[: 48 * nlist]
            index.train(vectors[sample])
        else:
            index = self._flat()
        if entries:
            ids = np.array([faiss_id(e.tenant_id, e.speaker_id) for e in entries], dtype=np.int64)
            index.add_with_ids(vectors, ids)
        self._index = index

    def _tenant_matrix(self, tenant_id: int) -> tuple[list[int], np.ndarray]:
        cached = self._matrices.get(tenant_id)
        if cached is None:
            ids = sorted(self._by_tenant[tenant_id])
            cached = (ids, np.stack([self._entries[i].centroid for i in ids]).astype(np.float32))
            self._matrices[tenant_id] = cached
        return cached

    def _exact(
        self, q: np.ndarray, ids: list[int], matrix: np.ndarray | None, k: int
    ) -> list[tuple[IndexEntry, float]]:
        if matrix is None or not ids:
            return []
        scores = matrix @ q
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top])]
        return [(self._entries[ids[j]], float(scores[j])) for j in top]

    def _faiss(self, q: np.ndarray, selector: Any, k: int) -> list[tuple[IndexEntry, float]]:
        if isinstance(self._index, faiss.IndexIVF):
            params = faiss.SearchParametersIVF(sel=selector, nprobe=self.nprobe)
        else:
            params = faiss.SearchParameters(sel=selector)
        scores, ids = self._index.search(q[None, :], k, params=params)
        mask = (1 << TENANT_SHIFT) - 1
        out = []
        for s, i in zip(scores[0], ids[0], strict=True):
            entry = self._entries.get(int(i) & mask) if i >= 0 else None
            if entry is not None:
                out.append((entry, float(s)))
        return out

    def _remember(self, entry: IndexEntry) -> None:
        self._entries[entry.speaker_id] = entry
        self._by_key[(entry.tenant_id, entry.external_id)] = entry.speaker_id
        self._by_tenant.setdefault(entry.tenant_id, set()).add(entry.speaker_id)
        self._matrices.pop(entry.tenant_id, None)
        self._sums[entry.tenant_id] = self._sums.get(entry.tenant_id, np.zeros(self.dim)) + entry.centroid

    def _vector(self, entry: IndexEntry) -> np.ndarray:
        vector = np.ascontiguousarray(entry.centroid, dtype=np.float32)
        if vector.shape != (self.dim,):
            raise ValueError(f"speaker {entry.speaker_id}: vector of shape {vector.shape}, not ({self.dim},)")
        return vector
