"""Fakes for in-process daemon tests: a feed that delivers only what the test puts in the
inbox, a sink that keeps nothing, a wall clock the test moves."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping

from monitor.core.batch import Batch
from monitor.runtime.feed import LinkStats

LINKS = ("public", "private:main")


class ScriptedFeed:
    """Two connections (:data:`LINKS`) with settable counters; delivers nothing itself."""

    def __init__(self) -> None:
        self.stats = {name: LinkStats() for name in LINKS}
        self.running = asyncio.Event()

    def want(self, instruments: Collection[str], currencies: Collection[str],
             borrowed: Collection[str]) -> None:
        return None

    def link_stats(self) -> Mapping[str, LinkStats]:
        return self.stats

    async def run(self) -> None:
        self.running.set()  # the daemon started it, after its first look at the conditions
        await asyncio.Event().wait()


class NullSink:
    name = "null"

    async def write(self, batch: Batch) -> None:
        return None

    async def close(self) -> None:
        return None


class Clock:
    """A wall clock in seconds, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
