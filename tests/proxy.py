"""A small TCP proxy on loopback for network faults: pause, cut, delay, drop.

This kernel has no `netem`, so the tests put this between a client and a server (for
example `device-agent --broker mqtts://127.0.0.1:<proxy port>` in front of Mosquitto; TLS
passes through untouched, and the broker's certificate names 127.0.0.1).

- `pause()`: stop moving bytes in both directions; connections stay open, as when a cable is
  pulled and put back before either side's keepalive notices. `resume()` undoes it.
- `cut()`: reset every open connection and refuse new ones (accepted, then reset) until
  `restore()`: a link that is down, seen from both ends.
- `drop()`: reset every open connection once; new ones are accepted as usual.
- `delay(seconds)`: hold each chunk that long before passing it on (0 turns it off).

One thread runs a selector loop; control calls are carried out by that thread and return
once they took effect. It listens on 127.0.0.1 only, holds at most `max_connections`
connections and `buffer_limit` bytes per direction (then it stops reading: backpressure, not
memory growth), and stops by itself after `lifetime` seconds if nobody stops it.
"""

from __future__ import annotations

import contextlib
import queue
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

LOOPBACK = "127.0.0.1"
_CHUNK = 65_536


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a link that died would look to the peer."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


@dataclass
class _Side:
    sock: socket.socket
    # Bytes to write to this socket, each with the monotonic time it may leave.
    out: deque[tuple[float, bytes]] = field(default_factory=deque)
    out_bytes: int = 0
    eof: bool = False  # the peer feeding this side has closed


@dataclass
class _Link:
    client: _Side
    upstream: _Side

    def sides(self) -> tuple[_Side, _Side]:
        return self.client, self.upstream

    def other(self, side: _Side) -> _Side:
        return self.upstream if side is self.client else self.client


@dataclass
class ProxyStats:
    accepted: int = 0
    refused: int = 0  # connections reset at accept while cut, or over max_connections
    resets: int = 0  # open connections reset by cut() or drop()
    bytes_up: int = 0  # client -> server
    bytes_down: int = 0  # server -> client


