"""The live OKX v5 feed: websocket connections, keepalive, reconnects and REST loads (SPEC 3.1).

One public connection carries ``mark-price`` for every instrument the engine needs (held or
ordered, subscribed and unsubscribed as that set changes: :meth:`OkxFeed.want`) and
``index-tickers`` for collateral currencies. One private connection per account logs in
and subscribes ``orders``, ``positions`` and ``account`` (``instType`` ANY).

Every connection runs the same loop: connect, open (log in; load REST state; subscribe),
read until the connection fails, report, back off, again. Choices:

- *Order of opening.* After login and before subscribing, a private connection loads by
  signed REST, in this order, ``/api/v5/account/config`` (account and position mode),
  ``/api/v5/account/balance``, ``/api/v5/account/positions`` (so the account's risk is
  known before the first push) and ``/api/v5/trade/orders-pending`` (the orders channel
  has no snapshot), each delivered as a :class:`~monitor.runtime.feed.RestBody`; a failure of any
  is a FeedError and the connection is opened again with backoff. The positions and
  account channels then push their own snapshots on subscribing. (An order placed in the
  instant between the REST response and the subscription would be missed until its next
  update; OKX offers no sequence number to close that gap.)
- *Keepalive.* After ``ping_after_s`` without a message the text ``ping`` is sent; without
  any message in ``pong_timeout_s`` after it the connection is dropped and reopened.
  websockets' own protocol pings are off: OKX documents the text form.
- *Backoff.* ``min(max, initial * 2^n)``, jittered to a uniformly random value between half
  and all of it; ``n`` counts failures since the last successful open, so a login that
  keeps failing backs off further each time. ``notice`` 64008 (service upgrade) reconnects
  at once.
- *What is delivered.* Data frames (and any text that is not JSON, for quarantine) go to
  the inbox as :class:`~monitor.runtime.feed.Frame`, unparsed; REST responses as
  :class:`~monitor.runtime.feed.RestBody`; connection changes as
  :class:`~monitor.runtime.feed.LinkChange`.
  Acknowledgements, errors and notices (``{"event": ...}`` without ``data``) are handled
  and logged here.
- *Reading without parsing, and without a reader task.* Each message is handed to
  :meth:`FeedLink.receive` (adapters/feed_link.py, the loop every venue's feed shares)
  the moment websockets parses it off the socket
  (adapters/push_connection.py says why), which puts it in the inbox as text; the engine
  task parses it (``OkxDecoder.decode_message``), so under pressure a conflated mark
  price costs no parsing at all. Data that arrives while a connection is still opening
  (logging in, loading REST state, subscribing) is held and delivered, in order, right
  after its ``LinkChange``. ``receive`` parses a message only when its text could be an
  event: when it contains ``"event"`` or a backslash (without one, a key can only be
  spelled literally). A mark-price push is recognised by its exact shape as OKX sends it
  (``mark_price_key`` in ``adapters/okx/decode.py``, compiled with the decoder), which
  also gives the conflation key, its instrument; a text in any other shape is delivered
  without a key and never conflated. (A text in that shape that is not JSON is
  quarantined by the engine task, unless a newer mark of the same instrument replaces it
  under pressure first.)
- *Public REST.* The specs of every SWAP and FUTURES instrument load at each public
  (re)connect, always (configured ``[[instruments]]`` override them per ``inst_id`` in the
  engine); then, as :meth:`OkxFeed.want` reports the engine's interest, once per process
  each: the cross maintenance tiers of a family the first time one of its instruments is
  wanted, the discount-rate tiers of every currency held
  (``/api/v5/public/discount-rate-interest-free-quota?ccy=C``) and the borrowing tiers of
  every currency borrowed (``/api/v5/public/position-tiers?instType=MARGIN&tdMode=cross&
  ccy=C``). A failed load is retried with backoff for as long as it is still wanted.
- *Counters.* :meth:`OkxFeed.link_stats` counts, per connection, the reconnects (each
  time the loop opens a connection again) and the errors: an attempt or a connection that
  failed with an error (a refused connect or login, a failed REST load, no pong; a clean
  close and the 64008 notice are not errors), an ``error`` message from OKX, and for the
  public connection a failed public REST load.
- *Demo trading.* With ``okx.simulated`` every REST request, public ones too, carries
  ``x-simulated-trading: 1`` (docs: "Overview > Demo trading services"; the websocket
  URLs are the demo ones by default, monitor.app.config).

Credentials never leave :class:`~adapters.okx.auth.Credentials` except inside the login
frame and REST headers; nothing here logs a frame it sends.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from adapters.backoff import backoff_delay
from adapters.feed_link import FeedLink, ReconnectNow, now_ms
from adapters.logging import get_logger
from adapters.okx.auth import Credentials, login_request
from adapters.okx.config import OkxConfig
from adapters.okx.decode import mark_price_key
from adapters.okx.rest import (
    ACCOUNT_CONFIG,
    BALANCE,
    DISCOUNT_RATE,
    INSTRUMENTS,
    POSITION_TIERS,
    POSITIONS,
    OkxRest,
)
from adapters.push_connection import PushConnection
from monitor.core.errors import FeedError
from monitor.runtime.feed import FeedItem, Frame, LinkStats, RestBody

__all__ = ["OkxFeed", "instrument_family"]

RECONNECT_NOW_CODE: Final = "64008"
SUBSCRIBE_BATCH: Final = 100  # args per subscribe request, well inside OKX's 64 KB limit
PRIVATE_CHANNELS: Final = (
    {"channel": "orders", "instType": "ANY"},
    {"channel": "positions", "instType": "ANY"},
    {"channel": "account"},
)
# Signed REST loads of a private connection before orders-pending, in this order.
BOOTSTRAP_PATHS: Final = (ACCOUNT_CONFIG, BALANCE, POSITIONS)
_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024  # large snapshots arrive as one frame


def instrument_family(inst_id: str) -> tuple[str, str] | None:
    """``(instType, instFamily)`` of a SWAP or FUTURES instrument id, else None.

    OKX ids: ``BTC-USDT-SWAP`` (SWAP, family ``BTC-USDT``), ``BTC-USD-250328`` (FUTURES,
    family ``BTC-USD``). Spot pairs and options (more or fewer parts) are out of scope.
    """
    parts = inst_id.split("-")
    if len(parts) != 3:
        return None
    family = f"{parts[0]}-{parts[1]}"
    if parts[2] == "SWAP":
        return "SWAP", family
    if parts[2].isdigit():
        return "FUTURES", family
    return None




@dataclass(frozen=True, slots=True)
class _PublicLoad:
    """One public REST load the engine's interest calls for (SPEC 3.1): ``what`` names it
    in the logs, ``subject`` is the family or currency, ``params`` the query."""

    what: str
    subject: str
    path: str
    params: tuple[tuple[str, str], ...]


class OkxFeed:
    """The public connection and one private connection per account."""

    def __init__(
        self,
        config: OkxConfig,
        credentials: Mapping[str, Credentials],
        deliver: Callable[[FeedItem], None],
        *,
        collateral: Collection[str] = (),
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.collateral = frozenset(collateral)
        self.deliver = deliver
        self.rest = OkxRest(config.rest_url, timeout_s=config.request_timeout_s,
                            simulated=config.simulated)
        self.rng = rng or random.Random()
        self.log = get_logger("riskmon.feed")
        self.public = _PublicLink(self)
        self.private = {name: _PrivateLink(self, name, creds)
                        for name, creds in credentials.items()}
        # Public loads requested so far (each once per process), those the latest want()
        # still asks for (a failed load is retried only while it is), and the queue.
        self._requested: set[_PublicLoad] = set()
        self._wanted_loads: frozenset[_PublicLoad] = frozenset()
        self._loads: asyncio.Queue[_PublicLoad] = asyncio.Queue()

    def want(self, instruments: Collection[str], currencies: Collection[str],
             borrowed: Collection[str]) -> None:
        """Subscribe mark prices of ``instruments`` and index prices of ``currencies``
        and of every configured collateral currency (priced in USDT; USD and USDT count
        at 1). The collateral currencies are always subscribed, so the public connection
        has its subscriptions before any account state has arrived.

        Public REST, the first time each is wanted: the cross-margin tiers of the family
        of each instrument, the discount-rate tiers of each currency held and the
        borrowing (``MARGIN`` position) tiers of each currency ``borrowed``."""
        args = [{"channel": "mark-price", "instId": inst_id} for inst_id in sorted(instruments)]
        args += [{"channel": "index-tickers", "instId": f"{ccy}-USDT"}
                 for ccy in sorted(self.collateral | set(currencies))
                 if ccy not in ("USD", "USDT")]
        self.public.set_wanted(args)
        loads: list[_PublicLoad] = []
        for inst_id in sorted(instruments):
            family = instrument_family(inst_id)
            if family is not None:
                inst_type, name = family
                loads.append(_PublicLoad("tiers", name, POSITION_TIERS, (
                    ("instType", inst_type), ("tdMode", "cross"), ("instFamily", name))))
        # docs: "Public Data > REST API > Get discount rate and interest-free quota".
        loads += [_PublicLoad("discount_rates", ccy, DISCOUNT_RATE, (("ccy", ccy),))
                  for ccy in sorted(currencies)]
        # docs: "Get position tiers": instType MARGIN with ccy gives the borrowing tiers.
        loads += [_PublicLoad("borrow_tiers", ccy, POSITION_TIERS, (
            ("instType", "MARGIN"), ("tdMode", "cross"), ("ccy", ccy))) for ccy in sorted(borrowed)]
        self._wanted_loads = frozenset(loads)
        for load in loads:
            if load not in self._requested:
                self._requested.add(load)
                self._loads.put_nowait(load)

    async def run(self) -> None:
        """Run every connection until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.public.run(), name="okx-public")
            for name, link in self.private.items():
                group.create_task(link.run(), name=f"okx-private-{name}")
            group.create_task(self._load_public(), name="okx-public-rest")

    def set_deliver(self, deliver: Callable[[FeedItem], None]) -> None:
        """Hand items to ``deliver`` from now on (every connection's too)."""
        self.deliver = deliver
        for link in (self.public, *self.private.values()):
            link.deliver = deliver

    def link_stats(self) -> dict[str, LinkStats]:
        """Every connection's counters, by name: ``public``, ``private:ACCOUNT``."""
        links: list[_Link] = [self.public, *self.private.values()]
        return {link.name: LinkStats(link.reconnects, link.errors) for link in links}

    async def _load_public(self) -> None:
        """Fetch each wanted public load once, in the order wanted; a failure is retried
        with backoff for as long as the engine still wants it."""
        config = self.config
        failures: dict[_PublicLoad, int] = {}
        while True:
            load = await self._loads.get()
            try:
                path, body = await self.rest.get(load.path, dict(load.params))
            except FeedError as e:
                self.public.errors += 1
                count = failures.get(load, 0)
                failures[load] = count + 1
                self.log.warning("public_load_failed", load=load.what, subject=load.subject,
                                 error=str(e), failures=count + 1)
                await asyncio.sleep(backoff_delay(count, config.backoff_initial_s,
                                                  config.backoff_max_s, self.rng))
                if load in self._wanted_loads:
                    self._loads.put_nowait(load)
                else:
                    self._requested.discard(load)  # loaded when next wanted
                continue
            failures.pop(load, None)
            self.deliver(RestBody(now_ms(), None, path, body))


