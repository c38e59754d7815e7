"""Readings PUBACKed but not yet confirmed by ingest's receipt, and when each is due again.

A PUBACK says the broker has a reading, not that it is in the table (Mosquitto
acknowledges before a message is on disk or with ingest). With receipts, the agent keeps
each such reading here until its receipt comes, and sends it again if none comes within
the receipt timeout, or soon after a reconnect (a broker that crashed lost what it held).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Readings awaiting a receipt, at most. Past it the agent waits for receipts before
#: sending more, so a stalled ingest does not have the broker queue the whole outbox for
#: it (again at every resend).
MAX_UNCONFIRMED = 1000
#: After a reconnect, receipts the broker kept for us arrive first; what has none by then
#: is sent again (a broker that was killed lost it).
RECONNECT_GRACE = 2.0
#: A reading that timed out waits twice as long for its next receipt, up to this factor.
MAX_TIMEOUT_FACTOR = 16


class Unconfirmed:
    """seq -> deadline of each reading awaiting its receipt; a heap orders the deadlines
    (stale entries are skipped), and `timeouts` counts each seq's expiries."""

    def __init__(self, timeout: float, clock: Callable[[], float]) -> None:
        self.timeout = timeout  # a remote config may change it
        self._clock = clock
        self._deadlines_of: dict[int, float] = {}
        self._heap: list[tuple[float, int]] = []
        self._timeouts: dict[int, int] = {}
        self._warned_at = -float("inf")

    def __len__(self) -> int:
        return len(self._deadlines_of)

    def acked(self, seq: int) -> None:
        """The broker PUBACKed it: wait for its receipt (longer after each timeout)."""
        factor: int = min(2 ** self._timeouts.get(seq, 0), MAX_TIMEOUT_FACTOR)
        self._wait(seq, self._clock() + self.timeout * factor)

    def confirmed(self, seq: int) -> None:
        """Its receipt came (or it left the outbox): nothing more to wait for."""
        self._deadlines_of.pop(seq, None)
        self._timeouts.pop(seq, None)

    def after_reconnect(self) -> None:
        """What waits past the grace is due at its end: a broker that was killed lost it."""
        soon = self._clock() + RECONNECT_GRACE
        for seq, deadline in list(self._deadlines_of.items()):
            if deadline > soon:
                self._wait(seq, soon)

    def expired(self, now: float) -> list[int]:
        """The seqs that waited too long for their receipt (lost by the broker, or ingest),
        forgotten here: the caller sends them again."""
        expired: list[int] = []
        while self._heap and self._heap[0][0] <= now:
            deadline, seq = heapq.heappop(self._heap)
            if self._deadlines_of.get(seq) == deadline:
                del self._deadlines_of[seq]
                self._timeouts[seq] = self._timeouts.get(seq, 0) + 1
                expired.append(seq)
        if expired:
            self._warn(now, expired)
        return expired

    def _wait(self, seq: int, deadline: float) -> None:
        self._deadlines_of[seq] = deadline
        heapq.heappush(self._heap, (deadline, seq))
        if len(self._heap) > 4 * MAX_UNCONFIRMED:
            # Mostly entries of readings confirmed since: at thousands of readings a second
            # they would pile up for a whole timeout. Keep only the live ones.
            self._heap = [(d, s) for s, d in self._deadlines_of.items()]
            heapq.heapify(self._heap)

    def _warn(self, now: float, expired: list[int]) -> None:
        # Once a minute at most: a stopped ingest would repeat this for every reading.
        level = logging.WARNING if now - self._warned_at >= 60 else logging.DEBUG
        if level == logging.WARNING:
            self._warned_at = now
        log.log(
            level,
            "%d reading(s) (seq %d..%d) have no receipt from cloud ingest yet: sending them "
            "again (is `cloud ingest` running? a device on a broker without it needs "
            "--no-receipts)",
            len(expired),
            min(expired),
            max(expired),
        )
