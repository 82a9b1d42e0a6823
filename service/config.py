"""The one Settings object. Built in `create_app()` (or by the CLI), never at import time.

Environment variables use the prefix ``SPK_``; nested groups use ``__``, e.g.
``SPK_ENROLLMENT__MIN_SAMPLES=4`` or ``SPK_AUDIO__MAX_SECONDS=120``.
The thresholds' defaults and the measurements behind them are in `service/calibration.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from service import calibration as cal

DEFAULT_DATA_DIR = Path("data")


class AudioSettings(BaseModel):
    max_request_bytes: int = Field(25 * 1024 * 1024, ge=1, description="413 beyond this body size")
    max_seconds: float = Field(300.0, gt=0, description="longest audio accepted, seconds")
    decode_timeout_s: float = Field(20.0, gt=0, description="wall-clock budget for one decode")
    min_speech_seconds: float = Field(
        cal.MIN_SPEECH_SECONDS, ge=0, description="net speech (VAD) a clip must hold to be used"
    )
    max_clipped_fraction: float = Field(
        cal.MAX_CLIPPED_FRACTION, ge=0, le=1, description="fraction of samples at full scale"
    )
    min_snr_db: float = Field(cal.MIN_SNR_DB, description="speech-to-non-speech energy, dB")
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="silero-vad speech probability threshold")
    vad_narrowband_threshold: float | None = Field(
        cal.VAD_NARROWBAND_THRESHOLD,
        gt=0,
        lt=1,
        description="when set, clips recorded at 8 kHz or less go to silero's 8 kHz network at this "
        "threshold; unset, its 16 kHz network hears every clip (measured, not adopted: see "
        "service/calibration.py)",
    )


class EnrollmentSettings(BaseModel):
    min_samples: int = Field(cal.MIN_SAMPLES, ge=1, description="samples needed for Complete")
    min_total_speech_seconds: float = Field(
        cal.MIN_TOTAL_SPEECH_SECONDS, ge=0, description="net speech over all samples for Complete"
    )
    min_spread: float = Field(
        cal.MIN_SPREAD, description="mean cosine distance of samples to their centroid for Complete"
    )
    max_spread: float = Field(
        cal.MAX_SPREAD,
        description="a sample that would widen the spread past this is refused",
    )
    duplicate_cosine: float = Field(
        cal.DUPLICATE_COSINE, description="a new sample this close to an old one is a near-copy"
    )
    duplicate_fingerprint: float = Field(
        cal.DUPLICATE_FINGERPRINT, description="content-fingerprint agreement that marks the same recording"
    )
    voice_check: float = Field(
        cal.VOICE_CHECK,
        description="a new sample scoring below this (normalised units, against the speaker's earlier "
        "samples) is refused as another voice; a complete speaker's new samples must pass the verify "
        "threshold",
    )
    copy_search_cosine: float = Field(
        cal.COPY_SEARCH_COSINE,
        description="samples of other speakers compared by fingerprint with a new one need this cosine to it",
    )
    copy_search_limit: int = Field(
        cal.COPY_SEARCH_LIMIT,
        ge=0,
        description="speakers searched, and of their samples those compared, at most, per new sample",
    )
    similar_voice: float = Field(
        cal.SIMILAR_VOICE,
        description="a speaker's status warns when its voiceprint scores this against another speaker's "
        "(normalised units, as identify scores against the whole tenant)",
    )
    store_audio: bool = Field(False, description="keep the decoded 16 kHz audio of each sample")
    narrowband_twins: bool = Field(
        True,
        description="give each wideband sample a second vector of its speech through a simulated "
        "telephone line, which calls (narrowband clips) are scored against",
    )


class IdentifySettings(BaseModel):
    threshold: float = Field(
        cal.IDENTIFY_THRESHOLD, description="open-set accept threshold, in normalised score units"
    )
    verify_threshold: float = Field(cal.VERIFY_THRESHOLD, description="verify accept threshold (units)")
    domain_centring: bool = Field(True, description="score after removing the tenant's domain mean")
    prior_weight: float = Field(cal.PRIOR_WEIGHT, description="pseudo-speakers of the prior in that mean")
    pair_mean: float = Field(cal.PAIR_MEAN, description="prior mean of impostor pair scores")
    pair_sd: float = Field(cal.PAIR_SD, gt=0, description="prior sd of impostor pair scores")
    prior_strength: float = Field(
        cal.PRIOR_STRENGTH, ge=0, description="speakers the impostor prior counts as in a tenant's level"
    )
    score_unit: float = Field(cal.SCORE_UNIT, gt=0, description="cosine per normalised score unit")
    gallery_tail: float = Field(
        cal.GALLERY_TAIL,
        gt=0,
        lt=1,
        description="tail probability the level keeps as the number of speakers compared against grows",
    )
    short_probe_s: float = Field(
        cal.SHORT_PROBE_S,
        ge=0,
        description="clips with less speech than this gain the duration term (0: off)",
    )
    short_probe_slope: float = Field(
        cal.SHORT_PROBE_SLOPE, ge=0, description="units the duration term adds per ln step of speech below it"
    )
    min_speech_seconds: float = Field(
        cal.MIN_IDENTIFY_SPEECH_SECONDS, ge=0, description="net speech a clip to identify must hold"
    )


class BatchingSettings(BaseModel):
    enabled: Literal["auto", "on", "off"] = Field(
        "auto", description="dynamic batching of concurrent requests; auto = on a GPU only"
    )
    max_batch: int = Field(64, ge=1, description="waveforms per forward pass")
    max_audio_seconds: float = Field(640.0, gt=0, description="padded audio per forward pass")
    max_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits to fill")
    max_queue: int = Field(2048, ge=1, description="waiting waveforms before 429")
    workers: int = Field(
        2, ge=1, description="batches in flight: one is padded and copied while another is on the GPU"
    )


class EmbeddingSettings(BaseModel):
    """How one request's audio reaches the model: bounded calls, whatever the clip's length."""

    chunk_seconds: float = Field(
        16.0,
        gt=0,
        description="speech longer than this is embedded in near-equal pieces no longer than it, whose "
        "vectors are averaged; part of what a vector means, so the same on every device",
    )
    max_batch: int = Field(32, ge=1, description="waveforms of one request per model call on a CPU")
    max_batch_seconds: float = Field(
        16.0,
        gt=0,
        description="audio of one request per model call on a CPU (at least chunk_seconds; two pieces of "
        "one length, which pad nothing, share a call past it); a call takes about 11 MB of memory per "
        "second of audio at its peak",
    )


class DatabaseSettings(BaseModel):
    """The connections of one process (PostgreSQL; SQLite opens what it needs)."""

    pool_size: int = Field(10, ge=1, le=1000, description="connections kept open per process")
    max_overflow: int = Field(20, ge=0, le=1000, description="more connections opened under load")
    pool_timeout_s: float = Field(
        10.0, gt=0, le=300, description="a request waiting this long for a free connection gets a 503"
    )
    lock_timeout_s: float = Field(
        5.0,
        ge=0,
        le=600,
        description="PostgreSQL: a statement waiting this long for a lock (a speaker's row) is stopped and "
        "its request answered 503; a tenant's enrollment lock is waited for up to 4x this; 0 = no limit",
    )
    idle_in_transaction_timeout_s: float = Field(
        15.0,
        ge=0,
        le=3600,
        description="PostgreSQL: a session idle this long inside a transaction (its client stalled or cut "
        "off) is ended by the server, releasing its locks; its transaction rolls back; 0 = no limit",
    )


class IndexSettings(BaseModel):
    ivf_threshold: int = Field(
        200_000,
        ge=1,
        description="speakers in all from which search is approximate (faiss IVF of 4-bit PQ codes over "
        "sqrt(n)/2 lists, shortlist re-scored exactly); below it every search is exact",
    )
    nprobe: int = Field(
        400,
        ge=1,
        description="IVF lists probed per query, of sqrt(n)/2 at the last build (500 at 1M speakers): "
        "recall against speed; tuned for up to 1M speakers, raise it with sqrt(n) beyond that",
    )


class HttpSettings(BaseModel):
    header_timeout_s: float = Field(
        10.0, gt=0, description="a connection whose request headers are not complete by then is closed (408)"
    )
    body_idle_timeout_s: float = Field(30.0, gt=0, description="408 when the body stops coming this long")
    body_timeout_s: float = Field(60.0, gt=0, description="408 when the whole body takes longer")


class EgressSettings(BaseModel):
    """Outbound connections: fetching a request's `url`, delivering webhooks (service/egress.py)."""

    allowed_hosts: str = Field(
        "",
        description="comma-separated host names or CIDR ranges, `*` for any public address; fetching a `url` "
        "is off while empty; webhooks go to public addresses anyway, to private/loopback ones only if listed",
    )
    max_redirects: int = Field(5, ge=0, description="redirects followed when fetching a `url`")
    fetch_timeout_s: float = Field(60.0, gt=0, description="whole fetch of a `url`, redirects included")


