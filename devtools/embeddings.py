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

from service.audio import MODEL_RATE
from service.audio.band import Band, band_of, telephone_band
from service.audio.decode import decode
from service.audio.pipeline import SpeechDetector, prepare
from service.config import Settings
from service.embedding.ecapa import EcapaEmbedder
from service.enrollment.scoring import unit_rows
from service.main import load_embedder
from service.tools.audio import encoding_for
from service.tools.inputs import ManifestRow, read_manifest

log = logging.getLogger(__name__)

SHORT_S = 3.0


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


class Embedding:
    """The service's front end and model, loaded once."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.model: EcapaEmbedder = load_embedder(self.settings)
        self.detector = SpeechDetector(self.settings.audio.vad_threshold)

    def clip(self, row: ManifestRow, twin: bool = False) -> tuple[np.ndarray, np.ndarray, float, float]:
        """`twin`: the vectors of the clip's narrowband twin, as enrollment makes it (a wideband
        clip's speech through `telephone_band`; a narrowband clip's own)."""
        audio = self.settings.audio
        decoded = decode(
            row.path.read_bytes(),
            encoding_for(row.path) or "FLAC",
            None,
            max_seconds=audio.max_seconds,
            timeout_s=audio.decode_timeout_s,
        )
        prepared = prepare(decoded, self.detector)
        speech = prepared.speech_wave()
        if twin and band_of(prepared.source_rate, speech) == Band.WIDE:
            speech = telephone_band(speech)
        if len(speech) < MODEL_RATE // 10:
            nan = np.full(self.model.dim, np.nan, dtype=np.float32)
            return nan, nan, prepared.speech_seconds, prepared.snr_db
        whole = unit_rows(self.model.embed(speech))
        short_len = int(SHORT_S * MODEL_RATE)
        short = whole if len(speech) <= short_len else unit_rows(self.model.embed(speech[:short_len]))
        return whole, short, prepared.speech_seconds, prepared.snr_db

    def manifest(self, manifest: Path, cache_dir: Path, twin: bool = False) -> Embedded:
        """Every clip of `manifest` (`twin`: their narrowband twins, see `clip`), cached."""
        rows = read_manifest(manifest)
        parts = [self.model.checksum, self.model.precision, str(manifest.resolve())]
        key = hashlib.sha256("\n".join(parts + (["twin"] if twin else [])).encode()).hexdigest()[:16]
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
