"""Capped, jittered exponential backoff, shared by the feed's reconnects and ``riskmon tail``."""

from __future__ import annotations

import random


def backoff_delay(failures: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Seconds to wait after ``failures`` consecutive failures (the delay doubles from
    ``initial_s`` up to ``max_s``; the wait is a random point in its upper half)."""
    cap = min(max_s, initial_s * float(2 ** min(failures, 32)))
    return cap / 2 + rng.random() * cap / 2
