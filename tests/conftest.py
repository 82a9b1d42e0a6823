"""Shared fixtures: the real model, and the service served for real over HTTP on loopback."""

from __future__ import annotations

import base64
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine

from devtools.clips import clip_bytes, eval_speech_available
from devtools.sets import EVAL_SPEECH
from service.api.deps import Services
from service.api.serving import uvicorn_config
from service.config import EgressSettings, JobsSettings, Settings
from service.embedding import weights
from service.embedding.ecapa import EcapaEmbedder, configure_threads, usable_cores
from service.main import create_app
from service.storage.database import make_engine
from service.storage.repository import SqlStore
from tests.databases import drop_created, fresh_url, kind_params

# Under pytest-xdist (scripts/test.sh) the workers share the cores: one torch thread each by default.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
configure_threads(int(os.environ.get("SPK_TORCH_THREADS", "0")) or max(1, usable_cores() // _workers))

# Reads ../shared/eval-speech: slow, and skipped where the set is missing (`pytest_collection_modifyitems`).
needs_speech = pytest.mark.speech


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def flac_body(relative_path: str, speaker_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """A compatible-API JSON body for an eval-speech clip sent as it is stored (16 kHz FLAC/WAV)."""
    encoding = "WAV" if relative_path.endswith(".wav") else "FLAC"
    body: dict[str, Any] = {
        "content": b64(clip_bytes(relative_path)),
        "encoding": encoding,
        "sampleRate": 16000,
        "languageCode": "en-US",
    }
    if speaker_id is not None:
        body["speakerId"] = speaker_id
    body.update(extra)
    return body


@pytest.fixture(autouse=True)
def _no_broken_lazy_modules() -> None:
    """speechbrain puts lazy modules for optional integrations (k2, ...) into sys.modules; touching
    one that is not installed raises ImportError, and hypothesis touches every module's __file__."""
    for name, module in list(sys.modules.items()):
        if any(c.__name__ == "LazyModule" for c in type(module).__mro__):
            try:
                getattr(module, "__file__", None)
            except ImportError:
                del sys.modules[name]


@pytest.fixture(scope="session")
def embedder() -> EcapaEmbedder:
    """The real bundled ECAPA-TDNN model, loaded once per test session."""
    return EcapaEmbedder(weights.resolve(None), "cpu", "fp32")


class LiveServer:
    """The app served by uvicorn on a loopback port, in a thread of the test process.

    The test process can then look inside (index, database) while clients use real HTTP.
    `restart()` stops it and starts a new app on the same database, as a process restart would.
    """

    def __init__(self, settings: Settings, embedder: Any) -> None:
        self.settings = settings
        self.embedder = embedder
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app: Any = None

    def start(self) -> None:
        self.app = create_app(self.settings, embedder=self.embedder)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn_config(self.app, self.settings, lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 120
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=30)
        self._server = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    @property
    def kind(self) -> str:
        """The database kind it runs on: "sqlite" or "postgres"."""
        return "postgres" if self.settings.resolved_database_url().startswith("postgresql") else "sqlite"

    @property
    def engine(self) -> Engine:
        return self.services.runtime.engine

    def index_ids(self) -> set[int]:
        return self.services.runtime.index.faiss_ids()

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)


def make_settings(data_dir: Path, database: str = "sqlite", **overrides: Any) -> Settings:
    """Settings for a test server on a fresh, migrated database of kind `database`."""
    return settings_for(fresh_url(database, data_dir), data_dir, **overrides)


def settings_for(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test server on an existing database (e.g. a second replica on the same one)."""
    return Settings(data_dir=data_dir, database_url=database_url, **overrides)


def new_key(settings: Settings, tenant: str) -> str:
    engine = make_engine(settings.resolved_database_url())
    try:
        return SqlStore(engine).create_key(tenant)[1]
    finally:
        engine.dispose()


@pytest.fixture(scope="session", autouse=True)
def _drop_test_databases() -> Iterator[None]:
    yield
    drop_created()


def _serve(
    kind: str, tmp_path_factory: pytest.TempPathFactory, embedder: Any, **overrides: Any
) -> Iterator[LiveServer]:
    settings = make_settings(tmp_path_factory.mktemp(f"service-{kind}"), kind, **overrides)
    server = LiveServer(settings, embedder)
    server.start()
    yield server
    server.stop()


def serve_with_jobs(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Iterator[LiveServer]:
    """A server whose webhooks and `url` fetches may reach loopback (where tests listen), with
    quick job polls and webhook retries."""
    yield from _serve(
        "sqlite",
        tmp_path_factory,
        embedder,
        egress=EgressSettings(allowed_hosts="127.0.0.1"),
        jobs=JobsSettings(poll_seconds=0.1, webhook_backoff_s=0.2, webhook_max_backoff_s=1.0),
    )


@pytest.fixture(scope="module")
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, embedder: EcapaEmbedder
) -> Iterator[LiveServer]:
    """The module's server, on SQLite unless parametrized indirectly with a database kind."""
    yield from _serve(getattr(request, "param", "sqlite"), tmp_path_factory, embedder)


@pytest.fixture(scope="module", params=kind_params())
def live_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, embedder: EcapaEmbedder
) -> Iterator[LiveServer]:
    """The module's server once on each database kind (`KINDS`); `live_db.kind` says which."""
    yield from _serve(request.param, tmp_path_factory, embedder)


@pytest.fixture(scope="module")
def key(live: LiveServer) -> str:
    """A key of tenant "acme" on the module's server."""
    return new_key(live.settings, "acme")


@pytest.fixture(scope="module")
def client(live: LiveServer, key: str) -> Iterator[httpx.Client]:
    with live.client(key) as c:
        yield c


@pytest.fixture
def own_tenant(request: pytest.FixtureRequest) -> str:
    """An account of the test's own on the module's server: a recording belongs to one speaker of
    an account, and tests that enroll the same few clips under many ids each need a fresh one."""
    return f"acme-{request.node.name}"


@pytest.fixture
def own_key(live: LiveServer, own_tenant: str) -> str:
    return new_key(live.settings, own_tenant)


@pytest.fixture
def own_client(live: LiveServer, own_key: str) -> Iterator[httpx.Client]:
    with live.client(own_key) as c:
        yield c


# --- the two lanes ---------------------------------------------------------------------------------
# `pytest` alone runs the fast lane (-m "not slow" in pyproject's addopts); scripts/test.sh runs all.
# Slow: whatever loads the real model, serves the app, needs PostgreSQL or reads the speech sets.
SLOW_FIXTURES = frozenset({"embedder", "live", "live_db"})  # and every fixture built on them
SPEECH_FIXTURES = frozenset({"clip"})  # tests/unit's eval-speech clip
SLOW_MARKERS = ("speech", "model", "postgres", "gpu")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    speech_missing = not eval_speech_available()
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        speech = item.get_closest_marker("speech") is not None or bool(SPEECH_FIXTURES & uses)
        if speech or SLOW_FIXTURES & uses or any(item.get_closest_marker(m) for m in SLOW_MARKERS):
            item.add_marker(pytest.mark.slow)
        if speech and speech_missing:
            item.add_marker(pytest.mark.skip(reason=f"real speech set not found at {EVAL_SPEECH}"))
