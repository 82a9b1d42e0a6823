"""API keys over real HTTP: never in a log line, revocation at once, a per-key rate limit.

(That keys are stored as hashes and compared in constant time is in tests/unit/test_auth_and_errors.py.)
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import select
from websockets.sync.client import connect

from devtools.server import local_server, speakerid
from service.config import AuthSettings
from service.logs import JsonFormatter
from service.storage.database import make_engine
from service.storage.repository import SqlStore, hash_key
from service.storage.tables import ApiKey
from tests.conftest import LiveServer, flac_body, make_settings, needs_speech, new_key
from tests.databases import kind_params

pytestmark = [needs_speech, pytest.mark.model]
# Tests of the in-thread server run once on SQLite and once on PostgreSQL.
ON_BOTH_DATABASES = pytest.mark.parametrize("live", kind_params(), indirect=True)

ENROLL = "/audio/generic/api/v1/sync/diarization/enroll"
LIST = "/audio/generic/api/v1/sync/diarization/get_enrolled_speakers"
CLIP = "librispeech/test-other/367/367-130732-0001.flac"
WRONG = "sk_this-key-was-never-issued-0123456789"
# Not the service's records: the test's own HTTP client logs the URLs it requests (query keys
# included), and uvicorn's access line (also the whole URL) is on here only because pytest hooks a
# handler onto every logger; `speakerid serve` turns it off, as the served-process test checks.
NOT_THE_SERVICE = ("httpx", "httpcore", "hpack", "uvicorn.access", "websockets.client")


def with_key(key: str, channel: str) -> dict[str, Any]:
    """httpx request arguments that carry `key` in one of the four accepted places."""
    if channel in ("apikey", "api_key"):
        return {"params": {channel: key}}
    if channel == "header":
        return {"headers": {"X-API-Key": key}}
    return {"headers": {"Authorization": f"Bearer {key}"}}


CHANNELS = ("apikey", "api_key", "header", "bearer")


def exercise(url: str, key: str) -> list[str]:
    """Successes and failures with the key in every accepted place, and a wrong key; the paths."""
    paths = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for channel in CHANNELS:
            for credentials in (key, WRONG):
                auth = with_key(credentials, channel)
                good = credentials == key
                answers = [  # (answer, its status with the right key)
                    (client.get("/v1/speakers", **auth), 200),
                    (client.get(LIST, **auth), 200),
                    (client.get("/v1/speakers/nobody", **auth), 404),
                    (client.post(ENROLL, json=flac_body(CLIP, "bad id!"), **auth), 400),
                    (client.post("/v1/identify", json={"content": "%%", "encoding": "FLAC"}, **auth), 400),
                ]
                if good and channel == "apikey":  # one real enrollment: the model, the database, the index
                    answers.append((client.post(ENROLL, json=flac_body(CLIP, "logged"), **auth), 200))
                for answer, status in answers:
                    expected = status if good else 401
                    assert answer.status_code == expected, (
                        f"{answer.request.url.path} {channel}: {answer.text}"
                    )
                    paths.append(answer.request.url.path)
    open_streams(url, key)
    return paths


def open_streams(url: str, key: str) -> None:
    """Realtime streams opened with the key (and a wrong one) in every accepted place: uvicorn and
    the websockets library log the handshake themselves, its path and (at DEBUG) its headers."""
    for channel in CHANNELS:
        for credentials in (key, WRONG):
            auth = with_key(credentials, channel)
            query = urlencode({**auth.get("params", {}), "sampleRate": "16000"})
            address = url.replace("http://", "ws://", 1) + f"/v1/identify/stream?{query}"
            with connect(address, additional_headers=auth.get("headers"), open_timeout=60) as ws:
                if credentials == key:  # an empty chunk, answered as one
                    ws.send(b"")
                answer = json.loads(ws.recv(timeout=60))
                expected = "audio.Empty" if credentials == key else "auth.InvalidKey"
                assert answer["error"]["code"] == expected, (channel, answer)


def secrets_of(key: str) -> list[str]:
    return [key, key.removeprefix("sk_"), hash_key(key), WRONG]


@ON_BOTH_DATABASES
def test_no_key_in_the_service_log_records(live: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    key = new_key(live.settings, "logged")
    caplog.set_level(logging.DEBUG)
    paths = exercise(live.url, key)
    records = [r for r in caplog.records if not r.name.startswith(NOT_THE_SERVICE)]
    lines = [JsonFormatter().format(r) for r in records]
    access = [r for r in records if r.name == "service.access"]
    # The capture works: every request has its access line (the path, never the query string).
    assert sorted(str(getattr(r, "path", "")) for r in access) == sorted(paths)
    for line in lines:
        for secret in secrets_of(key):
            assert secret not in line, f"a key in the log: {line}"


def test_no_key_in_the_served_process_log_or_database(tmp_path: Path) -> None:
    with local_server(tmp_path, "logged", ready=True, SPK_LOG_LEVEL="DEBUG") as server:
        paths = exercise(server.url, server.key)
        # The operator lists and revokes keys from another process; the secret is never shown again.
        listed = speakerid(server.env(), "keys", "list")
        assert server.key not in listed
        key_id = listed.split()[0]
        assert speakerid(server.env(), "keys", "revoke", key_id).strip() == f"revoked {key_id}"
        revoked = httpx.get(f"{server.url}/v1/speakers", headers={"X-API-Key": server.key}, timeout=60)
        assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "auth.InvalidKey"
        assert re.search(rf"^{key_id}\tlogged\trevoked\t", speakerid(server.env(), "keys", "list"), re.M)
    log = server.log.read_text()
    assert log.count('"logger": "service.access"') >= len(paths) + 1, log[-2000:]
    for path in sorted(tmp_path.rglob("*")):  # the log, the SQLite file and its journals
        if path.is_file():
            data = path.read_bytes()
            for secret in [*secrets_of(server.key)[:2], WRONG]:
                assert secret.encode() not in data, f"a key in {path.name}"
    # The hash is what the database holds, and only there.
    assert hash_key(server.key) not in log


@ON_BOTH_DATABASES
def test_revocation_takes_effect_on_the_next_request(live: LiveServer) -> None:
    engine = make_engine(live.settings.resolved_database_url())
    operator = SqlStore(engine)  # the operator's own connection, as `speakerid keys revoke` has
    try:
        revoked_id, revoked = operator.create_key("revoking")
        _, kept = operator.create_key("revoking")
        with live.client(revoked) as client, live.client(kept) as other:
            assert client.get("/v1/speakers").status_code == 200
            assert operator.revoke_key(revoked_id)
            native = client.get("/v1/speakers")
            compat = client.get(LIST)
            assert native.status_code == 401 and native.json()["error"]["code"] == "auth.InvalidKey"
            assert compat.status_code == 401
            assert compat.json()["fault"]["detail"]["errorcode"] == "auth.InvalidKey"
            assert other.get("/v1/speakers").status_code == 200  # the tenant's other key still works
        with engine.connect() as conn:
            assert conn.execute(select(ApiKey.revoked_at).where(ApiKey.key_id == revoked_id)).scalar_one()
    finally:
        engine.dispose()


def test_rate_limit_is_per_key_with_retry_after(tmp_path: Path, embedder: object) -> None:
    server = LiveServer(make_settings(tmp_path, auth=AuthSettings(rate_limit_per_minute=5)), embedder)
    server.start()
    try:
        limited = new_key(server.settings, "busy")
        same_tenant = new_key(server.settings, "busy")
        other_tenant = new_key(server.settings, "calm")
        with server.client(limited) as client:
            answers = [client.get(path) for path in ("/v1/speakers", LIST, "/v1/speakers/x", LIST, LIST)]
            assert [a.status_code for a in answers] == [200, 200, 404, 200, 200]
            over = [client.get("/v1/speakers"), client.get(LIST)]
        native, compat = over
        assert native.status_code == 429 and native.json()["error"]["code"] == "request.RateLimited"
        assert compat.status_code == 429
        assert compat.json()["fault"]["detail"]["errorcode"] == "request.RateLimited"
        for answer in over:
            assert 1 <= int(answer.headers["Retry-After"]) <= 61
        for key in (same_tenant, other_tenant):
            with server.client(key) as other:
                assert other.get("/v1/speakers").status_code == 200
        with server.client() as anonymous:
            assert anonymous.get("/healthz").status_code == 200
            assert anonymous.get("/v1/speakers", headers={"X-API-Key": WRONG}).status_code == 401
    finally:
        server.stop()


def test_two_different_keys_in_one_request_are_refused(live: LiveServer) -> None:
    """A key in the query and another in a header (say, a proxy adding its own): which tenant the
    request would act for is not the client's clear choice, so it is refused on HTTP and on the
    stream; the same key twice is fine."""
    mine, theirs = new_key(live.settings, "acme"), new_key(live.settings, "globex")
    with httpx.Client(base_url=live.url, timeout=30) as http:
        same = http.get(LIST, params={"apikey": mine}, headers={"X-API-Key": mine})
        assert same.status_code == 200, same.text
        for headers in ({"X-API-Key": theirs}, {"Authorization": f"Bearer {theirs}"}):
            mixed = http.get("/v1/speakers", params={"apikey": mine}, headers=headers)
            assert mixed.status_code == 401 and "Two different API keys" in mixed.json()["error"]["message"]
        compat = http.get(LIST, params={"apikey": mine, "api_key": theirs})
        assert compat.status_code == 401
        assert compat.json()["fault"]["detail"]["errorcode"] == "auth.InvalidKey"
    url = live.url.replace("http://", "ws://") + f"/v1/identify/stream?{urlencode({'apikey': mine})}"
    with connect(url, additional_headers={"X-API-Key": theirs}) as ws:
        assert "Two different API keys" in json.loads(ws.recv(timeout=30))["error"]["message"]
