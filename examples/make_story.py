"""Write examples/story.jsonl, the bundled recording (run from the repository root).

The story, in event time (one account, "main", cross margin on OKX v5):

  00:00  6,000 USDT and 0.05 BTC of collateral; long 1 BTC (100 BTC-USDT-SWAP) at 60,000
         and long 10 ETH (100 ETH-USDT-SWAP) at 3,000, both at 20x.
  00:30  a limit buy of 20 ETH-USDT-SWAP at 2,950 rests on the book (more initial margin).
  02:00  the resting ETH order is cancelled.
  02:30  the BTC mark-price feed goes quiet for 15 s: feed_stale, then feed_recovered.
  04:00  prices slide. At about -4.3% equity falls below 110% of the initial margin in use:
         the "guard-110" stop-loss fires (dry run: it lists the reduce-only orders it
         would send).
  07:10  at about -8.9% the margin ratio crosses every level in turn: warning, withdrawal
         lock, deleverage (with its plan of the positions the exchange would close first)
         and liquidation; while it stays there a reminder repeats every minute.
  09:00  the trader deposits 6,000 USDT while prices rebound: back to normal in one step,
         and the stop-loss re-arms.

With both marks at a fraction L of entry (ETH 0.2% rich): AE = 92,760 L - 84,000,
MM = 390.3 L, the closing fee CF = 0.05% of the position value 90,060 L = 45.03 L (SPEC
1.2: the margin ratio is AE / (MM + CF)), IM = 4,503 L, so the stop-loss fires below
L = 0.9567, and the levels are entered at L = 0.91198, 0.91070, 0.90983 and 0.90919.

The recording starts as a daemon's does after connecting (SPEC 3.1): the REST answers of
``account/config`` (multi-currency margin, one-way mode) and ``orders-pending``, then the
account and positions snapshots the private channels push on subscribing.

Two deliberately bad lines (a truncated frame and a NaN price) show quarantine at work.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import orjson

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
BTC, ETH = "BTC-USDT-SWAP", "ETH-USDT-SWAP"
BTC_ENTRY, ETH_ENTRY = 60_000.0, 3_000.0
POSITION_IDS = {BTC: "307173036051017730", ETH: "307173036051017731"}

# (seconds, price as a fraction of entry): linear between the points.
PATH = [
    (0, 1.000), (60, 0.998), (120, 0.985), (180, 0.975), (240, 0.960), (300, 0.950),
    (360, 0.915), (420, 0.9125), (480, 0.907), (530, 0.9065), (540, 0.9065),
    (560, 0.930), (600, 0.970), (660, 1.000),
]
DEPOSIT_AT_S = 540


def level_at(seconds: float) -> float:
    for (t1, p1), (t2, p2) in itertools.pairwise(PATH):
        if t1 <= seconds <= t2:
            return p1 + (p2 - p1) * (seconds - t1) / (t2 - t1)
    return PATH[-1][1]


def public(recv: int, frame: dict[str, Any]) -> bytes:
    return orjson.dumps({"recv_ts": recv, "frame": frame})


def private(recv: int, frame: dict[str, Any]) -> bytes:
    return orjson.dumps({"recv_ts": recv, "account": "main", "frame": frame})


def price(value: float) -> str:
    return f"{value:.2f}"


def mark_frame(inst_id: str, value: float, ts: int) -> dict[str, Any]:
    return {"arg": {"channel": "mark-price", "instId": inst_id},
            "data": [{"instType": "SWAP", "instId": inst_id, "markPx": price(value),
                      "ts": str(ts)}]}


def index_frame(inst_id: str, value: float, ts: int) -> dict[str, Any]:
    return {"arg": {"channel": "index-tickers", "instId": inst_id},
            "data": [{"instId": inst_id, "idxPx": price(value), "high24h": price(value * 1.02),
                      "low24h": price(value * 0.95), "open24h": price(value),
                      "sodUtc0": price(value), "sodUtc8": price(value), "ts": str(ts)}]}


def account_frame(usdt: float, btc: float, ts: int, event_type: str) -> dict[str, Any]:
    def detail(ccy: str, cash: float) -> dict[str, str]:
        return {"ccy": ccy, "cashBal": f"{cash}", "eq": f"{cash}", "liab": "", "interest": "",
                "upl": "0", "uTime": str(ts), "availBal": f"{cash}", "frozenBal": "0",
                "mgnRatio": "", "notionalLever": ""}

    return {"arg": {"channel": "account", "uid": "44705892343619584"},
            "eventType": event_type, "curPage": 1, "lastPage": True,
            "data": [{"uTime": str(ts), "totalEq": "", "adjEq": "", "imr": "", "mmr": "",
                      "mgnRatio": "", "notionalUsd": "", "ordFroz": "",
                      "details": [detail("USDT", usdt), detail("BTC", btc)]}]}


def position_row(inst_id: str, pos: int, avg: float, ts: int) -> dict[str, str]:
    return {"instType": "SWAP", "instId": inst_id, "mgnMode": "cross", "posSide": "net",
            "pos": str(pos), "avgPx": price(avg) if pos else "", "lever": "20",
            "ccy": "USDT", "posId": POSITION_IDS[inst_id], "upl": "", "imr": "",
            "mmr": "", "mgnRatio": "", "liqPx": "", "markPx": "", "uTime": str(ts),
            "cTime": str(T0 - 3_600_000)}


def order_row(state: str, ts: int) -> dict[str, str]:
    return {"instType": "SWAP", "instId": ETH, "ordId": "680800019749904384",
            "clOrdId": "dip-buy-1", "px": "2950", "sz": "20", "accFillSz": "0",
            "fillSz": "0", "side": "buy", "posSide": "net", "ordType": "limit",
            "tdMode": "cross", "state": state, "reduceOnly": "false", "lever": "20",
            "avgPx": "", "cTime": str(T0 + 30_000), "uTime": str(ts)}


def main() -> None:
    lines: list[bytes] = []
    lines.append(orjson.dumps({"recv_ts": T0 - 600, "account": "main",
                               "rest": "/api/v5/account/config",
                               "body": {"code": "0", "msg": "", "data": [{
                                   "uid": "44705892343619584", "mainUid": "44705892343619584",
                                   "acctLv": "3", "posMode": "net_mode", "autoLoan": False,
                                   "greeksType": "PA", "level": "Lv1", "ctIsoMode": "automatic",
                                   "mgnIsoMode": "automatic", "label": "riskmon story"}]}}))
    lines.append(orjson.dumps({"recv_ts": T0 - 500, "account": "main",
                               "rest": "/api/v5/trade/orders-pending",
                               "body": {"code": "0", "msg": "", "data": []}}))
    lines.append(private(T0 - 400, account_frame(6_000.0, 0.05, T0 - 400, "snapshot")))
    lines.append(private(T0 - 300, {
        "arg": {"channel": "positions", "instType": "ANY", "uid": "44705892343619584"},
        "eventType": "snapshot", "curPage": 1, "lastPage": True,
        "data": [position_row(BTC, 100, BTC_ENTRY, T0 - 300),
                 position_row(ETH, 100, ETH_ENTRY, T0 - 300)]}))
    deposit_done = False
    for step in range(0, 660 * 2):
        seconds = step / 2
        ts = T0 + step * 500
        level = level_at(seconds)
        stale_gap = 150 <= seconds < 165
        if step % 2 == 0 and not stale_gap:
            lines.append(public(ts + 3, mark_frame(BTC, BTC_ENTRY * level, ts)))
        if step % 2 == 1:
            lines.append(public(ts + 3, mark_frame(ETH, ETH_ENTRY * level * 1.002, ts)))
        if step % 10 == 0:
            lines.append(public(ts + 4, index_frame("BTC-USDT", BTC_ENTRY * level, ts)))
        if seconds == 30:
            lines.append(private(ts + 6, {"arg": {"channel": "orders", "instType": "ANY"},
                                          "data": [order_row("live", ts)]}))
        if seconds == 120:
            lines.append(private(ts + 6, {"arg": {"channel": "orders", "instType": "ANY"},
                                          "data": [order_row("canceled", ts)]}))
        if seconds == 200:
            # A frame cut off in transit, and a price that is not a number.
            lines.append(public(ts + 7, mark_frame(BTC, BTC_ENTRY * level, ts))[:61])
            bad = mark_frame(ETH, 1.0, ts)
            bad["data"][0]["markPx"] = "NaN"
            lines.append(public(ts + 8, bad))
        if seconds >= DEPOSIT_AT_S and not deposit_done:
            deposit_done = True
            lines.append(private(ts + 9, account_frame(12_000.0, 0.05, ts, "event_update")))
    Path("examples/story.jsonl").write_bytes(b"\n".join(lines) + b"\n")


if __name__ == "__main__":
    main()
