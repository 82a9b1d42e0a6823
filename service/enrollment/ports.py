"""What the use cases need from the outside world, declared here and implemented elsewhere.

The use cases import neither FastAPI nor faiss nor SQLAlchemy: storage implements `Store` and
`SpeakerIndex`, embedding implements `Embedder`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

import numpy as np

from service.audio import Band
from service.concurrency import Cancellation


class SpeakerStatus(StrEnum):
    """A speaker's enrollment state; the values are stored in the database."""

    ENROLLING = "enrolling"
    COMPLETE = "complete"


class ChangeKind(StrEnum):
    """What a change-log entry did to its speaker; the values are stored in the database."""

    SAMPLE_ADDED = "sample+"
    SAMPLE_REMOVED = "sample-"
    SPEAKER_DELETED = "speaker-"
    RECOMPUTED = "recompute"  # vector and status worked out again from the samples (rebuild-index)


@dataclass(frozen=True)
class SpeakerRecord:
    id: int  # row id, the index key
    tenant_id: int
    external_id: str
    status: SpeakerStatus
    sample_count: int
    speech_seconds: float
    spread: float
    centroid: np.ndarray | None  # float32 (dim,), L2-normalised
    model_sha256: str | None
    created_at: datetime
    updated_at: datetime
    # Normalised mean of the samples' narrowband vectors (their twins, else their own vectors); None
    # while no sample has a twin (then the centroid serves both bands).
    narrow_centroid: np.ndarray | None = None


@dataclass(frozen=True)
class SampleRecord:
    sample_id: str
    vector: np.ndarray  # float32 (dim,), L2-normalised
    model_sha256: str
    speech_seconds: float
    duration_seconds: float
    snr_db: float
    created_at: datetime
    fingerprint: bytes | None = None
    # The vector of the sample's speech after a telephone channel simulation, for a wideband sample
    # (`service.audio.band`); None: the sample's own vector serves the narrow band too.
    narrow_vector: np.ndarray | None = None

    @property
    def band_vector(self) -> np.ndarray:
        """The vector a narrowband clip is compared with: the twin, else the sample's own."""
        return self.vector if self.narrow_vector is None else self.narrow_vector


@dataclass(frozen=True)
class SampleSummary:
    """What a status says of a speaker's latest sample."""

    sample_id: str
    speech_seconds: float
    snr_db: float


@dataclass(frozen=True)
class NewSample:
    sample_id: str
    vector: np.ndarray
    model_sha256: str
    speech_seconds: float
    duration_seconds: float
    snr_db: float
    clipped_fraction: float
    source_rate: int
    audio: bytes | None
    fingerprint: bytes | None = None
    narrow_vector: np.ndarray | None = None  # see `SampleRecord.narrow_vector`

    def record(self, created_at: datetime) -> SampleRecord:
        """The sample as stored, at `created_at`."""
        return SampleRecord(
            sample_id=self.sample_id,
            vector=self.vector,
            model_sha256=self.model_sha256,
            speech_seconds=self.speech_seconds,
            duration_seconds=self.duration_seconds,
            snr_db=self.snr_db,
            created_at=created_at,
            fingerprint=self.fingerprint,
            narrow_vector=self.narrow_vector,
        )


@dataclass(frozen=True)
class StoredRecording:
    """A stored sample as the same-recording check across speakers needs it."""

    speaker_id: int  # row id
    vector: np.ndarray  # float32 (dim,), L2-normalised
    fingerprint: bytes


@dataclass(frozen=True)
class Aggregates:
    status: SpeakerStatus
    sample_count: int
    speech_seconds: float
    spread: float
    centroid: np.ndarray | None
    model_sha256: str | None
    narrow_centroid: np.ndarray | None = None  # see `SpeakerRecord.narrow_centroid`


@dataclass(frozen=True)
class IndexEntry:
    speaker_id: int
    tenant_id: int
    external_id: str
    complete: bool
    centroid: np.ndarray
    narrow_centroid: np.ndarray | None = None  # None: `centroid` serves the narrow band too


@dataclass(frozen=True)
class ChangeRecord:
    seq: int
    tenant_id: int
    speaker_id: int
    at: datetime | None = None  # when it was logged, where the store keeps it


