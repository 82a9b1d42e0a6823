"""Speaker search at scale: the service's index against exact (brute-force) search, side by side.

Synthetic speakers: random unit 192-d vectors (as the index sees centroids). Random directions on
the sphere are the hardest population for an inverted file (no cluster structure to exploit), so
the recall measured here should be pessimistic. Every 100th speaker belongs to a second tenant whose external
ids repeat the first tenant's; the rest belong to tenant 1.

A query is a genuine-like one: an enrolled speaker's vector moved to cosine 0.7 from it, as a new
clip of that speaker is. recall@1 is the fraction of queries whose top-1 equals the exact top-1
over the same allowed set; it is also given for harder queries at cosine 0.5 (a noisier clip).
(A query from an unknown speaker, a random direction, has no meaningful top-1 and is not what
recall is measured on.) Searches ask for `SHORTLIST` speakers, as identification does. Per size:

- the headline: tenant-1 searches, their p50/p99, exact numpy search (matrix product over all
  vectors, the other tenant masked: the baseline) p50 and the speed-up, recall@1, the index's
  start-up build time, and the process's RSS now and at its peak. numpy's BLAS runs the baseline
  on all cores; when other work keeps them busy, waking its threads adds ~12 ms to a product, so
  the baseline's p50 (and the speed-up) depend on the machine's load;
- restrictions: searches of the small tenant, and of tenant 1 restricted to `ONLY` speaker ids
  (plus ids of the other tenant, which must never come back), each against exact search over
  its allowed set; `leaks` counts results outside the allowed set (must be 0);
- scoring: the decision rule's work on top of a search (`service.enrollment.scoring`): p50 of
  normalising the shortlist with the tenant's cached scale, and the one-off build of that scale
  from the tenant's cohort (after the cohort changes);
- deletes: a speaker is removed and the next search for its own vector must not return it; then
  it is added again and must be that search's top-1 (`delete errors` counts failures of either);
  the times are of `remove` and of `upsert`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from devtools.server import proc_status_bytes, resident_bytes
from service.config import IndexSettings
from service.enrollment.ports import IndexEntry
from service.enrollment.scoring import DecisionRule, Scorer
from service.storage.index import FaissSpeakerIndex

DIM = 192
COSINE = 0.7  # a genuine-like query's cosine to its speaker
HARD_COSINE = 0.5  # a harder one: recall only
SHORTLIST = 64  # speakers identification asks the index for
SECOND_TENANT_EVERY = 100
ONLY = 10_000  # a speakerIds restriction above the index's exact limit
CROSS_TENANT_IDS = 100  # ids of the other tenant slipped into the restriction
CHECKS = 200  # restricted searches and baseline timings per size
DELETES = 20

Row = dict[str, Any]


def run_index_bench(
    sizes: Sequence[int],
    queries: int = 1000,
    nprobe: int | None = None,
    *,
    ivf_threshold: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Row]:
    """One row per size (see the module doc); `nprobe` and `ivf_threshold` default to the service's."""
    if any(n < SECOND_TENANT_EVERY for n in sizes) or queries < 1:
        raise ValueError(f"sizes of at least {SECOND_TENANT_EVERY} speakers and queries >= 1, please")
    defaults = IndexSettings()
    nprobe = defaults.nprobe if nprobe is None else nprobe
    threshold = defaults.ivf_threshold if ivf_threshold is None else ivf_threshold
    rows = []
    for n in sizes:
        rows.append(_bench_size(n, queries, nprobe, threshold))
        if progress is not None:
            progress(f"{n} speakers done")
    return rows


