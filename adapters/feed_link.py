"""One websocket connection of a live feed and its reconnect loop, shared by every venue's
feed (adapters/okx/live.py, adapters/binance/live.py).

The loop: connect, open (the venue's part: log in, load REST state, subscribe), read
until the connection fails, report, back off, again.

- *Backoff.* ``min(max, initial * 2^n)``, jittered to a uniformly random value between half
  and all of it (adapters/backoff.py); ``n`` counts failures since the last successful
  open, so an open that keeps failing backs off further each time.
  :class:`ReconnectNow` with ``immediately`` reconnects at once (a venue's notice to).
- *Keepalive.* A watchdog beside the reader: after ``ping_after_s`` without a message the
  venue's ping is sent (:meth:`FeedLink.ping`); without any message (nor a websocket pong)
  ``pong_timeout_s`` after it the connection is dropped and reopened.
- *What is delivered.* :meth:`FeedLink.frame_of` (the venue's part) turns each message
  into a :class:`~monitor.runtime.feed.Frame`, or None for one it acted on itself
  (acknowledgements, errors, notices). Frames that arrive while the connection is still
  opening are held and delivered, in order, right after its
  :class:`~monitor.runtime.feed.LinkChange`; then every message as websockets parses it off the
  socket (adapters/push_connection.py says why there is no reader task).
- *Failures while receiving.* Nothing raised in :meth:`receive` may reach websockets: the
  error is noted, the connection aborted, and :meth:`read` (or the open, while opening)
  raises it.
- *Counters.* ``reconnects`` (each time the loop opens a connection again) and ``errors``
  (an attempt or a connection that failed with an error, and what the venue counts;
  a clean close and an immediate reconnect are not errors).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol

from websockets.exceptions import ConnectionClosed, WebSocketException

from adapters.backoff import backoff_delay
from adapters.push_connection import PushConnection
from monitor.core.errors import FeedError
from monitor.runtime.feed import FeedItem, Frame, LinkChange

__all__ = ["FeedLink", "LinkTiming", "ReconnectNow", "now_ms"]

MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024  # large snapshots arrive as one frame
_time_ns: Final = time.time_ns


def now_ms() -> int:
    return _time_ns() // 1_000_000


class LinkTiming(Protocol):
    """The timing a venue's configuration gives its links."""

    @property
    def request_timeout_s(self) -> float: ...
    @property
    def backoff_initial_s(self) -> float: ...
    @property
    def backoff_max_s(self) -> float: ...
    @property
    def ping_after_s(self) -> float: ...
    @property
    def pong_timeout_s(self) -> float: ...


class ReconnectNow(Exception):
    """The connection must be dropped and reopened (no pong, a venue's notice, an expired
    stream key)."""

    def __init__(self, reason: str, *, immediately: bool = False) -> None:
        super().__init__(reason)
        self.immediately = immediately