class Transaction(Protocol):
    """One database transaction; committed when the context exits cleanly, else rolled back."""

    def lock_speaker(self, tenant_id: int, external_id: str, *, create: bool) -> SpeakerRecord | None: ...

    def samples(self, speaker_id: int) -> list[SampleRecord]: ...

    def recordings(
        self, tenant_id: int, speaker_ids: Sequence[int], model_sha256: str
    ) -> list[StoredRecording]:
        """The fingerprinted samples made by `model_sha256` of those of `speaker_ids` that belong to
        `tenant_id` (another tenant's ids select nothing)."""
        ...

    def lock_tenant(self, tenant_id: int) -> None:
        """Hold the tenant's lock until the transaction ends: enrollments of one tenant that check
        each other's recordings pass this point one at a time (on SQLite every write does anyway)."""
        ...

    def changed_speakers(self, tenant_id: int, after_seq: int) -> list[int]:
        """Row ids of the tenant's speakers with a change after `after_seq` (committed, as far as
        this transaction sees)."""
        ...

    def add_sample(self, speaker_id: int, sample: NewSample) -> None: ...

    def stored_audio(self, speaker_id: int) -> list[tuple[str, bytes, int]]:
        """(sample id, 16 kHz float32 audio, source rate) of the speaker's samples that kept audio."""
        ...

    def set_twin(self, sample_id: str, narrow_vector: np.ndarray | None) -> None: ...

    def remove_sample(self, speaker_id: int, sample_id: str) -> bool: ...

    def update_speaker(self, speaker_id: int, aggregates: Aggregates) -> SpeakerRecord: ...

    def delete_speaker(self, speaker_id: int) -> None: ...

    def log_change(self, tenant_id: int, speaker_id: int, kind: ChangeKind) -> None: ...


class Store(Protocol):
    def transaction(self) -> AbstractContextManager[Transaction]: ...

    def get_speaker(self, tenant_id: int, external_id: str) -> SpeakerRecord | None: ...

    def list_speakers(
        self, tenant_id: int, *, offset: int = 0, limit: int | None = None
    ) -> list[SpeakerRecord]: ...

    def count_speakers(self, tenant_id: int) -> int: ...

    def speaker_keys(self) -> list[tuple[int, str]]: ...

    def latest_sample(self, speaker_id: int) -> SampleRecord | None: ...

    def latest_samples(self, speaker_ids: Sequence[int]) -> dict[int, SampleSummary]: ...

    def index_entries(
        self, speaker_ids: Iterable[int] | None = None, model_sha256: str | None = None
    ) -> list[IndexEntry]:
        """Speakers with a voiceprint (of `speaker_ids`, if given), made by `model_sha256` if given:
        vectors of different models are never compared."""
        ...

    def changes_since(self, seq: int, limit: int = 10_000) -> list[ChangeRecord]: ...

    def last_change_seq(self) -> int: ...

    def purge_changes(self, before: datetime) -> int:
        """Delete the change log's rows logged before `before`, but never the newest (sequence
        numbers must keep rising); returns how many."""
        ...


class SpeakerIndex(Protocol):
    def band(self, band: Band) -> SpeakerIndex:
        """The index that clips heard through `band` are searched and scored in: its entries'
        `centroid` is the speaker's voiceprint in that band, its cohort the tenant's in that band."""
        ...

    def replace(self, entries: Sequence[IndexEntry]) -> None: ...

    def upsert(self, entry: IndexEntry) -> None: ...

    def remove(self, speaker_id: int) -> None: ...

    def apply(self, upserts: Sequence[IndexEntry], removes: Sequence[int]) -> None:
        """`upsert` each of `upserts` and `remove` each of `removes`, as one batch."""
        ...

    def lookup(self, tenant_id: int, external_id: str) -> IndexEntry | None: ...

    def tenant_size(self, tenant_id: int) -> int: ...

    def cohort(self, tenant_id: int) -> tuple[np.ndarray, np.ndarray]: ...

    def search(
        self, query: np.ndarray, tenant_id: int, k: int, only: Sequence[int] | None = None
    ) -> list[tuple[IndexEntry, float]]: ...

    def __len__(self) -> int: ...


class EmbedWaves(Protocol):
    """1-D float32 16 kHz waveforms of any length -> ``(len(waves), dim)`` float32 vectors, not
    length-normalised; RequestCancelled once `cancel` is set (`service.embedding.bounded`)."""

    def __call__(self, waves: Sequence[np.ndarray], cancel: Cancellation | None = None) -> np.ndarray: ...


class Embedder(Protocol):
    """The speaker model: 1-D float32 16 kHz waveforms in, ``(dim,)`` float32 vectors out."""

    @property
    def checksum(self) -> str:
        """sha256 of the weights: stored with every vector, so vectors of another model are known."""
        ...

    @property
    def dim(self) -> int: ...

    @property
    def device(self) -> str:
        """The kind of device the model runs on: "cpu" or "cuda"."""
        ...

    @property
    def threads_used(self) -> int:
        """torch's intra-op thread count in the thread that ran the last forward pass (0: none yet)."""
        ...

    def warmup(self) -> None:
        """Run the model once on each shape class it will see first, so the first request does not
        pay for kernel selection and allocation."""
        ...

    def embed(self, wave: np.ndarray) -> np.ndarray: ...

    def embed_batch(self, waves: Sequence[np.ndarray]) -> np.ndarray: ...
