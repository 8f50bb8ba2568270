"""``[venues.okx]`` (or SPEC 6's ``[okx]``, the same table at top level): the OKX v5
endpoints, keepalive and reconnect timing, and the demo-trading switch.

The core keeps the table as written (monitor/app/config.py, ``Config.venues``); the composition
root has this module read it through :class:`adapters.okx.venue.OkxVenue`. Errors name the
key where it was written (``okx.public_url`` or ``venues.okx.public_url``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from monitor.core.errors import ConfigError
from monitor.core.settings import only_keys, read_bool, read_positive, read_string


@dataclass(frozen=True, slots=True)
class OkxConfig:
    """Beyond SPEC 6's URLs, the keepalive and reconnect timing: OKX closes a connection
    silent for 30 s, so ``ping_after_s`` must stay below that."""

    public_url: str = "wss://ws.okx.com:8443/ws/v5/public"
    private_url: str = "wss://ws.okx.com:8443/ws/v5/private"
    rest_url: str = "https://www.okx.com"
    simulated: bool = False
    ping_after_s: float = 25.0
    pong_timeout_s: float = 10.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    request_timeout_s: float = 10.0


_URLS = ("public_url", "private_url", "rest_url")
_PRODUCTION = OkxConfig()
# OKX demo trading (docs: "Overview > Demo trading services"): its own websocket host; REST
# is the production host with the header ``x-simulated-trading: 1``.
DEMO_PUBLIC_URL = "wss://wspap.okx.com:8443/ws/v5/public"
DEMO_PRIVATE_URL = "wss://wspap.okx.com:8443/ws/v5/private"
_SECONDS = ("ping_after_s", "pong_timeout_s", "backoff_initial_s", "backoff_max_s",
            "request_timeout_s")


def parse_okx(table: Mapping[str, Any], path: str = "okx") -> OkxConfig:
    """The table at ``path`` (where it was written, for the errors' key names)."""
    only_keys(table, path, {*_URLS, *_SECONDS, "simulated"})
    defaults = OkxConfig()
    simulated = read_bool(table.get("simulated", False), f"{path}.simulated")
    if simulated:
        defaults = OkxConfig(public_url=DEMO_PUBLIC_URL, private_url=DEMO_PRIVATE_URL)
    values: dict[str, Any] = {
        key: read_string(table.get(key, getattr(defaults, key)), f"{path}.{key}")
        for key in _URLS
    }
    values["simulated"] = simulated
    if simulated:
        for key in ("public_url", "private_url"):
            if values[key] in (_PRODUCTION.public_url, _PRODUCTION.private_url):
                raise ConfigError(f"{path}.{key}", f"is OKX's production URL but {path}."
                                  "simulated is true: leave it out to use demo trading's")
    for key in _SECONDS:
        values[key] = read_positive(table.get(key, getattr(defaults, key)), f"{path}.{key}")
    if values["ping_after_s"] >= 30:
        raise ConfigError(f"{path}.ping_after_s",
                          "must be below 30 (OKX drops silent connections)")
    if values["backoff_max_s"] < values["backoff_initial_s"]:
        raise ConfigError(f"{path}.backoff_max_s",
                          f"must not be below {path}.backoff_initial_s")
    return OkxConfig(**values)
