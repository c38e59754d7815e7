"""The agent's loop: read the sensor, store each reading, publish it, forget it on PUBACK.

With receipts, a PUBACK only moves a reading to "unconfirmed": it is forgotten when ingest's
receipt says it is in the table, and sent again if none comes within the receipt timeout,
or soon after a reconnect (a broker that crashed lost what it held).

One thread runs this loop; the transport's network thread only reports back (acks,
receipts, failures, connection changes) through a queue, so all outbox writes happen here.
A simulated fleet runs many agents, and their transports, on one thread (device.fleet).
A remote config (device.remote_config) comes through the same queue and is put in force
between two turns; health messages (device.health) go out from this thread too.

The module runs a little past the usual length: what it keeps is the loop's own state
(readings held for the clock, in flight, to resend), which every step reads and writes;
the parts with an interface of their own are the modules named above.
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from device.backoff import Backoff
from device.clock import WallClock
from device.config import AgentConfig
from device.errors import BrokerError, OutboxError, SensorReadError
from device.health import HealthReporter
from device.outbox import Outbox
from device.payload import data_topic
from device.receipts import MAX_UNCONFIRMED, Unconfirmed
from device.remote_config import RemoteConfig
from device.sensors import Sensor, make_sensor
from device.transport import Callbacks, Transport, make_transport

log = logging.getLogger(__name__)

#: Attempts at one reading before it is skipped (each failure is counted).
READ_ATTEMPTS = 3
#: With --interval 0, readings are taken in batches of at most this many per commit.
MAX_BATCH = 256
#: Readings held in memory while the clock is not synchronised, at most (then they are
#: stamped with the clock as it is, and kept).
MAX_HELD = 10_000
#: The settings a sensor is made from: a remote config that changes one makes a new sensor.
SENSOR_SETTINGS = ("sensor", "pin", "w1_id", "i2c_address", "seed")


@dataclass
class Summary:
    sensor_id: str
    published: int = 0
    acknowledged: int = 0
    buffered: int = 0
    dropped: int = 0
    read_errors: int = 0
    clock_jumps: int = 0  # backward jumps of the system clock of more than a second

    def line(self) -> str:
        jumps = f", clock jumps back {self.clock_jumps}" if self.clock_jumps else ""
        return (
            f"{self.sensor_id}: published {self.published}, acknowledged {self.acknowledged}, "
            f"buffered {self.buffered}, dropped {self.dropped}, read errors {self.read_errors}"
            + jumps
        )


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        sensor: Sensor | None = None,
        transport_factory: Callable[[AgentConfig, Callbacks], Transport] = make_transport,
        clock: Callable[[], float] = time.monotonic,
        wall: WallClock | None = None,
    ) -> None:
        self._wall = wall or WallClock(monotonic=clock)
        # Readings taken while the clock is not synchronised: (values, monotonic time).
        self._held: list[tuple[dict[str, float], float]] = []
        self._clock_trusted = config.clock_wait == 0
        self._held_since: float | None = None
        self._next_clock_check = 0.0
        self.summary = Summary(config.sensor_id)
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        #: Called after each event is queued: a driver of many agents wakes this one.
        self.on_event: Callable[[], None] = lambda: None
        self._stopping = threading.Event()
        self._clock = clock
        self._topic = data_topic(config.sensor_id)
        self.outbox = Outbox(config.outbox, config.sensor_id, config.outbox_max, config.outbox_full)
        self._dropped_at_start = self.outbox.dropped
        self._remote = RemoteConfig(config, self.outbox)
        self.config = config = self._remote.restore()  # the last remote config, before connecting
        try:
            self.sensor = sensor or make_sensor(config)
        except BaseException:
            self.outbox.close()
            raise
        self._transport = transport_factory(
            config,
            Callbacks(
                on_ack=lambda token: self._post("ack", token),
                on_failed=lambda token: self._post("failed", token),
                on_connection=lambda up, why: self._post("connection", (up, why)),
                on_fatal=lambda why: self._post("fatal", why),
                on_receipt=lambda confirmed: self._post("receipt", confirmed),
                on_config=lambda payload: self._post("config", payload),
            ),
        )
        self._health = HealthReporter(
            self.summary, self.outbox, self._transport, self._wall, lambda: self._remote.version,
            clock,
        )  # fmt: skip
        self._connected = False
        self._offline_since = clock()
        self._last_offline_reason = "not connected yet"
        self._inflight: set[int] = set()
        self._unconfirmed = Unconfirmed(config.receipt_timeout, clock)  # with receipts
        self._resend: list[int] = []  # heap of seqs the transport gave back
        self._cursor = -1  # highest seq handed to the transport from the outbox
        self._produced = 0
        self._delivered: dict[int, int | None] = {}  # seq -> ts (None: PUBACK) to forget
        self._hold_until = 0.0  # after a refused delivery, wait before sending again
        self._hold_backoff = Backoff(initial=0.2, cap=5.0)
        self._next_read = 0.0
        self._flush_deadline: float | None = None

    def _post(self, event: str, value: Any) -> None:
        self._events.put((event, value))
        self.on_event()

    @property
    def held(self) -> int:
        """Readings taken but held until the system clock is synchronised."""
        return len(self._held)

    def close(self) -> None:
        """Release the outbox and sensor of an agent that will not run."""
        self.outbox.close()
        self.sensor.close()

    # -- control from outside (signal handlers, other threads) -----------------------------

    def stop(self) -> None:
        """Stop taking readings and flush; safe from a signal handler or another thread."""
        self._stopping.set()
        self._post("wake", None)

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> Summary:
        """Run until --count readings are acknowledged, or until stop(); return the tally."""
        self.begin()
        try:
            while (wait := self.step()) is not None:
                self.handle_events(wait)
        finally:
            self.end()
        return self.summary

    # One turn of the loop at a time, for a driver that runs many agents on one thread
    # (device.fleet): begin(), then step() and handle_events(0) whenever woken, then end().

    def begin(self) -> None:
        """Start connecting; readings the outbox kept from an earlier run are sent first."""
        backlog = len(self.outbox)
        if backlog:
            log.info("%d reading(s) from an earlier run wait in %s", backlog, self.config.outbox)
        self._transport.start()
        self._next_read = self._clock()

    def step(self) -> float | None:
        """Read, store and send what is due; return the seconds until the next turn is
        due (events may wake it sooner), or None once the agent is done."""
        cfg = self.config
        now = self._clock()
        if self._stopping.is_set() and self._flush_deadline is None:
            self._flush_deadline = now + cfg.flush_timeout
            self._release_held(force=True)  # into the outbox: nothing is lost
        self._wall.check_jump()
        if self._held:
            self._release_held()
        producing = self._flush_deadline is None and (
            cfg.count is None or self._produced < cfg.count
        )
        if producing and now >= self._next_read:
            self._take_readings()
            self._next_read = max(self._next_read + cfg.interval, now) if cfg.interval else now
        for seq in self._unconfirmed.expired(now):
            heapq.heappush(self._resend, seq)
        self._fill_window()
        if not producing and len(self.outbox) == 0 and not self._held:
            return None  # everything produced is acknowledged
        if self._flush_deadline is not None and now >= self._flush_deadline:
            log.warning(
                "flush timeout: %d reading(s) stay in %s for the next run",
                len(self.outbox),
                cfg.outbox,
            )
            return None
        self._check_offline_limit(now)
        if producing and cfg.interval == 0:
            wait = 0.0 if self._unsent() < cfg.inflight else 0.5
        elif producing:
            wait = max(0.0, self._next_read - now)
        else:
            wait = 0.5
        if self._flush_deadline is not None:
            wait = min(wait, max(0.0, self._flush_deadline - now))
        return min(wait, self._health.tick(cfg.health_interval, self._connected))

    def end(self) -> None:
        """Keep what is unsent, disconnect (publishing `offline`), close the outbox."""
        self._release_held(force=True)
        self._transport.stop(timeout=5.0)
        self.handle_events(0)
        self.summary.clock_jumps = self._wall.backward_jumps
        self.summary.buffered = len(self.outbox)
        # Plus any batch an outbox write error lost, counted as it happened.
        self.summary.dropped += self.outbox.dropped - self._dropped_at_start
        self.outbox.close()
        self.sensor.close()

    def _unsent(self) -> int:
        return len(self.outbox) - len(self._inflight) - len(self._unconfirmed)

    def _take_readings(self) -> None:
        cfg = self.config
        want = 1
        if cfg.interval == 0:
            # As fast as the link carries them: top up what is waiting to be sent.
            want = min(MAX_BATCH, cfg.inflight - self._unsent())
        if cfg.count is not None:
            want = min(want, cfg.count - self._produced)
        batch: list[tuple[dict[str, float], float]] = []
        for _ in range(max(0, want)):
            values = self._read_sensor()
            if values is None:
                break
            batch.append((values, self._clock()))
        if not batch:
            return
        self._produced += len(batch)
        if self._clock_is_trusted():
            self._store(batch)
        else:
            self._held.extend(batch)

    def _clock_is_trusted(self) -> bool:
        """Whether readings may be stamped now; False while holding them for the clock."""
        if self._clock_trusted:
            return True
        now = self._clock()
        if now >= self._next_clock_check:
            self._next_clock_check = now + 1.0  # a system call: once a second is plenty
            synced = self._wall.synchronized()
            if synced is None or synced:
                if self._held:
                    log.info(
                        "system clock synchronised: stamping %d held reading(s)", len(self._held)
                    )
                self._clock_trusted = True
                return True
        if self._held_since is None:
            self._held_since = now
            log.warning(
                "the system clock is not synchronised yet (no NTP sync since boot?): holding "
                "readings until it is, for at most %gs (--clock-wait)",
                self.config.clock_wait,
            )
        if now - self._held_since >= self.config.clock_wait or len(self._held) >= MAX_HELD:
            log.warning(
                "the system clock is still not synchronised after %.0fs: stamping readings "
                "with it as it is",
                now - self._held_since,
            )
            self._clock_trusted = True
            return True
        return False

    def _release_held(self, force: bool = False) -> None:
        if self._held and (force or self._clock_is_trusted()):
            held, self._held = self._held, []
            self._store(held)

    def _store(self, batch: list[tuple[dict[str, float], float]]) -> None:
        taken_ms = [self._wall.stamp(taken) for _, taken in batch]
        try:
            self.outbox.append([values for values, _ in batch], taken_ms=taken_ms)
        except OutboxError as exc:
            # Nothing of this batch was stored; say so and try again at the next tick.
            log.error("%s; %d reading(s) not kept", exc, len(batch))
            self.summary.dropped += len(batch)
            self._produced -= len(batch)  # --count means readings kept

    def _read_sensor(self) -> dict[str, float] | None:
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                return self.sensor.read()
            except SensorReadError as exc:
                self.summary.read_errors += 1
                log.warning(
                    "sensor read failed (attempt %d of %d): %s", attempt, READ_ATTEMPTS, exc
                )
                if attempt < READ_ATTEMPTS and self._stopping.wait(self.sensor.retry_delay):
                    break
        return None

    def _fill_window(self) -> None:
        if not self._connected or self._clock() < self._hold_until:
            return
        free = self.config.inflight - len(self._inflight)
        if self.config.receipts:
            free = min(free, MAX_UNCONFIRMED - len(self._unconfirmed) - len(self._inflight))
        if free <= 0:
            return
        to_send: list[tuple[int, bytes]] = []
        if self._resend:
            wanted: set[int] = set()
            while self._resend and len(wanted) < free:
                wanted.add(heapq.heappop(self._resend))
            # Re-read: a resent reading may have been dropped by a full outbox since.
            for p in self.outbox.pending(min(wanted) - 1, limit=len(self.outbox)):
                if p.seq in wanted:
                    to_send.append((p.seq, p.payload))
                if p.seq >= max(wanted):
                    break
            for gone in wanted.difference(seq for seq, _ in to_send):
                self._unconfirmed.confirmed(gone)
            free -= len(to_send)
        if free > 0:
            for p in self.outbox.pending(self._cursor, limit=free):
                to_send.append((p.seq, p.payload))
                self._cursor = p.seq
        for seq, payload in to_send:
            self._inflight.add(seq)
            self.summary.published += 1
            self._transport.publish(self._topic, payload, self.config.qos, seq)

    def handle_events(self, wait: float) -> None:
        """Handle what the transport reported, waiting up to `wait` seconds for the first."""
        before = len(self._delivered)
        try:
            event, value = self._events.get(timeout=wait) if wait > 0 else self._events.get_nowait()
            while True:
                self._handle(event, value)
                event, value = self._events.get_nowait()
        except queue.Empty:
            pass
        if self._delivered:
            self._forget_delivered(new=len(self._delivered) - before)

    def _forget_delivered(self, new: int) -> None:
        # PUBACKed (ts None) without receipts, or confirmed by a receipt (with its ts; the
        # receipt was matched against the outbox when it came, see _handle).
        confirmed = {seq: ts for seq, ts in self._delivered.items() if ts is not None}
        try:
            if confirmed:
                self.summary.acknowledged += self.outbox.remove(confirmed)
                for seq in confirmed:
                    del self._delivered[seq]
            self.summary.acknowledged += self.outbox.remove(self._delivered)
        except OutboxError as exc:
            # They are delivered; tried again at the next event, or sent again next run.
            if new:
                log.error("%s; %d delivered reading(s) not yet removed", exc, new)
            return
        self._delivered.clear()

    def _handle(self, event: str, value: Any) -> None:
        if event == "ack":
            if value in self._inflight:
                self._inflight.discard(value)
                self._hold_backoff.reset()
                if self.config.receipts:
                    self._unconfirmed.acked(value)
                else:
                    self._delivered[value] = None
        elif event == "receipt":
            try:
                # Only what is ours: a seq with another ts is another reading's (an outbox
                # replaced since); ours then still waits for its own receipt, or is resent.
                value = self.outbox.matching(value)
            except OutboxError as exc:
                log.error("%s; the receipt is ignored (its readings are sent again)", exc)
                return
            for seq, ts in value.items():
                # Whether PUBACKed yet or not (or sent by an earlier run): it is in the table.
                self._inflight.discard(seq)
                self._unconfirmed.confirmed(seq)
                self._delivered[seq] = ts
        elif event == "failed":
            if value in self._inflight:
                self._inflight.discard(value)
                heapq.heappush(self._resend, value)
                if self._hold_backoff.attempt == 0:
                    log.warning(
                        "the broker did not take reading seq %d (no subscriber yet, or not "
                        "connected): kept in the outbox and sent again",
                        value,
                    )
                self._hold_until = self._clock() + self._hold_backoff.next_delay()
        elif event == "connection":
            up, why = value
            if up and not self._connected:
                log.info("%s", why)
            elif not up and self._connected:
                log.warning("%s; readings are kept in %s", why, self.config.outbox)
                self._offline_since = self._clock()
            if up and not self._connected:
                self._unconfirmed.after_reconnect()
                self._health.connection(up)
                self._remote.flush(self._transport)
            self._connected = up
            if not up:
                self._last_offline_reason = why
        elif event == "config":
            self._remote.desired(value, self._reconfigure)
            self._remote.flush(self._transport)
        elif event == "fatal":
            raise BrokerError(value)

    def _reconfigure(self, new: AgentConfig) -> None:
        """Put a remote config in force: a new sensor if one of its settings changed (the
        old one closed once the new one is made), a new interval from the next reading;
        the rest is read where it is used."""
        old = self.config
        if any(getattr(new, name) != getattr(old, name) for name in SENSOR_SETTINGS):
            sensor = make_sensor(new)  # SensorError refuses the config: the old one stays
            self.sensor.close()
            self.sensor = sensor
        if old.interval and new.interval != old.interval:
            self._next_read += new.interval - old.interval
        self._unconfirmed.timeout = new.receipt_timeout
        self.config = new

    def _check_offline_limit(self, now: float) -> None:
        limit = self.config.offline_limit
        if limit and not self._connected and now - self._offline_since > limit:
            raise BrokerError(
                f"{self._last_offline_reason}, for more than {limit:g}s (--offline-limit); "
                f"{len(self.outbox)} reading(s) kept in {self.config.outbox}"
            )
