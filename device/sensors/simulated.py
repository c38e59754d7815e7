"""A seeded random walk around room temperature, like the tutorial's mock sensor."""

from __future__ import annotations

import random
import zlib


class SimulatedSensor:
    retry_delay = 0.0

    def __init__(self, sensor_id: str, seed: int | None = None, start: float = 21.0) -> None:
        # Seeded from the id by default: each simulated device walks its own repeatable path.
        self._rng = random.Random(zlib.crc32(sensor_id.encode()) if seed is None else seed)
        self._value = start + self._rng.uniform(-3, 3)

    def read(self) -> dict[str, float]:
        # Mean-reverting so a long run stays plausible instead of drifting off to -40.
        self._value += self._rng.gauss(0, 0.2) + (21.0 - self._value) * 0.01
        return {"temperature": round(self._value, 2)}

    def close(self) -> None:
        pass
