"""``[venues.binance]``: the Binance USDⓈ-M endpoints, the user data stream's timing, the
keepalive and reconnect timing, and the testnet switch.

Read by :class:`adapters.binance.venue.BinanceVenue` when the composition root resolves
the venues (monitor/runtime/venues.py); errors name the key where it was written
(``venues.binance.KEY``, or ``binance.KEY`` for the table at top level).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from monitor.core.errors import ConfigError
from monitor.core.settings import only_keys, read_bool, read_positive, read_string

# docs: "General Info": the production REST base and the websocket streams' base; the
# testnet's are its own hosts.
PRODUCTION_REST_URL = "https://fapi.binance.com"
PRODUCTION_STREAM_URL = "wss://fstream.binance.com"
TESTNET_REST_URL = "https://testnet.binancefuture.com"
TESTNET_STREAM_URL = "wss://fstream.binancefuture.com"


@dataclass(frozen=True, slots=True)
class BinanceConfig:
    """``stream_url`` is the base of both websockets: ``/stream`` (market streams,
    combined) and ``/ws/<listenKey>`` (an account's user data).

    - ``listen_key_keepalive_s``: a listen key lives 60 minutes after its last keepalive
      (docs: "User Data Streams"); it is kept alive every 30 minutes.
    - ``reconnect_after_s``: Binance ends every connection at 24 hours; riskmon opens a
      fresh one before that (23 h 50 min), at a moment of its choosing.
    - ``ping_after_s`` / ``pong_timeout_s``: after that much silence a websocket ping;
      no frame nor pong within the timeout: reconnect.
    - ``recv_window_ms``: how long after its ``timestamp`` a signed request stays valid.
    """

    rest_url: str = PRODUCTION_REST_URL
    stream_url: str = PRODUCTION_STREAM_URL
    testnet: bool = False
    recv_window_ms: float = 5000.0
    listen_key_keepalive_s: float = 1800.0
    reconnect_after_s: float = 85_800.0
    ping_after_s: float = 30.0
    pong_timeout_s: float = 10.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    request_timeout_s: float = 10.0


_URLS = ("rest_url", "stream_url")
_SECONDS = ("recv_window_ms", "listen_key_keepalive_s", "reconnect_after_s", "ping_after_s",
            "pong_timeout_s", "backoff_initial_s", "backoff_max_s", "request_timeout_s")


def parse_binance(table: Mapping[str, Any], path: str = "venues.binance") -> BinanceConfig:
    """The table at ``path`` (where it was written, for the errors' key names)."""
    only_keys(table, path, {*_URLS, *_SECONDS, "testnet"})
    testnet = read_bool(table.get("testnet", False), f"{path}.testnet")
    defaults = (BinanceConfig(rest_url=TESTNET_REST_URL, stream_url=TESTNET_STREAM_URL)
                if testnet else BinanceConfig())
    values: dict[str, Any] = {
        key: read_string(table.get(key, getattr(defaults, key)), f"{path}.{key}")
        for key in _URLS
    }
    values["testnet"] = testnet
    if testnet:
        for key, production in (("rest_url", PRODUCTION_REST_URL),
                                ("stream_url", PRODUCTION_STREAM_URL)):
            if values[key].rstrip("/") == production:
                raise ConfigError(f"{path}.{key}", f"is Binance's production URL but "
                                  f"{path}.testnet is true: leave it out to use the testnet's")
    for key in _SECONDS:
        values[key] = read_positive(table.get(key, getattr(defaults, key)), f"{path}.{key}")
    if values["recv_window_ms"] > 60_000:
        raise ConfigError(f"{path}.recv_window_ms", "must be at most 60000 (Binance's limit)")
    if values["listen_key_keepalive_s"] >= 3600:
        raise ConfigError(f"{path}.listen_key_keepalive_s",
                          "must be below 3600 (a listen key expires 60 min after its "
                          "last keepalive)")
    if values["reconnect_after_s"] >= 86_400:
        raise ConfigError(f"{path}.reconnect_after_s",
                          "must be below 86400 (Binance ends connections at 24 h)")
    if values["backoff_max_s"] < values["backoff_initial_s"]:
        raise ConfigError(f"{path}.backoff_max_s",
                          f"must not be below {path}.backoff_initial_s")
    return BinanceConfig(**values)
