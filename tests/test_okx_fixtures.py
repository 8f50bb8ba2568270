"""The OKX decoder on collected payloads (tests/fixtures/okx/README.md names each source):
demo and real captures and documentation examples of the positions, balance, account
configuration, discount-rate and position-tiers responses and of the positions and account
channels. Assertions are on the content of the events."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.okx.decode import OkxDecoder, RestPath
from monitor.core.events import (
    UNTIMED,
    AccountConfigUpdate,
    BalanceUpdate,
    CollateralTiersUpdate,
    CurrencyBalance,
    ExchangeAccountFigures,
    ExchangePositionFigures,
    Position,
    PositionSnapshot,
    PositionUpdate,
)
from monitor.core.instruments import CollateralTier, CollateralTiers

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "okx"
RECV = 1_780_000_000_000
ACCOUNT = "main"


def load(name: str) -> Any:
    return orjson.loads((FIXTURES / name).read_bytes())


def rest(path: str, name: str) -> list[Any]:
    return OkxDecoder().decode_rest(path, load(name), ACCOUNT, RECV)


# --- positions --------------------------------------------------------------------------------


def test_a_hedge_mode_long_on_a_linear_swap() -> None:
    # ccxt demo capture, fetchPositions[0]: LTC-USDT-SWAP, cross, posSide long.
    (event,) = rest(RestPath.POSITIONS,
                    "ccxt_okx_positions_ltcusdt_swap_cross_long_hedge_demo_20240130.json")
    assert event == PositionSnapshot(ACCOUNT, (Position(
        "LTC-USDT-SWAP", 1.0, 68.24, 3.0, side="long", margin_mode="cross", margin=None,
        exchange=ExchangePositionFigures(margin_ratio=141687115.0546428, maint_margin=0.00044356,
                                         init_margin=0.0227466666666667)),), UNTIMED, RECV)


def test_an_isolated_hedge_long_on_an_inverse_swap_carries_its_margin() -> None:
    # ccxt demo capture, fetchPosition[2]: imr is "" (isolated), margin in BTC.
    (event,) = rest(RestPath.POSITIONS,
                    "ccxt_okx_position_btcusd_swap_inverse_isolated_long_hedge_demo_20260120.json")
    assert event == PositionSnapshot(ACCOUNT, (Position(
        "BTC-USD-SWAP", 1.0, 92300.0, 3.0, side="long", margin_mode="isolated",
        margin=0.0003611412062116,
        exchange=ExchangePositionFigures(margin_ratio=74.32029212310307,
                                         maint_margin=0.0000043300962256, init_margin=None,
                                         liquidation_price=69536.6125000014)),),
        UNTIMED, RECV)


def test_a_cross_hedge_long_on_an_inverse_swap() -> None:
    (event,) = rest(RestPath.POSITIONS,
                    "ccxt_okx_position_btcusd_swap_inverse_cross_long_hedge_demo_20260120.json")
    assert isinstance(event, PositionSnapshot)
    (position,) = event.positions
    assert (position.inst_id, position.contracts, position.side, position.margin_mode,
            position.margin) == ("BTC-USD-SWAP", 1.0, "long", "cross", None)
    assert position.exchange is not None and position.exchange.init_margin == pytest.approx(
        0.0000543139, rel=1e-6)


def test_a_spot_margin_position_is_left_to_the_balances() -> None:
    # OKX docs example of "Get positions": a MARGIN isolated BTC-USDT row (liab in USDT).
    assert rest(RestPath.POSITIONS, "okxdocs_positions_example_1.json") == [
        PositionSnapshot(ACCOUNT, (), UNTIMED, RECV)]


def test_a_positions_channel_push_in_one_way_mode() -> None:
    # ccxt demo capture (handle_positions comment): XRP-USDT-SWAP, cross, net. No
    # eventType: read as an update, dated by the later of uTime and pTime.
    frame = load("ccxt_okx_ws_positions_push_xrpusdt_swap_cross_net_demo_20230827.json")
    events = OkxDecoder().decode_frame(frame, ACCOUNT, RECV)
    assert events == [PositionUpdate(ACCOUNT, (Position(
        "XRP-USDT-SWAP", 1.0, 0.52668, 3.0,
        exchange=ExchangePositionFigures(margin_ratio=69.00363001456147, maint_margin=0.26346,
                                         init_margin=17.564000000000004,
                                         liquidation_price=0.3287514731020614)),),
        1_693_151_906_023, RECV)]


# --- balances ---------------------------------------------------------------------------------


def test_a_multi_currency_balance_with_borrowing() -> None:
    # ccxt demo capture, fetchBalance[2]: 13 currencies, account figures, liab "0".
    (event,) = rest(RestPath.BALANCE, "ccxt_okx_balance_multiccy_demo_borrow_20250711.json")
    assert isinstance(event, BalanceUpdate) and event.snapshot
    assert event.event_ms == UNTIMED
    assert event.exchange == ExchangeAccountFigures(
        margin_ratio=15986.632239614408, adjusted_equity=152550.80919105993,
        init_margin=101.55251216636945, maint_margin=9.073149592403611,
        total_equity=43749372.50896299)
    assert [b.currency for b in event.balances] == [
        "TUSD", "BTC", "JFI", "ETH", "OKB", "UNI", "PAX", "USDK", "USDC", "TRX", "LTC", "ADA",
        "USDT"]
    assert event.balances[1] == CurrencyBalance("BTC", 1.06126645222, 0.0, 0.0)
    # Multi-currency margin: no per-currency pool figures.
    assert all(b.exchange is None for b in event.balances)


def test_a_single_currency_balance_reports_the_pool_figures() -> None:
    # Real capture (nautilus_trader test data): Futures mode, an isolated USDT position;
    # the account-level figures are "", the currency's imr and mmr "0".
    (event,) = rest(RestPath.BALANCE, "nautilus_okx_balance_single_ccy_isolated_usdt.json")
    assert event == BalanceUpdate(ACCOUNT, (CurrencyBalance(
        "USDT", 94.42612990333333, None, None,
        exchange=ExchangeAccountFigures(margin_ratio=None, adjusted_equity=99.89469657000001,
                                        init_margin=0.0, maint_margin=0.0)),),
        True, ExchangeAccountFigures(None, None, None, None, total_equity=99.88870288820581),
        UNTIMED, RECV)


def test_an_account_channel_snapshot() -> None:
    # ccxt demo capture (handle_balance comment), its details cut to one row by ccxt.
    frame = load("ccxt_okx_ws_account_snapshot_multiccy_demo_20260318.json")
    (event,) = OkxDecoder().decode_frame(frame, ACCOUNT, RECV)
    assert event == BalanceUpdate(
        ACCOUNT, (CurrencyBalance("TUSD", 2900.0, 0.0, 0.0),), True,
        ExchangeAccountFigures(margin_ratio=1814.5924297007082,
                               adjusted_equity=100942.13298468884,
                               init_margin=2480.1422383312265, maint_margin=52.196024182958055,
                               total_equity=711018.8951315446),
        1_773_837_554_158, RECV)


# --- account configuration ----------------------------------------------------------------------


def test_a_spot_mode_account_cannot_be_followed() -> None:
    # ccxt demo capture, fetchAccounts[0]: acctLv 1 (spot mode), net_mode.
    assert rest(RestPath.ACCOUNT_CONFIG, "ccxt_okx_account_config_acctlv1_netmode_demo.json") == [
        AccountConfigUpdate(ACCOUNT, "unsupported", "1", False, UNTIMED, RECV)]


def test_the_documented_configuration_is_single_currency_in_hedge_mode() -> None:
    assert rest(RestPath.ACCOUNT_CONFIG, "okxdocs_account_config_example_1.json") == [
        AccountConfigUpdate(ACCOUNT, "single_currency", "2", True, UNTIMED, RECV)]


# --- discount rates and tiers -------------------------------------------------------------------


def test_documented_discount_details_are_in_the_currency() -> None:
    events = OkxDecoder().decode_rest(
        f"{RestPath.DISCOUNT_RATE}?ccy=BTC",
        load("okxdocs_discount_rate_interest_free_quota_example_1.json"), None, RECV)
    assert events == [CollateralTiersUpdate("BTC", CollateralTiers((
        CollateralTier(20.0, 0.98), CollateralTier(25.0, 0.9775),
        CollateralTier(math.inf, 0.0)), in_usd=False), UNTIMED, RECV)]


def test_older_discount_info_is_read_as_usd() -> None:
    # An older docs example (JKorf/OKX.Net unit test data): LTC bands to 8,000,000, which
    # as LTC would be about a tenth of all LTC; riskmon reads discountInfo as USD.
    events = OkxDecoder().decode_rest(
        RestPath.DISCOUNT_RATE,
        load("jkorf_okxnet_discount_rate_old_discountInfo_ltc_docexample.json"), None, RECV)
    assert events == [CollateralTiersUpdate("LTC", CollateralTiers((
        CollateralTier(2e6, 0.95), CollateralTier(4e6, 0.85), CollateralTier(8e6, 0.5),
        CollateralTier(math.inf, 0.0)), in_usd=True), UNTIMED, RECV)]


def test_margin_tiers_of_a_pair_are_not_borrowing_tiers() -> None:
    # The docs example answers instId=BTC-USDT (a spot-margin pair), not a ccy query.
    body = load("nautilus_okx_position_tiers_margin_btcusdt_docexample.json")
    decoder = OkxDecoder()
    pair = f"{RestPath.POSITION_TIERS}?instType=MARGIN&tdMode=cross&instId=BTC-USDT"
    assert decoder.decode_rest(pair, body, None, RECV) == []
