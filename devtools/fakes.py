"""Stand-ins for the ports of `service.enrollment.ports`, for tests of the use cases without the model,
the database, silero or the shared speech sets: an in-memory store, a spectral embedder, an energy
speech detector and made-up voices that the embedder tells apart.

Nothing here is a store of record or a speaker model: `MemoryStore` keeps what one test writes, and
`SpectralEmbedder` answers only the question "same synthetic voice?". Every behaviour that depends
on the real model is tested with it on real speech.

The voices: a `SyntheticVoice` is a level (log power) for each of `DIM` tones at fixed frequencies.
A take plays those tones with the levels shifted a little for that take (so two takes are close,
not equal: `spread` 0.4 puts them at cosine 0.8-0.87, 0.2 at 0.94-0.96), flickering every 16 ms
(so two takes differ over time, as two utterances do to the content fingerprint), between a quiet
lead-in and tail. `SpectralEmbedder` reads each tone's log power back, centred and length-normalised;
different voices land near cosine 0.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from statistics import NormalDist

import numpy as np

from devtools.clips import linear16_bytes
from service.audio import MODEL_RATE
from service.audio.frontend import AudioFrontEnd, AudioInput
from service.audio.pipeline import FRAME, Runner, SpeechDetector
from service.config import Settings
from service.embedding.bounded import BoundedEmbedding
from service.enrollment.identification import IdentificationService
from service.enrollment.ports import (
    Aggregates,
    ChangeKind,
    ChangeRecord,
    IndexEntry,
    NewSample,
    SampleRecord,
    SampleSummary,
    SpeakerRecord,
    SpeakerStatus,
    StoredRecording,
)
from service.enrollment.service import EnrollmentService, EnrollmentStatus
from service.main import banded_index, use_cases
from service.storage.index import BandedIndex
from service.storage.sync import IndexFollower

DIM = 192
# Tones sit on every bin of a 512-point spectrum from bin 5 (156 Hz) up, i.e. on every other bin of
# the embedder's 1024-point frames: a tone whose frequency is a whole number of bins leaks, under a
# Hann window, into its two neighbouring bins only, so each tone is read back on its own.
SYNTH_N = 512
FIRST_BIN = 5
EMBED_N = 2 * SYNTH_N
TONE_BINS = FIRST_BIN + np.arange(DIM)  # of SYNTH_N
READ_BINS = 2 * TONE_BINS  # of EMBED_N
TAKE_SPREAD = 0.4  # sd of a take's level shift per tone (log power); the voice's levels have sd 1
FLICKER = 2.0  # sd of the level's change every 16 ms (log power)
RMS = 0.05
NOISE = 1e-4  # background noise, about -80 dBFS
LEAD_S = 0.5  # quiet before and after the voice
# A tone this far below the median tone (power) was removed by the channel: a voice's own levels
# stay above about 1/20 of the median (levels of sd 1 in log power), while a telephone line leaves
# the tones above 4 kHz at 1e-10 of it.
DEAD_TONE = 1e-2


@dataclass(frozen=True)
class SyntheticVoice:
    """A made-up voice, repeatable from its seed."""

    seed: int

    def levels(self) -> np.ndarray:
        """Log power of each tone, ``(DIM,)``."""
        return np.random.default_rng([7, self.seed]).standard_normal(DIM)

    def wave(self, take: int, seconds: float = 7.0, spread: float = TAKE_SPREAD) -> np.ndarray:
        """Take number `take`: float32 at 16 kHz, `seconds` of voice between quiet lead-in and tail.
        `spread`: how far a take's levels stray from the voice's (log power sd per tone). Read-only
        (takes are kept: tests play the same ones many times)."""
        return _take(self.seed, take, seconds, spread)

    def clip(self, take: int, seconds: float = 7.0, spread: float = TAKE_SPREAD) -> AudioInput:
        """The take as a client sends it: 16-bit PCM at 16 kHz (LINEAR16)."""
        return as_linear16(self.wave(take, seconds, spread))


@functools.cache
def _steps(blocks: int) -> np.ndarray:
    """`blocks` evenly spread quantiles of the standard normal distribution."""
    return np.array([NormalDist().inv_cdf((i + 0.5) / blocks) for i in range(blocks)])


@functools.lru_cache(maxsize=512)
def _take(seed: int, take: int, seconds: float, spread: float) -> np.ndarray:
    """`SyntheticVoice.wave`."""
    rng = np.random.default_rng([11, seed, take])
    level = SyntheticVoice(seed).levels() + spread * rng.standard_normal(DIM)
    hop = SYNTH_N // 2
    blocks = int(seconds * MODEL_RATE) // hop + 1
    phase = rng.uniform(0.0, 2.0 * np.pi, DIM)
    # Every tone flickers through the same levels, each in its own order: the flicker changes
    # the sound over time (what the content fingerprint hears) and not a tone's mean power.
    flicker = FLICKER * rng.permuted(np.repeat(_steps(blocks)[:, None], DIM, axis=1), axis=0)
    # A tone on an odd bin turns half a cycle every hop: flip its sign per block to stay in phase.
    turn = np.where(np.outer(np.arange(blocks), TONE_BINS) % 2 == 1, -1.0, 1.0)
    spectra = np.zeros((blocks, SYNTH_N // 2 + 1), dtype=np.complex128)
    spectra[:, TONE_BINS] = np.exp(0.5 * (level + flicker) + 1j * phase) * turn
    # Hann-windowed blocks at half overlap add up to the tones with smoothly changing levels.
    periods = np.fft.irfft(spectra, SYNTH_N, axis=1) * np.hanning(SYNTH_N + 1)[:SYNTH_N]
    voice = np.zeros((blocks + 1) * hop)
    voice[: blocks * hop] += periods[:, :hop].reshape(-1)
    voice[hop:] += periods[:, hop:].reshape(-1)
    voice = voice[: int(seconds * MODEL_RATE)]
    voice *= RMS / np.sqrt(np.mean(voice**2))
    lead = np.zeros(int(LEAD_S * MODEL_RATE))
    out = np.concatenate([lead, voice, lead])
    out = (out + NOISE * rng.standard_normal(len(out))).astype(np.float32)
    out.setflags(write=False)
    return out


def as_linear16(wave: np.ndarray) -> AudioInput:
    samples = np.clip(np.round(wave * 32768.0), -32768, 32767).astype(np.int16)
    return AudioInput(linear16_bytes(samples), "LINEAR16", MODEL_RATE)


class SpectralEmbedder:
    """`Embedder`: a waveform's log power at the tones of `SyntheticVoice`, centred, unit length.

    Deterministic, no model; ``(DIM,)`` float32 per waveform (1-D, 16 kHz, at least 64 ms)."""

    dim = DIM
    checksum = hashlib.sha256(b"spectral-embedder-1").hexdigest()
    device = "cpu"
    threads_used = 1

    def warmup(self) -> None:  # nothing to warm
        pass

    def embed(self, wave: np.ndarray) -> np.ndarray:
        wave = np.asarray(wave, dtype=np.float64)
        if len(wave) < EMBED_N:
            wave = np.pad(wave, (0, EMBED_N - len(wave)))
        frames = np.lib.stride_tricks.sliding_window_view(wave, EMBED_N)[:: EMBED_N // 2]
        power = (np.abs(np.fft.rfft(frames * np.hanning(EMBED_N + 1)[:EMBED_N], axis=1)) ** 2).mean(axis=0)
        tones = power[READ_BINS]
        # Tones a channel removed (a telephone line cuts everything above 3.4 kHz) say nothing of
        # the voice: left at 0, else their common floor would make every band-limited voice alike.
        live = tones > DEAD_TONE * max(float(np.median(tones)), 1e-30)
        feature = np.zeros(DIM)
        feature[live] = np.log(tones[live])
        feature[live] -= feature[live].mean()
        return np.asarray(feature / max(float(np.linalg.norm(feature)), 1e-12), dtype=np.float32)

    def embed_batch(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([self.embed(w) for w in waves])


class EnergySpeechDetector(SpeechDetector):
    """Speech = 20 ms frames within `RANGE_DB` of the loudest one (no silero model): enough for
    synthetic voices over quiet backgrounds."""

    RANGE_DB = 40.0
    MIN_GAP_S = 0.2  # shorter pauses are kept inside a region

    def __init__(self, threshold: float = 0.5, narrowband_threshold: float | None = None) -> None:  # no model
        self.threshold = threshold
        self.narrowband_threshold = narrowband_threshold

    def regions(
        self, wave: np.ndarray, run: Runner | None = None, source_rate: int = MODEL_RATE
    ) -> list[tuple[float, float]]:
        frames = len(wave) // FRAME
        if frames == 0:
            return []
        energy = (wave[: frames * FRAME].reshape(frames, FRAME).astype(np.float64) ** 2).mean(axis=1)
        peak = float(energy.max())
        if peak < 1e-10:  # digital silence
            return []
        loud = energy >= peak * 10 ** (-self.RANGE_DB / 10)
        regions: list[tuple[float, float]] = []
        for i in np.flatnonzero(loud):
            start, end = i * FRAME / MODEL_RATE, (i + 1) * FRAME / MODEL_RATE
            if regions and start - regions[-1][1] < self.MIN_GAP_S:
                regions[-1] = (regions[-1][0], end)
            else:
                regions.append((start, end))
        return regions


# --- store ----------------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Tables:
    speakers: dict[int, SpeakerRecord] = field(default_factory=dict)
    samples: dict[int, list[SampleRecord]] = field(default_factory=dict)
    changes: list[ChangeRecord] = field(default_factory=list)
    next_speaker: int = 1
    # Per speaker: (sample id, audio, source rate) of samples that kept their audio.
    audio: dict[int, list[tuple[str, bytes, int]]] = field(default_factory=dict)


class MemoryTransaction:
    """`Transaction` on a private copy of the tables; the store keeps the copy only on commit."""

    def __init__(self, tables: _Tables) -> None:
        self.tables = tables

    def _find(self, tenant_id: int, external_id: str) -> SpeakerRecord | None:
        return next(
            (
                s
                for s in self.tables.speakers.values()
                if (s.tenant_id, s.external_id) == (tenant_id, external_id)
            ),
            None,
        )

    def lock_speaker(self, tenant_id: int, external_id: str, *, create: bool) -> SpeakerRecord | None:
        found = self._find(tenant_id, external_id)
        if found is None and create:
            t = self.tables
            now = _now()
            found = SpeakerRecord(
                t.next_speaker,
                tenant_id,
                external_id,
                SpeakerStatus.ENROLLING,
                0,
                0.0,
                0.0,
                None,
                None,
                now,
                now,
            )
            t.speakers[found.id], t.samples[found.id] = found, []
            t.next_speaker += 1
        return found

    def samples(self, speaker_id: int) -> list[SampleRecord]:
        return list(self.tables.samples.get(speaker_id, []))

    def lock_tenant(self, tenant_id: int) -> None:
        pass  # one transaction at a time already

    def changed_speakers(self, tenant_id: int, after_seq: int) -> list[int]:
        return sorted(
            {c.speaker_id for c in self.tables.changes if c.tenant_id == tenant_id and c.seq > after_seq}
        )

    def recordings(
        self, tenant_id: int, speaker_ids: Sequence[int], model_sha256: str
    ) -> list[StoredRecording]:
        mine = [
            i
            for i in speaker_ids
            if i in self.tables.speakers and self.tables.speakers[i].tenant_id == tenant_id
        ]
        return [
            StoredRecording(i, s.vector, s.fingerprint)
            for i in mine
            for s in self.tables.samples[i]
            if s.model_sha256 == model_sha256 and s.fingerprint
        ]

    def add_sample(self, speaker_id: int, sample: NewSample) -> None:
        record = sample.record(_now())
        self.tables.samples[speaker_id].append(record)
        if sample.audio is not None:
            self.tables.audio.setdefault(speaker_id, []).append(
                (sample.sample_id, sample.audio, sample.source_rate)
            )

    def stored_audio(self, speaker_id: int) -> list[tuple[str, bytes, int]]:
        return [(s, audio, rate) for s, audio, rate in self.tables.audio.get(speaker_id, [])]

    def set_twin(self, sample_id: str, narrow_vector: np.ndarray | None) -> None:
        for speaker_id, samples in self.tables.samples.items():
            self.tables.samples[speaker_id] = [
                replace(s, narrow_vector=narrow_vector) if s.sample_id == sample_id else s for s in samples
            ]

    def remove_sample(self, speaker_id: int, sample_id: str) -> bool:
        kept = [s for s in self.tables.samples.get(speaker_id, []) if s.sample_id != sample_id]
        removed = len(kept) != len(self.tables.samples.get(speaker_id, []))
        self.tables.samples[speaker_id] = kept
        audio = self.tables.audio.get(speaker_id, [])
        self.tables.audio[speaker_id] = [a for a in audio if a[0] != sample_id]
        return removed

    def update_speaker(self, speaker_id: int, aggregates: Aggregates) -> SpeakerRecord:
        record = replace(
            self.tables.speakers[speaker_id],
            status=aggregates.status,
            sample_count=aggregates.sample_count,
            speech_seconds=aggregates.speech_seconds,
            spread=aggregates.spread,
            centroid=aggregates.centroid,
            model_sha256=aggregates.model_sha256,
            narrow_centroid=aggregates.narrow_centroid,
            updated_at=_now(),
        )
        self.tables.speakers[speaker_id] = record
        return record

    def delete_speaker(self, speaker_id: int) -> None:
        self.tables.speakers.pop(speaker_id, None)
        self.tables.samples.pop(speaker_id, None)
        self.tables.audio.pop(speaker_id, None)

    def log_change(self, tenant_id: int, speaker_id: int, kind: ChangeKind) -> None:
        seq = self.tables.changes[-1].seq + 1 if self.tables.changes else 1
        self.tables.changes.append(ChangeRecord(seq, tenant_id, speaker_id, _now()))


class MemoryStore:
    """`Store` in memory, for tests: one transaction at a time, all or nothing."""

    def __init__(self) -> None:
        self._tables = _Tables()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[MemoryTransaction]:
        with self._lock:
            # Records are frozen; copying the containers is enough for a rollback to leave no trace.
            draft = _Tables(
                dict(self._tables.speakers),
                {k: list(v) for k, v in self._tables.samples.items()},
                list(self._tables.changes),
                self._tables.next_speaker,
                {k: list(v) for k, v in self._tables.audio.items()},
            )
            yield MemoryTransaction(draft)
            self._tables = draft

    def _snapshot(self) -> _Tables:
        # Committed tables are never changed (a transaction commits a new copy): read without a lock.
        return self._tables

    def get_speaker(self, tenant_id: int, external_id: str) -> SpeakerRecord | None:
        return MemoryTransaction(self._snapshot())._find(tenant_id, external_id)

    def list_speakers(
        self, tenant_id: int, *, offset: int = 0, limit: int | None = None
    ) -> list[SpeakerRecord]:
        mine = sorted(
            (s for s in self._snapshot().speakers.values() if s.tenant_id == tenant_id),
            key=lambda s: s.external_id,
        )
        return mine[offset : None if limit is None else offset + limit]

    def count_speakers(self, tenant_id: int) -> int:
        return sum(s.tenant_id == tenant_id for s in self._snapshot().speakers.values())

    def speaker_keys(self) -> list[tuple[int, str]]:
        return [(s.tenant_id, s.external_id) for s in self._snapshot().speakers.values()]

    def latest_sample(self, speaker_id: int) -> SampleRecord | None:
        samples = self._snapshot().samples.get(speaker_id, [])
        return samples[-1] if samples else None

    def latest_samples(self, speaker_ids: Sequence[int]) -> dict[int, SampleSummary]:
        found = {i: self.latest_sample(i) for i in speaker_ids}
        return {
            i: SampleSummary(s.sample_id, s.speech_seconds, s.snr_db)
            for i, s in found.items()
            if s is not None
        }

    def index_entries(
        self, speaker_ids: Iterable[int] | None = None, model_sha256: str | None = None
    ) -> list[IndexEntry]:
        speakers = self._snapshot().speakers
        wanted = speakers.keys() if speaker_ids is None else set(speaker_ids) & speakers.keys()
        return [
            IndexEntry(
                s.id,
                s.tenant_id,
                s.external_id,
                s.status == SpeakerStatus.COMPLETE,
                s.centroid,
                s.narrow_centroid,
            )
            for s in (speakers[i] for i in sorted(wanted))
            if s.centroid is not None and model_sha256 in (None, s.model_sha256)
        ]

    def changes_since(self, seq: int, limit: int = 10_000) -> list[ChangeRecord]:
        return [c for c in self._snapshot().changes if c.seq > seq][:limit]

    def last_change_seq(self) -> int:
        changes = self._snapshot().changes
        return changes[-1].seq if changes else 0

    def purge_changes(self, before: datetime) -> int:
        with self.transaction() as tx:
            newest = tx.tables.changes[-1].seq if tx.tables.changes else 0
            kept = [c for c in tx.tables.changes if c.at is None or c.at >= before or c.seq == newest]
            purged = len(tx.tables.changes) - len(kept)
            tx.tables.changes[:] = kept
        return purged

    def copy(self) -> MemoryStore:
        """A store that starts with what this one holds now; the two go separate ways after."""
        other = MemoryStore()
        other._tables = self._snapshot()  # committed tables are never changed, so they can be shared
        return other

    def sample_count(self) -> int:
        """Samples held, over every speaker of every tenant."""
        return sum(len(v) for v in self._snapshot().samples.values())


# --- wiring ---------------------------------------------------------------------------------------


@dataclass
class FakeServices:
    """The use cases as `service.main` wires them, on the fakes and the real faiss index."""

    store: MemoryStore
    index: BandedIndex
    follower: IndexFollower
    embedder: SpectralEmbedder
    enrollment: EnrollmentService
    identification: IdentificationService

    def enroll_takes(
        self, tenant_id: int, speaker_id: str, voice: SyntheticVoice, takes: Iterable[int] = (0, 1, 2)
    ) -> EnrollmentStatus:
        """Enroll these takes of `voice` in turn (three 7 s takes complete a speaker); the last status."""
        status = None
        for take in takes:
            status = self.enrollment.enroll(tenant_id, speaker_id, voice.clip(take))
        assert status is not None, "no takes"
        return status


def fake_services(settings: Settings | None = None, store: MemoryStore | None = None) -> FakeServices:
    """Use cases with the settings' thresholds (the defaults unless given), no model or database, on
    `store` (a new empty one unless given; its speakers are indexed as at a start)."""
    settings = settings or Settings()
    store, embedder = store or MemoryStore(), SpectralEmbedder()
    index = banded_index(settings, embedder.dim)
    follower = IndexFollower(store, index)
    follower.rebuild()
    follower.catch_up()  # a rebuild re-applies its recent changes on the first catch-up: done here
    frontend = AudioFrontEnd(
        max_seconds=settings.audio.max_seconds,
        decode_timeout_s=settings.audio.decode_timeout_s,
        vad_threshold=settings.audio.vad_threshold,
        vad_narrowband_threshold=settings.audio.vad_narrowband_threshold,
        detector=EnergySpeechDetector,
    )
    enrollment, identification, _ = use_cases(
        settings,
        store=store,
        frontend=frontend,
        embed=BoundedEmbedding(embedder.embed_batch),
        model_sha256=embedder.checksum,
        index=index,
        prior=np.zeros(embedder.dim, dtype=np.float32),
        after_commit=follower.catch_up,
        indexed_through=lambda: follower.floor,
    )
    return FakeServices(store, index, follower, embedder, enrollment, identification)
