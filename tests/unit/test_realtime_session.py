"""The stream session on the fakes of devtools.fakes (no model, no server): chunk by chunk, in stream
time, bad chunks refused alone, the context carried across chunks, and the stream limits. The same
on real speech over gRPC and WebSocket is tests/api/test_realtime.py."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from devtools.fakes import FakeServices, SyntheticVoice, as_linear16, fake_services
from service.api.stream import answer_json
from service.audio.frontend import AudioInput
from service.config import RealtimeSettings
from service.diarization.turns import TurnOptions
from service.enrollment.identification import Segment, Thresholds
from service.errors import InvalidSpeakerId, SpeakerNotFound, TooManyStreams, Unauthorized
from service.realtime.grpc_server import answer_messages
from service.realtime.session import (
    StreamLimiter,
    StreamSession,
    authenticate,
    parse_speaker_ids,
)
from service.storage.repository import TenantKey

ALICE, BOB, STRANGER = SyntheticVoice(1), SyntheticVoice(2), SyntheticVoice(99)
ACME = TenantKey(tenant_id=1, tenant="acme", key_id="k1")
RATE = 16_000


@pytest.fixture(scope="module")
def svc() -> FakeServices:
    svc = fake_services()
    svc.enroll_takes(ACME.tenant_id, "alice", ALICE)
    svc.enroll_takes(ACME.tenant_id, "bob", BOB)
    return svc


def session(svc: FakeServices, context_s: float = 3.0, speakers: tuple[str, ...] = ()) -> StreamSession:
    settings = RealtimeSettings(context_seconds=context_s)
    return StreamSession(svc.identification, ACME, list(speakers), settings, decode_timeout_s=10)


def chunks(wave: np.ndarray, seconds: float = 3.0) -> list[AudioInput]:
    step = int(seconds * RATE)
    return [as_linear16(wave[i : i + step]) for i in range(0, len(wave), step)]


def test_each_chunk_is_answered_in_stream_time_with_its_speaker(svc: FakeServices) -> None:
    talk = np.concatenate([ALICE.wave(10, seconds=6.0)[: 6 * RATE], BOB.wave(10, seconds=6.0)[: 6 * RATE]])
    s = session(svc)
    answers = [s.chunk(c) for c in chunks(talk)]
    assert [a.index for a in answers] == [0, 1, 2, 3]
    assert [(a.start, a.end) for a in answers] == [(0.0, 3.0), (3.0, 6.0), (6.0, 9.0), (9.0, 12.0)]
    for a in answers:
        assert a.error is None and a.segments
        assert all(a.start <= seg.start < seg.end <= a.end for seg in a.segments)
    named = [max(a.segments, key=lambda g: g.end - g.start).speaker_id for a in answers]
    assert named == ["alice", "alice", "bob", "bob"]


def test_both_wires_carry_each_stretchs_decision_score(svc: FakeServices) -> None:
    threshold = svc.identification.thresholds.identify
    for voice, named in ((ALICE, True), (STRANGER, False)):
        answer = session(svc).chunk(as_linear16(voice.wave(11, seconds=3.0)))
        assert answer.segments and all(
            g.score is not None and (g.score >= threshold) == named for g in answer.segments
        )
        messages = answer_messages(answer)
        assert [m.identification_score for m in messages] == pytest.approx([g.score for g in answer.segments])
        assert [g["score"] for g in answer_json(answer)["segments"]] == [g.score for g in answer.segments]


def test_an_unknown_voice_is_unknown(svc: FakeServices) -> None:
    answer = session(svc).chunk(as_linear16(STRANGER.wave(10, seconds=3.0)))
    assert answer.error is None and {g.speaker_id for g in answer.segments} == {"unknown"}


def test_offsets_the_client_gives_are_stream_time(svc: FakeServices) -> None:
    answer = session(svc).chunk(as_linear16(ALICE.wave(11, seconds=3.0)[: 3 * RATE]), offset=42.0)
    assert (answer.start, answer.end) == (42.0, 45.0)
    assert all(42.0 <= g.start < g.end <= 45.0 for g in answer.segments)


def test_a_bad_chunk_is_refused_alone(svc: FakeServices) -> None:
    s = session(svc)
    good = chunks(ALICE.wave(12, seconds=6.0)[: 6 * RATE])
    first = s.chunk(good[0])
    bad = [
        s.chunk(AudioInput(b"", "LINEAR16", RATE)),
        s.chunk(AudioInput(b"not audio at all", "FLAC")),
        s.chunk(AudioInput(good[1].data, "LINEAR16", None)),
        s.chunk(AudioInput(good[1].data, "LINEAR16", 2)),
        *(s.chunk(good[1], offset=o) for o in (-5.0, float("nan"), float("inf"))),
    ]
    last = s.chunk(good[1])
    assert [b.error.code for b in bad if b.error] == [
        "audio.Empty",
        "audio.Undecodable",
        "audio.MissingSampleRate",
        "audio.Undecodable",  # 2 Hz
        *["request.Invalid"] * 3,  # offsets that are no stream time
    ]
    assert first.error is None and last.error is None
    # The refused chunks took no stream time: the last chunk follows the first.
    assert (last.start, last.end) == (3.0, 6.0) and [b.index for b in bad] == [1, 2, 3, 4, 5, 6, 7]
    assert all(b.start == b.end == 3.0 for b in bad[4:])


def test_silence_is_an_error_for_its_chunk(svc: FakeServices) -> None:
    answer = session(svc).chunk(as_linear16(np.zeros(3 * RATE, dtype=np.float32)))
    assert answer.error is not None and answer.error.code == "audio.InsufficientSpeech"


def test_the_context_carries_a_turn_across_chunks_and_stays_bounded(svc: FakeServices) -> None:
    """The tail of a turn is scored with the turn's start before it, and is answered from the
    chunk's own start; the context never holds more than `context_seconds`."""
    turn = ALICE.wave(13, seconds=10.0)[: 10 * RATE]
    s = session(svc, context_s=3.0)
    answers = [s.chunk(c) for c in chunks(turn)]  # 3 + 3 + 3 + 1 s
    tail = answers[-1]
    assert (tail.start, tail.end) == (9.0, 10.0)
    assert [(g.speaker_id, g.start) for g in tail.segments] == [("alice", 9.0)]
    assert len(s._context) == 3 * RATE
    # The vectors kept are of the context's audio alone: the stream's memory stays bounded too.
    assert s._known.vectors and all(a >= 7 * RATE for a, _ in s._known.vectors)


