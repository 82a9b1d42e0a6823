"""One request cannot take the machine: a long clip costs bounded memory on every route, and a client
that hangs up stops its work. Real model, real speech, real servers on loopback: memory is measured
on a `speakerid serve` of its own (the peak resident memory of that process alone, not of a test
process that has run hundreds of other tests), the rest in this process."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import REGISTRY

from devtools.clips import ALICE_UNENROLLED, TWO_READERS, encode_recipe, load_clip, manifest
from devtools.server import LocalServer, local_server
from tests.conftest import LiveServer, b64, flac_body, make_settings, needs_speech, new_key

pytestmark = [needs_speech, pytest.mark.model, pytest.mark.alone]

COMPAT_IDENTIFY = "/audio/generic/api/v1/sync/diarization/identify"
DIARIZE = "/audio/generic/api/v1/sync/diarize"
LONG_SECONDS = 120.0
BUDGET_MB = 500
ENROLLED = TWO_READERS
SHORT = ALICE_UNENROLLED


def long_clip(seconds: float) -> np.ndarray:
    """Real speech, int16 16 kHz: the two enrolled readers' other clips taking turns, then others'."""
    readers = ("ls-367", "ls-2609")
    rows = [r for r in manifest() if r.path.startswith("librispeech/") and r.path not in SHORT]
    turns = [
        r for pair in zip(*[[r for r in rows if r.speaker == s] for s in readers], strict=False) for r in pair
    ]
    rest = [r for r in rows if r.speaker not in readers]
    parts, total = [], 0
    for row in turns + rest:
        if any(row.path in paths for paths in ENROLLED.values()):
            continue
        samples = load_clip(row.path).samples
        parts.append(samples)
        total += len(samples)
        if total >= seconds * 16_000:
            break
    return np.concatenate(parts)[: int(seconds * 16_000)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Iterator[LiveServer]:
    live = LiveServer(make_settings(tmp_path_factory.mktemp("cost")), embedder)
    live.start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client(new_key(server.settings, "acme")) as c:
        for speaker, paths in ENROLLED.items():
            for path in paths:
                assert c.post(f"/v1/speakers/{speaker}/enrollments", json=flac_body(path)).status_code == 201
        yield c


@pytest.fixture(scope="module")
def long_body() -> dict[str, Any]:
    data = encode_recipe(long_clip(LONG_SECONDS), 16_000, "flac")
    return {"content": b64(data), "encoding": "FLAC", "sampleRate": 16000}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[LocalServer, httpx.Client]]:
    """A `speakerid serve` subprocess with the two readers enrolled, and a client of it."""
    with local_server(tenant="acme") as live:
        live.wait_ready()
        with httpx.Client(base_url=live.url, headers={"X-API-Key": live.key}, timeout=600) as c:
            for speaker, paths in ENROLLED.items():
                for path in paths:
                    assert (
                        c.post(f"/v1/speakers/{speaker}/enrollments", json=flac_body(path)).status_code == 201
                    )
            yield live, c


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def peak_growth_mb(pid: int, send: Any) -> tuple[float, Any]:
    """Process `pid`'s peak resident memory during `send()` over its resident memory before, in MB."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from now
    except OSError:
        pytest.skip("this kernel does not let the peak resident memory be reset")
    before = status_mb(pid, "VmRSS")
    result = send()
    return status_mb(pid, "VmHWM") - before, result


@pytest.mark.parametrize("route", [COMPAT_IDENTIFY, "/v1/identify", DIARIZE])
def test_a_long_clip_costs_bounded_memory(
    served: tuple[LocalServer, httpx.Client], long_body: dict[str, Any], route: str
) -> None:
    live, client = served
    growth, answer = peak_growth_mb(live.process.pid, lambda: client.post(route, json=long_body))
    assert answer.status_code == 200, answer.text
    if route == COMPAT_IDENTIFY:
        labels = {s["speakerId"] for s in answer.json()}
        assert {"alice", "bob"} <= labels
        assert answer.json()[-1]["end"] > LONG_SECONDS - 10
    elif route == DIARIZE:
        assert answer.json()["num_speakers"] >= 2
        assert answer.json()["segments"][-1]["end"] > LONG_SECONDS - 10
    else:
        assert answer.json()["speechSeconds"] > LONG_SECONDS / 2
    assert growth <= BUDGET_MB, f"{route}: peak resident memory grew by {growth:.0f} MB"


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_a_client_that_hangs_up_stops_its_work(
    server: LiveServer, client: httpx.Client, long_body: dict[str, Any]
) -> None:
    cancelled = ("speakerid_cancelled_requests_total", {"route": COMPAT_IDENTIFY})
    before = metric(*cancelled)
    waves_before = metric("speakerid_embedding_batch_size_sum")
    body = json.dumps({**long_body, "speakerIds": []}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            f"POST {COMPAT_IDENTIFY} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"X-API-Key: {client.headers['X-API-Key']}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        time.sleep(2.0)  # the client gives up
    deadline = time.monotonic() + 120
    while metric(*cancelled) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(*cancelled) == before + 1, "the abandoned request was not stopped"
    # Every window of the clip's speech (1.5 s every 0.75 s) and then every stretch would be more than
    # one waveform per second of the clip.
    embedded = metric("speakerid_embedding_batch_size_sum") - waves_before
    assert embedded < LONG_SECONDS, f"{embedded:.0f} waveforms embedded for a request nobody waited for"
    # Other requests are served as usual.
    found = client.post("/v1/identify", json=flac_body(SHORT))
    assert found.status_code == 200 and found.json()["speakerId"] == "alice"
