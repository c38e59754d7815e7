"""The dashboard's web app (Starlette): the page, its assets, and three endpoints.

- `/api/stream`: server-sent events. First a snapshot (every device, the state of the
  broker and the table, the active alerts, the server's clock), then batches of messages as
  they come: readings, device changes (status, health), source and alert changes.
- `/api/history?id=ID&minutes=N`: one sensor's readings of the last N minutes, from the
  table; 503 with {"error": "..."} when the table cannot be read.
- `/api/devices`: the snapshot alone, as JSON (for scripts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from cloud.cli.errors import aws_error_line
from cloud.dashboard.assets import STATIC_DIR
from cloud.dashboard.history import RANGES_MIN
from cloud.dashboard.hub import CLOSING
from cloud.dashboard.live import Live
from cloud.errors import TableError
from device.errors import PayloadError
from device.payload import check_sensor_id

#: A comment line this often keeps proxies from closing a quiet stream, and tells the server
#: that a page has gone (the write fails).
KEEPALIVE_S = 15.0


def _event(message: dict[str, Any]) -> str:
    return f"data: {json.dumps(message, separators=(',', ':'))}\n\n"


#: The names a page on loopback is reached by: a request naming any other host is refused,
#: so a web page elsewhere cannot rebind its own name to 127.0.0.1 and read the fleet.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def create_app(live: Live, vendor_dir: Path, loopback: bool = True) -> Starlette:
    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    async def stream(request: Request) -> Response:
        page = live.hub.open()

        async def events() -> AsyncIterator[str]:
            try:
                yield _event(live.snapshot())
                while True:
                    batch = await page.batch(KEEPALIVE_S)
                    if not batch:
                        yield ": keepalive\n\n"
                        continue
                    closing = CLOSING in batch
                    messages = [m for m in batch if m is not CLOSING]
                    if messages:
                        yield _event({"type": "batch", "messages": messages})
                    if page.overflowed or closing:
                        return  # the page reloads its state on "resync"
            finally:
                live.hub.close(page)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def devices(request: Request) -> Response:
        return JSONResponse(live.snapshot())

    async def history_endpoint(request: Request) -> Response:
        sensor_id = request.query_params.get("id", "")
        minutes = request.query_params.get("minutes", "60")
        try:
            check_sensor_id(sensor_id)
        except PayloadError as exc:
            return JSONResponse({"error": f"id: {exc}"}, status_code=400)
        if not minutes.isdigit() or int(minutes) not in RANGES_MIN:
            allowed = ", ".join(map(str, RANGES_MIN))
            return JSONResponse({"error": f"minutes: one of {allowed}"}, status_code=400)
        until_ms = int(time.time() * 1000)
        since_ms = until_ms - int(minutes) * 60_000
        try:
            # boto3 blocks: in a worker thread, so the live stream keeps flowing meanwhile.
            body = await asyncio.to_thread(live.history, sensor_id, since_ms, until_ms)
        except TableError as exc:
            live.set_table_problem(str(exc))
            return JSONResponse({"error": str(exc)}, status_code=503)
        except BotoCoreError as exc:
            line = aws_error_line(exc)
            live.set_table_problem(line)
            return JSONResponse({"error": line}, status_code=503)
        live.set_table_problem(None)
        return JSONResponse(body)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        live.hub.bind(asyncio.get_running_loop())
        yield

    middleware = (
        [Middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK_HOSTS))] if loopback else []
    )
    return Starlette(
        middleware=middleware,
        routes=[
            Route("/", index),
            Route("/api/stream", stream),
            Route("/api/devices", devices),
            Route("/api/history", history_endpoint),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
            Mount("/vendor", StaticFiles(directory=vendor_dir), name="vendor"),
        ],
        lifespan=lifespan,
    )
