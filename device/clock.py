"""Honest time for readings on a device without a clock battery.

A Raspberry Pi boots at the time it last saved and jumps when NTP syncs. So the agent asks
the kernel whether the clock is synchronised (adjtimex: what chrony, ntpd and
systemd-timesyncd all set) and, until it is, holds the readings it takes with their
monotonic time; once it is, each is stamped with the wall time it was taken at (now minus
its age). A jump of the wall clock against the monotonic one is logged, and a backward one
counted.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: adjtimex's return value when the clock is not synchronised, and its status bit.
_TIME_ERROR = 5
_STA_UNSYNC = 0x0040
#: A wall clock that moved this much more (or less) than the monotonic one has jumped.
JUMP_MS = 1000


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    # struct timex of <sys/timex.h>, as glibc lays it out on Linux (32- and 64-bit).
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("padding", ctypes.c_int * 11),
    ]


def kernel_clock_synchronized() -> bool | None:
    """True or False as the kernel says (modes 0 only reads); None where it cannot say."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        timex = _Timex()
        state = libc.adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR and not timex.status & _STA_UNSYNC


@dataclass
class WallClock:
    """Epoch milliseconds for readings, the kernel's sync state, and jump detection.

    Each part is a callable so tests inject a clock that jumps or never syncs.
    """

    now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000
    monotonic: Callable[[], float] = time.monotonic
    synchronized: Callable[[], bool | None] = kernel_clock_synchronized
    backward_jumps: int = 0
    _last: tuple[int, float] | None = None

    def stamp(self, taken_at: float) -> int:
        """The wall time, in epoch ms, of a reading taken at monotonic time `taken_at`."""
        wall, mono = self.now_ms(), self.monotonic()
        self.check_jump(wall, mono)
        return wall - round((mono - taken_at) * 1000)

    def check_jump(self, wall: int | None = None, mono: float | None = None) -> int:
        """Log a jump since the last look; return it in ms (negative: backward)."""
        wall = self.now_ms() if wall is None else wall
        mono = self.monotonic() if mono is None else mono
        last, self._last = self._last, (wall, mono)
        if last is None:
            return 0
        jump = (wall - last[0]) - round((mono - last[1]) * 1000)
        if jump <= -JUMP_MS:
            self.backward_jumps += 1
            log.warning(
                "the system clock jumped back %.1fs; readings keep their true time "
                "(counted as a clock jump)",
                -jump / 1000,
            )
        elif jump >= JUMP_MS:
            log.info("the system clock jumped ahead %.1fs", jump / 1000)
        return jump
