"""The diarization machinery without the model: clustering, boundaries, naming, request checks.

A fake embedding stands in for the model here only to pin the geometry (a window's vector is the
mix of the voices in it); the real model on real conversations is in tests/model/test_diarization.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from service.api.schemas import CompatDiarizeRequest
from service.audio import Band
from service.audio.pipeline import PreparedAudio
from service.concurrency import Cancellation
from service.diarization.clustering import cluster
from service.diarization.service import DiarizationService, max_speakers_for, segments_of
from service.diarization.turns import (
    Stretches,
    Turn,
    TurnOptions,
    Turns,
    find_turns,
    in_centiseconds,
    voices_of,
    windows,
)

RATE = 16_000
DIM = 16
rng = np.random.default_rng(0)
BASIS = np.linalg.qr(rng.normal(size=(DIM, DIM)))[0]
VOICES = BASIS[:5]  # orthonormal voice directions
LINE = BASIS[5]  # what every voice of one call shares (line, handset), apart from the voices


def voice_vectors(labels: Sequence[int], noise: float = 0.3, seed: int = 1) -> np.ndarray:
    r = np.random.default_rng(seed)
    return np.asarray(VOICES[list(labels)] + noise * r.normal(size=(len(labels), DIM)) / np.sqrt(DIM))


def test_the_count_is_found_and_a_given_count_obeyed() -> None:
    truth = [0] * 12 + [1] * 10 + [2] * 8 + [0] * 5
    found = cluster(voice_vectors(truth), stop_distance=0.7)
    assert found.max() + 1 == 3
    assert len({(t, f) for t, f in zip(truth, found, strict=True)}) == 3  # one voice, one label
    assert cluster(voice_vectors(truth), stop_distance=0.7, count=2).max() + 1 == 2
    assert cluster(voice_vectors(truth), stop_distance=0.7, count=4).max() + 1 == 4
    assert cluster(voice_vectors(truth), stop_distance=0.7, max_count=2).max() + 1 == 2


def test_a_voice_with_too_little_speech_is_folded_into_another() -> None:
    truth = [0] * 10 + [1] * 10 + [2]  # one stray window
    labels = cluster(voice_vectors(truth), stop_distance=0.7, min_weight=2.0)
    assert labels.max() + 1 == 2 and labels[0] == 0 and labels[10] == 1


def test_labels_follow_first_appearance() -> None:
    labels = cluster(voice_vectors([2] * 5 + [0] * 5 + [1] * 5), stop_distance=0.7)
    assert labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5


def stretches_of(vectors: np.ndarray) -> Stretches:
    """Each vector one 1.5 s stretch of its own, in turn."""
    n = len(vectors)
    return Stretches(
        turns=[Turn(i, 2.0 * i, 2.0 * i + 1.5) for i in range(n)],
        groups=vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
        members=[[i] for i in range(n)],
        long=list(range(n)),
        whole=vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
        seconds=np.full(n, 1.5),
    )


def test_what_every_voice_of_a_clip_shares_is_taken_out_before_they_are_counted() -> None:
    truth = [0, 1] * 6
    # Cosine distance 0.2 between the two voices, under the stop distance, until part of the
    # clip's mean is removed.
    call = stretches_of(2 * LINE + voice_vectors(truth, noise=0.05))
    plain = TurnOptions(stop_distance=0.3, centring=0.0, min_voice_s=1.0)
    assert voices_of(call, plain, count=None, max_count=10).count == 1
    centred = TurnOptions(stop_distance=0.3, centring=0.3, min_voice_s=1.0)
    found = voices_of(call, centred, count=None, max_count=10)
    assert found.count == 2 and [t.voice for t in found.turns] == truth
    # One voice alone is not split by it.
    alone = stretches_of(2 * LINE + voice_vectors([0] * 12, noise=0.05))
    assert voices_of(alone, centred, count=None, max_count=10).count == 1


class MixEmbedding:
    """A waveform's vector is the mix of the voices in it: sample value k marks voice k - 1 (0 is
    silence), so a window straddling a turn change lies between the two voices."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, waves: Sequence[np.ndarray], cancel: Cancellation | None = None) -> np.ndarray:
        self.calls += 1
        out = []
        for wave in waves:
            marks = np.rint(wave * 10).astype(int)
            mix = sum(np.mean(marks == k + 1) * VOICES[k] for k in range(len(VOICES)))
            out.append(np.asarray(mix) + 1e-3)
        return np.stack(out)