class Proxy:
    def __init__(
        self,
        target_port: int,
        *,
        target_host: str = LOOPBACK,
        max_connections: int = 64,
        buffer_limit: int = 1 << 20,
        lifetime: float = 300.0,
    ) -> None:
        if target_host not in (LOOPBACK, "localhost"):
            raise ValueError("the test proxy forwards to loopback only")
        self.target = (target_host, target_port)
        self.max_connections = max_connections
        self.buffer_limit = buffer_limit
        self.lifetime = lifetime
        self.stats = ProxyStats()
        self._listener = socket.create_server((LOOPBACK, 0), backlog=64)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._links: list[_Link] = []
        self._paused = False
        self._refusing = False
        self._delay = 0.0
        self._commands: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = (
            queue.SimpleQueue()
        )
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"proxy-{self.port}", daemon=True)

    # -- control, from any thread ----------------------------------------------------------

    def start(self) -> Proxy:
        self._thread.start()
        return self

    def wait_stopped(self, timeout: float) -> bool:
        """Wait for the proxy to end (its lifetime over, or stopped): whether it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def pause(self) -> None:
        self._call(lambda: setattr(self, "_paused", True))

    def resume(self) -> None:
        self._call(lambda: setattr(self, "_paused", False))

    def cut(self) -> None:
        def do() -> None:
            self._refusing = True
            self._reset_all()

        self._call(do)

    def restore(self) -> None:
        """Undo cut() and pause(): accept and forward again."""

        def do() -> None:
            self._refusing = False
            self._paused = False

        self._call(do)

    def drop(self) -> None:
        self._call(self._reset_all)

    def delay(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._call(lambda: setattr(self, "_delay", seconds))

    def stop(self) -> None:
        self._stopped.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(5)
        self._close_all()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _call(self, action: Callable[[], None], timeout: float = 5.0) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("the proxy is not running")
        done = threading.Event()
        self._commands.put((action, done))
        self._wake()
        if not done.wait(timeout):
            raise RuntimeError("the proxy did not carry out a command in time")

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # -- the loop, on the proxy's thread ---------------------------------------------------

    def _run(self) -> None:
        deadline = time.monotonic() + self.lifetime
        sel = selectors.DefaultSelector()
        try:
            while not self._stopped.is_set() and time.monotonic() < deadline:
                self._run_commands()
                timeout = self._register(sel)
                for key, events in sel.select(timeout):
                    if key.data == "listener":
                        self._accept()
                    elif key.data == "wake":
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    else:
                        link, side = key.data
                        if link not in self._links:
                            continue  # closed earlier in this round
                        if events & selectors.EVENT_READ:
                            self._read(link, side)
                        if link in self._links and events & selectors.EVENT_WRITE:
                            self._write(link, side)
                self._reap_finished()
        finally:
            sel.close()
            self._close_all()
            self._run_commands()  # nobody waits forever on a command
            self._stopped.set()

    def _run_commands(self) -> None:
        while True:
            try:
                action, done = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                action()
            finally:
                done.set()

    def _register(self, sel: selectors.BaseSelector) -> float:
        """(Re)build the selector's interest for this round; return how long to wait."""
        for key in list(sel.get_map().values()):
            sel.unregister(key.fileobj)
        sel.register(self._listener, selectors.EVENT_READ, "listener")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        now = time.monotonic()
        timeout = 0.2
        for link in self._links:
            for side in link.sides():
                events = 0
                other = link.other(side)
                if not self._paused and not side.eof and other.out_bytes < self.buffer_limit:
                    events |= selectors.EVENT_READ
                if side.out and not self._paused:
                    due = side.out[0][0]
                    if due <= now:
                        events |= selectors.EVENT_WRITE
                    else:
                        timeout = min(timeout, due - now)
                if events:
                    sel.register(side.sock, events, (link, side))
        return max(timeout, 0.0)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if self._refusing or len(self._links) >= self.max_connections:
                self.stats.refused += 1
                _reset(conn)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2.0)
            except OSError:
                self.stats.refused += 1
                _reset(conn)  # the server is down: the client sees what it would see
                continue
            conn.setblocking(False)
            upstream.setblocking(False)
            for s in (conn, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._links.append(_Link(_Side(conn), _Side(upstream)))
            self.stats.accepted += 1

    def _read(self, link: _Link, side: _Side) -> None:
        try:
            data = side.sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(link, reset=True)
            return
        other = link.other(side)
        if not data:
            side.eof = True
            if not other.out:
                self._close(link, reset=False)
            return
        if side is link.client:
            self.stats.bytes_up += len(data)
        else:
            self.stats.bytes_down += len(data)
        other.out.append((time.monotonic() + self._delay, data))
        other.out_bytes += len(data)

    def _write(self, link: _Link, side: _Side) -> None:
        now = time.monotonic()
        while side.out and side.out[0][0] <= now:
            due, data = side.out[0]
            try:
                sent = side.sock.send(data)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(link, reset=True)
                return
            side.out_bytes -= sent
            if sent < len(data):
                side.out[0] = (due, data[sent:])
                return
            side.out.popleft()
        if not side.out and link.other(side).eof:
            self._close(link, reset=False)  # the peer closed and all it sent is passed on

    def _reap_finished(self) -> None:
        """Close links whose both ends have closed. (Delayed chunks need nothing here: the
        next round's select() wakes in time to write them.)"""
        for link in list(self._links):
            if link.client.eof and link.upstream.eof:
                self._close(link, reset=False)

    def _close(self, link: _Link, *, reset: bool) -> None:
        if link in self._links:
            self._links.remove(link)
        for side in link.sides():
            if reset:
                _reset(side.sock)
            else:
                with contextlib.suppress(OSError):
                    side.sock.close()

    def _reset_all(self) -> None:
        for link in list(self._links):
            self.stats.resets += 1
            self._close(link, reset=True)

    def _close_all(self) -> None:
        for link in list(self._links):
            self._close(link, reset=True)
        for s in (self._listener, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                s.close()