class _Link(FeedLink):
    """One OKX websocket connection (the loop is adapters/feed_link.py's)."""

    feed_name = "public"

    def __init__(self, feed: OkxFeed, url: str, account: str | None) -> None:
        name = "public" if account is None else f"private:{account}"
        super().__init__(name, url, account, feed.deliver, feed.config, feed.rng,
                         feed.log.bind(feed=self.feed_name, account=account))
        self.feed = feed

    def frame_of(self, text: str, recv_ms: int) -> Frame | None:
        key = mark_price_key(text)
        if key is None and (text == "pong" or self._acted_on(text)):
            return None
        return Frame(recv_ms, self.account, text, key)

    async def ping(self, ws: PushConnection) -> None:
        await ws.send("ping")  # OKX documents the text form, not protocol pings

    def _acted_on(self, text: str) -> bool:
        """Whether ``text`` is an event (acknowledgement, error, notice) and was acted on."""
        if '"event"' not in text and "\\" not in text:
            return False
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError:
            return False  # delivered: quarantined by the engine task
        if type(frame) is dict and "event" in frame and "data" not in frame:
            self.on_event(frame)
            return True
        return False

    def on_event(self, frame: dict[str, Any]) -> None:
        event = frame.get("event")
        if event == "error":
            self.errors += 1
            self.log.warning("feed_error", code=frame.get("code"), msg=frame.get("msg"))
        elif event == "notice":
            self.log.warning("feed_notice", code=frame.get("code"), msg=frame.get("msg"))
            if str(frame.get("code")) == RECONNECT_NOW_CODE:
                raise ReconnectNow(f"notice {RECONNECT_NOW_CODE}: {frame.get('msg')}",
                                    immediately=True)
        else:
            self.log.debug("feed_event", feed_event=event, arg=frame.get("arg"))

    async def subscribe(self, ws: PushConnection, op: str, args: list[dict[str, str]]) -> None:
        for start in range(0, len(args), SUBSCRIBE_BATCH):
            batch = args[start:start + SUBSCRIBE_BATCH]
            await ws.send(orjson.dumps({"op": op, "args": batch}).decode())