def format_rows(rows: Sequence[Row]) -> str:
    """The rows as two fixed-width tables: search at scale, then restrictions and deletes."""
    lines = [
        f"{'speakers':>9} {'index':>5} {'build s':>8} {'p50 ms':>7} {'p99 ms':>7} {'exact p50':>10} "
        f"{'speed-up':>8} {'recall@1':>8} {'at cos .5':>9} {'RSS GB':>7} {'peak GB':>8} "
        f"{'scoring p50 ms':>14} {'scale ms':>8}"
    ]
    for r in rows:
        lines.append(
            f"{r['speakers']:>9} {r['kind']:>5} {r['build_s']:>8.1f} {r['p50_ms']:>7.2f} "
            f"{r['p99_ms']:>7.2f} {r['exact_p50_ms']:>10.2f} {r['speedup']:>7.1f}x "
            f"{r['recall_at_1']:>8.3f} {r['hard_recall_at_1']:>9.3f} {r['rss_gb']:>7.2f} "
            f"{r['peak_rss_gb']:>8.2f} {r['score_p50_ms']:>14.3f} {r['scale_build_ms']:>8.1f}"
        )
    lines.append("")
    lines.append(
        f"{'speakers':>9} {'tenant':>7} {'p50 ms':>7} {'exact':>6} {'recall':>6} "
        f"{'only':>6} {'p50 ms':>7} {'exact':>6} {'recall':>6} {'leaks':>5} "
        f"{'delete ms':>9} {'re-add ms':>9} {'delete errors':>13}"
    )
    for r in rows:
        lines.append(
            f"{r['speakers']:>9} {r['tenant_speakers']:>7} {r['tenant_p50_ms']:>7.2f} "
            f"{r['tenant_exact_p50_ms']:>6.2f} {r['tenant_recall_at_1']:>6.3f} "
            f"{r['only_speakers']:>6} {r['only_p50_ms']:>7.2f} {r['only_exact_p50_ms']:>6.2f} "
            f"{r['only_recall_at_1']:>6.3f} {r['leaks']:>5} {r['delete_ms']:>9.2f} "
            f"{r['readd_ms']:>9.2f} {r['delete_errors']:>13}"
        )
    return "\n".join(lines)


