"""The fault proxy itself (tests/proxy.py), against a loopback echo server: the faults the
other tests rely on do what they say."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.proxy import Proxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    server.close()


def roundtrip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


def dead(sock: socket.socket, data: bytes) -> bool:
    """True if the connection is gone: reset, or closed with nothing echoed."""
    try:
        return roundtrip(sock, data) == b""
    except OSError:
        return True


def refused(port: int) -> bool:
    """A new connection is reset at once (on loopback connect() itself may see the RST)."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        return True
    with sock:
        return dead(sock, b"z")


def test_pause_holds_bytes_and_resume_delivers_them(echo_port: int) -> None:
    with (
        Proxy(echo_port, lifetime=20) as proxy,
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as sock,
    ):
        assert roundtrip(sock, b"before") == b"before"
        proxy.pause()
        sock.sendall(b"held")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(10)  # nothing crosses while paused
        proxy.resume()
        sock.settimeout(2)
        assert sock.recv(10) == b"held"


def test_cut_resets_open_connections_and_refuses_new_ones_until_restored(echo_port: int) -> None:
    with Proxy(echo_port, lifetime=20) as proxy:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        assert roundtrip(sock, b"x") == b"x"
        proxy.cut()
        assert dead(sock, b"y")
        sock.close()
        assert refused(proxy.port)
        assert proxy.stats.resets == 1 and proxy.stats.refused >= 1
        proxy.restore()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as again:
            assert roundtrip(again, b"back") == b"back"


def test_delay_and_drop(echo_port: int) -> None:
    with Proxy(echo_port, lifetime=20) as proxy:
        proxy.delay(0.2)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=3) as sock:
            start = time.monotonic()
            assert roundtrip(sock, b"slow") == b"slow"
            assert time.monotonic() - start >= 0.4  # 0.2 s each way
        proxy.delay(0)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as sock:
            assert roundtrip(sock, b"a") == b"a"
            proxy.drop()
            assert dead(sock, b"b")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as sock:
            assert roundtrip(sock, b"new ones work") == b"new ones work"


def test_proxy_stops_by_itself_after_its_lifetime(echo_port: int) -> None:
    proxy = Proxy(echo_port, lifetime=0.3).start()
    try:
        assert proxy.wait_stopped(5), "the proxy outlived its lifetime"
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
    finally:
        proxy.stop()
