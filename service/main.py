"""`create_app(settings)`: the one place where the parts are wired together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence

import numpy as np
from fastapi import FastAPI

from service import __version__, console, logs, memory, metrics
from service.api import compat, diarize, docs, errors, health, jobs, native, stream
from service.api.deps import KeyRateLimiter, Runtime, Services, run_blocking
from service.api.middleware import BodyLimit, HeadAsGet, Metrics, SecurityHeaders
from service.audio.frontend import AudioFrontEnd
from service.audio.pipeline import QualityLimits
from service.concurrency import compute
from service.config import Settings
from service.diarization.service import DiarizationService
from service.egress import url_egress, webhook_egress
from service.embedding import weights
from service.embedding.batcher import BatchLimits, DynamicBatcher
from service.embedding.bounded import BoundedEmbedding, EmbedBudget
from service.embedding.ecapa import EcapaEmbedder, configure_threads, load_cohort, usable_cores
from service.enrollment.identification import IdentificationService, Thresholds
from service.enrollment.policy import EnrollmentPolicy
from service.enrollment.ports import Embedder, EmbedWaves, SpeakerIndex, Store
from service.enrollment.scoring import DecisionRule, Scorer
from service.enrollment.service import EnrollmentService
from service.enrollment.voices import TenantVoices
from service.jobs import handlers
from service.jobs.worker import JobWorker
from service.realtime import grpc_server
from service.realtime.session import StreamLimiter
from service.storage.database import check_migrated, make_engine, unavailable
from service.storage.index import BandedIndex
from service.storage.jobs import SqlJobStore
from service.storage.repository import SqlStore
from service.storage.sync import IndexFollower

log = logging.getLogger(__name__)


def load_embedder(settings: Settings) -> EcapaEmbedder:
    files = weights.resolve(settings.model_dir, settings.model_sha256)
    return EcapaEmbedder(files, settings.device, settings.precision, compile=settings.compile)


def enrollment_policy(settings: Settings) -> EnrollmentPolicy:
    e = settings.enrollment
    return EnrollmentPolicy(
        min_samples=e.min_samples,
        min_total_speech_seconds=e.min_total_speech_seconds,
        min_spread=e.min_spread,
        max_spread=e.max_spread,
        duplicate_cosine=e.duplicate_cosine,
        voice_check=e.voice_check,
        duplicate_fingerprint=e.duplicate_fingerprint,
        copy_search_cosine=e.copy_search_cosine,
        copy_search_limit=e.copy_search_limit,
        similar_voice=e.similar_voice,
    )


def _on_gpu(embedder: Embedder) -> bool:
    return embedder.device == "cuda"


def _batcher(
    settings: Settings, embedder: Embedder, embed_batch: Callable[[Sequence[np.ndarray]], np.ndarray]
) -> DynamicBatcher | None:
    b = settings.batching
    if b.enabled == "off" or (b.enabled == "auto" and not _on_gpu(embedder)):
        return None
    limits = BatchLimits(b.max_batch, b.max_audio_seconds, b.max_wait_ms, b.max_queue)
    batcher = DynamicBatcher(embed_batch, limits, workers=b.workers).start()
    metrics.watch_queue(batcher)
    return batcher


def _budget(settings: Settings, batched: bool) -> EmbedBudget:
    """One request's model calls: bounded for the host's memory on a CPU; through the GPU batcher,
    as large as its own limits (it cuts batches itself and the device holds the activations)."""
    e, b = settings.embedding, settings.batching
    if batched:
        return EmbedBudget(b.max_batch, max(b.max_audio_seconds, e.chunk_seconds), e.chunk_seconds)
    return EmbedBudget(e.max_batch, max(e.max_batch_seconds, e.chunk_seconds), e.chunk_seconds)


def banded_index(settings: Settings, dim: int) -> BandedIndex:
    """The speaker index, with a narrowband copy unless twins are turned off."""
    s = settings.index
    return BandedIndex(dim, s.ivf_threshold, s.nprobe, twins=settings.enrollment.narrowband_twins)


def use_cases(
    settings: Settings,
    *,
    store: Store,
    frontend: AudioFrontEnd,
    embed: EmbedWaves,
    model_sha256: str,
    index: SpeakerIndex,
    prior: np.ndarray,
    after_commit: Callable[[], object],
    indexed_through: Callable[[], int] | None = None,
) -> tuple[EnrollmentService, IdentificationService, DiarizationService]:
    """The use cases on the given parts, with the settings' thresholds; `prior` ``(dim,)`` is the
    mean of the model's training-speaker prototypes (the decision rule's prior domain mean)."""
    ident = settings.identify
    scorer = Scorer(
        DecisionRule(
            prior_mean=prior,
            prior_weight=ident.prior_weight,
            pair_mean=ident.pair_mean,
            pair_sd=ident.pair_sd,
            strength=ident.prior_strength,
            unit=ident.score_unit,
            centring=ident.domain_centring,
            short_s=ident.short_probe_s,
            short_slope=ident.short_probe_slope,
            gallery_tail=ident.gallery_tail,
        )
    )
    audio = settings.audio
    enrollment = EnrollmentService(
        store=store,
        frontend=frontend,
        embed=embed,
        model_sha256=model_sha256,
        policy=enrollment_policy(settings),
        limits=QualityLimits(audio.min_speech_seconds, audio.max_clipped_fraction, audio.min_snr_db),
        after_commit=after_commit,
        voices=TenantVoices(scorer, index),
        complete_threshold=ident.verify_threshold,
        store_audio=settings.enrollment.store_audio,
        twins=settings.enrollment.narrowband_twins,
        indexed_through=indexed_through,
    )
    # Identification answers noisy and clipped clips too (a loud call clips): the score decides
    # (see service.calibration). Only too little speech is refused.
    identify_limits = QualityLimits(ident.min_speech_seconds, 1.0, -math.inf)
    identification = IdentificationService(
        frontend=frontend,
        embed=embed,
        index=index,
        scorer=scorer,
        thresholds=Thresholds(ident.threshold, ident.verify_threshold),
        limits=identify_limits,
    )
    diarization = DiarizationService(frontend, embed, labels=identification, limits=identify_limits)
    return enrollment, identification, diarization


def build_services(settings: Settings, embedder: Embedder | None = None) -> Services:
    """Connect, check the schema, load and warm the model, build the index. Blocking."""
    url = settings.resolved_database_url()
    engine = make_engine(url, settings.database)
    check_migrated(engine, url)
    store = SqlStore(engine)
    if embedder is None:
        embedder = load_embedder(settings)
    on_gpu = _on_gpu(embedder)
    # On a GPU box torch's CPU work is the audio front end: one clip per core, one thread each.
    threads = configure_threads(settings.torch_threads or (1 if on_gpu else 0))
    # The count belongs to each OS thread: set it where the CPU's torch work runs, too.
    compute.run(configure_threads, threads)
    audio = settings.audio
    frontend = AudioFrontEnd(
        max_seconds=audio.max_seconds,
        decode_timeout_s=audio.decode_timeout_s,
        vad_threshold=audio.vad_threshold,
        vad_narrowband_threshold=audio.vad_narrowband_threshold,
        parallel=max(1, usable_cores() // threads) if on_gpu else 1,
        workers=settings.frontend.workers,
        work_timeout_s=settings.frontend.work_timeout_s,
    )
    index = banded_index(settings, embedder.dim)
    follower = IndexFollower(store, index, embedder.checksum)
    follower.rebuild()
    embed_batch = metrics.timed_embed_batch(embedder.embed_batch)
    batcher = _batcher(settings, embedder, embed_batch)
    if batcher is not None:
        embed_batch = batcher.embed_batch
    embed = BoundedEmbedding(embed_batch, _budget(settings, batcher is not None))
    metrics.watch_index(index)
    metrics.watch_model(embedder)
    cohort = load_cohort(embedder.files) if isinstance(embedder, EcapaEmbedder) else None
    prior = cohort.mean(axis=0) if cohort is not None else np.zeros(embedder.dim, dtype=np.float32)
    enrollment, identification, diarization = use_cases(
        settings,
        store=store,
        frontend=frontend,
        embed=embed,
        model_sha256=embedder.checksum,
        index=index,
        prior=prior,
        after_commit=follower.catch_up,
        indexed_through=lambda: follower.floor,
    )
    embedder.warmup()
    return Services(
        settings=settings,
        store=store,
        enrollment=enrollment,
        identification=identification,
        diarization=diarization,
        runtime=Runtime(
            engine=engine,
            embedder=embedder,
            index=index,
            follower=follower,
            batcher=batcher,
            stop_frontend=frontend.close,
        ),
        checks={"model": True, "database": True, "index": True},
        limiter=KeyRateLimiter(settings.auth.rate_limit_per_minute),
    )


def build_jobs(services: Services) -> JobWorker:
    """The async job kinds and their worker (started by the lifespan unless SPK_JOBS__ENABLED=false)."""
    settings = services.settings
    audio_of = handlers.fetcher(
        url_egress(settings.egress), settings.audio.max_request_bytes, settings.egress.fetch_timeout_s
    )
    ident = services.identification
    kinds = {
        "identify": handlers.identify(ident, audio_of),
        "diarize": handlers.diarize(services.diarization, ident.frontend, audio_of),
    }
    return JobWorker(
        SqlJobStore(services.store.engine), kinds, settings.jobs, webhook_egress(settings.egress)
    )


async def _follow_changes(services: Services) -> None:
    """Apply changes committed by other replicas (or missed ones) to this process's index."""
    while True:
        await asyncio.sleep(services.settings.index_poll_seconds)
        try:
            await run_blocking(services.runtime.follower.catch_up)
            services.checks["index"] = True
        except Exception as exc:
            services.checks["index"] = False
            if unavailable(exc):
                log.warning("index catch-up: database unavailable", extra={"error": type(exc).__name__})
            else:
                log.exception("index catch-up failed")


