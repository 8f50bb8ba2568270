"""Venues: the exchanges riskmon follows, as the composition root sees them (issue 14).

Each venue is a package under ``adapters/`` with one object that
implements :class:`Venue`: it reads its configuration table, loads an account's keys,
builds the live feed, the decoder of its frames and recordings, the trader the executor
sends orders through, and serves a recording over its protocol (the replay server). The
composition root (monitor/app/service.py, monitor/app/cli.py) picks venues from a
:class:`Registry` (adapters/venues.py holds the built-in one) by the configuration; the
engine, the pipeline and the sinks never learn which venue an event came from, and
nothing under ``monitor/`` names one (tests/test_architecture.py checks it).

Configuration (riskmon's choices, README "Venues"):

- ``[venues.NAME]`` is the venue's table; SPEC 6's form, the table written at top
  level, means the same, and both at once is an error.
- ``[accounts.NAME] venue = "..."`` names the account's venue. Left out, it is the one venue
  the configuration has a table for, or the registry's default when it has none; with
  tables for several venues every account must name its own.
- A venue an account uses but the configuration has no table for runs on its defaults.
- A daemon follows every venue its accounts are on, one engine per venue
  (monitor/runtime/daemon.py, :class:`~monitor.runtime.daemon.Lane`); a recording holds one
  venue's feed.
- Where a venue's margin rules differ from riskmon's defaults, :meth:`Venue.margin_rules`
  says how: the engine of the venue's accounts runs on the risk settings it returns
  (:func:`venue_config`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from monitor.core.errors import ConfigError
from monitor.core.events import Event
from monitor.core.execution import Trader
from monitor.core.settings import AccountConfig, Config, RiskConfig
from monitor.runtime.feed import Feed, FeedDecoder, FeedItem


class VenueDecoder(FeedDecoder, Protocol):
    """A feed decoder that also reads the lines of the venue's recordings (SPEC 3.2)."""

    def decode_line(self, line: bytes | str) -> list[Event]: ...


class Venue(Protocol):
    """One exchange. ``settings`` and credentials are the venue's own types: the core hands
    back what the venue gave it and never looks inside."""

    name: str

    def settings(self, table: Mapping[str, Any], path: str) -> Any:
        """The venue's table read and checked (ConfigError naming ``path.KEY``)."""
        ...

    def decoder(self) -> VenueDecoder: ...

    def margin_rules(self, settings: Any, risk: RiskConfig) -> RiskConfig:
        """The risk settings the venue's accounts are judged by: ``risk`` (the
        configuration's) with what the venue's own margin rules fix, so that a level means
        the same on every venue (``risk`` itself where nothing differs)."""
        ...

    def credentials(self, account: AccountConfig) -> Any:
        """The read-only key the feed logs in with (ConfigError naming the missing key,
        never a value)."""
        ...

    def trade_credentials(self, account: AccountConfig) -> Any:
        """The key the executor trades with, kept apart from the feed's."""
        ...

    def feed(self, settings: Any, credentials: Mapping[str, Any],
             deliver: Callable[[FeedItem], None], *, collateral: Collection[str]) -> Feed:
        """The live feed of these accounts (their credentials, by account name)."""
        ...

    def trader(self, settings: Any, account: str, credentials: Any, *,
               timeout_s: float) -> Trader: ...

    async def serve_replay(self, recording: Path, host: str, port: int, speed: float | None,
                           faults: Mapping[str, Any], status: Callable[[dict[str, Any]], None],
                           *, rest_port: int = 0) -> None:
        """Serve a recording over the venue's protocol until cancelled (``riskmon
        replay-server``); ``faults`` are the command line's fault options by name."""
        ...


@dataclass(frozen=True, slots=True)
class Registry:
    """The venues riskmon knows, by name, and the one an unconfigured account is on."""

    venues: Mapping[str, Venue]
    default: str

    def __post_init__(self) -> None:
        if self.default not in self.venues:
            raise ValueError(f"default venue {self.default!r} is not registered")

    def venue(self, name: str, key: str) -> Venue:
        """The venue called ``name`` (ConfigError at ``key`` listing the known ones)."""
        try:
            return self.venues[name]
        except KeyError:
            raise ConfigError(key, f"unknown venue {name!r} (known: "
                              f"{', '.join(sorted(self.venues))})") from None

    def with_venue(self, venue: Venue) -> Registry:
        """This registry and one more venue (how a program or a test adds its own)."""
        return Registry({**self.venues, venue.name: venue}, self.default)


@dataclass(frozen=True, slots=True)
class VenueUse:
    """A venue the configuration uses: its settings and its accounts, in config order."""

    venue: Venue
    settings: Any
    accounts: tuple[str, ...]


def account_venues(config: Config, registry: Registry) -> dict[str, str]:
    """Every configured account's venue name, defaults applied (see the module docstring);
    raises ConfigError for an unknown name or an account that must name one."""
    configured = list(config.venues)
    if len(configured) == 1:
        default: str | None = configured[0]
    elif not configured:
        default = registry.default
    else:
        default = None
    found: dict[str, str] = {}
    for name, account in config.accounts.items():
        venue = account.venue or default
        key = f"accounts.{name}.venue"
        if venue is None:
            raise ConfigError(key, "required: the configuration has tables for several "
                                   f"venues ({', '.join(configured)})")
        registry.venue(venue, key)
        found[name] = venue
    return found


def resolve_venues(config: Config, registry: Registry) -> dict[str, VenueUse]:
    """Every venue the configuration has a table for or an account on, with its settings
    read; raises the first ConfigError (:func:`venue_errors` collects them all)."""
    return _resolve(config, registry, None)


def venue_errors(config: Config, registry: Registry) -> list[ConfigError]:
    """Every error of the venue tables and the accounts' venues (``riskmon check-config``)."""
    errors: list[ConfigError] = []
    _resolve(config, registry, errors)
    return errors


def _resolve(config: Config, registry: Registry,
             errors: list[ConfigError] | None) -> dict[str, VenueUse]:
    """One pass over the venue tables and the accounts: each error raised, or with
    ``errors`` appended and the venue (or the accounts) left out."""

    def failed(error: ConfigError) -> None:
        if errors is None:
            raise error
        errors.append(error)

    settings: dict[str, Any] = {}
    for name, written in config.venues.items():
        try:
            if name not in registry.venues and written.path == name:
                raise ConfigError(name, f"unknown key (not a riskmon table, nor a venue: "
                                        f"{', '.join(sorted(registry.venues))})")
            settings[name] = registry.venue(name, written.path).settings(written.table,
                                                                        written.path)
        except ConfigError as error:
            failed(error)
    accounts: dict[str, str] = {}
    try:
        accounts = account_venues(config, registry)
    except ConfigError as error:
        failed(error)
    names = list(dict.fromkeys([*settings, *accounts.values()]))
    if not names and not config.venues:
        names = [registry.default]
    found: dict[str, VenueUse] = {}
    for name in names:
        venue = registry.venues[name]
        if name not in settings:  # an account's venue without a table: its defaults
            settings[name] = venue.settings({}, f"venues.{name}")
        found[name] = VenueUse(venue, settings[name], tuple(
            account for account, on in accounts.items() if on == name))
    return found


def venue_config(config: Config, use: VenueUse) -> Config:
    """The configuration an engine of ``use``'s venue runs on: that venue's accounts, and
    the risk settings with its margin rules applied (:meth:`Venue.margin_rules`)."""
    return replace(config, accounts={name: config.accounts[name] for name in use.accounts},
                   risk=use.venue.margin_rules(use.settings, config.risk))
