"""The live Binance USDⓈ-M feed: market streams, user data streams with their listen keys,
keepalive, reconnects and REST loads.

One market connection (``public``) to ``{stream_url}/stream`` carries, by ``SUBSCRIBE``,
``<symbol>@markPrice@1s`` for every instrument the engine needs and
``<asset>usd@assetIndex`` for every currency held (and every configured collateral
currency): the multi-assets valuation. One user data connection per account
(``private:ACCOUNT``) to ``{stream_url}/ws/<listenKey>``. The reconnect loop, the held
delivery while opening and the keepalive watchdog are adapters/feed_link.py's. Choices:

- *Listen keys.* Before each user data connection the account's key is asked for
  (``POST /fapi/v1/listenKey``: the live key, or a new one), kept alive every
  ``listen_key_keepalive_s`` (``PUT``; docs: a key expires 60 minutes after its last
  keepalive). A failed keepalive, or a ``listenKeyExpired`` event, reconnects at once with
  a fresh key; an expired key's connection delivers nothing more.
- *24 hours.* Binance ends every connection at 24 hours; each link reconnects on its own
  after ``reconnect_after_s`` (23 h 50 min by default), immediately.
- *Order of opening.* After the user data connection is open and before its frames are
  delivered, signed REST loads, in this order: the margin and position modes
  (``multiAssetsMargin``, ``positionSide/dual``), the balances (``/fapi/v3/account``),
  the positions (``/fapi/v3/positionRisk``), the live orders (``openOrders``), then the
  leverage brackets of every symbol (``leverageBracket`` is ``USER_DATA``, so it loads on
  an account's connection). Frames arriving meanwhile are held and delivered after them,
  so the account's state is complete before its first push. The market connection loads
  the instrument specs (``exchangeInfo``) at each (re)connect before subscribing. A failed
  load is a FeedError: the connection is opened again with backoff.
- *Subscribing.* ``SUBSCRIBE`` / ``UNSUBSCRIBE`` in batches of :data:`SUBSCRIBE_BATCH`
  streams, at most :data:`REQUESTS_PER_S` requests a second (Binance allows 10 incoming
  messages a second per connection). Answers ``{"result": null, "id"}`` are not
  delivered; ``{"error": ...}`` answers are logged and counted as errors.
- *Keepalive.* Websocket pings after ``ping_after_s`` of silence (Binance answers pings;
  it pings too, and websockets answers those).
- *What is delivered.* Every data message, unparsed: market frames (the combined-stream
  envelope ``{"stream", "data"}``) with their stream name as the conflation key (a newer
  mark replaces a waiting one under pressure, monitor/runtime/feed.py), user data events as they
  come. ``MARGIN_CALL`` is logged as ``binance_margin_call`` and delivered: the engine
  holds it against its own view and says where they disagree (``exchange_divergence``).

Credentials never leave :class:`~adapters.binance.auth.Credentials` except in a request's
header and signature; nothing here logs a request it sends.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Collection, Coroutine, Mapping
from itertools import count
from typing import Any, Final

import orjson

from adapters.binance.auth import Credentials
from adapters.binance.config import BinanceConfig
from adapters.binance.decode import RestPath
from adapters.binance.rest import BOOTSTRAP_PATHS, BinanceRest
from adapters.feed_link import FeedLink, ReconnectNow, now_ms
from adapters.logging import get_logger
from adapters.push_connection import PushConnection
from monitor.core.errors import FeedError
from monitor.runtime.feed import FeedItem, Frame, LinkStats, RestBody

__all__ = ["BinanceFeed", "asset_index_stream", "mark_price_stream"]

SUBSCRIBE_BATCH: Final = 100
REQUESTS_PER_S: Final = 5
_STREAM_PREFIX: Final = '{"stream":"'


def mark_price_stream(symbol: str) -> str:
    return f"{symbol.lower()}@markPrice@1s"


def asset_index_stream(asset: str) -> str:
    return f"{asset.lower()}usd@assetIndex"


class BinanceFeed:
    """The market connection and one user data connection per account."""

    def __init__(self, config: BinanceConfig, credentials: Mapping[str, Credentials],
                 deliver: Callable[[FeedItem], None], *, collateral: Collection[str] = (),
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.collateral = frozenset(collateral)
        self.deliver = deliver
        self.rest = BinanceRest(config.rest_url, timeout_s=config.request_timeout_s,
                                recv_window_ms=int(config.recv_window_ms))
        self.rng = rng or random.Random()
        self.log = get_logger("riskmon.feed")
        self.market = _MarketLink(self)
        self.user = {name: _UserLink(self, name, creds) for name, creds in credentials.items()}

    def want(self, instruments: Collection[str], currencies: Collection[str],
             borrowed: Collection[str]) -> None:
        """Mark prices of ``instruments``; asset indices of ``currencies`` and the
        configured collateral currencies (USD itself needs none). Nothing is borrowed on
        USDⓈ-M futures: ``borrowed`` is not used."""
        streams = [mark_price_stream(symbol) for symbol in sorted(instruments)]
        streams += [asset_index_stream(asset)
                    for asset in sorted(self.collateral | set(currencies)) if asset != "USD"]
        self.market.set_wanted(streams)

    async def run(self) -> None:
        """Run every connection until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.market.run(), name="binance-market")
            for name, link in self.user.items():
                group.create_task(link.run(), name=f"binance-user-{name}")

    def set_deliver(self, deliver: Callable[[FeedItem], None]) -> None:
        self.deliver = deliver
        for link in (self.market, *self.user.values()):
            link.deliver = deliver

    def link_stats(self) -> dict[str, LinkStats]:
        """Every connection's counters, by name: ``public``, ``private:ACCOUNT``."""
        links: list[FeedLink] = [self.market, *self.user.values()]
        return {link.name: LinkStats(link.reconnects, link.errors) for link in links}


