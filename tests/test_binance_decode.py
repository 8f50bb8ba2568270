"""The Binance USDⓈ-M decoder (adapters/binance/decode.py) on real pushed messages, and on
bad input (a clear BadInput, never a crash nor a partial state).

Real messages: yishanxiaoqi/jq_cta, ``style/raw.md``, commit
81cd80ee2ff9c2afe3fbc0776ca5bb0b7ab0381e (the author's captures; its ``//`` comments
removed): ``ACCOUNT_UPDATE`` of 2023-07-01 and 2023-07-03 and an ``ORDER_TRADE_UPDATE``
fill of 2025-12-13. The mark-price message is tardis-dev/tardis-node,
``test/mappers.test.ts``, commit c1d73fb54c8cb785bd0a05c36189e24fb289065a (recorded
2020-08-16).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from adapters.binance.decode import BinanceDecoder, RestPath
from monitor.core.errors import BadInput
from monitor.core.events import (
    AccountConfigUpdate,
    BalanceUpdate,
    InstrumentUpdate,
    MarkPrice,
    OrdersSnapshot,
    OrderUpdate,
    PositionSnapshot,
    PositionUpdate,
)

RECV = 1_700_000_000_000

ACCOUNT_UPDATE_ORDER: dict[str, Any] = {
    "e": "ACCOUNT_UPDATE", "T": 1688225220403, "E": 1688225220407,
    "a": {"B": [{"a": "USDT", "wb": "5735.64055698", "cw": "5735.64055698", "bc": "0"}],
          "P": [{"s": "BTCUSDT", "pa": "-0.001", "ep": "30566.30000000", "cr": "-0.01240001",
                 "up": "-0.00059564", "mt": "cross", "iw": "0", "ps": "BOTH", "ma": "USDT"}],
          "m": "ORDER"}}
ACCOUNT_UPDATE_DEPOSIT: dict[str, Any] = {
    "e": "ACCOUNT_UPDATE", "T": 1688396711118, "E": 1688396711123,
    "a": {"B": [{"a": "USDT", "wb": "5735.79804855", "cw": "5735.79804855",
                 "bc": "0.00600000"}], "P": [], "m": "ADMIN_DEPOSIT"}}
ORDER_FILLED: dict[str, Any] = {
    "e": "ORDER_TRADE_UPDATE", "T": 1765638258183, "E": 1765638258184,
    "o": {"s": "ETHUSDT", "c": "testtest0843", "S": "BUY", "o": "MARKET", "f": "GTC",
          "q": "0.05", "p": "0", "ap": "3113.87", "sp": "0", "x": "TRADE", "X": "FILLED",
          "i": 8389766049535966000, "l": "0.05", "z": "0.05", "L": "3113.87",
          "n": "0.07784675", "N": "USDT", "T": 1765638258183, "t": 7043103089, "b": "0",
          "a": "0", "m": False, "R": False, "wt": "CONTRACT_PRICE", "ot": "MARKET",
          "ps": "BOTH", "cp": False, "rp": "0", "pP": False, "si": 2000000037542090,
          "ss": -1, "st": "ALGO_CONDITION", "V": "EXPIRE_MAKER", "pm": "NONE", "gtd": 0,
          "er": "0"}}
MARK_PRICE: dict[str, Any] = {"stream": "btcusdt@markPrice@1s",
              "data": {"e": "markPriceUpdate", "E": 1597536008000, "s": "BTCUSDT",
                       "p": "11857.56000000", "i": "11851.86949091", "r": "0.00015640",
                       "T": 1597564800000}}


def decode(frame: Any, account: str | None = "main",
           decoder: BinanceDecoder | None = None) -> list[Any]:
    return (decoder or BinanceDecoder()).decode_message(orjson.dumps(frame).decode(),
                                                        account, RECV)


def test_a_mark_price_push_is_a_mark() -> None:
    assert decode(MARK_PRICE, None) == [
        MarkPrice("BTCUSDT", 11857.56, 1597536008000, RECV)]
    # The all-symbols stream carries an array of the same objects.
    [first, second] = decode([MARK_PRICE["data"], {**MARK_PRICE["data"], "s": "ETHUSDT"}],
                             None)
    assert (first.inst_id, second.inst_id) == ("BTCUSDT", "ETHUSDT")


def test_account_update_moves_balances_and_positions() -> None:
    balance, positions = decode(ACCOUNT_UPDATE_ORDER)
    assert isinstance(balance, BalanceUpdate) and balance.snapshot is False
    [usdt] = balance.balances
    assert (usdt.currency, usdt.cash) == ("USDT", 5735.64055698)
    assert isinstance(positions, PositionUpdate) and positions.event_ms == 1688225220407
    [short] = positions.positions
    assert (short.inst_id, short.contracts, short.avg_price) == ("BTCUSDT", -0.001, 30566.3)
    assert (short.side, short.margin_mode, short.margin) == ("net", "cross", None)
    # A deposit: balances only.
    [deposit] = decode(ACCOUNT_UPDATE_DEPOSIT)
    assert isinstance(deposit, BalanceUpdate) and deposit.balances[0].cash == 5735.79804855


def test_a_position_carries_the_leverage_last_reported_for_its_symbol() -> None:
    decoder = BinanceDecoder()
    assert decode({"e": "ACCOUNT_CONFIG_UPDATE", "E": 1, "T": 1,
                   "ac": {"s": "BTCUSDT", "l": 25}}, decoder=decoder) == []
    _, positions = decode(ACCOUNT_UPDATE_ORDER, decoder=decoder)
    assert positions.positions[0].leverage == 25


def test_an_order_fill_is_an_order_update() -> None:
    [update] = decode(ORDER_FILLED)
    assert isinstance(update, OrderUpdate)
    assert update.live is False and update.state == "FILLED"
    assert update.client_id == "testtest0843" and update.average_price == 3113.87
    order = update.order
    assert (order.order_id, order.inst_id, order.side) == ("8389766049535966000", "ETHUSDT",
                                                           "buy")
    assert (order.size, order.filled, order.price) == (0.05, 0.05, None)  # market: no price


def test_the_account_modes_come_from_their_endpoints() -> None:
    decoder = BinanceDecoder()
    assert decoder.decode_rest(RestPath.POSITION_MODE, {"dualSidePosition": True}, "main",
                               RECV) == []  # waits for the margin mode
    [mode] = decoder.decode_rest(RestPath.MULTI_ASSETS, {"multiAssetsMargin": False}, "main",
                                 RECV)
    assert isinstance(mode, AccountConfigUpdate)
    assert (mode.mode, mode.hedge_mode, mode.exchange_level) == (
        "single_currency", True, "single-asset")
    [switched] = decode({"e": "ACCOUNT_CONFIG_UPDATE", "E": 5, "T": 5, "ai": {"j": True}},
                        decoder=decoder)
    assert switched.mode == "multi_currency" and switched.event_ms == 5


def test_open_orders_and_positions_are_snapshots() -> None:
    decoder = BinanceDecoder()
    [orders] = decoder.decode_rest(RestPath.OPEN_ORDERS, [{
        "symbol": "BTCUSDT", "orderId": 4087922044, "side": "SELL", "type": "LIMIT",
        "price": "110001.00", "origQty": "0.200", "executedQty": "0.000",
        "reduceOnly": False, "positionSide": "BOTH"}], "main", RECV)
    assert isinstance(orders, OrdersSnapshot)
    [order] = orders.orders
    assert (order.order_id, order.price, order.size) == ("4087922044", 110001.0, 0.2)
    [empty] = decoder.decode_rest(RestPath.POSITION_RISK, [], "main", RECV)
    assert isinstance(empty, PositionSnapshot) and empty.positions == ()


@pytest.mark.parametrize(("frame", "reason"), [
    ({"e": "markPriceUpdate", "E": 1, "s": "BTCUSDT", "p": "1e3"}, "plain decimal"),
    ({"e": "markPriceUpdate", "E": 1, "s": "BTCUSDT", "p": "-5"}, "markPriceUpdate"),
    ({"e": "markPriceUpdate", "E": "soon", "s": "BTCUSDT", "p": "5"}, "timestamp"),
    ({"e": "ACCOUNT_UPDATE", "E": 1, "a": {"B": "all"}}, "not an array"),
    ({"e": "ACCOUNT_UPDATE", "E": 1, "a": {"P": [{"s": "X", "pa": "1", "ep": "1", "mt": "x",
                                                  "iw": "0", "ps": "BOTH"}]}}, "cross or"),
    ({"e": "ORDER_TRADE_UPDATE", "E": 1, "o": {**ORDER_FILLED["o"], "X": "LOST"}},
     "order status"),
    ({"e": "SOMETHING_NEW", "E": 1}, "not one riskmon reads"),
    ([1, 2], "not an object"),
    ("text", "not an object"),
])
def test_bad_frames_are_refused_with_a_reason(frame: Any, reason: str) -> None:
    with pytest.raises(BadInput, match=reason):
        decode(frame)


def test_private_events_need_an_account() -> None:
    with pytest.raises(BadInput, match="no account"):
        decode(ACCOUNT_UPDATE_ORDER, None)


def test_an_error_answer_is_not_an_empty_snapshot() -> None:
    # {"code": -2015, "msg": ...} in place of positions must not close every position.
    with pytest.raises(BadInput, match="-2015"):
        BinanceDecoder().decode_rest(RestPath.POSITION_RISK,
                                     {"code": -2015, "msg": "Invalid API-key"}, "main", RECV)


def test_unusable_brackets_are_refused_and_leave_no_state() -> None:
    decoder = BinanceDecoder()
    decoder.decode_rest(RestPath.EXCHANGE_INFO, {"symbols": [{
        "symbol": "BTCUSDT", "contractType": "PERPETUAL", "status": "TRADING",
        "baseAsset": "BTC", "marginAsset": "USDT", "filters": []}]}, None, RECV)
    descending = [{"symbol": "BTCUSDT", "brackets": [
        {"notionalCap": 50_000, "maintMarginRatio": 0.004, "cum": 0, "initialLeverage": 125},
        {"notionalCap": 10_000, "maintMarginRatio": 0.005, "cum": 50, "initialLeverage": 100},
    ]}]
    with pytest.raises(BadInput, match="ascending"):
        decoder.decode_rest(RestPath.LEVERAGE_BRACKET, descending, None, RECV)
    # Nothing of the refused body stayed: good brackets afterwards make the instrument.
    good = [{"symbol": "BTCUSDT", "brackets": [
        {"notionalCap": 50_000, "maintMarginRatio": 0.004, "cum": 0, "initialLeverage": 125}]}]
    [update] = decoder.decode_rest(RestPath.LEVERAGE_BRACKET, good, None, RECV)
    assert isinstance(update, InstrumentUpdate)
    assert update.instrument.tiers[0].max_size == 50_000


@pytest.mark.parametrize("line", [b"", b"not json", b"[]", b'{"recv_ts": 1}',
                                  b'{"recv_ts": -1, "frame": {}}',
                                  b'{"recv_ts": 1, "rest": 5, "body": {}}'])
def test_bad_recording_lines_are_refused_or_empty(line: bytes) -> None:
    decoder = BinanceDecoder()
    if not line:
        assert decoder.decode_line(line) == []
        return
    with pytest.raises(BadInput):
        decoder.decode_line(line)


def test_an_account_answer_without_the_exchanges_figures_has_none() -> None:
    # A replay server's answer after pushes (adapters/binance/replay_server.py, overlay):
    # the wallets stand, the figures are left out, and nothing is compared with them.
    [balances] = BinanceDecoder().decode_rest(RestPath.ACCOUNT, {
        "assets": [{"asset": "USDT", "walletBalance": "1500", "crossWalletBalance": "1500"}],
        "positions": []}, "main", RECV)
    assert isinstance(balances, BalanceUpdate)
    assert balances.exchange is None and balances.snapshot is True
    assert [(b.currency, b.cash, b.exchange) for b in balances.balances] == [
        ("USDT", 1500.0, None)]
