"""`cloud alerts watch`: the rules over the live stream, until stopped.

Events arrive in the stream's network thread, ticks (every TICK_S: staleness and offline
need time to pass without any event) in the caller's; both go through one lock into the
engine. Whatever the engine announces is first written to the state file (episode and the
remote notifiers' outbox together, atomically), then printed, then handed to the delivery
thread: a restart after the write never announces that episode again, and what the webhook
or SNS had not yet taken is sent after the restart. (A crash between a remote's answer and
the outbox's next save can repeat one delivery: bodies carry `episode` to drop it by.)

While the stream is not receiving (broker down, refused), staleness and offline are not
judged: a watcher that hears nothing cannot tell a silent sensor from a silent broker.
They are measured again from when it receives again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloud.alerts.engine import Engine, Notification
from cloud.alerts.notify import FloodGate, NotifyError, Remote, Stdout, text_line
from cloud.alerts.rules import RuleSet
from cloud.alerts.state import AlertState, load_state, save_state
from cloud.live.events import LiveEvent
from cloud.live.stream import Stream
from cloud.pidlock import PidLock

log = logging.getLogger(__name__)

TICK_S = 1.0
#: What changes without a notification (last readings, threshold runs) is saved this often.
SAVE_EVERY_MS = 5_000
#: Notifications kept for the remote notifiers at most; older ones are dropped (logged).
OUTBOX_MAX = 1000
#: How long a stopping watcher lets the remotes take what is queued before it saves the rest.
DRAIN_S = 10.0


def now_ms() -> int:
    return int(time.time() * 1000)


def state_lock(state_path: Path) -> PidLock:
    """One watcher per state file: two would each announce every episode."""
    return PidLock(
        state_path.with_name(state_path.name + ".lock"),
        lambda pid: (
            f"another `cloud alerts watch` (pid {pid}) uses {state_path}: stop it, or give "
            "this one --state of its own"
        ),
        lambda why: (
            f"--state {state_path}: cannot keep the alerts' state there ({why}); give a "
            "folder this user may write"
        ),
    )


class Watcher:
    def __init__(
        self,
        rules: RuleSet,
        state_path: Path,
        stdout: Stdout,
        remotes: list[Remote],
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.rules = rules
        self.state_path = state_path
        self.stdout = stdout
        self.remotes = remotes
        self.clock = clock
        self.state: AlertState = load_state(state_path)
        if not remotes and self.state.outbox:
            log.warning(
                "%d notification(s) the last run had not delivered to its webhook or SNS are "
                "dropped: this run has neither",
                len(self.state.outbox),
            )
            self.state.outbox.clear()
        self.engine = Engine(rules, self.state, clock())
        self.gate = FloodGate(rules.max_per_minute)
        self._lock = threading.Condition()
        self._listening = False
        self._why: str | None = "not connected yet"
        self._dirty = True
        self._saved_ms = 0
        self._closing = False
        #: Per remote, how many of the outbox's first bodies it has taken: each remote has a
        #: thread of its own, so a webhook that times out holds up neither SNS nor another.
        self._taken = [0] * len(remotes)
        self._delivery = [
            threading.Thread(target=self._deliver, args=(i,), name=f"alerts-{r.name}", daemon=True)
            for i, r in enumerate(remotes)
        ]

    # -- from the stream --------------------------------------------------------------------

    def on_event(self, event: LiveEvent) -> None:
        with self._lock:
            notes = self.engine.on_event(event)
            self._dirty = True
            self._emit(notes, self.clock())

    def on_state(self, why: str | None) -> None:
        with self._lock:
            if why is None and not self._listening:
                self._listening = True
                self.engine.listening_from(self.clock())
                log.info("receiving the live stream; %d rule(s) watching", len(self.rules.rules))
            elif why is not None and why != self._why:
                log.warning("%s: staleness and offline are not judged meanwhile", why)
                self._listening = False
            self._why = why

    # -- the loop ---------------------------------------------------------------------------

    def tick(self) -> None:
        with self._lock:
            now = self.clock()
            notes = self.engine.tick(now) if self._listening else []
            self._emit(notes, now)
            if self._dirty and now - self._saved_ms >= SAVE_EVERY_MS:
                self._save(now)

    def run(self, stream: Stream, stop: threading.Event, tick_s: float = TICK_S) -> None:
        """Watch until `stop` is set; on the way out the state is saved."""
        for thread in self._delivery:
            thread.start()
        stream.start()
        try:
            while not stop.wait(tick_s):
                self.tick()
        finally:
            stream.stop()
            with self._lock:
                self._closing = True
                self._lock.notify_all()
            deadline = time.monotonic() + DRAIN_S
            for thread in self._delivery:
                thread.join(max(0.0, deadline - time.monotonic()))
            with self._lock:
                self._save(self.clock())

    def _emit(self, notes: list[Notification], now: int) -> None:
        bodies = self.gate.admit(notes, now)
        if not bodies:
            return
        if self.remotes:
            self.state.outbox.extend(bodies)
            if len(self.state.outbox) > OUTBOX_MAX:
                dropped = len(self.state.outbox) - OUTBOX_MAX
                log.error("the remote notifiers lag: dropped the %d oldest unsent", dropped)
                del self.state.outbox[:dropped]
                self._taken = [max(0, n - dropped) for n in self._taken]
        # Saved before anyone hears of it: after a crash from here on, the episode is known
        # as announced (and the outbox still holds it for the remotes).
        self._save(now)
        for body in bodies:
            self.stdout.write(body)
        self._lock.notify_all()

    def _save(self, now: int) -> None:
        save_state(self.state_path, self.state)
        self._dirty, self._saved_ms = False, now

    # -- the remote notifiers, in their own thread ------------------------------------------

    def _deliver(self, index: int) -> None:
        """Remote `index`'s thread: the outbox's bodies in order. A body leaves the outbox
        once every remote has taken it (so a restart sends the rest again)."""
        remote = self.remotes[index]
        while True:
            with self._lock:
                self._lock.wait_for(
                    lambda: self._taken[index] < len(self.state.outbox) or self._closing
                )
                if self._taken[index] >= len(self.state.outbox):
                    return  # closing, and nothing left for this one
                body = self.state.outbox[self._taken[index]]
            _send(remote, body)
            with self._lock:
                position = self._taken[index]
                if position < len(self.state.outbox) and self.state.outbox[position] is body:
                    self._taken[index] += 1
                done = min(self._taken)
                if done:
                    del self.state.outbox[:done]
                    self._taken = [n - done for n in self._taken]
                    self._save(self.clock())
                self._lock.notify_all()


def _send(remote: Remote, body: dict[str, Any]) -> None:
    try:
        remote.send(body)
    except NotifyError as exc:
        log.error("%s; not delivered: %s", exc, text_line(body))
    except Exception:  # a bug in a notifier must not stop the others or the watcher
        log.exception("%s failed on: %s", remote.name, text_line(body))
