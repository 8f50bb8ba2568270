"""Configuration: TOML in, validated frozen dataclasses out (SPEC section 6; the types
are monitor/core/settings.py's).

Every key is optional except what a live feed needs. Unknown keys are errors, so a typo
cannot silently leave a default in force; every error names the offending key.
"""

from __future__ import annotations

import itertools
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from monitor.core.alerts import ALERT_KINDS, LEVELS, AlertKind, level_named
from monitor.core.errors import ConfigError
from monitor.core.events import AccountMode
from monitor.core.instruments import (
    BorrowTier,
    CollateralTier,
    CollateralTiers,
    ContractType,
    Instrument,
    Tier,
    validate_borrow_tiers,
    validate_collateral,
    validate_tiers,
)
from monitor.core.settings import (
    DEFAULT_COLLATERAL,
    NOTIFIER_TYPES,
    AccountConfig,
    Action,
    BoundsConfig,
    Config,
    ExecutionConfig,
    HealthConfig,
    Metric,
    NotifierConfig,
    NotifierType,
    QuarantineConfig,
    RiskConfig,
    StopLossRule,
    StorageConfig,
    StreamConfig,
    StreamToken,
    VenueTable,
    is_loopback_host,
    only_keys,
    read_bool,
    read_number,
    read_positive,
    read_string,
)

_ACCOUNT_MODES: tuple[AccountMode, ...] = ("multi_currency", "single_currency", "portfolio")


# Per type: the default base URL and rate limit (messages per second, burst). Telegram
# asks bots to stay near one message per second in a chat (Bot FAQ); Slack's incoming
# webhooks allow one per second with short bursts; Discord's webhooks about 30 a minute.
NOTIFIER_DEFAULTS: Mapping[NotifierType, tuple[str | None, float, int]] = {
    "webhook": (None, 0.0, 1),
    "telegram": ("https://api.telegram.org", 1.0, 3),
    "slack": (None, 1.0, 3),
    "discord": (None, 0.5, 5),
    "alertmanager": ("http://127.0.0.1:9093", 0.0, 1),
}
_NOTIFIER_COMMON = {"type", "accounts", "kinds", "min_level", "rate_per_s", "burst",
                    "timeout_s", "backoff_initial_s", "backoff_max_s", "queue_size"}
