"""Capped exponential backoff with full jitter, for every reconnect loop in the project.

Full jitter (a uniform draw between 0 and the capped exponential) keeps a fleet of devices
that lost the broker together from coming back in lockstep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.cap:
            raise ValueError("backoff needs 0 < initial <= cap")

    def next_delay(self) -> float:
        """The delay before the next attempt; grows until `cap`, then stays there."""
        ceiling = min(self.cap, self.initial * self.factor**self.attempt)
        self.attempt = min(self.attempt + 1, 64)  # no float overflow on long outages
        return self.rng.uniform(self.initial / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0
