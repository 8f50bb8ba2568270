"""Small recordings (SPEC 3.2) for tests: lines holding frames and REST bodies shaped as OKX
v5 sends them (docs: "Public Data > WebSocket > Mark price channel", "Trading Account >
WebSocket > Positions / Account channel", "Order Book Trading > Trade > WS / Order channel").

Each builder returns one recording line as a dict; :func:`write_recording` writes them (and
any raw text lines, for bad input) to a file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, in ms
UID = "44705892343619584"

Line = dict[str, Any]


def mark_price(inst_id: str, price: str, ts: int) -> Line:
    """A public ``mark-price`` push received 3 ms after its exchange time."""
    return {"recv_ts": ts + 3, "frame": {
        "arg": {"channel": "mark-price", "instId": inst_id},
        "data": [{"instType": "SWAP", "instId": inst_id, "markPx": price, "ts": str(ts)}],
    }}


def position_row(inst_id: str, contracts: str, avg_px: str, ts: int,
                 pos_side: str = "net") -> dict[str, Any]:
    return {"instType": "SWAP", "instId": inst_id, "mgnMode": "cross", "posSide": pos_side,
            "pos": contracts, "avgPx": avg_px, "lever": "20", "ccy": "USDT",
            "uTime": str(ts), "pTime": str(ts)}


def positions(account: str, rows: list[dict[str, Any]], ts: int, *,
              snapshot: bool = False) -> Line:
    """A private ``positions`` push: a one-page snapshot or an ``event_update``."""
    frame: dict[str, Any] = {"arg": {"channel": "positions", "instType": "ANY", "uid": UID}}
    if snapshot:
        frame.update(eventType="snapshot", curPage=1, lastPage=True)
    else:
        frame["eventType"] = "event_update"
    frame["data"] = rows
    return {"recv_ts": ts + 5, "account": account, "frame": frame}


def balance_row(currency: str, cash: str, ts: int) -> dict[str, Any]:
    return {"ccy": currency, "cashBal": cash, "eq": cash, "liab": "", "interest": "",
            "upl": "0", "uTime": str(ts)}


def account_push(account: str, details: list[dict[str, Any]], ts: int, *,
                 snapshot: bool = False) -> Line:
    """A private ``account`` push with one account row."""
    frame: dict[str, Any] = {"arg": {"channel": "account", "uid": UID}}
    if snapshot:
        frame.update(eventType="snapshot", curPage=1, lastPage=True)
    else:
        frame["eventType"] = "event_update"
    frame["data"] = [{"uTime": str(ts), "totalEq": "", "adjEq": "", "imr": "", "mmr": "",
                      "mgnRatio": "", "details": details}]
    return {"recv_ts": ts + 5, "account": account, "frame": frame}


def order_row(order_id: str, state: str, ts: int, *, inst_id: str = "BTC-USDT-SWAP",
              side: str = "buy", size: str = "1", price: str = "59000") -> dict[str, Any]:
    return {"instType": "SWAP", "instId": inst_id, "ordId": order_id, "clOrdId": "",
            "px": price, "sz": size, "accFillSz": "0", "side": side, "ordType": "limit",
            "state": state, "lever": "20", "reduceOnly": "false", "uTime": str(ts),
            "cTime": str(ts)}


def orders(account: str, rows: list[dict[str, Any]], ts: int) -> Line:
    """A private ``orders`` push."""
    return {"recv_ts": ts + 5, "account": account, "frame": {
        "arg": {"channel": "orders", "instType": "ANY", "uid": UID}, "data": rows}}


def rest(path: str, rows: list[dict[str, Any]], ts: int, account: str | None = None) -> Line:
    """A recorded REST response ``{"code": "0", "msg": "", "data": rows}``."""
    line: Line = {"recv_ts": ts}
    if account is not None:
        line["account"] = account
    line.update(rest=path, body={"code": "0", "msg": "", "data": rows})
    return line


def write_recording(path: Path, lines: Iterable[Line | str]) -> Path:
    """Write the lines as JSON lines; a ``str`` is written as it is (for bad input)."""
    with path.open("wb") as handle:
        for line in lines:
            handle.write(line.encode() if isinstance(line, str) else orjson.dumps(line))
            handle.write(b"\n")
    return path
