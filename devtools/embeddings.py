"""Speaker vectors of every clip of a manifest, through the service's own front end and model,
cached on disk per manifest and model: calibration studies then run in numpy in seconds.

For each clip: the vector of its whole speech (as enroll and identify take it), the vector of its
first `SHORT_S` seconds of speech (a short telephone turn), speech seconds and SNR as the front end
measured them. A clip the front end finds no speech in has NaN vectors.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.audio import MODEL_RATE, Band
from service.audio.band import band_of, telephone_band
from service.audio.decode import decode
from service.audio.pipeline import PreparedAudio, SpeechDetector, prepare
from service.config import Settings
from service.embedding.ecapa import EcapaEmbedder
from service.enrollment.scoring import unit_rows
from service.main import load_embedder
from service.tools.audio import encoding_for
from service.tools.inputs import ManifestRow, read_manifest

log = logging.getLogger(__name__)

SHORT_S = 3.0
# Speech seconds of the crops `Embedding.crops` embeds: how scores move with a probe's duration.
CROP_S = (0.7, 1.0, 1.5, 2.0, 3.0, 5.0)


@dataclass(frozen=True)
class Embedded:
    """Per clip, in manifest order: ``vectors`` and ``short`` are ``(n, dim)`` L2-normalised float32
    (NaN rows where the clip has no speech); ``speech_s`` and ``snr_db`` are ``(n,)``."""

    rows: list[ManifestRow]
    vectors: np.ndarray
    short: np.ndarray
    speech_s: np.ndarray
    snr_db: np.ndarray

    @property
    def speakers(self) -> np.ndarray:
        return np.array([r.speaker for r in self.rows])


def widened(prepared: PreparedAudio, context_s: float, speech_limit_s: float | None = None) -> np.ndarray:
    """The speech regions, each widened by `context_s` on both sides within the clip (regions that
    then meet become one), joined end to end; `speech_limit_s`: only the regions' first that many
    seconds of speech, each still with its context. ``context_s = 0`` is the service's input."""
    spans: list[list[float]] = []
    left = np.inf if speech_limit_s is None else speech_limit_s
    for start, end in prepared.speech:
        if left <= 0:
            break
        end = min(end, start + left)
        left -= end - start
        lo, hi = max(0.0, start - context_s), min(prepared.duration_s, end + context_s)
        if spans and lo <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], hi)
        else:
            spans.append([lo, hi])
    parts = [prepared.segment(lo, hi) for lo, hi in spans]
    return np.concatenate(parts) if parts else prepared.wave[:0]


