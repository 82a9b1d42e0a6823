"""Bad input over real HTTP: each a 4xx fault with its own error code, nothing stored, still serving."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from devtools.clips import encode_recipe, load_clip
from service.embedding import weights
from service.embedding.ecapa import EcapaEmbedder
from service.tools.client import parse_error
from tests.conftest import LiveServer, b64, flac_body, make_settings, needs_speech, new_key

pytestmark = [needs_speech, pytest.mark.model]

ENROLL = "/audio/generic/api/v1/sync/diarization/enroll"
CLIP = "librispeech/test-other/367/367-130732-0002.flac"


def body(content: bytes, encoding: str = "FLAC", **extra: Any) -> dict[str, Any]:
    return {
        "content": b64(content),
        "encoding": encoding,
        "sampleRate": 16000,
        "speakerId": "victim",
        **extra,
    }


def _speech_half_second() -> bytes:
    clip = load_clip(CLIP)
    start = int(1.0 * clip.sample_rate)  # inside the first sentence
    return encode_recipe(clip.samples[start : start + clip.sample_rate // 2], clip.sample_rate, "flac")


CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("invalid base64", {**body(b"x"), "content": "not base64 at all!!"}, 400, "audio.InvalidBase64"),
    ("unknown encoding", body(b"RIFF....", encoding="SPEEX_MAGIC"), 400, "audio.UnsupportedEncoding"),
    ("empty content", {**body(b"x"), "content": ""}, 400, "audio.Empty"),
    ("random bytes as WAV", body(os.urandom(64_000), encoding="WAV"), 400, "audio.Undecodable"),
    # No encoding: the bytes are asked, and these name nothing.
    ("missing encoding", {"content": b64(b"abc"), "speakerId": "victim"}, 400, "audio.UnsupportedEncoding"),
    ("bad speakerId", body(b"abc", speakerId="no spaces/allowed"), 400, "request.InvalidSpeakerId"),
    ("too long speakerId", body(b"abc", speakerId="x" * 129), 400, "request.InvalidSpeakerId"),
    (
        "raw without rate",
        {**body(b"\0\0" * 800, encoding="LINEAR16"), "sampleRate": None},
        400,
        "audio.MissingSampleRate",
    ),
]


@pytest.mark.parametrize(("name", "payload", "status", "code"), CASES, ids=[c[0] for c in CASES])
def test_malformed_requests(
    client: httpx.Client, live: LiveServer, name: str, payload: dict[str, Any], status: int, code: str
) -> None:
    _refused(client, live, payload, status, code)


def test_truncated_flac(client: httpx.Client, live: LiveServer) -> None:
    data = load_clip(CLIP).path.read_bytes()
    _refused(client, live, body(data[:300]), 400, "audio.Undecodable")


def test_pure_silence(client: httpx.Client, live: LiveServer) -> None:
    silence = encode_recipe(np.zeros(16000 * 5, dtype=np.int16), 16000, "flac")
    _refused(client, live, body(silence), 422, "audio.InsufficientSpeech")


def test_half_a_second_of_speech(client: httpx.Client, live: LiveServer) -> None:
    _refused(client, live, body(_speech_half_second()), 422, "audio.InsufficientSpeech")


def test_body_over_the_size_limit(client: httpx.Client, live: LiveServer) -> None:
    limit = live.settings.audio.max_request_bytes
    payload = {"content": "A" * (limit + 1024), "encoding": "FLAC", "speakerId": "victim"}
    _refused(client, live, payload, 413, "request.PayloadTooLarge")


def test_missing_and_wrong_keys(live: LiveServer) -> None:
    before = live.services.store.counts()
    with live.client() as anonymous:
        missing = anonymous.post(ENROLL, json=flac_body(CLIP, "victim"))
        wrong = anonymous.post(ENROLL, params={"apikey": "sk_wrong"}, json=flac_body(CLIP, "victim"))
        native = anonymous.get("/v1/speakers", headers={"Authorization": "Bearer sk_wrong"})
    for answer in (missing, wrong):
        assert answer.status_code == 401
        assert shape_and_code(answer) == ("fault", "auth.InvalidKey")
    assert native.status_code == 401 and shape_and_code(native) == ("error", "auth.InvalidKey")
    assert live.services.store.counts() == before


def test_native_route_errors_use_the_native_shape(client: httpx.Client) -> None:
    answer = client.post("/v1/speakers/bad%20id/enrollments", json=flac_body(CLIP))
    assert answer.status_code == 400
    assert shape_and_code(answer) == ("error", "request.InvalidSpeakerId")
    unsupported = client.post(
        "/v1/speakers/ok/enrollments", content=b"abc", headers={"Content-Type": "text/plain"}
    )
    assert unsupported.status_code == 415
    assert shape_and_code(unsupported) == ("error", "request.UnsupportedMediaType")


def test_unknown_routes_and_methods_answer_in_their_family_shape(client: httpx.Client) -> None:
    compat = client.post("/audio/generic/api/v1/sync/diarization/nope", json={})
    assert compat.status_code == 404
    assert compat.json()["fault"]["detail"]["errorcode"] == "request.NotFound"
    native = client.get("/v1/nope")
    assert native.status_code == 404 and native.json()["error"]["code"] == "request.NotFound"
    wrong_method = client.get(ENROLL)
    assert wrong_method.status_code == 405 and "POST" in wrong_method.headers["allow"]
    assert wrong_method.json()["fault"]["detail"]["errorcode"] == "request.MethodNotAllowed"


def test_nothing_was_stored_and_the_server_still_serves(client: httpx.Client) -> None:
    assert client.get("/v1/speakers/victim").status_code == 404
    assert client.post(ENROLL, json=flac_body(CLIP, "after-the-storm")).json() == {"message": "Success"}


def _refused(client: httpx.Client, live: LiveServer, payload: dict[str, Any], status: int, code: str) -> None:
    before = live.services.store.counts()
    answer = client.post(ENROLL, json=payload)
    assert answer.status_code == status, answer.text
    assert shape_and_code(answer) == ("fault", code)
    assert parse_error(answer).message
    assert live.services.store.counts() == before
    assert client.get("/healthz").status_code == 200


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory: pytest.TempPathFactory) -> EcapaEmbedder:
    """The real model with one weight set to NaN: every vector it makes is not finite, as a zero or
    non-finite vector from any model would be."""
    folder = tmp_path_factory.mktemp("nan-model")
    bundled = weights.bundled_folder()
    shutil.copy(bundled / "hyperparams.yaml", folder / "hyperparams.yaml")
    state = torch.load(bundled / "embedding_model.ckpt", map_location="cpu", weights_only=True)
    first = next(name for name, tensor in state.items() if tensor.is_floating_point())
    state[first] = torch.full_like(state[first], float("nan"))
    torch.save(state, folder / "embedding_model.ckpt")
    return EcapaEmbedder(weights.resolve(folder), "cpu", "fp32")


def test_a_clip_without_a_usable_vector_is_a_4xx_in_each_shape(
    tmp_path: Path, nan_model: EcapaEmbedder
) -> None:
    server = LiveServer(make_settings(tmp_path), nan_model)
    server.start()
    try:
        with server.client(new_key(server.settings, "acme")) as client:
            compat = client.post(ENROLL, json=flac_body(CLIP, "alice"))
            assert compat.status_code == 422, compat.text
            assert compat.json()["fault"]["detail"]["errorcode"] == "audio.NoSpeakerVector"
            native = client.post("/v1/speakers/alice/enrollments", json=flac_body(CLIP))
            assert native.status_code == 422, native.text
            assert native.json()["error"]["code"] == "audio.NoSpeakerVector"
            assert client.get("/v1/speakers/alice").status_code == 404  # nothing stored
            assert server.services.store.counts() == {"tenants": 1, "speakers": 0, "samples": 0}
    finally:
        server.stop()


def shape_and_code(answer: httpx.Response) -> tuple[str, str]:
    error = parse_error(answer)
    return error.shape, error.code
