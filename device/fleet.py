"""Many simulated devices on one thread: `device-agent simulate`.

Each device keeps what a real one has: its own identity (certificate, client id), its own
MQTT session and its own outbox. What they share is the thread. One loop waits on every
device's socket with the operating system's poller (epoll: no limit on descriptor numbers,
where paho's own loop uses select(), which fails past descriptor 1023 and which paho
reports as a lost connection), does each client's reads, writes and keep-alives, and gives
each agent a turn when its next reading is due or its transport reported something.

Connecting is the one blocking step (TCP and the TLS handshake happen inside paho's
connect()), so it runs on a few pool threads. That pool is also the ramp: at most
`connect_workers` handshakes at a time per loop, instead of a thousand devices storming the
broker at once. A device stays on its pool thread only while it connects; nothing else
touches its client meanwhile. A large fleet is split over a few loops (DEVICES_PER_LOOP).
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import logging
import math
import selectors
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from device.agent import Agent, Summary
from device.config import AgentConfig
from device.errors import AgentError
from device.payload import status_topic
from device.transport import Callbacks
from device.transport.paho import PahoTransport

log = logging.getLogger(__name__)

#: Handshakes in flight at once, per loop: enough to connect a thousand devices in seconds
#: on loopback, few enough that the broker and this process never see a storm. The pool
#: queues the rest, in the order they became due.
CONNECT_WORKERS = 2
#: Devices per loop, and loops at most. Every reading costs its device's outbox an fsync
#: (about a millisecond here), which one thread cannot do a thousand times a second on top
#: of the MQTT work; fsync releases the GIL, so a few loops wait on the disk side by side.
DEVICES_PER_LOOP = 125
MAX_LOOPS = 8
#: How often every client's keep-alive is looked after (paho's loop_misc).
MISC_INTERVAL = 1.0
#: After the last agent ended, how long its `offline` status and DISCONNECT may take.
CLOSE_TIMEOUT = 5.0
_SUCCESS = MQTTErrorCode.MQTT_ERR_SUCCESS


class FleetTransport(PahoTransport):
    """A paho transport without a thread of its own: the fleet's loop does its I/O."""

    def __init__(self, config: AgentConfig, callbacks: Callbacks, loop: Loop) -> None:
        self._loop = loop
        super().__init__(config, callbacks)

    def _configure(self, client: mqtt.Client) -> None:
        super()._configure(client)
        # paho asks for write readiness when it has queued a packet and gives it back when
        # all is written; the socket is handed over just before paho closes it.
        client.on_socket_register_write = lambda c, u, s: self._loop.want_write(self, True)
        client.on_socket_unregister_write = lambda c, u, s: self._loop.want_write(self, False)
        client.on_socket_close = lambda c, u, s: self._loop.forget(self)

    def start(self) -> None:
        self._loop.connect_soon(self, 0.0)

    def stop(self, timeout: float) -> None:
        """Queue `offline` and DISCONNECT; the fleet's loop writes them, then paho closes."""
        self._closing = True
        self._stop.set()
        if self._client.socket() is None:
            return  # not connected, or connecting: the loop closes it when connect returns
        if self._client.is_connected():
            self._client.publish(status_topic(self._config.sensor_id), b"offline", 1, True)
        self._client.disconnect()


def _open_unless_stopped(transport: FleetTransport) -> float | None:
    # On a pool thread; a device stopped while it waited there is not connected.
    return 0.0 if transport._stop.is_set() else transport._open()


@dataclass
class _Turns:
    """When each agent's next turn is due (a heap with stale entries skipped)."""

    heap: list[tuple[float, int, Agent]] = field(default_factory=list)
    due: dict[int, float] = field(default_factory=dict)
    order: itertools.count[int] = field(default_factory=itertools.count)

    def at(self, agent: Agent, when: float) -> None:
        self.due[id(agent)] = when
        heapq.heappush(self.heap, (when, next(self.order), agent))

    def pop_due(self, now: float) -> list[Agent]:
        ready = []
        while self.heap and self.heap[0][0] <= now:
            when, _, agent = heapq.heappop(self.heap)
            if self.due.get(id(agent)) == when:
                del self.due[id(agent)]
                ready.append(agent)
        return ready

    def next(self) -> float | None:
        while self.heap and self.due.get(id(self.heap[0][2])) != self.heap[0][0]:
            heapq.heappop(self.heap)
        return self.heap[0][0] if self.heap else None


