"""OKX v5 as a venue (monitor/runtime/venues.py): what the composition root builds for an OKX
account, from the modules of this package."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from adapters.okx.auth import Credentials, load_credentials, load_trade_credentials
from adapters.okx.config import OkxConfig, parse_okx
from adapters.okx.decode import OkxDecoder
from adapters.okx.live import OkxFeed
from adapters.okx.replay_server import Faults, serve
from adapters.okx.trade import OkxTrader
from monitor.core.errors import ConfigError
from monitor.core.settings import AccountConfig, RiskConfig
from monitor.runtime.feed import Feed, FeedItem


class OkxVenue:
    """Implements :class:`monitor.runtime.venues.Venue` for OKX v5."""

    name = "okx"

    def settings(self, table: Mapping[str, Any], path: str) -> OkxConfig:
        return parse_okx(table, path)

    def decoder(self) -> OkxDecoder:
        return OkxDecoder()

    def margin_rules(self, settings: OkxConfig, risk: RiskConfig) -> RiskConfig:
        return risk  # riskmon's formulas are OKX's (SPEC 1)

    def credentials(self, account: AccountConfig) -> Credentials:
        return load_credentials(account)

    def trade_credentials(self, account: AccountConfig) -> Credentials:
        return load_trade_credentials(account)

    def feed(self, settings: OkxConfig, credentials: Mapping[str, Credentials],
             deliver: Callable[[FeedItem], None], *, collateral: Collection[str]) -> Feed:
        return OkxFeed(settings, dict(credentials), deliver, collateral=collateral)

    def trader(self, settings: OkxConfig, account: str, credentials: Credentials, *,
               timeout_s: float) -> OkxTrader:
        return OkxTrader(account, settings.rest_url, credentials, timeout_s=timeout_s,
                         simulated=settings.simulated)

    async def serve_replay(self, recording: Path, host: str, port: int, speed: float | None,
                           faults: Mapping[str, Any], status: Callable[[dict[str, Any]], None],
                           *, rest_port: int = 0) -> None:
        options = dict(faults)
        if options.pop("expire_listen_key_after", None) is not None:
            raise ConfigError("--expire-listen-key-after", "OKX has no listen keys: the "
                              "option is the Binance replay server's")
        await serve(recording, host, port, speed, Faults(**options), status,
                    rest_port=rest_port)


OKX = OkxVenue()
