"""The audio front end the use cases call: bytes of a stated encoding in, checked speech out."""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from service import calibration as cal
from service.audio.decode import decode
from service.audio.pipeline import PreparedAudio, QualityLimits, SpeechDetector, prepare
from service.audio.workers import FrontEndPool, Job
from service.concurrency import Cancellation, check, compute


@dataclass(frozen=True)
class AudioInput:
    """One clip as a client sent it. `sample_rate` matters only for raw encodings. `source_rate`:
    the rate the audio was first heard at, where it has been converted since (a realtime stream's
    window, re-encoded at 16 kHz from 8 kHz chunks): the band and the speech detector follow it."""

    data: bytes
    encoding: str
    sample_rate: int | None = None
    source_rate: int | None = None


class AudioFrontEnd:
    """`parallel` clips are prepared at once, each with its own speech detector (silero keeps
    state). With 1, preparation runs on the compute thread with the model, a few seconds of audio
    per turn: on a CPU box they take turns on the cores, and up to `SHARED_DETECTORS` clips' turns
    interleave (a short clip is not held up by the whole of a long one's). Where the model runs on a
    GPU, the cores are free for one clip each. With `workers`, none of this runs here: each clip
    goes to a worker process (`service.audio.workers`).
    """

    SHARED_DETECTORS = 4

    def __init__(
        self,
        *,
        max_seconds: float,
        decode_timeout_s: float,
        vad_threshold: float,
        vad_narrowband_threshold: float | None = cal.VAD_NARROWBAND_THRESHOLD,
        parallel: int = 1,
        detector: Callable[[float, float | None], SpeechDetector] = SpeechDetector,
        workers: int = 0,
        work_timeout_s: float = 120.0,
    ) -> None:
        """`detector`: makes a speech detector from the two thresholds (another detector for tests).
        `workers` > 0: decoding and preparation run in that many worker processes instead
        (`service.audio.workers`)."""
        self.max_seconds = max_seconds
        self.decode_timeout_s = decode_timeout_s
        self.parallel = max(1, parallel)
        self.pool = (
            FrontEndPool(
                workers,
                max_seconds=max_seconds,
                decode_timeout_s=decode_timeout_s,
                vad_threshold=vad_threshold,
                vad_narrowband_threshold=vad_narrowband_threshold,
                work_timeout_s=work_timeout_s,
            )
            if workers > 0
            else None
        )
        self._detectors: queue.Queue[SpeechDetector] = queue.Queue()
        in_process = self.parallel if self.parallel > 1 else self.SHARED_DETECTORS
        for _ in range(0 if self.pool is not None else in_process):
            self._detectors.put(detector(vad_threshold, vad_narrowband_threshold))

    @contextlib.contextmanager
    def _detector(self) -> Iterator[SpeechDetector]:
        detector = self._detectors.get()
        try:
            yield detector
        finally:
            self._detectors.put(detector)

    def load(
        self,
        audio: AudioInput,
        limits: QualityLimits | None = None,
        cancel: Cancellation | None = None,
        *,
        channels: bool = False,
    ) -> PreparedAudio:
        """Decode, convert to 16 kHz mono, find speech; raise a 4xx error if `limits` fail, and
        RequestCancelled if `cancel` is set before the speech detection starts. With `channels`,
        also find the speech of each channel that differs from the others."""
        if self.pool is not None:
            prepared = self._from_pool(audio, cancel, channels)
            if limits is not None:
                prepared.check(limits)
            return prepared
        decoded = decode(
            audio.data,
            audio.encoding,
            audio.sample_rate,
            max_seconds=self.max_seconds,
            timeout_s=self.decode_timeout_s,
        )
        check(cancel)
        with self._detector() as detector:
            exclusive = compute if self.parallel == 1 else None
            prepared = prepare(
                decoded, detector, exclusive, cancel, channels=channels, source_rate=audio.source_rate
            )
        if limits is not None:
            prepared.check(limits)
        return prepared

    def _from_pool(self, audio: AudioInput, cancel: Cancellation | None, channels: bool) -> PreparedAudio:
        assert self.pool is not None
        job = Job(audio.data, audio.encoding, audio.sample_rate, channels, audio.source_rate)
        figures, wave = self.pool.prepare(job, cancel)
        return PreparedAudio(
            wave=wave,
            source_rate=figures.source_rate,
            speech=figures.speech,
            clipped_fraction=figures.clipped_fraction,
            snr_db=figures.snr_db,
            channel_speech=figures.channel_speech,
        )

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