class JobsSettings(BaseModel):
    """Async jobs (service/jobs/): claimed from the database, results delivered to webhooks."""

    enabled: bool = Field(True, description="run the job and webhook workers in this process")
    poll_seconds: float = Field(0.5, gt=0, description="how often an idle worker looks for work")
    lease_seconds: float = Field(
        30.0, gt=0, description="a job whose worker stops renewing its claim this long is claimed again"
    )
    max_runs: int = Field(3, ge=1, description="a job started this often without finishing fails")
    workers: int = Field(
        2,
        ge=1,
        description="jobs this process runs at once (their model work takes turns with requests'); "
        "a job waiting on a slow `url` holds one",
    )
    result_ttl_seconds: float = Field(
        7 * 24 * 3600.0, gt=0, description="finished jobs and their results are purged after this"
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="one webhook delivery attempt")
    webhook_workers: int = Field(8, ge=1, description="delivery attempts this process makes at once")
    webhook_per_host: int = Field(
        2, ge=1, description="of those, at most this many to one host: a receiver that hangs holds no more"
    )
    webhook_backoff_s: float = Field(2.0, gt=0, description="wait before the first retry; doubles")
    webhook_max_backoff_s: float = Field(600.0, gt=0, description="longest wait between attempts")
    webhook_retry_seconds: float = Field(
        24 * 3600.0, gt=0, description="attempts stop this long after the first (delivery failed)"
    )


