"""Configuration loading and validation (SPEC section 6).

Every rejected value must name its key (``ConfigError.key``), so the tests assert on that
attribute rather than on message text; the message is only checked to mention the key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest

from adapters.okx.config import OkxConfig
from adapters.venues import VENUES
from monitor.app.config import check_config, load_config, parse_config
from monitor.core.errors import ConfigError, RiskmonError
from monitor.core.instruments import BorrowTier, CollateralTier, CollateralTiers, Instrument, Tier
from monitor.core.settings import (
    DEFAULT_COLLATERAL,
    AccountConfig,
    Config,
    HealthConfig,
    QuarantineConfig,
    RiskConfig,
    StopLossRule,
    StorageConfig,
    StreamConfig,
    StreamToken,
)
from monitor.runtime.venues import resolve_venues

# The example of SPEC section 6, with the last tier's bound written as 1e15 (one trailing
# comment is shortened to fit the line length).
SPEC_EXAMPLE = """\
[risk]
warning = 1.50
withdrawal_lock = 1.20
deleverage = 1.00
liquidation = 0.85
hysteresis = 0.02
stale_after_s = 10
repeat_interval_s = 300
closing_fee_rate = 0.0005
market_order_slippage = 0.0

[collateral]            # currency -> collateral factor in [0, 1]
USDT = 1.0
BTC = 0.90

[interest]              # currency -> hourly interest rate on liabilities
USDT = 0.00002

[[instruments]]         # used when the feed does not supply the spec
inst_id = "BTC-USDT-SWAP"
ct_type = "linear"      # or "inverse"
ct_val = 0.01
ct_mult = 1
ct_val_ccy = "BTC"
settle_ccy = "USDT"
max_leverage = 100
tiers = [ { max_contracts = 5000, mmr = 0.004 }, { max_contracts = 1e15, mmr = 0.006 } ]

[accounts.main]         # an account seen in a feed but not configured gets defaults
api_key_env = "RISKMON_MAIN_API_KEY"          # live only; secret and passphrase likewise
api_secret_env = "RISKMON_MAIN_API_SECRET"
passphrase_env = "RISKMON_MAIN_PASSPHRASE"

[[accounts.main.stop_loss]]
name = "guard-110"
metric = "im_coverage"  # "margin_ratio" | "im_coverage" | "equity_usd"
below = 1.10
action = "close_all"    # "close_all" | "close" (with inst_id) | "reduce" (with fraction)

[okx]
public_url = "wss://ws.okx.com:8443/ws/v5/public"
private_url = "wss://ws.okx.com:8443/ws/v5/private"
rest_url = "https://www.okx.com"

[storage]
sqlite_path = "riskmon.db"
retention_days = 90

[stream]                # alert subscribers (path /v1/alerts) and /healthz, /metrics
host = "127.0.0.1"
port = 8765
tokens = [ { token_env = "RISKMON_TOKEN_DESK", accounts = ["main"] } ]   # none: loopback only
"""

# One valid instrument, as TOML lines keyed by field, for tables that break one field.
_INSTRUMENT_LINES = {
    "inst_id": '"BTC-USDT-SWAP"',
    "ct_type": '"linear"',
    "ct_val": "0.01",
    "ct_val_ccy": '"BTC"',
    "settle_ccy": '"USDT"',
    "tiers": "[{ max_contracts = 5000, mmr = 0.004 }, { max_contracts = 1e15, mmr = 0.006 }]",
}

# One valid stop-loss rule of account "main".
_RULE_LINES = {
    "name": '"guard-110"',
    "metric": '"im_coverage"',
    "below": "1.10",
    "action": '"close_all"',
}


def _block(header: str, base: dict[str, str], changes: dict[str, str | None]) -> str:
    """A TOML array-of-tables entry: ``base`` with ``changes`` (None removes a key)."""
    lines = {**base, **changes}
    body = "".join(f"{key} = {value}\n" for key, value in lines.items() if value is not None)
    return f"[[{header}]]\n{body}"


def instrument(**changes: str | None) -> str:
    """A ``[[instruments]]`` entry; keyword values are raw TOML, None drops the key."""
    return _block("instruments", _INSTRUMENT_LINES, changes)


def rule(**changes: str | None) -> str:
    """A ``[[accounts.main.stop_loss]]`` entry; keyword values are raw TOML."""
    return _block("accounts.main.stop_loss", _RULE_LINES, changes)


def flat_factors(collateral: Mapping[str, CollateralTiers]) -> dict[str, float | None]:
    return {currency: tiers.flat_factor for currency, tiers in collateral.items()}


def parse_toml(text: str) -> Config:
    """Parsed and checked as ``riskmon run`` does: the venues' tables too."""
    config = parse_config(tomllib.loads(text))
    resolve_venues(config, VENUES)
    return config


