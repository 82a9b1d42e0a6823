"""Fuzz the HTTP API over real HTTP: schemathesis cases from the service's own OpenAPI document on
every route, plus audio routes fed mutated real recordings, then check the server still serves.

    .venv/bin/python -m scripts.fuzz_api [--examples 350] [--seed 0] [--timeout 60]
    .venv/bin/python -m scripts.fuzz_api --url http://127.0.0.1:8000 --key sk_...   # a running server

Without --url it starts `speakerid serve` on a loopback port over a fresh temporary SQLite
database (rate limit off, the real model), and reads the server's log for tracebacks at the end.

Each generated case goes to the server once: most with a valid key (in the query as `apikey` or
`api_key`, as `X-API-Key`, or as a Bearer token), some with no key or the generated junk one. A
share of the valid-key cases with a JSON audio body carry a real clip, so identify and enroll
also run the model with generated `speakerIds`, `topK` and `sampleRate`. The mutated recordings are
truncated, bit-flipped, mislabelled (one container sent as another), headers that lie (a WAV
claiming 10 MHz, 0 channels or hours of data; FLAC STREAMINFO fields at their maxima), long
silence that compresses to almost nothing (decompression bombs), and JSON nested 100,000 deep.

A 4xx for invalid data is correct behaviour. Failures are: any 5xx, a transport error, a request
that hangs past --timeout, a response the schema does not allow (schemathesis' conformance
checks), invalid data accepted (negative cases), a route that answers without a valid key, and a
server that no longer serves at the end. The exit status is 1 when there is any.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import random
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import requests
import schemathesis
import soundfile as sf
from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis import checks as st_checks
from schemathesis.core.result import Err

from devtools.clips import RECIPES, encode_recipe, load_clip, silence_flac
from devtools.server import local_server
from devtools.sets import EVAL_SPEECH
from service.tools.client import parse_error

PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics")
AUTH_QUERY = ("apikey", "api_key")
AUTH_HEADERS = ("x-api-key", "authorization")

# Short clips of real speech from different readers, for real-audio cases and the final check.
SPEECH = [
    "librispeech/test-other/367/367-130732-0001.flac",  # 4.4 s
    "librispeech/test-clean/61/61-70968-0002.flac",  # 3.0 s
    "vctk/p226/p226_003.wav",
    "librispeech/test-other/2609/2609-156975-0001.flac",
]
CHECK_CLIP = "librispeech/test-other/367/367-130732-0003.flac"  # 15 s, for the still-serves check


# --- what happened --------------------------------------------------------------------------------


@dataclass
class Tally:
    """Counts of every request sent, and every failure with what reproduces it."""

    statuses: Counter[int] = field(default_factory=Counter)
    by_route: dict[str, Counter[int]] = field(default_factory=dict)
    cases: int = 0
    mutations: int = 0
    server_errors: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    check_failures: list[str] = field(default_factory=list)
    client_refused: int = 0  # the HTTP client would not send it (e.g. a header it cannot encode)
    real_audio: Counter[int] = field(default_factory=Counter)

    def record(self, route: str, status: int, reproduce: Callable[[], str]) -> None:
        self.statuses[status] += 1
        self.by_route.setdefault(route, Counter())[status] += 1
        if status >= 500:
            self.server_errors.append(f"{route} -> {status}\n{reproduce()}")

    @property
    def failures(self) -> int:
        return (
            len(self.server_errors) + len(self.transport_errors) + len(self.hangs) + len(self.check_failures)
        )

    def report(self) -> str:
        lines = [
            f"generated cases sent: {self.cases}; mutated-audio requests: {self.mutations}; "
            f"requests counted: {sum(self.statuses.values())} (client would not send {self.client_refused})",
            "statuses: " + ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items())),
            "real-audio cases: " + ", ".join(f"{c}: {n}" for c, n in sorted(self.real_audio.items())),
            f"5xx: {len(self.server_errors)}; hangs: {len(self.hangs)}; transport errors: "
            f"{len(self.transport_errors)}; check failures: {len(self.check_failures)}",
            "by route:",
        ]
        for route, counts in sorted(self.by_route.items()):
            lines.append(f"  {route}: " + ", ".join(f"{c}: {n}" for c, n in sorted(counts.items())))
        for title, items in (
            ("5xx", self.server_errors),
            ("hangs", self.hangs),
            ("transport errors", self.transport_errors),
            ("check failures", self.check_failures),
        ):
            for item in items[:20]:
                lines.append(f"--- {title}: {item[:3000]}")
        return "\n".join(lines)


# --- schemathesis cases ---------------------------------------------------------------------------


CONFORMANCE = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_headers_conformance,
    st_checks.response_schema_conformance,
    st_checks.negative_data_rejection,
]


def _strip_auth(case: Any) -> None:
    for name in [k for k in (case.query or {}) if k in AUTH_QUERY]:
        del case.query[name]
    for name in [k for k in (case.headers or {}) if k.lower() in AUTH_HEADERS]:
        del case.headers[name]


def _send_case(
    case: Any,
    base_url: str,
    key: str | None,
    channel: int,
    tally: Tally,
    timeout: float,
    session: requests.Session,
) -> None:
    """Send one case with `key` in channel 0-3 (None: keep the generated credentials, channel 0:
    none at all), record its status and run the checks that fit."""
    route = case.operation.label
    headers: dict[str, str] = {}
    params: dict[str, str] = {}
    if key is not None:
        _strip_auth(case)
        if channel == 0:
            params["apikey"] = key
        elif channel == 1:
            params["api_key"] = key
        elif channel == 2:
            headers["X-API-Key"] = key
        else:
            headers["Authorization"] = f"Bearer {key}"
    elif channel == 0:
        _strip_auth(case)
    try:
        response = case.call(
            base_url=base_url, session=session, headers=headers, params=params, timeout=timeout
        )
    except requests.exceptions.Timeout:
        tally.hangs.append(f"{route}: no answer within {timeout:g} s\n{case.as_curl_command()[:2000]}")
        return
    except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
        tally.transport_errors.append(f"{route}: {exc!r}\n{case.as_curl_command()[:2000]}")
        return
    except (requests.exceptions.RequestException, ValueError, UnicodeError):
        tally.client_refused += 1
        return
    tally.cases += 1
    tally.record(
        route, response.status_code, lambda: f"{case.as_curl_command()[:2000]}\n{response.text[:1000]}"
    )
    public = case.path in PUBLIC_PATHS
    if key is None and not public and not _refused_without_key(response.status_code, response.text):
        tally.check_failures.append(
            f"{route}: answered {response.status_code} without a valid key\n{case.as_curl_command()[:1500]}"
        )
    checks = list(CONFORMANCE)
    if key is not None and channel >= 2:
        checks.append(st_checks.ignored_auth)  # it probes by removing the declared header credentials
    try:
        case.validate_response(
            response, checks=checks, headers=headers, transport_kwargs={"timeout": timeout}
        )
    except (Exception, BaseExceptionGroup) as exc:
        tally.check_failures.append(f"{route}: {str(exc)[:2500]}")


def _refused_without_key(status: int, body: str) -> bool:
    """401, or a refusal that comes before the key is looked at: no route matched (404), a body
    too large (413) or one that is not JSON at all (400: FastAPI parses the body first)."""
    if status in (401, 413):
        return True
    if status == 404:
        return parse_error(httpx.Response(status, text=body)).code == "request.NotFound"
    return status == 400 and ("JSON decode error" in body or "error parsing the body" in body)


def fuzz_schema(
    base_url: str,
    key: str,
    tally: Tally,
    *,
    examples: int,
    seed_value: int = 0,
    timeout: float = 60.0,
    anonymous_share: float = 0.2,
    real_audio_share: float = 0.05,
    operations: Callable[[str], bool] = lambda label: True,
    progress: Callable[[str], None] = lambda line: None,
) -> None:
    """`examples` positive and `examples` negative cases per operation of the served OpenAPI document
    (fewer where the operation has fewer distinct inputs), each sent once over real HTTP."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=timeout)
    rng = random.Random(seed_value)
    real = [
        base64.b64encode((EVAL_SPEECH / path).read_bytes()).decode() for path in SPEECH if "vctk" not in path
    ]
    session = requests.Session()

    def send(case: Any, mode: GenerationMode) -> None:
        anonymous = rng.random() < anonymous_share
        channel = rng.randrange(4)
        body = case.body
        real_audio = (
            not anonymous
            and mode.is_positive
            and isinstance(body, dict)
            and "content" in body
            and rng.random() < real_audio_share
        )
        if not real_audio:
            _send_case(case, base_url, None if anonymous else key, channel, tally, timeout, session)
            return
        body["content"] = rng.choice(real)
        body["encoding"] = "FLAC"
        before = Counter(tally.statuses)
        _send_case(case, base_url, key, channel, tally, timeout, session)
        tally.real_audio.update(tally.statuses - before)

    for result in schema.get_all_operations():
        if isinstance(result, Err):
            tally.check_failures.append(f"an operation of the OpenAPI document is invalid: {result.err()}")
            continue
        operation = result.ok()
        if not operations(operation.label):
            continue
        for mode in GenerationMode:
            before, started = tally.cases, time.monotonic()
            _generate(operation, mode, examples, seed_value, send)
            progress(
                f"{operation.label} [{mode.value}]: {tally.cases - before} cases "
                f"in {time.monotonic() - started:.1f} s"
            )


