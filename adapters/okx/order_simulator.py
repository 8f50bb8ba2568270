"""The replay server's order simulator, its pure part: order checks, order rows, fills and
the position overlay. No clock and no I/O: times come in as arguments (milliseconds on the
replay clock), and :mod:`adapters.okx.replay_server` does the pushing and the waiting.

Codes and messages are OKX's, from the v5 docs "Error Code > REST API" (General, API and
Trade classes, https://www.okx.com/docs-v5/en/#error-code-rest-api-public); the answer and
order shapes from "Order Book Trading > Trade > POST / Place multiple orders", "GET / Order
details" and "WS / Order channel".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Final

__all__ = [
    "ABOVE_POSITION",
    "ACCEPTED",
    "DUPLICATE_CLIENT_ID",
    "INSUFFICIENT_MARGIN",
    "NO_POSITION",
    "NO_PRICE",
    "SAME_DIRECTION",
    "UNSUPPORTED",
    "ParsedOrder",
    "PositionKey",
    "SimulatedOrder",
    "answer_row",
    "batch_answer",
    "check_order",
    "parse_decimal",
    "partial_size",
    "position_size",
    "reduced_row",
    "reduction_refusal",
]

PositionKey = tuple[str, str, str]  # instId, mgnMode, posSide

ACCEPTED: Final = ("0", "Order placed")
# Trade class: per order (sCode, sMsg).
DUPLICATE_CLIENT_ID: Final = ("51016", "Client order ID already exists.")
NO_POSITION: Final = ("51169", "Order failed because you don't have any positions in this "
                               "direction for this contract to reduce or close.")
SAME_DIRECTION: Final = ("51170", "Failed to place order. A reduce-only order can\u2019t be the "
                                  "same trading direction as your existing positions.")
ABOVE_POSITION: Final = ("51112", "Close order size exceeds available size for this position.")
NO_PRICE: Final = ("51109", "No available offers.")
# What this simulator does not do (limit orders, orders that may open a position): the
# General class's "unavailable in demo trading", which says as much and is not retryable.
UNSUPPORTED: Final = ("50038", "This feature is unavailable in demo trading")
# The fault's default: an exchange-side refusal of a well-formed order (51008_1001).
INSUFFICIENT_MARGIN: Final = ("51008", "Order failed. Insufficient USDT margin in account")

# docs "Place order": clOrdId "A combination of case-sensitive alphanumerics, all numbers,
# or all letters of up to 32 characters".
_CLIENT_ID: Final = re.compile(r"[A-Za-z0-9]{1,32}")
_MARGIN_MODES: Final = frozenset({"cross", "isolated"})
_POSITION_SIDES: Final = frozenset({"net", "long", "short"})
# Position fields that are linear in the size at a given mark (docs "Get positions"):
# scaled with it; the others (margins, liquidation price, ratios) are left as recorded.
_LINEAR_FIELDS: Final = ("upl", "notionalUsd")
_SCALED_PLACES: Final = 8  # at least, for a scaled field


def _parameter_error(name: str) -> tuple[str, str]:
    return ("51000", f"Parameter {name} error")


def _empty_parameter(name: str) -> tuple[str, str]:
    return ("50014", f"Parameter {name} can not be empty.")


def parse_decimal(value: Any) -> Decimal | None:
    """A decimal string as OKX writes numbers; None for anything else."""
    if type(value) is not str or not value:
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _text(number: Decimal) -> str:
    """A decimal as OKX writes numbers: plain notation, no trailing zeros."""
    if number == 0:
        return "0"
    return format(number.normalize(), "f")


@dataclass(frozen=True, slots=True)
class ParsedOrder:
    """One order of a batch that passed the parameter checks."""

    inst_id: str
    margin_mode: str
    side: str
    position_side: str
    size: Decimal
    client_id: str

    @property
    def key(self) -> PositionKey:
        return (self.inst_id, self.margin_mode, self.position_side)


def check_order(raw: Any) -> ParsedOrder | tuple[str, str]:
    """The order of a ``batch-orders`` body, or the (sCode, sMsg) refusing it."""
    if type(raw) is not dict:
        return _parameter_error("order")
    client_id = raw.get("clOrdId", "")
    if type(client_id) is not str or (client_id and not _CLIENT_ID.fullmatch(client_id)):
        return _parameter_error("clOrdId")
    for name in ("instId", "tdMode", "side", "ordType", "sz"):
        if raw.get(name) in (None, ""):
            return _empty_parameter(name)
    inst_id = raw["instId"]
    if type(inst_id) is not str:
        return _parameter_error("instId")
    if raw["tdMode"] not in _MARGIN_MODES:
        return _parameter_error("tdMode")
    if raw["side"] not in ("buy", "sell"):
        return _parameter_error("side")
    position_side = raw.get("posSide") or "net"
    if position_side not in _POSITION_SIDES:
        return _parameter_error("posSide")
    size = parse_decimal(raw["sz"])
    if size is None or size <= 0:
        return _parameter_error("sz")
    if raw["ordType"] != "market":
        return UNSUPPORTED if type(raw["ordType"]) is str else _parameter_error("ordType")
    reduce_only = raw.get("reduceOnly", False)
    if reduce_only not in (True, False, "true", "false"):
        return _parameter_error("reduceOnly")
    if reduce_only not in (True, "true"):
        return UNSUPPORTED
    return ParsedOrder(inst_id, raw["tdMode"], raw["side"], position_side, size, client_id)


def position_size(row: dict[str, Any] | None) -> Decimal:
    """A position row's signed size (``pos``); 0 for none or an unreadable one."""
    if row is None:
        return Decimal(0)
    return parse_decimal(row.get("pos")) or Decimal(0)