def population(n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` random unit vectors, float32 (n, DIM)."""
    vectors = rng.standard_normal((n, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def near(vector: np.ndarray, rng: np.random.Generator, cos: float = COSINE) -> np.ndarray:
    """A unit vector at cosine `cos` from the unit `vector`, in a random direction."""
    noise = rng.standard_normal(vector.shape[0], dtype=np.float32)
    noise -= (noise @ vector) * vector
    noise /= np.linalg.norm(noise)
    return np.asarray(cos * vector + np.sqrt(1 - cos**2) * noise, dtype=np.float32)


def rss_gb() -> tuple[float, float]:
    """The process's resident memory now and at its peak, GB."""
    return resident_bytes() / 2**30, proc_status_bytes("VmHWM") / 2**30


def _ms(seconds: Sequence[float]) -> float:
    return 1000 * statistics.median(seconds)


def _top1(scores: np.ndarray) -> int:
    return int(np.argmax(scores))


def _bench_size(n: int, queries: int, nprobe: int, ivf_threshold: int) -> Row:
    rng = np.random.default_rng(n)
    vectors = population(n, rng)
    rows = np.arange(n)
    second = rows % SECOND_TENANT_EVERY == SECOND_TENANT_EVERY - 1
    tenant_of = np.where(second, 2, 1)
    # Tenant-2 speaker b is "s{b}", a name tenant 1 uses too: keys must stay per tenant.
    external = np.where(second, rows // SECOND_TENANT_EVERY, rows - rows // SECOND_TENANT_EVERY)
    entries = [IndexEntry(i + 1, int(tenant_of[i]), f"s{external[i]}", True, vectors[i]) for i in range(n)]
    index = FaissSpeakerIndex(DIM, ivf_threshold=ivf_threshold, nprobe=nprobe)
    start = time.perf_counter()
    index.replace(entries)
    build = time.perf_counter() - start
    first, other = np.flatnonzero(~second), np.flatnonzero(second)

    # Headline: tenant-1 searches against exact search over all vectors, tenant 2 masked.
    qs, ours, hits = _genuine(index, vectors, rng, first, second, queries, COSINE)
    _, _, hard_hits = _genuine(index, vectors, rng, first, second, queries, HARD_COSINE)
    exact = []
    for q in qs[:CHECKS]:
        t0 = time.perf_counter()
        scores = vectors @ q
        scores[other] = -np.inf
        top = np.argpartition(-scores, SHORTLIST)[:SHORTLIST]
        _ = top[np.argsort(-scores[top])]
        exact.append(time.perf_counter() - t0)

    tenant = _restricted(index, vectors, rng, other, tenant_id=2, only=None)
    allowed = rng.choice(first, min(ONLY, len(first) // 2), replace=False)
    strangers = rng.choice(other, min(CROSS_TENANT_IDS, len(other)), replace=False)
    only = _restricted(index, vectors, rng, allowed, tenant_id=1, only=strangers)
    if (
        index.lookup(2, "s0") is not entries[SECOND_TENANT_EVERY - 1]
        or index.lookup(1, "s0") is not entries[0]
    ):
        tenant["leaks"] += 1
    scale_ms, score = _scoring(index, qs[:CHECKS], len(first))
    removed, readded, errors = _deletes(index, entries, vectors, rng, first)
    rss, peak = rss_gb()
    return {
        "speakers": n,
        "kind": index.kind,
        "build_s": build,
        "p50_ms": _ms(ours),
        "p99_ms": 1000 * float(np.percentile(ours, 99)),
        "exact_p50_ms": _ms(exact),
        "speedup": _ms(exact) / _ms(ours),
        "recall_at_1": hits / len(ours),
        "hard_recall_at_1": hard_hits / len(ours),
        "rss_gb": rss,
        "peak_rss_gb": peak,
        "tenant_speakers": len(other),
        "tenant_p50_ms": tenant["p50_ms"],
        "tenant_exact_p50_ms": tenant["exact_p50_ms"],
        "tenant_recall_at_1": tenant["recall_at_1"],
        "only_speakers": len(allowed),
        "only_p50_ms": only["p50_ms"],
        "only_exact_p50_ms": only["exact_p50_ms"],
        "only_recall_at_1": only["recall_at_1"],
        "leaks": tenant["leaks"] + only["leaks"],
        "delete_ms": _ms(removed),  # of `remove`
        "readd_ms": _ms(readded),
        "delete_errors": errors,
        "scale_build_ms": scale_ms,
        "score_p50_ms": _ms(score),
    }


def _scoring(index: FaissSpeakerIndex, qs: np.ndarray, gallery: int) -> tuple[float, list[float]]:
    """The decision rule on top of search, as identify runs it: the tenant's scale (built once per
    cohort change: its time is returned apart), then the normalised scores of the shortlist."""
    scorer = Scorer(DecisionRule.calibrated(np.zeros(DIM, np.float32)))
    t0 = time.perf_counter()
    scorer.scale(1, *index.cohort(1))
    build = 1000 * (time.perf_counter() - t0)
    times = []
    for q in qs:
        found = index.search(q, 1, k=SHORTLIST)
        centroids = np.stack([e.centroid for e, _ in found])
        t0 = time.perf_counter()
        scale = scorer.scale(1, *index.cohort(1))
        scorer.scores(q, centroids, scale, gallery)
        times.append(time.perf_counter() - t0)
    return build, times


def _genuine(
    index: FaissSpeakerIndex,
    vectors: np.ndarray,
    rng: np.random.Generator,
    first: np.ndarray,
    second: np.ndarray,
    queries: int,
    cos: float,
) -> tuple[np.ndarray, list[float], int]:
    """`queries` genuine-like tenant-1 queries at cosine `cos`: them, our search times, top-1 hits."""
    targets = rng.choice(first, min(queries, len(first)), replace=False)
    qs = np.stack([near(vectors[t], rng, cos) for t in targets])
    truth = np.concatenate(
        [np.argmax(np.where(second[:, None], -np.inf, vectors @ chunk.T), axis=0) for chunk in _chunks(qs)]
    )
    ours, hits = [], 0
    for q, best in zip(qs, truth, strict=True):
        t0 = time.perf_counter()
        found = index.search(q, 1, k=SHORTLIST)
        ours.append(time.perf_counter() - t0)
        hits += int(found[0][0].speaker_id == best + 1)
    return qs, ours, hits


def _chunks(qs: np.ndarray, size: int = 16) -> list[np.ndarray]:
    return [qs[i : i + size] for i in range(0, len(qs), size)]


def _restricted(
    index: FaissSpeakerIndex,
    vectors: np.ndarray,
    rng: np.random.Generator,
    allowed: np.ndarray,
    tenant_id: int,
    only: np.ndarray | None,
) -> Row:
    """Searches of `tenant_id` restricted to the rows `allowed` (by tenant, or by `only` ids plus
    `allowed`), then exact search over `allowed` for the same queries (timed apart, as the headline
    is: BLAS threads left spinning by one would slow the other)."""
    matrix = vectors[allowed]
    ids = None if only is None else [int(i) + 1 for i in np.concatenate([allowed, only])]
    permitted = set((allowed + 1).tolist())
    targets = rng.choice(len(allowed), min(CHECKS, len(allowed)), replace=False)
    qs = [near(matrix[t], rng) for t in targets]
    ours, exact, results, leaks = [], [], [], 0
    for q in qs:
        t0 = time.perf_counter()
        found = index.search(q, tenant_id, k=SHORTLIST, only=ids)
        ours.append(time.perf_counter() - t0)
        results.append(found[0][0].speaker_id if found else None)
        leaks += sum(e.speaker_id not in permitted or e.tenant_id != tenant_id for e, _ in found)
    hits = 0
    for q, top in zip(qs, results, strict=True):
        t0 = time.perf_counter()
        best = _top1(matrix @ q)
        exact.append(time.perf_counter() - t0)
        hits += int(top == allowed[best] + 1)
    return {"p50_ms": _ms(ours), "exact_p50_ms": _ms(exact), "recall_at_1": hits / len(qs), "leaks": leaks}


def _deletes(
    index: FaissSpeakerIndex,
    entries: list[IndexEntry],
    vectors: np.ndarray,
    rng: np.random.Generator,
    first: np.ndarray,
) -> tuple[list[float], list[float], int]:
    """Remove a tenant-1 speaker, search its own vector (it must not come back), add it back and
    search again (it must be the top-1)."""
    removed, readded, errors = [], [], 0
    for row in rng.choice(first, min(DELETES, len(first)), replace=False):
        entry = entries[row]
        t0 = time.perf_counter()
        index.remove(entry.speaker_id)
        removed.append(time.perf_counter() - t0)
        found = index.search(vectors[row], 1, k=SHORTLIST)
        errors += entry.speaker_id in {e.speaker_id for e, _ in found}
        t0 = time.perf_counter()
        index.upsert(entry)
        readded.append(time.perf_counter() - t0)
        if index.search(vectors[row], 1, k=1)[0][0].speaker_id != entry.speaker_id:
            errors += 1
    return removed, readded, errors


def index_section(args: argparse.Namespace) -> dict[str, Any]:
    """The bench's index section: `run_index_bench` at --index-sizes, printed as a table."""
    nprobe = f", nprobe {args.nprobe}" if args.nprobe else ""
    print(f"\n== index: {args.index_queries} queries per size{nprobe}", flush=True)
    rows = run_index_bench(args.index_sizes, args.index_queries, args.nprobe)
    print(format_rows(rows))
    return {"queries": args.index_queries, "nprobe": args.nprobe, "rows": rows}
