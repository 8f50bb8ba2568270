"""Binance USDⓈ-M futures as a venue (monitor/runtime/venues.py)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from adapters.binance.auth import Credentials, load_credentials, load_trade_credentials
from adapters.binance.config import BinanceConfig, parse_binance
from adapters.binance.decode import BinanceDecoder
from adapters.binance.live import BinanceFeed
from adapters.binance.replay_server import Faults, serve
from monitor.core.errors import ConfigError
from monitor.core.execution import Trader
from monitor.core.settings import AccountConfig, RiskConfig
from monitor.runtime.feed import Feed, FeedItem


class BinanceVenue:
    """Implements :class:`monitor.runtime.venues.Venue` for Binance USDⓈ-M futures."""

    name = "binance"

    def settings(self, table: Mapping[str, Any], path: str) -> BinanceConfig:
        return parse_binance(table, path)

    def decoder(self) -> BinanceDecoder:
        return BinanceDecoder()

    def margin_rules(self, settings: BinanceConfig, risk: RiskConfig) -> RiskConfig:
        """No closing fee: Binance's margin ratio (maintenance margin over margin balance,
        liquidation at 100 %) has none in it, so riskmon's ratio on a Binance account is
        the inverse of Binance's only without it (README "Binance USDⓈ-M")."""
        return replace(risk, closing_fee_rate=0.0)

    def credentials(self, account: AccountConfig) -> Credentials:
        return load_credentials(account)

    def trade_credentials(self, account: AccountConfig) -> Credentials:
        return load_trade_credentials(account)

    def feed(self, settings: BinanceConfig, credentials: Mapping[str, Credentials],
             deliver: Callable[[FeedItem], None], *, collateral: Collection[str]) -> Feed:
        return BinanceFeed(settings, credentials, deliver, collateral=collateral)

    def trader(self, settings: BinanceConfig, account: str, credentials: Credentials, *,
               timeout_s: float) -> Trader:
        # Refused at start-up, before anything runs: a user who turned execution on must
        # not believe a Binance account is protected.
        raise ConfigError(f"accounts.{account}.execute",
                          "stop-loss execution is not available on Binance yet (README "
                          "\"Binance USDⓈ-M\"): leave it off for this account")

    async def serve_replay(self, recording: Path, host: str, port: int, speed: float | None,
                           faults: Mapping[str, Any], status: Callable[[dict[str, Any]], None],
                           *, rest_port: int = 0) -> None:
        await serve(recording, host, port, speed, Faults(**faults), status,
                    rest_port=rest_port)


BINANCE = BinanceVenue()