def reduction_refusal(order: ParsedOrder, position: Decimal,
                      reserved: Decimal) -> tuple[str, str] | None:
    """Why a reduce-only order cannot go against this position (signed ``pos`` after the
    simulated trades; ``reserved``: sizes of this key's simulated orders not filled yet)."""
    if position == 0:
        return NO_POSITION
    # Net mode: a long is a positive pos, closed by selling. Long/short mode: pos is the
    # size of that side, closed by the opposite side.
    long = position > 0 if order.position_side == "net" else order.position_side == "long"
    if (order.side == "sell") != long:
        return SAME_DIRECTION
    if order.size > abs(position) - reserved:
        return ABOVE_POSITION
    return None


def reduced_row(row: dict[str, Any], reduction: Decimal) -> dict[str, Any]:
    """A recorded position row less what the simulator closed of it (never below zero).

    ``pos`` and ``availPos`` lose ``reduction`` in magnitude; ``upl`` and ``notionalUsd``,
    linear in the size, scale with it. Margins, ratios, the liquidation price and the
    account's balances are not adjusted (the module docstring of the replay server).
    """
    size = position_size(row)
    if reduction <= 0 or size == 0:
        return row
    left = max(abs(size) - reduction, Decimal(0))
    result = dict(row)
    result["pos"] = _text(left.copy_sign(size))
    available = parse_decimal(row.get("availPos"))
    if available is not None:
        result["availPos"] = _text(max(abs(available) - reduction, Decimal(0))
                                   .copy_sign(available))
    for name in _LINEAR_FIELDS:
        value = parse_decimal(row.get(name))
        if value is not None:
            exponent = value.as_tuple().exponent
            places = max(-exponent if type(exponent) is int else 0, _SCALED_PLACES)
            scaled = (value * left / abs(size)).quantize(Decimal(1).scaleb(-places))
            result[name] = _text(scaled)
    return result


def partial_size(size: Decimal, ratio: float) -> Decimal:
    """What a partly filled order fills: ``ratio`` of ``size``, rounded down to the
    precision ``size`` was written with."""
    exponent = size.as_tuple().exponent
    step = Decimal(1).scaleb(exponent if type(exponent) is int and exponent < 0 else 0)
    return (size * Decimal(str(ratio)) / step).to_integral_value(rounding="ROUND_FLOOR") * step