def okx_of(config: Config) -> OkxConfig:
    settings = resolve_venues(config, VENUES)["okx"].settings
    assert isinstance(settings, OkxConfig)
    return settings


def write_config(directory: Path, text: str) -> Path:
    path = directory / "riskmon.toml"
    path.write_text(text, encoding="utf-8")
    return path


# -- defaults ---------------------------------------------------------------------------


def test_empty_document_gives_every_default_of_the_spec(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, ""))

    assert config.risk.warning == 1.50
    assert config.risk.withdrawal_lock == 1.20
    assert config.risk.deleverage == 1.00
    assert config.risk.liquidation == 0.85
    assert config.risk.hysteresis == 0.02
    assert config.risk.stale_after_s == 10.0
    assert config.risk.repeat_interval_s == 300.0
    assert config.risk.closing_fee_rate == 0.0005
    assert config.risk.market_order_slippage == 0.0

    # Seed 000: USDT at 100%, BTC at 90%, MATIC 75%, AVAX 80%; nothing else counts.
    assert flat_factors(config.collateral) == {"USDT": 1.0, "BTC": 0.90, "MATIC": 0.75,
                                                "AVAX": 0.80}
    assert dict(config.interest) == {}
    assert config.instruments == ()
    assert dict(config.accounts) == {}

    assert okx_of(config).public_url == "wss://ws.okx.com:8443/ws/v5/public"
    assert okx_of(config).private_url == "wss://ws.okx.com:8443/ws/v5/private"
    assert okx_of(config).rest_url == "https://www.okx.com"

    assert config.storage.sqlite_path == "riskmon.db"
    assert config.storage.retention_days == 90.0

    assert config.stream.host == "127.0.0.1"
    assert config.stream.port == 8765
    assert config.stream.tokens == ()


def test_empty_mapping_equals_the_dataclass_defaults() -> None:
    assert parse_config({}) == Config()


def test_spec_example_parses_into_the_expected_dataclasses(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, SPEC_EXAMPLE))

    # The example repeats the defaults for [risk], [okx] and [storage].
    assert config.risk == RiskConfig()
    assert okx_of(config) == OkxConfig()
    assert config.storage == StorageConfig()
    assert isinstance(config.risk.stale_after_s, float)  # TOML integer 10 read as a number

    assert flat_factors(config.collateral) == {"USDT": 1.0, "BTC": 0.90, "MATIC": 0.75,
                                                "AVAX": 0.80}
    assert dict(config.interest) == {"USDT": 0.00002}

    assert config.instruments == (
        Instrument(
            inst_id="BTC-USDT-SWAP",
            contract_type="linear",
            contract_value=0.01,
            contract_multiplier=1.0,
            contract_value_currency="BTC",
            settle_currency="USDT",
            tiers=(
                Tier(max_size=5000.0, maintenance_rate=0.004),
                Tier(max_size=1e15, maintenance_rate=0.006),
            ),
            max_leverage=100.0,
            lot_size=None,
        ),
    )
    assert config.instruments[0].multiplier == pytest.approx(0.01)

    assert dict(config.accounts) == {
        "main": AccountConfig(
            name="main",
            api_key_env="RISKMON_MAIN_API_KEY",
            api_secret_env="RISKMON_MAIN_API_SECRET",
            passphrase_env="RISKMON_MAIN_PASSPHRASE",
            credentials_file=None,
            stop_loss=(
                StopLossRule(
                    name="guard-110",
                    metric="im_coverage",
                    below=1.10,
                    action="close_all",
                    inst_id=None,
                    fraction=None,
                ),
            ),
        ),
    }

    assert config.stream == StreamConfig(
        host="127.0.0.1",
        port=8765,
        tokens=(StreamToken(token_env="RISKMON_TOKEN_DESK", accounts=("main",)),),
    )


