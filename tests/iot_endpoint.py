"""A stand-in for AWS IoT Core's MQTT-over-WebSockets endpoint, on loopback: TLS with the
tests' CA, a WebSocket handshake that must be SigV4-signed, and each WebSocket's frames
relayed to a real Mosquitto over mutual TLS as one watcher identity, as IoT Core would act
for the credentials that signed. The MQTT is Mosquitto's; the WebSockets are the
`websockets` library's. Debian's Mosquitto cannot open a WebSockets listener itself."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from cloud.identity.local_ca import Identity


class IotEndpoint:
    """wss://127.0.0.1:`port`/mqtt, relaying to the broker on `broker_port` as `watcher`.
    `start()` and `stop()` may be repeated (a stop drops every connection, as a lost network
    would); `handshakes` keeps the query of every signed handshake it let in."""

    def __init__(self, port: int, server: Identity, broker_port: int, watcher: Identity) -> None:
        self.port = port
        self.handshakes: list[dict[str, list[str]]] = []
        self._broker_port = broker_port
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls.load_cert_chain(server.cert, server.key)
        self._to_broker = ssl.create_default_context(cafile=str(watcher.ca))
        self._to_broker.load_cert_chain(watcher.cert, watcher.key)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(self._serve())
            except BaseException as exc:  # the test sees it, not this thread's log
                failed.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        if failed:
            raise failed[0]

    def stop(self) -> None:
        if self._loop is None or self._server is None or self._thread is None:
            return
        server = self._server

        def drop() -> None:
            # Cut, not closed: IoT Core's connections end so when the network goes.
            for connection in server.connections:
                connection.transport.abort()
            server.close()

        self._loop.call_soon_threadsafe(drop)
        self._thread.join(10)
        self._loop = self._server = self._thread = None

    async def _serve(self) -> Server:
        return await serve(
            self._relay,
            "127.0.0.1",
            self.port,
            ssl=self._tls,
            subprotocols=["mqtt"],  # type: ignore[list-item]
            process_request=self._check_signed,
        )

    def _check_signed(self, connection: ServerConnection, request: Request) -> Response | None:
        query = parse_qs(urlsplit(request.path).query)
        if query.get("X-Amz-Algorithm") != ["AWS4-HMAC-SHA256"] or "X-Amz-Signature" not in query:
            return connection.respond(HTTPStatus.FORBIDDEN, "not signed\n")
        self.handshakes.append(query)
        return None

    async def _relay(self, ws: ServerConnection) -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self._broker_port, ssl=self._to_broker
        )

        async def up() -> None:
            async for frame in ws:
                writer.write(frame if isinstance(frame, bytes) else frame.encode())
                await writer.drain()

        async def down() -> None:
            while data := await reader.read(65536):
                await ws.send(data)

        tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except ConnectionClosed:
            pass
        finally:
            for task in tasks:
                task.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@contextlib.contextmanager
def iot_endpoint(*args: Any) -> Iterator[IotEndpoint]:
    endpoint = IotEndpoint(*args)
    endpoint.start()
    try:
        yield endpoint
    finally:
        endpoint.stop()
