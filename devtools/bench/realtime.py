"""The realtime section: per-chunk answer latency of `IdentifySpeaker` over gRPC.

A `speakerid serve --grpc-port` subprocess (fresh SQLite, rate limit off) with two readers
enrolled; each stream sends the 3 s chunks of an 18 s conversation of real speech (the two
readers and a stranger, devtools/realtime.py) one at a time, the next once the last is answered,
as a live source would; a chunk's latency runs from its send to its first answer. Run with 1 and
with 16 streams at once. The baseline, in the same server and run: each chunk sent alone to the
compatible identify route over HTTP (the same who-speaks-when use case, without the stream's
context), one after another; the ratio is the single stream's p50 over it.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np

from devtools.clips import clip_bytes
from devtools.realtime import ENROLL, conversation, grpc_stream, wav_bytes, wav_chunk
from devtools.server import free_port, local_server
from service.realtime import deepaffects_realtime_pb2 as pb


def _one_stream(target: str, key: str, chunks: list[np.ndarray]) -> tuple[list[float], int]:
    """Chunks in lock-step; their latencies in seconds, and how many answers carried an error."""
    answered = threading.Event()
    sent: list[float] = []

    def source() -> Iterator[pb.SegmentChunk]:
        for i, samples in enumerate(chunks):
            answered.clear()
            sent.append(time.perf_counter())
            yield wav_chunk(samples, 3.0 * i)
            answered.wait(300)

    latencies: list[float] = []
    errors = 0
    for answer in grpc_stream(target, key, source()):
        if answer.id == len(latencies):
            latencies.append(time.perf_counter() - sent[answer.id])
            answered.set()
        errors += bool(answer.Error)
    return latencies, errors


def _streams(target: str, key: str, chunks: list[np.ndarray], count: int) -> dict[str, Any]:
    results: list[tuple[list[float], int]] = []
    lock = threading.Lock()

    def run() -> None:
        result = _one_stream(target, key, chunks)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies = np.array([x for r in results for x in r[0]]) * 1000
    return {
        "streams": count,
        "chunks": len(latencies),
        "errors": sum(r[1] for r in results),
        "p50_ms": float(np.percentile(latencies, 50)),
        "p90_ms": float(np.percentile(latencies, 90)),
    }


COMPAT_IDENTIFY = "/audio/generic/api/v1/sync/diarization/identify"


def _http_chunks(url: str, key: str, chunks: list[np.ndarray]) -> dict[str, Any]:
    """Each chunk alone through the compatible identify, as an app without streams would send it."""
    times, errors = [], 0
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=300) as c:
        for samples in chunks:
            body = {
                "content": base64.b64encode(wav_bytes(samples)).decode(),
                "encoding": "WAV",
                "sampleRate": 16000,
                "languageCode": "en-US",
                "speakerIds": list(ENROLL),
            }
            start = time.perf_counter()
            answer = c.post(COMPAT_IDENTIFY, json=body)
            times.append(time.perf_counter() - start)
            errors += answer.status_code != 200
    latencies = np.array(times) * 1000
    return {
        "chunks": len(latencies),
        "errors": errors,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p90_ms": float(np.percentile(latencies, 90)),
    }


def realtime_section(stream_counts: tuple[int, ...] = (1, 16)) -> dict[str, Any]:
    talk = conversation()
    chunks = talk.chunks(3.0)
    port = free_port()
    out: dict[str, Any] = {"chunk_seconds": 3.0, "levels": []}
    with local_server(
        tenant="bench",
        inherit_settings=True,  # SPK_REALTIME__CONTEXT_SECONDS and the like, to compare settings
        ready=True,
        SPK_REALTIME__GRPC_PORT=str(port),
        SPK_REALTIME__MAX_STREAMS_PER_KEY=str(max(stream_counts)),
        SPK_AUTH__RATE_LIMIT_PER_MINUTE="0",
        SPK_LOG_LEVEL="WARNING",
    ) as local:
        with httpx.Client(base_url=local.url, headers={"X-API-Key": local.key}, timeout=300) as c:
            for speaker, paths in ENROLL.items():
                for path in paths:
                    content = base64.b64encode(clip_bytes(path)).decode()
                    body = {"content": content, "encoding": "FLAC", "sampleRate": 16000}
                    c.post(f"/v1/speakers/{speaker}/enrollments", json=body).raise_for_status()
        target = f"127.0.0.1:{port}"
        _one_stream(target, local.key, chunks[:1])  # warm-up
        _http_chunks(local.url, local.key, chunks[:1])
        for count in stream_counts:
            level = _streams(target, local.key, chunks, count)
            out["levels"].append(level)
            print(
                f"realtime: {count:2d} streams, {level['chunks']} chunks of 3 s: answer p50 "
                f"{level['p50_ms']:.0f} ms, p90 {level['p90_ms']:.0f} ms, {level['errors']} errors",
                flush=True,
            )
            if count == 1:  # the baseline right after the single stream, on the same chunks
                base = out["http_baseline"] = _http_chunks(local.url, local.key, chunks)
                out["one_stream_over_http"] = level["p50_ms"] / base["p50_ms"]
                print(
                    f"realtime baseline: the same chunks alone to the compatible identify over HTTP: p50 "
                    f"{base['p50_ms']:.0f} ms, p90 {base['p90_ms']:.0f} ms, {base['errors']} errors; "
                    f"1 stream over it {out['one_stream_over_http']:.2f}x",
                    flush=True,
                )
    return out
