"""Soak: a bounded load on loopback against a `speakerid serve` process, to see errors, latency
and whether its memory keeps growing.

    python -m scripts.soak [--minutes 10] [--threads 8] [--max-requests 20000]
    python -m scripts.soak --long-clips [--quiet-seconds 120]   # one client sends 5-minute clips

The server runs on a fresh temporary SQLite database with the rate limit off. Each client thread
owns its own speaker ids and mixes: enrolling real clips (../shared/eval-speech; compatible and
native routes), identifying (native and compatible), deleting whole speakers (both routes) so that
ids are enrolled again, and listing. The load stops at --minutes or --max-requests, whichever
comes first. Errors are 5xx answers, transport errors and requests past --timeout; refusals by
design (a 4xx such as enrollment.DuplicateSample or audio.InsufficientSpeech) are counted apart.
Memory is the server process's resident set (VmRSS), sampled every few seconds: at the start of
the load (after a warm-up), at the end, and its peak. At the end each thread's idea of what it has
enrolled is compared with what the server lists.

With --long-clips the measured load comes in two phases: first the usual mix alone for
--quiet-seconds (the others' quiet latency), then the same mix while one more client sends
5-minute clips of real speech to the compatible identify, one after another. It reports the others'
p99 in both phases and their ratio, and the server's peak resident memory over its resident memory
at the start of the long clips (one request's memory is bounded whatever its length; see
--rss-budget-mb).
"""

from __future__ import annotations

import argparse
import base64
import io
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import httpx
import numpy as np
import soundfile as sf

from devtools.clips import SetClip, set_clips
from devtools.fuzz import still_serves
from devtools.server import local_server, resident_bytes
from service.tools.client import parse_error

COMPAT = "/audio/generic/api/v1/sync/diarization"
MIX: tuple[tuple[str, int], ...] = (  # operation, weight
    ("enroll", 40),
    ("identify", 30),
    ("identify (compat)", 10),
    ("delete", 12),
    ("list", 8),
)
LONG_OP = "identify 5-min (compat)"
LONG_SECONDS = 300.0


def clips(min_s: float = 3.0, max_s: float = 12.0) -> dict[str, list[SetClip]]:
    """Real clips per speaker (speakers with at least four clips of 3-12 s)."""
    by_speaker: dict[str, list[SetClip]] = defaultdict(list)
    for clip in set_clips():
        if min_s <= clip.duration_s <= max_s:
            by_speaker[clip.speaker].append(clip)
    return {s: c for s, c in sorted(by_speaker.items()) if len(c) >= 4}


@dataclass
class Results:
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    ok: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)  # "op: status code"
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, op: str, seconds: float, answer: httpx.Response | None, problem: str = "") -> None:
        with self.lock:
            if answer is None:
                self.errors.append(f"{op}: {problem}")
                return
            self.latency[op].append(seconds)
            if answer.status_code >= 500:
                self.errors.append(f"{op}: {answer.status_code} {answer.text[:300]}")
            elif answer.status_code >= 400:
                self.refusals[f"{op}: {answer.status_code} {parse_error(answer).code}"] += 1
            else:
                self.ok[op] += 1