class _Link(FeedLink):
    def __init__(self, feed: BinanceFeed, url: str, account: str | None) -> None:
        kind = "public" if account is None else "private"
        super().__init__("public" if account is None else f"private:{account}", url, account,
                         feed.deliver, feed.config, feed.rng,
                         feed.log.bind(feed=kind, account=account))
        self.feed = feed

    def beside(self, ws: PushConnection) -> list[Coroutine[Any, Any, None]]:
        return [self._renew()]

    async def _renew(self) -> None:
        """The 24-hour limit: reconnect before Binance ends the connection."""
        await asyncio.sleep(self.feed.config.reconnect_after_s)
        raise ReconnectNow("reconnect before the 24 h connection limit", immediately=True)

    def rest_body(self, path: str, body: Any) -> None:
        self.deliver(RestBody(now_ms(), self.account, path, body))


class _MarketLink(_Link):
    def __init__(self, feed: BinanceFeed) -> None:
        super().__init__(feed, feed.config.stream_url.rstrip("/") + "/stream", None)
        self.wanted: list[str] = [asset_index_stream(asset) for asset in sorted(feed.collateral)
                                  if asset != "USD"]
        self.subscribed: set[str] = set()
        self._changed = asyncio.Event()
        self._ids = count(1)

    def set_wanted(self, streams: list[str]) -> None:
        if set(streams) != set(self.wanted):
            self.wanted = streams
            self._changed.set()

    async def open(self, ws: PushConnection) -> None:
        path, body = await self.feed.rest.get(RestPath.EXCHANGE_INFO)
        self.rest_body(path, body)
        await self._sync(ws)

    def closed(self) -> None:
        self.subscribed = set()

    def beside(self, ws: PushConnection) -> list[Coroutine[Any, Any, None]]:
        return [*super().beside(ws), self._keep_synced(ws)]

    async def _keep_synced(self, ws: PushConnection) -> None:
        while True:
            await self._changed.wait()
            await self._sync(ws)

    async def _sync(self, ws: PushConnection) -> None:
        self._changed.clear()
        wanted = set(self.wanted)
        removed = sorted(self.subscribed - wanted)
        added = [stream for stream in self.wanted if stream not in self.subscribed]
        self.subscribed = wanted
        requests = [(method, streams[start:start + SUBSCRIBE_BATCH])
                    for method, streams in (("UNSUBSCRIBE", removed), ("SUBSCRIBE", added))
                    for start in range(0, len(streams), SUBSCRIBE_BATCH)]
        for number, (method, batch) in enumerate(requests):
            if number:  # spaced, not followed, by the pause: opening waits for none
                await asyncio.sleep(1.0 / REQUESTS_PER_S)
            await ws.send(orjson.dumps({"method": method, "params": batch,
                                        "id": next(self._ids)}).decode())

    def frame_of(self, text: str, recv_ms: int) -> Frame | None:
        if text.startswith(_STREAM_PREFIX):
            end = text.find('"', len(_STREAM_PREFIX))
            key = text[len(_STREAM_PREFIX):end] if end > 0 else None
            return Frame(recv_ms, None, text, key)
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            return Frame(recv_ms, None, text)  # quarantined by the engine task
        if type(message) is dict and "id" in message and ("result" in message
                                                           or "error" in message):
            if "error" in message:
                self.errors += 1
                self.log.warning("feed_error", error=message.get("error"),
                                 request_id=message.get("id"))
            return None
        return Frame(recv_ms, None, text)


class _UserLink(_Link):
    def __init__(self, feed: BinanceFeed, account: str, credentials: Credentials) -> None:
        super().__init__(feed, feed.config.stream_url.rstrip("/") + "/ws", account)
        self.credentials = credentials
        self.listen_key: str | None = None

    async def before_connect(self) -> None:
        self.listen_key = await self.feed.rest.listen_key(self.credentials, "POST")

    def connect_url(self) -> str:
        return f"{self.url}/{self.listen_key}"

    async def open(self, ws: PushConnection) -> None:
        rest = self.feed.rest
        for path in (*BOOTSTRAP_PATHS, RestPath.LEVERAGE_BRACKET):
            recorded, body = await rest.get(path, None, self.credentials)
            self.rest_body(recorded, body)

    def beside(self, ws: PushConnection) -> list[Coroutine[Any, Any, None]]:
        return [*super().beside(ws), self._keep_alive()]

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self.feed.config.listen_key_keepalive_s)
            try:
                await self.feed.rest.listen_key(self.credentials, "PUT", self.listen_key)
            except FeedError as e:
                raise ReconnectNow(f"listen key keepalive failed: {e}",
                                   immediately=True) from None

    def frame_of(self, text: str, recv_ms: int) -> Frame | None:
        if '"listenKeyExpired"' in text or '"MARGIN_CALL"' in text:
            try:
                message = orjson.loads(text)
            except orjson.JSONDecodeError:
                message = None
            kind = message.get("e") if type(message) is dict else None
            if kind == "listenKeyExpired":
                raise ReconnectNow("listen key expired", immediately=True)
            if kind == "MARGIN_CALL":
                self.log.warning("binance_margin_call", positions=len(message.get("p") or ())
                                 if type(message) is dict else 0)
        return Frame(recv_ms, self.account, text)