class FrontendSettings(BaseModel):
    workers: int = Field(
        0,
        ge=0,
        description="processes that decode, resample and find speech, one clip each; 0 = in the server",
    )
    work_timeout_s: float = Field(
        120.0, gt=0, description="a worker still busy with one clip after this is killed and replaced (503)"
    )


class RealtimeSettings(BaseModel):
    """Realtime identification streams: gRPC (the hosted API's) and the native WebSocket."""

    grpc_port: int = Field(0, ge=0, le=65535, description="port of the gRPC server; 0 = off")
    max_streams_per_key: int = Field(4, ge=1, description="streams one API key may hold open at once")
    max_streams: int = Field(64, ge=1, description="streams the process serves at once, all keys together")
    idle_timeout_s: float = Field(30.0, gt=0, description="a stream that sends nothing this long is ended")
    context_seconds: float = Field(
        1.5,
        ge=0,
        description="audio before each chunk scored with it, so a turn that spans chunks is one stretch; "
        "the model work per chunk grows with it (3 s doubled the answer time of 3 s chunks)",
    )
    hold_margin: float = Field(
        2.0,
        ge=0,
        description="a voice heard within `hold_seconds` of the speaker last named, whose best candidate "
        "that speaker is, keeps the name at this many score units under the identify threshold; 0 = off",
    )
    hold_seconds: float = Field(3.0, ge=0, description="how long after a named stretch the name is held")
    hold_max_seconds: float = Field(
        cal.REALTIME_HOLD_MAX_S, ge=0, description="the longest stretch in a chunk that a name is held for"
    )
    min_voice_seconds: float = Field(
        cal.REALTIME_MIN_VOICE_S,
        gt=0,
        description="speech a voice of a stream's window holds at least; a shorter one joins the nearest",
    )
    max_chunk_seconds: float = Field(30.0, gt=0, description="longest chunk accepted")
    max_chunk_bytes: int = Field(8 * 1024 * 1024, ge=1, description="largest chunk (message or frame)")
    queue_chunks: int = Field(
        2, ge=1, description="chunks read ahead of the one being scored; a client that sends faster waits"
    )


