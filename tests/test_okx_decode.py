"""OKX v5 decoder: one test per documented frame shape, asserting the events' content.

Frames follow the push and response examples of https://www.okx.com/docs-v5/en/ (string
numbers, the usual fields), with values changed to a consistent BTC/ETH USDT-margined book.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import orjson
import pytest

from adapters.okx.decode import OkxDecoder, RestPath
from monitor.core.errors import BadInput
from monitor.core.events import (
    UNTIMED,
    AccountConfigUpdate,
    AccountMode,
    BalanceUpdate,
    BorrowTiersUpdate,
    CollateralTiersUpdate,
    CurrencyBalance,
    ExchangeAccountFigures,
    ExchangePositionFigures,
    IndexPrice,
    InstrumentUpdate,
    MarkPrice,
    Order,
    OrdersSnapshot,
    OrderUpdate,
    Position,
    PositionSnapshot,
    PositionUpdate,
)
from monitor.core.instruments import BorrowTier, CollateralTier, CollateralTiers, Instrument, Tier

RECV = 1_700_000_000_500
ACCOUNT = "main"
INFINITY = float("inf")


def line(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record)


def public_line(frame: Any, recv_ms: int = RECV) -> bytes:
    return line({"recv_ts": recv_ms, "frame": frame})


def private_line(frame: Any, recv_ms: int = RECV, account: str = ACCOUNT) -> bytes:
    return line({"recv_ts": recv_ms, "account": account, "frame": frame})


def rest_line(path: str, body: Any, account: str | None = None) -> bytes:
    record: dict[str, Any] = {"recv_ts": RECV, "rest": path, "body": body}
    if account is not None:
        record["account"] = account
    return line(record)


def ok(data: list[dict[str, Any]]) -> dict[str, Any]:
    return {"code": "0", "msg": "", "data": data}


# --- frames -------------------------------------------------------------------------------


def mark_price_push(inst_id: str = "BTC-USDT-SWAP", mark: Any = "42133.7") -> dict[str, Any]:
    return {
        "arg": {"channel": "mark-price", "instId": inst_id},
        "data": [{"instType": "SWAP", "instId": inst_id, "markPx": mark, "ts": "1700000000123"}],
    }


def swap_instrument(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "alias": "",
        "auctionEndTime": "",
        "baseCcy": "",
        "category": "1",
        "contTdSwTime": "",
        "ctMult": "1",
        "ctType": "linear",
        "ctVal": "0.01",
        "ctValCcy": "BTC",
        "expTime": "",
        "futureSettlement": False,
        "groupId": "2",
        "instFamily": "BTC-USDT",
        "instId": "BTC-USDT-SWAP",
        "instIdCode": 10459,
        "instType": "SWAP",
        "lever": "100",
        "listTime": "1573557408000",
        "lotSz": "0.01",
        "maxIcebergSz": "100000000.0000000000000000",
        "maxLmtAmt": "20000000",
        "maxLmtSz": "100000000",
        "maxMktAmt": "",
        "maxMktSz": "12000",
        "maxStopSz": "12000",
        "maxTriggerSz": "100000000.0000000000000000",
        "maxTwapSz": "100000000.0000000000000000",
        "minSz": "0.01",
        "openType": "",
        "optType": "",
        "preMktSwTime": "",
        "quoteCcy": "",
        "ruleType": "normal",
        "settleCcy": "USDT",
        "state": "live",
        "stk": "",
        "tickSz": "0.1",
        "tradeQuoteCcyList": [],
        "uly": "BTC-USDT",
        "upcChg": [],
    }
    row.update(overrides)
    return row


INVERSE_SWAP = swap_instrument(
    ctType="inverse",
    ctVal="100",
    ctValCcy="USD",
    groupId="1",
    instFamily="BTC-USD",
    instId="BTC-USD-SWAP",
    lever="125",
    lotSz="1",
    minSz="1",
    settleCcy="BTC",
    uly="BTC-USD",
)
SPOT_INSTRUMENT = swap_instrument(
    baseCcy="BTC",
    ctMult="",
    ctType="",
    ctVal="",
    ctValCcy="",
    instFamily="",
    instId="BTC-USDT",
    instType="SPOT",
    lever="10",
    lotSz="0.00000001",
    quoteCcy="USDT",
    settleCcy="",
    uly="",
)
# A listing announcement: contract fields stay "" until shortly before listTime.
PREOPEN_SWAP = swap_instrument(
    ctMult="",
    ctType="",
    ctVal="",
    ctValCcy="",
    instFamily="NEW-USDT",
    instId="NEW-USDT-SWAP",
    lever="",
    lotSz="",
    settleCcy="",
    state="preopen",
    uly="NEW-USDT",
)


def tier_row(family: str, tier: int, min_size: str, max_size: str, rate: str) -> dict[str, Any]:
    return {
        "baseMaxLoan": "",
        "imr": "0.01",
        "instFamily": family,
        "instId": "",
        "maxLever": "100",
        "maxSz": max_size,
        "minSz": min_size,
        "mmr": rate,
        "optMgnFactor": "0",
        "quoteMaxLoan": "",
        "tier": str(tier),
        "uly": family,
    }


BTC_USDT_TIERS = [
    # Listed out of order on purpose: the tier number orders them.
    tier_row("BTC-USDT", 2, "5000", "10000", "0.005"),
    tier_row("BTC-USDT", 1, "0", "5000", "0.004"),
    tier_row("BTC-USDT", 3, "10000", "", "0.01"),
]
SWAP_TIERS_PATH = f"{RestPath.POSITION_TIERS}?instType=SWAP&tdMode=cross&instFamily=BTC-USDT"

BTC_USDT_SWAP = Instrument(
    inst_id="BTC-USDT-SWAP",
    contract_type="linear",
    contract_value=0.01,
    contract_multiplier=1.0,
    contract_value_currency="BTC",
    settle_currency="USDT",
    tiers=(Tier(5000.0, 0.004), Tier(10000.0, 0.005), Tier(INFINITY, 0.01)),
    max_leverage=100.0,
    lot_size=0.01,
)


def order_row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "accFillSz": "0",
        "algoClOrdId": "",
        "algoId": "",
        "amendResult": "",
        "amendSource": "",
        "attachAlgoClOrdId": "",
        "attachAlgoOrds": [],
        "avgPx": "0",
        "cTime": "1700000000000",
        "cancelSource": "",
        "category": "normal",
        "ccy": "",
        "clOrdId": "guard1",
        "code": "0",
        "execType": "",
        "fee": "0",
        "feeCcy": "USDT",
        "fillFee": "0",
        "fillFeeCcy": "",
        "fillNotionalUsd": "",
        "fillPx": "",
        "fillSz": "0",
        "fillTime": "",
        "instId": "BTC-USDT-SWAP",
        "instType": "SWAP",
        "isTpLimit": "false",
        "lastPx": "42130.1",
        "lever": "10",
        "linkedAlgoOrd": {"algoId": ""},
        "msg": "",
        "notionalUsd": "4200.14",
        "ordId": "680800019749904384",
        "ordType": "limit",
        "pnl": "0",
        "posSide": "net",
        "px": "42000.1",
        "pxType": "",
        "pxUsd": "",
        "pxVol": "",
        "quickMgnType": "",
        "rebate": "0",
        "rebateCcy": "USDT",
        "reduceOnly": "false",
        "reqId": "",
        "side": "buy",
        "slOrdPx": "",
        "slTriggerPx": "",
        "slTriggerPxType": "",
        "source": "",
        "state": "live",
        "stpId": "",
        "stpMode": "cancel_maker",
        "sz": "10",
        "tag": "",
        "tdMode": "cross",
        "tgtCcy": "",
        "tpOrdPx": "",
        "tpTriggerPx": "",
        "tpTriggerPxType": "",
        "tradeId": "",
        "tradeQuoteCcy": "",
        "uTime": "1700000000200",
    }
    row.update(overrides)
    return row


def orders_push(*rows: dict[str, Any]) -> dict[str, Any]:
    return {
        "arg": {"channel": "orders", "instType": "ANY", "uid": "614488474791936"},
        "data": list(rows),
    }


def position_row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "adl": "1",
        "availPos": "",
        "avgPx": "41250.5",
        "baseBal": "",
        "baseBorrowed": "",
        "baseInterest": "",
        "bePx": "41290.1",
        "bizRefId": "",
        "bizRefType": "",
        "cTime": "1699990000000",
        "ccy": "USDT",
        "clSpotInUseAmt": "",
        "closeOrderAlgo": [],
        "deltaBS": "",
        "deltaPA": "",
        "fee": "-1.65",
        "fundingFee": "-0.42",
        "gammaBS": "",
        "gammaPA": "",
        "idxPx": "42120.3",
        "imr": "421.337",
        "instId": "BTC-USDT-SWAP",
        "instType": "SWAP",
        "interest": "",
        "last": "42130.1",
        "lever": "10",
        "liab": "",
        "liabCcy": "",
        "liqPenalty": "0",
        "liqPx": "",
        "margin": "",
        "markPx": "42133.7",
        "maxSpotInUseAmt": "",
        "mgnMode": "cross",
        "mgnRatio": "58.1",
        "mmr": "16.853",
        "notionalUsd": "4213.37",
        "optVal": "",
        "pTime": "1700000000400",
        "pendingCloseOrdLiabVal": "",
        "pnl": "0",
        "pos": "10",
        "posCcy": "",
        "posId": "680800019749904390",
        "posSide": "net",
        "quoteBal": "",
        "quoteBorrowed": "",
        "quoteInterest": "",
        "realizedPnl": "-2.07",
        "spotInUseAmt": "",
        "spotInUseCcy": "",
        "thetaBS": "",
        "thetaPA": "",
        "tradeId": "1299470",
        "uTime": "1700000000300",
        "upl": "88.32",
        "uplLastPx": "87.96",
        "uplRatio": "0.2141",
        "uplRatioLastPx": "0.2132",
        "usdPx": "",
        "vegaBS": "",
        "vegaPA": "",
    }
    row.update(overrides)
    return row


ETH_SHORT = position_row(
    avgPx="2210.4",
    instId="ETH-USDT-SWAP",
    lever="5",
    pTime="1700000000100",
    pos="-25",
    posId="680800019749904391",
    uTime="1699999000000",
)
MARGIN_POSITION = position_row(
    avgPx="42000",
    ccy="USDT",
    instId="BTC-USDT",
    instType="MARGIN",
    pos="0.5",
    posCcy="BTC",
    posSide="net",
)


def positions_push(
    event_type: str, *rows: dict[str, Any], page: int | None = None, last: bool | None = None
) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "arg": {"channel": "positions", "instType": "ANY", "uid": "614488474791936"},
        "eventType": event_type,
        "data": list(rows),
    }
    if page is not None:
        frame["curPage"] = page
    if last is not None:
        frame["lastPage"] = last
    return frame


def account_detail(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "accAvgPx": "",
        "availBal": "4734.37",
        "availEq": "4734.37",
        "borrowFroz": "0",
        "cashBal": "4750.42",
        "ccy": "USDT",
        "clSpotInUseAmt": "",
        "coinUsdPrice": "0.99927",
        "colBorrAutoConversion": "0",
        "collateralEnabled": True,
        "collateralRestrict": False,
        "crossLiab": "0",
        "disEq": "4889.37",
        "eq": "4838.74",
        "eqUsd": "4835.21",
        "fixedBal": "0",
        "frozenBal": "16.05",
        "imr": "",
        "interest": "",
        "isoEq": "0",
        "isoLiab": "0",
        "isoUpl": "0",
        "liab": "",
        "maxLoan": "1453.92",
        "maxSpotInUseAmt": "",
        "mgnRatio": "",
        "mmr": "",
        "notionalLever": "",
        "openAvgPx": "",
        "ordFrozen": "16.05",
        "rewardBal": "0",
        "smtSyncEq": "0",
        "spotBal": "",
        "spotCopyTradingEq": "0",
        "spotInUseAmt": "",
        "spotIsoBal": "0",
        "spotUpl": "",
        "spotUplRatio": "",
        "stgyEq": "0",
        "totalPnl": "",
        "totalPnlRatio": "",
        "twap": "0",
        "uTime": "1700000000250",
        "upl": "88.32",
        "uplLiab": "0",
    }
    row.update(overrides)
    return row


BTC_DEBT = account_detail(
    availBal="0",
    availEq="-0.0502",
    cashBal="-0.05",
    ccy="BTC",
    coinUsdPrice="42120.3",
    eq="-0.0502",
    liab="0.0502",
    interest="0.0002",
    upl="0",
)


def account_row(*details: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "adjEq": "2718.86",
        "availEq": "2600.1",
        "borrowFroz": "0",
        "details": list(details),
        "imr": "421.337",
        "isoEq": "0",
        "mgnRatio": "62.4",
        "mmr": "43.571",
        "notionalUsd": "4213.37",
        "notionalUsdForBorrow": "2106.02",
        "notionalUsdForFutures": "0",
        "notionalUsdForOption": "0",
        "notionalUsdForSwap": "4213.37",
        "ordFroz": "0",
        "totalEq": "2730.12",
        "uTime": "1700000000260",
        "upl": "88.32",
    }
    row.update(overrides)
    return row


def account_push(
    event_type: str, *rows: dict[str, Any], page: int | None = None, last: bool | None = None
) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "arg": {"channel": "account", "uid": "614488474791936"},
        "eventType": event_type,
        "data": list(rows),
    }
    if page is not None:
        frame["curPage"] = page
    if last is not None:
        frame["lastPage"] = last
    return frame


# --- public market data -------------------------------------------------------------------


def test_mark_price_push() -> None:
    events = OkxDecoder().decode_line(public_line(mark_price_push()))
    assert events == [MarkPrice("BTC-USDT-SWAP", 42133.7, 1_700_000_000_123, RECV)]


def test_mark_price_push_with_several_rows_through_decode_frame() -> None:
    frame = mark_price_push()
    frame["data"].append(
        {"instType": "SWAP", "instId": "ETH-USDT-SWAP", "markPx": "2231.05", "ts": "1700000000124"}
    )
    events = OkxDecoder().decode_frame(frame, None, RECV)
    assert events == [
        MarkPrice("BTC-USDT-SWAP", 42133.7, 1_700_000_000_123, RECV),
        MarkPrice("ETH-USDT-SWAP", 2231.05, 1_700_000_000_124, RECV),
    ]


def test_a_message_is_decoded_from_its_text_like_the_frame_it_holds() -> None:
    # The live feed delivers messages unparsed; decode_message parses, then decodes.
    decoder = OkxDecoder()
    for frame in (mark_price_push(), {"event": "subscribe", "arg": {"channel": "mark-price"}},
                  {"arg": {"channel": "no-such-channel"}, "data": []}):
        text = orjson.dumps(frame).decode()
        assert decoder.decode_message(text, None, RECV) == decoder.decode_frame(frame, None, RECV)
    assert decoder.decode_message(orjson.dumps(mark_price_push()).decode(), None, RECV) == [
        MarkPrice("BTC-USDT-SWAP", 42133.7, 1_700_000_000_123, RECV)]
    assert decoder.decode_message('"pong"', None, RECV) == []


@pytest.mark.parametrize("text", ["{oops", "", "pong", '{"arg":{"channel":"mark-price"'])
def test_a_message_that_is_not_json_is_bad_input(text: str) -> None:
    with pytest.raises(BadInput) as raised:
        OkxDecoder().decode_message(text, None, RECV)
    assert raised.value.reason == "frame is not JSON"


def test_a_message_with_a_bad_receive_time_is_bad_input() -> None:
    with pytest.raises(BadInput, match="recv"):
        OkxDecoder().decode_message(orjson.dumps(mark_price_push()).decode(), None, -1)


def test_mark_price_events_are_ordinary_frozen_events() -> None:
    # The hot path builds MarkPrice without its __init__; the result must be the same thing.
    (event,) = OkxDecoder().decode_line(public_line(mark_price_push()))
    assert type(event) is MarkPrice
    assert hash(event) == hash(MarkPrice("BTC-USDT-SWAP", 42133.7, 1_700_000_000_123, RECV))
    assert repr(event) == repr(MarkPrice("BTC-USDT-SWAP", 42133.7, 1_700_000_000_123, RECV))
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.price = 1.0  # type: ignore[misc]


def test_index_tickers_push() -> None:
    frame = {
        "arg": {"channel": "index-tickers", "instId": "BTC-USDT"},
        "data": [
            {
                "instId": "BTC-USDT",
                "idxPx": "42120.3",
                "high24h": "42890.0",
                "low24h": "41002.5",
                "open24h": "41500.2",
                "sodUtc0": "41870.4",
                "sodUtc8": "41650.9",
                "ts": "1700000000111",
            }
        ],
    }
    events = OkxDecoder().decode_line(public_line(frame))
    assert events == [IndexPrice("BTC", "USDT", 42120.3, 1_700_000_000_111, RECV)]


# --- instruments and position tiers -------------------------------------------------------


def test_instruments_then_tiers() -> None:
    decoder = OkxDecoder()
    body = ok([swap_instrument(), INVERSE_SWAP, SPOT_INSTRUMENT, PREOPEN_SWAP])
    # Specs alone are not instruments yet: OKX instruments carry no maintenance tiers.
    assert decoder.decode_line(rest_line(RestPath.INSTRUMENTS + "?instType=SWAP", body)) == []
    events = decoder.decode_line(rest_line(SWAP_TIERS_PATH, ok(BTC_USDT_TIERS)))
    assert events == [InstrumentUpdate(BTC_USDT_SWAP, UNTIMED, RECV)]


def test_tiers_then_instruments_channel() -> None:
    decoder = OkxDecoder()
    assert decoder.decode_rest(SWAP_TIERS_PATH, ok(BTC_USDT_TIERS), None, RECV) == []
    push = {"arg": {"channel": "instruments", "instType": "SWAP"}, "data": [swap_instrument()]}
    events = decoder.decode_frame(push, None, RECV + 1)
    assert events == [InstrumentUpdate(BTC_USDT_SWAP, UNTIMED, RECV + 1)]


def test_resent_spec_and_tiers_are_emitted_again() -> None:
    decoder = OkxDecoder()
    decoder.decode_rest(RestPath.INSTRUMENTS, ok([swap_instrument()]), None, RECV)
    decoder.decode_rest(SWAP_TIERS_PATH, ok(BTC_USDT_TIERS), None, RECV)
    # A lot size change on the instruments channel, then new tiers (a huge last maxSz).
    relisted = decoder.decode_rest(
        RestPath.INSTRUMENTS, ok([swap_instrument(lotSz="0.1", lever="75")]), None, RECV + 1
    )
    changed = dataclasses.replace(BTC_USDT_SWAP, lot_size=0.1, max_leverage=75.0)
    assert relisted == [InstrumentUpdate(changed, UNTIMED, RECV + 1)]
    new_tiers = [
        tier_row("BTC-USDT", 1, "0", "4000", "0.004"),
        tier_row("BTC-USDT", 2, "4000", "999999999999", "0.008"),
    ]
    retiered = decoder.decode_rest(SWAP_TIERS_PATH, ok(new_tiers), None, RECV + 2)
    expected = dataclasses.replace(
        changed, tiers=(Tier(4000.0, 0.004), Tier(999_999_999_999.0, 0.008))
    )
    assert retiered == [InstrumentUpdate(expected, UNTIMED, RECV + 2)]


def test_tiers_are_kept_per_contract_type() -> None:
    decoder = OkxDecoder()
    quarterly = swap_instrument(
        instId="BTC-USDT-240329", instType="FUTURES", expTime="1711699200000", alias="quarter"
    )
    decoder.decode_rest(RestPath.INSTRUMENTS, ok([swap_instrument(), quarterly]), None, RECV)
    # Swap tiers: only the swap. (Tier rows do not say their instType; the query does.)
    swap_events = decoder.decode_rest(SWAP_TIERS_PATH, ok(BTC_USDT_TIERS), None, RECV)
    assert swap_events == [InstrumentUpdate(BTC_USDT_SWAP, UNTIMED, RECV)]
    # Tiers with no instType known apply to the family's other contracts, not the swap.
    futures_tiers = [tier_row("BTC-USDT", 1, "0", "", "0.006")]
    untyped = decoder.decode_rest(RestPath.POSITION_TIERS, ok(futures_tiers), None, RECV + 1)
    expected = Instrument(
        inst_id="BTC-USDT-240329",
        contract_type="linear",
        contract_value=0.01,
        contract_multiplier=1.0,
        contract_value_currency="BTC",
        settle_currency="USDT",
        tiers=(Tier(INFINITY, 0.006),),
        max_leverage=100.0,
        lot_size=0.01,
    )
    assert untyped == [InstrumentUpdate(expected, UNTIMED, RECV + 1)]


def test_isolated_tiers_are_ignored() -> None:
    decoder = OkxDecoder()
    decoder.decode_rest(RestPath.INSTRUMENTS, ok([swap_instrument()]), None, RECV)
    path = f"{RestPath.POSITION_TIERS}?instType=SWAP&tdMode=isolated&instFamily=BTC-USDT"
    assert decoder.decode_rest(path, ok(BTC_USDT_TIERS), None, RECV) == []


def test_inverse_instrument() -> None:
    decoder = OkxDecoder()
    tiers = [tier_row("BTC-USD", 1, "0", "", "0.005")]
    decoder.decode_rest(
        f"{RestPath.POSITION_TIERS}?instType=SWAP&tdMode=cross&instFamily=BTC-USD",
        ok(tiers),
        None,
        RECV,
    )
    events = decoder.decode_rest(RestPath.INSTRUMENTS, ok([INVERSE_SWAP]), None, RECV)
    expected = Instrument(
        inst_id="BTC-USD-SWAP",
        contract_type="inverse",
        contract_value=100.0,
        contract_multiplier=1.0,
        contract_value_currency="USD",
        settle_currency="BTC",
        tiers=(Tier(INFINITY, 0.005),),
        max_leverage=125.0,
        lot_size=1.0,
    )
    assert events == [InstrumentUpdate(expected, UNTIMED, RECV)]


def test_rejected_instruments_body_changes_nothing() -> None:
    decoder = OkxDecoder()
    body = ok([swap_instrument(), swap_instrument(instId="ETH-USDT-SWAP", ctVal="abc")])
    with pytest.raises(BadInput, match="instruments ETH-USDT-SWAP ctVal 'abc' is not a number"):
        decoder.decode_rest(RestPath.INSTRUMENTS, body, None, RECV)
    # The valid row of the rejected body was not remembered either.
    assert decoder.decode_rest(SWAP_TIERS_PATH, ok(BTC_USDT_TIERS), None, RECV) == []


# --- orders -------------------------------------------------------------------------------

LIMIT_BUY = Order(
    order_id="680800019749904384",
    inst_id="BTC-USDT-SWAP",
    side="buy",
    price=42000.1,
    size=10.0,
    filled=0.0,
    reduce_only=False,
    leverage=10.0,
)


@pytest.mark.parametrize(
    ("overrides", "order", "live"),
    [
        pytest.param({}, LIMIT_BUY, True, id="limit-live"),
        pytest.param(
            {
                "accFillSz": "4",
                "avgPx": "42000.1",
                "fillPx": "42000.1",
                "fillSz": "4",
                "fillTime": "1700000000190",
                "state": "partially_filled",
                "tradeId": "1299470",
            },
            dataclasses.replace(LIMIT_BUY, filled=4.0),
            True,
            id="partially-filled",
        ),
        pytest.param(
            {"accFillSz": "10", "avgPx": "42000.1", "fillSz": "6", "state": "filled"},
            dataclasses.replace(LIMIT_BUY, filled=10.0),
            False,
            id="filled",
        ),
        pytest.param({"cancelSource": "1", "state": "canceled"}, LIMIT_BUY, False, id="canceled"),
        pytest.param(
            {"cancelSource": "39", "state": "mmp_canceled", "ordType": "post_only"},
            LIMIT_BUY,
            False,
            id="mmp-canceled",
        ),
        pytest.param(
            {"ordType": "market", "px": "", "side": "sell", "sz": "3", "lever": ""},
            dataclasses.replace(LIMIT_BUY, side="sell", price=None, size=3.0, leverage=None),
            True,
            id="market-empty-px",
        ),
        pytest.param(
            {"ordType": "optimal_limit_ioc", "px": "", "accFillSz": "1", "state": "filled"},
            dataclasses.replace(LIMIT_BUY, price=None, filled=1.0),
            False,
            id="optimal-limit-ioc",
        ),
        pytest.param(
            {"reduceOnly": "true", "side": "sell", "px": "45000", "ordType": "post_only"},
            dataclasses.replace(LIMIT_BUY, side="sell", price=45000.0, reduce_only=True),
            True,
            id="reduce-only",
        ),
    ],
)
def test_orders_channel(overrides: dict[str, Any], order: Order, live: bool) -> None:
    events = OkxDecoder().decode_line(private_line(orders_push(order_row(**overrides))))
    # clOrdId, state and avgPx ("0" before the first fill) are what the executor follows.
    state = overrides.get("state", "live")
    average = float(overrides["avgPx"]) if overrides.get("avgPx", "0") != "0" else None
    assert events == [OrderUpdate(ACCOUNT, order, live, 1_700_000_000_200, RECV,
                                  "guard1", state, average)]


def test_orders_channel_skips_spot_orders() -> None:
    # The doc's own example: a SPOT order, lever "0", posSide "". Out of scope.
    spot = order_row(instId="BTC-USDT", instType="SPOT", lever="0", posSide="", tdMode="cash")
    events = OkxDecoder().decode_frame(orders_push(spot, order_row()), ACCOUNT, RECV)
    assert events == [OrderUpdate(ACCOUNT, LIMIT_BUY, True, 1_700_000_000_200, RECV,
                                  "guard1", "live")]


def test_orders_pending_rest() -> None:
    body = ok(
        [
            order_row(),
            order_row(
                instId="ETH-USDT-SWAP",
                ordId="680800019749904399",
                px="2300",
                reduceOnly="true",
                side="sell",
                state="partially_filled",
                accFillSz="2",
                sz="25",
                lever="5",
            ),
            order_row(instId="ETH-USDT", instType="SPOT", lever="", ordId="1"),
        ]
    )
    events = OkxDecoder().decode_line(rest_line(RestPath.ORDERS_PENDING, body, ACCOUNT))
    short_exit = Order("680800019749904399", "ETH-USDT-SWAP", "sell", 2300.0, 25.0, 2.0, True, 5.0)
    assert events == [OrdersSnapshot(ACCOUNT, (LIMIT_BUY, short_exit), UNTIMED, RECV)]


def test_orders_pending_error_response_is_bad_input() -> None:
    body = {"code": "50111", "msg": "Invalid OK-ACCESS-KEY", "data": []}
    with pytest.raises(BadInput, match="returned code '50111'"):
        OkxDecoder().decode_rest(RestPath.ORDERS_PENDING, body, ACCOUNT, RECV)


def test_orders_frame_is_all_or_nothing() -> None:
    frame = orders_push(order_row(), order_row(ordId="2", side="hold"))
    with pytest.raises(BadInput, match="side 'hold' is not buy or sell"):
        OkxDecoder().decode_frame(frame, ACCOUNT, RECV)


def test_orders_carry_position_side_and_margin_mode() -> None:
    # Hedge mode: a buy on the short side closes it (SPEC 1.2); isolated margin via tdMode.
    hedged = order_row(posSide="short", tdMode="isolated")
    one_way = order_row(ordId="2", posSide="")  # "" where posSide does not apply: net
    untyped = order_row(ordId="3")
    del untyped["tdMode"]  # a recording from before riskmon read tdMode: cross
    events = OkxDecoder().decode_frame(orders_push(hedged, one_way, untyped), ACCOUNT, RECV)
    assert [event.order for event in events if isinstance(event, OrderUpdate)] == [
        dataclasses.replace(LIMIT_BUY, position_side="short", margin_mode="isolated"),
        dataclasses.replace(LIMIT_BUY, order_id="2"),
        dataclasses.replace(LIMIT_BUY, order_id="3"),
    ]


def test_spot_trade_modes_are_skipped_and_option_orders_passed_on() -> None:
    # tdMode cash (spot) and spot_isolated (spot copy trading) are spot orders even on a
    # margin-looking instType; OPTION orders go to the engine, which has no spec for them.
    spot_isolated = order_row(instId="BTC-USDT", instType="MARGIN", tdMode="spot_isolated")
    cash = order_row(instId="ETH-USDT", instType="", tdMode="cash", ordId="4")
    option = order_row(instId="BTC-USD-240329-50000-C", instType="OPTION", ordId="5",
                       px="0.02", lever="")
    body = ok([spot_isolated, cash, option])
    events = OkxDecoder().decode_rest(RestPath.ORDERS_PENDING, body, ACCOUNT, RECV)
    expected = dataclasses.replace(LIMIT_BUY, order_id="5", inst_id="BTC-USD-240329-50000-C",
                                   price=0.02, leverage=None)
    assert events == [OrdersSnapshot(ACCOUNT, (expected,), UNTIMED, RECV)]


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"posSide": "both"}, "posSide 'both' is not net, long or short"),
    ({"tdMode": "portfolio"}, "tdMode 'portfolio' is not cross or isolated"),
])
def test_bad_order_modes(overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(BadInput) as raised:
        OkxDecoder().decode_frame(orders_push(order_row(**overrides)), ACCOUNT, RECV)
    assert reason in raised.value.reason


# --- positions ----------------------------------------------------------------------------

# The exchange's own figures of position_row (mgnRatio, mmr, imr), kept for SPEC 1.9.
POSITION_FIGURES = ExchangePositionFigures(margin_ratio=58.1, maint_margin=16.853,
                                           init_margin=421.337)
BTC_LONG = Position("BTC-USDT-SWAP", 10.0, 41250.5, 10.0, exchange=POSITION_FIGURES)
ETH_SHORT_POSITION = Position("ETH-USDT-SWAP", -25.0, 2210.4, 5.0, exchange=POSITION_FIGURES)


def test_positions_event_update() -> None:
    closed = position_row(
        avgPx="", instId="SOL-USDT-SWAP", pos="0", pTime="", uTime="1700000000350", upl=""
    )
    frame = positions_push("event_update", position_row(), closed, MARGIN_POSITION)
    events = OkxDecoder().decode_line(private_line(frame))
    # event time: the latest of the rows' uTime and pTime (the push time).
    expected = (BTC_LONG, Position("SOL-USDT-SWAP", 0.0, 0.0, 10.0, exchange=POSITION_FIGURES))
    assert events == [PositionUpdate(ACCOUNT, expected, 1_700_000_000_400, RECV)]


def test_positions_single_page_snapshot() -> None:
    frame = positions_push("snapshot", position_row(), ETH_SHORT, page=1, last=True)
    events = OkxDecoder().decode_line(private_line(frame))
    positions = (BTC_LONG, ETH_SHORT_POSITION)
    assert events == [PositionSnapshot(ACCOUNT, positions, 1_700_000_000_400, RECV)]


def test_positions_snapshot_without_pagination_is_one_complete_page() -> None:
    frame = positions_push("snapshot", ETH_SHORT)
    events = OkxDecoder().decode_frame(frame, ACCOUNT, RECV)
    assert events == [PositionSnapshot(ACCOUNT, (ETH_SHORT_POSITION,), 1_700_000_000_100, RECV)]


def test_empty_positions_snapshot_closes_everything_at_receive_time() -> None:
    frame = positions_push("snapshot", page=1, last=True)
    assert OkxDecoder().decode_frame(frame, ACCOUNT, RECV) == [
        PositionSnapshot(ACCOUNT, (), RECV, RECV)
    ]


def test_positions_multi_page_snapshot() -> None:
    decoder = OkxDecoder()
    first = positions_push("snapshot", position_row(), page=1, last=False)
    second = positions_push("snapshot", ETH_SHORT, page=2, last=True)
    assert decoder.decode_line(private_line(first)) == []
    events = decoder.decode_line(private_line(second, recv_ms=RECV + 3))
    positions = (BTC_LONG, ETH_SHORT_POSITION)
    assert events == [PositionSnapshot(ACCOUNT, positions, 1_700_000_000_400, RECV + 3)]


def test_tainted_multi_page_snapshot_yields_an_update() -> None:
    decoder = OkxDecoder()
    first = positions_push("snapshot", ETH_SHORT, page=1, last=False)
    broken = positions_push("snapshot", position_row(instId="SOL-USDT-SWAP", pos="nan"), page=2)
    broken["lastPage"] = False
    assert decoder.decode_line(private_line(first)) == []
    reason = "positions SOL-USDT-SWAP cross net pos 'nan' is not a finite number"
    with pytest.raises(BadInput, match=reason):
        decoder.decode_line(private_line(broken))
    last = positions_push("snapshot", position_row(), page=3, last=True)
    events = decoder.decode_line(private_line(last))
    # SOL's page was lost: a snapshot would close SOL, so the survivors come as an update.
    positions = (ETH_SHORT_POSITION, BTC_LONG)
    assert events == [PositionUpdate(ACCOUNT, positions, 1_700_000_000_400, RECV)]
    # The next snapshot is complete again.
    again = decoder.decode_frame(positions_push("snapshot", ETH_SHORT, page=1), ACCOUNT, RECV)
    assert again == [PositionSnapshot(ACCOUNT, (ETH_SHORT_POSITION,), 1_700_000_000_100, RECV)]


def test_snapshot_with_a_missing_page_yields_an_update() -> None:
    # Page 2 never decoded (a truncated line is rejected before its channel is known).
    decoder = OkxDecoder()
    decoder.decode_frame(positions_push("snapshot", ETH_SHORT, page=1, last=False), ACCOUNT, RECV)
    with pytest.raises(BadInput, match="not valid JSON"):
        decoder.decode_line(private_line(positions_push("snapshot", page=2, last=False))[:40])
    last = positions_push("snapshot", position_row(), page=3, last=True)
    events = decoder.decode_frame(last, ACCOUNT, RECV)
    positions = (ETH_SHORT_POSITION, BTC_LONG)
    assert events == [PositionUpdate(ACCOUNT, positions, 1_700_000_000_400, RECV)]


def test_snapshot_with_a_rejected_first_page_yields_an_update() -> None:
    decoder = OkxDecoder()
    # An unfinished older snapshot must not merge with the new one.
    decoder.decode_frame(positions_push("snapshot", ETH_SHORT, page=1, last=False), ACCOUNT, RECV)
    unknown = positions_push("snapshot", position_row(mgnMode="portfolio"), page=1, last=False)
    with pytest.raises(BadInput, match="mgnMode 'portfolio' is not cross or isolated"):
        decoder.decode_frame(unknown, ACCOUNT, RECV)
    last = positions_push("snapshot", position_row(), page=2, last=True)
    events = decoder.decode_frame(last, ACCOUNT, RECV)
    assert events == [PositionUpdate(ACCOUNT, (BTC_LONG,), 1_700_000_000_400, RECV)]


def test_rejected_single_page_snapshot_leaves_nothing_pending() -> None:
    decoder = OkxDecoder()
    decoder.decode_frame(positions_push("snapshot", ETH_SHORT, page=1, last=False), ACCOUNT, RECV)
    broken = positions_push("snapshot", position_row(uTime="yesterday"), page=1, last=True)
    with pytest.raises(BadInput, match="uTime 'yesterday' is not a millisecond timestamp"):
        decoder.decode_frame(broken, ACCOUNT, RECV)
    # A page 2 now has no snapshot to belong to: its positions come as an update.
    orphan = positions_push("snapshot", position_row(), page=2, last=True)
    events = decoder.decode_frame(orphan, ACCOUNT, RECV)
    assert events == [PositionUpdate(ACCOUNT, (BTC_LONG,), 1_700_000_000_400, RECV)]


def test_event_update_between_pages_does_not_break_the_snapshot() -> None:
    decoder = OkxDecoder()
    decoder.decode_frame(positions_push("snapshot", ETH_SHORT, page=1, last=False), ACCOUNT, RECV)
    update = decoder.decode_frame(positions_push("event_update", position_row()), ACCOUNT, RECV)
    assert update == [PositionUpdate(ACCOUNT, (BTC_LONG,), 1_700_000_000_400, RECV)]
    with pytest.raises(BadInput, match="pos is empty"):
        decoder.decode_frame(positions_push("event_update", position_row(pos="")), ACCOUNT, RECV)
    last = decoder.decode_frame(positions_push("snapshot", page=2, last=True), ACCOUNT, RECV)
    assert last == [PositionSnapshot(ACCOUNT, (ETH_SHORT_POSITION,), 1_700_000_000_100, RECV)]


def test_snapshot_pages_are_kept_per_account() -> None:
    decoder = OkxDecoder()
    decoder.decode_frame(positions_push("snapshot", ETH_SHORT, page=1, last=False), "a", RECV)
    decoder.decode_frame(positions_push("snapshot", position_row(), page=1, last=False), "b", RECV)
    events_a = decoder.decode_frame(positions_push("snapshot", page=2, last=True), "a", RECV)
    events_b = decoder.decode_frame(positions_push("snapshot", page=2, last=True), "b", RECV)
    assert events_a == [PositionSnapshot("a", (ETH_SHORT_POSITION,), 1_700_000_000_100, RECV)]
    assert events_b == [PositionSnapshot("b", (BTC_LONG,), 1_700_000_000_400, RECV)]


def test_hedge_mode_positions_are_one_per_side_and_a_short_is_negative() -> None:
    # Long/short mode (docs: "Positions channel", posSide long / short): OKX gives each
    # side's size as a positive pos; the short side's contracts are negative (SPEC 1.2).
    long_side = position_row(posSide="long", pos="10")
    short_side = position_row(posSide="short", pos="4", avgPx="42500.5", posId="2")
    frame = positions_push("snapshot", long_side, short_side, page=1, last=True)
    events = OkxDecoder().decode_line(private_line(frame))
    long_position = dataclasses.replace(BTC_LONG, side="long")
    short_position = Position("BTC-USDT-SWAP", -4.0, 42500.5, 10.0, side="short",
                              exchange=POSITION_FIGURES)
    assert events == [PositionSnapshot(ACCOUNT, (long_position, short_position),
                                       1_700_000_000_400, RECV)]


def test_isolated_positions_carry_their_margin_and_cross_ones_none() -> None:
    isolated = position_row(mgnMode="isolated", margin="421.337", mgnRatio="27.5")
    # OKX fills margin for cross rows with "" (or a figure that means nothing there).
    cross = position_row(instId="ETH-USDT-SWAP", margin="12", mgnRatio="", mmr="", imr="")
    closed = position_row(instId="SOL-USDT-SWAP", mgnMode="isolated", pos="0", avgPx="",
                          margin="")
    frame = positions_push("event_update", isolated, cross, closed)
    events = OkxDecoder().decode_frame(frame, ACCOUNT, RECV)
    assert events == [PositionUpdate(ACCOUNT, (
        Position("BTC-USDT-SWAP", 10.0, 41250.5, 10.0, margin_mode="isolated", margin=421.337,
                 exchange=dataclasses.replace(POSITION_FIGURES, margin_ratio=27.5)),
        Position("ETH-USDT-SWAP", 10.0, 41250.5, 10.0),
        Position("SOL-USDT-SWAP", 0.0, 0.0, 10.0, margin_mode="isolated", margin=0.0,
                 exchange=POSITION_FIGURES),
    ), 1_700_000_000_400, RECV)]


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"mgnMode": "isolated", "margin": ""},
     "positions BTC-USDT-SWAP isolated net margin is empty"),
    ({"mgnMode": "isolated", "margin": "-1"}, "margin '-1' must not be negative"),
    ({"mgnMode": ""}, "positions BTC-USDT-SWAP mgnMode '' is not cross or isolated"),
    ({"mgnMode": None}, "mgnMode None is not cross or isolated"),
    ({"posSide": "both"}, "posSide 'both' is not net, long or short"),
    ({"mgnRatio": "high"}, "mgnRatio 'high' is not a number"),
    ({"mmr": "-3"}, "mmr '-3' must not be negative"),
])
def test_bad_position_fields(overrides: dict[str, Any], reason: str) -> None:
    row = position_row(**overrides)
    if overrides.get("mgnMode", "") is None:
        del row["mgnMode"]
    with pytest.raises(BadInput) as raised:
        OkxDecoder().decode_frame(positions_push("event_update", row), ACCOUNT, RECV)
    assert reason in raised.value.reason


def test_option_positions_are_passed_on_and_spot_margin_ones_skipped() -> None:
    # The engine has no spec for options, so it reports the account's risk as unknown;
    # spot-margin borrowing is in the balances (liab, negative cashBal).
    option = position_row(instId="BTC-USD-240329-50000-C", instType="OPTION", avgPx="0.025",
                          pos="-2", lever="", mgnRatio="", mmr="", imr="")
    frame = positions_push("event_update", option, MARGIN_POSITION)
    events = OkxDecoder().decode_frame(frame, ACCOUNT, RECV)
    expected = Position("BTC-USD-240329-50000-C", -2.0, 0.025, None)
    assert events == [PositionUpdate(ACCOUNT, (expected,), 1_700_000_000_400, RECV)]


def test_positions_rest_is_a_snapshot_untimed() -> None:
    # docs: "Trading Account > REST API > Get positions": the rows of the positions channel.
    body = ok([position_row(), ETH_SHORT, MARGIN_POSITION])
    events = OkxDecoder().decode_line(rest_line(RestPath.POSITIONS, body, ACCOUNT))
    assert events == [PositionSnapshot(ACCOUNT, (BTC_LONG, ETH_SHORT_POSITION), UNTIMED, RECV)]
    # No positions at all is a snapshot too: everything held before is closed.
    assert OkxDecoder().decode_rest(RestPath.POSITIONS, ok([]), ACCOUNT, RECV) == [
        PositionSnapshot(ACCOUNT, (), UNTIMED, RECV)]
    with pytest.raises(BadInput, match="/api/v5/account/positions is private data"):
        OkxDecoder().decode_rest(RestPath.POSITIONS, body, None, RECV)
    # A filtered request lists only some positions: an update, which closes nothing.
    filtered = OkxDecoder().decode_rest(f"{RestPath.POSITIONS}?instType=SWAP", body, ACCOUNT,
                                        RECV)
    assert filtered == [PositionUpdate(ACCOUNT, (BTC_LONG, ETH_SHORT_POSITION), UNTIMED, RECV)]


# --- account ------------------------------------------------------------------------------

USDT_BALANCE = CurrencyBalance("USDT", 4750.42, None, None)
BTC_BALANCE = CurrencyBalance("BTC", -0.05, 0.0502, 0.0002)
FIGURES = ExchangeAccountFigures(
    margin_ratio=62.4, adjusted_equity=2718.86, init_margin=421.337, maint_margin=43.571,
    total_equity=2730.12,
)


def test_account_snapshot() -> None:
    frame = account_push("snapshot", account_row(account_detail(), BTC_DEBT), page=1, last=True)
    events = OkxDecoder().decode_line(private_line(frame))
    expected = BalanceUpdate(
        account=ACCOUNT,
        balances=(USDT_BALANCE, BTC_BALANCE),
        snapshot=True,
        exchange=FIGURES,
        event_ms=1_700_000_000_260,
        recv_ms=RECV,
    )
    assert events == [expected]


def test_account_event_update_with_empty_figures() -> None:
    # Only the currency that changed; no positions, so mgnRatio / imr / mmr are "".
    row = account_row(account_detail(cashBal="4800"), imr="", mgnRatio="", mmr="", adjEq="4801.5")
    events = OkxDecoder().decode_line(private_line(account_push("event_update", row)))
    expected = BalanceUpdate(
        account=ACCOUNT,
        balances=(CurrencyBalance("USDT", 4800.0, None, None),),
        snapshot=False,
        exchange=ExchangeAccountFigures(None, 4801.5, None, None, total_equity=2730.12),
        event_ms=1_700_000_000_260,
        recv_ms=RECV,
    )
    assert events == [expected]


def test_account_multi_page_snapshot() -> None:
    decoder = OkxDecoder()
    first = account_push("snapshot", account_row(account_detail()), page=1, last=False)
    second = account_push(
        "snapshot", account_row(BTC_DEBT, uTime="1700000000270"), page=2, last=True
    )
    assert decoder.decode_frame(first, ACCOUNT, RECV) == []
    events = decoder.decode_frame(second, ACCOUNT, RECV)
    expected = BalanceUpdate(
        ACCOUNT, (USDT_BALANCE, BTC_BALANCE), True, FIGURES, 1_700_000_000_270, RECV
    )
    assert events == [expected]


def test_tainted_account_snapshot_is_not_a_snapshot() -> None:
    decoder = OkxDecoder()
    first = account_push("snapshot", account_row(account_detail()), page=1, last=False)
    broken = account_push("snapshot", account_row(BTC_DEBT, adjEq="inf"), page=2, last=False)
    last = account_push("snapshot", account_row(uTime="1700000000280"), page=3, last=True)
    decoder.decode_frame(first, ACCOUNT, RECV)
    with pytest.raises(BadInput, match="adjEq 'inf' is not a finite number"):
        decoder.decode_frame(broken, ACCOUNT, RECV)
    events = decoder.decode_frame(last, ACCOUNT, RECV)
    # BTC's page was lost: not a snapshot, or BTC's debt would read as zero.
    expected = BalanceUpdate(ACCOUNT, (USDT_BALANCE,), False, FIGURES, 1_700_000_000_280, RECV)
    assert events == [expected]


# --- REST: balance, account configuration, discount rates, borrowing tiers ----------------


def test_balance_rest_is_a_full_snapshot_untimed() -> None:
    # docs: "Trading Account > REST API > Get balance": the account channel's row.
    body = ok([account_row(account_detail(), BTC_DEBT)])
    events = OkxDecoder().decode_line(rest_line(RestPath.BALANCE, body, ACCOUNT))
    assert events == [BalanceUpdate(ACCOUNT, (USDT_BALANCE, BTC_BALANCE), True, FIGURES,
                                    UNTIMED, RECV)]
    # OKX always answers one row; no row says nothing (it would zero every balance).
    assert OkxDecoder().decode_rest(RestPath.BALANCE, ok([]), ACCOUNT, RECV) == []
    # Some currencies only (ccy=BTC): an update, which zeroes no other currency.
    some = OkxDecoder().decode_rest(f"{RestPath.BALANCE}?ccy=BTC",
                                    ok([account_row(BTC_DEBT)]), ACCOUNT, RECV)
    assert some == [BalanceUpdate(ACCOUNT, (BTC_BALANCE,), False, FIGURES, UNTIMED, RECV)]
    with pytest.raises(BadInput, match="returned code '50111'"):
        OkxDecoder().decode_rest(RestPath.BALANCE, {"code": "50111", "msg": "", "data": []},
                                 ACCOUNT, RECV)


def test_single_currency_pools_carry_their_own_figures() -> None:
    # Single-currency margin (acctLv 2): the account level figures are "" and each
    # settlement currency reports its pool's mgnRatio, imr, mmr; eq is the pool's equity.
    usdt = account_detail(mgnRatio="11.73", imr="421.337", mmr="16.853", eq="4838.74")
    row = account_row(usdt, BTC_DEBT, adjEq="", imr="", mmr="", mgnRatio="")
    (event,) = OkxDecoder().decode_frame(account_push("snapshot", row), ACCOUNT, RECV)
    assert isinstance(event, BalanceUpdate)
    assert event.exchange == ExchangeAccountFigures(None, None, None, None, 2730.12)
    assert event.balances == (
        dataclasses.replace(USDT_BALANCE, exchange=ExchangeAccountFigures(
            margin_ratio=11.73, adjusted_equity=4838.74, init_margin=421.337,
            maint_margin=16.853)),
        BTC_BALANCE,
    )


def config_row(**overrides: Any) -> dict[str, Any]:
    """A row of ``GET /api/v5/account/config`` (docs: "Get account configuration")."""
    row: dict[str, Any] = {
        "acctLv": "3", "acctStpMode": "cancel_maker", "autoLoan": True, "ctIsoMode":
        "automatic", "enableSpotBorrow": False, "greeksType": "PA", "ip": "", "kycLv": "3",
        "label": "riskmon", "level": "Lv1", "levelTmp": "", "liquidationGear": "-1",
        "mainUid": "44705892343619584", "mgnIsoMode": "automatic", "opAuth": "0", "perm":
        "read_only", "posMode": "net_mode", "roleType": "0", "spotBorrowAutoRepay": False,
        "spotOffsetType": "", "spotRoleType": "0", "spotTraderInsts": [], "traderInsts": [],
        "type": "0", "uid": "44705892343619584",
    }
    row.update(overrides)
    return row


@pytest.mark.parametrize(("level", "position_mode", "mode", "hedge"), [
    ("2", "long_short_mode", "single_currency", True),
    ("3", "net_mode", "multi_currency", False),
    ("4", "net_mode", "portfolio", False),
    ("1", "net_mode", "unsupported", False),  # spot mode
    ("7", "net_mode", "unsupported", False),  # a level riskmon does not know
])
def test_account_config(level: str, position_mode: str, mode: AccountMode,
                        hedge: bool) -> None:
    body = ok([config_row(acctLv=level, posMode=position_mode)])
    events = OkxDecoder().decode_line(rest_line(RestPath.ACCOUNT_CONFIG, body, ACCOUNT))
    assert events == [AccountConfigUpdate(ACCOUNT, mode, level, hedge, UNTIMED, RECV)]


def test_account_config_without_rows_is_nothing_and_bad_rows_are_bad_input() -> None:
    decoder = OkxDecoder()
    assert decoder.decode_rest(RestPath.ACCOUNT_CONFIG, ok([]), ACCOUNT, RECV) == []
    with pytest.raises(BadInput, match="posMode 'both' is not net_mode or long_short_mode"):
        decoder.decode_rest(RestPath.ACCOUNT_CONFIG, ok([config_row(posMode="both")]),
                            ACCOUNT, RECV)
    with pytest.raises(BadInput, match="account/config acctLv is missing"):
        row = config_row()
        del row["acctLv"]
        decoder.decode_rest(RestPath.ACCOUNT_CONFIG, ok([row]), ACCOUNT, RECV)
    with pytest.raises(BadInput, match="private data"):
        decoder.decode_rest(RestPath.ACCOUNT_CONFIG, ok([config_row()]), None, RECV)


DISCOUNT_PATH = f"{RestPath.DISCOUNT_RATE}?ccy=BTC"
# The response example of docs "Public Data > REST API > Get discount rate and
# interest-free quota" (current shape, ``details``: bounds in BTC).
DOCUMENTED_DISCOUNT_ROW: dict[str, Any] = {
    "amt": "0", "ccy": "BTC", "collateralRestrict": False, "colRes": "0",
    "details": [
        {"discountRate": "0.98", "liqPenaltyRate": "0.02", "maxAmt": "20", "minAmt": "0",
         "tier": "1", "disCcyEq": "1000"},
        {"discountRate": "0.9775", "liqPenaltyRate": "0.0225", "maxAmt": "25",
         "minAmt": "20", "tier": "2", "disCcyEq": "2000"},
    ],
    "discountLv": "1", "minDiscountRate": "0",
}
# The older shape, ``discountInfo`` with bounds in USD: a recorded BTC response kept as a
# test payload (``discountRateJSON``) in an older version of exchanges/okx/okx_test.go of a
# gocryptotrader fork (the stored copy's commit is not recorded; BTC bands up to
# 100,000,000 are only possible in USD).
OLDER_DISCOUNT_ROW: dict[str, Any] = {
    "amt": "1", "ccy": "BTC", "discountLv": "1",
    "discountInfo": [
        {"discountRate": "1", "maxAmt": "5000000", "minAmt": "0"},
        {"discountRate": "0.975", "maxAmt": "10000000", "minAmt": "5000000"},
        {"discountRate": "0.975", "maxAmt": "20000000", "minAmt": "10000000"},
        {"discountRate": "0.95", "maxAmt": "40000000", "minAmt": "20000000"},
        {"discountRate": "0.9", "maxAmt": "100000000", "minAmt": "40000000"},
        {"discountRate": "0", "maxAmt": "", "minAmt": "100000000"},
    ],
}


def test_discount_rates_in_currency_with_the_rate_beyond_the_last_band() -> None:
    events = OkxDecoder().decode_line(rest_line(DISCOUNT_PATH, ok([DOCUMENTED_DISCOUNT_ROW])))
    bands = (CollateralTier(20.0, 0.98), CollateralTier(25.0, 0.9775),
             CollateralTier(INFINITY, 0.0))  # minDiscountRate beyond the last tier
    assert events == [CollateralTiersUpdate("BTC", CollateralTiers(bands, in_usd=False),
                                            UNTIMED, RECV)]


def test_older_discount_info_is_in_usd() -> None:
    usdt = {"amt": "0", "ccy": "USDT", "discountLv": "1",
            "discountInfo": [{"discountRate": "1", "maxAmt": "", "minAmt": "0"}]}
    events = OkxDecoder().decode_rest(RestPath.DISCOUNT_RATE, ok([OLDER_DISCOUNT_ROW, usdt]),
                                      None, RECV)
    btc = (CollateralTier(5e6, 1.0), CollateralTier(1e7, 0.975), CollateralTier(2e7, 0.975),
           CollateralTier(4e7, 0.95), CollateralTier(1e8, 0.9), CollateralTier(INFINITY, 0.0))
    assert events == [
        CollateralTiersUpdate("BTC", CollateralTiers(btc, in_usd=True), UNTIMED, RECV),
        CollateralTiersUpdate("USDT", CollateralTiers((CollateralTier(INFINITY, 1.0),),
                                                      in_usd=True), UNTIMED, RECV),
    ]


def test_details_win_over_discount_info_and_bands_are_ordered_by_amount() -> None:
    row = {**OLDER_DISCOUNT_ROW, "details": list(reversed(DOCUMENTED_DISCOUNT_ROW["details"]))}
    (event,) = OkxDecoder().decode_rest(DISCOUNT_PATH, ok([row]), None, RECV)
    assert isinstance(event, CollateralTiersUpdate)
    # No minDiscountRate here: beyond the last band counts at 0 (CollateralTiers).
    assert event.tiers == CollateralTiers((CollateralTier(20.0, 0.98),
                                           CollateralTier(25.0, 0.9775)), in_usd=False)


def _band(low: str, high: str, rate: str) -> dict[str, str]:
    return {"minAmt": low, "maxAmt": high, "discountRate": rate}


@pytest.mark.parametrize(("bands", "reason"), [
    ([_band("0", "20", "0.98"), _band("25", "", "0.5")],
     "discount-rate BTC: bands do not follow each other from 0 (minAmt 25 where 20 was due)"),
    ([_band("5", "", "0.9")], "minAmt 5 where 0 was due"),
    ([_band("0", "", "1.5")], "discount-rate BTC: factor 1.5 is not in [0, 1]"),
    ([_band("0", "", "")], "discount-rate BTC band 1 discountRate is empty"),
    ([_band("0", "-3", "1")], "maxAmt '-3' must be > 0"),
    ("0.9", "discount-rate BTC bands '0.9' are not a non-empty array"),
])
def test_bad_discount_rates(bands: Any, reason: str) -> None:
    row = {"ccy": "BTC", "details": bands}
    with pytest.raises(BadInput) as raised:
        OkxDecoder().decode_rest(DISCOUNT_PATH, ok([row]), None, RECV)
    assert reason in raised.value.reason


def test_a_discount_row_without_bands_is_bad_input() -> None:
    with pytest.raises(BadInput, match="discount-rate ETH has neither details nor discountInfo"):
        OkxDecoder().decode_rest(DISCOUNT_PATH, ok([{"ccy": "ETH", "amt": "0"}]), None, RECV)
    empty = {"ccy": "ETH", "details": [], "discountInfo": []}
    with pytest.raises(BadInput, match=r"discount-rate ETH bands \[\] are not a non-empty array"):
        OkxDecoder().decode_rest(DISCOUNT_PATH, ok([empty]), None, RECV)


def borrow_row(tier: int, max_size: str, mmr: str, imr: str) -> dict[str, Any]:
    """A ``position-tiers`` row of ``instType=MARGIN`` with ``ccy`` (docs: "Get position
    tiers": maxSz is then the tier's maximum borrowing amount)."""
    return {"baseMaxLoan": "", "imr": imr, "instFamily": "", "instId": "", "maxLever": "5",
            "maxSz": max_size, "minSz": "0", "mmr": mmr, "optMgnFactor": "0",
            "quoteMaxLoan": "", "tier": str(tier), "uly": ""}


BORROW_PATH = f"{RestPath.POSITION_TIERS}?instType=MARGIN&tdMode=cross&ccy=USDT"


def test_margin_position_tiers_of_a_currency_are_its_borrowing_tiers() -> None:
    rows = [borrow_row(2, "", "0.05", "0.25"), borrow_row(1, "500000", "0.03", "0.2")]
    events = OkxDecoder().decode_line(rest_line(BORROW_PATH, ok(rows)))
    assert events == [BorrowTiersUpdate("USDT", (BorrowTier(500_000.0, 0.03, 0.2),
                                                 BorrowTier(INFINITY, 0.05, 0.25)),
                                        UNTIMED, RECV)]


def test_margin_tiers_without_a_currency_or_for_isolated_are_out_of_scope() -> None:
    decoder = OkxDecoder()
    rows = ok([borrow_row(1, "50", "0.03", "0.1")])
    pair = f"{RestPath.POSITION_TIERS}?instType=MARGIN&tdMode=cross&instId=BTC-USDT"
    isolated = f"{RestPath.POSITION_TIERS}?instType=MARGIN&tdMode=isolated&ccy=USDT"
    assert decoder.decode_rest(pair, rows, None, RECV) == []
    assert decoder.decode_rest(isolated, rows, None, RECV) == []
    assert decoder.decode_rest(BORROW_PATH, ok([]), None, RECV) == []


@pytest.mark.parametrize(("rows", "reason"), [
    ([borrow_row(1, "", "1.5", "0.2")], "position-tiers MARGIN USDT: mmr 1.5 is not in [0, 1]"),
    ([borrow_row(1, "", "0.03", "")], "position-tiers MARGIN USDT tier 1 imr is empty"),
    ([borrow_row(1, "", "0.03", "0.2"), borrow_row(2, "10", "0.05", "0.3")],
     "tier max_amount must be positive and ascending"),
    ([borrow_row(1, "10", "0.03", "0.2"), borrow_row(1, "", "0.05", "0.3")],
     "lists a tier number twice"),
])
def test_bad_borrowing_tiers(rows: list[dict[str, Any]], reason: str) -> None:
    with pytest.raises(BadInput) as raised:
        OkxDecoder().decode_rest(BORROW_PATH, ok(rows), None, RECV)
    assert reason in raised.value.reason


# --- operational frames -------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(
            {
                "event": "subscribe",
                "arg": {"channel": "mark-price", "instId": "BTC-USDT-SWAP"},
                "connId": "a4d3ae55",
            },
            id="subscribe-ack",
        ),
        pytest.param(
            {
                "event": "unsubscribe",
                "arg": {"channel": "orders", "instType": "ANY"},
                "connId": "d0b44253",
            },
            id="unsubscribe-ack",
        ),
        pytest.param({"event": "login", "code": "0", "msg": "", "connId": "a4d3ae55"}, id="login"),
        pytest.param(
            {"event": "error", "code": "60012", "msg": "Invalid request", "connId": "a4d3ae55"},
            id="error",
        ),
        pytest.param(
            {
                "event": "notice",
                "code": "64008",
                "msg": "The connection will soon be closed for a service upgrade.",
                "connId": "a4d3ae55",
            },
            id="notice",
        ),
        pytest.param(
            {
                "event": "channel-conn-count",
                "channel": "orders",
                "connCount": "2",
                "connId": "abcd1234",
            },
            id="channel-conn-count",
        ),
        pytest.param("pong", id="pong"),
        pytest.param(
            {
                "arg": {"channel": "funding-rate", "instId": "BTC-USDT-SWAP"},
                "data": [{"fundingRate": "0.0001", "instId": "BTC-USDT-SWAP"}],
            },
            id="unknown-channel",
        ),
        pytest.param(
            {"id": "1512", "op": "order", "code": "0", "msg": "", "data": []},
            id="trade-operation-reply",
        ),
    ],
)
def test_frames_without_domain_data(frame: Any) -> None:
    decoder = OkxDecoder()
    assert decoder.decode_line(private_line(frame)) == []
    assert decoder.decode_frame(frame, None, RECV) == []