def _generate(
    operation: Any,
    mode: GenerationMode,
    examples: int,
    seed_value: int,
    send: Callable[[Any, GenerationMode], None],
) -> None:
    """Up to `examples` distinct cases of one operation, each handed to `send`; never shrinks."""

    @given(operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
    )
    @seed(seed_value)
    def one(case: Any) -> None:
        send(case, mode)

    # An operation without inputs has no invalid (negative) case to generate.
    with contextlib.suppress(Unsatisfiable):
        one()


# --- mutated real audio ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    """An audio body: the bytes (sent as base64 `content`, or raw), the stated encoding and rate."""

    name: str
    data: bytes
    encoding: str
    sample_rate: int | None = None


def wav_bytes(
    pcm: bytes,
    *,
    rate: int = 16_000,
    channels: int = 1,
    bits: int = 16,
    fmt_tag: int = 1,
    data_size: int | None = None,
    riff_size: int | None = None,
    fmt_size: int = 16,
) -> bytes:
    """A WAV file built by hand, so every header field can say whatever a test wants."""
    block = max(1, channels * bits // 8) & 0xFFFF
    fmt = struct.pack(
        "<HHIIHH", fmt_tag, channels & 0xFFFF, rate & 0xFFFFFFFF, (rate * block) & 0xFFFFFFFF, block, bits
    )
    size = len(pcm) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", fmt_size) + fmt + b"data" + struct.pack("<I", size) + pcm
    riff = len(body) if riff_size is None else riff_size
    return b"RIFF" + struct.pack("<I", riff & 0xFFFFFFFF) + body


def _flip_bits(data: bytes, rate: float, rng: random.Random, start: int = 0, end: int | None = None) -> bytes:
    out = bytearray(data)
    end = len(out) if end is None else min(end, len(out))
    flips = max(1, int((end - start) * 8 * rate))
    for _ in range(flips):
        at = rng.randrange(start, end)
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


def _streaminfo(
    flac: bytes, *, rate: int | None = None, channels: int | None = None, total: int | None = None
) -> bytes:
    """Rewrite fields of a FLAC file's STREAMINFO block (it starts at byte 8 after 'fLaC' + header)."""
    out = bytearray(flac)
    # STREAMINFO bytes 10..17 (from its start): 20 bits rate, 3 bits channels-1, 5 bits bps-1, 36 bits total.
    at = 8 + 10
    packed = int.from_bytes(out[at : at + 8], "big")
    old_rate, old_channels = packed >> 44, (packed >> 41) & 0x7
    bps, old_total = (packed >> 36) & 0x1F, packed & ((1 << 36) - 1)
    packed = (
        ((old_rate if rate is None else rate) & 0xFFFFF) << 44
        | ((old_channels if channels is None else channels - 1) & 0x7) << 41
        | bps << 36
        | ((old_total if total is None else total) & ((1 << 36) - 1))
    )
    out[at : at + 8] = packed.to_bytes(8, "big")
    return bytes(out)


def audio_mutations(seed_value: int = 0, *, full: bool = True) -> list[Mutation]:
    """Mutations of real recordings; `full=False` gives a small representative subset."""
    rng = random.Random(seed_value)
    clip = load_clip(SPEECH[0])
    flac = clip.path.read_bytes()
    pcm = clip.samples.astype("<i2").tobytes()
    wav = wav_bytes(pcm)
    out: list[Mutation] = [
        Mutation("flac truncated to its header", flac[:42], "FLAC"),
        Mutation("flac truncated at half", flac[: len(flac) // 2], "FLAC"),
        Mutation("flac with bits flipped (1e-3)", _flip_bits(flac, 1e-3, rng), "FLAC"),
        Mutation("flac with STREAMINFO bits flipped", _flip_bits(flac, 0.05, rng, 8, 42), "FLAC"),
        Mutation("flac sent as WAV", flac, "WAV"),
        Mutation("wav sent as FLAC", wav, "FLAC"),
        Mutation("wav header claiming 10 MHz", wav_bytes(pcm, rate=10_000_000), "WAV"),
        Mutation("wav header claiming hours of data", wav_bytes(pcm, data_size=0xFFFFFFF0), "WAV"),
        Mutation("wav header claiming 0 channels", wav_bytes(pcm, channels=0), "WAV"),
        Mutation("10 minutes of silence as FLAC", silence_flac(600), "FLAC"),
        Mutation("random bytes as MULAW at 1 Hz", os.urandom(4000), "MULAW", 1),
    ]
    if not full:
        return out
    # Truncation and bit flips at more points and rates.
    for fraction in (0.01, 0.1, 0.25, 0.75, 0.9, 0.99):
        out.append(Mutation(f"flac truncated at {fraction:g}", flac[: int(len(flac) * fraction)], "FLAC"))
        out.append(Mutation(f"wav truncated at {fraction:g}", wav[: int(len(wav) * fraction)], "WAV"))
    for rate in (1e-5, 1e-4, 1e-3, 1e-2, 0.1):
        for n in range(2):
            out.append(Mutation(f"flac bit flips {rate:g} #{n}", _flip_bits(flac, rate, rng), "FLAC"))
            out.append(Mutation(f"wav bit flips {rate:g} #{n}", _flip_bits(wav, rate, rng), "WAV"))
    for n in range(4):
        out.append(Mutation(f"flac header bit flips #{n}", _flip_bits(flac, 0.02, rng, 0, 128), "FLAC"))
        out.append(Mutation(f"wav header bit flips #{n}", _flip_bits(wav, 0.05, rng, 0, 44), "WAV"))
    # Real encodings, each also sent under every other encoding's name.
    encoded = {name: encode_recipe(clip.samples, clip.sample_rate, name) for name in RECIPES}
    stated = {
        "flac": "FLAC", "flac8k": "FLAC", "ogg_flac": "FLAC", "wav": "WAV", "wav_stereo": "WAV",
        "mp3": "MP3", "mp3_stereo": "MP3", "ogg_opus": "OGG_OPUS", "ogg_vorbis": "OGG_VORBIS",
        "webm_opus": "WEBM", "mkv_flac": "MKV", "m4a_aac": "M4A", "mp4_aac": "MP4", "adts_aac": "AAC",
        "amr_nb": "AMR", "mulaw": "MULAW", "alaw": "ALAW",
    }  # fmt: skip
    names = ["FLAC", "WAV", "MP3", "OGG_OPUS", "OGG_VORBIS", "WEBM", "M4A", "AAC", "AMR", "AMR_WB"]
    for recipe, data in encoded.items():
        raw = stated[recipe] in ("MULAW", "ALAW")
        out.append(Mutation(f"{recipe} as itself", data, stated[recipe], 8000 if raw else None))
        for name in names:
            if name != stated[recipe]:
                out.append(Mutation(f"{recipe} sent as {name}", data, name))
        for name, rate in (("LINEAR16", 16_000), ("MULAW", 8_000), ("ALAW", 8_000)):
            out.append(Mutation(f"{recipe} sent as {name}", data + b"\0" * (len(data) % 2), name, rate))
        out.append(Mutation(f"{recipe} truncated at 0.5", data[: len(data) // 2], stated[recipe], 8000))
        out.append(Mutation(f"{recipe} bit flips 1e-3", _flip_bits(data, 1e-3, rng), stated[recipe], 8000))
    # Headers that lie.
    for rate in (0, 1, 3_999, 384_001, 10_000_000, 0xFFFFFFFF):
        out.append(Mutation(f"wav header claiming {rate} Hz", wav_bytes(pcm, rate=rate), "WAV"))
    for channels in (2, 8, 9, 32, 255, 65535):
        out.append(
            Mutation(f"wav header claiming {channels} channels", wav_bytes(pcm, channels=channels), "WAV")
        )
    for bits in (0, 1, 7, 24, 32, 64, 65535):
        out.append(Mutation(f"wav header claiming {bits} bits", wav_bytes(pcm, bits=bits), "WAV"))
    for tag in (0, 2, 3, 6, 7, 0x55, 0xFFFE, 0xFFFF):
        out.append(Mutation(f"wav format tag {tag:#x}", wav_bytes(pcm, fmt_tag=tag), "WAV"))
    nan_floats = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 0.5] * 16_000, dtype="<f4").tobytes()
    out.append(Mutation("float wav of NaN and inf", wav_bytes(nan_floats, fmt_tag=3, bits=32), "WAV"))
    out.append(Mutation("wav riff size 0", wav_bytes(pcm, riff_size=0), "WAV"))
    out.append(Mutation("wav fmt chunk size 4 GB", wav_bytes(pcm, fmt_size=0xFFFFFFF0), "WAV"))
    out.append(Mutation("wav data size 0", wav_bytes(pcm, data_size=0), "WAV"))
    out.append(Mutation("wav header only", wav_bytes(b""), "WAV"))
    out.append(Mutation("wav header as LINEAR16", wav_bytes(pcm, rate=10_000_000), "LINEAR16", 16_000))
    for field_name, kwargs in (
        ("rate 655350 Hz", {"rate": 655_350}),
        ("rate 1048575 Hz", {"rate": 0xFFFFF}),
        ("rate 0 Hz", {"rate": 0}),
        ("8 channels", {"channels": 8}),
        ("2^36 samples", {"total": (1 << 36) - 1}),
    ):
        out.append(Mutation(f"flac STREAMINFO {field_name}", _streaminfo(flac, **kwargs), "FLAC"))
    id3 = b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f" + encoded["mp3"]  # an ID3 tag claiming 256 MB
    out.append(Mutation("mp3 with an ID3 tag claiming 256 MB", id3, "MP3"))
    # Decompression bombs: long silence is tiny once compressed.
    out.append(Mutation("1 hour of silence as FLAC", silence_flac(3600), "FLAC"))
    out.append(Mutation("299 s of silence as FLAC", silence_flac(299), "FLAC"))
    silence = np.zeros(8_000 * 600, dtype=np.int16)
    out.append(
        Mutation("10 minutes of silence as OGG_OPUS", encode_recipe(silence, 8_000, "ogg_opus"), "OGG_OPUS")
    )
    out.append(Mutation("10 minutes of silence as MP3", encode_recipe(silence, 8_000, "mp3"), "MP3"))
    buf = io.BytesIO()
    sf.write(buf, np.zeros((48_000 * 60, 8), dtype=np.int16), 48_000, format="FLAC")
    out.append(Mutation("1 minute of 8-channel 48 kHz silence as FLAC", buf.getvalue(), "FLAC"))
    out.append(Mutation("MULAW at 4 kHz for 300 s", b"\xff" * 4_000 * 300, "MULAW", 4_000))
    out.append(Mutation("MULAW at 4 kHz for 301 s", b"\xff" * 4_000 * 301, "MULAW", 4_000))
    # Raw PCM of real speech with sample rates from absurd to plausible.
    for rate in (1, 3_999, 4_000, 8_000, 44_100, 384_000, 384_001, 10_000_000):
        out.append(Mutation(f"speech as LINEAR16 at {rate} Hz", pcm, "LINEAR16", rate))
    out.append(Mutation("odd-length LINEAR16", pcm[:-1], "LINEAR16", 16_000))
    return out


AUDIO_ROUTES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "compat enroll": ("POST", "/audio/generic/api/v1/sync/diarization/enroll", {"speakerId": "fuzz-audio"}),
    "compat identify": ("POST", "/audio/generic/api/v2/sync/diarization/identify", {}),
    "native enroll": ("POST", "/v1/speakers/fuzz-audio/enrollments", {}),
    "native enroll (raw body)": ("POST", "/v1/speakers/fuzz-audio/enrollments", {}),
    "native identify": ("POST", "/v1/identify", {"topK": 3}),
    "native verify": ("POST", "/v1/verify", {"speakerId": "fuzz-audio"}),
    "compat diarize": ("POST", "/audio/generic/api/v1/sync/diarize", {"speakers": -1}),
}


def send_mutation(client: httpx.Client, route: str, mutation: Mutation, tally: Tally) -> int | None:
    method, path, extra = AUDIO_ROUTES[route]
    if route.endswith("(raw body)"):
        params: dict[str, Any] = {"encoding": mutation.encoding}
        if mutation.sample_rate is not None:
            params["sampleRate"] = mutation.sample_rate
        request = client.build_request(
            method,
            path,
            params=params,
            content=mutation.data,
            headers={"Content-Type": "application/octet-stream"},
        )
    else:
        body: dict[str, Any] = {
            "content": base64.b64encode(mutation.data).decode(),
            "encoding": mutation.encoding,
        }
        if mutation.sample_rate is not None:
            body["sampleRate"] = mutation.sample_rate
        request = client.build_request(method, path, json={**body, **extra})
    return _send_raw(client, request, f"{route}: {mutation.name}", tally)


def _send_raw(client: httpx.Client, request: httpx.Request, label: str, tally: Tally) -> int | None:
    try:
        response = client.send(request)
    except httpx.TimeoutException:
        tally.hangs.append(label)
        return None
    except httpx.TransportError as exc:
        tally.transport_errors.append(f"{label}: {exc!r}")
        return None
    tally.mutations += 1
    route = f"{request.method} {request.url.path} (mutated)"
    tally.record(route, response.status_code, lambda: f"{label}\n{response.text[:1000]}")
    return response.status_code


def json_bombs() -> list[tuple[str, str, bytes]]:
    """(name, content type, body): JSON that is valid but absurd, to every JSON route."""
    deep = b"[" * 100_000 + b"]" * 100_000
    deep_object = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    wide = json.dumps({"content": "", "encoding": "FLAC", **{f"k{i}": i for i in range(200_000)}}).encode()
    ids = json.dumps({"content": "AAAA", "encoding": "FLAC", "speakerIds": ["x"] * 10_000}).encode()
    spaces = b'{"encoding": "FLAC", "content": "' + b" " * 20_000_000 + b'"}'
    return [
        ("JSON array nested 100,000 deep", "application/json", deep),
        ("JSON object nested 100,000 deep", "application/json", deep_object),
        ("JSON object with 200,000 keys", "application/json", wide),
        ("10,000 speakerIds", "application/json", ids),
        ("invalid UTF-8 JSON", "application/json", b'{"content": "\xff\xfe", "encoding": "FLAC"}'),
        ("a JSON number 100,000 digits long", "application/json", b'{"topK": 1' + b"0" * 100_000 + b"}"),
        ("20 MB of whitespace in content", "application/json", spaces),
    ]  # fmt: skip


JSON_ROUTES = [
    "/audio/generic/api/v1/sync/diarization/enroll",
    "/audio/generic/api/v1/sync/diarization/delete",
    "/audio/generic/api/v1/sync/diarization/identify",
    "/audio/generic/api/v1/sync/diarize",
    "/v1/speakers/fuzz-audio/enrollments",
    "/v1/identify",
    "/v1/verify",
]


def send_json_bomb(client: httpx.Client, path: str, bomb: tuple[str, str, bytes], tally: Tally) -> int | None:
    name, content_type, body = bomb
    request = client.build_request("POST", path, content=body, headers={"Content-Type": content_type})
    return _send_raw(client, request, f"POST {path}: {name}", tally)


# --- the server -----------------------------------------------------------------------------------


def still_serves(base_url: str, key: str, speaker_id: str = "fuzz-final-check") -> list[str]:
    """What is wrong, if anything: health, readiness, and a real enrollment then its deletion."""
    problems = []
    with httpx.Client(base_url=base_url, headers={"X-API-Key": key}, timeout=120) as client:
        for path in ("/healthz", "/readyz"):
            answer = client.get(path)
            if answer.status_code != 200:
                problems.append(f"{path}: {answer.status_code} {answer.text[:300]}")
        body = {
            "content": base64.b64encode((EVAL_SPEECH / CHECK_CLIP).read_bytes()).decode(),
            "encoding": "FLAC",
            "speakerId": speaker_id,
        }
        enrolled = client.post("/audio/generic/api/v1/sync/diarization/enroll", json=body)
        if enrolled.status_code != 200 or enrolled.json().get("message") not in ("Success", "Complete"):
            problems.append(f"real enrollment: {enrolled.status_code} {enrolled.text[:300]}")
        status = client.get(f"/v1/speakers/{speaker_id}")
        if status.status_code != 200 or status.json().get("samples", 0) < 1:
            problems.append(f"enrolled speaker: {status.status_code} {status.text[:300]}")
        if client.delete(f"/v1/speakers/{speaker_id}").status_code != 204:
            problems.append("deleting the enrolled speaker failed")
    return problems


def seed_speakers(base_url: str, key: str) -> None:
    """Give the tenant a few enrolled speakers, so identify and verify get past 'nobody enrolled'."""
    with httpx.Client(base_url=base_url, headers={"X-API-Key": key}, timeout=120) as client:
        for n, path in enumerate(SPEECH):
            encoding = "WAV" if path.endswith(".wav") else "FLAC"
            body = {
                "content": base64.b64encode((EVAL_SPEECH / path).read_bytes()).decode(),
                "encoding": encoding,
            }
            speaker = "fuzz-audio" if n == 0 else f"seed-{n}"
            answer = client.post(f"/v1/speakers/{speaker}/enrollments", json=body)
            if answer.status_code not in (201, 409):
                raise RuntimeError(
                    f"could not enroll a seed speaker: {answer.status_code} {answer.text[:300]}"
                )


def tracebacks(log: Path) -> list[str]:
    """The service's own records of unhandled errors, from its JSON log."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("level") in ("ERROR", "CRITICAL"):
                # The innermost frames say what failed; the outer ones are the ASGI stack.
                trace = str(entry.get("exception", ""))[-2500:]
                found.append(f"{entry.get('message')} {entry.get('path', '')}\n...{trace}")
    return found


# --- the whole run --------------------------------------------------------------------------------


def run(base_url: str, key: str, args: argparse.Namespace, log: Path | None) -> int:
    started = time.monotonic()
    tally = Tally()
    seed_speakers(base_url, key)

    def progress(line: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {line}", flush=True)

    fuzz_schema(
        base_url,
        key,
        tally,
        examples=args.examples,
        seed_value=args.seed,
        timeout=args.timeout,
        progress=progress,
    )
    mutations = audio_mutations(args.seed)
    progress(f"schema cases done; {len(mutations)} audio mutations x {len(AUDIO_ROUTES)} routes next")
    with httpx.Client(base_url=base_url, headers={"X-API-Key": key}, timeout=args.timeout) as client:
        for mutation in mutations:
            for route in AUDIO_ROUTES:
                send_mutation(client, route, mutation, tally)
        for bomb in json_bombs():
            for path in JSON_ROUTES:
                send_json_bomb(client, path, bomb, tally)
    progress("mutations done; checking the server still serves")
    problems = still_serves(base_url, key)
    elapsed = time.monotonic() - started
    print(tally.report())
    print(f"duration: {elapsed:.0f} s")
    print("still serves: " + ("yes" if not problems else "NO\n  " + "\n  ".join(problems)))
    if log is not None:
        errors = tracebacks(log)
        print(f"server log: {len(errors)} error records")
        for error in errors[:10]:
            print(f"--- {error[:4000]}")
    return 1 if tally.failures or problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--key", help="an API key of that server")
    parser.add_argument("--examples", type=int, default=350, help="positive and negative cases per route")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a request counts as hung")
    args = parser.parse_args(argv)
    if args.url:
        if not args.key:
            parser.error("--url needs --key")
        return run(args.url.rstrip("/"), args.key, args, None)
    with local_server(tenant="fuzz", ready=True) as server:
        print(f"serving at {server.url} (log: {server.log})", flush=True)
        return run(server.url, server.key, args, server.log)


if __name__ == "__main__":
    sys.exit(main())
