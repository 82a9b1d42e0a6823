"""Generated requests on every route of the service's own OpenAPI document, over real HTTP with the
real model: a few hundred schemathesis cases (most with a valid key, some without), mutated real
recordings and absurd JSON. No 5xx, no hang, answers the schema allows, and the server still
serves afterwards. `python -m scripts.fuzz_api` is the long run (10,000+ cases) of the same parts.

The server is a `speakerid serve` process, not a thread of the test process: what the fuzzing
does to an interpreter (a RecursionError deep in the JSON decoder, a crash in a decoder) stays in
the server, and shows here as failed requests rather than as a broken test run.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from devtools.fuzz import (
    AUDIO_ROUTES,
    JSON_ROUTES,
    Tally,
    audio_mutations,
    fuzz_schema,
    json_bombs,
    seed_speakers,
    send_json_bomb,
    send_mutation,
    still_serves,
)
from devtools.server import LocalServer, local_server
from tests.conftest import needs_speech

pytestmark = [needs_speech, pytest.mark.model]

EXAMPLES = 16  # per operation and generation mode (positive, negative): ~480 cases in all
TIMEOUT = 120.0  # seconds before a request counts as hung (generous: the machine is shared)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with local_server(tmp_path_factory.mktemp("fuzz"), "fuzz", ready=True) as process:
        seed_speakers(process.url, process.key)
        yield process


def client_of(server: LocalServer) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"X-API-Key": server.key}, timeout=TIMEOUT)


def failures(tally: Tally) -> str:
    return tally.report() if tally.failures else ""


def test_generated_cases_on_every_route(server: LocalServer) -> None:
    tally = Tally()
    fuzz_schema(
        server.url, server.key, tally, examples=EXAMPLES, seed_value=1, timeout=TIMEOUT, real_audio_share=0.1
    )
    documented = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    operations = {f"{method.upper()} {path}" for path, methods in documented.items() for method in methods}
    assert set(tally.by_route) == operations, "every route got cases"
    assert tally.cases >= 200
    assert tally.statuses[401] > 0 and sum(n for s, n in tally.statuses.items() if 200 <= s < 300) > 0
    assert tally.real_audio, "some cases carried real speech"
    assert not tally.failures, failures(tally)
    assert still_serves(server.url, server.key) == []


def test_mutated_recordings_get_a_4xx_or_an_answer(server: LocalServer) -> None:
    tally = Tally()
    with client_of(server) as client:
        for mutation in audio_mutations(full=False):
            for route in ("compat enroll", "native enroll (raw body)"):
                status = send_mutation(client, route, mutation, tally)
                assert status is not None and status < 500, f"{route}, {mutation.name}: {status}"
    assert set(tally.statuses) <= {200, 201, 400, 409, 413, 422}, tally.report()
    assert tally.statuses[413] >= 2, "the 10-minute silence is refused as too long"
    assert not tally.failures, failures(tally)
    assert still_serves(server.url, server.key) == []


@pytest.mark.parametrize(
    ("bomb", "path"),
    [
        pytest.param(
            bomb,
            path,
            id=f"{path} {bomb[0]}",
        )
        for bomb in json_bombs()
        if "whitespace" not in bomb[0]
        for path in JSON_ROUTES
    ],
)
def test_absurd_json_is_a_4xx(server: LocalServer, bomb: tuple[str, str, bytes], path: str) -> None:
    tally = Tally()
    # A fresh connection each time: after a 500 the server closes the one it answered on.
    with client_of(server) as client:
        status = send_json_bomb(client, path, bomb, tally)
    assert status is not None and 400 <= status < 500, failures(tally) or str(status)
    with client_of(server) as client:
        assert client.get("/healthz").status_code == 200


# The long run once found offsets past 2**63 - 1 reaching the database (a 500); they are now a 400.
@pytest.mark.parametrize(
    "params",
    [
        {"offset": 2**63 - 1},
        {"offset": 2**63},
        {"offset": 15027889445742501888, "limit": 534},
        {"offset": -1},
        {"limit": 0},
        {"limit": 10**30},
    ],
    ids=str,
)
def test_paging_bounds_are_a_4xx_or_an_empty_page(server: LocalServer, params: dict[str, int]) -> None:
    with client_of(server) as client:
        answer = client.get("/v1/speakers", params=params)
        assert answer.status_code in (200, 400), answer.text
        if answer.status_code == 200:
            assert answer.json()["speakers"] == []
        assert client.get("/healthz").status_code == 200


def test_audio_routes_are_the_documented_ones(server: LocalServer) -> None:
    documented = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    for method, path, _ in AUDIO_ROUTES.values():
        template = path.replace("fuzz-audio", "{speakerId}")
        assert method.lower() in documented[template], template
    assert all(p.replace("fuzz-audio", "{speakerId}") in documented for p in JSON_ROUTES)
