"""The configuration's types: what the engine, the runtime and the adapters are configured
with, as frozen dataclasses (SPEC section 6), and the small typed readers a venue's table
is checked with. Reading ``riskmon.toml`` into them is the application's
(monitor/app/config.py); nothing here reads a file.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from monitor.core.alerts import AlertKind, Level
from monitor.core.errors import ConfigError
from monitor.core.events import AccountMode
from monitor.core.instruments import BorrowTier, CollateralTiers, Instrument

Metric = Literal["margin_ratio", "im_coverage", "equity_usd"]
Action = Literal["close_all", "close", "reduce"]
NotifierType = Literal["webhook", "telegram", "slack", "discord", "alertmanager"]
NOTIFIER_TYPES: tuple[NotifierType, ...] = ("webhook", "telegram", "slack", "discord",
                                            "alertmanager")

# Seed 000: "BTC at 90%, USDT at 100%", MATIC 75%, AVAX 80%. A currency not listed counts
# with factor 0 (the seed's PEPE exclusion). The live feed replaces these by the exchange's
# own tiers for every currency held (SPEC 1.4); [collateral] overrides both.
DEFAULT_COLLATERAL: Mapping[str, CollateralTiers] = {
    currency: CollateralTiers.flat(factor)
    for currency, factor in {"USDT": 1.0, "BTC": 0.90, "MATIC": 0.75, "AVAX": 0.80}.items()
}


@dataclass(frozen=True, slots=True)
class RiskConfig:
    """Thresholds and model options (``[risk]``)."""

    warning: float = 1.50
    withdrawal_lock: float = 1.20
    deleverage: float = 1.00
    liquidation: float = 0.85
    hysteresis: float = 0.02
    stale_after_s: float = 10.0
    repeat_interval_s: float = 300.0
    closing_fee_rate: float = 0.0005
    market_order_slippage: float = 0.0
    reduce_only_orders_count: bool = True
    divergence_tolerance: float = 0.05
    execute_triggers: bool = False


@dataclass(frozen=True, slots=True)
class StopLossRule:
    """A user stop-loss rule keyed on an account metric (SPEC section 1.7)."""

    name: str
    metric: Metric
    below: float
    action: Action
    inst_id: str | None = None
    fraction: float | None = None


@dataclass(frozen=True, slots=True)
class AccountConfig:
    """One account (``[accounts.NAME]``). Credentials are named, never stored here."""

    name: str
    api_key_env: str | None = None
    api_secret_env: str | None = None
    passphrase_env: str | None = None
    credentials_file: str | None = None
    # The venue the account is on (monitor/runtime/venues.py); None: the configuration's only
    # venue, or the registry's default when it configures none.
    venue: str | None = None
    stop_loss: tuple[StopLossRule, ...] = ()
    mode: AccountMode | None = None
    # Execution (monitor.core.execution): opt-in per account, and a key that can trade, kept
    # apart from the read-only key the feed uses.
    execute: bool = False
    trade_api_key_env: str | None = None
    trade_api_secret_env: str | None = None
    trade_passphrase_env: str | None = None
    trade_credentials_file: str | None = None

    @property
    def has_trade_key(self) -> bool:
        """Whether a trade key is configured (environment variables or a file)."""
        return self.trade_credentials_file is not None or self.trade_api_key_env is not None


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """``[storage]``. ``checkpoint_interval_s``: how often the daemon's own checkpoint
    connection copies the WAL into the database file (adapters/sqlite_store.py,
    WalCheckpointer; riskmon's choice, README "WAL checkpoints"). ``fault_notice_after_s``:
    how long the daemon's writes may keep failing before every notifier is told that
    alerts are held (README "Storage faults while running"; riskmon's choice)."""

    sqlite_path: str = "riskmon.db"
    retention_days: float = 90.0
    history_interval_s: float = 60.0
    synchronous: str = "FULL"
    checkpoint_interval_s: float = 60.0
    fault_notice_after_s: float = 30.0


@dataclass(frozen=True, slots=True)
class StreamToken:
    token_env: str
    accounts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """``[stream]``: the alert stream and /healthz, /metrics. ``heartbeat_s``: a heartbeat
    after that long without a message; ``queue_size``: alerts a subscriber may fall
    behind before it is cut off (both riskmon's choices; SPEC 6 names neither).

    The limits that keep the port's memory and descriptors bounded whatever clients do
    (README, "Alert stream under abuse"; all riskmon's choices):

    - ``max_connections``: TCP connections open on the port at once, any path; one more
      is answered 503 and closed as soon as it is accepted.
    - ``max_pending``: of those, connections not yet past their opening (the HTTP request,
      the websocket handshake and, on ``/v1/alerts``, the subscribe request), so clients
      that stall there cannot keep subscribers out.
    - ``handshake_timeout_s``: from accepting the connection to the end of the websocket
      handshake (or the HTTP answer); ``subscribe_timeout_s``: from there to the subscribe
      request.
    - ``max_message_bytes``: the largest message a client may send (the subscribe
      request); a larger one closes the connection with 1009.
    - ``send_buffer_bytes``: bytes riskmon buffers for one connection before it waits for
      the client to read; ``send_timeout_s``: a subscriber whose buffer stays that full
      this long is closed (4408 ``slow_subscriber``).
    - ``ping_interval_s``, ``ping_timeout_s``: websocket pings; a client that does not
      answer one in time is closed (1011).
    """

    host: str = "127.0.0.1"
    port: int = 8765
    tokens: tuple[StreamToken, ...] = ()
    heartbeat_s: float = 15.0
    queue_size: int = 1000
    max_connections: int = 256
    max_pending: int = 64
    handshake_timeout_s: float = 5.0
    subscribe_timeout_s: float = 5.0
    max_message_bytes: int = 8192
    send_buffer_bytes: int = 65536
    send_timeout_s: float = 30.0
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0


@dataclass(frozen=True, slots=True)
class QuarantineConfig:
    """``[quarantine]``: how much of the bad input the logs and the database keep (riskmon's
    choices; SPEC 4 asks only that it is quarantined with its reason).

    Every bad input is counted by reason, exactly (``riskmon_quarantined_total``, the
    ``quarantine_counts`` table). Of the inputs themselves, per run: the first
    ``log_first`` get a log line each, then a ``quarantine_summary`` line at most every
    ``log_summary_s`` seconds gives the counts by reason; the first ``store_first`` are
    stored whole (up to 4 KiB each) in the ``quarantine`` table, then one in
    ``store_sample_every`` (0: none); the table keeps at most ``store_max_rows`` rows, the
    newest, across runs.
    """

    log_first: int = 10
    log_summary_s: float = 60.0
    store_first: int = 1000
    store_sample_every: int = 1000
    store_max_rows: int = 10_000


@dataclass(frozen=True, slots=True)
class BoundsConfig:
    """``[bounds]``: when a well-formed input is still implausible (riskmon's choices; issue
    15, "bad input never moves state"). The engine applies them (monitor.core.engine); the
    venue decoders' fixed limits on spelling, magnitude and identifiers are their own
    (adapters/<venue>/decode.py).

    - ``price_band``: a mark or index price more than this factor away from the last
      accepted price of the same instrument (or index), either way, is quarantined; the
      first mark of an instrument is held to the band around its index price when one is
      known. Greater than 1.
    - ``confirm_after``: the market really moved that much when this many out-of-band prices
      in a row agree with each other (each within the band of the one before, no accepted
      price between them): the last of them is accepted and becomes the new reference. The
      same count confirms a jump of the clock (below). 1 switches both checks off.
    - ``max_ahead_s``: an event dated more than this ahead of its own receive time is
      quarantined, and no single event moves the engine clock more than this ahead (a
      larger jump needs ``confirm_after`` events in a row beyond it, as after a gap in a
      recording). The daemon's clock ticks keep the clock moving during silence, so live it
      never needs confirming.
    """

    price_band: float = 2.0
    confirm_after: int = 3
    max_ahead_s: float = 60.0


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """``[health]``: when ``/healthz`` turns 503 (riskmon's choices; SPEC 5 names none).

    ``feed_grace_s``: a feed connection down (or not up yet) that long, or an instrument in
    use whose mark has been stale (``risk.stale_after_s``) that long; ``risk_unknown_grace_s``:
    an account whose risk has been unknown (SPEC 1.5) that long. Wall-clock seconds.
    """

    feed_grace_s: float = 30.0
    risk_unknown_grace_s: float = 60.0


@dataclass(frozen=True, slots=True)
class ExecutionConfig:
    """``[execution]``: how stop-loss triggers are carried out (monitor.core.execution,
    adapters/executor.py) once ``risk.execute_triggers`` is true and an account has
    ``execute = true``. riskmon's choices; SPEC 1.7 only says execution is opt-in.

    - ``dry_run``: go through every step but send nothing; log what would be sent
      (``riskmon run --dry-run`` sets it).
    - ``deleverage_plans``: also carry out ``deleverage_plan`` alerts (off: only
      ``stop_loss`` triggers are executed).
    - ``max_attempts``: orders placed per leg (the first and the retries after a
      rejection or a partial fill) before the leg is given up and escalated.
    - ``request_timeout_s``: an order request without an answer that long is looked up
      by its ``clOrdId``; ``fill_timeout_s``: an accepted order without a final state on
      the ``orders`` channel that long is looked up too (and every ``fill_timeout_s``
      after), up to ``give_up_s`` after it was sent, then escalated.
    - ``max_trigger_age_s``: a trigger older than this (wall time since it was emitted)
      when its turn comes, after a long outage or restart, is not executed: it fails,
      loudly, rather than act on a market that has moved on.
    - ``control_token_env``: the variable holding the token of ``riskmon executor
      pause|resume`` (required when execution is on: no execution without a kill switch).
    - ``queue_size``: triggers and order updates waiting for the executor.
    - ``keep_warm_s``: an account's trade connection idle this long gets a cheap signed
      request (the key's account configuration), so that a trigger's orders never wait
      for a new TCP and TLS connection.
    - ``sync_before_send``: with ``storage.synchronous`` FULL or EXTRA, a trigger's first
      orders wait for its commit's fsync (off: they go once it is committed, while its
      fsync runs; adapters/sinks.py, ``urgent``).
    """

    dry_run: bool = False
    deleverage_plans: bool = False
    max_attempts: int = 3
    request_timeout_s: float = 5.0
    fill_timeout_s: float = 5.0
    give_up_s: float = 60.0
    max_trigger_age_s: float = 60.0
    control_token_env: str = "RISKMON_CONTROL_TOKEN"
    queue_size: int = 1000
    keep_warm_s: float = 15.0
    sync_before_send: bool = False


@dataclass(frozen=True, slots=True)
class NotifierConfig:
    """One notification destination (``[notify.NAME]``; adapters/notify).

    Secrets are named, never stored here: ``secret_env`` (the webhook's HMAC key),
    ``bot_token_env`` (Telegram), ``webhook_url_env`` (Slack and Discord, whose webhook
    URL is the credential), ``bearer_token_env`` and ``basic_auth_password_env``
    (Alertmanager behind an authenticating proxy, or its own ``basic_auth_users``; the
    user name ``basic_auth_user`` is not a secret) are environment variable names, read
    when the daemon starts.
    ``url`` is the destination's base URL (the webhook's full URL). ``rate_per_s`` 0
    means no limit; ``burst`` messages may go at once before the rate applies.
    """

    name: str
    type: NotifierType
    url: str | None = None
    secret_env: str | None = None
    bot_token_env: str | None = None
    chat_id: str | None = None
    webhook_url_env: str | None = None
    bearer_token_env: str | None = None
    basic_auth_user: str | None = None
    basic_auth_password_env: str | None = None
    accounts: tuple[str, ...] | None = None
    kinds: tuple[AlertKind, ...] | None = None
    min_level: Level = "normal"
    rate_per_s: float = 0.0
    burst: int = 1
    timeout_s: float = 10.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    queue_size: int = 1000
    resend_interval_s: float = 60.0
    event_duration_s: float = 300.0


@dataclass(frozen=True, slots=True)
class VenueTable:
    """A venue's table as written: ``[venues.NAME]``, or ``[NAME]`` at top level (SPEC 6's
    venue table); ``path`` is where it was written, so errors name the key the user wrote.

    The core does not read it: the venue does (monitor/runtime/venues.py), when the composition
    root resolves the venues the configuration uses. A top-level table that is neither
    riskmon's nor a known venue's is refused there ("unknown key")."""

    name: str
    path: str
    table: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration."""

    risk: RiskConfig = field(default_factory=RiskConfig)
    collateral: Mapping[str, CollateralTiers] = field(
        default_factory=lambda: dict(DEFAULT_COLLATERAL))
    configured_collateral: frozenset[str] = frozenset()
    interest: Mapping[str, float] = field(default_factory=dict)
    borrow: Mapping[str, tuple[BorrowTier, ...]] = field(default_factory=dict)
    instruments: tuple[Instrument, ...] = ()
    accounts: Mapping[str, AccountConfig] = field(default_factory=dict)
    venues: Mapping[str, VenueTable] = field(default_factory=dict)
    storage: StorageConfig = field(default_factory=StorageConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    quarantine: QuarantineConfig = field(default_factory=QuarantineConfig)
    bounds: BoundsConfig = field(default_factory=BoundsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    notify: Mapping[str, NotifierConfig] = field(default_factory=dict)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)

    def executing_accounts(self) -> tuple[str, ...]:
        """The accounts whose triggers are sent to the exchange (or, in a dry run, would
        be): ``risk.execute_triggers`` and the account's own ``execute``."""
        if not self.risk.execute_triggers:
            return ()
        return tuple(name for name, account in self.accounts.items() if account.execute)


# -- small typed readers (the venues' tables are read with them too) ------------------------


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names this machine (localhost or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def only_keys(table: Mapping[str, Any], path: str, allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{path}.{key}" if path else key, "unknown key")


def read_string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(path, "must be a non-empty string")
    return value


def read_bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, "must be true or false")
    return value


def read_number(value: Any, path: str, low: float | None = None,
                high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(path, "must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(path, "must be finite")
    if low is not None and number < low:
        raise ConfigError(path, f"must be at least {low}")
    if high is not None and number > high:
        raise ConfigError(path, f"must be at most {high}")
    return number


def read_positive(value: Any, path: str) -> float:
    number = read_number(value, path)
    if number <= 0:
        raise ConfigError(path, "must be positive")
    return number