class Worker:
    """One client thread: its own speaker ids, what it believes the server holds for them."""

    def __init__(
        self, n: int, url: str, key: str, pool: dict[str, list[SetClip]], args: argparse.Namespace
    ) -> None:
        self.n = n
        self.rng = random.Random(n)
        self.client = httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=args.timeout)
        self.pool = pool
        speakers = sorted(pool)
        self.speakers = [s for i, s in enumerate(speakers) if i % args.threads == n] or speakers
        self.everyone = [c for cs in pool.values() for c in cs]
        self.enrolled: dict[str, set[str]] = {}  # speaker id -> paths of its accepted samples
        self.unknown: set[str] = set()  # ids whose state a transport error left uncertain

    def run(self, results: Results, budget: count[int], limit: int, deadline: float) -> None:
        ops, weights = [op for op, _ in MIX], [w for _, w in MIX]
        while time.monotonic() < deadline and next(budget) < limit:
            op = self.rng.choices(ops, weights)[0]
            getattr(self, "do_" + op.split(" ")[0])(op, results)

    def timed(
        self, op: str, results: Results, method: str, path: str, **kwargs: Any
    ) -> httpx.Response | None:
        start = time.perf_counter()
        try:
            answer = self.client.request(method, path, **kwargs)
        except httpx.TimeoutException:
            results.add(op, 0.0, None, f"no answer within {self.client.timeout.read} s ({path})")
            return None
        except httpx.TransportError as exc:
            results.add(op, 0.0, None, f"{exc!r} ({path})")
            return None
        results.add(op, time.perf_counter() - start, answer)
        return answer

    def do_enroll(self, op: str, results: Results) -> None:
        speaker = self.rng.choice(self.speakers)
        sid = f"t{self.n}-{speaker}"
        used = self.enrolled.get(sid, set())
        fresh = [c for c in self.pool[speaker] if c.path not in used]
        if not fresh:
            self.do_delete("delete", results, sid)
            return
        clip = self.rng.choice(fresh)
        if self.rng.random() < 0.5:
            answer = self.timed(
                op, results, "POST", f"{COMPAT}/enroll", json={**clip.audio_fields, "speakerId": sid}
            )
        else:
            answer = self.timed(
                op, results, "POST", f"/v1/speakers/{sid}/enrollments", json=clip.audio_fields
            )
        if answer is None:
            self.unknown.add(sid)
        elif answer.status_code < 300:
            self.enrolled.setdefault(sid, set()).add(clip.path)

    def do_identify(self, op: str, results: Results) -> None:
        clip = self.rng.choice(self.everyone)
        if op == "identify":
            self.timed(op, results, "POST", "/v1/identify", json={**clip.audio_fields, "topK": 3})
        else:
            self.timed(
                op, results, "POST", f"{COMPAT}/identify", json={**clip.audio_fields, "speakerIds": []}
            )

    def do_delete(self, op: str, results: Results, sid: str | None = None) -> None:
        if sid is None:
            if not self.enrolled:
                return
            sid = self.rng.choice(sorted(self.enrolled))
        if self.rng.random() < 0.5:
            answer = self.timed(op, results, "POST", f"{COMPAT}/delete", json={"speakerId": sid})
        else:
            answer = self.timed(op, results, "DELETE", f"/v1/speakers/{sid}")
        if answer is None:
            self.unknown.add(sid)
        elif answer.status_code < 300 or answer.status_code == 404:
            self.enrolled.pop(sid, None)

    def do_list(self, op: str, results: Results) -> None:
        self.timed(op, results, "GET", "/v1/speakers", params={"limit": 1000})


def long_clip_body(pool: dict[str, list[SetClip]], seconds: float = LONG_SECONDS) -> dict[str, str]:
    """`seconds` of real speech (the pool's clips end to end, speakers taking turns) as base64 FLAC."""
    parts, total = [], 0
    turns = [c for group in zip(*pool.values(), strict=False) for c in group]
    while total < seconds * 16_000:
        for clip in turns:
            samples, rate = sf.read(clip.file, dtype="int16")
            if rate != 16_000 or samples.ndim != 1:
                continue
            parts.append(samples)
            total += len(samples)
            if total >= seconds * 16_000:
                break
    buffer = io.BytesIO()
    sf.write(buffer, np.concatenate(parts)[: int(seconds * 16_000)], 16_000, format="FLAC")
    return {"content": base64.b64encode(buffer.getvalue()).decode(), "encoding": "FLAC"}


class LongClipClient:
    """One more client: 5-minute clips to the compatible identify, one after another."""

    def __init__(self, url: str, key: str, body: dict[str, str], timeout: float) -> None:
        self.client = httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=timeout)
        self.body = body

    def run(self, results: Results, budget: count[int], limit: int, deadline: float) -> None:
        while time.monotonic() < deadline and next(budget) < limit:
            start = time.perf_counter()
            try:
                answer = self.client.post(f"{COMPAT}/identify", json=self.body)
            except httpx.HTTPError as exc:
                results.add(LONG_OP, 0.0, None, repr(exc))
                continue
            results.add(LONG_OP, time.perf_counter() - start, answer)


class MemoryWatch(threading.Thread):
    def __init__(self, pid: int, every_s: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop.is_set():
            self.samples.append((time.monotonic() - start, resident_bytes(self.pid)))
            self.stop.wait(self.every_s)


def warm_up(url: str, key: str, pool: dict[str, list[SetClip]]) -> None:
    """Every route once and a resident speaker pair, so the load starts on a warmed server."""
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=300) as client:
        for speaker in list(pool)[:2]:
            for clip in pool[speaker][:2]:
                client.post(
                    f"/v1/speakers/resident-{speaker}/enrollments", json=clip.audio_fields
                ).raise_for_status()
        for clip in [pool[s][3] for s in list(pool)[:4]]:
            client.post("/v1/identify", json=clip.audio_fields).raise_for_status()
            client.post(f"{COMPAT}/identify", json=clip.audio_fields).raise_for_status()
        client.post(
            f"{COMPAT}/enroll", json={**pool[list(pool)[2]][0].audio_fields, "speakerId": "warm"}
        ).raise_for_status()
        client.post(f"{COMPAT}/delete", json={"speakerId": "warm"}).raise_for_status()
        client.get("/v1/speakers").raise_for_status()


