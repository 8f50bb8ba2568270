"""A real SQLite store followed by the alert hub, as ``riskmon run`` builds them, for the
stream tests (no feed: tests publish alerts directly)."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence

from adapters.sinks import SqliteSink
from adapters.sqlite_store import SqliteStore
from monitor.alerts import Alert
from monitor.pipeline import Record, SinkTask
from monitor.records import StoredAlert
from monitor.stream import AlertHub


class DelayedSource:
    """The real store, with a pause before and after each catch-up read: the windows in
    which alerts are committed and published while a subscriber reads, made wide enough
    that every run hits them (the seam logic must hold for any timing)."""

    def __init__(self, store: SqliteStore, pause_s: float) -> None:
        self.store = store
        self.pause_s = pause_s

    async def alert_seq(self, alert_id: str) -> int | None:
        return await self.store.alert_seq(alert_id)

    async def stored_alerts(self, after_seq: int, *, accounts: Collection[str] | None = None,
                            kinds: Collection[str] | None = None,
                            levels: Collection[str] | None = None,
                            limit: int | None = None) -> list[StoredAlert]:
        await asyncio.sleep(self.pause_s)
        page = await self.store.stored_alerts(after_seq, accounts=accounts, kinds=kinds,
                                              levels=levels, limit=limit)
        await asyncio.sleep(self.pause_s)
        return page


class Chain:
    """SQLite, then the hub: what ``riskmon run`` builds, without the feed. The chain is
    itself the follower sink, passing each batch to the hub and noting what passed."""

    name = "hub"

    def __init__(self, store: SqliteStore, reader: SqliteStore | DelayedSource, *,
                 queue_size: int = 1000, page_size: int = 500) -> None:
        self.store = store
        self.hub = AlertHub(reader, queue_size=queue_size, page_size=page_size)
        self.head = SinkTask(SqliteSink(store, close_store=False), followers=[SinkTask(self)])
        self.head.start()
        self.published: set[str] = set()
        self.passed: set[str] = set()
        self.moved = asyncio.Event()

    async def write(self, records: Sequence[Record]) -> None:
        await self.hub.write(records)
        self.passed.update(r.id for r in records if isinstance(r, Alert))
        self.moved.set()

    async def close(self) -> None:
        await self.hub.close()

    async def publish(self, alerts: list[Alert]) -> None:
        self.published.update(alert.id for alert in alerts)
        await self.head.put(list(alerts))

    async def settle(self) -> None:
        """Until every alert published so far has passed the hub."""
        async with asyncio.timeout(10):
            while not self.published <= self.passed:
                self.moved.clear()
                await self.moved.wait()