class Fleet:
    """Runs agents built with `transport_factory=fleet.transport` until each is done,
    spread over a few loops (threads)."""

    def __init__(self, devices: int) -> None:
        count = max(1, min(MAX_LOOPS, math.ceil(devices / DEVICES_PER_LOOP)))
        self._loops = [Loop() for _ in range(count)]
        self._loop_of: dict[str, Loop] = {}

    def transport(self, config: AgentConfig, callbacks: Callbacks) -> FleetTransport:
        loop = self._loops[len(self._loop_of) % len(self._loops)]
        self._loop_of[config.sensor_id] = loop
        return loop.transport(config, callbacks)

    def add(self, agent: Agent) -> None:
        self._loop_of[agent.config.sensor_id].add(agent)

    def agents_for(self, configs: list[AgentConfig]) -> list[Agent]:
        """An agent per config on this fleet (each opens its outbox); AgentError, with
        those already made closed, if one cannot be made."""
        agents: list[Agent] = []
        try:
            for config in configs:
                agents.append(Agent(config, transport_factory=self.transport))
                self.add(agents[-1])
        except AgentError:
            for agent in agents:
                agent.close()
            raise
        return agents

    def run(self) -> dict[str, Summary | BaseException]:
        """Run every agent to its end; each one's tally, or what stopped it, by id."""
        results: dict[str, Summary | BaseException] = {}
        failures: list[BaseException] = []

        def drive(loop: Loop) -> None:
            try:
                results.update(loop.run())
            except BaseException as exc:  # a bug in the loop: raised below
                failures.append(exc)

        threads = [
            threading.Thread(target=drive, args=(loop,), name=f"fleet-{n}")
            for n, loop in enumerate(self._loops)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            raise failures[0]
        return results


class Loop:
    """One thread's share of the fleet: its devices' sockets, turns and connects."""

    def __init__(self, connect_workers: int = CONNECT_WORKERS) -> None:
        self._selector = selectors.DefaultSelector()
        self._pool = ThreadPoolExecutor(connect_workers, thread_name_prefix="connect")
        self._agents: list[Agent] = []
        self._turns = _Turns()
        self._woken: deque[Agent] = deque()  # agents with news, appended from any thread
        self._order = itertools.count()
        self._to_connect: list[tuple[float, int, FleetTransport]] = []
        self._connecting = 0
        self._connected: deque[tuple[FleetTransport, float | None]] = deque()
        self._sockets: dict[FleetTransport, tuple[Any, bool]] = {}  # socket, writing?
        self._to_write: set[FleetTransport] = set()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread_id: int | None = None
        self.results: dict[str, Summary | BaseException] = {}

    # -- what agents and transports call ----------------------------------------------------

    def transport(self, config: AgentConfig, callbacks: Callbacks) -> FleetTransport:
        return FleetTransport(config, callbacks, self)

    def add(self, agent: Agent) -> None:
        self._agents.append(agent)
        agent.on_event = lambda: self._wake(agent)

    def _wake(self, agent: Agent) -> None:
        self._woken.append(agent)
        if threading.get_ident() != self._thread_id:
            self._ring()  # stop() from a signal handler, or news from a connect thread

    def _ring(self) -> None:
        """Wake the loop from another thread (it may be waiting in the poller)."""
        with contextlib.suppress(BlockingIOError, OSError):  # pending already, or closed
            self._wake_w.send(b"\0")

    def connect_soon(self, transport: FleetTransport, delay: float) -> None:
        heapq.heappush(self._to_connect, (time.monotonic() + delay, next(self._order), transport))

    def want_write(self, transport: FleetTransport, writing: bool) -> None:
        entry = self._sockets.get(transport)
        if entry is None:
            return  # not handed to the loop yet (connecting): it asks paho then
        if writing:
            # Written at the end of this round: a loopback socket almost always takes it
            # all at once, which saves two epoll_ctl calls and a wake-up per packet.
            self._to_write.add(transport)
        elif entry[1]:
            self._watch_writable(transport, False)

    def _watch_writable(self, transport: FleetTransport, writing: bool) -> None:
        sock = self._sockets[transport][0]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
        self._selector.modify(sock, events, transport)
        self._sockets[transport] = (sock, writing)

    def _write_queued(self) -> None:
        while self._to_write:
            transport = self._to_write.pop()
            entry = self._sockets.get(transport)
            if entry is None or entry[1]:
                continue  # gone, or waiting for the poller to say it is writable
            client = transport._client
            rc = client.loop_write()
            if rc == _SUCCESS and client.socket() is not None and client.want_write():
                self._watch_writable(transport, True)  # the socket's buffer is full
            self._after_io(transport, rc)

    def forget(self, transport: FleetTransport) -> None:
        entry = self._sockets.pop(transport, None)
        if entry is not None:
            self._selector.unregister(entry[0])

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> dict[str, Summary | BaseException]:
        """Run every agent to its end; each one's tally, or what stopped it, by id."""
        self._thread_id = threading.get_ident()
        live = set(map(id, self._agents))
        for agent in self._agents:
            agent.begin()
            self._turns.at(agent, time.monotonic())
        next_misc = time.monotonic() + MISC_INTERVAL
        closing_until: float | None = None
        try:
            while True:
                now = time.monotonic()
                if not live:
                    if closing_until is None:
                        closing_until = now + CLOSE_TIMEOUT
                    if (not self._sockets and not self._connecting) or now >= closing_until:
                        break
                self._poll(self._timeout(now, next_misc, closing_until))
                self._hand_over_connected()
                self._start_connects()
                now = time.monotonic()
                if now >= next_misc:
                    next_misc = now + MISC_INTERVAL
                    for transport in list(self._sockets):
                        self._after_io(transport, transport._client.loop_misc())
                ready = {id(a): a for a in self._turns.pop_due(now)}
                while self._woken:
                    agent = self._woken.popleft()
                    ready[id(agent)] = agent
                for key, agent in ready.items():
                    if key in live and not self._turn(agent):
                        live.discard(key)
                self._write_queued()
        finally:
            for sock, _ in self._sockets.values():
                sock.close()  # past CLOSE_TIMEOUT: the broker sends these devices' wills
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()
        return self.results

    def _timeout(self, now: float, next_misc: float, closing_until: float | None) -> float:
        if self._woken:
            return 0.0
        deadlines = [next_misc]
        turn = self._turns.next()
        if turn is not None:
            deadlines.append(turn)
        if self._to_connect:
            deadlines.append(self._to_connect[0][0])
        if closing_until is not None:
            deadlines.append(closing_until)
        return max(0.0, min(deadlines) - now)

    def _poll(self, timeout: float) -> None:
        for key, events in self._selector.select(timeout):
            transport = key.data
            if transport is None:
                while True:
                    try:
                        if not self._wake_r.recv(4096):
                            break
                    except BlockingIOError:
                        break
                continue
            client = transport._client
            rc = _SUCCESS
            if events & selectors.EVENT_READ:
                rc = client.loop_read()
            if rc == _SUCCESS and events & selectors.EVENT_WRITE and client.socket() is not None:
                rc = client.loop_write()
            self._after_io(transport, rc)

    def _after_io(self, transport: FleetTransport, rc: MQTTErrorCode) -> None:
        if rc == _SUCCESS and transport._client.socket() is not None:
            return
        self.forget(transport)  # paho has closed it (and told us), or is about to
        delay = transport._closed(rc)
        if not transport._stop.is_set():
            self.connect_soon(transport, delay)

    def _start_connects(self) -> None:
        # Everything due goes to the pool at once: its threads take one after another
        # without waiting for this loop, which may be busy with its devices' turns.
        now = time.monotonic()
        while self._to_connect and self._to_connect[0][0] <= now:
            _, _, transport = heapq.heappop(self._to_connect)
            if transport._stop.is_set():
                continue
            self._connecting += 1
            future = self._pool.submit(_open_unless_stopped, transport)
            future.add_done_callback(functools.partial(self._on_connected, transport))

    def _on_connected(self, transport: FleetTransport, future: Future[float | None]) -> None:
        # On the pool thread: hand the result to the loop, and wake it.
        try:
            delay = future.result()
        except BaseException:  # a bug in connect: treated as a failed try, logged
            log.exception("connecting %s failed", transport._config.sensor_id)
            delay = transport._session.retry_delay()
        self._connected.append((transport, delay))
        self._ring()

    def _hand_over_connected(self) -> None:
        while self._connected:
            transport, delay = self._connected.popleft()
            self._connecting -= 1
            client = transport._client
            sock = client.socket()
            if delay is not None or sock is None:
                if not transport._stop.is_set():
                    self.connect_soon(transport, delay or 0.0)
                continue
            writing = client.want_write()
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
            self._selector.register(sock, events, transport)
            self._sockets[transport] = (sock, writing)
            if transport._stop.is_set():
                client.disconnect()  # stopped while connecting

    def _turn(self, agent: Agent) -> bool:
        """One turn of an agent; False once it has ended."""
        try:
            agent.handle_events(0)
            wait = agent.step()
        except BaseException as exc:  # the agent's own failure ends only that agent
            self.results[agent.config.sensor_id] = exc
            wait = None
        if wait is not None:
            self._turns.at(agent, time.monotonic() + wait)
            return True
        try:
            agent.end()
        except BaseException as exc:
            self.results.setdefault(agent.config.sensor_id, exc)
        self.results.setdefault(agent.config.sensor_id, agent.summary)
        return False
