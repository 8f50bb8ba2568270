"""A real SQLite store followed by the alert hub, as ``riskmon run`` builds them, for the
stream tests (no feed: tests publish alerts directly)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from adapters.alert_stream import AlertStreamHandler
from adapters.http_server import HttpServer
from adapters.sinks import SqliteSink
from adapters.sqlite_store import SqliteStore
from monitor.core.alerts import Alert
from monitor.core.batch import Batch
from monitor.core.records import StoredAlert
from monitor.core.settings import StreamConfig
from monitor.runtime.pipeline import SinkTask
from monitor.runtime.stream import AlertHub


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
                            limit: int | None = None,
                            up_to_seq: int | None = None) -> list[StoredAlert]:
        await asyncio.sleep(self.pause_s)
        page = await self.store.stored_alerts(after_seq, accounts=accounts, kinds=kinds,
                                              levels=levels, limit=limit, up_to_seq=up_to_seq)
        await asyncio.sleep(self.pause_s)
        return page


class Chain:
    """SQLite, then the hub: what ``riskmon run`` builds, without the feed. The chain is
    itself the follower sink, passing each batch to the hub and noting what passed."""

    name = "hub"

    def __init__(self, store: SqliteStore, reader: SqliteStore | DelayedSource, *,
                 queue_size: int = 1000, page_size: int = 500,
                 last_id: str | None = None) -> None:
        self.store = store
        self.hub = AlertHub(reader, queue_size=queue_size, page_size=page_size,
                            last_id=last_id)
        self.head = SinkTask(SqliteSink(store, close_store=False), followers=[SinkTask(self)])
        self.head.start()
        self.published: set[str] = set()
        self.passed: set[str] = set()
        self.moved = asyncio.Event()

    async def write(self, batch: Batch) -> None:
        await self.hub.write(batch)
        self.passed.update(alert.id for alert in batch.alerts)
        self.moved.set()

    async def close(self) -> None:
        await self.hub.close()

    async def publish(self, alerts: list[Alert]) -> None:
        self.published.update(alert.id for alert in alerts)
        await self.head.put(Batch.of(alerts=alerts))

    async def settle(self) -> None:
        """Until every alert published so far has passed the hub."""
        async with asyncio.timeout(10):
            while not self.published <= self.passed:
                self.moved.clear()
                await self.moved.wait()


class StreamServer:
    """What ``riskmon run`` serves on ``/v1/alerts``, without the feed: a store on ``db``,
    the hub and the websocket handler on 127.0.0.1. Stop and start it again (same port,
    same file) to play a daemon restart."""

    def __init__(self, db: Path, *, tokens: Mapping[str, frozenset[str]] | None = None,
                 queue_size: int = 1000, heartbeat_s: float = 15.0,
                 subscribe_timeout_s: float = 10.0,
                 limits: StreamConfig | None = None) -> None:
        """``limits``: the ``[stream]`` limits (its queue size, heartbeat and subscribe
        timeout replace the arguments); None: the defaults."""
        self.db = db
        self.tokens = tokens
        self.limits = limits or StreamConfig(queue_size=queue_size, heartbeat_s=heartbeat_s,
                                             subscribe_timeout_s=subscribe_timeout_s)
        self.port = 0
        self._parts: tuple[HttpServer, Chain, SqliteStore, SqliteStore] | None = None

    @property
    def chain(self) -> Chain:
        assert self._parts is not None, "the server is not running"
        return self._parts[1]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/alerts"

    async def start(self) -> StreamServer:
        store = await SqliteStore.open(self.db, synchronous="OFF")
        reader = await SqliteStore.open(self.db)
        limits = self.limits
        chain = Chain(store, reader, queue_size=limits.queue_size,
                      last_id=await reader.last_alert_id())
        handler = AlertStreamHandler(chain.hub, self.tokens, heartbeat_s=limits.heartbeat_s,
                                     subscribe_timeout_s=limits.subscribe_timeout_s,
                                     send_timeout_s=limits.send_timeout_s)
        http = HttpServer(lambda now: (True, {}), lambda now: "", handler, limits=limits)
        self.handler = handler
        self.http = http
        self.port = await http.start("127.0.0.1", self.port)
        self._parts = (http, chain, store, reader)
        return self

    async def stop(self) -> None:
        """As at SIGTERM: drain the sinks (subscribers get what is stored, then 1001)."""
        if self._parts is None:
            return
        http, chain, store, reader = self._parts
        self._parts = None
        await chain.head.drain_and_close()
        await http.close()
        await reader.close()
        await store.close()


async def until(condition: Callable[[], bool], within_s: float = 30.0) -> None:
    """Poll ``condition`` (state another process or task changes) until it holds."""
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110 (nothing to wait on: it is polled state)
            await asyncio.sleep(0.01)