def conversation(turns: list[tuple[int, float, float]], length: float) -> PreparedAudio:
    wave = np.zeros(int(length * RATE), dtype=np.float32)
    for voice, a, b in turns:
        wave[int(a * RATE) : int(b * RATE)] = (voice + 1) / 10
    # The speech regions a VAD would give: touching turns are one region.
    regions: list[tuple[float, float]] = []
    for _, a, b in sorted(turns, key=lambda t: t[1]):
        if regions and a - regions[-1][1] < 0.05:
            regions[-1] = (regions[-1][0], b)
        else:
            regions.append((a, b))
    return PreparedAudio(wave=wave, source_rate=RATE, speech=regions, clipped_fraction=0.0, snr_db=30.0)


OPTIONS = TurnOptions(stop_distance=0.5, window_stop_distance=0.3, min_voice_s=1.0)


def test_turn_changes_inside_one_region_land_within_half_a_second() -> None:
    truth = [(0, 0.5, 6.3), (1, 6.3, 11.1), (0, 11.1, 14.0), (2, 14.0, 19.7)]
    found = find_turns(conversation(truth, 20.0), MixEmbedding(), OPTIONS)
    assert found.count == 3
    assert [t.voice for t in found.turns] == [0, 1, 0, 2]
    for (_, a, b), turn in zip(truth, found.turns, strict=True):
        assert abs(turn.start - a) <= 0.5 and abs(turn.end - b) <= 0.5, found.turns


def test_a_pause_between_speakers_is_the_boundary() -> None:
    truth = [(0, 0.3, 7.9), (1, 8.9, 14.0)]
    found = find_turns(conversation(truth, 15.0), MixEmbedding(), OPTIONS)
    assert [(t.voice, t.start, t.end) for t in found.turns] == [(0, 0.3, 7.9), (1, 8.9, 14.0)]


def test_a_given_count_is_obeyed_by_the_turns() -> None:
    truth = [(0, 0.5, 6.0), (1, 6.5, 12.0), (2, 12.5, 18.0)]
    found = find_turns(conversation(truth, 19.0), MixEmbedding(), OPTIONS, count=2)
    assert found.count == 2


def test_no_speech_gives_no_turns() -> None:
    found = find_turns(conversation([], 3.0), MixEmbedding(), OPTIONS)
    assert found.turns == [] and found.count == 0


def test_windows_cover_each_region_to_its_end() -> None:
    spans = windows([(0.0, 4.0), (5.0, 5.1), (6.0, 7.0)], TurnOptions(window_s=1.5, hop_s=0.75))
    assert spans[0][1] == 0.0 and spans[-2][2] == 4.0 and spans[-1] == (2, 6.0, 7.0)
    assert all(r != 1 for r, _, _ in spans)  # 0.1 s is too short to be heard


def test_a_region_a_little_longer_than_a_window_is_one_window() -> None:
    """Under a window and half a hop, a second window would be nearly the first again."""
    o = TurnOptions(window_s=1.5, hop_s=0.75)
    assert windows([(0.0, 1.66)], o) == [(0, 0.0, 1.66)]
    # From a window and half a hop on, windows every hop and one ending with the region, as before.
    assert windows([(0.0, 1.9)], o) == [(0, 0.0, 1.5), (0, pytest.approx(0.4), 1.9)]
    assert windows([(0.0, 3.0)], o) == [(0, 0.0, 1.5), (0, 0.75, 2.25), (0, 1.5, 3.0)]


def test_segments_join_pauses_only_when_asked() -> None:
    turns = [Turn(0, 0.0, 2.0), Turn(0, 2.5, 4.0), Turn(1, 4.5, 6.0)]
    found = Turns(turns, VOICES[:2])
    joined = segments_of(found, ["speaker_1", "alice"], join_pauses=True)
    assert [(s.speaker_id, s.start, s.end) for s in joined] == [("speaker_1", 0.0, 4.0), ("alice", 4.5, 6.0)]
    apart = segments_of(found, ["speaker_1", "alice"], join_pauses=False)
    assert len(apart) == 3


