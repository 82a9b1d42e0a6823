"""Does concurrency cost throughput? Identify of one ~10 s clip by 1 client, then by N at once.

    python -m scripts.bench_concurrency [--clients 8] [--seconds 20] [--route native|compat]

`speakerid serve` runs on loopback on a fresh SQLite database (SPK_ settings of this shell apply,
e.g. SPK_TORCH_THREADS). Two speakers are enrolled, then each level sends the same clip over and
over for --seconds; it prints requests per second, p50 / p99 latency, N clients' throughput over
one client's (1.0 means concurrency costs nothing; the model runs one call at a time, so more is
not expected on a CPU), and the torch thread count the model ran with (from /metrics).
"""

from __future__ import annotations

import argparse
import base64
import threading
import time

import httpx
import numpy as np

from devtools.clips import ALICE_UNENROLLED, TWO_READERS
from devtools.server import local_server
from devtools.sets import EVAL_SPEECH

COMPAT_IDENTIFY = "/audio/generic/api/v1/sync/diarization/identify"
ENROLL = TWO_READERS
CLIP = ALICE_UNENROLLED


def body(path: str) -> dict[str, str]:
    return {"content": base64.b64encode((EVAL_SPEECH / path).read_bytes()).decode(), "encoding": "FLAC"}


def level(url: str, key: str, route: str, clients: int, seconds: float) -> dict[str, float]:
    payload = body(CLIP)
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        nonlocal errors
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) as http:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                answer = http.post(route, json=payload)
                took = time.perf_counter() - start
                with lock:
                    if answer.status_code == 200:
                        latencies.append(took)
                    else:
                        errors += 1

    began = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - began
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99]) if latencies else (0.0, 0.0)
    return {"ok": len(latencies), "errors": errors, "rps": len(latencies) / wall, "p50": p50, "p99": p99}


def model_threads(url: str) -> str:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    lines = [line for line in text.splitlines() if line.startswith("speakerid_model_threads")]
    return lines[0].split()[-1] if lines else "not reported"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=8, help="clients of the second level (2 or more)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per level (more than 0)")
    parser.add_argument("--route", choices=("native", "compat"), default="native")
    args = parser.parse_args(argv)
    if args.clients < 2 or args.seconds <= 0:
        parser.error("--clients must be 2 or more and --seconds more than 0")
    route = "/v1/identify" if args.route == "native" else COMPAT_IDENTIFY
    with local_server(tenant="bench", inherit_settings=True, ready=True) as server:
        with httpx.Client(base_url=server.url, headers={"X-API-Key": server.key}, timeout=120) as http:
            for speaker, paths in ENROLL.items():
                for path in paths:
                    http.post(f"/v1/speakers/{speaker}/enrollments", json=body(path)).raise_for_status()
            for _ in range(5):  # warm-up
                http.post(route, json=body(CLIP)).raise_for_status()
        one = level(server.url, server.key, route, 1, args.seconds)
        many = level(server.url, server.key, route, args.clients, args.seconds)
        threads = model_threads(server.url)
    print(f"identify of one {CLIP.rsplit('/', 1)[-1]} ({route}); model threads: {threads}")
    for name, r in ((" 1 client ", one), (f"{args.clients:2d} clients", many)):
        print(
            f"{name}: {r['rps']:.2f} req/s, p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms "
            f"({r['ok']:.0f} ok, {r['errors']:.0f} errors)"
        )
    ratio = many["rps"] / one["rps"] if one["rps"] else 0.0
    print(f"throughput, {args.clients} clients over 1: {ratio:.2f}x")
    # A level that answered nothing measured nothing: a failure, not a ratio of 0.
    return 1 if one["errors"] or many["errors"] or not one["ok"] or not many["ok"] else 0
