"""Venues as plug-ins (monitor/runtime/venues.py, adapters/venues.py; issue 14).

How a third venue is added, shown end to end: :class:`PaperVenue` below is a whole venue
in this file (its configuration table, credentials, a websocket feed and a decoder of its
own JSON), registered with ``VENUES.with_venue``. The daemon (monitor.app.service.Monitor)
follows an account on it against a real websockets server on loopback and stores the
alerts in a real SQLite file, and nothing under ``monitor/`` changed for it. README
"Adding an exchange" walks through the same steps.

The configuration rules: ``[venues.NAME]`` and SPEC 6's top-level ``[okx]`` mean the same
table; an account's venue defaults to the configuration's only venue (or the registry's
default); unknown names are errors naming the key.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from adapters.okx.config import OkxConfig
from adapters.sqlite_store import SqliteStore
from adapters.venues import VENUES
from monitor.app.config import parse_config
from monitor.app.service import Monitor, daemon_venues, single_venue
from monitor.core.errors import BadInput, ConfigError
from monitor.core.events import (
    BalanceUpdate,
    CurrencyBalance,
    Event,
    MarkPrice,
    Position,
    PositionSnapshot,
)
from monitor.core.execution import Trader
from monitor.core.settings import AccountConfig, Config, RiskConfig, only_keys, read_string
from monitor.runtime.feed import Feed, FeedItem, Frame, LinkChange, LinkStats
from monitor.runtime.venues import Registry, account_venues, resolve_venues, venue_errors
from tests.builders import BTC_SWAP


def parse(text: str) -> Config:
    return parse_config(tomllib.loads(text))


# -- configuration ---------------------------------------------------------------------


def test_the_spec_okx_table_and_venues_okx_mean_the_same() -> None:
    spec = parse('[okx]\nrest_url = "http://127.0.0.1:9"\n')
    new = parse('[venues.okx]\nrest_url = "http://127.0.0.1:9"\n')

    for config in (spec, new):
        [use] = resolve_venues(config, VENUES).values()
        assert use.venue is VENUES.venues["okx"]
        assert use.settings == OkxConfig(rest_url="http://127.0.0.1:9")


def test_an_error_in_a_venue_table_names_the_key_as_written() -> None:
    for text, key in (("[okx]\nping_after_s = 40\n", "okx.ping_after_s"),
                      ("[venues.okx]\nping_after_s = 40\n", "venues.okx.ping_after_s"),
                      ("[venues.okx]\ncolour = 1\n", "venues.okx.colour")):
        with pytest.raises(ConfigError) as raised:
            resolve_venues(parse(text), VENUES)
        assert raised.value.key == key


def test_one_venue_written_both_ways_is_an_error() -> None:
    with pytest.raises(ConfigError) as raised:
        parse("[okx]\n[venues.okx]\n")
    assert raised.value.key == "okx"
    assert "venues.okx" in raised.value.message


def test_unknown_tables_and_venues_are_errors_naming_them() -> None:
    top = venue_errors(parse("[colateral]\nBTC = 0.9\n"), VENUES)
    assert [(error.key, "unknown key" in error.message) for error in top] == [
        ("colateral", True)]
    nested = venue_errors(parse("[venues.kraken]\n"), VENUES)
    assert [error.key for error in nested] == ["venues.kraken"]
    assert "okx" in nested[0].message  # the known venues are listed
    account = venue_errors(parse('[accounts.main]\nvenue = "kraken"\n'), VENUES)
    assert [error.key for error in account] == ["accounts.main.venue"]


def test_an_account_is_on_the_only_venue_or_the_default_or_names_its_own() -> None:
    registry = VENUES.with_venue(PaperVenue())
    assert account_venues(parse("[accounts.main]\n"), registry) == {"main": "okx"}
    assert account_venues(parse("[venues.paper]\n[accounts.main]\n"), registry) == {
        "main": "paper"}
    both = parse('[venues.paper]\n[venues.okx]\n[accounts.main]\n'
                 '[accounts.desk]\nvenue = "okx"\n')
    with pytest.raises(ConfigError) as raised:
        account_venues(both, registry)
    assert raised.value.key == "accounts.main.venue"
    named = parse('[venues.paper]\n[venues.okx]\n[accounts.main]\nvenue = "paper"\n'
                  '[accounts.desk]\nvenue = "okx"\n')
    assert account_venues(named, registry) == {"main": "paper", "desk": "okx"}
    # A daemon follows both (one engine each); a recording holds one venue's feed.
    assert [use.venue.name for use in daemon_venues(named, registry)] == ["paper", "okx"]
    assert [use.accounts for use in daemon_venues(named, registry)] == [("main",), ("desk",)]
    with pytest.raises(ConfigError, match="more than one venue"):
        single_venue(named, registry)


def test_the_daemon_follows_the_venue_its_accounts_are_on() -> None:
    registry = VENUES.with_venue(PaperVenue())
    # A table no account uses is read (its errors count) but not followed.
    config = parse('[venues.paper]\n[venues.okx]\n[accounts.main]\nvenue = "okx"\n')
    assert single_venue(config, registry).venue.name == "okx"
    assert [use.venue.name for use in daemon_venues(config, registry)] == ["okx"]
    with pytest.raises(ConfigError) as raised:
        daemon_venues(parse("[venues.paper]\n[venues.okx]\n"), registry)
    assert raised.value.key == "venues"
    assert single_venue(parse("[venues.paper]\n"), registry).venue.name == "paper"


def test_a_venue_without_a_table_runs_on_its_defaults() -> None:
    [use] = resolve_venues(parse("[accounts.main]\n"), VENUES).values()
    assert use.settings == OkxConfig()
    assert use.accounts == ("main",)


def test_a_registry_refuses_an_unregistered_default() -> None:
    with pytest.raises(ValueError, match="not registered"):
        Registry({}, default="okx")


# -- a third venue, added in a test ------------------------------------------------------


class PaperVenue:
    """A venue of its own: one websocket per account at ``[venues.paper] url``, pushing
    JSON objects ``{"t": "mark" | "balance" | "positions", ...}``."""

    name = "paper"

    def settings(self, table: Mapping[str, Any], path: str) -> str:
        only_keys(table, path, {"url"})
        return read_string(table.get("url", "ws://127.0.0.1:9"), f"{path}.url")

    def decoder(self) -> PaperDecoder:
        return PaperDecoder()

    def margin_rules(self, settings: str, risk: RiskConfig) -> RiskConfig:
        return risk

    def credentials(self, account: AccountConfig) -> str:
        return account.name

    def trade_credentials(self, account: AccountConfig) -> str:
        return account.name

    def feed(self, settings: str, credentials: Mapping[str, str],
             deliver: Callable[[FeedItem], None], *, collateral: Collection[str]) -> Feed:
        return PaperFeed(settings, list(credentials), deliver)

    def trader(self, settings: str, account: str, credentials: str, *,
               timeout_s: float) -> Trader:
        raise ConfigError(f"accounts.{account}.execute", "the paper venue does not trade")

    async def serve_replay(self, recording: Path, host: str, port: int, speed: float | None,
                           faults: Mapping[str, Any], status: Callable[[dict[str, Any]], None],
                           *, rest_port: int = 0) -> None:
        raise ConfigError("--venue", "the paper venue has no replay server")


class PaperDecoder:
    def decode_message(self, text: str, account: str | None, recv_ms: Any) -> list[Event]:
        try:
            message = orjson.loads(text)
            kind, ts = message["t"], int(message["ts"])
            if kind == "mark":
                return [MarkPrice(message["inst"], float(message["px"]), ts, recv_ms)]
            if account is None:
                raise BadInput(f"{kind} without an account")
            if kind == "balance":
                return [BalanceUpdate(account, (CurrencyBalance("USDT", float(message["cash"]),
                                                                None, None),),
                                      True, None, ts, recv_ms)]
            if kind == "positions":
                rows = tuple(Position(row["inst"], float(row["qty"]), float(row["avg"]), 10.0)
                             for row in message["rows"])
                return [PositionSnapshot(account, rows, ts, recv_ms)]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise BadInput(f"not a paper frame: {e}") from e
        raise BadInput(f"unknown paper frame {kind!r}")

    def decode_rest(self, path: str, body: Any, account: str | None,
                    recv_ms: Any) -> list[Event]:
        raise BadInput("the paper venue has no REST")

    def decode_line(self, line: bytes | str) -> list[Event]:
        record = orjson.loads(line)
        return self.decode_message(orjson.dumps(record["frame"]).decode(),
                                   record.get("account"), record["recv_ts"])


class PaperFeed:
    def __init__(self, url: str, accounts: list[str],
                 deliver: Callable[[FeedItem], None]) -> None:
        self.url, self.accounts, self.deliver = url, accounts, deliver

    def link_stats(self) -> Mapping[str, LinkStats]:
        return {f"private:{account}": LinkStats() for account in self.accounts}

    def want(self, instruments: Collection[str], currencies: Collection[str],
             borrowed: Collection[str]) -> None:
        return None

    async def run(self) -> None:
        async with asyncio.TaskGroup() as links:
            for account in self.accounts:
                links.create_task(self._follow(account))

    async def _follow(self, account: str) -> None:
        async with connect(f"{self.url}/{account}") as connection:
            self.deliver(LinkChange(now_ms(), account, True, "connected"))
            async for message in connection:
                assert isinstance(message, str)
                self.deliver(Frame(now_ms(), account, message))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_a_daemon_follows_an_account_on_a_venue_added_by_a_test(tmp_path: Path) -> None:
    # 100 USDT, long 10 BTC-USDT-SWAP at 40,000: at 39,300 the ratio is 30 / (15.72 +
    # 1.965), normal; at 39,230 it is 23 / (15.692 + 1.9615), below the warning level.
    t0 = now_ms()
    pushes = [
        {"t": "balance", "cash": 100, "ts": t0},
        {"t": "positions", "rows": [{"inst": BTC_SWAP.inst_id, "qty": 10, "avg": 40_000}],
         "ts": t0},
        {"t": "mark", "inst": BTC_SWAP.inst_id, "px": 39_300, "ts": t0 + 1},
        {"t": "mark", "inst": BTC_SWAP.inst_id, "px": 39_230, "ts": t0 + 2},
    ]
    paths: list[str] = []

    async def handler(connection: ServerConnection) -> None:
        paths.append(connection.request.path if connection.request else "")
        for push in pushes:
            await connection.send(orjson.dumps(push).decode())
        await connection.wait_closed()

    database = tmp_path / "riskmon.db"
    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        config = parse_config({
            "venues": {"paper": {"url": f"ws://127.0.0.1:{port}"}},
            "accounts": {"main": {}},
            "instruments": [{
                "inst_id": BTC_SWAP.inst_id, "ct_type": "linear", "ct_val": 0.01,
                "ct_mult": 1, "ct_val_ccy": "BTC", "settle_ccy": "USDT", "max_leverage": 100,
                "tiers": [{"max_contracts": tier.max_size, "mmr": tier.maintenance_rate}
                          for tier in BTC_SWAP.tiers]}],
            "storage": {"sqlite_path": str(database)},
        })
        monitor = await Monitor.open(config, serve_http=False,
                                     venues=VENUES.with_venue(PaperVenue()))
        stop = asyncio.Event()
        runner = asyncio.create_task(monitor.run(stop))
        subscription = monitor.subscribe(kinds=["level_changed"])
        async with asyncio.timeout(20):
            alert = await anext(aiter(subscription))
        stop.set()
        await asyncio.wait_for(runner, 20)

    assert paths == ["/main"]  # the venue's own table reached its feed
    store = await SqliteStore.open(database, read_only=True)
    try:
        [stored] = await store.alerts(kind="level_changed")
    finally:
        await store.close()
    assert stored.id == alert.id
    assert (stored.account, stored.from_level, stored.level) == ("main", "normal", "warning")
    assert stored.mark == 39_230
    assert stored.margin_ratio == pytest.approx(23 / (15.692 + 1.9615))