class FeedLink:
    """One connection to ``url``; subclasses say how to open it and what its messages are.

    ``name`` is the connection's name in ``/healthz`` and ``/metrics`` (``public``,
    ``private:ACCOUNT``); ``account`` is None on a public connection.
    """

    def __init__(self, name: str, url: str, account: str | None,
                 deliver: Callable[[FeedItem], None], timing: LinkTiming,
                 rng: random.Random, log: Any) -> None:
        self.name = name
        self.url = url
        self.account = account
        self.deliver = deliver
        self.timing = timing
        self.rng = rng
        self.log = log
        self.ws: PushConnection | None = None
        self.reconnects = 0
        self.errors = 0
        self._last_rx = 0.0
        self._delivering = False
        self._held: list[Frame] = []
        self._failure: Exception | None = None

    # -- the venue's part ------------------------------------------------------------------

    async def open(self, ws: PushConnection) -> None:
        """Log in, load REST state and subscribe; raise to reconnect."""
        raise NotImplementedError

    def closed(self) -> None:
        """The connection is gone (subscriptions with it)."""

    def frame_of(self, text: str, recv_ms: int) -> Frame | None:
        """The frame to deliver for a message, or None when the link acted on it itself.
        May raise (the connection is then dropped: see the module docstring)."""
        return Frame(recv_ms, self.account, text)

    async def ping(self, ws: PushConnection) -> None:
        """The venue's keepalive ping: a websocket ping unless it documents another."""
        ws.ping()

    def connect_url(self) -> str:
        """Where the next connection goes (a venue may put a fresh stream key in it)."""
        return self.url

    def beside(self, ws: PushConnection) -> list[Coroutine[Any, Any, None]]:
        """Tasks to run beside the reader while the connection is open (subscription
        changes, a stream key's keepalive), cancelled when it ends; one that fails ends
        the connection with its error."""
        return []

    async def before_connect(self) -> None:
        """Called before each connection attempt (a venue may fetch a stream key); raise
        to count a failed attempt."""

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        timing = self.timing
        failures = 0
        while True:
            connected = False
            immediately = False
            try:
                await self.before_connect()
                async with await PushConnection.connect(
                        self.connect_url(), open_timeout_s=timing.request_timeout_s,
                        max_size=MAX_MESSAGE_BYTES, close_timeout_s=2) as ws:
                    self.ws = ws
                    self._last_rx = time.monotonic()
                    ws.push_to(self.receive)
                    try:
                        await self.open(ws)
                    except Exception:
                        self._raise_failure()
                        raise
                    connected = True
                    failures = 0
                    self.deliver(LinkChange(now_ms(), self.account, True, "subscribed"))
                    self._start_delivering()
                    self.log.info("feed_connected", url=self.url)
                    await self.read(ws)
                reason = "closed"
            except ReconnectNow as e:
                reason, immediately = str(e), e.immediately
                if not immediately:
                    self.errors += 1  # no pong; a notice to reconnect is no error
            except FeedError as e:
                reason = str(e)
                self.errors += 1
            except (OSError, TimeoutError, WebSocketException) as e:
                reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                self.errors += 1
            finally:
                self.ws = None
                self._delivering = False
                self._held = []
                self._failure = None
                self.closed()
            if connected:
                self.deliver(LinkChange(now_ms(), self.account, False, reason))
                self.log.warning("feed_disconnected", reason=reason)
            delay = 0.0 if immediately else backoff_delay(
                failures, timing.backoff_initial_s, timing.backoff_max_s, self.rng)
            failures += 1
            self.reconnects += 1
            self.log.warning("feed_reconnecting", reason=reason, delay_s=round(delay, 3),
                             failures=failures)
            await asyncio.sleep(delay)

    async def read(self, ws: PushConnection) -> None:
        """Until the connection ends (messages are delivered by :meth:`receive` as they
        arrive meanwhile). Keepalive runs in a watchdog task beside it, so receiving a
        message costs no timer: :meth:`receive` only notes when the last message came;
        the venue's :meth:`beside` tasks run there too."""
        tasks = [asyncio.create_task(self._guarded(work))
                 for work in (self._watchdog(ws), *self.beside(ws))]
        try:
            await ws.until_closed()
        except ConnectionClosed:
            self._raise_failure()
            raise
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._raise_failure()

    async def _guarded(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception as error:  # e.g. a send on a closing connection
            self.fail(error)

    async def _watchdog(self, ws: PushConnection) -> None:
        timing = self.timing
        check_s = min(1.0, timing.ping_after_s / 5, timing.pong_timeout_s / 5)
        ping_sent: float | None = None
        while True:
            await asyncio.sleep(check_s)
            now = time.monotonic()
            last = max(self._last_rx, ws.last_pong)
            if now - last < timing.ping_after_s:
                ping_sent = None
            elif ping_sent is None or ping_sent < last:
                await self.ping(ws)
                ping_sent = now
            elif now - ping_sent >= timing.pong_timeout_s:
                self.fail(ReconnectNow(f"no pong within {timing.pong_timeout_s:g} s of a ping"))
                return

    def receive(self, text: str) -> None:
        """Every message of the connection, the moment websockets has parsed it."""
        if self._failure is not None:
            return  # the connection is being aborted: what follows it is not delivered
        self._last_rx = time.monotonic()
        try:
            frame = self.frame_of(text, _time_ns() // 1_000_000)
            if frame is None:
                return
            if self._delivering:
                self.deliver(frame)
            else:
                self._held.append(frame)
        except Exception as e:
            self.fail(e)

    def _start_delivering(self) -> None:
        """The link is open: deliver what arrived while it was opening, then every message
        as it comes."""
        held, self._held = self._held, []
        self._delivering = True
        for frame in held:
            self.deliver(frame)

    def fail(self, error: Exception) -> None:
        """End the connection because of ``error``, raised again by :meth:`read`."""
        if self._failure is None:
            self._failure = error
        if self.ws is not None and self.ws.transport is not None:
            self.ws.transport.abort()

    def _raise_failure(self) -> None:
        """Raise what made :meth:`fail` end the connection, if anything did."""
        if self._failure is not None:
            raise self._failure
