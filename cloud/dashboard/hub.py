"""Fans the dashboard's messages out to every open page (one server-sent event stream each).

Messages come from the live stream's thread; each page's queue lives in the server's event
loop, so `publish` hands them over with call_soon_threadsafe. A page that falls too far
behind (a tab asleep, a slow link) is not allowed to hold the server's memory: its queue is
bounded, and once full the page is told to reload its state, which it does from the
snapshot and the table, so it loses nothing it shows.
"""

from __future__ import annotations

import asyncio
from typing import Any

#: Messages a page may have waiting: minutes of a fleet of 100 at 1 Hz.
MAX_QUEUED = 20_000
#: Put in every queue when the server stops: the stream ends there.
CLOSING: dict[str, Any] = {"type": "closing"}


class Page:
    """One open page's queue of messages."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.overflowed = False

    def put(self, message: dict[str, Any]) -> None:
        if self.overflowed:
            return
        if self.queue.qsize() >= MAX_QUEUED:
            self.overflowed = True
            self.queue.put_nowait({"type": "resync"})
            return
        self.queue.put_nowait(message)

    async def batch(self, timeout: float) -> list[dict[str, Any]]:
        """What is waiting, at least one message unless `timeout` passes first."""
        try:
            first = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return []
        batch = [first]
        while not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return batch


class Hub:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pages: set[Page] = set()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The server's loop, once it runs; messages before it have no page to go to."""
        self._loop = loop

    def publish(self, message: dict[str, Any]) -> None:
        """From any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._deliver, message)

    def _deliver(self, message: dict[str, Any]) -> None:
        for page in self._pages:
            page.put(message)

    def close_all(self) -> None:
        """From any thread: end every page's stream (the server is stopping; the pages say
        so and reconnect by themselves when it is back)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._deliver, CLOSING)

    def open(self) -> Page:
        page = Page()
        self._pages.add(page)
        return page

    def close(self, page: Page) -> None:
        self._pages.discard(page)
