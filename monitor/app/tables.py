"""Text for people: alerts and account figures as aligned tables (``riskmon alerts``,
``riskmon status``, the replay summary, the demo). Machines read JSON instead."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from monitor.runtime.pipeline import Stats


def when(ts: int) -> str:
    """An event time (ms) as UTC ``YYYY-MM-DD HH:MM:SS``."""
    return datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def ratio(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def alert_detail(alert: Mapping[str, Any]) -> str:
    """One line saying what an alert (its JSON object, SPEC 2) is about."""
    payload: Mapping[str, Any] = alert.get("payload") or {}
    where = ""
    if payload.get("margin_mode") == "isolated":
        where = f"isolated {payload.get('inst_id')} {payload.get('side')}: "
    elif "pool" in payload:
        where = f"{payload['pool']} pool: "
    elif payload.get("source") == "exchange":
        where = "exchange's figures: "
    match alert.get("kind"):
        case "level_changed":
            return f"{where}{alert['from_level']} -> {alert['level']}"
        case "stop_loss" | "deleverage_plan":
            orders = ", ".join(f"{o['side']} {o['size']:g} {o['inst_id']}"
                               for o in payload.get("orders", ()))
            rule = f"rule {payload['rule']}: " if "rule" in payload else ""
            return f"{where}{rule}{orders or 'no orders'} (reduce-only market)"
        case "feed_stale" if "missing" in payload:
            return f"risk unknown, missing: {', '.join(payload['missing'])}"
        case "feed_stale":
            return f"no mark for {payload['age_ms'] / 1000:.0f} s"
        case "feed_recovered" if "recovered" in payload:
            return f"{payload['recovered']} arrived"
        case "reminder":
            return f"{where}still in {alert['level']}"
        case "account_mode":
            return str(payload.get("reason", ""))
        case "exchange_divergence":
            return where + ", ".join(f"{f['field']}: ours {f['ours']}, exchange {f['theirs']}"
                                     for f in payload.get("fields", ()))
        case "feed_connected" | "feed_disconnected":
            return f"{payload.get('feed')}: {payload.get('reason')}"
        case _:
            return ""


def table(headers: Sequence[str], rows: Sequence[Sequence[str]],
          right: Sequence[int] = ()) -> str:
    """Columns aligned to their widest cell (``right``: right-aligned column indexes)."""
    widths = [max([len(header), *(len(row[i]) for row in rows)])
              for i, header in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                         for i, cell in enumerate(cells)).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)]) + "\n"


def alerts_table(alerts: Sequence[Mapping[str, Any]]) -> str:
    rows = [(when(a["ts"]), a["account"], a["kind"], a["level"], ratio(a["margin_ratio"]),
             alert_detail(a)) for a in alerts]
    return table(("event time (UTC)", "account", "kind", "level", "MR", "detail"), rows,
                 right=(4,))


def status_table(document: Mapping[str, Any]) -> str:
    """``riskmon status`` for a person: a line per account, then its positions."""
    out = []
    rows = []
    for name, account in document["accounts"].items():
        known = account.get("risk_known", True)
        rows.append((name, account["level"] + ("" if known else " (risk unknown)"),
                     ratio(account["margin_ratio"]), f"{account['equity_usd']:,.2f}",
                     f"{account['maint_margin_usd']:,.2f}", f"{account['init_margin_usd']:,.2f}",
                     "-" if account.get("next_level") is None
                     else f"{account['next_level']} {ratio(account['distance_to_next'])}",
                     ratio(account.get("distance_to_liquidation"))))
    out.append(table(("account", "level", "MR", "equity USD", "MM USD", "IM USD",
                      "to next level", "to liquidation"), rows, right=(2, 3, 4, 5, 7)))
    for name, account in document["accounts"].items():
        if account.get("missing"):
            out.append(f"{name}: missing {', '.join(account['missing'])}\n")
        positions = account.get("positions") or []
        if not positions:
            continue
        position_rows: list[tuple[str, ...]] = []
        for p in positions:
            liquidation = p.get("liquidation_mark")
            distance = p.get("liquidation_distance_pct")
            position_rows.append((
                f"  {p['inst_id']}", p.get("side", "net"), p.get("margin_mode", "cross"),
                f"{p['contracts']:g}", f"{p['avg_px']:,.2f}",
                "-" if p.get("mark") is None else f"{p['mark']:,.2f}", f"{p['upl']:,.4f}",
                "-" if liquidation is None else f"{liquidation:,.2f}",
                "-" if distance is None else f"{distance:+.2f}%"))
        out.append(f"\n{name}:\n" + table(
            ("  position", "side", "mode", "contracts", "entry", "mark", "upl",
             "liquidation mark", "distance"), position_rows, right=(3, 4, 5, 6, 7, 8)))
    return "".join(out)


class ProgressBar:
    """A replay's progress on a terminal (standard error), once it has run for
    ``after_s``: the share of the file read, lines and alerts so far, redrawn in place at
    most ``every_s``. Nothing is written for a replay that ends sooner."""

    def __init__(self, stream: TextIO, total_bytes: int, *, after_s: float = 2.0,
                 every_s: float = 0.25, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._total = max(total_bytes, 1)
        self._clock = clock
        self._start = clock()
        self._after_s = after_s
        self._every_s = every_s
        self._drawn_at: float | None = None

    def update(self, read_bytes: int, stats: Stats) -> None:
        now = self._clock()
        if now - self._start < self._after_s:
            return
        if self._drawn_at is not None and now - self._drawn_at < self._every_s:
            return
        self._drawn_at = now
        share = min(read_bytes / self._total, 1.0)
        filled = int(share * 30)
        self._stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {share:6.1%}  "
                           f"{stats.lines:,} lines, {stats.alerts:,} alerts, "
                           f"{stats.quarantined:,} quarantined ")
        self._stream.flush()

    def finish(self) -> None:
        """End the bar's line, if one was drawn."""
        if self._drawn_at is not None:
            self._stream.write("\n")
            self._stream.flush()


def replay_summary(path: Path, stats: Stats, levels: Mapping[str, str]) -> str:
    """What a replay did, for a person at a terminal."""
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(stats.alerts_by_kind.items()))
    lines = [f"replayed {path}: {stats.lines:,} lines, {stats.events:,} events, "
             f"{stats.quarantined:,} quarantined, {stats.alerts:,} alerts"
             + (f" ({kinds})" if kinds else "")]
    lines += [f"  {name}: ends at {level}" for name, level in sorted(levels.items())]
    return "\n".join(lines) + "\n"
