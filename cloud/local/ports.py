"""Loopback ports: find a free one, wait for a server to listen on one."""

from __future__ import annotations

import socket
import subprocess
import time

from cloud.errors import LocalStackError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers bind (SO_REUSEADDR): a port our own stopped part left in TIME_WAIT
        # is free for it, and `up` after `down` keeps the same ports.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def is_listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_listening(
    port: int, process: subprocess.Popen[bytes], what: str, log_hint: str, timeout: float = 15.0
) -> None:
    """Return once `port` accepts connections; fail early if `process` dies first."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise LocalStackError(f"{what} exited with code {process.returncode}; see {log_hint}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise LocalStackError(
                f"{what} did not listen on port {port} in {timeout:g}s; see {log_hint}"
            )
        # A connect refused returns at once: pace the retries so we do not spin.
        time.sleep(0.05)