def test_close_and_reduce_rules_keep_their_instrument_and_fraction() -> None:
    config = parse_toml(
        rule(name='"cut-btc"', action='"close"', inst_id='"BTC-USDT-SWAP"')
        + rule(name='"halve"', metric='"margin_ratio"', below="1.3", action='"reduce"',
               fraction="0.5")
    )

    assert config.accounts["main"].stop_loss == (
        StopLossRule(name="cut-btc", metric="im_coverage", below=1.10, action="close",
                     inst_id="BTC-USDT-SWAP"),
        StopLossRule(name="halve", metric="margin_ratio", below=1.3, action="reduce",
                     fraction=0.5),
    )


# -- collateral -------------------------------------------------------------------------


def test_collateral_entries_override_defaults_and_add_currencies() -> None:
    config = parse_toml("[collateral]\nBTC = 0.5\nETH = 0.85\nPEPE = 0.0\n")

    assert flat_factors(config.collateral) == {
        "USDT": 1.0,
        "BTC": 0.5,
        "MATIC": 0.75,
        "AVAX": 0.80,
        "ETH": 0.85,
        "PEPE": 0.0,
    }


def test_collateral_override_leaves_the_module_defaults_alone() -> None:
    parse_toml("[collateral]\nBTC = 0.5\nETH = 0.85\n")

    assert flat_factors(DEFAULT_COLLATERAL) == {"USDT": 1.0, "BTC": 0.90, "MATIC": 0.75,
                                                "AVAX": 0.80}
    assert parse_config({}).collateral["BTC"] == CollateralTiers.flat(0.90)
    assert "ETH" not in parse_config({}).collateral


# -- validation: every error names its key ----------------------------------------------


