"""A recording dense in alerts, for the crash tests (tests/test_crash_live.py,
tests/long/crash_cycles.py): one account, a BTC and an ETH swap, marks every half second
of event time, and waves in which both prices fall about ten percent and come back.

Every wave walks the account down the whole ladder (warning, withdrawal lock, deleverage
with its plan, liquidation, reminders while there) and back up a level at a time; the
stop-loss rule fires on the way down and re-arms on the way up; near the top of each wave
the ETH marks pause longer than ``stale_after_s`` (``feed_stale``, then ``feed_recovered``).
So a kill at a random point almost always lands while alerts are being produced.
"""

from __future__ import annotations

from pathlib import Path

from tests.live_harness import EXAMPLE_CONFIG
from tests.recordings import (
    T0,
    Line,
    account_push,
    balance_row,
    mark_price,
    position_row,
    positions,
    rest,
    write_recording,
)

WAVE_MS = 40_000
STEP_MS = 500
DEPTH = 0.0905
"""How far the prices fall at the bottom of a wave (a fraction of the start price)."""
STALE_GAP_MS = 12_000
"""ETH marks pause this long near the top of each wave (``stale_after_s`` is 10)."""
REPEAT_INTERVAL_S = 3


def _index(base: str, quote: str, price: str, ts: int) -> Line:
    return {"recv_ts": ts + 4, "frame": {
        "arg": {"channel": "index-tickers", "instId": f"{base}-{quote}"},
        "data": [{"instId": f"{base}-{quote}", "idxPx": price, "ts": str(ts)}],
    }}


def _fall(elapsed_ms: int) -> float:
    """The fraction the prices have fallen at this point of a wave: flat for the first
    14 s (the stale gap goes there), a quick fall to the edge of the ladder, a slow walk
    through it and back (so each level is entered at a tick of its own), a quick rise."""
    at = elapsed_ms % WAVE_MS
    for start, end, low, high in _SEGMENTS:
        if start <= at < end:
            return low + (high - low) * (at - start) / (end - start)
    return 0.0


_EDGE = 0.084
_SEGMENTS = ((14_000, 19_000, 0.0, _EDGE), (19_000, 27_000, _EDGE, DEPTH),
             (27_000, 35_000, DEPTH, _EDGE), (35_000, 40_000, _EDGE, 0.0))


def crash_story_lines(waves: int) -> list[Line]:
    """The recording's lines, in receive order."""
    lines: list[Line] = [
        rest("/api/v5/account/config", [{"uid": "1", "acctLv": "3", "posMode": "net_mode",
                                         "level": "Lv1"}], T0 - 500, "main"),
        rest("/api/v5/trade/orders-pending", [], T0 - 400, "main"),
        account_push("main", [balance_row("USDT", "6000.0", T0 - 300),
                              balance_row("BTC", "0.05", T0 - 300)], T0 - 300, snapshot=True),
        positions("main", [position_row("BTC-USDT-SWAP", "100", "60000.00", T0 - 200),
                           position_row("ETH-USDT-SWAP", "100", "3000.00", T0 - 200)],
                  T0 - 200, snapshot=True),
    ]
    for step in range(waves * WAVE_MS // STEP_MS):
        elapsed = step * STEP_MS
        ts = T0 + elapsed
        fall = _fall(elapsed)
        btc = f"{60000.0 * (1.0 - fall):.2f}"
        eth = f"{3000.0 * (1.0 - fall * 1.02):.2f}"
        lines.append(mark_price("BTC-USDT-SWAP", btc, ts))
        in_gap = 1_000 <= elapsed % WAVE_MS < 1_000 + STALE_GAP_MS
        if not in_gap:
            lines.append(mark_price("ETH-USDT-SWAP", eth, ts + 250))
        if step % 2 == 0:
            lines.append(_index("BTC", "USDT", btc, ts + 1))
    return lines


def write_crash_story(path: Path, waves: int) -> Path:
    return write_recording(path, crash_story_lines(waves))


def crash_config(tmp_path: Path, server_port: int | None = None) -> Path:
    """The example configuration with reminders every :data:`REPEAT_INTERVAL_S`; pointed
    at a replay server when ``server_port`` is given (tests.live_harness.live_config).
    Retention stays at its default (90 days), older than the recording's event times."""
    from tests.live_harness import live_config

    base = tmp_path / "crash-base.toml"
    base.write_text(EXAMPLE_CONFIG.read_text().replace(
        "repeat_interval_s = 60", f"repeat_interval_s = {REPEAT_INTERVAL_S}"))
    if server_port is None:
        return base
    return live_config(tmp_path, server_port, base=base)
