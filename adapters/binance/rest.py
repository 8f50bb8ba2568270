"""The Binance USDⓈ-M REST calls of the live feed, and the listen key of the user data stream.

A handful of requests per (re)connect, so they go through the standard library's HTTP
client in a worker thread, like the OKX feed's. Signed requests (``USER_DATA``) carry the
key in ``X-MBX-APIKEY`` and ``timestamp``, ``recvWindow`` and ``signature`` in the query
(adapters/binance/auth.py); the listen key's requests (``USER_STREAM``) the header only.

Every call returns the request path as a recording's ``rest`` line holds it (SPEC 3.2): the
path with the caller's own parameters, without ``timestamp``, ``recvWindow`` or
``signature`` (a recording carries no signature), and the decoded JSON body. Failures raise
:class:`~monitor.core.errors.FeedError` with the path, the HTTP status and Binance's ``code``
and ``msg`` when there are some; never a header or a signed query.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import orjson

from adapters.binance.auth import API_KEY_HEADER, Credentials, signed_query
from adapters.binance.decode import RestPath
from adapters.rest_fetch import fetch_json
from monitor.core.errors import ConfigError, FeedError

__all__ = ["LISTEN_KEY", "BinanceRest"]

LISTEN_KEY: Final = "/fapi/v1/listenKey"


class BinanceRest:
    """Requests against ``base_url`` (``https://fapi.binance.com`` in production)."""

    def __init__(self, base_url: str, *, timeout_s: float = 10.0, recv_window_ms: int = 5000,
                 now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        if urlsplit(base_url).scheme not in ("http", "https"):
            raise ConfigError("venues.binance.rest_url", "must be an http:// or https:// URL")
        self._base = base_url.rstrip("/")
        self._timeout_s = timeout_s
        self._recv_window_ms = recv_window_ms
        self._now_ms = now_ms

    async def get(self, path: str, params: Mapping[str, str] | None = None,
                  credentials: Credentials | None = None) -> tuple[str, Any]:
        """``GET path?params``, signed with ``credentials``; returns ``(recorded path,
        body)``."""
        recorded = path + (f"?{urlencode(params)}" if params else "")
        headers = {"Accept": "application/json"}
        target = recorded
        if credentials is not None:
            headers[API_KEY_HEADER] = credentials.api_key
            query = signed_query(credentials, params or {}, self._now_ms(),
                                 self._recv_window_ms)
            target = f"{path}?{query}"
        body = await asyncio.to_thread(self._fetch, "GET", target, headers)
        return recorded, body

    async def listen_key(self, credentials: Credentials, method: str,
                         key: str | None = None) -> str:
        """``POST`` (a new key, or the live one), ``PUT`` (keep ``key`` alive) or
        ``DELETE`` the account's listen key; returns the key.

        None of the three takes a parameter on USDⓈ-M futures (docs "User Data Streams >
        Keepalive User Data Stream": "Parameters: None"): the API key names the account,
        and an account has one listen key. (Spot's keepalive takes ``listenKey``; this
        one does not.)"""
        body = await asyncio.to_thread(self._fetch, method, LISTEN_KEY,
                                       {"Accept": "application/json",
                                        API_KEY_HEADER: credentials.api_key})
        if method == "POST":
            found = body.get("listenKey") if isinstance(body, dict) else None
            if not isinstance(found, str) or not found:
                raise FeedError(f"POST {LISTEN_KEY}: no listenKey in the answer")
            return found
        return key or ""

    def _fetch(self, method: str, target: str, headers: dict[str, str]) -> Any:
        return fetch_json(self._base, method, target, headers, timeout_s=self._timeout_s,
                          error_detail=_binance_error)


def _binance_error(raw: bytes) -> str:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(body, dict) and "code" in body:
        return f" (Binance code {body.get('code')!r}: {body.get('msg')!r})"
    return ""


# The account's state at every user data (re)connect, in this order (adapters/binance/
# live.py): its margin and position modes, balances, positions, live orders.
BOOTSTRAP_PATHS: Final = (RestPath.MULTI_ASSETS, RestPath.POSITION_MODE, RestPath.ACCOUNT,
                          RestPath.POSITION_RISK, RestPath.OPEN_ORDERS)