class _PublicLink(_Link):
    def __init__(self, feed: OkxFeed) -> None:
        super().__init__(feed, feed.config.public_url, None)
        self.wanted: dict[str, dict[str, str]] = {
            f"index-tickers:{ccy}-USDT": {"channel": "index-tickers", "instId": f"{ccy}-USDT"}
            for ccy in sorted(feed.collateral) if ccy not in ("USD", "USDT")}
        self.subscribed: dict[str, dict[str, str]] = {}
        self._changed = asyncio.Event()

    def set_wanted(self, args: list[dict[str, str]]) -> None:
        wanted = {f"{a['channel']}:{a['instId']}": a for a in args}
        if wanted.keys() != self.wanted.keys():
            self.wanted = wanted
            self._changed.set()

    async def open(self, ws: PushConnection) -> None:
        feed = self.feed
        # Always: configured [[instruments]] override the feed's specs per inst_id in the
        # engine, they do not replace loading them (SPEC 3.1).
        for inst_type in ("SWAP", "FUTURES"):
            path, body = await feed.rest.get(INSTRUMENTS, {"instType": inst_type})
            feed.deliver(RestBody(now_ms(), None, path, body))
        await self._sync(ws)

    def closed(self) -> None:
        self.subscribed = {}

    def beside(self, ws: PushConnection) -> list[Coroutine[Any, Any, None]]:
        # Subscription changes are sent from a task beside the reader, so a change
        # never waits for the next message.
        return [self._keep_synced(ws)]

    async def _keep_synced(self, ws: PushConnection) -> None:
        while True:
            await self._changed.wait()
            await self._sync(ws)

    async def _sync(self, ws: PushConnection) -> None:
        self._changed.clear()
        wanted = self.wanted
        removed = [arg for key, arg in self.subscribed.items() if key not in wanted]
        added = [arg for key, arg in wanted.items() if key not in self.subscribed]
        self.subscribed = dict(wanted)
        if removed:
            await self.subscribe(ws, "unsubscribe", removed)
        if added:
            await self.subscribe(ws, "subscribe", added)