def test_unknown_rest_path_and_blank_line() -> None:
    decoder = OkxDecoder()
    assert decoder.decode_line(rest_line("/api/v5/account/bills", ok([{}]), ACCOUNT)) == []
    assert decoder.decode_line(b"   \n") == []


# --- bad input ----------------------------------------------------------------------------


def _with(frame: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(frame)
    target: Any = changed
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return changed


MARK = mark_price_push()
VALID_MARK_LINE = public_line(MARK)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(b"recv_ts=1 frame=pong", "not valid JSON", id="not-json"),
        pytest.param(VALID_MARK_LINE[:-9], "not valid JSON", id="truncated-line"),
        pytest.param(b"[1700000000500, {}]", "line is a JSON array, not an object", id="array"),
        pytest.param(line({"frame": MARK}), "line has no recv_ts", id="missing-recv-ts"),
        pytest.param(
            line({"recv_ts": "1700000000500", "frame": MARK}),
            "recv_ts '1700000000500' is not a millisecond timestamp",
            id="recv-ts-string",
        ),
        pytest.param(line({"recv_ts": RECV}), "neither a frame nor a rest", id="no-frame"),
        pytest.param(
            public_line(mark_price_push(mark="NaN")),
            "markPx 'NaN' is not a finite number",
            id="nan",
        ),
        pytest.param(
            public_line(mark_price_push(mark="inf")),
            "markPx 'inf' is not a finite number",
            id="inf",
        ),
        pytest.param(
            public_line(mark_price_push(mark="-Infinity")),
            "markPx '-Infinity' is not a finite number",
            id="minus-infinity",
        ),
        pytest.param(
            public_line(mark_price_push(mark="-42133.7")),
            "markPx '-42133.7' must be > 0",
            id="negative-price",
        ),
        pytest.param(
            public_line(mark_price_push(mark="0")), "markPx '0' must be > 0", id="zero-price"
        ),
        pytest.param(
            public_line(mark_price_push(mark="abc")),
            "mark-price BTC-USDT-SWAP markPx 'abc' is not a number",
            id="not-a-number",
        ),
        pytest.param(
            public_line(mark_price_push(mark="")), "markPx '' is not a number", id="empty-price"
        ),
        pytest.param(
            public_line(mark_price_push(mark=["42133.7"])),
            "markPx ['42133.7'] is not a number",
            id="list-for-markPx",
        ),
        pytest.param(
            public_line(mark_price_push(mark=True)), "markPx True is not a number", id="bool"
        ),
        pytest.param(
            public_line(_with(MARK, ("data", 0, "ts"), "2023-11-14T22:13:20Z")),
            "ts '2023-11-14T22:13:20Z' is not a millisecond timestamp",
            id="ts-not-integer",
        ),
        pytest.param(
            public_line(_with(MARK, ("data", 0, "ts"), 1.7e12)),
            "is not a millisecond timestamp",
            id="ts-float",
        ),
        pytest.param(
            public_line(_with(MARK, ("data",), {"markPx": "1"})),
            "mark-price data {'markPx': '1'} is not an array",
            id="data-object",
        ),
        pytest.param(
            private_line(orders_push(order_row(side="long"))),
            "side 'long' is not buy or sell",
            id="unknown-side",
        ),
        pytest.param(
            private_line(orders_push(order_row(state="expired"))),
            "state 'expired' is not a known order state",
            id="unknown-state",
        ),
        pytest.param(private_line(orders_push(order_row(sz=""))), "sz is empty", id="empty-size"),
        pytest.param(
            private_line(orders_push(order_row(px=""))), "px is empty", id="limit-without-price"
        ),
        pytest.param(
            private_line(orders_push(order_row(lever="0"))),
            "lever '0' must be > 0",
            id="zero-leverage",
        ),
        pytest.param(
            private_line(orders_push(order_row(reduceOnly="maybe"))),
            "reduceOnly 'maybe' is not true or false",
            id="bad-flag",
        ),
        pytest.param(
            public_line(orders_push(order_row())),
            "orders is private data but no account was given",
            id="private-frame-without-account",
        ),
        pytest.param(
            public_line(positions_push("event_update", position_row())),
            "positions is private data but no account was given",
            id="positions-without-account",
        ),
        pytest.param(
            rest_line(RestPath.ORDERS_PENDING, ok([order_row()])),
            "orders-pending is private data but no account was given",
            id="rest-without-account",
        ),
        pytest.param(
            private_line(positions_push("event_update", position_row(pos="-"))),
            "pos '-' is not a number",
            id="position-size",
        ),
        pytest.param(
            private_line(positions_push("event_update", position_row(avgPx=""))),
            "avgPx is empty",
            id="open-position-without-price",
        ),
        pytest.param(
            private_line(positions_push("full", position_row())),
            "eventType 'full' is not snapshot or event_update",
            id="unknown-event-type",
        ),
        pytest.param(
            private_line(positions_push("snapshot", position_row(), page=0, last=True)),
            "curPage 0 is not a page number",
            id="bad-page",
        ),
        pytest.param(
            private_line(account_push("event_update", account_row(account_detail(cashBal=[])))),
            "account USDT cashBal [] is not a number",
            id="balance-list",
        ),
        pytest.param(
            private_line(account_push("event_update", account_row(account_detail(liab="-1")))),
            "account USDT liab '-1' must not be negative",
            id="negative-liability",
        ),
        pytest.param(
            public_line(
                {
                    "arg": {"channel": "index-tickers", "instId": "BTC"},
                    "data": [{"instId": "BTC", "idxPx": "1", "ts": "1"}],
                }
            ),
            "index-tickers instId 'BTC' is not BASE-QUOTE",
            id="index-id",
        ),
        pytest.param(
            rest_line(RestPath.INSTRUMENTS, ok([swap_instrument(ctType="quanto")])),
            "instruments BTC-USDT-SWAP ctType 'quanto' is not linear or inverse",
            id="contract-type",
        ),
        pytest.param(
            rest_line(SWAP_TIERS_PATH, ok([tier_row("BTC-USDT", 1, "0", "", "1.5")])),
            "position-tiers BTC-USDT: maintenance rate 1.5 is not in [0, 1)",
            id="tier-rate",
        ),
        pytest.param(
            rest_line(
                SWAP_TIERS_PATH,
                ok(
                    [
                        tier_row("BTC-USDT", 1, "0", "", "0.004"),
                        tier_row("BTC-USDT", 2, "5000", "10000", "0.005"),
                    ]
                ),
            ),
            "position-tiers BTC-USDT: tier bounds must be positive and ascending",
            id="unbounded-tier-not-last",
        ),
        pytest.param(
            rest_line(RestPath.INSTRUMENTS, [swap_instrument()]),
            "/api/v5/public/instruments body is a JSON array, not an object",
            id="rest-body-array",
        ),
        pytest.param(
            public_line({"arg": {"channel": "instruments"}, "data": [[]]}),
            "instruments data row [] is not an object",
            id="row-not-object",
        ),
        pytest.param(public_line(42), "frame is a JSON number, not an object", id="frame-number"),
        pytest.param(
            line({"recv_ts": RECV, "account": 7, "frame": orders_push(order_row())}),
            "line account 7 is not an account name",
            id="account-not-string",
        ),
    ],
)
def test_bad_input(raw: bytes, reason: str) -> None:
    with pytest.raises(BadInput) as caught:
        OkxDecoder().decode_line(raw)
    assert reason in caught.value.reason


