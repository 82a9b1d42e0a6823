"""SQLAlchemy tables: the store of record. ORM rows never leave `service.storage`."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from service.enrollment import speaker_ids
from service.enrollment.ports import SpeakerStatus

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    # Key of the HMAC signature on this tenant's webhooks (the receiver holds it too); made on first use.
    webhook_secret: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), unique=True)  # public handle, e.g. for revoke
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the secret key
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Speaker(Base):
    __tablename__ = "speakers"
    __table_args__ = (UniqueConstraint("tenant_id", "external_id", name="uq_speaker_tenant_external"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str] = mapped_column(String(speaker_ids.MAX_LENGTH))  # the client's speakerId
    status: Mapped[str] = mapped_column(String(16), default=SpeakerStatus.ENROLLING.value)
    sample_count: Mapped[int] = mapped_column(Integer, default=0)
    speech_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    spread: Mapped[float] = mapped_column(Float, default=0.0)
    # Normalised mean of the current model's sample vectors (float32 bytes); what identify scores.
    centroid: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    model_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Normalised mean of the samples' narrowband twins (else their vectors): what calls are scored
    # against. NULL while no sample has a twin: the centroid serves both bands.
    narrow_centroid: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    samples: Mapped[list[Sample]] = relationship(
        back_populates="speaker", cascade="all, delete-orphan", passive_deletes=True
    )


class Sample(Base):
    __tablename__ = "samples"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sample_id: Mapped[str] = mapped_column(String(36), unique=True)  # public id (uuid4 hex)
    speaker_id: Mapped[int] = mapped_column(ForeignKey("speakers.id", ondelete="CASCADE"), index=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, L2-normalised, model's dim
    # The vector of a wideband sample's speech through a simulated telephone line (same format);
    # NULL for narrowband samples and samples enrolled before twins: their vector serves both bands.
    narrow_vector: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    model_sha256: Mapped[str] = mapped_column(String(64))
    speech_seconds: Mapped[float] = mapped_column(Float)
    duration_seconds: Mapped[float] = mapped_column(Float)
    snr_db: Mapped[float] = mapped_column(Float)
    clipped_fraction: Mapped[float] = mapped_column(Float)
    source_rate: Mapped[int] = mapped_column(Integer)
    # Content fingerprint (sign bits of band-energy changes) for near-copy checks; not audio.
    fingerprint: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    audio: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # only if turned on
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    speaker: Mapped[Speaker] = relationship(back_populates="samples")


class Change(Base):
    """Append-only log: one row per committed enroll or delete, in the same transaction.

    Each replica's index follows this log past the highest `seq` it has applied.
    """

    __tablename__ = "changes"
    __table_args__ = (Index("ix_changes_speaker", "speaker_id"),)

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(BigId)
    speaker_id: Mapped[int] = mapped_column(BigId)  # no FK: the speaker may be gone
    kind: Mapped[str] = mapped_column(String(16))  # a ChangeKind value
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    """An async request, written before its 202. Two steps, each claimed under a lease: running the
    job (`state`), then delivering its result to the webhook (`delivery`)."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "request_id", name="uq_job_tenant_request"),
        Index("ix_jobs_state", "state"),
        Index("ix_jobs_delivery", "delivery"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    request_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))  # "identify", "diarize"
    api: Mapped[str] = mapped_column(String(256))  # the path the client called
    state: Mapped[str] = mapped_column(String(16), default="queued")  # queued, running, completed, failed
    params: Mapped[str] = mapped_column(Text)  # JSON: encoding, sampleRate, speakerIds, url, ...
    audio: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # dropped when the job ends
    webhook: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: what the webhook gets
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    runs: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(64), nullable=True)  # holder of the lease
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    delivery: Mapped[str] = mapped_column(String(16), default="none")  # none, pending, delivered, failed
    delivery_attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_delivery_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    first_delivery_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class WebhookAttempt(Base):
    """Every delivery attempt of a job's result, kept as long as the job."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(String(256), nullable=True)
    seconds: Mapped[float] = mapped_column(Float)
    delivered: Mapped[bool] = mapped_column(Boolean)
