"""Speaker search at scale: the service's index against exact (brute-force) search, side by side.

    .venv/bin/python scripts/bench_index.py [--sizes 10000 100000 1000000] [--queries 300]

Synthetic speakers (random unit 192-d vectors, as the index sees centroids) in one tenant; each
query is a speaker's vector moved to cosine 0.7 from it, as a new clip of an enrolled speaker is.
Prints, per size: the index kind, start-up build time, search p50/p99, exact search p50 (numpy
matrix product over all vectors, the baseline), recall@1 against exact, and the process's RSS.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import numpy as np

from service.enrollment.ports import IndexEntry
from service.storage.index import FaissSpeakerIndex

DIM = 192


def rss_gb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def population(n: int, rng: np.random.Generator) -> np.ndarray:
    vectors = rng.standard_normal((n, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def near(vector: np.ndarray, rng: np.random.Generator, cos: float = 0.7) -> np.ndarray:
    noise = rng.standard_normal(DIM).astype(np.float32)
    noise -= (noise @ vector) * vector
    noise /= np.linalg.norm(noise)
    return (cos * vector + np.sqrt(1 - cos**2) * noise).astype(np.float32)


def bench(n: int, queries: int, nprobe: int) -> dict[str, float | str]:
    rng = np.random.default_rng(n)
    vectors = population(n, rng)
    entries = [IndexEntry(i + 1, 1, f"s{i}", True, vectors[i]) for i in range(n)]
    index = FaissSpeakerIndex(DIM, nprobe=nprobe)
    start = time.perf_counter()
    index.replace(entries)
    build = time.perf_counter() - start
    targets = rng.choice(n, queries, replace=False)
    qs = [near(vectors[t], rng) for t in targets]
    ours, exact_t, hits = [], [], 0
    for q in qs:
        t0 = time.perf_counter()
        found = index.search(q, 1, k=10)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        best = int(np.argmax(vectors @ q)) + 1
        exact_t.append(time.perf_counter() - t0)
        hits += found[0][0].speaker_id == best
    return {
        "speakers": n,
        "kind": index.kind,
        "build_s": build,
        "p50_ms": 1000 * statistics.median(ours),
        "p99_ms": 1000 * float(np.percentile(ours, 99)),
        "exact_p50_ms": 1000 * statistics.median(exact_t),
        "recall_at_1": hits / queries,
        "rss_gb": rss_gb(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--nprobe", type=int, default=128)
    args = parser.parse_args()
    print(
        f"{'speakers':>9} {'index':>5} {'build s':>8} {'p50 ms':>7} {'p99 ms':>7} {'exact p50':>10} "
        f"{'speed-up':>8} {'recall@1':>8} {'RSS GB':>7}"
    )
    for n in args.sizes:
        r = bench(n, args.queries, args.nprobe)
        print(
            f"{r['speakers']:>9} {r['kind']:>5} {r['build_s']:>8.1f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} "
            f"{r['exact_p50_ms']:>10.2f} {float(r['exact_p50_ms']) / float(r['p50_ms']):>7.1f}x "
            f"{r['recall_at_1']:>8.3f} {r['rss_gb']:>7.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
