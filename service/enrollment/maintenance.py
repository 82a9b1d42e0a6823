"""Operator maintenance: recompute speakers from their samples (after a threshold or model change)."""

from __future__ import annotations

from service.enrollment import policy as rules
from service.enrollment.policy import EnrollmentPolicy
from service.enrollment.ports import ChangeKind, Store


def recompute_all(store: Store, model_sha256: str, policy: EnrollmentPolicy) -> tuple[int, int]:
    """Re-derive every speaker's centroid, spread and status; returns (speakers, with vectors).

    Each speaker is one transaction that also logs a change, so running replicas refresh their
    index from the change log.
    """
    total = indexed = 0
    for tenant_id, external_id in store.speaker_keys():
        with store.transaction() as tx:
            speaker = tx.lock_speaker(tenant_id, external_id, create=False)
            if speaker is None:
                continue  # deleted meanwhile
            record = tx.update_speaker(
                speaker.id, rules.aggregate(tx.samples(speaker.id), model_sha256, policy)
            )
            tx.log_change(tenant_id, speaker.id, ChangeKind.RECOMPUTED)
        total += 1
        indexed += record.centroid is not None
    return total, indexed