class AuthSettings(BaseModel):
    rate_limit_per_minute: int = Field(600, ge=0, description="requests per key per minute; 0 = off")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SPK_", env_nested_delimiter="__", extra="ignore", protected_namespaces=()
    )

    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str = ""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    model_dir: Path | None = Field(
        None, description="an operator's own speechbrain ECAPA folder instead of the bundled one"
    )
    model_sha256: str | None = Field(None, description="expected sha256 of SPK_MODEL_DIR's weights")
    precision: Literal["auto", "fp32", "bf16", "fused-fp32", "fused-bf16", "fused-int8"] = Field(
        "auto",
        description="auto = the fastest path the hardware runs natively that passes the start-up "
        "self-check (cosine to fp32 on a built-in signal); fused-* = the rewritten model",
    )
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="run the fused model under torch.compile: auto = on a GPU only (on a CPU it "
        "costs minutes at start-up)",
    )
    torch_threads: int = Field(
        0,
        ge=0,
        description="0 = one per core on a CPU box; 1 on a GPU box, where the cores prepare one clip each",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: Annotated[
        Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"],
        BeforeValidator(lambda level: level.upper() if isinstance(level, str) else level),
    ] = "INFO"
    index_poll_seconds: float = Field(0.5, gt=0, description="how often the index follows the change log")
    metrics_token: SecretStr | None = Field(
        None,
        description="/metrics needs `Authorization: Bearer` with it; unset, /metrics answers loopback only",
    )
    heap_trim_seconds: float = Field(
        10.0, ge=0, description="how often freed heap memory is handed back to the OS; 0 = never"
    )

    audio: AudioSettings = AudioSettings()
    frontend: FrontendSettings = FrontendSettings()
    enrollment: EnrollmentSettings = EnrollmentSettings()
    identify: IdentifySettings = IdentifySettings()
    auth: AuthSettings = AuthSettings()
    http: HttpSettings = HttpSettings()
    batching: BatchingSettings = BatchingSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    index: IndexSettings = IndexSettings()
    database: DatabaseSettings = DatabaseSettings()
    egress: EgressSettings = EgressSettings()
    jobs: JobsSettings = JobsSettings()
    realtime: RealtimeSettings = RealtimeSettings()

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'speakerid.db').resolve()}"


def unknown_settings(environ: Mapping[str, str]) -> list[str]:
    """The SPK_ variables of `environ` that no setting reads: a typo (SPK_AUDIO__MAX_SECOND) would
    otherwise be ignored without a word. Groups may also be given whole as JSON (SPK_AUDIO)."""
    known: set[str] = set()
    for name, field in Settings.model_fields.items():
        top = f"SPK_{name.upper()}"
        known.add(top)
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            known.update(f"{top}__{sub.upper()}" for sub in group.model_fields)
    return sorted(k for k in environ if k.upper().startswith("SPK_") and k.upper() not in known)