def test_restricted_candidates_and_unknown_ids(svc: FakeServices) -> None:
    answer = session(svc, speakers=("bob",)).chunk(as_linear16(ALICE.wave(14, seconds=3.0)))
    assert {g.speaker_id for g in answer.segments} == {"unknown"}
    with pytest.raises(SpeakerNotFound):
        StreamSession.check_speakers(svc.enrollment, ACME.tenant_id, ["alice", "nobody"])
    StreamSession.check_speakers(svc.enrollment, ACME.tenant_id, ["alice", "bob"])


def test_speaker_ids_and_keys_as_clients_send_them() -> None:
    assert parse_speaker_ids(" alice, bob ,,") == ["alice", "bob"]
    assert parse_speaker_ids(None) == [] and parse_speaker_ids(["carol"]) == ["carol"]
    with pytest.raises(InvalidSpeakerId):
        parse_speaker_ids("alice,../etc")
    keys = {"good": ACME}
    hits: list[str] = []
    assert authenticate(keys.get, hits.append, "good") == ACME and hits == ["k1"]
    for bad in (None, "", "wrong"):
        with pytest.raises(Unauthorized):
            authenticate(keys.get, hits.append, bad)


def test_streams_are_limited_per_key_and_in_all() -> None:
    limiter = StreamLimiter(per_key=2, total=3)
    with limiter.slot("a"), limiter.slot("a"):
        with pytest.raises(TooManyStreams):
            limiter.__class__.slot(limiter, "a").__enter__()
        with limiter.slot("b"), pytest.raises(TooManyStreams):
            limiter.slot("c").__enter__()
        assert limiter.open_streams("a") == 2
    assert limiter.open_streams("a") == 0 and limiter.open_streams("b") == 0