_NOTIFIER_KEYS: Mapping[NotifierType, set[str]] = {
    "webhook": {"url", "secret_env"},
    "telegram": {"url", "bot_token_env", "chat_id"},
    "slack": {"webhook_url_env"},
    "discord": {"webhook_url_env"},
    "alertmanager": {"url", "resend_interval_s", "event_duration_s", "bearer_token_env",
                     "basic_auth_user", "basic_auth_password_env"},
}
_NOTIFIER_REQUIRED: Mapping[NotifierType, tuple[str, ...]] = {
    "webhook": ("url",),
    "telegram": ("bot_token_env", "chat_id"),
    "slack": ("webhook_url_env",),
    "discord": ("webhook_url_env",),
    "alertmanager": (),
}
_NOTIFIER_NAME = re.compile(r"[A-Za-z0-9_-]+")


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML configuration file."""
    return parse_config(read_config(path))


def read_config(path: str | Path) -> dict[str, Any]:
    """Read a TOML configuration file, unvalidated (ConfigError when it is unreadable)."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as e:
        raise ConfigError("<file>", f"configuration file not found: {path}") from e
    except OSError as e:
        raise ConfigError("<file>", f"cannot read {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError("<file>", f"{path} is not UTF-8 text (TOML must be)") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("<file>", f"not valid TOML: {e}") from e


def parse_config(raw: Mapping[str, Any]) -> Config:
    """Validate a parsed TOML document; the first error raises."""
    return _parse(raw, _Checker(collect=False))


def check_config(raw: Mapping[str, Any]) -> list[ConfigError]:
    """Every error of a parsed TOML document (``riskmon check-config``), in document order.

    Each table (each instrument, account and rule, each ``[collateral]`` and ``[borrow]``
    entry, each top-level key) is checked on its own, so one error does not hide the
    others; within one table the first error is reported.
    """
    checker = _Checker(collect=True)
    _parse(raw, checker)
    return checker.errors


_T = TypeVar("_T")


class _Checker:
    """Runs a parse step: raises its ConfigError, or (``collect``) records it and goes on
    with ``fallback``."""

    def __init__(self, *, collect: bool) -> None:
        self.collect = collect
        self.errors: list[ConfigError] = []

    def attempt(self, fallback: _T, parse: Callable[..., _T], *args: Any) -> _T:
        """``parse(*args)``, or ``fallback`` once its error is recorded."""
        try:
            return parse(*args)
        except ConfigError as error:
            if not self.collect:
                raise
            self.errors.append(error)
            return fallback


_TOP_LEVEL = frozenset({"risk", "collateral", "interest", "borrow", "instruments", "accounts",
                        "venues", "storage", "stream", "quarantine", "bounds", "health",
                        "notify", "execution"})
_NO_TABLE: Mapping[str, Any] = {}
_NO_ITEMS: list[Any] = []


def _parse(raw: Mapping[str, Any], check: _Checker) -> Config:
    for key, value in raw.items():
        if not isinstance(value, dict):  # a table may be a venue's, written at top level
            check.attempt(None, only_keys, {key: None}, "", set(_TOP_LEVEL))
    risk = check.attempt(RiskConfig(), _parse_risk, check.attempt(_NO_TABLE, _table, raw, "risk"))
    collateral = dict(DEFAULT_COLLATERAL)
    configured = check.attempt(_NO_TABLE, _table, raw, "collateral")
    for currency, value in configured.items():
        tiers = check.attempt(None, _parse_collateral, value, f"collateral.{currency}")
        if tiers is not None:
            collateral[currency] = tiers
    borrow: dict[str, tuple[BorrowTier, ...]] = {}
    for currency, body in check.attempt(_NO_TABLE, _table, raw, "borrow").items():
        path = f"borrow.{currency}"
        table = check.attempt(None, _as_table, body, path)
        found = None if table is None else check.attempt(None, _parse_borrow, table, path)
        if found is not None:
            borrow[currency] = found
    interest: dict[str, float] = {}
    for currency, rate in check.attempt(_NO_TABLE, _table, raw, "interest").items():
        value = check.attempt(None, read_number, rate, f"interest.{currency}", 0.0)
        if value is not None:
            interest[currency] = value
    instruments: list[Instrument] = []
    seen: set[str] = set()
    for index, item in enumerate(check.attempt(_NO_ITEMS, _array, raw, "instruments")):
        instrument = check.attempt(None, _parse_instrument, item, f"instruments[{index}]")
        if instrument is None:
            continue
        if instrument.inst_id in seen:
            check.attempt(None, _fail, f"instruments[{index}].inst_id", "duplicate instrument")
            continue
        seen.add(instrument.inst_id)
        instruments.append(instrument)
    accounts: dict[str, AccountConfig] = {}
    for name, body in check.attempt(_NO_TABLE, _table, raw, "accounts").items():
        table = check.attempt(None, _as_table, body, f"accounts.{name}")
        account = None if table is None else check.attempt(None, _parse_account, name, table,
                                                           check)
        if account is not None:
            accounts[name] = account
    return Config(
        risk=risk,
        collateral=collateral,
        configured_collateral=frozenset(configured),
        interest=interest,
        borrow=borrow,
        instruments=tuple(instruments),
        accounts=accounts,
        venues=_venue_tables(raw, check),
        storage=check.attempt(StorageConfig(), _parse_storage,
                              check.attempt(_NO_TABLE, _table, raw, "storage")),
        stream=check.attempt(StreamConfig(), _parse_stream,
                             check.attempt(_NO_TABLE, _table, raw, "stream")),
        quarantine=check.attempt(QuarantineConfig(), _parse_quarantine,
                                 check.attempt(_NO_TABLE, _table, raw, "quarantine")),
        bounds=check.attempt(BoundsConfig(), _parse_bounds,
                             check.attempt(_NO_TABLE, _table, raw, "bounds")),
        health=check.attempt(HealthConfig(), _parse_health,
                             check.attempt(_NO_TABLE, _table, raw, "health")),
        notify=_parse_notifiers(raw, check),
        execution=check.attempt(ExecutionConfig(), _parse_execution,
                                check.attempt(_NO_TABLE, _table, raw, "execution")),
    )


def _fail(key: str, message: str) -> None:
    raise ConfigError(key, message)


def _parse_risk(table: Mapping[str, Any]) -> RiskConfig:
    defaults = RiskConfig()
    values: dict[str, Any] = {}
    for key, value in table.items():
        path = f"risk.{key}"
        if key == "liquidation_fee_rate":
            raise ConfigError(path, "replaced by risk.closing_fee_rate (the fee of closing "
                                    "at the mark, in the margin ratio's denominator: SPEC 1.2)")
        if key in ("reduce_only_orders_count", "execute_triggers"):
            values[key] = read_bool(value, path)
        elif key in RiskConfig.__dataclass_fields__:
            values[key] = read_number(value, path, low=0.0)
        else:
            raise ConfigError(path, "unknown key")
    risk = RiskConfig(**{**{k: getattr(defaults, k) for k in RiskConfig.__dataclass_fields__},
                         **values})
    ladder = [("warning", risk.warning), ("withdrawal_lock", risk.withdrawal_lock),
              ("deleverage", risk.deleverage), ("liquidation", risk.liquidation)]
    for (upper_name, upper), (lower_name, lower) in itertools.pairwise(ladder):
        if not upper > lower:
            raise ConfigError(f"risk.{lower_name}",
                              f"must be below risk.{upper_name} ({lower} >= {upper})")
    if risk.liquidation <= 0:
        raise ConfigError("risk.liquidation", "must be positive")
    if risk.stale_after_s <= 0:
        raise ConfigError("risk.stale_after_s", "must be positive")
    if risk.repeat_interval_s <= 0:
        raise ConfigError("risk.repeat_interval_s", "must be positive")
    if risk.market_order_slippage >= 1:
        raise ConfigError("risk.market_order_slippage", "must be below 1")
    if risk.closing_fee_rate >= 1:
        raise ConfigError("risk.closing_fee_rate", "must be below 1")
    return risk


def _parse_collateral(value: Any, path: str) -> CollateralTiers:
    """A flat factor (a number) or bands ``[{max_amount, factor}, ...]`` (SPEC 6)."""
    if not isinstance(value, list):
        return CollateralTiers.flat(read_number(value, path, low=0.0, high=1.0))
    bands = []
    for index, raw in enumerate(value):
        band_path = f"{path}[{index}]"
        band = _as_table(raw, band_path)
        only_keys(band, band_path, {"max_amount", "factor"})
        bands.append(CollateralTier(
            max_amount=read_number(_required(band, "max_amount", band_path),
                               f"{band_path}.max_amount", low=0.0),
            factor=read_number(_required(band, "factor", band_path), f"{band_path}.factor",
                           low=0.0, high=1.0),
        ))
    problem = validate_collateral(tuple(bands))
    if problem:
        raise ConfigError(path, problem)
    return CollateralTiers(tuple(bands))


def _parse_borrow(table: Mapping[str, Any], path: str) -> tuple[BorrowTier, ...]:
    """``[borrow.CCY] tiers = [{max_amount, mmr, imr}, ...]`` (SPEC 1.4, 6)."""
    only_keys(table, path, {"tiers"})
    tiers = []
    for index, raw in enumerate(_as_array(_required(table, "tiers", path), f"{path}.tiers")):
        tier_path = f"{path}.tiers[{index}]"
        tier = _as_table(raw, tier_path)
        only_keys(tier, tier_path, {"max_amount", "mmr", "imr"})
        tiers.append(BorrowTier(
            max_amount=read_number(_required(tier, "max_amount", tier_path),
                               f"{tier_path}.max_amount", low=0.0),
            maintenance_rate=read_number(_required(tier, "mmr", tier_path), f"{tier_path}.mmr",
                                     low=0.0, high=1.0),
            initial_rate=read_number(_required(tier, "imr", tier_path), f"{tier_path}.imr",
                                 low=0.0, high=1.0),
        ))
    problem = validate_borrow_tiers(tuple(tiers))
    if problem:
        raise ConfigError(f"{path}.tiers", problem)
    return tuple(tiers)


def _parse_instrument(raw: Any, path: str) -> Instrument:
    table = _as_table(raw, path)
    only_keys(table, path, {"inst_id", "ct_type", "ct_val", "ct_mult", "ct_val_ccy", "settle_ccy",
                        "max_leverage", "tiers", "lot_size"})
    contract_type = read_string(_required(table, "ct_type", path), f"{path}.ct_type")
    if contract_type not in ("linear", "inverse"):
        raise ConfigError(f"{path}.ct_type", "must be 'linear' or 'inverse'")
    tiers = []
    for index, tier_raw in enumerate(_as_array(_required(table, "tiers", path), f"{path}.tiers")):
        tier_path = f"{path}.tiers[{index}]"
        tier_table = _as_table(tier_raw, tier_path)
        only_keys(tier_table, tier_path, {"max_contracts", "mmr"})
        tiers.append(Tier(
            max_size=read_number(_required(tier_table, "max_contracts", tier_path),
                             f"{tier_path}.max_contracts", low=0.0),
            maintenance_rate=read_number(_required(tier_table, "mmr", tier_path),
                                     f"{tier_path}.mmr", low=0.0, high=1.0),
        ))
    problem = validate_tiers(tuple(tiers))
    if problem:
        raise ConfigError(f"{path}.tiers", problem)
    max_leverage = table.get("max_leverage")
    lot_size = table.get("lot_size")
    return Instrument(
        inst_id=read_string(_required(table, "inst_id", path), f"{path}.inst_id"),
        contract_type=cast(ContractType, contract_type),
        contract_value=read_positive(_required(table, "ct_val", path), f"{path}.ct_val"),
        contract_multiplier=read_positive(table.get("ct_mult", 1), f"{path}.ct_mult"),
        contract_value_currency=read_string(_required(table, "ct_val_ccy", path),
                                        f"{path}.ct_val_ccy"),
        settle_currency=read_string(_required(table, "settle_ccy", path), f"{path}.settle_ccy"),
        tiers=tuple(tiers),
        max_leverage=None if max_leverage is None
        else read_positive(max_leverage, f"{path}.max_leverage"),
        lot_size=None if lot_size is None else read_positive(lot_size, f"{path}.lot_size"),
    )


def _parse_account(name: str, table: Mapping[str, Any],
                   check: _Checker | None = None) -> AccountConfig:
    check = check or _Checker(collect=False)
    path = f"accounts.{name}"
    only_keys(table, path, {"api_key_env", "api_secret_env", "passphrase_env",
                            "credentials_file", "venue", "stop_loss", "mode", "execute",
                            *_TRADE_KEYS})
    mode = table.get("mode")
    if mode is not None and mode not in _ACCOUNT_MODES:
        raise ConfigError(f"{path}.mode", "must be 'multi_currency', 'single_currency' or "
                                          "'portfolio'")
    rules = []
    names: set[str] = set()
    for index, rule_raw in enumerate(_array(table, "stop_loss", path)):
        rule_path = f"{path}.stop_loss[{index}]"
        rule = check.attempt(None, _parse_rule, rule_raw, rule_path)
        if rule is None:
            continue
        if rule.name in names:
            check.attempt(None, _fail, f"{rule_path}.name", "duplicate rule name")
            continue
        names.add(rule.name)
        rules.append(rule)

    def optional_string(key: str) -> str | None:
        value = table.get(key)
        return None if value is None else read_string(value, f"{path}.{key}")

    account = AccountConfig(
        name=name,
        api_key_env=optional_string("api_key_env"),
        api_secret_env=optional_string("api_secret_env"),
        passphrase_env=optional_string("passphrase_env"),
        credentials_file=optional_string("credentials_file"),
        venue=optional_string("venue"),
        stop_loss=tuple(rules),
        mode=cast(AccountMode | None, mode),
        execute=read_bool(table.get("execute", False), f"{path}.execute"),
        **{key: optional_string(key) for key in _TRADE_KEYS},
    )
    _check_trade_key(account, path)
    return account


_TRADE_KEYS: Final = ("trade_api_key_env", "trade_api_secret_env", "trade_passphrase_env",
                      "trade_credentials_file")


def _check_trade_key(account: AccountConfig, path: str) -> None:
    """An executing account names a trade key of its own: its variables or a file, none
    shared with the read-only key the feed logs in with. A key and its secret go
    together; whether a passphrase is needed is the venue's to say when it loads the key
    (some venues' keys have one, others' do not)."""
    variables = (account.trade_api_key_env, account.trade_api_secret_env,
                 account.trade_passphrase_env)
    if account.trade_credentials_file is not None and any(variables):
        raise ConfigError(f"{path}.trade_credentials_file",
                          "give either trade_credentials_file or the trade_*_env variables")
    if any(variables) and not all(variables[:2]):
        missing = next(key for key, value in zip(_TRADE_KEYS, variables[:2], strict=False)
                       if value is None)
        raise ConfigError(f"{path}.{missing}", "required with the other trade_*_env keys")
    if account.execute and not account.has_trade_key:
        raise ConfigError(f"{path}.execute", "needs a trade key: trade_api_key_env and "
                          "trade_api_secret_env (and trade_passphrase_env where the "
                          "venue's keys have one), or trade_credentials_file, separate "
                          "from the read-only key")
    read = {account.api_key_env, account.api_secret_env, account.passphrase_env} - {None}
    shared = read & set(variables)
    if shared or (account.trade_credentials_file is not None
                  and account.trade_credentials_file == account.credentials_file):
        raise ConfigError(f"{path}.trade_api_key_env" if shared
                          else f"{path}.trade_credentials_file",
                          "the trade key must be separate from the read-only key")


def _parse_rule(raw: Any, path: str) -> StopLossRule:
    table = _as_table(raw, path)
    only_keys(table, path, {"name", "metric", "below", "action", "inst_id", "fraction"})
    metric = read_string(_required(table, "metric", path), f"{path}.metric")
    if metric not in ("margin_ratio", "im_coverage", "equity_usd"):
        raise ConfigError(f"{path}.metric",
                          "must be 'margin_ratio', 'im_coverage' or 'equity_usd'")
    action = read_string(_required(table, "action", path), f"{path}.action")
    if action not in ("close_all", "close", "reduce"):
        raise ConfigError(f"{path}.action", "must be 'close_all', 'close' or 'reduce'")
    inst_id = table.get("inst_id")
    fraction = table.get("fraction")
    if action == "close" and inst_id is None:
        raise ConfigError(f"{path}.inst_id", "required when action is 'close'")
    if action == "reduce" and fraction is None:
        raise ConfigError(f"{path}.fraction", "required when action is 'reduce'")
    if fraction is not None:
        fraction = read_number(fraction, f"{path}.fraction", low=0.0, high=1.0)
        if fraction <= 0:
            raise ConfigError(f"{path}.fraction", "must be above 0")
    return StopLossRule(
        name=read_string(_required(table, "name", path), f"{path}.name"),
        metric=cast(Metric, metric),
        below=read_number(_required(table, "below", path), f"{path}.below"),
        action=cast(Action, action),
        inst_id=None if inst_id is None else read_string(inst_id, f"{path}.inst_id"),
        fraction=None if fraction is None else float(fraction),
    )


def _parse_storage(table: Mapping[str, Any]) -> StorageConfig:
    only_keys(table, "storage", {"sqlite_path", "retention_days", "history_interval_s",
                             "synchronous", "checkpoint_interval_s", "fault_notice_after_s"})
    defaults = StorageConfig()
    synchronous = read_string(table.get("synchronous", defaults.synchronous),
                          "storage.synchronous").upper()
    if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ConfigError("storage.synchronous", "must be 'OFF', 'NORMAL', 'FULL' or 'EXTRA'")
    return StorageConfig(
        sqlite_path=read_string(table.get("sqlite_path", defaults.sqlite_path),
                            "storage.sqlite_path"),
        retention_days=read_positive(table.get("retention_days", defaults.retention_days),
                                 "storage.retention_days"),
        history_interval_s=read_positive(table.get("history_interval_s",
                                               defaults.history_interval_s),
                                     "storage.history_interval_s"),
        synchronous=synchronous,
        checkpoint_interval_s=read_positive(table.get("checkpoint_interval_s",
                                                  defaults.checkpoint_interval_s),
                                        "storage.checkpoint_interval_s"),
        fault_notice_after_s=read_positive(table.get("fault_notice_after_s",
                                                 defaults.fault_notice_after_s),
                                           "storage.fault_notice_after_s"),
    )


def _parse_stream(table: Mapping[str, Any]) -> StreamConfig:
    only_keys(table, "stream", set(StreamConfig.__dataclass_fields__))
    tokens = []
    for index, raw in enumerate(_array(table, "tokens", "stream")):
        path = f"stream.tokens[{index}]"
        token_table = _as_table(raw, path)
        only_keys(token_table, path, {"token_env", "accounts"})
        accounts = _as_array(_required(token_table, "accounts", path), f"{path}.accounts")
        tokens.append(StreamToken(
            token_env=read_string(_required(token_table, "token_env", path), f"{path}.token_env"),
            accounts=tuple(read_string(a, f"{path}.accounts") for a in accounts),
        ))
    defaults = StreamConfig()
    port = table.get("port", defaults.port)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigError("stream.port", "must be an integer in [0, 65535]")
    sizes: dict[str, int] = {}
    for key in ("queue_size", "max_connections", "max_pending", "max_message_bytes",
                "send_buffer_bytes"):
        value = table.get(key, getattr(defaults, key))
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"stream.{key}", "must be a positive integer")
        sizes[key] = value
    if sizes["max_pending"] > sizes["max_connections"]:
        raise ConfigError("stream.max_pending", "must not exceed stream.max_connections")
    if sizes["max_message_bytes"] < 256:
        raise ConfigError("stream.max_message_bytes",
                          "must be at least 256 (a subscribe request needs room)")
    times = {
        key: read_positive(table.get(key, getattr(defaults, key)), f"stream.{key}")
        for key in ("heartbeat_s", "handshake_timeout_s", "subscribe_timeout_s",
                    "send_timeout_s", "ping_interval_s", "ping_timeout_s")
    }
    return StreamConfig(
        host=read_string(table.get("host", defaults.host), "stream.host"), port=port,
        tokens=tuple(tokens), heartbeat_s=times["heartbeat_s"], queue_size=sizes["queue_size"],
        max_connections=sizes["max_connections"], max_pending=sizes["max_pending"],
        handshake_timeout_s=times["handshake_timeout_s"],
        subscribe_timeout_s=times["subscribe_timeout_s"],
        max_message_bytes=sizes["max_message_bytes"],
        send_buffer_bytes=sizes["send_buffer_bytes"], send_timeout_s=times["send_timeout_s"],
        ping_interval_s=times["ping_interval_s"], ping_timeout_s=times["ping_timeout_s"])