async def _trim_heap(interval: float) -> None:
    """Give freed heap memory back to the OS now and then (see service/memory.py)."""
    while True:
        await asyncio.sleep(interval)
        if not await run_blocking(memory.trim_heap):
            return


def create_app(settings: Settings | None = None, *, embedder: Embedder | None = None) -> FastAPI:
    settings = settings or Settings()
    logs.protect_access_log()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await run_blocking(build_services, settings, embedder)
        app.state.services = services
        app.state.jobs = build_jobs(services)
        if settings.jobs.enabled:
            app.state.jobs.start()
        grpc = None
        if settings.realtime.grpc_port:
            grpc, _ = await run_blocking(
                grpc_server.start, services, app.state.streams, settings.host, settings.realtime.grpc_port
            )
        follower = asyncio.create_task(_follow_changes(services))
        background = [follower]
        if settings.heap_trim_seconds > 0:
            background.append(asyncio.create_task(_trim_heap(settings.heap_trim_seconds)))
        log.info("ready", extra={"speakers_indexed": len(services.runtime.index)})
        try:
            yield
        finally:
            await run_blocking(app.state.jobs.stop)
            if grpc is not None:
                await run_blocking(grpc.stop(5).wait)
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            services.runtime.close()

    app = FastAPI(
        title="Speaker enrollment and identification",
        version=__version__,
        description="DeepAffects-compatible speaker enroll / delete / identify, plus a native /v1 API.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.streams = StreamLimiter(settings.realtime.max_streams_per_key, settings.realtime.max_streams)
    errors.install(app)
    docs.install(app)
    app.include_router(health.api)
    app.include_router(compat.router("v1"))
    app.include_router(compat.router("v2"))
    app.include_router(diarize.api)
    app.include_router(native.api)
    app.include_router(jobs.router())
    app.include_router(stream.api)
    console.install(app)
    # Outermost last: headers go on every answer, the metrics count refused bodies too.
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.audio.max_request_bytes,
        idle_timeout_s=settings.http.body_idle_timeout_s,
        total_timeout_s=settings.http.body_timeout_s,
    )
    app.add_middleware(HeadAsGet)
    app.add_middleware(Metrics)
    app.add_middleware(SecurityHeaders, cacheable=(docs.ASSETS,))
    return app


def configure_logging(settings: Settings) -> None:
    logs.configure(settings.log_level)