def test_the_reader_of_a_call_that_stopped_does_not_wait_forever() -> None:
    """A call whose requests fail while the read-ahead queue is full (a message over gRPC's size
    limit) ends with nothing reading the queue: the reader must still end once the call stops."""
    import threading

    from service.realtime.grpc_server import read_ahead

    def messages() -> Iterator[int]:
        yield from (1, 2)  # 2 fills the queue of one while 1 is being scored
        raise RuntimeError("message larger than max")

    stop = threading.Event()
    before = threading.active_count()
    chunks = read_ahead(messages(), 1, 5.0, stop)
    assert next(chunks) == 1  # then the reader queues 2 and fails; no one reads on
    time.sleep(0.5)
    stop.set()  # the call ends
    for _ in range(50):
        if threading.active_count() <= before:
            break
        time.sleep(0.1)
    assert threading.active_count() <= before


def test_a_chunk_from_the_other_band_is_scored_without_the_context(svc: FakeServices) -> None:
    """A window is scored in one band, judged from its spectrum: 16 kHz context before a call's
    8 kHz chunk would have it scored against the wideband voiceprints (a real stream named the
    wrong speaker so). Across a change of band the chunk is scored as a stream's first."""
    wide = ALICE.wave(13, seconds=3.0)[: 3 * RATE]
    narrow_wave = BOB.wave(14, seconds=3.0)[: 3 * RATE][::2]  # 8 kHz (the tones lie below 4 kHz)
    narrow = as_linear16(narrow_wave)
    narrow = AudioInput(narrow.data, "LINEAR16", RATE // 2)
    mixed = session(svc)
    assert mixed.chunk(as_linear16(wide)).error is None
    after_wide = mixed.chunk(narrow)
    alone = session(svc).chunk(narrow, offset=3.0)
    assert after_wide.error is None and alone.error is None
    assert [(g.speaker_id, g.start, g.end, g.score) for g in after_wide.segments] == [
        (g.speaker_id, g.start, g.end, g.score) for g in alone.segments
    ]
    # Within one band the context stays: a second wideband chunk is scored with the first before it.
    again = session(svc)
    again.chunk(as_linear16(wide))
    assert len(again._context) > 0
    again.chunk(as_linear16(ALICE.wave(15, seconds=3.0)[: 3 * RATE]))
    assert len(again._context) > 0


def test_a_calls_window_is_scored_as_heard_at_its_own_rate(
    svc: FakeServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window goes to identification re-encoded at 16 kHz, saying the rate its chunks came at:
    the band and the speech detector follow that rate, as identify's do for the same 8 kHz bytes.
    Without it the window's spectrum decided, and 8 kHz speech with content up to 4 kHz was scored
    in the wide band (a real stream answered unknown where identify named the speaker)."""
    heard: list[int | None] = []
    real = svc.identification.segments

    def segments(tenant_id: int, audio: AudioInput, *args: object, **kwargs: object) -> object:
        heard.append(audio.source_rate)
        return real(tenant_id, audio, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(svc.identification, "segments", segments)
    narrow = AudioInput(as_linear16(BOB.wave(14, seconds=3.0)[: 3 * RATE][::2]).data, "LINEAR16", RATE // 2)
    stream = session(svc)
    assert stream.chunk(narrow).error is None and stream.chunk(narrow).error is None
    assert stream.chunk(as_linear16(ALICE.wave(13, seconds=3.0)[: 3 * RATE])).error is None
    assert heard == [RATE // 2, RATE // 2, RATE]


class Scripted:
    """An identification whose `segments` answers each window with the next scripted stretches
    (window time: the context first, then the chunk)."""

    def __init__(self, answers: list[list[Segment]], threshold: float = 4.0) -> None:
        self.answers = answers
        self.thresholds = Thresholds(threshold, threshold)
        self.turn_options = TurnOptions()
        self.merge_gap_s = 1.0

    def segments(self, *args: object, **kwargs: object) -> list[Segment]:
        return self.answers.pop(0)


def held_names(second: Segment, chunk_s: float = 1.0, **settings: float) -> list[str]:
    """What a stream answers for a 1 s chunk of alice, then a `chunk_s` chunk scored as `second`."""
    first = Segment("alice", 0.0, 1.0, 6.0)
    ident = Scripted([[first], [second]])
    s = StreamSession(
        ident,  # type: ignore[arg-type]
        ACME,
        [],
        RealtimeSettings(context_seconds=0.0, **settings),
        decode_timeout_s=10,
    )
    wave = ALICE.wave(13, seconds=1.0 + chunk_s)
    chunks = [as_linear16(wave[:RATE]), as_linear16(wave[RATE : RATE + int(chunk_s * RATE)])]
    return [g.speaker_id for c in chunks for g in s.chunk(c).segments]


def test_a_short_stretch_whose_best_candidate_was_just_named_keeps_the_name() -> None:
    """A turn resumed after a pause, or the next short chunk of it, is a weaker sample than a whole
    turn: within `hold_margin` of the threshold, the speaker just named keeps the name."""
    near = Segment(None, 0.2, 0.9, 2.5, candidate="alice")
    assert held_names(near, hold_margin=2.0) == ["alice", "alice"]
    assert held_names(near, hold_margin=0.0) == ["alice", "unknown"]  # off
    assert held_names(near, hold_margin=1.0) == ["alice", "unknown"]  # under the margin
    other = Segment(None, 0.2, 0.9, 3.5, candidate="bob")
    assert held_names(other, hold_margin=2.0) == ["alice", "unknown"]  # someone else's best
    longest = RealtimeSettings().hold_max_seconds
    long = Segment(None, 0.0, longest + 0.5, 3.5, candidate="alice")
    assert held_names(long, chunk_s=longest + 0.5, hold_margin=2.0) == ["alice", "unknown"]  # judged alone
    late = Segment(None, 0.2, 0.9, 3.5, candidate="alice")
    assert held_names(late, hold_margin=2.0, hold_seconds=0.1) == ["alice", "unknown"]  # too late


def test_a_voice_that_passes_for_a_speaker_another_voice_took_is_named_too() -> None:
    """A diarized clip names each speaker once, so a second voice that passes for that speaker is
    unknown there; in a stream's short window it is the same speaker found as two voices, and the
    chunk is answered as one stretch of that speaker (under the threshold it stays unknown)."""

    def answer(second: Segment) -> list[tuple[str, float, float, float | None]]:
        ident = Scripted([[Segment("alice", 0.0, 1.4, 6.0), second]])
        s = StreamSession(
            ident,  # type: ignore[arg-type]
            ACME,
            [],
            RealtimeSettings(context_seconds=0.0, hold_margin=0.0),
            decode_timeout_s=10,
        )
        chunk = s.chunk(as_linear16(ALICE.wave(13, seconds=3.0)[: 3 * RATE]))
        return [(g.speaker_id, g.start, g.end, g.score) for g in chunk.segments]

    assert answer(Segment(None, 1.6, 3.0, 5.0, candidate="alice")) == [("alice", 0.0, 3.0, 6.0)]
    assert answer(Segment(None, 1.6, 3.0, 3.5, candidate="alice")) == [
        ("alice", 0.0, 1.4, 6.0),
        ("unknown", 1.6, 3.0, 3.5),
    ]
    assert answer(Segment(None, 1.6, 3.0, 5.0, candidate="bob")) == [
        ("alice", 0.0, 1.4, 6.0),
        ("bob", 1.6, 3.0, 5.0),
    ]