def _parse_quarantine(table: Mapping[str, Any]) -> QuarantineConfig:
    only_keys(table, "quarantine", set(QuarantineConfig.__dataclass_fields__))
    defaults = QuarantineConfig()
    counts = {
        key: _count(table.get(key, getattr(defaults, key)), f"quarantine.{key}")
        for key in ("log_first", "store_first", "store_sample_every", "store_max_rows")
    }
    if counts["store_max_rows"] < 1:
        raise ConfigError("quarantine.store_max_rows", "must be a positive integer")
    return QuarantineConfig(
        log_summary_s=read_positive(table.get("log_summary_s", defaults.log_summary_s),
                                "quarantine.log_summary_s"),
        **counts,
    )


def _parse_execution(table: Mapping[str, Any]) -> ExecutionConfig:
    only_keys(table, "execution", set(ExecutionConfig.__dataclass_fields__))
    defaults = ExecutionConfig()
    values: dict[str, Any] = {}
    for key in ExecutionConfig.__dataclass_fields__:
        value = table.get(key, getattr(defaults, key))
        path = f"execution.{key}"
        if key in ("dry_run", "deleverage_plans", "sync_before_send"):
            values[key] = read_bool(value, path)
        elif key in ("max_attempts", "queue_size"):
            if _count(value, path) < 1:
                raise ConfigError(path, "must be a positive integer")
            values[key] = value
        elif key == "control_token_env":
            values[key] = read_string(value, path)
        else:
            values[key] = read_positive(value, path)
    return ExecutionConfig(**values)