@dataclass(eq=False)
class SimulatedOrder:
    """An order the simulator accepted: its row as ``GET /api/v5/trade/order`` answers it."""

    account: str
    order: ParsedOrder
    row: dict[str, Any]
    filled: Decimal = field(default=Decimal(0))

    @classmethod
    def placed(cls, account: str, order: ParsedOrder, raw: dict[str, Any], order_id: str,
               inst_type: str, currency: str, leverage: str, now_ms: int) -> SimulatedOrder:
        """docs "GET / Order details", response parameters (those a market order fills)."""
        now = str(now_ms)
        row = {
            "instType": inst_type, "instId": order.inst_id, "tgtCcy": "", "ccy": "",
            "ordId": order_id, "clOrdId": order.client_id,
            "tag": raw.get("tag", "") if type(raw.get("tag", "")) is str else "",
            "px": "", "pxUsd": "", "pxVol": "", "pxType": "", "sz": _text(order.size),
            "pnl": "0", "ordType": "market", "side": order.side,
            "posSide": order.position_side, "tdMode": order.margin_mode,
            "accFillSz": "0", "fillPx": "", "tradeId": "", "fillSz": "0", "fillTime": "",
            "avgPx": "", "state": "live", "lever": leverage, "attachAlgoClOrdId": "",
            "tpTriggerPx": "", "tpTriggerPxType": "", "tpOrdPx": "", "slTriggerPx": "",
            "slTriggerPxType": "", "slOrdPx": "", "stpId": "", "stpMode": "",
            "feeCcy": currency, "fee": "0", "rebateCcy": currency, "rebate": "0",
            "source": "", "category": "normal", "reduceOnly": "true", "isTpLimit": "false",
            "cancelSource": "", "cancelSourceReason": "", "quickMgnType": "",
            "algoClOrdId": "", "algoId": "", "uTime": now, "cTime": now,
        }
        return cls(account, order, row)

    @property
    def live(self) -> bool:
        return self.row["state"] in ("live", "partially_filled")

    def fill(self, size: Decimal, price: str, now_ms: int, trade_id: str) -> None:
        """A fill of ``size`` at ``price``: the order filled (or partially filled)."""
        self.filled += size
        self.row.update(
            accFillSz=_text(self.filled), fillSz=_text(size), fillPx=price, avgPx=price,
            fillTime=str(now_ms), tradeId=trade_id, uTime=str(now_ms),
            state="filled" if self.filled >= self.order.size else "partially_filled")

    def cancel(self, now_ms: int) -> None:
        """The rest of a market order that could not fill is canceled."""
        self.row.update(state="canceled", fillSz="0", uTime=str(now_ms))

    def push_row(self) -> dict[str, Any]:
        """The row as the ``orders`` channel pushes it (docs "WS / Order channel"): the
        details plus the fill's own fields."""
        fill_size = self.row["fillSz"]
        return {**self.row, "fillFee": "0", "fillFeeCcy": self.row["feeCcy"],
                "execType": "T" if fill_size not in ("", "0") else "",
                "fillPnl": "0", "notionalUsd": "", "fillNotionalUsd": "",
                "amendResult": "", "reqId": "", "code": "0", "msg": ""}

    def answer(self, now_ms: int) -> dict[str, str]:
        return answer_row(self.order.client_id, self.row["ordId"], self.row["tag"],
                          ACCEPTED, now_ms)


def answer_row(client_id: str, order_id: str, tag: str, outcome: tuple[str, str],
               now_ms: int) -> dict[str, str]:
    """One ``data`` row of the batch-orders answer (docs "Place multiple orders")."""
    return {"clOrdId": client_id, "ordId": order_id, "tag": tag, "ts": str(now_ms),
            "sCode": outcome[0], "sMsg": outcome[1]}


def batch_answer(rows: list[dict[str, str]], in_us: int, out_us: int) -> dict[str, Any]:
    """The whole answer: code 0 when every order was placed, 1 when none, 2 when some."""
    placed = sum(row["sCode"] == "0" for row in rows)
    if placed == len(rows):
        code, message = "0", ""
    elif placed == 0:
        code, message = "1", "All operations failed"
    else:
        code, message = "2", "Bulk operation partially succeeded."
    return {"code": code, "msg": message, "data": rows, "inTime": str(in_us),
            "outTime": str(out_us)}
