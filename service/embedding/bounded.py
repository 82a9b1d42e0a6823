"""One request's waveforms through the model in calls of bounded size, whatever the audio's length.

A model call's memory grows with the padded audio it holds: ECAPA-TDNN on a CPU took about 11 MB
per second of audio at its peak (3.3 GB for one 5-minute wave; 13 GB for the 590 windows of a
5-minute compatible identify in one call). So one request's audio goes through in pieces:

- a waveform longer than `chunk_seconds` is cut into near-equal pieces no longer than that, and its
  vector is the length-weighted mean of the pieces' vectors (cosine 0.994-0.999 to the whole wave's
  vector on 65-90 s of one reader's speech with 16 s pieces);
- the pieces go to the model at most `max_batch` at a time and with at most `max_seconds` of audio
  per call, the shortest together (little padding), the cancellation looked at before each call;
  two pieces of one length pad nothing and share a call even past `max_seconds`, so a call's audio
  stays within twice the budget whatever the request.

Pure numpy: the model call is the `embed_batch` it is given (the model, or the GPU batcher).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from service.audio import MODEL_RATE
from service.concurrency import Cancellation, check


@dataclass(frozen=True)
class EmbedBudget:
    max_batch: int = 32  # waveforms per model call
    max_seconds: float = 16.0  # audio per model call (the longest piece times the count); see `_fits`
    chunk_seconds: float = 16.0  # longer waveforms are embedded in pieces of at most this length

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.chunk_seconds <= 0 or self.max_seconds < self.chunk_seconds:
            raise ValueError(f"inconsistent embedding budget {self}: need max_seconds >= chunk_seconds > 0")


def pieces(length: int, chunk: int) -> list[tuple[int, int]]:
    """``[start, end)`` sample bounds of near-equal pieces of at most `chunk` samples (one if it fits)."""
    count = max(1, math.ceil(length / chunk))
    bounds = np.linspace(0, length, count + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


class BoundedEmbedding:
    """``(waves, cancel) -> (len(waves), dim)`` float32 vectors, not length-normalised, for 1-D
    float32 16 kHz waveforms of any length and number, through model calls within `budget`."""

    def __init__(
        self, embed_batch: Callable[[Sequence[np.ndarray]], np.ndarray], budget: EmbedBudget | None = None
    ) -> None:
        self.embed_batch = embed_batch
        self.budget = budget or EmbedBudget()

    def __call__(self, waves: Sequence[np.ndarray], cancel: Cancellation | None = None) -> np.ndarray:
        if not waves:
            raise ValueError("no waveforms to embed")
        chunk = int(self.budget.chunk_seconds * MODEL_RATE)
        parts: list[np.ndarray] = []
        owners: list[int] = []
        for i, wave in enumerate(waves):
            for a, b in pieces(len(wave), chunk):
                parts.append(wave[a:b])
                owners.append(i)
        vectors = self._embed_parts(parts, cancel)
        if len(parts) == len(waves):
            return vectors
        out = np.empty((len(waves), vectors.shape[1]), dtype=np.float32)
        owner = np.array(owners)
        weights = np.array([len(p) for p in parts], dtype=np.float64)
        for i in range(len(waves)):
            mine = owner == i
            w = weights[mine]
            out[i] = vectors[mine][0] if len(w) == 1 else (w @ vectors[mine]) / w.sum()
        return out

    def _embed_parts(self, parts: list[np.ndarray], cancel: Cancellation | None) -> np.ndarray:
        order = sorted(range(len(parts)), key=lambda j: len(parts[j]))
        limit = self.budget.max_seconds * MODEL_RATE
        results: dict[int, np.ndarray] = {}
        call: list[int] = []
        for j in order:
            # Sorted by length: `j` is the longest so far, so the call pads every piece to its length.
            if call and (len(call) >= self.budget.max_batch or not self._fits(parts, call, j, limit)):
                self._run(parts, call, results, cancel)
                call = []
            call.append(j)
        if call:
            self._run(parts, call, results, cancel)
        return np.stack([results[j] for j in range(len(parts))]).astype(np.float32, copy=False)

    @staticmethod
    def _fits(parts: list[np.ndarray], call: list[int], j: int, limit: float) -> bool:
        """Whether piece `j`, the longest yet, joins `call` (sorted by length) within `limit` samples
        of padded audio; or as the second of two pieces of one length, whatever their length (at
        most `chunk_seconds` each): such a pair pads nothing, so it costs what its pieces cost one by
        one, and an enrollment's speech and its narrowband twin (over 8 s each at the CPU's 16 s)
        go through in one call, not two of one. Only pairs: many short windows of one length (the
        compatible identify's) keep the budget."""
        if (len(call) + 1) * len(parts[j]) <= limit:
            return True
        return len(call) == 1 and len(parts[call[0]]) == len(parts[j])

    def _run(
        self,
        parts: list[np.ndarray],
        call: list[int],
        results: dict[int, np.ndarray],
        cancel: Cancellation | None,
    ) -> None:
        check(cancel)
        vectors = self.embed_batch([parts[j] for j in call])
        for j, vector in zip(call, vectors, strict=True):
            results[j] = vector
