"""The near-copy check over HTTP: the same recording played faster, slower or backwards is no new
sample of a speaker."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from devtools.clips import linear16_bytes, load_clip
from tests.conftest import b64, flac_body, needs_speech

pytestmark = [needs_speech, pytest.mark.model]

ENROLL = "/audio/generic/api/v1/sync/diarization/enroll"
CLIP = "librispeech/test-other/367/367-130732-0002.flac"  # 11.3 s, 16 kHz


def pcm_body(samples: np.ndarray, rate: int, speaker: str) -> dict[str, Any]:
    content = b64(linear16_bytes(samples))
    return {"content": content, "encoding": "LINEAR16", "sampleRate": rate, "speakerId": speaker}


@pytest.fixture(scope="module")
def enrolled(client: httpx.Client) -> str:
    answer = client.post(ENROLL, json=flac_body(CLIP, "copied"))
    assert answer.status_code == 200, answer.text
    return "copied"


@pytest.mark.parametrize("rate", [14_400, 17_600], ids=["10 % slower", "10 % faster"])
def test_the_same_pcm_at_a_wrong_rate_is_a_copy(client: httpx.Client, enrolled: str, rate: int) -> None:
    samples = load_clip(CLIP).samples
    answer = client.post(ENROLL, json=pcm_body(samples, rate, enrolled))
    assert answer.status_code == 409, answer.text
    assert answer.json()["fault"]["detail"]["errorcode"] == "enrollment.DuplicateSample"


def test_the_same_pcm_backwards_is_a_copy(client: httpx.Client, enrolled: str) -> None:
    samples = load_clip(CLIP).samples[::-1].copy()
    answer = client.post(ENROLL, json=pcm_body(samples, 16_000, enrolled))
    assert answer.status_code == 409, answer.text
    assert answer.json()["fault"]["detail"]["errorcode"] == "enrollment.DuplicateSample"


def test_only_the_original_was_stored(client: httpx.Client, enrolled: str) -> None:
    assert client.get(f"/v1/speakers/{enrolled}").json()["samples"] == 1
