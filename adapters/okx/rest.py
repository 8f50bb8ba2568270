"""The few OKX v5 REST calls the live feed makes (SPEC 3.1).

After every private (re)connect the feed loads, signed, the account's configuration
(``GET /api/v5/account/config``), balance (``/api/v5/account/balance``), positions
(``/api/v5/account/positions``) and live orders (``/api/v5/trade/orders-pending``); at
every public connect the instrument specs (``/api/v5/public/instruments``); and, public,
as the engine comes to need them, the maintenance tiers of the families in use and the
borrowing tiers of the currencies borrowed (``/api/v5/public/position-tiers``) and the
discount-rate tiers of the currencies held
(``/api/v5/public/discount-rate-interest-free-quota``). That is a handful of GET requests
per reconnect, so they go through the standard library's HTTP client in a worker thread:
no extra dependency for a cold path. Only ``http`` and ``https`` URLs are accepted. In
demo trading (``okx.simulated``) every request carries ``x-simulated-trading: 1``.

Every call returns the request path as sent (with its query) and the decoded JSON body;
those are exactly what a recording's ``rest`` line holds (SPEC 3.2). Failures raise
:class:`~monitor.core.errors.FeedError` with the path, the HTTP status and OKX's ``code`` and
``msg`` when there are some; never a header (they carry the credentials).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import orjson

from adapters.okx.auth import Credentials, rest_headers
from adapters.okx.decode import RestPath
from adapters.rest_fetch import fetch_json
from monitor.core.errors import ConfigError, FeedError

__all__ = ["OkxRest"]

ORDERS_PENDING: Final = RestPath.ORDERS_PENDING
ACCOUNT_CONFIG: Final = RestPath.ACCOUNT_CONFIG
BALANCE: Final = RestPath.BALANCE
POSITIONS: Final = RestPath.POSITIONS
INSTRUMENTS: Final = RestPath.INSTRUMENTS
POSITION_TIERS: Final = RestPath.POSITION_TIERS
DISCOUNT_RATE: Final = RestPath.DISCOUNT_RATE
# docs: "Overview > Demo trading services": demo trading is the production REST host with
# this header on every request (public ones too; the official SDK, okxapi/python-okx
# okx/utils.py, sends it on unsigned requests as well).
SIMULATED_TRADING_HEADER: Final = "x-simulated-trading"
PAGE_LIMIT: Final = 100  # the docs' maximum for orders-pending
MAX_PAGES: Final = 1000  # 100,000 live orders: beyond that something is wrong


class OkxRest:
    """GET requests against ``base_url`` (``https://www.okx.com`` in production)."""

    def __init__(self, base_url: str, *, timeout_s: float = 10.0, simulated: bool = False,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        """``simulated``: OKX demo trading, every request carries ``x-simulated-trading: 1``."""
        scheme = urlsplit(base_url).scheme
        if scheme not in ("http", "https"):
            raise ConfigError("okx.rest_url", "must be an http:// or https:// URL")
        self._base = base_url.rstrip("/")
        self._timeout_s = timeout_s
        self._simulated = simulated
        self._now = now

    async def get(self, path: str, params: Mapping[str, str] | None = None,
                  credentials: Credentials | None = None) -> tuple[str, Any]:
        """``GET path?params``; returns ``(path with query, body)``.

        A body whose ``code`` is not ``"0"`` is an error, as the docs define it.
        """
        request_path = path + (f"?{urlencode(params)}" if params else "")
        headers = {"Accept": "application/json"}
        if self._simulated:
            headers[SIMULATED_TRADING_HEADER] = "1"
        if credentials is not None:
            headers.update(rest_headers(credentials, "GET", request_path, "", self._now()))
        body = await asyncio.to_thread(self._fetch, request_path, headers)
        if not isinstance(body, dict) or body.get("code") not in ("0", 0):
            code = body.get("code") if isinstance(body, dict) else None
            msg = body.get("msg") if isinstance(body, dict) else None
            raise FeedError(f"GET {path}: OKX error code {code!r}: {msg!r}")
        return request_path, body

    async def orders_pending(self, credentials: Credentials) -> tuple[str, Any]:
        """Every live order, all pages merged into one body (as one ``rest`` line).

        The docs page newest first, ``limit`` at most 100, and ``after`` an ``ordId`` to
        get the older ones.
        """
        rows: list[Any] = []
        after: str | None = None
        for _ in range(MAX_PAGES):
            params = {"limit": str(PAGE_LIMIT)}
            if after is not None:
                params["after"] = after
            _, body = await self.get(ORDERS_PENDING, params, credentials)
            page = body.get("data")
            if not isinstance(page, list):
                raise FeedError(f"GET {ORDERS_PENDING}: body has no data list")
            rows.extend(page)
            last = page[-1].get("ordId") if page and isinstance(page[-1], dict) else None
            if len(page) < PAGE_LIMIT or not isinstance(last, str) or last == after:
                break
            after = last
        else:
            raise FeedError(f"GET {ORDERS_PENDING}: more than {MAX_PAGES} pages")
        return ORDERS_PENDING, {"code": "0", "msg": "", "data": rows}

    def _fetch(self, request_path: str, headers: dict[str, str]) -> Any:
        return fetch_json(self._base, "GET", request_path, headers,
                          timeout_s=self._timeout_s, error_detail=_okx_error)


def _okx_error(raw: bytes) -> str:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(body, dict) and "code" in body:
        return f" (OKX code {body.get('code')!r}: {body.get('msg')!r})"
    return ""