@pytest.mark.parametrize(
    ("snippet", "key"),
    [
        pytest.param("[colateral]\nBTC = 0.9\n", "colateral", id="unknown-top-level-key"),
        pytest.param("[risk]\nwarnig = 1.4\n", "risk.warnig", id="unknown-risk-key"),
        pytest.param('[risk]\nwarning = "1.5"\n', "risk.warning", id="threshold-not-a-number"),
        pytest.param("[risk]\nwarning = true\n", "risk.warning", id="threshold-boolean"),
        pytest.param("[risk]\ndeleverage = nan\n", "risk.deleverage", id="threshold-nan"),
        pytest.param("[risk]\nwithdrawal_lock = 1.6\n", "risk.withdrawal_lock",
                     id="withdrawal-lock-above-warning"),
        pytest.param("[risk]\nliquidation = 1.0\n", "risk.liquidation",
                     id="liquidation-equal-to-deleverage"),
        pytest.param("[risk]\nhysteresis = -0.01\n", "risk.hysteresis", id="negative-hysteresis"),
        pytest.param("[risk]\nstale_after_s = 0\n", "risk.stale_after_s", id="zero-staleness"),
        pytest.param('[risk]\nexecute_triggers = "yes"\n', "risk.execute_triggers",
                     id="flag-not-a-boolean"),
        pytest.param("[collateral]\nBTC = 1.5\n", "collateral.BTC", id="collateral-factor-1.5"),
        pytest.param("[collateral]\nBTC = -0.1\n", "collateral.BTC",
                     id="negative-collateral-factor"),
        pytest.param("[interest]\nUSDT = -0.00002\n", "interest.USDT", id="negative-interest"),
        pytest.param(instrument(ct_val=None), "instruments[0].ct_val",
                     id="instrument-missing-ct-val"),
        pytest.param(instrument(ct_val="0"), "instruments[0].ct_val", id="instrument-zero-ct-val"),
        pytest.param(instrument(ct_type='"quanto"'), "instruments[0].ct_type",
                     id="instrument-ct-type-quanto"),
        pytest.param(instrument(ct_value="0.01"), "instruments[0].ct_value",
                     id="instrument-unknown-key"),
        pytest.param(
            instrument(tiers="[{ max_contracts = 5000, mmr = 0.004 },"
                             " { max_contracts = 100, mmr = 0.006 }]"),
            "instruments[0].tiers",
            id="tiers-not-ascending",
        ),
        pytest.param(instrument(tiers="[]"), "instruments[0].tiers", id="no-tiers"),
        pytest.param(instrument(tiers="[{ max_contracts = 5000, mmr = 1.5 }]"),
                     "instruments[0].tiers[0].mmr", id="mmr-above-1"),
        pytest.param(instrument(tiers="[{ max_contracts = 5000 }]"),
                     "instruments[0].tiers[0].mmr", id="tier-missing-mmr"),
        pytest.param(instrument() + instrument(), "instruments[1].inst_id",
                     id="duplicate-inst-id"),
        pytest.param(rule(metric='"pnl"'), "accounts.main.stop_loss[0].metric",
                     id="stop-loss-metric-unknown"),
        pytest.param(rule(action='"liquidate"'), "accounts.main.stop_loss[0].action",
                     id="stop-loss-action-unknown"),
        pytest.param(rule(action='"close"'), "accounts.main.stop_loss[0].inst_id",
                     id="close-without-inst-id"),
        pytest.param(rule(action='"reduce"'), "accounts.main.stop_loss[0].fraction",
                     id="reduce-without-fraction"),
        pytest.param(rule(action='"reduce"', fraction="0"), "accounts.main.stop_loss[0].fraction",
                     id="reduce-fraction-0"),
        pytest.param(rule(action='"reduce"', fraction="1.5"),
                     "accounts.main.stop_loss[0].fraction", id="reduce-fraction-above-1"),
        pytest.param(rule(below=None), "accounts.main.stop_loss[0].below",
                     id="stop-loss-missing-threshold"),
        pytest.param(rule() + rule(metric='"margin_ratio"'), "accounts.main.stop_loss[1].name",
                     id="duplicate-rule-names"),
        pytest.param('[accounts.main]\napi_key = "k"\n', "accounts.main.api_key",
                     id="unknown-account-key"),
        pytest.param("[storage]\ncheckpoint_interval_s = 0\n", "storage.checkpoint_interval_s",
                     id="checkpoint-interval-0"),
        pytest.param("[stream]\nport = 70000\n", "stream.port", id="stream-port-70000"),
        pytest.param('[execution]\nsync_before_send = "yes"\n', "execution.sync_before_send",
                     id="sync-before-send-string"),
        pytest.param("[stream]\nport = 8765.0\n", "stream.port", id="stream-port-float"),
        pytest.param('[stream]\ntokens = [{ token_env = "T" }]\n', "stream.tokens[0].accounts",
                     id="token-without-accounts"),
        pytest.param('[okx]\npublic_url = ""\n', "okx.public_url", id="empty-url"),
        pytest.param('risk = "strict"\n', "risk", id="string-for-risk-table"),
        pytest.param('[accounts]\nmain = "RISKMON_MAIN"\n', "accounts.main",
                     id="string-for-account-table"),
        pytest.param('instruments = ["BTC-USDT-SWAP"]\n', "instruments[0]",
                     id="string-for-instrument-table"),
        pytest.param('[stream]\ntokens = ["RISKMON_TOKEN_DESK"]\n', "stream.tokens[0]",
                     id="string-for-token-table"),
    ],
)
def test_every_validation_error_names_the_offending_key(snippet: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_toml(snippet)

    assert caught.value.key == key
    assert key in str(caught.value)
    assert isinstance(caught.value, RiskmonError)


def test_missing_file_is_a_config_error_about_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.toml")

    assert caught.value.key == "<file>"
    assert "<file>" in str(caught.value)
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_invalid_toml_is_a_config_error_about_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[risk\nwarning = 1.5\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert caught.value.key == "<file>"
    assert "<file>" in str(caught.value)
    assert isinstance(caught.value.__cause__, tomllib.TOMLDecodeError)


# -- regressions: defects found in monitor/app/config.py and fixed ----------------------------


def test_fraction_on_a_close_all_rule_is_validated() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_toml(rule(fraction='"half"'))

    assert caught.value.key == "accounts.main.stop_loss[0].fraction"


def test_negative_fraction_on_a_close_rule_is_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_toml(rule(action='"close"', inst_id='"BTC-USDT-SWAP"', fraction="-3"))

    assert caught.value.key == "accounts.main.stop_loss[0].fraction"


@pytest.mark.parametrize(
    ("snippet", "key"),
    [
        pytest.param('[accounts.main]\nstop_loss = "guard-110"\n', "accounts.main.stop_loss",
                     id="stop-loss-not-an-array"),
        pytest.param('[stream]\ntokens = "RISKMON_TOKEN_DESK"\n', "stream.tokens",
                     id="tokens-not-an-array"),
    ],
)
def test_nested_array_errors_name_the_full_key(snippet: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_toml(snippet)

    assert caught.value.key == key


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "riskmon.toml"
    path.write_bytes(b"[risk]\nwarning = 1.5  # \xff\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert caught.value.key == "<file>"


def test_unreadable_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)

    assert caught.value.key == "<file>"


def test_simulated_defaults_to_the_demo_trading_urls() -> None:
    config = parse_toml("[okx]\nsimulated = true\n")
    assert okx_of(config).simulated is True
    assert "wspap" in okx_of(config).public_url and "wspap" in okx_of(config).private_url
    assert okx_of(parse_toml("")).simulated is False


def test_simulated_with_a_production_url_is_an_error_naming_the_key() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_toml('[okx]\nsimulated = true\npublic_url = "wss://ws.okx.com:8443/ws/v5/public"\n')
    assert raised.value.key == "okx.public_url"


def test_the_old_liquidation_fee_key_names_its_replacement() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_toml("[risk]\nliquidation_fee_rate = 0.001\n")
    assert raised.value.key == "risk.liquidation_fee_rate"
    assert "risk.closing_fee_rate" in raised.value.message


def test_collateral_bands_borrow_tiers_and_account_modes_parse() -> None:
    config = parse_toml(
        "[collateral]\nBTC = [ { max_amount = 100, factor = 0.98 },"
        " { max_amount = 1e15, factor = 0.5 } ]\n"
        "[borrow.USDT]\ntiers = [ { max_amount = 1e15, mmr = 0.02, imr = 0.2 } ]\n"
        '[accounts.main]\nmode = "single_currency"\n')
    assert config.collateral["BTC"] == CollateralTiers(
        (CollateralTier(100, 0.98), CollateralTier(1e15, 0.5)))
    assert config.configured_collateral == frozenset({"BTC"})
    assert config.borrow["USDT"] == (BorrowTier(1e15, 0.02, 0.2),)
    assert config.accounts["main"].mode == "single_currency"


@pytest.mark.parametrize(("snippet", "key"), [
    ("[collateral]\nBTC = [ { max_amount = 10, factor = 1.5 } ]", "collateral.BTC[0].factor"),
    ("[collateral]\nBTC = [ { max_amount = 10, factor = 0.9 }, { max_amount = 5, factor = 0.5 } ]",
     "collateral.BTC"),
    ("[collateral]\nBTC = [ { factor = 0.9 } ]", "collateral.BTC[0].max_amount"),
    ("[borrow.USDT]\ntiers = []", "borrow.USDT.tiers"),
    ("[borrow.USDT]\ntiers = [ { max_amount = 1, mmr = 2, imr = 0.1 } ]",
     "borrow.USDT.tiers[0].mmr"),
    ("[borrow.USDT]\nrates = 1", "borrow.USDT.rates"),
    ('[accounts.main]\nmode = "spot"', "accounts.main.mode"),
    ("[okx]\nsimulated = 1", "okx.simulated"),
])
def test_new_keys_are_validated_by_name(snippet: str, key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_toml(snippet)
    assert raised.value.key == key


def test_check_config_reports_every_error_at_once() -> None:
    raw = tomllib.loads(
        "colour = 1\n"
        "[risk]\nwarning = 0.5\n"
        "[collateral]\nBTC = 2\nETH = 0.5\nSOL = -1\n"
        "[[instruments]]\ninst_id = \"X\"\n"
        "[accounts.main]\nmode = \"spot\"\n"
        "[accounts.desk]\n[[accounts.desk.stop_loss]]\nname = \"r\"\nmetric = \"x\"\n"
        "below = 1\naction = \"close_all\"\n"
        "[stream]\nport = -1\n")
    assert [error.key for error in check_config(raw)] == [
        "colour", "risk.withdrawal_lock", "collateral.BTC", "collateral.SOL",
        "instruments[0].ct_type", "accounts.main.mode", "accounts.desk.stop_loss[0].metric",
        "stream.port"]
    # parse_config raises the first of them.
    with pytest.raises(ConfigError) as raised:
        parse_config(raw)
    assert raised.value.key == "colour"


def test_check_config_of_a_valid_document_is_empty() -> None:
    assert check_config(tomllib.loads(SPEC_EXAMPLE)) == []


def test_quarantine_and_health_tables_parse_with_defaults() -> None:
    assert parse_config({}).quarantine == QuarantineConfig(
        log_first=10, log_summary_s=60.0, store_first=1000, store_sample_every=1000,
        store_max_rows=10_000)
    assert parse_config({}).health == HealthConfig(feed_grace_s=30.0, risk_unknown_grace_s=60.0)
    config = parse_toml("[quarantine]\nlog_first = 0\nlog_summary_s = 5\nstore_sample_every = 0\n"
                        "[health]\nfeed_grace_s = 2.5\n")
    assert config.quarantine == QuarantineConfig(log_first=0, log_summary_s=5.0,
                                                 store_sample_every=0)
    assert config.health == HealthConfig(feed_grace_s=2.5)


@pytest.mark.parametrize(("snippet", "key"), [
    ("[quarantine]\nlog_first = -1", "quarantine.log_first"),
    ("[quarantine]\nlog_first = 1.5", "quarantine.log_first"),
    ("[quarantine]\nstore_first = true", "quarantine.store_first"),
    ("[quarantine]\nlog_summary_s = 0", "quarantine.log_summary_s"),
    ("[quarantine]\nstore_max_rows = 0", "quarantine.store_max_rows"),
    ("[quarantine]\nkeep = 1", "quarantine.keep"),
    ("[health]\nfeed_grace_s = 0", "health.feed_grace_s"),
    ('[health]\nrisk_unknown_grace_s = "1m"', "health.risk_unknown_grace_s"),
    ("[health]\nstale_grace_s = 1", "health.stale_grace_s"),
])
def test_quarantine_and_health_keys_are_validated_by_name(snippet: str, key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_toml(snippet)
    assert raised.value.key == key


def test_the_checkpoint_interval_parses() -> None:
    assert parse_toml("").storage.checkpoint_interval_s == 60.0
    config = parse_toml("[storage]\ncheckpoint_interval_s = 5\n")
    assert config.storage.checkpoint_interval_s == 5.0


def test_execution_waits_for_the_fsync_only_when_asked() -> None:
    assert parse_toml("").execution.sync_before_send is False
    assert parse_toml("[execution]\nsync_before_send = true\n").execution.sync_before_send