class _PrivateLink(_Link):
    feed_name = "private"

    def __init__(self, feed: OkxFeed, account: str, credentials: Credentials) -> None:
        super().__init__(feed, feed.config.private_url, account)
        self.credentials = credentials
        self._login_answer: asyncio.Future[dict[str, Any]] | None = None

    async def open(self, ws: PushConnection) -> None:
        feed = self.feed
        await ws.send(orjson.dumps(login_request(self.credentials, int(time.time()))).decode())
        await self._await_login(ws)
        # The account's state before any push (SPEC 3.1): its mode, balances and positions
        # (so its risk is known before the first push), then live orders, which the orders
        # channel never sends as a snapshot. A failure raises FeedError: reconnect.
        for rest_path in BOOTSTRAP_PATHS:
            path, body = await feed.rest.get(rest_path, None, self.credentials)
            feed.deliver(RestBody(now_ms(), self.account, path, body))
        path, body = await feed.rest.orders_pending(self.credentials)
        feed.deliver(RestBody(now_ms(), self.account, path, body))
        await self.subscribe(ws, "subscribe", [dict(arg) for arg in PRIVATE_CHANNELS])

    async def _await_login(self, ws: PushConnection) -> None:
        """Until the answer to the login request: return if it succeeded, else raise."""
        timeout = self.feed.config.request_timeout_s
        answer = self._login_answer = asyncio.get_running_loop().create_future()
        ended = asyncio.create_task(ws.until_closed())
        try:
            await asyncio.wait((answer, ended), timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._login_answer = None
            ended.cancel()
            await asyncio.gather(ended, return_exceptions=True)
        if not answer.done():
            if ended.done() and not ended.cancelled():
                ended.result()  # raises ConnectionClosedError when the connection failed
                raise FeedError("login: the connection closed before the answer")
            raise FeedError(f"login: no answer within {timeout:g} s")
        frame: dict[str, Any] = answer.result()
        if frame.get("event") == "login" and str(frame.get("code")) == "0":
            return
        self.log.error("login_failed", code=frame.get("code"), msg=frame.get("msg"))
        raise FeedError(f"login rejected: OKX code {frame.get('code')!r}: {frame.get('msg')!r}")

    def on_event(self, frame: dict[str, Any]) -> None:
        answer = self._login_answer
        if answer is not None and not answer.done() and frame.get("event") in ("login", "error"):
            answer.set_result(frame)
            return
        super().on_event(frame)
