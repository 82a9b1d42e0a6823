"""When is an enrollment complete, and which new samples are refused. Pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from service import calibration as cal
from service.audio import Band
from service.audio import fingerprint as content
from service.enrollment.ports import Aggregates, SampleRecord, SpeakerStatus, StoredRecording
from service.errors import (
    DuplicateRecording,
    DuplicateSample,
    MultipleSpeakers,
    NoSpeakerVector,
    SpeakerMismatch,
)


@dataclass(frozen=True)
class EnrollmentPolicy:
    min_samples: int
    min_total_speech_seconds: float
    min_spread: float
    duplicate_cosine: float
    voice_check: float  # normalised units (the decision rule against one speaker)
    duplicate_fingerprint: float = 1.1  # off unless set
    max_spread: float = float("inf")  # off unless set
    # A recording belongs to one speaker of a tenant (see `check_other_speakers`).
    copy_search_cosine: float = cal.COPY_SEARCH_COSINE
    copy_search_limit: int = cal.COPY_SEARCH_LIMIT
    similar_voice: float = float("inf")  # normalised units; off unless set


def normalise(vector: np.ndarray) -> np.ndarray:
    """`vector` at unit length; NoSpeakerVector (4xx) if it has no direction (zero or not finite)."""
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        raise NoSpeakerVector()
    return (vector / norm).astype(np.float32)


def centroid_and_spread(vectors: Sequence[np.ndarray]) -> tuple[np.ndarray, float]:
    """Normalised mean of normalised vectors, and the spread: mean cosine distance to it."""
    stack = np.stack(vectors).astype(np.float32)
    centre = normalise(stack.mean(axis=0))
    spread = float(np.mean(1.0 - stack @ centre))
    return centre, max(spread, 0.0)


VoiceScore = Callable[[np.ndarray, np.ndarray], float]  # (new vector, voiceprint) -> normalised score


def voiceprint_samples(samples: Sequence[SampleRecord], policy: EnrollmentPolicy) -> Sequence[SampleRecord]:
    """The samples (in the order they were accepted) a new sample's voice is checked against.

    Once they include a complete enrollment, that is the earliest complete set: what later samples
    are held to then never moves, so a voiceprint cannot be walked away in steps that each pass the
    check. Before that, all of them."""
    for n in range(max(policy.min_samples, 1), len(samples) + 1):
        prefix = samples[:n]
        _, spread = centroid_and_spread([s.vector for s in prefix])
        if not missing(n, sum(s.speech_seconds for s in prefix), spread, policy):
            return prefix
    return samples


def check_new_sample(
    vector: np.ndarray,
    earlier: Sequence[SampleRecord],
    policy: EnrollmentPolicy,
    fingerprint: bytes | None = None,
    voice: tuple[VoiceScore, float] | None = None,
    band: Band = Band.WIDE,
) -> None:
    """Refuse a near-copy of an earlier sample, a voice unlike the earlier samples, or a sample that
    would widen the voiceprint past what one voice spans (`policy.max_spread`).

    `voice`: the decision rule's score of the new sample against a voiceprint, and the least it must
    reach (`policy.voice_check` while enrolling; the verify threshold once the speaker is complete).
    The voiceprint is that of `voiceprint_samples`: once complete, the samples that completed it,
    so accepted samples cannot walk a finished voiceprint away; for a narrowband `vector` (`band`),
    made of the samples' narrowband twins."""
    if not earlier:
        return
    if fingerprint:
        for sample in earlier:
            if (
                sample.fingerprint
                and content.similarity(fingerprint, sample.fingerprint) >= policy.duplicate_fingerprint
            ):
                raise DuplicateSample(
                    "This sample is a copy of one the speaker already has (the same recording, "
                    "re-encoded or with noise added); send a different utterance"
                )
    stack = np.stack([s.vector for s in earlier])
    closest = float(np.max(stack @ vector))
    if closest >= policy.duplicate_cosine:
        raise DuplicateSample(
            f"This sample is a near-copy of one the speaker already has (cosine {closest:.3f}); "
            "send a different utterance"
        )
    if voice is not None:
        score_of, least = voice
        prints = voiceprint_samples(earlier, policy)
        centre, _ = centroid_and_spread([s.band_vector if band == Band.NARROW else s.vector for s in prints])
        score = score_of(vector, centre)
        if score < least:
            raise SpeakerMismatch(
                f"This voice does not match the speaker's earlier samples (score {score:.2f}, "
                f"at least {least:g} needed)"
            )
    _, before = centroid_and_spread(list(stack))
    _, after = centroid_and_spread([*stack, vector])
    if after > policy.max_spread and after > before:
        raise SpeakerMismatch(
            f"This sample would widen the speaker's voiceprint past what one voice spans (spread "
            f"{after:.3f}, at most {policy.max_spread:g}); it does not sound like the earlier samples"
        )


