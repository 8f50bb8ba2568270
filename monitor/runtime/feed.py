"""What a live feed hands the daemon, and the inbox that holds it until the engine runs.

A venue's feed adapter (monitor/runtime/venues.py) delivers three kinds of item, in the order it
received them: :class:`Frame` (one websocket message, as text), :class:`RestBody` (a REST
response it fetched) and :class:`LinkChange` (a connection came up or went down). These are
exactly the lines of a recording (SPEC 3.2), which is how ``riskmon record`` writes them.

A frame is delivered unparsed: the engine task parses it (:meth:`FeedDecoder.decode_message`),
so a frame that conflation drops is never parsed at all, and the feed does little more
per message than the websockets library does. The adapter reads from the text whatever it
must know at once: the conflation key of a mark-price push, and the operational messages
(acknowledgements, errors, notices) it acts on itself instead of delivering.

:class:`Inbox` is the one buffer between the feed's connections and the engine task.
The feed never waits on it: ``put`` is synchronous and never blocks, so a slow engine or sink
cannot stall the sockets (and make the exchange drop us). Under pressure, when more than
``conflate_after`` items are waiting, a mark-price frame replaces the waiting one of the
same instrument (it moves to the newer one's place in the order): only the latest mark
matters to the margin figures. Orders, positions, balances, REST bodies and link changes
are never dropped or merged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from itertools import count
from typing import Any, NamedTuple, Protocol

from monitor.core.events import Event


class Frame(NamedTuple):
    """One websocket message as received: ``text`` unparsed (it may not even be JSON; the
    decoder decides, and quarantines what it cannot use). ``conflate_key`` is set by the
    adapter on frames that may be conflated (mark prices: the instrument).

    A named tuple, not a frozen dataclass like the other items: one is built per message
    received, as it arrives, and a frozen dataclass's ``__init__`` sets each field
    through ``object.__setattr__``, which costs about three times as much.
    """

    recv_ms: int
    account: str | None
    text: str
    conflate_key: str | None = None


@dataclass(frozen=True, slots=True)
class RestBody:
    """A REST response: ``path`` as requested (with its query) and the decoded body."""

    recv_ms: int
    account: str | None
    path: str
    body: Any


@dataclass(frozen=True, slots=True)
class LinkChange:
    """A feed connection came up (``connected``) or went down, with the reason."""

    recv_ms: int
    account: str | None
    connected: bool
    reason: str


FeedItem = Frame | RestBody | LinkChange


@dataclass(frozen=True, slots=True)
class LinkStats:
    """Counters of one feed connection since the process started, for ``/metrics``.

    ``reconnects``: times the connection was opened again after it ended or failed to
    open; ``errors``: connections that failed (to open, or while open) with an error, and
    error messages and failed REST loads of the connection.
    """

    reconnects: int = 0
    errors: int = 0


class Feed(Protocol):
    """A live feed adapter."""

    def link_stats(self) -> Mapping[str, LinkStats]:
        """Every connection the feed keeps, by name (``public``, ``private:ACCOUNT``),
        with its counters; the names are the same from the start (``/healthz`` counts a
        connection that has not come up yet as down)."""

    def want(self, instruments: Collection[str], currencies: Collection[str],
             borrowed: Collection[str]) -> None:
        """The instruments whose mark prices and the currencies whose index prices the
        engine needs now, and the currencies some account owes; the feed subscribes and
        unsubscribes to match, and loads what it knows of them (instrument specs and
        tiers, collateral tiers of the currencies, borrowing tiers of the borrowed ones)."""

    async def run(self) -> None:
        """Connect, deliver items, reconnect, until cancelled."""


class FeedDecoder(Protocol):
    """Turns a feed's messages and REST bodies into events (raises BadInput)."""

    def decode_message(self, text: str, account: str | None, recv_ms: Any) -> list[Event]:
        """One websocket message as received (its text, not yet parsed)."""

    def decode_rest(self, path: str, body: Any, account: str | None,
                    recv_ms: Any) -> list[Event]: ...


class Inbox:
    """Items waiting for the engine task; see the module docstring for conflation."""

    def __init__(self, *, conflate_after: int = 1000,
                 ready: asyncio.Event | None = None) -> None:
        """``ready``: an event shared with other inboxes (a daemon following several
        venues waits on all of theirs at once); whoever waits on it takes every inbox
        that shares it in the same turn, since :meth:`take` clears it."""
        self.conflate_after = conflate_after
        self.conflated = 0
        self._items: dict[Any, FeedItem] = {}
        self._serial = count()
        self._ready = ready or asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: FeedItem) -> None:
        """Add an item; never blocks."""
        items = self._items
        if not items:
            # Only :meth:`take` clears the event, and it empties the inbox: while anything
            # is waiting, the event is set already.
            self._ready.set()
        key: Any = item.conflate_key if type(item) is Frame else None
        if key is not None:
            if len(items) >= self.conflate_after:
                if items.pop(key, None) is not None:
                    self.conflated += 1
            elif key in items:
                key = None  # no pressure: keep both
        if key is None:
            key = next(self._serial)
        items[key] = item

    def take(self) -> list[FeedItem]:
        """Everything waiting, in order."""
        items = list(self._items.values())
        self._items.clear()
        self._ready.clear()
        return items

    async def wait(self) -> None:
        """Until something is waiting, or :meth:`wake` was called."""
        await self._ready.wait()

    def wake(self) -> None:
        """Make :meth:`wait` return (a timer or a stop request)."""
        self._ready.set()
