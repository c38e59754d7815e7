"""MQTT 5 packets written by hand, for clients that do not wait to be let in.

An attacker does not wait for a CONNACK before publishing: these helpers send CONNECT and a
QoS 1 PUBLISH back to back on one connection (TLS or plain) and report what the broker
answered, so a test can assert that no session was ever granted.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

CONNACK = 0x20
PUBACK = 0x40


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str) -> bytes:
    raw = s.encode()
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(client_id: str, keepalive: int = 30) -> bytes:
    variable = _string("MQTT") + bytes([5, 0x02]) + keepalive.to_bytes(2, "big") + _varint(0)
    body = variable + _string(client_id)
    return bytes([0x10]) + _varint(len(body)) + body


def publish_packet(topic: str, payload: bytes, packet_id: int = 1) -> bytes:
    body = _string(topic) + packet_id.to_bytes(2, "big") + _varint(0) + payload
    return bytes([0x32]) + _varint(len(body)) + body


@dataclass(frozen=True)
class Attempt:
    """What the broker did with one CONNECT + PUBLISH: `connack` is its reason code if a
    CONNACK came back at all, `puback` the PUBLISH's; `refusal` says how the connection
    ended otherwise."""

    connack: int | None
    refusal: str | None
    puback: int | None = None

    @property
    def granted(self) -> bool:
        return self.connack == 0


def tls_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


def attempt(
    port: int,
    context: ssl.SSLContext | None,
    client_id: str,
    topic: str,
    payload: bytes,
    timeout: float = 5.0,
) -> Attempt:
    """Connect to 127.0.0.1:port, send CONNECT and PUBLISH at once, read the answer."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock: socket.socket = raw
    try:
        if context is not None:
            try:
                sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
            except (ssl.SSLError, OSError) as exc:
                return Attempt(None, f"TLS handshake failed: {exc}")
        data = b""
        try:
            sock.sendall(connect_packet(client_id) + publish_packet(topic, payload))
            while len(data) < 4:
                chunk = sock.recv(4096)
                if not chunk:
                    return Attempt(None, "connection closed by the broker, no CONNACK")
                data += chunk
            if data[0] != CONNACK:
                return Attempt(None, f"not a CONNACK: {data[:8]!r}")
            connack, rest = data[3], data[2 + data[1] :]
            if connack != 0:
                return Attempt(connack, None)
            # Let in: wait for the PUBLISH's answer, so the broker has handled it.
            while len(rest) < 4 or rest[0] != PUBACK:
                chunk = sock.recv(4096)
                if not chunk:
                    return Attempt(connack, "connection closed before the PUBACK")
                rest += chunk
            return Attempt(connack, None, rest[4] if rest[1] > 2 else 0)
        except (ssl.SSLError, OSError) as exc:
            return Attempt(None, f"{type(exc).__name__}: {exc}")
    finally:
        sock.close()
