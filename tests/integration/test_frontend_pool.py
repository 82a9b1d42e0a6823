"""The front end in worker processes (`SPK_FRONTEND__WORKERS`): the same clips out as in the server
process, on real speech and the real model; a worker killed, hung or abandoned is replaced."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devtools.clips import MEDIUM_CLIP, SHORT_CLIP, TWO_READERS, VCTK_CLIP, clip_bytes, encode, load_clip
from devtools.sets import EVAL_TELEPHONE
from service.audio.frontend import AudioFrontEnd, AudioInput
from service.audio.pipeline import PreparedAudio
from service.concurrency import Cancellation
from service.embedding.ecapa import EcapaEmbedder
from service.errors import FrontEndLost, RequestCancelled, UndecodableAudio
from tests.conftest import LiveServer, flac_body, make_settings, needs_speech, new_key

pytestmark = needs_speech

SETTINGS: dict[str, Any] = {"max_seconds": 300.0, "decode_timeout_s": 20.0, "vad_threshold": 0.5}


@pytest.fixture(scope="module")
def pool() -> Iterator[AudioFrontEnd]:
    frontend = AudioFrontEnd(**SETTINGS, workers=2, work_timeout_s=30.0)
    yield frontend
    frontend.close()


def inputs() -> list[AudioInput]:
    stereo = np.stack([load_clip(MEDIUM_CLIP).samples[:40_000], load_clip(SHORT_CLIP).samples[:40_000]])
    clips = [
        AudioInput(clip_bytes(p), "WAV" if p.endswith(".wav") else "FLAC")
        for p in (SHORT_CLIP, MEDIUM_CLIP, VCTK_CLIP, *TWO_READERS["alice"])
    ]
    clips.append(AudioInput(encode(stereo, 16_000, "flac", "flac", 16_000, channels=2), "FLAC"))
    telephone = sorted(EVAL_TELEPHONE.glob("*/*.wav"))[:2]
    return clips + [AudioInput(p.read_bytes(), "WAV") for p in telephone]


def long_clip() -> AudioInput:
    """About 4.5 minutes of speech (the limit is 5): a worker is busy with it for a second or more."""
    samples = np.concatenate([load_clip(p).samples for p in (*TWO_READERS["alice"], *TWO_READERS["bob"])] * 6)
    return AudioInput(encode(samples, 16_000, "flac", "flac", 16_000), "FLAC")


def assert_same(got: PreparedAudio, want: PreparedAudio) -> None:
    assert np.array_equal(got.wave, want.wave)
    assert got.speech == want.speech and got.source_rate == want.source_rate
    assert got.snr_db == want.snr_db and got.clipped_fraction == want.clipped_fraction
    assert len(got.channel_speech) == len(want.channel_speech)
    for a, b in zip(got.channel_speech, want.channel_speech, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.model
def test_a_pool_of_two_prepares_what_the_server_process_does(
    pool: AudioFrontEnd, embedder: EcapaEmbedder
) -> None:
    here = AudioFrontEnd(**SETTINGS)
    clips = inputs()
    with ThreadPoolExecutor(4) as threads:  # more requests than workers: they queue
        pooled = list(threads.map(lambda a: pool.load(a, channels=True), clips))
    assert any(p.channel_speech for p in pooled)
    for audio, got in zip(clips, pooled, strict=True):
        want = here.load(audio, channels=True)
        assert_same(got, want)
        assert want.speech
        assert np.array_equal(embedder.embed(got.speech_wave()), embedder.embed(want.speech_wave()))


def test_a_bad_clip_is_its_4xx_and_the_worker_stays(pool: AudioFrontEnd) -> None:
    before = sorted(wait_for_pids(pool, 2))
    with pytest.raises(UndecodableAudio):
        pool.load(AudioInput(b"fLaC" + bytes(200), "FLAC"))
    assert sorted(wait_for_pids(pool, 2)) == before


def wait_for_pids(frontend: AudioFrontEnd, count: int) -> list[int]:
    assert frontend.pool is not None
    pids = [p for p in frontend.pool.pids if p is not None]
    assert len(pids) == count
    return pids


def test_a_worker_killed_mid_request_is_a_503_and_is_replaced(pool: AudioFrontEnd) -> None:
    assert pool.pool is not None
    victims = wait_for_pids(pool, 2)
    # Stop both workers, so the request is surely in one of them, then kill it.
    for pid in victims:
        os.kill(pid, signal.SIGSTOP)
    outcome: list[BaseException | PreparedAudio] = []

    def request() -> None:
        try:
            outcome.append(pool.load(AudioInput(clip_bytes(MEDIUM_CLIP), "FLAC")))
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=request)
    thread.start()
    thread.join(1.0)
    assert thread.is_alive()  # waiting on a stopped worker
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    thread.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], FrontEndLost) and outcome[0].status == 503
    # The other worker died idle: it is replaced when next taken, without failing anyone.
    for _ in range(3):
        assert pool.load(AudioInput(clip_bytes(SHORT_CLIP), "FLAC")).speech
    assert not set(wait_for_pids(pool, 2)) & set(victims)


def test_a_hung_worker_is_replaced_after_its_time() -> None:
    frontend = AudioFrontEnd(**SETTINGS, workers=1, work_timeout_s=1.0)
    try:
        (pid,) = wait_for_pids(frontend, 1)
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(FrontEndLost):
            frontend.load(AudioInput(clip_bytes(SHORT_CLIP), "FLAC"))
        assert wait_for_pids(frontend, 1) != [pid]
        assert frontend.load(AudioInput(clip_bytes(SHORT_CLIP), "FLAC")).speech
    finally:
        frontend.close()


def test_a_cancelled_request_stops_its_worker_at_once(pool: AudioFrontEnd) -> None:
    before = wait_for_pids(pool, 2)
    cancel, clip = Cancellation(), long_clip()
    threading.Timer(0.2, cancel.cancel).start()
    with pytest.raises(RequestCancelled):
        pool.load(clip, cancel=cancel)
    after = wait_for_pids(pool, 2)
    assert len(set(before) - set(after)) == 1  # the busy one was killed and replaced
    assert pool.load(AudioInput(clip_bytes(SHORT_CLIP), "FLAC")).speech


@pytest.mark.model
def test_the_server_with_workers_answers_503_for_a_lost_worker_and_keeps_serving(
    tmp_path: Path, embedder: EcapaEmbedder
) -> None:
    settings = make_settings(tmp_path, frontend={"workers": 1})
    server = LiveServer(settings, embedder)
    server.start()
    try:
        frontend = server.services.enrollment.frontend
        (pid,) = wait_for_pids(frontend, 1)
        path = TWO_READERS["alice"][0]
        with server.client(new_key(settings, "acme")) as client:
            os.kill(pid, signal.SIGSTOP)
            killer = threading.Timer(1.0, os.kill, (pid, signal.SIGKILL))
            killer.start()
            lost = client.post("/v1/speakers/alice/enrollments", json=flac_body(path))
            assert lost.status_code == 503, lost.text
            assert lost.json()["error"]["code"] == "service.Unavailable"
            assert client.get("/v1/speakers/alice").status_code == 404  # nothing stored
            assert client.post("/v1/speakers/alice/enrollments", json=flac_body(path)).status_code == 201
        (replacement,) = wait_for_pids(frontend, 1)
        assert replacement != pid
    finally:
        server.stop()
    assert frontend.pool is not None and frontend.pool.pids == []  # stopped with the server
    with pytest.raises(ProcessLookupError):
        os.kill(replacement, 0)
