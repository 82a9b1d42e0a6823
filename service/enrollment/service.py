"""Enrollment use cases: enroll a sample, report status, list, delete a speaker or one sample.

Each write is one database transaction that also appends to the change log; the index follows the
committed change afterwards (`IndexFollower.catch_up`), so a crash between commit and index update
loses nothing. Blocking: call these from a worker thread, not the event loop.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.audio.fingerprint import fingerprint
from service.audio.frontend import AudioFrontEnd, AudioInput
from service.audio.pipeline import QualityLimits
from service.concurrency import Cancellation, check
from service.enrollment import policy as rules
from service.enrollment.policy import EnrollmentPolicy
from service.enrollment.ports import EmbedWaves, NewSample, SampleRecord, SpeakerRecord, Store, Transaction
from service.errors import SampleNotFound, SpeakerNotFound

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleSummary:
    sample_id: str
    speech_seconds: float
    snr_db: float


@dataclass(frozen=True)
class EnrollmentStatus:
    speaker_id: str
    status: str
    samples: int
    speech_seconds: float
    spread: float
    progress: float
    missing: list[str]
    last_sample: SampleSummary | None

    @property
    def complete(self) -> bool:
        return self.status == rules.COMPLETE


class EnrollmentService:
    def __init__(
        self,
        store: Store,
        frontend: AudioFrontEnd,
        embed: EmbedWaves,
        model_sha256: str,
        policy: EnrollmentPolicy,
        limits: QualityLimits,
        after_commit: Callable[[], object],
        voice_score: Callable[[int, np.ndarray, np.ndarray], float] | None = None,
        complete_threshold: float = float("inf"),
        store_audio: bool = False,
    ) -> None:
        self.store = store
        self.frontend = frontend
        self.embed = embed
        self.model_sha256 = model_sha256
        self.policy = policy
        self.limits = limits
        self.after_commit = after_commit
        self.voice_score = voice_score
        self.complete_threshold = complete_threshold
        self.store_audio = store_audio

    def enroll(
        self, tenant_id: int, speaker_id: str, audio: AudioInput, cancel: Cancellation | None = None
    ) -> EnrollmentStatus:
        prepared = self.frontend.load(audio, self.limits, cancel)
        vector = rules.normalise(self.embed([prepared.speech_wave()], cancel)[0])
        check(cancel)  # nothing acknowledged and nothing written yet: a client that left gets no sample
        sample = NewSample(
            sample_id=uuid.uuid4().hex,
            vector=vector,
            model_sha256=self.model_sha256,
            speech_seconds=round(prepared.speech_seconds, 3),
            duration_seconds=round(prepared.duration_s, 3),
            snr_db=round(prepared.snr_db, 2),
            clipped_fraction=prepared.clipped_fraction,
            source_rate=prepared.source_rate,
            audio=prepared.wave.astype("<f4").tobytes() if self.store_audio else None,
            fingerprint=fingerprint(prepared.wave),
        )
        with self.store.transaction() as tx:
            speaker = tx.lock_speaker(tenant_id, speaker_id, create=True)
            assert speaker is not None
            earlier = [s for s in tx.samples(speaker.id) if s.model_sha256 == self.model_sha256]
            rules.check_new_sample(
                vector, earlier, self.policy, sample.fingerprint, self._voice(tenant_id, speaker)
            )
            tx.add_sample(speaker.id, sample)
            record = self._write_aggregates(tx, speaker, [*earlier, self._as_record(sample, speaker)])
            tx.log_change(tenant_id, speaker.id, "sample+")
        self._committed()
        return self._status(record, SampleSummary(sample.sample_id, sample.speech_seconds, sample.snr_db))

    def status(self, tenant_id: int, speaker_id: str) -> EnrollmentStatus:
        speaker = self._existing(tenant_id, speaker_id)
        last = self.store.latest_sample(speaker.id)
        summary = SampleSummary(last.sample_id, last.speech_seconds, last.snr_db) if last else None
        return self._status(speaker, summary)

    def list_speakers(
        self, tenant_id: int, offset: int = 0, limit: int | None = None
    ) -> tuple[list[EnrollmentStatus], int]:
        speakers = self.store.list_speakers(tenant_id, offset=offset, limit=limit)
        return [self._status(s, None) for s in speakers], self.store.count_speakers(tenant_id)

    def delete_speaker(self, tenant_id: int, speaker_id: str) -> None:
        with self.store.transaction() as tx:
            speaker = tx.lock_speaker(tenant_id, speaker_id, create=False)
            if speaker is None:
                raise SpeakerNotFound(f"Speaker {speaker_id!r} not found")
            tx.delete_speaker(speaker.id)
            tx.log_change(tenant_id, speaker.id, "speaker-")
        self._committed()

    def delete_sample(self, tenant_id: int, speaker_id: str, sample_id: str) -> None:
        """Remove one sample; removing the last one removes the speaker."""
        with self.store.transaction() as tx:
            speaker = tx.lock_speaker(tenant_id, speaker_id, create=False)
            if speaker is None:
                raise SpeakerNotFound(f"Speaker {speaker_id!r} not found")
            if not tx.remove_sample(speaker.id, sample_id):
                raise SampleNotFound(f"Sample {sample_id!r} not found for speaker {speaker_id!r}")
            remaining = tx.samples(speaker.id)
            if remaining:
                self._write_aggregates(tx, speaker, remaining)
                tx.log_change(tenant_id, speaker.id, "sample-")
            else:
                # A speaker without samples is no speaker: gone as if deleted, so it is neither
                # listed nor a candidate, and its id is free for a new enrollment.
                tx.delete_speaker(speaker.id)
                tx.log_change(tenant_id, speaker.id, "speaker-")
        self._committed()

    # --- helpers ---------------------------------------------------------------------------------

    def _voice(self, tenant_id: int, speaker: SpeakerRecord) -> tuple[rules.VoiceScore, float] | None:
        """The voice check for a new sample of `speaker`: the decision rule in its tenant, at the
        enrollment threshold, or at the verify threshold once the speaker is complete."""
        if self.voice_score is None:
            return None
        score = self.voice_score
        least = self.complete_threshold if speaker.status == rules.COMPLETE else self.policy.voice_check
        return (lambda vector, voiceprint: score(tenant_id, vector, voiceprint)), least

    def _committed(self) -> None:
        """Bring this process's index up to the commit. The write is already durable and will be
        acknowledged: if this fails (a database blip), the background follower catches up."""
        try:
            self.after_commit()
        except Exception:
            log.exception("index catch-up after a commit failed; the follower will retry")

    def _write_aggregates(
        self, tx: Transaction, speaker: SpeakerRecord, samples: list[SampleRecord]
    ) -> SpeakerRecord:
        return tx.update_speaker(speaker.id, rules.aggregate(samples, self.model_sha256, self.policy))

    def _as_record(self, sample: NewSample, speaker: SpeakerRecord) -> SampleRecord:
        return SampleRecord(
            sample_id=sample.sample_id,
            vector=sample.vector,
            model_sha256=sample.model_sha256,
            speech_seconds=sample.speech_seconds,
            duration_seconds=sample.duration_seconds,
            snr_db=sample.snr_db,
            created_at=speaker.updated_at,
            fingerprint=sample.fingerprint,
        )

    def _existing(self, tenant_id: int, speaker_id: str) -> SpeakerRecord:
        speaker = self.store.get_speaker(tenant_id, speaker_id)
        if speaker is None:
            raise SpeakerNotFound(f"Speaker {speaker_id!r} not found")
        return speaker

    def _status(self, speaker: SpeakerRecord, last: SampleSummary | None) -> EnrollmentStatus:
        return EnrollmentStatus(
            speaker_id=speaker.external_id,
            status=speaker.status,
            samples=speaker.sample_count,
            speech_seconds=round(speaker.speech_seconds, 2),
            spread=round(speaker.spread, 4),
            progress=rules.progress(
                speaker.sample_count, speaker.speech_seconds, speaker.spread, self.policy
            ),
            missing=rules.missing(speaker.sample_count, speaker.speech_seconds, speaker.spread, self.policy),
            last_sample=last,
        )
