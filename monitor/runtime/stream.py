"""Alert subscribers: what they missed from the store, then live alerts, with no gap and no
duplicate (SPEC 4, "Alert stream").

:class:`AlertHub` is a sink that follows the SQLite sink (persist before publish): it gets a
batch only after SQLite committed it, with a :class:`~monitor.core.records.StoredAlert` per newly
inserted alert, in insertion order (``seq``). It hands each one to every live
:class:`Subscription` whose :class:`AlertFilter` matches, never waiting: a subscription
holds at most ``queue_size`` alerts, and one that falls further behind is cut off (its
consumer gets :class:`SubscriberOverflow` after the alerts it already holds, and can
resume with ``since`` set to the last id it received). So a slow subscriber costs the
pipeline nothing.

Catch-up and the seam. A subscription ``since`` an alert id reads the store (an
:class:`AlertSource`) in pages of alerts with a ``seq`` above its cursor, the ``seq`` of
the last alert it delivered. When a page comes back short it registers with the hub for
live alerts and reads once more (until a page is short again). Every alert committed before
that read started is in the read; every alert committed after it is published after the
registration, so it is in the live queue. An alert can be in both; the live queue skips
whatever is at or below the cursor. Within the live queue ``seq`` only grows, because the
hub publishes in commit order. The proof needs nothing about the source but snapshot reads
(SQLite transactions) and an insertion order that only grows (AUTOINCREMENT). A hub that
knows the ``seq`` it has published (``last_seq``) reads no further than it: an alert
committed and not yet synced (adapters/sinks.py, urgent batches) is not published yet, so
it comes through the live queue, after the sync; the second read, after registration,
covers what was published in between.

A subscription without ``since`` registers at once and delivers alerts published from then
on; :attr:`Subscription.resume_id` names the last alert published before it (the id to
resume from after a disconnect, None if none was). ``since`` may also be :data:`EARLIEST`:
everything still stored.

Programs that embed riskmon iterate a subscription directly (``async for alert in
monitor.subscribe(...)``, see monitor.app.service); the websocket endpoint (adapters/
alert_stream.py) does the same for remote clients.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final, Protocol

from monitor.core.alerts import ALERT_KINDS, LEVEL_RANK, LEVELS, Alert, Level, level_named
from monitor.core.batch import Batch
from monitor.core.errors import RiskmonError
from monitor.core.records import StoredAlert

EARLIEST: Final = "earliest"
"""``since`` value meaning "every alert still stored"."""

DEFAULT_QUEUE_SIZE: Final = 1000
DEFAULT_PAGE_SIZE: Final = 500


class StreamError(RiskmonError):
    """A subscription cannot start or go on; the message says why."""


class UnknownAlertId(StreamError):
    """``since`` names an alert that is not stored (never was, or already pruned)."""


class SubscriberOverflow(StreamError):
    """The subscriber fell more than its queue size behind the live alerts."""


class AlertSource(Protocol):
    """Stored alerts, read for catch-up (adapters.sqlite_store.SqliteStore is one)."""

    async def alert_seq(self, alert_id: str) -> int | None: ...

    async def stored_alerts(
        self,
        after_seq: int,
        *,
        accounts: Collection[str] | None = None,
        kinds: Collection[str] | None = None,
        levels: Collection[str] | None = None,
        limit: int | None = None,
        up_to_seq: int | None = None,
    ) -> list[StoredAlert]: ...


@dataclass(frozen=True, slots=True)
class AlertFilter:
    """Which alerts a subscriber wants: ``accounts`` and ``kinds`` (None: all) and a
    minimum ``level`` (the alert's ``level`` field, the account's level after it)."""

    accounts: frozenset[str] | None = None
    kinds: frozenset[str] | None = None
    min_level: Level = "normal"

    @classmethod
    def of(cls, accounts: Collection[str] | None = None, kinds: Collection[str] | None = None,
           min_level: str = "normal") -> AlertFilter:
        """Build a filter, checking the kinds and the level (ValueError names the bad one)."""
        if kinds is not None:
            unknown = sorted(set(kinds) - set(ALERT_KINDS))
            if unknown:
                raise ValueError(f"unknown alert kind {unknown[0]!r}; kinds are "
                                 f"{', '.join(ALERT_KINDS)}")
        level = level_named(min_level)
        if level is None:
            raise ValueError(f"unknown level {min_level!r}; levels are {', '.join(LEVELS)}")
        return cls(None if accounts is None else frozenset(accounts),
                   None if kinds is None else frozenset(kinds), level)

    def levels(self) -> frozenset[str] | None:
        """The levels that pass, None when all do."""
        if self.min_level == "normal":
            return None
        floor = LEVEL_RANK[self.min_level]
        return frozenset(level for level in LEVELS if LEVEL_RANK[level] >= floor)

    def matches(self, alert: Alert) -> bool:
        return ((self.accounts is None or alert.account in self.accounts)
                and (self.kinds is None or alert.kind in self.kinds)
                and LEVEL_RANK[alert.level] >= LEVEL_RANK[self.min_level])


class AlertHub:
    """Fans committed alerts out to subscriptions; a sink following the SQLite sink."""

    name = "subscribers"

    def __init__(self, source: AlertSource, *, queue_size: int = DEFAULT_QUEUE_SIZE,
                 page_size: int = DEFAULT_PAGE_SIZE, last_id: str | None = None,
                 last_seq: int | None = None) -> None:
        """``last_id``: the newest alert already stored when the hub starts (the resume
        point of the first live-only subscribers). ``last_seq``: its ``seq``; given, a
        catch-up read never goes past the newest alert the hub has published, so a
        subscriber never reads an alert that is committed but not yet synced (the SQLite
        sink's urgent batches, adapters/sinks.py) before the hub has it."""
        if queue_size < 1 or page_size < 1:
            raise ValueError("queue_size and page_size must be at least 1")
        self.source = source
        self.queue_size = queue_size
        self.page_size = page_size
        self.last_id = last_id
        self.last_seq = last_seq
        self.cut_off = 0
        self._live: set[Subscription] = set()
        self._closed = False

    def subscribe(self, alert_filter: AlertFilter = AlertFilter(), *,
                  since: str | None = None) -> Subscription:
        """A subscription; without ``since`` it receives alerts published from now on."""
        subscription = Subscription(self, alert_filter, since)
        if since is None:
            subscription.resume_id = self.last_id
            self._register(subscription)
        return subscription

    @property
    def subscribers(self) -> int:
        """Subscriptions receiving live alerts now."""
        return len(self._live)

    async def write(self, batch: Batch) -> None:
        """Publish the batch's newly stored alerts; never waits."""
        stored = batch.stored
        if not stored:
            return
        self.last_id = stored[-1].alert.id
        if self.last_seq is not None:
            self.last_seq = stored[-1].seq
        # A copy: a subscription cut off while offered leaves the set.
        for subscription in list(self._live):
            for record in stored:
                subscription._offer(record)

    async def close(self) -> None:
        """End every subscription (after what each holds); new ones end at once."""
        self._closed = True
        for subscription in list(self._live):
            subscription._finish(None)
        self._live.clear()

    def _register(self, subscription: Subscription) -> None:
        if self._closed:
            subscription._finish(None)
        else:
            self._live.add(subscription)

    def _unregister(self, subscription: Subscription) -> None:
        self._live.discard(subscription)


class Subscription:
    """Alerts for one subscriber, in store order: an async iterator (see the module
    docstring). Close it (or use ``async with``) when done."""

    def __init__(self, hub: AlertHub, alert_filter: AlertFilter, since: str | None) -> None:
        self.hub = hub
        self.filter = alert_filter
        self.since = since
        self.resume_id: str | None = since if since != EARLIEST else None
        self.delivered = 0
        self.cut_off = asyncio.Event()
        self._cursor = 0
        self._catching_up = since is not None
        self._started = since is None
        self._registered = False
        self._caught: deque[StoredAlert] = deque()
        self._queue: deque[StoredAlert] = deque()
        self._wake = asyncio.Event()
        self._finished = False
        self._error: StreamError | None = None

    async def start(self) -> None:
        """Resolve ``since``; raises :class:`UnknownAlertId`. Iterating calls it too."""
        if self._started:
            return
        if self.since != EARLIEST and self.since is not None:
            seq = await self.hub.source.alert_seq(self.since)
            if seq is None:
                raise UnknownAlertId(f"unknown alert id {self.since!r} (never stored, or"
                                     " pruned); subscribe without since, or since earliest")
            self._cursor = seq
        self._started = True

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Alert:
        stored = await self.next_stored()
        if stored is None:
            raise StopAsyncIteration
        return stored.alert

    async def next_stored(self) -> StoredAlert | None:
        """The next alert with its ``seq``, or None once the hub closed (or this
        subscription was closed). Raises :class:`SubscriberOverflow` once cut off, after
        the alerts it still holds, and :class:`UnknownAlertId` (see :meth:`start`).

        Cancelling a wait loses nothing: an alert is removed only when returned.
        """
        await self.start()
        while True:
            if self._caught:
                return self._deliver(self._caught.popleft())
            if self._catching_up:
                await self._read_page()
                continue
            while self._queue:
                stored = self._queue.popleft()
                if stored.seq > self._cursor:
                    return self._deliver(stored)
            if self._error is not None:
                raise self._error
            if self._finished:
                return None
            self._wake.clear()
            await self._wake.wait()

    def close(self) -> None:
        """Stop receiving; what is held is dropped."""
        self.hub._unregister(self)
        self._finish(None)
        self._catching_up = False
        self._queue.clear()
        self._caught.clear()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def error(self) -> StreamError | None:
        """Why the subscription was cut off (SubscriberOverflow), or None."""
        return self._error

    @property
    def pending(self) -> int:
        """Alerts held, not yet delivered."""
        return len(self._caught) + len(self._queue)

    def _deliver(self, stored: StoredAlert) -> StoredAlert:
        self._cursor = stored.seq
        self.resume_id = stored.alert.id
        self.delivered += 1
        return stored

    async def _read_page(self) -> None:
        hub = self.hub
        page = await hub.source.stored_alerts(
            self._cursor, accounts=self.filter.accounts, kinds=self.filter.kinds,
            levels=self.filter.levels(), limit=hub.page_size, up_to_seq=hub.last_seq,
        )
        self._caught.extend(page)
        if len(page) < hub.page_size:
            if self._registered:
                self._catching_up = False
            else:
                # Caught up with the store: take live alerts from now on, then read once
                # more for what was committed since this read began (module docstring).
                self._registered = True
                hub._register(self)

    def _offer(self, stored: StoredAlert) -> None:
        if self._finished or not self.filter.matches(stored.alert):
            return
        if len(self._queue) >= self.hub.queue_size:
            self.hub.cut_off += 1
            self.hub._unregister(self)
            self._error = SubscriberOverflow(
                f"subscriber fell more than {self.hub.queue_size} alerts behind; resume with"
                " since set to the last alert id received")
            self._finish(self._error)
            return
        self._queue.append(stored)
        self._wake.set()

    def _finish(self, error: StreamError | None) -> None:
        if error is not None:
            self._error = error
            self.cut_off.set()
        self._finished = True
        self._wake.set()