class Embedding:
    """The service's front end and model, loaded once. `context_s` > 0 (a study of the model's
    input, not the service's): the model is given the speech regions widened by that much context
    (`widened`), and the first `SHORT_S` seconds and the crops are of speech, each with its context."""

    def __init__(self, settings: Settings | None = None, context_s: float = 0.0) -> None:
        self.settings = settings or Settings()
        self.model: EcapaEmbedder = load_embedder(self.settings)
        audio = self.settings.audio
        self.detector = SpeechDetector(audio.vad_threshold, audio.vad_narrowband_threshold)
        self.context_s = context_s

    def prepared(self, row: ManifestRow) -> PreparedAudio:
        """The clip as the front end prepares it: 16 kHz, its speech regions, SNR."""
        audio = self.settings.audio
        decoded = decode(
            row.path.read_bytes(),
            encoding_for(row.path) or "FLAC",
            None,
            max_seconds=audio.max_seconds,
            timeout_s=audio.decode_timeout_s,
        )
        return prepare(decoded, self.detector)

    def clip(self, row: ManifestRow, twin: bool = False) -> tuple[np.ndarray, np.ndarray, float, float]:
        """The vectors of the clip whole and of its first `SHORT_S` seconds of speech, its speech
        seconds and SNR. `twin`: the vectors of the clip's narrowband twin, as enrollment makes it
        (a wideband clip's speech through `telephone_band`; a narrowband clip's own)."""
        prepared = self.prepared(row)
        speech = prepared.speech_wave()
        speech_s, snr_db = prepared.speech_seconds, prepared.snr_db
        if len(speech) < MODEL_RATE // 10:
            nan = np.full(self.model.dim, np.nan, dtype=np.float32)
            return nan, nan, speech_s, snr_db
        narrow = twin and band_of(prepared.source_rate, speech) == Band.WIDE
        if self.context_s > 0:
            line = telephone_band if narrow else np.asarray
            whole = unit_rows(self.model.embed(line(widened(prepared, self.context_s))))
            if speech_s <= SHORT_S:
                return whole, whole, speech_s, snr_db
            first = widened(prepared, self.context_s, SHORT_S)
            return whole, unit_rows(self.model.embed(line(first))), speech_s, snr_db
        if narrow:
            speech = telephone_band(speech)
        whole = unit_rows(self.model.embed(speech))
        short_len = int(SHORT_S * MODEL_RATE)
        short = whole if len(speech) <= short_len else unit_rows(self.model.embed(speech[:short_len]))
        return whole, short, speech_s, snr_db

    def _key(self, manifest: Path, *extra: str) -> str:
        # The model path actually chosen (`auto` picks by start-up check), not the setting; the
        # manifest by its folder's name, its text and its clips' sizes, not by where it lies, so a
        # cache made in one checkout serves another that renders the same clips; the speech
        # detector's thresholds, which choose what the model hears.
        clips = [
            f"{row.name}:{row.path.stat().st_size if row.path.exists() else -1}"
            for row in read_manifest(manifest)
        ]
        parts = [
            self.model.checksum,
            self.model.precision,
            f"vad={self.detector.threshold:g},{self.detector.narrowband_threshold}",
            manifest.parent.name,
            manifest.read_text(),
            *clips,
            *extra,
            *([f"context={self.context_s:g}"] if self.context_s > 0 else []),
        ]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    def crops(self, manifest: Path, cache_dir: Path, seconds: tuple[float, ...] = CROP_S) -> np.ndarray:
        """``(n, len(seconds), dim)``: the vector of each clip's first `seconds` of speech, one model
        pass per crop; NaN where the clip holds less speech than the crop. Cached."""
        rows = read_manifest(manifest)
        key = self._key(manifest, "crops", *(f"{s:g}" for s in seconds))
        cache = cache_dir / f"{manifest.parent.name}-crops-{key}.npy"
        if cache.exists():
            cached = np.load(cache)
            if len(cached) == len(rows):
                return np.asarray(cached)
        started = time.monotonic()
        out = np.full((len(rows), len(seconds), self.model.dim), np.nan, dtype=np.float32)
        for i, row in enumerate(rows):
            prepared = self.prepared(row)
            speech = prepared.speech_wave()
            for j, s in enumerate(seconds):
                n = int(s * MODEL_RATE)
                if len(speech) < n:
                    continue
                crop = widened(prepared, self.context_s, s) if self.context_s > 0 else speech[:n]
                out[i, j] = unit_rows(self.model.embed(crop))
        log.info(
            "%s: crops of %d clips in %.0f s", manifest.parent.name, len(rows), time.monotonic() - started
        )
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(cache, out)
        return out

    def manifest(self, manifest: Path, cache_dir: Path, twin: bool = False) -> Embedded:
        """Every clip of `manifest` (`twin`: their narrowband twins, see `clip`), cached."""
        rows = read_manifest(manifest)
        key = self._key(manifest, *(["twin"] if twin else []))
        cache = cache_dir / f"{manifest.parent.name}{'-twin' if twin else ''}-{key}.npz"
        if cache.exists():
            data = np.load(cache)
            if len(data["speech_s"]) == len(rows):
                return Embedded(rows, data["vectors"], data["short"], data["speech_s"], data["snr_db"])
        started = time.monotonic()
        out = [self.clip(row, twin) for row in rows]
        log.info(
            "%s: %d clips embedded in %.0f s", manifest.parent.name, len(rows), time.monotonic() - started
        )
        embedded = Embedded(
            rows,
            np.stack([o[0] for o in out]),
            np.stack([o[1] for o in out]),
            np.array([o[2] for o in out], dtype=np.float32),
            np.array([o[3] for o in out], dtype=np.float32),
        )
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.savez(
            cache,
            vectors=embedded.vectors,
            short=embedded.short,
            speech_s=embedded.speech_s,
            snr_db=embedded.snr_db,
        )
        return embedded
