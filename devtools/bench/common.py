"""What the bench sections share: clip choice and decoding, numbers and tables, the models
(each loaded once per run) and the server under load."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from devtools.clips import SetClip
from devtools.server import LocalServer, local_server
from service.audio import MODEL_RATE
from service.config import Settings
from service.tools.inputs import InputError

if TYPE_CHECKING:
    from devtools.bench.reference import SpeechbrainReference
    from service.embedding.ecapa import EcapaEmbedder


COMPAT_ENROLL = "/audio/generic/api/v1/sync/diarization/enroll"
GPU_CLIP_SECONDS = 10.0
CLIPS_PER_SPEAKER = 4  # in the EER set


# --- clips ----------------------------------------------------------------------------------------


def near_ten_seconds(clips: Sequence[SetClip], count: int) -> list[SetClip]:
    """The `count` clips closest to 10 s long (manifest order among equals)."""
    return sorted(clips, key=lambda c: abs(c.duration_s - 10.0))[:count]


def speaker_set(clips: Sequence[SetClip], count: int) -> list[SetClip]:
    """Up to `count` clips for same/different-speaker pairs: the first few clips of each speaker
    that has at least two, speaker after speaker (one-clip impostors give no same-speaker pair)."""
    by_speaker: dict[str, list[SetClip]] = {}
    for clip in clips:
        by_speaker.setdefault(clip.speaker, []).append(clip)
    each = min(CLIPS_PER_SPEAKER, max(2, count // 2))  # a small set still spans two speakers
    chosen: list[SetClip] = []
    for own in by_speaker.values():
        if len(own) >= 2 and len(chosen) < count:
            chosen.extend(own[: min(each, count - len(chosen))])
    return chosen


def decoded(data: bytes, encoding: str) -> np.ndarray:
    """The service's own decoding: 16 kHz mono float32, DC and rumble removed (no speech detection)."""
    from service.audio.decode import decode
    from service.audio.pipeline import to_mono_16k

    audio = Settings().audio
    wave, _clipped = to_mono_16k(
        decode(data, encoding, None, max_seconds=audio.max_seconds, timeout_s=audio.decode_timeout_s)
    )
    return wave


def load_wave(path: Path) -> np.ndarray:
    from service.tools.audio import encoding_for

    return decoded(path.read_bytes(), encoding_for(path) or "FLAC")


@dataclass(frozen=True)
class EnrollBody:
    """A compatible-route enroll body, JSON-encoded once: only the speaker id changes per request."""

    tail: bytes  # the JSON object's fields after the speaker id, closing brace included

    def with_speaker(self, speaker_id: str) -> bytes:
        return b'{"speakerId": ' + json.dumps(speaker_id).encode() + b", " + self.tail


def enroll_body(flac: bytes, sample_rate: int) -> EnrollBody:
    fields = {
        "content": base64.b64encode(flac).decode(),
        "encoding": "FLAC",
        "sampleRate": sample_rate,
        "languageCode": "en-US",
    }
    return EnrollBody(json.dumps(fields).encode()[1:])


# --- numbers --------------------------------------------------------------------------------------


def ms(seconds: Sequence[float], q: float) -> float:
    return 1000.0 * float(np.percentile(np.asarray(seconds, dtype=np.float64), q))


