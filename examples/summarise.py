"""Print the demo's alerts and final state as a short, readable report.

Usage: python examples/summarise.py ALERTS.jsonl STATE.json
(The machine-readable outputs stay in those files; this only reads them.)
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import orjson

from monitor.app.tables import alert_detail


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
              f"{alert_detail(alert)}")
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
