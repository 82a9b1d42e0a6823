"""The SQL store: implements `service.enrollment.ports.Store` and the key/tenant queries."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import Engine, delete, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

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
from service.storage.tables import ApiKey, Change, Sample, Speaker, Tenant, utcnow


def to_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def from_bytes(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def _vector_or_none(blob: bytes | None) -> np.ndarray | None:
    return from_bytes(blob) if blob is not None else None


def _speaker(row: Speaker) -> SpeakerRecord:
    return SpeakerRecord(
        id=row.id,
        tenant_id=row.tenant_id,
        external_id=row.external_id,
        status=SpeakerStatus(row.status),
        sample_count=row.sample_count,
        speech_seconds=row.speech_seconds,
        spread=row.spread,
        centroid=from_bytes(row.centroid) if row.centroid is not None else None,
        model_sha256=row.model_sha256,
        created_at=row.created_at,
        updated_at=row.updated_at,
        narrow_centroid=_vector_or_none(row.narrow_centroid),
    )


def _sample(row: Sample) -> SampleRecord:
    return SampleRecord(
        sample_id=row.sample_id,
        vector=from_bytes(row.vector),
        model_sha256=row.model_sha256,
        speech_seconds=row.speech_seconds,
        duration_seconds=row.duration_seconds,
        snr_db=row.snr_db,
        created_at=row.created_at,
        fingerprint=row.fingerprint,
        narrow_vector=_vector_or_none(row.narrow_vector),
    )


# The first key of PostgreSQL's two-key advisory locks that stand for tenants (SqlTransaction.lock_tenant).
TENANT_LOCKS = 0x5350


class SqlTransaction:
    def __init__(self, session: Session) -> None:
        self.s = session

    def lock_speaker(self, tenant_id: int, external_id: str, *, create: bool) -> SpeakerRecord | None:
        query = (
            select(Speaker)
            .where(Speaker.tenant_id == tenant_id, Speaker.external_id == external_id)
            .with_for_update()
        )
        row = self.s.scalars(query).one_or_none()
        if row is None and create:
            try:
                with self.s.begin_nested():
                    self.s.add(Speaker(tenant_id=tenant_id, external_id=external_id))
            except IntegrityError:
                pass  # a concurrent transaction created it; lock theirs below
            row = self.s.scalars(query).one()
        return _speaker(row) if row is not None else None

    def samples(self, speaker_id: int) -> list[SampleRecord]:
        rows = self.s.scalars(select(Sample).where(Sample.speaker_id == speaker_id).order_by(Sample.id))
        return [_sample(r) for r in rows]

    def recordings(
        self, tenant_id: int, speaker_ids: Sequence[int], model_sha256: str
    ) -> list[StoredRecording]:
        if not speaker_ids:
            return []
        rows = self.s.execute(
            select(Sample.speaker_id, Sample.vector, Sample.fingerprint)
            .join(Speaker, Speaker.id == Sample.speaker_id)
            .where(
                Speaker.tenant_id == tenant_id,
                Sample.speaker_id.in_(list(speaker_ids)),
                Sample.model_sha256 == model_sha256,
                Sample.fingerprint.is_not(None),
            )
        )
        return [StoredRecording(sid, from_bytes(vector), fp) for sid, vector, fp in rows if fp]

    def lock_tenant(self, tenant_id: int) -> None:
        if self.s.get_bind().dialect.name == "postgresql":
            # Enrollments of one tenant queue here one at a time (each holds it a few ms): waited
            # for up to 4x the session's lock timeout (0: no limit), which a queue of healthy ones
            # does not reach; a stalled holder is ended by its idle-in-transaction timeout first.
            setting = text("SELECT setting::int FROM pg_settings WHERE name = 'lock_timeout'")
            limit_ms = int(self.s.execute(setting).scalar_one())  # this session's, in ms
            if limit_ms:
                self.s.execute(select(func.set_config("lock_timeout", str(4 * limit_ms), True)))
            self.s.execute(select(func.pg_advisory_xact_lock(TENANT_LOCKS, tenant_id)))
            if limit_ms:
                self.s.execute(select(func.set_config("lock_timeout", str(limit_ms), True)))
        # SQLite: BEGIN IMMEDIATE already holds the one write lock for the whole transaction.

    def changed_speakers(self, tenant_id: int, after_seq: int) -> list[int]:
        rows = self.s.scalars(
            select(Change.speaker_id).where(Change.tenant_id == tenant_id, Change.seq > after_seq).distinct()
        )
        return list(rows)

    def add_sample(self, speaker_id: int, sample: NewSample) -> None:
        self.s.add(
            Sample(
                sample_id=sample.sample_id,
                speaker_id=speaker_id,
                vector=to_bytes(sample.vector),
                narrow_vector=to_bytes(sample.narrow_vector) if sample.narrow_vector is not None else None,
                model_sha256=sample.model_sha256,
                speech_seconds=sample.speech_seconds,
                duration_seconds=sample.duration_seconds,
                snr_db=sample.snr_db,
                clipped_fraction=sample.clipped_fraction,
                source_rate=sample.source_rate,
                audio=sample.audio,
                fingerprint=sample.fingerprint,
            )
        )
        self.s.flush()

    def stored_audio(self, speaker_id: int) -> list[tuple[str, bytes, int]]:
        rows = self.s.execute(
            select(Sample.sample_id, Sample.audio, Sample.source_rate)
            .where(Sample.speaker_id == speaker_id, Sample.audio.is_not(None))
            .order_by(Sample.id)
        )
        return [(sid, audio, rate) for sid, audio, rate in rows if audio]

    def set_twin(self, sample_id: str, narrow_vector: np.ndarray | None) -> None:
        row = self.s.scalars(select(Sample).where(Sample.sample_id == sample_id)).one()
        row.narrow_vector = to_bytes(narrow_vector) if narrow_vector is not None else None
        self.s.flush()

    def remove_sample(self, speaker_id: int, sample_id: str) -> bool:
        result = self.s.execute(
            delete(Sample).where(Sample.speaker_id == speaker_id, Sample.sample_id == sample_id)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def update_speaker(self, speaker_id: int, aggregates: Aggregates) -> SpeakerRecord:
        row = self.s.get_one(Speaker, speaker_id)
        row.status = aggregates.status
        row.sample_count = aggregates.sample_count
        row.speech_seconds = aggregates.speech_seconds
        row.spread = aggregates.spread
        row.centroid = to_bytes(aggregates.centroid) if aggregates.centroid is not None else None
        row.model_sha256 = aggregates.model_sha256
        narrow = aggregates.narrow_centroid
        row.narrow_centroid = to_bytes(narrow) if narrow is not None else None
        row.updated_at = utcnow()
        self.s.flush()
        return _speaker(row)

    def delete_speaker(self, speaker_id: int) -> None:
        # Explicit sample delete: SQLite only cascades with foreign_keys on, so do not rely on it.
        self.s.execute(delete(Sample).where(Sample.speaker_id == speaker_id))
        self.s.execute(delete(Speaker).where(Speaker.id == speaker_id))

    def log_change(self, tenant_id: int, speaker_id: int, kind: ChangeKind) -> None:
        self.s.add(Change(tenant_id=tenant_id, speaker_id=speaker_id, kind=kind))


@dataclass(frozen=True)
class TenantKey:
    tenant_id: int
    tenant: str
    key_id: str


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    tenant: str
    created_at: datetime
    revoked: bool


def hash_key(key: str) -> str:
    # Keys are 256-bit random secrets, so a plain digest is enough (no password stretching).
    return hashlib.sha256(key.encode()).hexdigest()


class SqlStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[SqlTransaction]:
        with self._sessions() as session, session.begin():
            yield SqlTransaction(session)

    # --- reads -----------------------------------------------------------------------------------

    def get_speaker(self, tenant_id: int, external_id: str) -> SpeakerRecord | None:
        with self._sessions() as s:
            row = s.scalars(
                select(Speaker).where(Speaker.tenant_id == tenant_id, Speaker.external_id == external_id)
            ).one_or_none()
            return _speaker(row) if row is not None else None

    def list_speakers(
        self, tenant_id: int, *, offset: int = 0, limit: int | None = None
    ) -> list[SpeakerRecord]:
        with self._sessions() as s:
            query = select(Speaker).where(Speaker.tenant_id == tenant_id).order_by(Speaker.external_id)
            rows = s.scalars(query.offset(offset).limit(limit))
            return [_speaker(r) for r in rows]

    def speaker_keys(self) -> list[tuple[int, str]]:
        """(tenant id, speakerId) of every speaker, for maintenance."""
        with self._sessions() as s:
            return [(t, e) for t, e in s.execute(select(Speaker.tenant_id, Speaker.external_id))]

    def count_speakers(self, tenant_id: int) -> int:
        with self._sessions() as s:
            return s.scalar(select(func.count()).where(Speaker.tenant_id == tenant_id)) or 0

    def latest_sample(self, speaker_id: int) -> SampleRecord | None:
        with self._sessions() as s:
            row = s.scalars(
                select(Sample).where(Sample.speaker_id == speaker_id).order_by(Sample.id.desc()).limit(1)
            ).one_or_none()
            return _sample(row) if row is not None else None

    def latest_samples(self, speaker_ids: Sequence[int]) -> dict[int, SampleSummary]:
        """Each speaker's latest sample, for a page of a list: one query, no vectors or audio read."""
        if not speaker_ids:
            return {}
        latest = (
            select(func.max(Sample.id)).where(Sample.speaker_id.in_(speaker_ids)).group_by(Sample.speaker_id)
        )
        with self._sessions() as s:
            rows = s.execute(
                select(Sample.speaker_id, Sample.sample_id, Sample.speech_seconds, Sample.snr_db).where(
                    Sample.id.in_(latest)
                )
            )
            return {row[0]: SampleSummary(row[1], row[2], row[3]) for row in rows}

    def index_entries(
        self, speaker_ids: Iterable[int] | None = None, model_sha256: str | None = None
    ) -> list[IndexEntry]:
        query = select(
            Speaker.id,
            Speaker.tenant_id,
            Speaker.external_id,
            Speaker.status,
            Speaker.centroid,
            Speaker.narrow_centroid,
        ).where(Speaker.centroid.is_not(None))
        if speaker_ids is not None:
            query = query.where(Speaker.id.in_(list(speaker_ids)))
        if model_sha256 is not None:
            query = query.where(Speaker.model_sha256 == model_sha256)
        with self._sessions() as s:
            return [
                IndexEntry(
                    speaker_id=sid,
                    tenant_id=tid,
                    external_id=ext,
                    complete=status == SpeakerStatus.COMPLETE,
                    centroid=from_bytes(blob),
                    narrow_centroid=_vector_or_none(narrow),
                )
                for sid, tid, ext, status, blob, narrow in s.execute(query)
                if blob is not None
            ]

    def changes_since(self, seq: int, limit: int = 10_000) -> list[ChangeRecord]:
        with self._sessions() as s:
            rows = s.execute(
                select(Change.seq, Change.tenant_id, Change.speaker_id)
                .where(Change.seq > seq)
                .order_by(Change.seq)
                .limit(limit)
            )
            return [ChangeRecord(seq=a, tenant_id=b, speaker_id=c) for a, b, c in rows]

    def last_change_seq(self) -> int:
        with self._sessions() as s:
            return s.scalar(select(func.max(Change.seq))) or 0

    def purge_changes(self, before: datetime) -> int:
        # The newest row stays whatever its age: SQLite numbers a row max(seq) + 1, so an empty
        # table would hand out numbers below every follower's floor again.
        newest = select(func.max(Change.seq)).scalar_subquery()
        with self._sessions() as s, s.begin():
            purged = s.execute(delete(Change).where(Change.created_at < before, Change.seq < newest))
            return int(purged.rowcount or 0)  # type: ignore[attr-defined]

    def keeps_audio(self) -> bool:
        """Whether any sample kept its audio (`SPK_ENROLLMENT__STORE_AUDIO`)."""
        with self._sessions() as s:
            return s.scalar(select(Sample.id).where(Sample.audio.is_not(None)).limit(1)) is not None

    def counts(self) -> dict[str, int]:
        """Row counts for readiness and tests: tenants, speakers, samples."""
        with self._sessions() as s:
            return {
                "tenants": s.scalar(select(func.count()).select_from(Tenant)) or 0,
                "speakers": s.scalar(select(func.count()).select_from(Speaker)) or 0,
                "samples": s.scalar(select(func.count()).select_from(Sample)) or 0,
            }

    def ping(self) -> None:
        """One read on a pooled connection outside any session: on SQLite a session's first
        statement takes the write lock (BEGIN IMMEDIATE), which a probe must neither take nor wait
        for behind a long write."""
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("SELECT 1")
            cursor.fetchall()
            cursor.close()
        finally:
            raw.close()

    # --- tenants and keys ------------------------------------------------------------------------

    def create_key(self, tenant: str) -> tuple[str, str]:
        """Create the tenant if needed and a new key for it. Returns (key_id, secret key)."""
        secret = "sk_" + secrets.token_urlsafe(32)
        key_id = "key_" + secrets.token_hex(6)
        query = select(Tenant.id).where(Tenant.name == tenant)
        with self._sessions() as s, s.begin():
            tenant_id = s.scalar(query)
            if tenant_id is None:
                # Under READ COMMITTED (PostgreSQL) two new keys for one new tenant both find no
                # tenant; the second insert then fails on the unique name and uses the first's row.
                try:
                    with s.begin_nested():
                        s.add(Tenant(name=tenant))
                except IntegrityError:
                    pass
                tenant_id = s.scalars(query).one()
            s.add(ApiKey(key_id=key_id, tenant_id=tenant_id, key_hash=hash_key(secret)))
        return key_id, secret

    def list_keys(self) -> list[KeyInfo]:
        with self._sessions() as s:
            rows = s.execute(
                select(ApiKey.key_id, Tenant.name, ApiKey.created_at, ApiKey.revoked_at)
                .join(Tenant, Tenant.id == ApiKey.tenant_id)
                .order_by(ApiKey.id)
            )
            return [KeyInfo(k, t, c, r is not None) for k, t, c, r in rows]

    def revoke_key(self, key_id: str) -> bool:
        with self._sessions() as s, s.begin():
            row = s.scalars(select(ApiKey).where(ApiKey.key_id == key_id)).one_or_none()
            if row is None:
                return False
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return True

    def key_active(self, key_id: str) -> bool:
        """Whether `key_id` is still a key (not revoked): an open stream asks before each chunk."""
        with self._sessions() as s:
            revoked = s.execute(select(ApiKey.revoked_at).where(ApiKey.key_id == key_id)).one_or_none()
        return revoked is not None and revoked[0] is None

    def has_active_key(self) -> bool:
        with self._sessions() as s:
            return s.scalar(select(func.count()).where(ApiKey.revoked_at.is_(None))) != 0

    def authenticate(self, key: str) -> TenantKey | None:
        digest = hash_key(key)
        with self._sessions() as s:
            found = s.execute(
                select(ApiKey.key_hash, ApiKey.key_id, Tenant.id, Tenant.name)
                .join(Tenant, Tenant.id == ApiKey.tenant_id)
                .where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
            ).one_or_none()
        # The lookup is by digest; compare again in constant time so timing says nothing more.
        if found is None or not hmac.compare_digest(found[0], digest):
            return None
        return TenantKey(tenant_id=found[2], tenant=found[3], key_id=found[1])