def unit(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    return np.asarray(v / np.linalg.norm(v, axis=-1, keepdims=True))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two ``(n, dim)`` arrays."""
    return np.asarray(np.sum(unit(a) * unit(b), axis=-1))


@dataclass(frozen=True)
class PairwiseEer:
    eer: float
    target_pairs: int
    nontarget_pairs: int


def pairwise_eer(vectors: np.ndarray, speakers: Sequence[str]) -> PairwiseEer:
    """EER of cosine scores over every pair of clips: same speaker (target) or not."""
    from service.tools.metrics import eer

    v = unit(vectors)
    scores = v @ v.T
    i, j = np.triu_indices(len(v), 1)
    labels = np.asarray(speakers)
    same = labels[i] == labels[j]
    pair_scores = scores[i, j]
    result = eer(pair_scores[same], pair_scores[~same])
    return PairwiseEer(result.eer, int(same.sum()), int((~same).sum()))


def alternated(
    calls: dict[str, Callable[[int], Any]], items: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[Any]]]:
    """Every call on every item (`call(i)`), round after round; the calls' order rotates from item
    to item, so that a slow moment of the machine falls on each of them alike.

    Returns each call's wall-clock seconds, and its results from the first round in item order.
    """
    names = list(calls)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    results: dict[str, list[Any]] = {n: [] for n in names}
    for r in range(rounds):
        for i in range(items):
            k = (r * items + i) % len(names)
            for name in names[k:] + names[:k]:
                start = time.perf_counter()
                out = calls[name](i)
                seconds[name].append(time.perf_counter() - start)
                if r == 0:
                    results[name].append(out)
    return seconds, results


def fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:{spec}}{suffix}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        return "  ".join(
            [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))]
        )

    return "\n".join([line(header), *(line(r) for r in rows)])


# --- models, each loaded once per run --------------------------------------------------------------


class Models:
    """The service's model core per (device, precision) and speechbrain's per device, warmed."""

    def __init__(self, settings: Settings) -> None:
        from service.embedding import weights

        # The bundled model unless SPK_MODEL_DIR names another: the server is given the same.
        self.files = weights.resolve(settings.model_dir, settings.model_sha256)
        self._ours: dict[tuple[str, str], EcapaEmbedder] = {}
        self._reference: dict[str, SpeechbrainReference] = {}

    def ours(self, device: str, precision: str) -> EcapaEmbedder:
        if (device, precision) not in self._ours:
            from service.embedding.ecapa import EcapaEmbedder

            embedder = EcapaEmbedder(self.files, device=device, precision=precision)  # type: ignore[arg-type]
            embedder.warmup()
            self._ours[device, precision] = embedder
        return self._ours[device, precision]

    def reference(self, device: str) -> SpeechbrainReference:
        if device not in self._reference:
            from devtools.bench.reference import SpeechbrainReference

            reference = SpeechbrainReference(self.files.folder, device)
            reference.embed(np.zeros(MODEL_RATE, dtype=np.float32))
            self._reference[device] = reference
        return self._reference[device]

    def release(self, device: str, precision: str) -> None:
        self._ours.pop((device, precision), None)
        if device == "cuda":
            import torch

            torch.cuda.empty_cache()


def precisions(requested: Sequence[str] | None) -> list[str]:
    """fp32 (the reference) and the requested ones (default: every precision the model core has),
    checked against the model core's names."""
    from typing import get_args

    from service.embedding.ecapa import Precision

    known = list(get_args(Precision))
    if requested is None:
        requested = known
    unknown = [p for p in requested if p not in known]
    if unknown:
        raise InputError(f"unknown precision {', '.join(unknown)}; the model core has {', '.join(known)}")
    return list(dict.fromkeys(["fp32", *requested]))


# --- the server -----------------------------------------------------------------------------------


@dataclass
class Server:
    """A `speakerid serve` subprocess; `wait_ready()` before sending it anything."""

    local: LocalServer
    device: str
    precision: str
    threads: int

    @property
    def url(self) -> str:
        return self.local.url

    @property
    def key(self) -> str:
        return self.local.key

    def describe(self) -> dict[str, Any]:
        return {"device": self.device, "precision": self.precision, "threads": self.threads}

    def wait_ready(self, within_s: float = 300.0) -> None:
        self.local.wait_ready(within_s)


@contextlib.contextmanager
def served(device: str, precision: str, threads: int, **env: str) -> Iterator[Server]:
    """`speakerid serve` started as a subprocess on a fresh temporary SQLite database, rate limit off;
    `env`: more settings (``SPK_...``)."""
    with local_server(
        tenant="bench",
        inherit_settings=True,  # SPK_MODEL_DIR and the like, where the bundled model is not installed
        SPK_DEVICE=device,
        SPK_PRECISION=precision,
        SPK_TORCH_THREADS=str(threads),
        SPK_LOG_LEVEL="WARNING",
        **cast(dict[str, Any], env),  # all SPK_ names: none is one of local_server's own parameters
    ) as local:
        yield Server(local, device, precision, threads)


def ten_second_bodies(speech: Sequence[SetClip], count: int) -> tuple[list[SetClip], list[bytes]]:
    """The clips nearest 10 s, as the FLAC bytes a client sends (other formats re-encoded)."""
    from service.tools.audio import flac_clip

    clips = near_ten_seconds(speech, count)
    return clips, [flac_clip(c.file).data for c in clips]


def torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())
