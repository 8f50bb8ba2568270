"""Pure decoder from Binance USDⓈ-M futures frames and REST bodies to riskmon events.

What is decoded (field names from https://developers.binance.com/docs/derivatives/
usds-margined-futures/):

- ``markPriceUpdate`` (stream ``<symbol>@markPrice@1s``, or one element of
  ``!markPrice@arr@1s``; bare or in the combined-stream ``{"stream", "data"}`` envelope):
  :class:`MarkPrice` of ``s`` at ``p``, dated ``E``.
- ``assetIndexUpdate`` (stream ``<asset>usd@assetIndex``; REST ``/fapi/v1/assetIndex``):
  the multi-assets mode's valuation of a margin asset, an :class:`IndexPrice` ``ASSET-USD``
  at ``i`` and its collateral factor ``1 - b`` (the bid buffer: Binance values a balance
  at its "bid rate", index x (1 - buffer)) as :class:`CollateralTiersUpdate`.
- User data stream (one private connection per account):
  ``ACCOUNT_UPDATE`` (``a.B`` balances and ``a.P`` positions that changed: a
  :class:`BalanceUpdate` and a :class:`PositionUpdate`); ``ORDER_TRADE_UPDATE``
  (:class:`OrderUpdate`); ``ACCOUNT_CONFIG_UPDATE`` (a symbol's leverage, which later
  positions of the symbol carry, or the multi-assets switch: :class:`AccountConfigUpdate`).
  ``MARGIN_CALL`` (``p``: the positions Binance warns about, each with its ``mm`` at
  the mark ``mp``): :class:`MarginCall`, which the engine holds against its own view
  (monitor/core/engine.py, ``_on_margin_call``); a position without ``mt`` has the margin
  type last reported for its symbol (cross if none was). ``listenKeyExpired`` is the
  feed's to act on (adapters/binance/live.py) and yields nothing here.
- REST bootstrap (:class:`RestPath`): ``exchangeInfo`` (instrument specs) and
  ``leverageBracket`` (their maintenance brackets) make :class:`InstrumentUpdate` once
  both are known; ``account`` (v2 or v3) a balance snapshot with the exchange's figures;
  ``positionRisk`` (v2 or v3) a position snapshot with each position's figures;
  ``openOrders`` an orders snapshot; ``multiAssetsMargin`` and ``positionSide/dual`` the
  account's mode.

How Binance's figures map onto the margin model (README "Binance USDⓈ-M"):

- A USDⓈ-M contract is quoted in its base asset: one "contract" is one unit of the base
  (``ct_val`` 1), linear, settled in its ``marginAsset``.
- Maintenance brackets tier by notional with a deduction (monitor/core/instruments.py, tiers
  by value): ``MM = notional x maintMarginRatio - cum``; a bracket's ``notionalCap`` is
  the tier's bound.
- Cash is ``crossWalletBalance`` (the wallet without the isolated positions' wallets); an
  isolated position's own margin is its ``isolatedWallet``. Equity = cash + UPL, Binance's
  margin balance.
- Binance's ratio is MM / margin balance and liquidates at 100 %; riskmon's is equity /
  requirement with the venue's liquidation at 1. The exchange's figures are handed on in
  riskmon's form: ``margin_ratio = marginBalance / maintMargin`` (None without MM), so a
  Binance ratio of 50 % is 2.0 here and both venues' levels mean the same thing. Binance's
  ratio has no closing fee in it: run Binance accounts with ``risk.closing_fee_rate = 0``
  for the two to agree (README).
- Multi-assets mode is riskmon's multi-currency mode (USD totals over the assets);
  single-asset mode is its single-currency mode (each margin asset its own pool).

A REST answer is the state at the time of the answer, which has no exchange time of its
own: its events are ``UNTIMED`` (monitor/core/events.py), dated by the engine's clock and never
moving it. Numbers, timestamps and identifiers are read by adapters/wire.py (its module
docstring has the limits). Stateful (specs, brackets, leverage and margin type per symbol,
the account modes) but pure: no I/O, no clock, no logging. Every method raises
:class:`BadInput` for input it cannot use and leaves its state as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from adapters.wire import (
    account_of,
    check_account,
    check_recv_ms,
    json_kind,
    new_mark_price,
    number_field,
    optional_number_field,
    optional_text_field,
    plain_price,
    plain_timestamp,
    require_account,
    rows_of,
    show,
    text_field,
    timestamp_field,
)
from monitor.core.errors import BadInput
from monitor.core.events import (
    UNTIMED,
    AccountConfigUpdate,
    AccountMode,
    BalanceUpdate,
    CollateralTiersUpdate,
    CurrencyBalance,
    Event,
    ExchangeAccountFigures,
    ExchangePositionFigures,
    IndexPrice,
    InstrumentUpdate,
    MarginCall,
    MarginCallPosition,
    MarginMode,
    Order,
    OrdersSnapshot,
    OrderUpdate,
    Position,
    PositionSide,
    PositionSnapshot,
    PositionUpdate,
)
from monitor.core.instruments import CollateralTiers, Instrument, Tier, validate_tiers

__all__ = ["BinanceDecoder", "RestPath"]


class RestPath:
    """The REST endpoints :meth:`BinanceDecoder.decode_rest` understands."""

    EXCHANGE_INFO: Final = "/fapi/v1/exchangeInfo"
    ASSET_INDEX: Final = "/fapi/v1/assetIndex"
    LEVERAGE_BRACKET: Final = "/fapi/v1/leverageBracket"
    ACCOUNT: Final = "/fapi/v3/account"
    ACCOUNT_V2: Final = "/fapi/v2/account"
    POSITION_RISK: Final = "/fapi/v3/positionRisk"
    POSITION_RISK_V2: Final = "/fapi/v2/positionRisk"
    OPEN_ORDERS: Final = "/fapi/v1/openOrders"
    MULTI_ASSETS: Final = "/fapi/v1/multiAssetsMargin"
    POSITION_MODE: Final = "/fapi/v1/positionSide/dual"


_POSITION_SIDES: Final[dict[str, PositionSide]] = {"BOTH": "net", "LONG": "long",
                                                   "SHORT": "short"}
_MARGIN_TYPES: Final[dict[str, MarginMode]] = {"cross": "cross", "crossed": "cross",
                                               "isolated": "isolated"}
# docs: "Common Definition > Order status"; NEW and PARTIALLY_FILLED still rest.
_ORDER_LIVE: Final[dict[str, bool]] = {
    "NEW": True, "PARTIALLY_FILLED": True, "FILLED": False, "CANCELED": False,
    "EXPIRED": False, "EXPIRED_IN_MATCH": False, "REJECTED": False,
}
# Order types that rest at a stated price; the others (MARKET, STOP_MARKET, ...) are
# priced at the mark by the engine (SPEC 1.3).
_PRICED_ORDER_TYPES: Final = frozenset({"LIMIT"})
# What a user data stream may carry besides the events decoded here.
_QUIET_EVENTS: Final = frozenset({"listenKeyExpired", "TRADE_LITE",
                                  "STRATEGY_UPDATE", "GRID_UPDATE", "ALGO_UPDATE",
                                  "CONDITIONAL_ORDER_TRIGGER_REJECT"})
_TRADED_CONTRACTS: Final = frozenset({"PERPETUAL", "CURRENT_QUARTER", "NEXT_QUARTER",
                                      "CURRENT_MONTH", "NEXT_MONTH", "TRADIFI_PERPETUAL"})


@dataclass(frozen=True, slots=True)
class _Spec:
    symbol: str
    base: str
    margin_asset: str
    lot_size: float | None


@dataclass(slots=True)
class _AccountModes:
    multi_assets: bool | None = None
    hedge: bool | None = None


class BinanceDecoder:
    """Turns Binance USDⓈ-M frames and REST bodies into :mod:`monitor.core.events` events (see
    the module docstring). Use one decoder per feed."""

    def __init__(self) -> None:
        self._specs: dict[str, _Spec] = {}
        self._brackets: dict[str, tuple[tuple[Tier, ...], float | None]] = {}
        # Per (account, symbol): the leverage and the margin type last reported; orders
        # and ACCOUNT_UPDATE positions do not carry them.
        self._leverage: dict[tuple[str, str], float] = {}
        self._margin_type: dict[tuple[str, str], MarginMode] = {}
        self._modes: dict[str, _AccountModes] = {}

    # -- entry points ----------------------------------------------------------------------

    def decode_line(self, line: bytes | str) -> list[Event]:
        """One line of a recording (SPEC 3.2): a ``frame`` or a ``rest`` response."""
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            if not line.strip():
                return []
            raise BadInput(f"line is not valid JSON ({error})") from error
        if type(record) is not dict:
            raise BadInput(f"line is a JSON {json_kind(record)}, not an object")
        recv_ms = timestamp_field(record, "recv_ts", "line")
        account = account_of(record)
        if "frame" in record:
            return self._decode_frame(record["frame"], account, recv_ms)
        if "rest" in record:
            path = record["rest"]
            if type(path) is not str:
                raise BadInput(f"line rest {show(path)} is not a path")
            if "body" not in record:
                raise BadInput(f"REST line for {show(path)} has no body")
            return self._decode_rest(path, record["body"], account, recv_ms)
        raise BadInput("line has neither a frame nor a rest response")

    def decode_message(self, text: str, account: str | None, recv_ms: Any) -> list[Event]:
        """One websocket message as received (monitor.runtime.feed delivers them unparsed)."""
        check_recv_ms(recv_ms)
        check_account(account)
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise BadInput("frame is not JSON") from None
        return self._decode_frame(frame, account, recv_ms)

    def decode_rest(self, path: str, body: Any, account: str | None,
                    recv_ms: Any) -> list[Event]:
        """A REST response body; ``path`` as requested (its query is ignored). Unknown
        paths yield ``[]``."""
        check_recv_ms(recv_ms)
        check_account(account)
        return self._decode_rest(path, body, account, recv_ms)

    # -- frames ----------------------------------------------------------------------------

    def _decode_frame(self, frame: Any, account: str | None, recv_ms: int) -> list[Event]:
        if type(frame) is dict and "stream" in frame and "data" in frame:
            frame = frame["data"]  # the combined-stream envelope
        if type(frame) is list:  # !markPrice@arr
            events: list[Event] = []
            for item in frame:
                events.extend(self._decode_frame(item, account, recv_ms))
            return events
        if type(frame) is not dict:
            raise BadInput(f"frame is a JSON {json_kind(frame)}, not an object")
        kind = frame.get("e")
        if kind == "markPriceUpdate":
            return [_mark_price(frame, recv_ms)]
        if kind == "assetIndexUpdate":
            return _asset_index(frame, "s", "i", "b", "E", recv_ms)
        if "result" in frame and "id" in frame:
            return []  # an answer to a SUBSCRIBE request
        if type(kind) is not str:
            raise BadInput(f"frame has no event type (e {show(kind)})")
        if kind == "ACCOUNT_UPDATE":
            return self._account_update(frame, require_account(account, kind), recv_ms)
        if kind == "ORDER_TRADE_UPDATE":
            return [self._order_update(frame, require_account(account, kind), recv_ms)]
        if kind == "ACCOUNT_CONFIG_UPDATE":
            return self._config_update(frame, require_account(account, kind), recv_ms)
        if kind == "MARGIN_CALL":
            return [self._margin_call(frame, require_account(account, kind), recv_ms)]
        if kind in _QUIET_EVENTS:
            return []
        raise BadInput(f"frame event {show(kind)} is not one riskmon reads")

    def _account_update(self, frame: dict[str, Any], account: str,
                        recv_ms: int) -> list[Event]:
        data = frame.get("a")
        if type(data) is not dict:
            raise BadInput(f"ACCOUNT_UPDATE a {show(data)} is not an object")
        event_ms = timestamp_field(frame, "E", "ACCOUNT_UPDATE")
        balances = []
        for row in rows_of(data.get("B", []), "ACCOUNT_UPDATE B"):
            context = "ACCOUNT_UPDATE balance"
            balances.append(CurrencyBalance(text_field(row, "a", context),
                                            number_field(row, "cw", context, "any"),
                                            None, None))
        positions = []
        for row in rows_of(data.get("P", []), "ACCOUNT_UPDATE P"):
            context = "ACCOUNT_UPDATE position"
            symbol = text_field(row, "s", context)
            mode = _margin_type(row, "mt", context)
            margin = number_field(row, "iw", context, "non_negative")
            positions.append(Position(
                symbol, number_field(row, "pa", context, "any"),
                number_field(row, "ep", context, "non_negative"),
                self._leverage.get((account, symbol)), _position_side(row, "ps", context),
                mode, margin if mode == "isolated" else None))
        for position in positions:
            self._margin_type[(account, position.inst_id)] = position.margin_mode
        events: list[Event] = []
        if balances:
            events.append(BalanceUpdate(account, tuple(balances), False, None, event_ms,
                                        recv_ms))
        if positions:
            events.append(PositionUpdate(account, tuple(positions), event_ms, recv_ms))
        return events

    def _margin_call(self, frame: dict[str, Any], account: str, recv_ms: int) -> Event:
        event_ms = timestamp_field(frame, "E", "MARGIN_CALL")
        positions = []
        for row in rows_of(frame.get("p", []), "MARGIN_CALL p"):
            context = "MARGIN_CALL position"
            symbol = text_field(row, "s", context)
            mode = (_margin_type(row, "mt", context) if "mt" in row
                    else self._margin_type.get((account, symbol), "cross"))
            positions.append(MarginCallPosition(
                symbol, _position_side(row, "ps", context), mode,
                number_field(row, "pa", context, "any"),
                optional_number_field(row, "mp", context, "positive"),
                optional_number_field(row, "mm", context, "non_negative")))
        if not positions:
            raise BadInput("MARGIN_CALL names no position")
        return MarginCall(account, tuple(positions), event_ms, recv_ms)

    def _order_update(self, frame: dict[str, Any], account: str, recv_ms: int) -> Event:
        row = frame.get("o")
        if type(row) is not dict:
            raise BadInput(f"ORDER_TRADE_UPDATE o {show(row)} is not an object")
        context = "ORDER_TRADE_UPDATE"
        event_ms = timestamp_field(frame, "E", context)
        status = text_field(row, "X", context)
        if status not in _ORDER_LIVE:
            raise BadInput(f"{context} X {show(status)} is not an order status")
        order_id = row.get("i")
        if type(order_id) is not int and type(order_id) is not str:
            raise BadInput(f"{context} i {show(order_id)} is not an order id")
        order = self._order(account, {
            "symbol": row.get("s"), "orderId": order_id, "side": row.get("S"),
            "type": row.get("o"), "price": row.get("p"), "origQty": row.get("q"),
            "executedQty": row.get("z"), "reduceOnly": row.get("R", False),
            "positionSide": row.get("ps", "BOTH")}, context)
        average = optional_number_field(row, "ap", context, "non_negative")
        return OrderUpdate(account, order, _ORDER_LIVE[status], event_ms, recv_ms,
                           optional_text_field(row, "c", context), status,
                           average if average else None)

    def _config_update(self, frame: dict[str, Any], account: str,
                       recv_ms: int) -> list[Event]:
        context = "ACCOUNT_CONFIG_UPDATE"
        event_ms = timestamp_field(frame, "E", context)
        symbol_config = frame.get("ac")
        if type(symbol_config) is dict:
            symbol = text_field(symbol_config, "s", context)
            leverage = number_field(symbol_config, "l", context, "positive")
            self._leverage[(account, symbol)] = leverage
            return []
        account_config = frame.get("ai")
        if type(account_config) is dict:
            multi = account_config.get("j")
            if type(multi) is not bool:
                raise BadInput(f"{context} ai.j {show(multi)} is not true or false")
            return self._set_modes(account, event_ms, recv_ms, multi_assets=multi)
        raise BadInput(f"{context} has neither ac nor ai")

    # -- REST ------------------------------------------------------------------------------

    def _decode_rest(self, path: Any, body: Any, account: str | None,
                     recv_ms: int) -> list[Event]:
        if type(path) is not str:
            raise BadInput(f"REST path {show(path)} is not a string")
        endpoint = urlsplit(path).path
        if type(body) is dict and "code" in body and "msg" in body and len(body) <= 3:
            # An error answer ({"code": -2015, "msg": "..."}) is no snapshot: reading it
            # as "nothing" would close positions.
            raise BadInput(f"{endpoint} returned code {show(body.get('code'))}: "
                           f"{show(body.get('msg'))}")
        if endpoint == RestPath.ASSET_INDEX:
            rows = [body] if type(body) is dict else body
            return [event for row in rows_of(rows, endpoint)
                    for event in _asset_index(row, "symbol", "index", "bidBuffer", "time",
                                              recv_ms)]
        if endpoint == RestPath.EXCHANGE_INFO:
            return self._exchange_info(body, recv_ms)
        if endpoint == RestPath.LEVERAGE_BRACKET:
            return self._leverage_brackets(body, recv_ms)
        if endpoint in (RestPath.ACCOUNT, RestPath.ACCOUNT_V2):
            return self._account(body, require_account(account, endpoint), recv_ms, endpoint)
        if endpoint in (RestPath.POSITION_RISK, RestPath.POSITION_RISK_V2):
            return self._position_risk(body, require_account(account, endpoint), recv_ms)
        if endpoint == RestPath.OPEN_ORDERS:
            return self._open_orders(body, require_account(account, endpoint), recv_ms)
        if endpoint == RestPath.MULTI_ASSETS:
            flag = _object(body, endpoint).get("multiAssetsMargin")
            if type(flag) is not bool:
                raise BadInput(f"{endpoint} multiAssetsMargin {show(flag)} is not a boolean")
            return self._set_modes(require_account(account, endpoint), UNTIMED, recv_ms,
                                   multi_assets=flag)
        if endpoint == RestPath.POSITION_MODE:
            flag = _object(body, endpoint).get("dualSidePosition")
            if type(flag) is not bool:
                raise BadInput(f"{endpoint} dualSidePosition {show(flag)} is not a boolean")
            return self._set_modes(require_account(account, endpoint), UNTIMED, recv_ms,
                                   hedge=flag)
        return []

    def _exchange_info(self, body: Any, recv_ms: int) -> list[Event]:
        symbols = _object(body, RestPath.EXCHANGE_INFO).get("symbols")
        found: dict[str, _Spec] = {}
        for row in rows_of(symbols, "exchangeInfo symbols"):
            context = "exchangeInfo symbol"
            symbol = text_field(row, "symbol", context)
            if (row.get("contractType") not in _TRADED_CONTRACTS
                    or row.get("status") != "TRADING"):
                continue
            lot = None
            for rule in rows_of(row.get("filters", []), f"{context} {symbol} filters"):
                if rule.get("filterType") == "LOT_SIZE":
                    lot = number_field(rule, "stepSize", f"{context} {symbol} LOT_SIZE",
                                       "positive")
            found[symbol] = _Spec(symbol, text_field(row, "baseAsset", context),
                                  text_field(row, "marginAsset", context), lot)
        self._specs.update(found)
        return self._instruments(found, recv_ms)

    def _leverage_brackets(self, body: Any, recv_ms: int) -> list[Event]:
        rows = [body] if type(body) is dict else body  # one symbol asked: one object
        found: dict[str, tuple[tuple[Tier, ...], float | None]] = {}
        for row in rows_of(rows, "leverageBracket"):
            symbol = text_field(row, "symbol", "leverageBracket")
            context = f"leverageBracket {symbol}"
            tiers = []
            leverage: float | None = None
            for bracket in rows_of(row.get("brackets"), f"{context} brackets"):
                tiers.append(Tier(number_field(bracket, "notionalCap", context, "positive"),
                                  number_field(bracket, "maintMarginRatio", context,
                                               "non_negative"),
                                  number_field(bracket, "cum", context, "non_negative")))
                if leverage is None:
                    leverage = number_field(bracket, "initialLeverage", context, "positive")
            problem = validate_tiers(tuple(tiers), "value")
            if problem is not None:
                raise BadInput(f"{context}: {problem}")
            found[symbol] = (tuple(tiers), leverage)
        self._brackets.update(found)
        return self._instruments({s: self._specs[s] for s in found if s in self._specs},
                                 recv_ms)

    def _instruments(self, specs: dict[str, _Spec], recv_ms: int) -> list[Event]:
        events: list[Event] = []
        for symbol, spec in specs.items():
            brackets = self._brackets.get(symbol)
            if brackets is None:
                continue
            tiers, leverage = brackets
            events.append(InstrumentUpdate(Instrument(
                symbol, "linear", 1.0, 1.0, spec.base, spec.margin_asset, tiers,
                leverage, spec.lot_size, tier_basis="value"), UNTIMED, recv_ms))
        return events

    def _account(self, body: Any, account: str, recv_ms: int, endpoint: str) -> list[Event]:
        data = _object(body, endpoint)
        context = endpoint
        single = self._modes.get(account, _AccountModes()).multi_assets is False
        balances = []
        for row in rows_of(data.get("assets"), f"{context} assets"):
            asset = text_field(row, "asset", f"{context} asset")
            where = f"{context} asset {asset}"
            balances.append(CurrencyBalance(
                asset, number_field(row, "crossWalletBalance", where, "any"), None, None,
                _figures(row, "marginBalance", "maintMargin", "initialMargin", where)
                if single and "maintMargin" in row else None))
        events: list[Event] = []
        multi = data.get("multiAssetsMargin")
        if type(multi) is bool:  # v2 says; v3 leaves it to /fapi/v1/multiAssetsMargin
            events.extend(self._set_modes(account, UNTIMED, recv_ms, multi_assets=multi))
        # An answer without the totals (a replay server's, after pushes) has no figures.
        figures = (_figures(data, "totalMarginBalance", "totalMaintMargin",
                            "totalInitialMargin", context)
                   if "totalMaintMargin" in data else None)
        events.append(BalanceUpdate(account, tuple(balances), True, figures, UNTIMED,
                                    recv_ms))
        return events

    def _position_risk(self, body: Any, account: str, recv_ms: int) -> list[Event]:
        positions = []
        for row in rows_of(body, "positionRisk"):
            symbol = text_field(row, "symbol", "positionRisk")
            context = f"positionRisk {symbol}"
            contracts = number_field(row, "positionAmt", context, "any")
            timestamp_field(row, "updateTime", context)  # checked, not used
            mode = _risk_margin_type(row, context)
            self._margin_type[(account, symbol)] = mode
            leverage = optional_number_field(row, "leverage", context, "positive")
            notional = abs(optional_number_field(row, "notional", context, "any") or 0.0)
            initial = optional_number_field(row, "positionInitialMargin", context,
                                            "non_negative")
            if leverage is None and initial and notional:
                leverage = notional / initial  # v3 gives the margin, not the leverage
            if leverage is not None:
                self._leverage[(account, symbol)] = leverage
            if contracts == 0.0:
                continue
            wallet = number_field(row, "isolatedWallet", context, "non_negative")
            maint = optional_number_field(row, "maintMargin", context, "non_negative")
            ratio = None
            if mode == "isolated" and maint:
                ratio = number_field(row, "isolatedMargin", context, "any") / maint
            # "0" when no price would liquidate it (Binance's formula gives one below 0).
            liquidation = optional_number_field(row, "liquidationPrice", context,
                                                "non_negative")
            positions.append(Position(
                symbol, contracts, number_field(row, "entryPrice", context, "non_negative"),
                leverage, _position_side(row, "positionSide", context), mode,
                wallet if mode == "isolated" else None,
                ExchangePositionFigures(ratio, maint, optional_number_field(
                    row, "initialMargin", context, "non_negative"), liquidation or None)))
        return [PositionSnapshot(account, tuple(positions), UNTIMED, recv_ms)]

    def _open_orders(self, body: Any, account: str, recv_ms: int) -> list[Event]:
        orders = tuple(self._order(account, row, "openOrders")
                       for row in rows_of(body, "openOrders"))
        return [OrdersSnapshot(account, orders, UNTIMED, recv_ms)]

    def _order(self, account: str, row: dict[str, Any], context: str) -> Order:
        symbol = text_field(row, "symbol", context)
        where = f"{context} {symbol}"
        raw_id = row.get("orderId")
        order_id = str(raw_id) if type(raw_id) is int else text_field(row, "orderId", where)
        side = text_field(row, "side", where)
        if side not in ("BUY", "SELL"):
            raise BadInput(f"{where} side {show(side)} is not BUY or SELL")
        order_type = text_field(row, "type", where)
        price = (number_field(row, "price", where, "price")
                 if order_type in _PRICED_ORDER_TYPES else None)
        reduce_only = row.get("reduceOnly", False)
        if type(reduce_only) is not bool:
            raise BadInput(f"{where} reduceOnly {show(reduce_only)} is not a boolean")
        return Order(order_id, symbol, "buy" if side == "BUY" else "sell", price,
                     number_field(row, "origQty", where, "positive"),
                     number_field(row, "executedQty", where, "non_negative"), reduce_only,
                     self._leverage.get((account, symbol)),
                     _position_side(row, "positionSide", where),
                     self._margin_type.get((account, symbol), "cross"))

    def _set_modes(self, account: str, event_ms: int, recv_ms: int, *,
                   multi_assets: bool | None = None, hedge: bool | None = None) -> list[Event]:
        modes = self._modes.setdefault(account, _AccountModes())
        if multi_assets is not None:
            modes.multi_assets = multi_assets
        if hedge is not None:
            modes.hedge = hedge
        if modes.multi_assets is None:
            return []  # the margin mode is what counts; the position mode alone waits
        mode: AccountMode = "multi_currency" if modes.multi_assets else "single_currency"
        return [AccountConfigUpdate(account, mode,
                                    "multi-assets" if modes.multi_assets else "single-asset",
                                    bool(modes.hedge), event_ms, recv_ms)]


# --- helpers --------------------------------------------------------------------------------


def _mark_price(frame: dict[str, Any], recv_ms: int) -> Event:
    """The hot path. The symbol's spelling is left to the engine, which checks an
    instrument id the first time it sees it (monitor.core.events.identifier_problem)."""
    symbol = frame.get("s")
    if type(symbol) is not str or not symbol:
        raise BadInput(f"markPriceUpdate s {show(symbol)} is not a symbol")
    return new_mark_price(symbol, plain_price(frame.get("p"), "p", "markPriceUpdate", symbol),
                          plain_timestamp(frame.get("E"), "E", "markPriceUpdate", symbol),
                          recv_ms)


def _asset_index(row: dict[str, Any], symbol_key: str, index_key: str, buffer_key: str,
                 time_key: str, recv_ms: int) -> list[Event]:
    """An asset's USD index and collateral factor (see the module docstring)."""
    symbol = text_field(row, symbol_key, "assetIndex")
    context = f"assetIndex {symbol}"
    if not symbol.endswith("USD") or len(symbol) <= 3:
        raise BadInput(f"{context}: not an ASSETUSD index symbol")
    asset = symbol[:-3]
    event_ms = timestamp_field(row, time_key, context)
    buffer = number_field(row, buffer_key, context, "non_negative")
    if buffer >= 1.0:
        raise BadInput(f"{context} {buffer_key} {show(row.get(buffer_key))} is not below 1")
    return [IndexPrice(asset, "USD", number_field(row, index_key, context, "price"),
                       event_ms, recv_ms),
            CollateralTiersUpdate(asset, CollateralTiers.flat(1.0 - buffer), event_ms,
                                  recv_ms)]


