"""Keep an index equal to what the database committed, by following the change log.

Applying a change means re-reading that speaker's row (upsert it, or drop it if it is gone), so
applying one twice is harmless. On PostgreSQL a sequence number can become visible after a higher
one (transactions commit out of order) or never (a rolled-back insert): changes above the last
contiguous sequence are re-read on each poll, and a gap still open after `GAP_GRACE_S` is taken to
be a rollback. A transaction cannot commit that late unless its server stalls: a session idle
inside a transaction past `SPK_DATABASE__IDLE_IN_TRANSACTION_TIMEOUT_S` (15 s) is ended, and a
statement waits for a lock at most `SPK_DATABASE__LOCK_TIMEOUT_S` (5 s). Since numbers can commit out
of order, a rebuild cannot trust the highest sequence it sees either: a lower one may still be in
flight, so following resumes `REBUILD_WINDOW` below it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from service.enrollment.ports import SpeakerIndex, Store

log = logging.getLogger(__name__)

GAP_GRACE_S = 30.0
# Sequence numbers below the highest visible one that a rebuild re-reads. A transaction draws its
# number just before it commits, so far fewer than this many can overtake one still in flight.
REBUILD_WINDOW = 1000
# The change log keeps a day of changes (each replica purges older rows now and then). A follower
# that has not caught up for an hour (its database away) rebuilds instead, so it never needs a row
# that is gone.
CHANGE_LOG_KEEP_S = 86_400.0
RESYNC_AFTER_S = 3_600.0
PURGE_EVERY_S = 3_600.0


class IndexFollower:
    def __init__(self, store: Store, index: SpeakerIndex, model_sha256: str | None = None) -> None:
        """`model_sha256`: index only the voiceprints of this model (the one the process runs), so a
        replica never scores its vectors against another model's while `rebuild-index` has not run
        or replicas run different models during an upgrade."""
        self.store = store
        self.index = index
        self.model_sha256 = model_sha256
        self._floor = 0  # every change with seq <= floor has been applied
        self._applied: set[int] = set()  # applied changes above the floor
        self._gaps: dict[int, float] = {}  # missing seq -> when first seen missing
        self._lock = threading.Lock()
        self._caught_up_at = time.monotonic()  # the last rebuild or catch-up that worked
        self._purged_at = -math.inf

    @property
    def floor(self) -> int:
        """Every change with a sequence number up to this one is in the index."""
        return self._floor

    @property
    def applied_seq(self) -> int:
        return max(self._applied, default=self._floor)

    def rebuild(self) -> int:
        """Load every speaker from the database; returns how many are indexed."""
        with self._lock:
            highest = self.store.last_change_seq()  # read first: later changes are re-applied
            entries = self.store.index_entries(model_sha256=self.model_sha256)
            self.index.replace(entries)
            # Not `highest` itself: on PostgreSQL a lower change may commit after this snapshot.
            # Changes in the window that the snapshot already holds are re-applied, harmlessly.
            floor = max(0, highest - REBUILD_WINDOW)
            self._floor, self._applied, self._gaps = floor, set(), {}
            self._caught_up_at = time.monotonic()
        log.info("index rebuilt", extra={"speakers": len(entries), "seq": highest})
        return len(entries)

    def catch_up(self) -> int:
        """Apply committed changes not yet applied; returns how many speakers were refreshed (after
        an hour without catching up, every speaker: the log may have lost what it missed)."""
        if time.monotonic() - self._caught_up_at > RESYNC_AFTER_S:
            log.warning("the index fell behind the change log for over an hour: rebuilding it")
            return self.rebuild()
        with self._lock:
            changes = self.store.changes_since(self._floor)
            fresh = {c.speaker_id for c in changes if c.seq not in self._applied}
            if changes:
                self._refresh(fresh)
                self._applied.update(c.seq for c in changes)
                self._advance_floor(changes[-1].seq)
            self._caught_up_at = time.monotonic()
        self._purge_now_and_then()
        return len(fresh)

    def _purge_now_and_then(self) -> None:
        now = time.monotonic()
        if now - self._purged_at < PURGE_EVERY_S:
            return
        self._purged_at = now
        purged = self.store.purge_changes(datetime.now(UTC) - timedelta(seconds=CHANGE_LOG_KEEP_S))
        if purged:
            log.info("change log purged", extra={"rows": purged})

    def _refresh(self, speaker_ids: Iterable[int]) -> None:
        ids = set(speaker_ids)
        if not ids:
            return
        found = {e.speaker_id: e for e in self.store.index_entries(ids, self.model_sha256)}
        self.index.apply(list(found.values()), [i for i in ids if i not in found])

    def _advance_floor(self, highest: int) -> None:
        now = time.monotonic()
        seq = self._floor + 1
        while seq <= highest:
            if seq in self._applied:
                self._applied.discard(seq)
            elif now - self._gaps.setdefault(seq, now) < GAP_GRACE_S:
                break
            else:
                del self._gaps[seq]
            self._floor = seq
            seq += 1
