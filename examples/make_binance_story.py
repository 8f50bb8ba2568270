"""Write examples/binance_story.jsonl, the bundled Binance USDⓈ-M recording (run from the
repository root).

The story, in event time (one account, "main", single-asset USDT margin, one-way mode):

  00:00  5,000 USDT; long 0.5 BTCUSDT at 60,000 and long 10 ETHUSDT at 3,000, both at 20x
         (notional 30,000 each: the first brackets, MM 0.4 % and 0.5 %).
  00:30  a limit buy of 5 ETHUSDT at 2,950 rests on the book; cancelled at 02:00.
  02:30  the BTCUSDT mark stream goes quiet for 15 s: feed_stale, then feed_recovered.
  03:00  prices slide. At about -3 % equity falls below 110 % of the initial margin in
         use: the "guard-110" stop-loss fires (nothing is sent: execution is off).
  06:00  at about -8 % the margin ratio crosses every level in turn: warning, withdrawal
         lock, deleverage (with its plan) and liquidation; a reminder repeats every
         minute while it stays there.
  08:00  the trader deposits 5,000 USDT (an ACCOUNT_UPDATE of reason DEPOSIT) while prices
         rebound: back to normal.

With both marks at a fraction L of entry: equity = 60,000 L - 55,000 (USDT), MM = 120 L +
150 L = 270 L, IM = 60,000 L / 20 = 3,000 L. Binance's ratio (MM / margin balance) has no
closing fee, so the example runs with ``risk.closing_fee_rate = 0`` and riskmon's margin
ratio is equity / MM: the stop-loss fires below L = 0.9700 and the levels are entered at
L = 0.92288 (1.5), 0.92166 (1.2), 0.92081 (1.0) and 0.92039 (0.85).

The recording starts as the daemon's does after connecting (adapters/binance/live.py): the
exchangeInfo answer on the market connection, then on the account's connection its modes,
balances, positions, live orders and leverage brackets.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import orjson

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
BTC, ETH = "BTCUSDT", "ETHUSDT"
ENTRY = {BTC: 60_000.0, ETH: 3_000.0}
SIZE = {BTC: 0.5, ETH: 10.0}
ACCOUNT = "main"

# (seconds, price as a fraction of entry): linear between the points.
PATH = [
    (0, 1.000), (120, 0.995), (180, 0.985), (240, 0.965), (300, 0.950), (360, 0.925),
    (420, 0.9180), (470, 0.9170), (480, 0.9170), (500, 0.950), (560, 1.000), (600, 1.000),
]
DEPOSIT_AT_S = 480
QUIET = (150, 165)  # BTCUSDT's mark stream silent (seconds)


def level_at(seconds: float) -> float:
    for (t1, p1), (t2, p2) in itertools.pairwise(PATH):
        if t1 <= seconds <= t2:
            return p1 + (p2 - p1) * (seconds - t1) / (t2 - t1)
    return PATH[-1][1]


def line(recv: int, **record: Any) -> bytes:
    return orjson.dumps({"recv_ts": recv, **record})


def bracket(cap: float, rate: float, cum: float, leverage: int, floor: float,
            number: int) -> dict[str, Any]:
    return {"bracket": number, "initialLeverage": leverage, "notionalCap": cap,
            "notionalFloor": floor, "maintMarginRatio": rate, "cum": cum}


def spec(symbol: str, base: str, step: str) -> dict[str, Any]:
    return {"symbol": symbol, "pair": symbol, "contractType": "PERPETUAL", "status": "TRADING",
            "baseAsset": base, "quoteAsset": "USDT", "marginAsset": "USDT",
            "filters": [{"filterType": "LOT_SIZE", "stepSize": step, "minQty": step,
                         "maxQty": "1000"}]}


def position_row(symbol: str, mark: float, ts: int) -> dict[str, Any]:
    size, entry = SIZE[symbol], ENTRY[symbol]
    notional = size * mark
    rate = 0.004 if symbol == BTC else 0.005
    return {"symbol": symbol, "positionSide": "BOTH", "positionAmt": f"{size}",
            "entryPrice": f"{entry}", "breakEvenPrice": f"{entry}", "markPrice": f"{mark}",
            "unRealizedProfit": f"{size * (mark - entry):.8f}", "liquidationPrice": "0",
            "isolatedMargin": "0", "notional": f"{notional:.8f}", "marginAsset": "USDT",
            "isolatedWallet": "0", "initialMargin": f"{notional / 20:.8f}",
            "maintMargin": f"{notional * rate:.8f}",
            "positionInitialMargin": f"{notional / 20:.8f}", "openOrderInitialMargin": "0",
            "adl": 1, "bidNotional": "0", "askNotional": "0", "updateTime": ts}


def order_event(ts: int, status: str) -> dict[str, Any]:
    return {"e": "ORDER_TRADE_UPDATE", "T": ts, "E": ts, "o": {
        "s": ETH, "c": "web_story_1", "S": "BUY", "o": "LIMIT", "f": "GTC", "q": "5",
        "p": "2950", "ap": "0", "sp": "0", "x": "NEW" if status == "NEW" else "CANCELED",
        "X": status, "i": 8389765519178345000, "l": "0", "z": "0", "L": "0", "T": ts,
        "t": 0, "b": "14750", "a": "0", "m": False, "R": False, "wt": "CONTRACT_PRICE",
        "ot": "LIMIT", "ps": "BOTH", "cp": False, "rp": "0", "pP": False, "si": 0, "ss": 0,
        "V": "EXPIRE_MAKER", "pm": "NONE", "gtd": 0}}


def main() -> None:
    lines: list[bytes] = [
        line(T0 - 60, rest="/fapi/v1/exchangeInfo", body={"timezone": "UTC",
             "serverTime": T0 - 60, "symbols": [spec(BTC, "BTC", "0.001"),
                                                spec(ETH, "ETH", "0.001")]}),
        line(T0 - 50, account=ACCOUNT, rest="/fapi/v1/multiAssetsMargin",
             body={"multiAssetsMargin": False}),
        line(T0 - 45, account=ACCOUNT, rest="/fapi/v1/positionSide/dual",
             body={"dualSidePosition": False}),
        line(T0 - 40, account=ACCOUNT, rest="/fapi/v3/account", body={
            "totalInitialMargin": "3000.00000000", "totalMaintMargin": "270.00000000",
            "totalWalletBalance": "5000.00000000", "totalUnrealizedProfit": "0.00000000",
            "totalMarginBalance": "5000.00000000", "totalPositionInitialMargin": "3000.0",
            "totalOpenOrderInitialMargin": "0.00000000",
            "totalCrossWalletBalance": "5000.00000000", "totalCrossUnPnl": "0.00000000",
            "availableBalance": "2000.00000000", "maxWithdrawAmount": "2000.00000000",
            "assets": [{"asset": "USDT", "walletBalance": "5000.00000000",
                        "unrealizedProfit": "0.00000000", "marginBalance": "5000.00000000",
                        "maintMargin": "270.00000000", "initialMargin": "3000.00000000",
                        "positionInitialMargin": "3000.00000000",
                        "openOrderInitialMargin": "0.00000000",
                        "crossWalletBalance": "5000.00000000", "crossUnPnl": "0.00000000",
                        "availableBalance": "2000.00000000",
                        "maxWithdrawAmount": "2000.00000000", "updateTime": T0 - 40}],
            "positions": []}),
        line(T0 - 30, account=ACCOUNT, rest="/fapi/v3/positionRisk",
             body=[position_row(BTC, ENTRY[BTC], T0 - 30),
                   position_row(ETH, ENTRY[ETH], T0 - 30)]),
        line(T0 - 20, account=ACCOUNT, rest="/fapi/v1/openOrders", body=[]),
        line(T0 - 10, account=ACCOUNT, rest="/fapi/v1/leverageBracket", body=[
            {"symbol": BTC, "brackets": [
                bracket(50_000, 0.004, 0, 125, 0, 1), bracket(600_000, 0.005, 50, 100, 50_000, 2),
                bracket(3_000_000, 0.0065, 950, 75, 600_000, 3)]},
            {"symbol": ETH, "brackets": [
                bracket(50_000, 0.005, 0, 100, 0, 1), bracket(600_000, 0.0065, 75, 75, 50_000, 2),
                bracket(3_000_000, 0.01, 2175, 50, 600_000, 3)]}]),
    ]
    for step in range(0, 600 * 4 + 1):  # a mark per symbol every 250 ms
        seconds = step / 4
        ts = T0 + step * 250
        level = level_at(seconds)
        for symbol in (BTC, ETH):
            if symbol == BTC and QUIET[0] <= seconds < QUIET[1]:
                continue
            mark = round(ENTRY[symbol] * level, 2)
            lines.append(line(ts + 3, frame={"stream": f"{symbol.lower()}@markPrice@1s",
                                             "data": {"e": "markPriceUpdate", "E": ts,
                                                      "s": symbol, "p": f"{mark:.8f}",
                                                      "i": f"{mark:.8f}",
                                                      "P": f"{mark:.8f}",
                                                      "r": "0.00010000",
                                                      "T": T0 + 8 * 3_600_000}}))
        if step == 30 * 4:
            lines.append(line(ts + 5, account=ACCOUNT, frame=order_event(ts, "NEW")))
        if step == 120 * 4:
            lines.append(line(ts + 5, account=ACCOUNT, frame=order_event(ts, "CANCELED")))
        if step == DEPOSIT_AT_S * 4:
            lines.append(line(ts + 5, account=ACCOUNT, frame={
                "e": "ACCOUNT_UPDATE", "T": ts, "E": ts, "a": {
                    "B": [{"a": "USDT", "wb": "10000.00000000", "cw": "10000.00000000",
                           "bc": "5000.00000000"}], "P": [], "m": "DEPOSIT"}}))
    Path("examples/binance_story.jsonl").write_bytes(b"\n".join(lines) + b"\n")


if __name__ == "__main__":
    main()