def _figures(row: dict[str, Any], balance: str, maint: str, initial: str,
             context: str) -> ExchangeAccountFigures:
    """The exchange's figures in riskmon's form (see the module docstring)."""
    margin_balance = number_field(row, balance, context, "any")
    maint_margin = number_field(row, maint, context, "non_negative")
    return ExchangeAccountFigures(
        margin_balance / maint_margin if maint_margin > 0.0 else None, margin_balance,
        number_field(row, initial, context, "non_negative"), maint_margin, margin_balance)


def _object(body: Any, context: str) -> dict[str, Any]:
    if type(body) is not dict:
        raise BadInput(f"{context} body is a JSON {json_kind(body)}, not an object")
    return body


def _position_side(row: dict[str, Any], name: str, context: str) -> PositionSide:
    raw = row.get(name, "BOTH")
    side = _POSITION_SIDES.get(raw) if type(raw) is str else None
    if side is None:
        raise BadInput(f"{context} {name} {show(raw)} is not BOTH, LONG or SHORT")
    return side


def _margin_type(row: dict[str, Any], name: str, context: str) -> MarginMode:
    raw = row.get(name)
    mode = _MARGIN_TYPES.get(raw.lower()) if type(raw) is str else None
    if mode is None:
        raise BadInput(f"{context} {name} {show(raw)} is not cross or isolated")
    return mode


def _risk_margin_type(row: dict[str, Any], context: str) -> MarginMode:
    """v2 says ``marginType``; v3 does not, and an isolated position has a wallet."""
    if "marginType" in row:
        return _margin_type(row, "marginType", context)
    wallet = number_field(row, "isolatedWallet", context, "non_negative")
    return "isolated" if wallet > 0.0 else "cross"