def _parse_bounds(table: Mapping[str, Any]) -> BoundsConfig:
    only_keys(table, "bounds", set(BoundsConfig.__dataclass_fields__))
    defaults = BoundsConfig()
    band = read_number(table.get("price_band", defaults.price_band), "bounds.price_band")
    if band <= 1.0:
        raise ConfigError("bounds.price_band", "must be greater than 1")
    confirm = _count(table.get("confirm_after", defaults.confirm_after), "bounds.confirm_after")
    if confirm < 1:
        raise ConfigError("bounds.confirm_after", "must be a positive integer")
    return BoundsConfig(
        price_band=band,
        confirm_after=confirm,
        max_ahead_s=read_positive(table.get("max_ahead_s", defaults.max_ahead_s),
                              "bounds.max_ahead_s"),
    )


def _parse_health(table: Mapping[str, Any]) -> HealthConfig:
    only_keys(table, "health", set(HealthConfig.__dataclass_fields__))
    defaults = HealthConfig()
    return HealthConfig(**{
        key: read_positive(table.get(key, getattr(defaults, key)), f"health.{key}")
        for key in HealthConfig.__dataclass_fields__
    })


def _venue_tables(raw: Mapping[str, Any], check: _Checker) -> dict[str, VenueTable]:
    """``[venues.NAME]`` tables, and the top-level tables riskmon does not know (each may
    be a venue's, as in SPEC 6); one venue written both ways is an error."""
    found: dict[str, VenueTable] = {}
    for name, body in check.attempt(_NO_TABLE, _table, raw, "venues").items():
        table = check.attempt(None, _as_table, body, f"venues.{name}")
        if table is not None:
            found[name] = VenueTable(name, f"venues.{name}", table)
    for name, body in raw.items():
        if name in _TOP_LEVEL or not isinstance(body, dict):
            continue
        if name in found:
            check.attempt(None, _fail, name, f"given twice: as [{name}] and as [venues.{name}]"
                                             f" (keep [venues.{name}])")
            continue
        found[name] = VenueTable(name, name, body)
    return found