def check_other_speakers(
    vector: np.ndarray,
    fingerprint: bytes | None,
    recordings: Sequence[StoredRecording],
    policy: EnrollmentPolicy,
) -> None:
    """Refuse a recording that another speaker of the tenant already has. `recordings`: samples of
    the tenant's other speakers nearest by voiceprint; only those whose vectors have at least
    `policy.copy_search_cosine` to the new one, the `policy.copy_search_limit` nearest, have their
    fingerprints compared (a few milliseconds each). A vector within `policy.duplicate_cosine` of
    one of theirs is the same recording too, as for the speaker's own samples: fingerprints need 2 s
    of audio in common, so a shorter clip is caught by its vector only. The message names no other
    speaker."""
    if not recordings:
        return
    cosines = np.array([float(r.vector @ vector) for r in recordings])
    copied = float(np.max(cosines)) >= policy.duplicate_cosine
    if not copied and fingerprint:
        nearest = [i for i in np.argsort(-cosines) if cosines[i] >= policy.copy_search_cosine]
        copied = any(
            content.similarity(fingerprint, recordings[i].fingerprint) >= policy.duplicate_fingerprint
            for i in nearest[: policy.copy_search_limit]
        )
    if copied:
        raise DuplicateRecording(
            "This recording is already enrolled for another speaker of this account; a recording "
            "can belong to one speaker only"
        )


def check_one_voice(vectors: Sequence[np.ndarray], score_of: VoiceScore, least: float) -> None:
    """Refuse a clip whose channels hold different voices: `vectors` are the speech of each channel
    with enough of it, and every pair must score at least `least` (the enrollment voice check)."""
    for i, first in enumerate(vectors):
        for second in vectors[i + 1 :]:
            score = score_of(first, second)
            if score < least:
                raise MultipleSpeakers(
                    f"The channels of this clip hold different voices (score {score:.2f} between "
                    f"them, at least {least:g} for one voice); send one speaker's voice only"
                )


def aggregate(samples: Sequence[SampleRecord], model_sha256: str, policy: EnrollmentPolicy) -> Aggregates:
    """The speaker's aggregates from its samples. Only the current model's vectors count:
    vectors of different models are never mixed."""
    current = [s for s in samples if s.model_sha256 == model_sha256]
    speech = float(sum(s.speech_seconds for s in current))
    if not current:
        return Aggregates(SpeakerStatus.ENROLLING, 0, 0.0, 0.0, None, None)
    centre, spread = centroid_and_spread([s.vector for s in current])
    complete = not missing(len(current), speech, spread, policy)
    twins = any(s.narrow_vector is not None for s in current)
    narrow = centroid_and_spread([s.band_vector for s in current])[0] if twins else None
    return Aggregates(
        status=SpeakerStatus.COMPLETE if complete else SpeakerStatus.ENROLLING,
        sample_count=len(current),
        speech_seconds=speech,
        spread=spread,
        centroid=centre,
        model_sha256=model_sha256,
        narrow_centroid=narrow,
    )


def missing(count: int, speech: float, spread: float, policy: EnrollmentPolicy) -> list[str]:
    needs = []
    if count < policy.min_samples:
        needs.append("more samples")
    if speech < policy.min_total_speech_seconds:
        needs.append("more speech")
    if spread < policy.min_spread:  # one sample has no spread at all
        needs.append("more diverse samples")
    return needs


def progress(count: int, speech: float, spread: float, policy: EnrollmentPolicy) -> float:
    """0..1, the mean of how far each of the three conditions has come."""
    if not missing(count, speech, spread, policy):
        return 1.0
    parts = [
        min(1.0, count / max(policy.min_samples, 1)),
        min(1.0, speech / policy.min_total_speech_seconds) if policy.min_total_speech_seconds else 1.0,
        min(1.0, spread / policy.min_spread) if policy.min_spread else 1.0,
    ]
    return round(min(sum(parts) / len(parts), 0.99), 3)
