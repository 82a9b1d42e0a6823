"""The front end in worker processes (`SPK_FRONTEND__WORKERS`): the same clips out as in the server
process, on real speech and the real model; a worker killed, hung or abandoned is replaced."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
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

pytestmark = [needs_speech, pytest.mark.alone]

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


def blocks_of_this_process() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob(f"spk_{os.getpid()}_*")}


def test_a_stopped_worker_holds_neither_a_large_request_nor_shutdown() -> None:
    """A job larger than the pipe's buffer, to a worker that does not read: the request used to
    block in the send, past its time and its client's hang-up, and shutdown after it (sending the
    stop message to the same full pipe)."""
    frontend = AudioFrontEnd(**SETTINGS, workers=1, work_timeout_s=1.0)
    clip = long_clip()
    assert len(clip.data) > 1_000_000
    try:
        (pid,) = wait_for_pids(frontend, 1)
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(FrontEndLost):
            frontend.load(clip)
        (pid,) = wait_for_pids(frontend, 1)
        os.kill(pid, signal.SIGSTOP)
        cancel = Cancellation()
        threading.Timer(0.3, cancel.cancel).start()
        with pytest.raises(RequestCancelled):
            frontend.load(clip, cancel=cancel)
    finally:
        frontend.close()
    # Shutdown while a request's large job waits on a stopped worker.
    frontend = AudioFrontEnd(**SETTINGS, workers=1, work_timeout_s=60.0)
    (pid,) = wait_for_pids(frontend, 1)
    os.kill(pid, signal.SIGSTOP)
    outcome: list[BaseException] = []

    def request() -> None:
        try:
            frontend.load(clip)
        except BaseException as error:
            outcome.append(error)

    waiting = threading.Thread(target=request)
    waiting.start()
    waiting.join(0.5)
    closing = threading.Thread(target=frontend.close)
    closing.start()
    closing.join(15)
    assert not closing.is_alive()
    waiting.join(15)
    assert len(outcome) == 1 and isinstance(outcome[0], FrontEndLost)


def test_a_block_made_by_a_worker_killed_before_handing_it_over_is_removed() -> None:
    """The server names each job's shared block, so the block of a worker killed past its time
    after making it (or of a client that left) does not stay in /dev/shm until reboot."""
    frontend = AudioFrontEnd(**SETTINGS, workers=1, work_timeout_s=2.0)
    try:
        (pid,) = wait_for_pids(frontend, 1)
        seen: list[set[str]] = []

        def stop_on_sight() -> None:  # stop the worker as soon as its block is there
            while not seen:
                made = blocks_of_this_process()
                if made:
                    os.kill(pid, signal.SIGSTOP)
                    seen.append(made)

        watcher = threading.Thread(target=stop_on_sight, daemon=True)
        watcher.start()
        with contextlib.suppress(FrontEndLost):  # stopped between making its block and handing it over
            frontend.load(long_clip())
        watcher.join(5)
        assert seen, "the worker's block was never seen"
        assert not blocks_of_this_process()
        assert frontend.load(AudioInput(clip_bytes(SHORT_CLIP), "FLAC")).speech
    finally:
        frontend.close()
    assert not blocks_of_this_process()


def test_no_room_in_shared_memory_is_a_clear_503_that_leaves_nothing_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A container's /dev/shm (64 MB) too small for a clip's samples: the worker used to die of
    SIGBUS writing into the block, leaving it there, and every later request failed. The space is
    now reserved first, so the clip is refused with a message saying what is short, and the next
    clip is served."""
    from multiprocessing import Pipe

    from service.audio import workers

    def no_room(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    ours, theirs = Pipe()
    worker = threading.Thread(target=workers._serve, args=(theirs, 300.0, 20.0, 0.5, None), daemon=True)
    worker.start()
    job = workers.Job(clip_bytes(SHORT_CLIP), "FLAC", None, False, block=f"spk_{os.getpid()}_full")
    with monkeypatch.context() as patch:
        patch.setattr(os, "posix_fallocate", no_room)
        ours.send(job)
        kind, error, message = ours.recv()
    assert (kind, error) == ("error", FrontEndLost) and "shared memory" in message
    assert not blocks_of_this_process()
    ours.send(dataclasses.replace(job, block=f"spk_{os.getpid()}_room"))
    kind, prepared, _ = ours.recv()
    assert kind == "ok" and workers._take_block(prepared).size == prepared.samples
    assert not blocks_of_this_process()
    ours.send(None)
    worker.join(10)
