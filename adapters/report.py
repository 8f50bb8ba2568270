"""``riskmon report``: one self-contained HTML page per account, and a PNG of it (SPEC 5).

The page holds two charts drawn as inline SVG (no script, no font, nothing fetched): the
margin ratio over time with the level thresholds drawn across it and every alert marked
where it happened, and below it the equity and the maintenance margin; then the table of
the alerts. Its inputs are the account's margin history (monitor.core.records.MarginPoint) and
alerts, from a database or from a replay.

The ratio axis runs from 0 to a little above the warning threshold's double, or to the
highest ratio seen when that is lower, so the thresholds stay readable: a ratio above the
axis (an account far from any level) is drawn along its top edge. An undefined ratio
(nothing at risk) is drawn there too.

The PNG is the page as headless Chromium renders it (:func:`render_png`); without a
Chromium the HTML is the report.
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from monitor.core.alerts import Alert
from monitor.core.records import MarginPoint
from monitor.core.settings import RiskConfig

__all__ = ["ALERT_COLOURS", "LEVEL_COLOURS", "find_chromium", "page_height", "render_html",
           "render_png"]

WIDTH: Final = 960
RATIO_HEIGHT: Final = 360
FIGURES_HEIGHT: Final = 220
MARGIN_LEFT: Final = 64
MARGIN_RIGHT: Final = 150
MARGIN_TOP: Final = 16
MARGIN_BOTTOM: Final = 28

# Colours with a meaning (also what the screenshot test looks for).
LEVEL_COLOURS: Final = {"warning": "#e6a700", "withdrawal_lock": "#e05d00",
                        "deleverage": "#c8002d", "liquidation": "#6a0080"}
ALERT_COLOURS: Final = {"level_changed": "#0050c8", "stop_loss": "#00a050",
                        "deleverage_plan": "#c8002d", "reminder": "#6a0080",
                        "exchange_divergence": "#8a5a00", "account_mode": "#8a5a00",
                        "feed_stale": "#7a7a7a", "feed_recovered": "#7a7a7a",
                        "feed_connected": "#b0b0b0", "feed_disconnected": "#7a7a7a"}
RATIO_COLOUR: Final = "#101010"
EQUITY_COLOUR: Final = "#0050c8"
MAINT_COLOUR: Final = "#c8002d"


def render_html(account: str, history: Sequence[MarginPoint], alerts: Sequence[Alert],
                risk: RiskConfig) -> str:
    """The report page of one account (see the module docstring)."""
    times = [point.ts for point in history] + [alert.ts for alert in alerts]
    start, end = (min(times), max(times)) if times else (0, 1)
    if end <= start:
        end = start + 1
    title = f"riskmon report: {account}"
    period = (f"{_when(start)} to {_when(end)} (UTC)" if times
              else "no margin history and no alerts stored")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font:14px sans-serif;margin:24px;color:#101010;background:#fff}"
        "table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left;"
        "border-bottom:1px solid #ddd}svg{display:block;margin:8px 0}"
        "text{font:12px sans-serif}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(period)}; {len(history)} margin samples, {len(alerts)} alerts.</p>",
        "<h2>Margin ratio</h2>",
        _ratio_chart(history, alerts, risk, start, end),
        "<h2>Equity and maintenance margin (USD)</h2>",
        _figures_chart(history, start, end),
        "<h2>Alerts</h2>",
        _alert_table(alerts),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _x(ts: int, start: int, end: int) -> float:
    return MARGIN_LEFT + (ts - start) / (end - start) * (WIDTH - MARGIN_LEFT - MARGIN_RIGHT)


def _ratio_chart(history: Sequence[MarginPoint], alerts: Sequence[Alert], risk: RiskConfig,
                 start: int, end: int) -> str:
    ratios = [p.margin_ratio for p in history if p.margin_ratio is not None]
    top = max(2.2 * risk.warning, 1.0)
    if ratios and max(ratios) < top:
        top = max(max(ratios) * 1.1, risk.warning * 1.2)
    bottom_y = RATIO_HEIGHT - MARGIN_BOTTOM

    def y(ratio: float | None) -> float:
        value = top if ratio is None else min(max(ratio, 0.0), top)
        return bottom_y - value / top * (bottom_y - MARGIN_TOP)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{RATIO_HEIGHT}"'
           f' role="img" aria-label="margin ratio">',
           f'<rect x="0" y="0" width="{WIDTH}" height="{RATIO_HEIGHT}" fill="#fff"/>',
           _axes(bottom_y, start, end)]
    for level, threshold in (("warning", risk.warning),
                             ("withdrawal_lock", risk.withdrawal_lock),
                             ("deleverage", risk.deleverage),
                             ("liquidation", risk.liquidation)):
        ty = y(threshold)
        colour = LEVEL_COLOURS[level]
        out.append(f'<line class="threshold" data-level="{level}" x1="{MARGIN_LEFT}"'
                   f' y1="{ty:.1f}" x2="{WIDTH - MARGIN_RIGHT}" y2="{ty:.1f}"'
                   f' stroke="{colour}" stroke-width="3" stroke-dasharray="10 5"/>')
        out.append(f'<text x="{WIDTH - MARGIN_RIGHT + 6}" y="{ty + 4:.1f}" fill="{colour}">'
                   f"{level} {threshold:g}</text>")
    for tick in _ticks(top):
        out.append(f'<text x="{MARGIN_LEFT - 8}" y="{y(tick) + 4:.1f}" text-anchor="end">'
                   f"{tick:g}</text>")
    if history:
        points = " ".join(f"{_x(p.ts, start, end):.1f},{y(p.margin_ratio):.1f}"
                          for p in history)
        out.append(f'<polyline class="ratio" points="{points}" fill="none"'
                   f' stroke="{RATIO_COLOUR}" stroke-width="2"/>')
    for alert in alerts:
        ax = _x(alert.ts, start, end)
        colour = ALERT_COLOURS.get(alert.kind, "#404040")
        label = html.escape(f"{_when(alert.ts)} {alert.kind} {alert.level}")
        out.append(f'<g class="alert-marker" data-kind="{alert.kind}"'
                   f' data-level="{alert.level}"><title>{label}</title>'
                   f'<line x1="{ax:.1f}" y1="{MARGIN_TOP}" x2="{ax:.1f}" y2="{bottom_y}"'
                   f' stroke="{colour}" stroke-width="1" stroke-opacity="0.5"/>'
                   f'<circle cx="{ax:.1f}" cy="{y(alert.margin_ratio):.1f}" r="6"'
                   f' fill="{colour}"/></g>')
    out.append("</svg>")
    return "\n".join(out)


def _figures_chart(history: Sequence[MarginPoint], start: int, end: int) -> str:
    values = [v for p in history for v in (p.equity_usd, p.maint_margin_usd)]
    low = min([0.0, *values])
    high = max([1.0, *values])
    bottom_y = FIGURES_HEIGHT - MARGIN_BOTTOM

    def y(value: float) -> float:
        return bottom_y - (value - low) / (high - low) * (bottom_y - MARGIN_TOP)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{FIGURES_HEIGHT}"'
           f' role="img" aria-label="equity and maintenance margin">',
           f'<rect x="0" y="0" width="{WIDTH}" height="{FIGURES_HEIGHT}" fill="#fff"/>',
           _axes(bottom_y, start, end)]
    for value in (low, high):
        out.append(f'<text x="{MARGIN_LEFT - 8}" y="{y(value) + 4:.1f}" text-anchor="end">'
                   f"{value:,.0f}</text>")
    for name, colour, field in (("equity", EQUITY_COLOUR, "equity_usd"),
                                ("maintenance margin", MAINT_COLOUR, "maint_margin_usd")):
        if history:
            points = " ".join(f"{_x(p.ts, start, end):.1f},{y(getattr(p, field)):.1f}"
                              for p in history)
            out.append(f'<polyline class="{field}" points="{points}" fill="none"'
                       f' stroke="{colour}" stroke-width="2"/>')
            last = getattr(history[-1], field)
            out.append(f'<text x="{WIDTH - MARGIN_RIGHT + 6}" y="{y(last) + 4:.1f}"'
                       f' fill="{colour}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _axes(bottom_y: float, start: int, end: int) -> str:
    parts = [f'<line x1="{MARGIN_LEFT}" y1="{MARGIN_TOP}" x2="{MARGIN_LEFT}" y2="{bottom_y}"'
             ' stroke="#888"/>',
             f'<line x1="{MARGIN_LEFT}" y1="{bottom_y}" x2="{WIDTH - MARGIN_RIGHT}"'
             f' y2="{bottom_y}" stroke="#888"/>']
    for index in range(5):
        ts = start + (end - start) * index // 4
        parts.append(f'<text x="{_x(ts, start, end):.1f}" y="{bottom_y + 18}"'
                     f' text-anchor="middle">{_when(ts)[11:19]}</text>')
    return "\n".join(parts)


def _ticks(top: float) -> list[float]:
    step = 0.5 if top <= 5 else (1.0 if top <= 10 else float(round(top / 5)))
    ticks = []
    value = 0.0
    while value <= top + 1e-9:
        ticks.append(round(value, 6))
        value += step
    return ticks


def _alert_table(alerts: Sequence[Alert]) -> str:
    if not alerts:
        return "<p>No alerts.</p>"
    rows = ["<table><tr><th>event time (UTC)</th><th>kind</th><th>level</th>"
            "<th>margin ratio</th><th>instrument</th></tr>"]
    for alert in alerts:
        ratio = "-" if alert.margin_ratio is None else f"{alert.margin_ratio:.3f}"
        rows.append(f"<tr><td>{_when(alert.ts)}</td><td>{html.escape(alert.kind)}</td>"
                    f"<td>{html.escape(alert.level)}</td><td>{ratio}</td>"
                    f"<td>{html.escape(alert.inst_id or '')}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def find_chromium() -> str | None:
    """A headless-capable Chromium: ``$RISKMON_CHROMIUM``, else ``chromium`` or
    ``chromium-browser`` or ``google-chrome`` on the PATH."""
    configured = os.environ.get("RISKMON_CHROMIUM")
    if configured:
        return configured if shutil.which(configured) else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def page_height(alerts: int) -> int:
    """The height in pixels the page of a report with ``alerts`` alerts needs."""
    return min(RATIO_HEIGHT + FIGURES_HEIGHT + 360 + 24 * (alerts + 1), 16_000)


def render_png(page: Path, png: Path, chromium: str, *, height: int,
               timeout_s: float = 60.0) -> None:
    """Screenshot ``page`` into ``png`` (``height`` pixels: see :func:`page_height`) with
    headless Chromium, in its own empty profile and with no network (the page needs none).
    Raises OSError or subprocess errors when it fails."""
    with tempfile.TemporaryDirectory(prefix="riskmon-chromium-") as profile:
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
             f"--window-size={WIDTH + 48},{height}", f"--screenshot={png}",
             page.resolve().as_uri()],
            check=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not png.is_file():
        raise OSError(f"Chromium wrote no screenshot at {png}")
