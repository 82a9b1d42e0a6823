"""Operator maintenance: recompute speakers from their samples (after a threshold or model change)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from service.audio import MODEL_RATE, Band
from service.audio.band import band_of, telephone_band
from service.audio.frontend import AudioFrontEnd, AudioInput
from service.enrollment import policy as rules
from service.enrollment.policy import EnrollmentPolicy
from service.enrollment.ports import ChangeKind, EmbedWaves, Store

TwinOf = Callable[[np.ndarray, int], np.ndarray | None]
"""(16 kHz float32 audio of a sample, its source rate) -> its narrowband twin, or None (narrowband)."""


class Twins:
    """Narrowband twins made again from stored audio, as enrollment makes them."""

    def __init__(self, frontend: AudioFrontEnd, embed: EmbedWaves) -> None:
        self.frontend = frontend
        self.embed = embed

    def __call__(self, wave: np.ndarray, source_rate: int) -> np.ndarray | None:
        pcm = np.clip(np.round(wave * 32768.0), -32768, 32767).astype("<i2").tobytes()
        prepared = self.frontend.load(AudioInput(pcm, "LINEAR16", MODEL_RATE))
        speech = prepared.speech_wave()
        if len(speech) == 0 or band_of(source_rate, speech) != Band.WIDE:
            return None
        return rules.normalise(self.embed([telephone_band(speech)])[0])


def recompute_all(
    store: Store, model_sha256: str, policy: EnrollmentPolicy, twin_of: TwinOf | None = None
) -> tuple[int, int]:
    """Re-derive every speaker's centroid, spread and status; returns (speakers, with vectors).

    With `twin_of`, the narrowband twins of samples whose audio was kept are made again first
    (the others keep what is stored), outside any transaction: the model never runs while a
    speaker's row (or SQLite's write lock) is held, nor past PostgreSQL's idle-in-transaction
    timeout. Each speaker is then one transaction that also logs a change, so running replicas
    refresh their index from the change log; a sample deleted meanwhile is left out.
    """
    total = indexed = 0
    for tenant_id, external_id in store.speaker_keys():
        twins: dict[str, np.ndarray | None] = {}
        if twin_of is not None:
            with store.transaction() as tx:
                speaker = tx.lock_speaker(tenant_id, external_id, create=False)
                stored = tx.stored_audio(speaker.id) if speaker is not None else []
            twins = {sid: twin_of(np.frombuffer(audio, dtype="<f4"), rate) for sid, audio, rate in stored}
        with store.transaction() as tx:
            speaker = tx.lock_speaker(tenant_id, external_id, create=False)
            if speaker is None:
                continue  # deleted meanwhile
            present = {s.sample_id for s in tx.samples(speaker.id)}
            for sample_id, twin in twins.items():
                if sample_id in present:
                    tx.set_twin(sample_id, twin)
            record = tx.update_speaker(
                speaker.id, rules.aggregate(tx.samples(speaker.id), model_sha256, policy)
            )
            tx.log_change(tenant_id, speaker.id, ChangeKind.RECOMPUTED)
        total += 1
        indexed += record.centroid is not None
    return total, indexed