def test_no_segment_ends_after_the_clip() -> None:
    """Speech to the last sample of a 7.3355 s clip ends at 7.33: rounding to 10 ms never passes it."""
    found = Turns([Turn(0, 0.004, 3.0), Turn(1, 3.2, 7.3355)], VOICES[:2])
    segments = segments_of(found, ["speaker_1", "speaker_2"], join_pauses=True, duration_s=7.3355)
    assert [(s.start, s.end) for s in segments] == [(0.0, 3.0), (3.2, 7.33)]
    assert in_centiseconds(1.006, 2.004) == (1.01, 2.0)
    assert in_centiseconds(0.0, 1.13, 1.13) == (0.0, 1.13)  # 1.13 * 100 is 112.999...: not 1.12


class KnowsFirstVoice:
    def check(self, tenant_id: int, speaker_ids: Sequence[str]) -> None:
        pass

    def label(
        self,
        tenant_id: int,
        voices: np.ndarray,
        speaker_ids: Sequence[str] | None,
        band: Band,
        seconds: np.ndarray | None = None,
    ) -> list[str | None]:
        return ["alice" if v @ VOICES[1] > 0.9 else None for v in voices]


def test_unnamed_voices_are_numbered_in_order_of_first_appearance() -> None:
    service = DiarizationService(
        frontend=None,  # type: ignore[arg-type]  # the conversation comes prepared
        embed=MixEmbedding(),
        labels=KnowsFirstVoice(),
        limits=None,  # type: ignore[arg-type]
        options=OPTIONS,
    )
    truth = [(0, 0.5, 5.0), (1, 5.5, 10.0), (2, 10.5, 15.0), (0, 15.5, 19.0)]
    result = service.diarize(1, conversation(truth, 20.0), speaker_ids=["alice"])
    assert result.num_speakers == 3
    assert [s.speaker_id for s in result.segments] == ["speaker_1", "alice", "speaker_2", "speaker_1"]


def test_audio_types_bound_the_count() -> None:
    assert max_speakers_for("callcenter") == 6 and max_speakers_for("Meeting") == 20
    assert max_speakers_for(None) == max_speakers_for("podcast") == 10


def test_diarize_requests_name_their_audio_once() -> None:
    base = {"encoding": "FLAC", "sampleRate": 16000}
    for bad in ({}, {"content": "AAAA", "url": "https://example.org/a.flac"}):
        with pytest.raises(ValidationError, match="exactly one"):
            CompatDiarizeRequest(**base, **bad)
    assert CompatDiarizeRequest(**base, url="https://example.org/a.flac").content is None
    for bad_count in (0, True, -2, 101, 2.5, "abc"):
        with pytest.raises(ValidationError):
            CompatDiarizeRequest(**base, content="AAAA", speakers=bad_count)
    assert CompatDiarizeRequest(**base, content="AAAA", speakers=None).speakers == -1  # as if left out
    assert CompatDiarizeRequest(**base, content="AAAA", speakers="2").speakers == 2


def test_the_tuning_memo_survives_a_run_and_counts_the_audio_asked(tmp_path: Any) -> None:
    """`--tune-windows --cache`: vectors memoised in one run are not asked of the model in the next,
    and the seconds counted are those the service would embed, memoised or not."""
    from devtools.diarization import CachedEmbedding, CountedEmbedding

    asked: list[int] = []

    def model(waves: Sequence[np.ndarray], cancel: Cancellation | None = None) -> np.ndarray:
        asked.append(len(waves))
        return np.stack([np.full(DIM, float(len(w))) for w in waves])

    waves = [np.ones(RATE, dtype=np.float32), np.ones(RATE // 2, dtype=np.float32)]
    first = CachedEmbedding(model)
    vectors = first(waves)
    first.save(str(tmp_path / "vectors.pkl"))
    second = CachedEmbedding(model)
    second.load(str(tmp_path / "vectors.pkl"))
    counted = CountedEmbedding(second)
    assert np.array_equal(counted(waves), vectors) and asked == [2]
    assert counted.seconds == pytest.approx(1.5)
    CachedEmbedding(model).load(str(tmp_path / "absent.pkl"))  # a first run starts empty
