"""Print the demo's alerts and final state as a short, readable report.

Usage: python examples/summarise.py ALERTS.jsonl STATE.json
(The machine-readable outputs stay in those files; this only reads them.)
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import orjson


def describe(alert: dict[str, Any]) -> str:
    payload = alert["payload"]
    match alert["kind"]:
        case "level_changed":
            return f"{alert['from_level']} -> {alert['level']}"
        case "stop_loss" | "deleverage_plan":
            orders = ", ".join(f"{o['side']} {o['size']:g} {o['inst_id']}"
                               for o in payload["orders"])
            rule = f"rule {payload['rule']}: " if "rule" in payload else ""
            return f"{rule}{orders} (reduce-only market)"
        case "feed_stale" if "missing" in payload:
            return f"risk unknown, missing: {', '.join(payload['missing'])}"
        case "feed_stale":
            return f"no mark for {payload['age_ms'] / 1000:.0f} s"
        case "reminder":
            return f"still in {alert['level']}"
        case "account_mode":
            return str(payload["reason"])
        case "exchange_divergence":
            return ", ".join(f"{f['field']}: ours {f['ours']}, OKX's {f['theirs']}"
                             for f in payload["fields"])
        case _:
            return ""


def main(alerts_path: str, state_path: str) -> None:
    with open(alerts_path, "rb") as handle:
        alerts = [orjson.loads(line) for line in handle if line.strip()]
    with open(state_path, "rb") as handle:
        state = orjson.loads(handle.read())
    print(f"{'event time (UTC)':<24} {'kind':<18} {'level':<16} {'MR':>7}  detail")
    for alert in alerts:
        when = datetime.fromtimestamp(alert["ts"] / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        ratio = alert["margin_ratio"]
        shown = "-" if ratio is None else f"{ratio:.3f}"
        print(f"{when:<24} {alert['kind']:<18} {alert['level']:<16} {shown:>7}  "
              f"{describe(alert)}")
    print()
    for name, account in state["accounts"].items():
        ratio = account["margin_ratio"]
        print(f"account {name}: level {account['level']}, margin ratio "
              f"{'-' if ratio is None else f'{ratio:.2f}'}, equity "
              f"{account['equity_usd']:,.2f} USD, maintenance {account['maint_margin_usd']:,.2f}"
              f" USD + closing fee {account['closing_fee_usd']:,.2f} USD, free margin "
              f"{account['free_margin_usd']:,.2f} USD"
              + ("" if account["risk_known"] else
                 f" (risk unknown: missing {', '.join(account['missing'])})"))
        for position in account["positions"]:
            liquidation = position["liquidation_mark"]
            print(f"  {position['inst_id']:<15} {position['contracts']:>8g} @ "
                  f"{position['avg_px']:,.2f}  mark {position['mark']:,.2f}  "
                  f"upl {position['upl']:,.2f}  liquidation mark "
                  f"{'-' if liquidation is None else f'{liquidation:,.2f}'}")
    stats = state["stats"]
    print(f"\n{stats['events']} events applied, {stats['quarantined']} lines quarantined, "
          f"{len(alerts)} alerts.\nFiles: {alerts_path}, {state_path}, out/demo.db "
          "(try: .venv/bin/riskmon alerts --db out/demo.db --kind stop_loss), "
          "out/riskmon.log")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
