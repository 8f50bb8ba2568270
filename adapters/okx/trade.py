"""The OKX v5 trading calls the executor makes (adapters/executor.py), signed with a trade key.

Endpoints (OKX v5 docs, "Trading Account" and "Order Book Trading > Trade"):

- ``GET /api/v5/account/config``: the key's ``perm`` ("read_only,trade", ...), checked at
  start: execution refuses to start with a key that cannot trade.
- ``GET /api/v5/account/positions``: the live positions, read before a send when the
  daemon's own view of them (the ``positions`` channel) cannot be vouched for, so that no
  order is larger than the position it closes.
- ``POST /api/v5/trade/batch-orders``: up to 20 orders per request. ``code`` "0": all
  placed, "1": all failed, "2": some failed; each order's own ``sCode``/``sMsg``.
- ``GET /api/v5/trade/order``: one order by ``instId`` and ``clOrdId``; ``51603`` when the
  exchange has no such order.

Rate limits (docs, per endpoint): batch-orders 300 orders per 2 s, order details 60
requests per 2 s, positions 10 and account config 5 requests per 2 s. Every call waits for
its own budget (:class:`Budget`), so a burst of triggers queues here instead of being
refused; a ``50011`` answer (HTTP 429, "too many requests") is a ``throttled``
:class:`~monitor.core.execution.TradeFailure` and the executor backs off.

One kept-open HTTP/1.1 connection per account (adapters/http1.py: h11 over an asyncio
stream, a quarter of httpx's time per request), kept warm by :meth:`OkxTrader.warm` (the
executor calls it when the account has been idle for ``[execution] keep_warm_s``): a
trigger's orders then go out at once on an open connection, with no TCP or TLS handshake
in the way. In demo trading (``okx.simulated``) every request carries
``x-simulated-trading: 1``. Errors name the path, the HTTP status and OKX's ``code`` /
``msg``; never a header, which carries the credentials.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from adapters.http1 import HttpFailure, KeepAliveConnection
from adapters.okx.auth import Credentials, rest_headers
from adapters.okx.decode import OkxDecoder, RestPath
from adapters.okx.rest import SIMULATED_TRADING_HEADER
from monitor.core.errors import BadInput
from monitor.core.events import OrderUpdate, PositionSnapshot
from monitor.core.execution import Leg, OrderAnswer, PositionKey, TradeFailure

__all__ = ["BATCH_LIMIT", "Budget", "OkxTrader"]

BATCH_ORDERS: Final = "/api/v5/trade/batch-orders"
ORDER: Final = "/api/v5/trade/order"
BATCH_LIMIT: Final = 20
ORDER_NOT_FOUND: Final = "51603"
RATE_LIMITED: Final = "50011"


class Budget:
    """A token bucket: ``capacity`` units refilled over ``window_s`` seconds (OKX states
    its limits as "N per 2 seconds"). :meth:`take` waits until ``cost`` units are there."""

    def __init__(self, capacity: float, window_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.rate = capacity / window_s
        self._tokens = capacity
        self._clock = clock
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now

    async def take(self, cost: float = 1.0) -> None:
        cost = min(cost, self.capacity)
        self._refill()
        while self._tokens < cost:
            await asyncio.sleep((cost - self._tokens) / self.rate)
            self._refill()
        self._tokens -= cost


class OkxTrader:
    """Trading calls for one account with its trade key, over one keep-alive client
    (implements :class:`monitor.core.execution.Trader`)."""

    batch_limit = BATCH_LIMIT

    def __init__(self, account: str, base_url: str, credentials: Credentials, *,
                 timeout_s: float = 5.0, simulated: bool = False,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.account = account
        self._credentials = credentials
        self._now = now
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if simulated:
            headers[SIMULATED_TRADING_HEADER] = "1"
        self._connection = KeepAliveConnection(base_url, timeout_s=timeout_s,
                                               headers=headers)
        self.orders_budget = Budget(300, 2.0)
        self.lookup_budget = Budget(60, 2.0)
        self.positions_budget = Budget(10, 2.0)
        self.config_budget = Budget(5, 2.0)

    async def close(self) -> None:
        await self._connection.close()

    async def warm(self) -> None:
        """Keep the connection open: the cheapest signed call there is (the key's
        account configuration, within its own budget), its answer unused."""
        await self.permissions()

    async def permissions(self) -> frozenset[str]:
        """The trade key's permissions (``perm`` of ``GET /api/v5/account/config``)."""
        await self.config_budget.take()
        rows = await self._call("GET", RestPath.ACCOUNT_CONFIG)
        perm = rows[0].get("perm") if rows and isinstance(rows[0], dict) else None
        if not isinstance(perm, str):
            raise TradeFailure(f"GET {RestPath.ACCOUNT_CONFIG}: the answer has no perm field",
                               "refused")
        return frozenset(part.strip() for part in perm.split(",") if part.strip())

    async def positions(self) -> dict[PositionKey, float]:
        """Every open position's signed contracts, by (instId, margin mode, side)."""
        await self.positions_budget.take()
        # No query: the whole list (a filtered answer would not say what is closed).
        path = RestPath.POSITIONS
        body = await self._body("GET", path)
        try:
            events = OkxDecoder().decode_rest(path, body, self.account, 0)
        except BadInput as e:
            raise TradeFailure(f"GET {RestPath.POSITIONS}: unusable answer ({e.reason})",
                               "refused") from None
        held: dict[PositionKey, float] = {}
        for event in events:
            if isinstance(event, PositionSnapshot):
                for position in event.positions:
                    key = (position.inst_id, position.margin_mode, position.side)
                    held[key] = held.get(key, 0.0) + position.contracts
        return held

    async def place(self, orders: Sequence[tuple[Leg, str, float]]) -> list[OrderAnswer]:
        """``POST batch-orders`` (at most :data:`BATCH_LIMIT`): reduce-only market orders,
        one answer per order, in request order (docs: "Place multiple orders")."""
        if not 1 <= len(orders) <= BATCH_LIMIT:
            raise ValueError(f"a batch holds 1 to {BATCH_LIMIT} orders")
        request = []
        for leg, client_id, size in orders:
            order = {"instId": leg.inst_id, "tdMode": leg.margin_mode, "side": leg.side,
                     "ordType": "market", "sz": _size_text(size), "reduceOnly": True,
                     "clOrdId": client_id}
            if leg.position_side != "net":
                order["posSide"] = leg.position_side  # hedge mode names the side closed
            request.append(order)
        await self.orders_budget.take(len(request))
        body = await self._body("POST", BATCH_ORDERS, orjson.dumps(request).decode(),
                                accept=("0", "1", "2"))
        rows = body.get("data")
        answers: dict[str, OrderAnswer] = {}
        for row in rows if isinstance(rows, list) else ():
            if isinstance(row, dict) and isinstance(row.get("clOrdId"), str):
                ts = row.get("ts")
                answers[row["clOrdId"]] = OrderAnswer(
                    row["clOrdId"], str(row.get("ordId") or ""), str(row.get("sCode", "")),
                    str(row.get("sMsg", "")),
                    int(ts) if isinstance(ts, str) and ts.isdecimal() else None)
        # An order the answer does not mention: its outcome is unknown (looked up).
        return [answers.get(client_id, OrderAnswer(client_id, "", "", "not in the answer",
                                                   None)) for _, client_id, _ in orders]

    async def order(self, leg: Leg, client_id: str) -> OrderUpdate | None:
        """The order with this client id (``GET trade/order``), None when OKX has none."""
        await self.lookup_budget.take()
        path = f"{ORDER}?instId={leg.inst_id}&clOrdId={client_id}"
        try:
            rows = await self._call("GET", path)
        except TradeFailure as e:
            if e.code == ORDER_NOT_FOUND:
                return None
            raise
        if not rows:
            return None
        frame = {"arg": {"channel": "orders", "instType": "ANY"}, "data": rows[:1]}
        try:
            events = OkxDecoder().decode_frame(frame, self.account, 0)
        except BadInput as e:
            raise TradeFailure(f"GET {ORDER}: unusable answer ({e.reason})", "refused") from None
        return next((e for e in events if isinstance(e, OrderUpdate)), None)

    async def _call(self, method: str, path: str, body: str = "") -> list[Any]:
        data = (await self._body(method, path, body)).get("data")
        return data if isinstance(data, list) else []

    async def _body(self, method: str, path: str, body: str = "",
                    accept: Sequence[str] = ("0",)) -> dict[str, Any]:
        headers = rest_headers(self._credentials, method, path, body, self._now())
        where = f"{method} {path.split('?', 1)[0]}"
        try:
            response = await self._connection.request(method, path, body=body.encode(),
                                                      headers=headers)
        except HttpFailure as e:
            reason = "no answer in time" if e.timed_out else str(e)
            raise TradeFailure(f"{where}: {reason}", "lost") from None
        try:
            answer = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            answer = None
        code = str(answer.get("code")) if isinstance(answer, dict) else ""
        msg = str(answer.get("msg", "")) if isinstance(answer, dict) else ""
        if response.status == 429 or code == RATE_LIMITED:
            raise TradeFailure(f"{where}: rate limited (OKX code {code or 'none'})",
                               "throttled", RATE_LIMITED, msg)
        if response.status >= 500:
            # The exchange failed somewhere on its side: the order may have been placed.
            raise TradeFailure(f"{where}: HTTP {response.status}", "lost")
        if not isinstance(answer, dict):
            raise TradeFailure(f"{where}: HTTP {response.status}, not JSON", "refused",
                               str(response.status))
        if code not in accept:
            raise TradeFailure(f"{where}: HTTP {response.status}, OKX code {code!r}:"
                               f" {msg!r}", "refused", code, msg)
        return answer


def _size_text(size: float) -> str:
    """Contracts as OKX wants them: a decimal string, no exponent, no trailing zeros."""
    text = f"{size:.10f}".rstrip("0").rstrip(".")
    return text or "0"