def _parse_notifiers(raw: Mapping[str, Any], check: _Checker) -> dict[str, NotifierConfig]:
    notifiers: dict[str, NotifierConfig] = {}
    for name, body in check.attempt(_NO_TABLE, _table, raw, "notify").items():
        table = check.attempt(None, _as_table, body, f"notify.{name}")
        notifier = None if table is None else check.attempt(None, _parse_notifier, name, table)
        if notifier is not None:
            notifiers[name] = notifier
    return notifiers


def _parse_notifier(name: str, table: Mapping[str, Any]) -> NotifierConfig:
    """``[notify.NAME]``: one destination; the keys allowed depend on its ``type``."""
    path = f"notify.{name}"
    if not _NOTIFIER_NAME.fullmatch(name):
        raise ConfigError(path, "a notifier name may hold only letters, digits, _ and -")
    kind = read_string(_required(table, "type", path), f"{path}.type")
    if kind not in NOTIFIER_TYPES:
        raise ConfigError(f"{path}.type", f"must be one of {', '.join(NOTIFIER_TYPES)}")
    notifier_type: NotifierType = kind
    allowed = _NOTIFIER_COMMON | _NOTIFIER_KEYS[notifier_type]
    for key in table:
        if key not in allowed:
            other = [t for t in NOTIFIER_TYPES if key in _NOTIFIER_KEYS[t]]
            raise ConfigError(f"{path}.{key}", f"not a key of type {kind!r}" if other
                              else "unknown key")
    for key in _NOTIFIER_REQUIRED[notifier_type]:
        _required(table, key, path)
    default_url, default_rate, default_burst = NOTIFIER_DEFAULTS[notifier_type]

    def optional_string(key: str) -> str | None:
        value = table.get(key)
        return None if value is None else read_string(value, f"{path}.{key}")

    url = optional_string("url") or default_url
    bearer = optional_string("bearer_token_env")
    basic_user = optional_string("basic_auth_user")
    basic_password = optional_string("basic_auth_password_env")
    if bearer is not None and (basic_user is not None or basic_password is not None):
        raise ConfigError(f"{path}.bearer_token_env",
                          "give either a bearer token or basic auth, not both")
    if (basic_user is None) != (basic_password is None):
        missing = "basic_auth_password_env" if basic_password is None else "basic_auth_user"
        raise ConfigError(f"{path}.{missing}",
                          "basic auth needs both basic_auth_user and basic_auth_password_env")
    if url is not None:
        # A webhook or Telegram request carries alert contents and credentials: plain HTTP
        # only to this machine. Alertmanager is usually reached on a private network,
        # unless a credential goes with the alerts.
        credentials = bearer is not None or basic_user is not None
        _check_url(url, f"{path}.url",
                   https_only=notifier_type != "alertmanager" or credentials)
    chat_id = table.get("chat_id")
    if chat_id is not None:
        if isinstance(chat_id, int) and not isinstance(chat_id, bool):
            chat_id = str(chat_id)
        chat_id = read_string(chat_id, f"{path}.chat_id")
    accounts = table.get("accounts")
    kinds = table.get("kinds")
    if kinds is not None:
        for index, value in enumerate(_as_array(kinds, f"{path}.kinds")):
            if value not in ALERT_KINDS:
                raise ConfigError(f"{path}.kinds[{index}]",
                                  f"unknown alert kind; kinds are {', '.join(ALERT_KINDS)}")
    min_level = level_named(table.get("min_level", "normal"))
    if min_level is None:
        raise ConfigError(f"{path}.min_level", f"must be one of {', '.join(LEVELS)}")
    burst = table.get("burst", default_burst)
    if not isinstance(burst, int) or isinstance(burst, bool) or burst < 1:
        raise ConfigError(f"{path}.burst", "must be a positive integer")
    queue_size = table.get("queue_size", 1000)
    if not isinstance(queue_size, int) or isinstance(queue_size, bool) or queue_size < 1:
        raise ConfigError(f"{path}.queue_size", "must be a positive integer")
    defaults = NotifierConfig(name, notifier_type)
    seconds = {key: read_positive(table.get(key, getattr(defaults, key)), f"{path}.{key}")
               for key in ("timeout_s", "backoff_initial_s", "backoff_max_s",
                           "resend_interval_s", "event_duration_s")}
    if seconds["backoff_max_s"] < seconds["backoff_initial_s"]:
        raise ConfigError(f"{path}.backoff_max_s", f"must not be below {path}.backoff_initial_s")
    return NotifierConfig(
        name=name,
        type=notifier_type,
        url=url,
        secret_env=optional_string("secret_env"),
        bot_token_env=optional_string("bot_token_env"),
        chat_id=chat_id,
        webhook_url_env=optional_string("webhook_url_env"),
        bearer_token_env=bearer,
        basic_auth_user=basic_user,
        basic_auth_password_env=basic_password,
        accounts=None if accounts is None else tuple(
            read_string(a, f"{path}.accounts") for a in _as_array(accounts, f"{path}.accounts")),
        kinds=None if kinds is None else tuple(cast(list[AlertKind], kinds)),
        min_level=min_level,
        rate_per_s=read_number(table.get("rate_per_s", default_rate), f"{path}.rate_per_s",
                           low=0.0),
        burst=burst,
        queue_size=queue_size,
        **seconds,
    )


def _check_url(url: str, path: str, *, https_only: bool) -> None:
    """An absolute http(s) URL; with ``https_only``, plain http only to a loopback host."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(path, "must be an absolute http:// or https:// URL")
    if https_only and parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigError(path, "must be https:// (plain http only to a loopback address)")


# -- small typed readers ---------------------------------------------------------------


def _table(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    return _as_table(raw.get(key, {}), key)


def _array(raw: Mapping[str, Any], key: str, path: str = "") -> list[Any]:
    return _as_array(raw.get(key, []), f"{path}.{key}" if path else key)


def _as_table(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(path, "must be a table")
    return value


def _as_array(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(path, "must be an array")
    return value


def _required(table: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in table:
        raise ConfigError(f"{path}.{key}", "is required")
    return table[key]








def _count(value: Any, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(path, "must be a non-negative integer")
    return value


