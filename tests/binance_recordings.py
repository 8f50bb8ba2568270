"""Small Binance USDⓈ-M recordings (SPEC 3.2) for tests: lines holding frames and REST bodies
shaped as Binance sends them (docs https://developers.binance.com/docs/derivatives/
usds-margined-futures/: "Websocket Market Streams > Mark Price Stream", "User Data Streams >
Event: Balance and Position Update / Order Update / Margin Call", "Account > Position
Information V3", "Trade > Current All Open Orders", "Account > Notional and Leverage
Brackets", "Market Data > Exchange Information").

Each builder returns one recording line as a dict; ``write_recording`` (shared with the OKX
builders) writes them, and raw text lines for bad input, to a file.
"""

from __future__ import annotations

from typing import Any

from tests.recordings import T0, Line, write_recording

__all__ = ["T0", "Line", "account_update", "bracket_row", "frame", "margin_call",
           "mark_price", "order_row", "order_update", "position_risk_row", "rest",
           "stream_name", "write_recording"]


def stream_name(symbol: str) -> str:
    """The mark price stream of a symbol, as the live feed subscribes it."""
    return f"{symbol.lower()}@markPrice@1s"


def mark_price(symbol: str, price: str, ts: int) -> Line:
    """A ``markPriceUpdate`` on a combined stream, received 3 ms after its event time."""
    return {"recv_ts": ts + 3, "frame": {"stream": stream_name(symbol), "data": {
        "e": "markPriceUpdate", "E": ts, "s": symbol, "p": price, "i": price,
        "P": price, "r": "0.00010000", "T": ts + 3_600_000}}}


def account_update(account: str, ts: int, *, wallet: str = "1000",
                   positions: tuple[tuple[str, str, str], ...] = ()) -> Line:
    """An ``ACCOUNT_UPDATE`` of USDT's wallet and (symbol, amount, entry price) positions."""
    return {"recv_ts": ts + 5, "account": account, "frame": {
        "e": "ACCOUNT_UPDATE", "E": ts, "T": ts - 1, "a": {
            "m": "ORDER",
            "B": [{"a": "USDT", "wb": wallet, "cw": wallet, "bc": "0"}],
            "P": [{"s": symbol, "pa": amount, "ep": entry, "cr": "0", "up": "0",
                   "mt": "cross", "iw": "0", "ps": "BOTH", "ma": "USDT"}
                  for symbol, amount, entry in positions]}}}


def order_update(account: str, ts: int, order_id: int, status: str, *,
                 symbol: str = "BTCUSDT") -> Line:
    """An ``ORDER_TRADE_UPDATE`` of a resting limit buy."""
    return {"recv_ts": ts + 5, "account": account, "frame": {
        "e": "ORDER_TRADE_UPDATE", "E": ts, "T": ts - 1, "o": {
            "s": symbol, "c": f"client{order_id}", "S": "BUY", "o": "LIMIT", "f": "GTC",
            "q": "0.010", "p": "59000", "ap": "0", "sp": "0", "x": "NEW", "X": status,
            "i": order_id, "l": "0", "z": "0", "L": "0", "T": ts - 1, "t": 0, "R": False,
            "ps": "BOTH", "rp": "0"}}}


def margin_call(account: str, ts: int) -> Line:
    """A ``MARGIN_CALL`` of one cross position."""
    return {"recv_ts": ts + 5, "account": account, "frame": {
        "e": "MARGIN_CALL", "E": ts, "cw": "3.16812045",
        "p": [{"s": "ETHUSDT", "ps": "LONG", "pa": "1.327", "mt": "CROSSED", "iw": "0",
               "mp": "187.17127", "up": "-1.166074", "mm": "1.614445"}]}}


def position_risk_row(symbol: str, amount: str, entry: str, ts: int) -> dict[str, Any]:
    """One row of ``GET /fapi/v3/positionRisk``."""
    return {"symbol": symbol, "positionSide": "BOTH", "positionAmt": amount,
            "entryPrice": entry, "breakEvenPrice": entry, "markPrice": entry,
            "unRealizedProfit": "0", "liquidationPrice": "0", "isolatedMargin": "0",
            "notional": "0", "marginAsset": "USDT", "isolatedWallet": "0",
            "initialMargin": "0", "maintMargin": "0", "positionInitialMargin": "0",
            "openOrderInitialMargin": "0", "adl": 0, "bidNotional": "0", "askNotional": "0",
            "updateTime": ts}


def order_row(symbol: str, order_id: int, ts: int) -> dict[str, Any]:
    """One row of ``GET /fapi/v1/openOrders``."""
    return {"symbol": symbol, "orderId": order_id, "clientOrderId": f"client{order_id}",
            "side": "BUY", "type": "LIMIT", "price": "59000", "origQty": "0.010",
            "executedQty": "0", "status": "NEW", "reduceOnly": False, "positionSide": "BOTH",
            "timeInForce": "GTC", "time": ts, "updateTime": ts}


def bracket_row(symbol: str, mmr: float = 0.004) -> dict[str, Any]:
    """One symbol of ``GET /fapi/v1/leverageBracket``."""
    return {"symbol": symbol, "brackets": [
        {"bracket": 1, "initialLeverage": 125, "notionalCap": 50000, "notionalFloor": 0,
         "maintMarginRatio": mmr, "cum": 0.0},
        {"bracket": 2, "initialLeverage": 100, "notionalCap": 250000, "notionalFloor": 50000,
         "maintMarginRatio": mmr * 1.25, "cum": 50.0}]}


def rest(path: str, body: Any, ts: int, account: str | None = None) -> Line:
    """A recorded REST response (``path`` may carry its query)."""
    line: Line = {"recv_ts": ts}
    if account is not None:
        line["account"] = account
    line.update(rest=path, body=body)
    return line


def frame(line: Line) -> Any:
    """A recorded frame as the server sends it."""
    return line["frame"]