@pytest.mark.parametrize("recv_ms", [-1, "1700000000500", 1.5, None, True])
def test_entry_points_check_receive_time(recv_ms: Any) -> None:
    decoder = OkxDecoder()
    with pytest.raises(BadInput, match=r"recv_ms .* is not a millisecond timestamp"):
        decoder.decode_frame(MARK, None, recv_ms)
    with pytest.raises(BadInput, match=r"recv_ms .* is not a millisecond timestamp"):
        decoder.decode_rest(RestPath.INSTRUMENTS, ok([]), None, recv_ms)


# --- plausibility limits (issue 15) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(public_line(mark_price_push(mark=" 1 ")), "is not a plain decimal",
                     id="padded-price"),
        pytest.param(public_line(mark_price_push(mark="1_000")), "is not a plain decimal",
                     id="underscore-price"),
        pytest.param(public_line(mark_price_push(mark="1e3")), "is not a plain decimal",
                     id="exponent-price"),
        pytest.param(public_line(mark_price_push(mark="١٢٣")), "is not a plain decimal",
                     id="arabic-digits"),
        pytest.param(public_line(mark_price_push(mark="0." + "0" * 20 + "1")),
                     "outside the plausible prices", id="tiny-price"),
        pytest.param(public_line(mark_price_push(mark="10000000000000000000")),
                     "outside the plausible prices", id="huge-price"),
        pytest.param(public_line(mark_price_push(mark=1e300)),
                     "outside the plausible prices", id="huge-json-number"),
        pytest.param(public_line(_with(MARK, ("data", 0, "ts"), "9223372036854775808")),
                     "is not a millisecond timestamp", id="ts-2p63"),
        pytest.param(line({"recv_ts": 2**63, "frame": MARK}),
                     "is not a millisecond timestamp", id="recv-ts-2p63"),
        pytest.param(private_line(orders_push(order_row(sz="1e3"))), "sz '1e3' is not a plain",
                     id="exponent-size"),
        pytest.param(private_line(orders_push(order_row(sz="1" + "0" * 25))),
                     "beyond the plausible magnitude", id="huge-size"),
        pytest.param(private_line(orders_push(order_row(ordId="1\x002"))),
                     "ordId '1\\x002' is not printable ASCII", id="nul-order-id"),
        pytest.param(private_line(orders_push(order_row(instId="B" * 65))),
                     "is longer than 64 characters", id="long-inst-id"),
        pytest.param(private_line(orders_push(order_row(uTime="\uff11\uff17\uff10\uff10"))),
                     "is not a millisecond timestamp", id="fullwidth-time"),
        pytest.param(line({"recv_ts": RECV, "account": "ma\nin", "frame": orders_push(
            order_row())}), "is not an account name", id="control-account"),
        pytest.param(line({"recv_ts": RECV, "account": "main", "rest": "//[", "body": {}}),
                     "is not a path", id="rest-path-not-a-url"),
    ],
)
def test_implausible_input_is_bad_input(raw: bytes, reason: str) -> None:
    with pytest.raises(BadInput) as caught:
        OkxDecoder().decode_line(raw)
    assert reason in caught.value.reason


def test_a_deeply_nested_frame_is_bad_input_not_a_recursion_error() -> None:
    nested: list[object] = []
    for _ in range(5000):
        nested = [nested]
    with pytest.raises(BadInput):
        OkxDecoder().decode_frame({"arg": {"channel": "orders"}, "data": nested}, "main", RECV)
    with pytest.raises(BadInput):
        OkxDecoder().decode_line(b'{"recv_ts": 1, "frame": ' + b"[" * 2000 + b"]" * 2000 + b"}")
