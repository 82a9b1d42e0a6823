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

from service.audio import MODEL_RATE, Band
from service.audio.band import band_of, telephone_band
from service.audio.fingerprint import fingerprint
from service.audio.frontend import AudioFrontEnd, AudioInput
from service.audio.pipeline import PreparedAudio, QualityLimits
from service.concurrency import Cancellation, beside, check
from service.enrollment import policy as rules
from service.enrollment.policy import EnrollmentPolicy
from service.enrollment.ports import (
    ChangeKind,
    EmbedWaves,
    NewSample,
    SampleRecord,
    SampleSummary,
    SpeakerRecord,
    SpeakerStatus,
    Store,
    Transaction,
)
from service.enrollment.voices import TenantVoices
from service.errors import SampleNotFound, SpeakerNotFound

SIMILAR_VOICE_WARNING = "voice very close to another enrolled speaker"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnrollmentStatus:
    speaker_id: str
    status: SpeakerStatus
    samples: int
    speech_seconds: float
    spread: float
    progress: float
    missing: list[str]
    last_sample: SampleSummary | None
    # On one speaker's status (enroll, get); None in lists, where it is not worked out.
    warnings: list[str] | None = None

    @property
    def complete(self) -> bool:
        return self.status == SpeakerStatus.COMPLETE


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
        voices: TenantVoices | None = None,
        complete_threshold: float = float("inf"),
        store_audio: bool = False,
        twins: bool = False,
        indexed_through: Callable[[], int] | None = None,
    ) -> None:
        """`twins`: give each wideband sample its narrowband twin (`service.audio.band`).
        `indexed_through`: the change up to which every change is in `voices`' index (the
        follower's floor); speakers changed after it are checked from the database."""
        self.store = store
        self.frontend = frontend
        self.embed = embed
        self.model_sha256 = model_sha256
        self.policy = policy
        self.limits = limits
        self.after_commit = after_commit
        self.voices = voices
        self.complete_threshold = complete_threshold
        self.store_audio = store_audio
        self.twins = twins
        self.indexed_through = indexed_through

    def enroll(
        self, tenant_id: int, speaker_id: str, audio: AudioInput, cancel: Cancellation | None = None
    ) -> EnrollmentStatus:
        prepared = self.frontend.load(audio, self.limits, cancel, channels=True)
        speech = prepared.speech_wave()
        # Only the database transaction needs the fingerprint: it is made while the model runs.
        fingerprinted = beside(fingerprint, prepared.wave)
        band = band_of(prepared.source_rate, speech)
        self._check_one_voice(tenant_id, prepared, band, cancel)
        vector, twin = self._vectors(speech, band, cancel)
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
            fingerprint=fingerprinted.result(),
            narrow_vector=twin,
        )
        with self.store.transaction() as tx:
            if self.voices is not None:  # the tenant's other recordings are checked
                tx.lock_tenant(tenant_id)  # before the speaker's row: one order, no deadlock
            speaker = tx.lock_speaker(tenant_id, speaker_id, create=True)
            assert speaker is not None
            earlier = [s for s in tx.samples(speaker.id) if s.model_sha256 == self.model_sha256]
            rules.check_new_sample(
                vector,
                earlier,
                self.policy,
                sample.fingerprint,
                self._voice(tenant_id, speaker, band, prepared.speech_seconds),
                band,
            )
            self._check_other_speakers(tx, tenant_id, speaker.id, vector, sample.fingerprint)
            tx.add_sample(speaker.id, sample)
            record = self._write_aggregates(tx, speaker, [*earlier, self._as_record(sample, speaker)])
            tx.log_change(tenant_id, speaker.id, ChangeKind.SAMPLE_ADDED)
        self._committed()
        last = SampleSummary(sample.sample_id, sample.speech_seconds, sample.snr_db)
        return self._status(record, last, self._warnings(record))

    def status(self, tenant_id: int, speaker_id: str) -> EnrollmentStatus:
        speaker = self._existing(tenant_id, speaker_id)
        last = self.store.latest_sample(speaker.id)
        summary = SampleSummary(last.sample_id, last.speech_seconds, last.snr_db) if last else None
        return self._status(speaker, summary, self._warnings(speaker))

    def list_speakers(
        self, tenant_id: int, offset: int = 0, limit: int | None = None
    ) -> tuple[list[EnrollmentStatus], int]:
        speakers = self.store.list_speakers(tenant_id, offset=offset, limit=limit)
        latest = self.store.latest_samples([s.id for s in speakers])
        return [self._status(s, latest.get(s.id)) for s in speakers], self.store.count_speakers(tenant_id)

    def delete_speaker(self, tenant_id: int, speaker_id: str) -> None:
        with self.store.transaction() as tx:
            speaker = tx.lock_speaker(tenant_id, speaker_id, create=False)
            if speaker is None:
                raise SpeakerNotFound(f"Speaker {speaker_id!r} not found")
            tx.delete_speaker(speaker.id)
            tx.log_change(tenant_id, speaker.id, ChangeKind.SPEAKER_DELETED)
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
                tx.log_change(tenant_id, speaker.id, ChangeKind.SAMPLE_REMOVED)
            else:
                # A speaker without samples is no speaker: gone as if deleted, so it is neither
                # listed nor a candidate, and its id is free for a new enrollment.
                tx.delete_speaker(speaker.id)
                tx.log_change(tenant_id, speaker.id, ChangeKind.SPEAKER_DELETED)
        self._committed()

    # --- helpers ---------------------------------------------------------------------------------

    def _vectors(
        self, speech: np.ndarray, band: Band, cancel: Cancellation | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The sample's vector and, for wideband speech with twins on, its narrowband twin: both
        waves in one bounded embedding call. A narrowband sample's own vector is its twin (None)."""
        if not self.twins or band != Band.WIDE:
            return rules.normalise(self.embed([speech], cancel)[0]), None
        vectors = self.embed([speech, telephone_band(speech)], cancel)
        return rules.normalise(vectors[0]), rules.normalise(vectors[1])

    def _voice(
        self, tenant_id: int, speaker: SpeakerRecord, band: Band = Band.WIDE, seconds: float | None = None
    ) -> tuple[rules.VoiceScore, float] | None:
        """The voice check for a new sample of `speaker` heard through `band` (holding `seconds` of
        speech): the decision rule in its tenant and band, at the enrollment threshold, or at the
        verify threshold once the speaker is complete."""
        if self.voices is None:
            return None
        voices = self.voices
        least = (
            self.complete_threshold if speaker.status == SpeakerStatus.COMPLETE else self.policy.voice_check
        )
        return (lambda vector, voiceprint: voices.score(tenant_id, vector, voiceprint, band, seconds)), least

    def _check_one_voice(
        self, tenant_id: int, prepared: PreparedAudio, band: Band, cancel: Cancellation | None = None
    ) -> None:
        """Refuse a clip whose channels (those with enough speech each) hold different voices: mixed,
        two people would make one voiceprint that is neither's."""
        least_samples = self.limits.min_speech_seconds * MODEL_RATE
        voiced = [wave for wave in prepared.channel_speech if len(wave) >= least_samples]
        if len(voiced) < 2 or self.voices is None:
            return
        voices = self.voices
        vectors = [rules.normalise(v) for v in self.embed(voiced, cancel)]
        rules.check_one_voice(
            vectors, lambda a, b: voices.score(tenant_id, a, b, band), self.policy.voice_check
        )

    def _check_other_speakers(
        self, tx: Transaction, tenant_id: int, speaker_row: int, vector: np.ndarray, fp: bytes | None
    ) -> None:
        """Refuse a recording another speaker of the tenant already has: the same recording under
        many ids would fill the tenant's cohort with one voice. Candidates: the samples of the
        speakers nearest by voiceprint (an index search), never every sample of the tenant, and the
        speakers changed since the index was last brought up to date: an enrollment of the same
        recording committed a moment ago (on this replica, before its catch-up; on another, within
        the follow interval) is in the database, under the tenant's lock, if not yet in the index."""
        if self.voices is None:
            return
        nearest = self.voices.nearest(tenant_id, vector, self.policy.copy_search_limit + 1)
        recent = tx.changed_speakers(tenant_id, self.indexed_through()) if self.indexed_through else []
        candidates = dict.fromkeys([*(entry.speaker_id for entry, _ in nearest), *recent])
        others = [speaker for speaker in candidates if speaker != speaker_row]
        if others:
            recordings = tx.recordings(tenant_id, others, self.model_sha256)
            rules.check_other_speakers(vector, fp, recordings, self.policy)

    def _warnings(self, speaker: SpeakerRecord) -> list[str]:
        if self.voices is None or speaker.centroid is None:
            return []
        closest = self.voices.closest_other(speaker.tenant_id, speaker.id, speaker.centroid)
        return [SIMILAR_VOICE_WARNING] if closest is not None and closest >= self.policy.similar_voice else []

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
        return sample.record(speaker.updated_at)

    def _existing(self, tenant_id: int, speaker_id: str) -> SpeakerRecord:
        speaker = self.store.get_speaker(tenant_id, speaker_id)
        if speaker is None:
            raise SpeakerNotFound(f"Speaker {speaker_id!r} not found")
        return speaker

    def _status(
        self, speaker: SpeakerRecord, last: SampleSummary | None, warnings: list[str] | None = None
    ) -> EnrollmentStatus:
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
            warnings=warnings,
        )