def consistency(url: str, key: str, workers: list[Worker]) -> list[str]:
    """Ids where the server's list and a thread's own record disagree (uncertain ids left out)."""
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=300) as client:
        listed = {
            s["speakerId"]: s["samples"]
            for s in client.get("/v1/speakers", params={"limit": 1000}).json()["speakers"]
        }
    problems = []
    for worker in workers:
        mine = {sid for sid in listed if sid.startswith(f"t{worker.n}-")} | set(worker.enrolled)
        for sid in sorted(mine - worker.unknown):
            expected = len(worker.enrolled.get(sid, ()))
            if listed.get(sid, 0) != expected:
                problems.append(
                    f"{sid}: server lists {listed.get(sid, 0)} samples, the client had {expected} accepted"
                )
    return problems


def load(workers: Sequence[Worker | LongClipClient], results: Results, seconds: float, limit: int) -> None:
    """All workers at once until `seconds` have passed or `limit` requests have started."""
    budget = count()
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=w.run, args=(results, budget, limit, deadline)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    p50, p90, p99 = np.percentile(np.array(values) * 1000, [50, 90, 99])
    return f"n={len(values)} p50={p50:.0f} ms p90={p90:.0f} ms p99={p99:.0f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=20_000)
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=180.0,
        help="the same load, not measured (per-shape kernel caches fill in the first 2-3 minutes)",
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds before a request counts as hung"
    )
    parser.add_argument(
        "--long-clips",
        action="store_true",
        help="a quiet phase, then one more client sending 5-minute clips (compatible identify)",
    )
    parser.add_argument(
        "--quiet-seconds", type=float, default=120.0, help="with --long-clips: the phase without them"
    )
    parser.add_argument(
        "--rss-budget-mb",
        type=float,
        default=500.0,
        help="with --long-clips: the most the server's resident memory may grow over the quiet phase",
    )
    args = parser.parse_args(argv)
    if args.long_clips:
        return mixed(args)
    pool = clips()
    with local_server(tenant="soak", ready=True) as server:
        print(
            f"serving at {server.url}; {sum(map(len, pool.values()))} clips of {len(pool)} speakers",
            flush=True,
        )
        warm_up(server.url, server.key, pool)
        workers = [Worker(n, server.url, server.key, pool, args) for n in range(args.threads)]
        # The same load for a while first: thread pools, allocator arenas and caches fill up.
        warm = Results()
        load(workers, warm, args.warmup_seconds, args.max_requests)
        watch = MemoryWatch(server.process.pid)
        watch.start()
        time.sleep(0.2)
        results = Results()
        started = time.monotonic()
        load(workers, results, args.minutes * 60, args.max_requests)
        elapsed = time.monotonic() - started
        time.sleep(1.0)
        watch.stop.set()
        watch.join()
        rss_end = resident_bytes(server.process.pid)
        problems = still_serves(server.url, server.key, "soak-final-check")
        mismatches = consistency(server.url, server.key, workers)
        for worker in workers:
            worker.client.close()
        alive = server.process.poll() is None

    requests = sum(len(v) for v in results.latency.values()) + len(results.errors)
    samples = watch.samples
    rss_start = samples[0][1]
    peak = max(r for _, r in samples)
    half = [s for s in samples if s[0] >= samples[-1][0] / 2]
    slope = (
        np.polyfit([t / 60 for t, _ in half], [r / 2**20 for _, r in half], 1)[0] if len(half) > 2 else 0.0
    )
    print(
        f"warm-up: {args.warmup_seconds:g} s, {sum(map(len, warm.latency.values()))} requests, not measured"
    )
    print(
        f"load: {args.threads} threads for {elapsed:.0f} s, {requests} requests ({requests / elapsed:.2f}/s)"
    )
    errors = warm.errors + results.errors
    print(f"errors (5xx, transport, hangs): {len(results.errors)} (and {len(warm.errors)} in the warm-up)")
    for error in errors[:20]:
        print(f"  {error}")
    print("successes: " + ", ".join(f"{op}: {n}" for op, n in sorted(results.ok.items())))
    print(
        "refusals by design (4xx): "
        + (", ".join(f"{k}: {n}" for k, n in sorted(results.refusals.items())) or "none")
    )
    print("latency:")
    for op, _ in MIX:
        print(f"  {op:<18} {percentiles(results.latency.get(op, []))}")
    mib = 2**20
    print(
        f"server RSS: start {rss_start / mib:.0f} MiB, end {rss_end / mib:.0f} MiB, "
        f"peak {peak / mib:.0f} MiB; growth {100 * (rss_end - rss_start) / rss_start:+.1f} %; "
        f"second-half trend {slope:+.2f} MiB/min"
    )
    minutes: dict[int, list[int]] = defaultdict(list)
    for t, r in samples:
        minutes[int(t // 60)].append(r)
    means = [float(np.mean(v)) for v in minutes.values()]
    print(
        "server RSS, mean and highest sample of each minute (MiB): "
        + ", ".join(f"{m / mib:.0f}/{max(v) / mib:.0f}" for m, v in zip(means, minutes.values(), strict=True))
    )
    end_t = samples[-1][0]
    first = [r for t, r in samples if t < 60]
    last = [r for t, r in samples if t > end_t - 60]
    if end_t >= 120 and first and last:
        # The heap is trimmed every few seconds, so single samples swing; minute means do not.
        growth = 100 * (np.mean(last) - np.mean(first)) / np.mean(first)
        print(f"growth, mean RSS of the last minute over the first minute's: {growth:+.1f} %")
    print(f"consistency (client's record vs the server's list): {len(mismatches)} mismatches")
    for line in mismatches[:10]:
        print(f"  {line}")
    print("still serves: " + ("yes" if not problems and alive else "NO " + "; ".join(problems)))
    return 1 if errors or problems or mismatches or not alive else 0


def mixed(args: argparse.Namespace) -> int:
    """The --long-clips run: the usual mix alone, then with a client sending 5-minute clips."""
    pool = clips()
    long_body = long_clip_body(pool)
    with local_server(tenant="soak", ready=True) as server:
        print(f"serving at {server.url}; long clips of {LONG_SECONDS:g} s, compatible identify", flush=True)
        warm_up(server.url, server.key, pool)
        workers = [Worker(n, server.url, server.key, pool, args) for n in range(args.threads)]
        load(workers, Results(), args.warmup_seconds, args.max_requests)
        quiet = Results()
        load(workers, quiet, args.quiet_seconds, args.max_requests)
        watch = MemoryWatch(server.process.pid, every_s=0.2)
        watch.start()
        time.sleep(0.5)
        long_client = LongClipClient(server.url, server.key, long_body, max(args.timeout, 600.0))
        busy = Results()
        started = time.monotonic()
        load([*workers, long_client], busy, args.minutes * 60, args.max_requests)
        elapsed = time.monotonic() - started
        watch.stop.set()
        watch.join()
        problems = still_serves(server.url, server.key, "soak-final-check")
        for worker in workers:
            worker.client.close()
        long_client.client.close()
        alive = server.process.poll() is None
    mib = 2**20
    rss_start = watch.samples[0][1]
    peak = max(r for _, r in watch.samples)
    growth = (peak - rss_start) / mib
    others = [op for op, _ in MIX]
    print(
        f"quiet: {args.threads} clients for {args.quiet_seconds:g} s; "
        f"busy: the same and one long-clip client for {elapsed:.0f} s"
    )
    print(f"long clips: {percentiles(busy.latency.get(LONG_OP, []))}")
    print("the others' latency, quiet -> with the long clips:")
    for op in others:
        q, b = quiet.latency.get(op, []), busy.latency.get(op, [])
        ratio = np.percentile(b, 99) / np.percentile(q, 99) if q and b else float("nan")
        print(f"  {op:<18} quiet {percentiles(q)}\n  {'':<18} busy  {percentiles(b)}  (p99 x{ratio:.2f})")
    every_quiet = [v for op in others for v in quiet.latency.get(op, [])]
    every_busy = [v for op in others for v in busy.latency.get(op, [])]
    if every_quiet and every_busy:
        p99q, p99b = np.percentile(every_quiet, 99), np.percentile(every_busy, 99)
        print(f"  all others         p99 {p99q * 1000:.0f} ms -> {p99b * 1000:.0f} ms (x{p99b / p99q:.2f})")
    bounded = growth <= args.rss_budget_mb
    print(
        f"server RSS: {rss_start / mib:.0f} MiB at the start of the long clips, peak {peak / mib:.0f} MiB: "
        f"{growth:+.0f} MiB ({'within' if bounded else 'OVER'} the {args.rss_budget_mb:g} MiB budget)"
    )
    errors = quiet.errors + busy.errors
    print(f"errors (5xx, transport, hangs): {len(errors)}")
    for error in errors[:20]:
        print(f"  {error}")
    print("still serves: " + ("yes" if not problems and alive else "NO " + "; ".join(problems)))
    return 1 if errors or problems or not alive or not bounded else 0


if __name__ == "__main__":
    sys.exit(main())
