"""The bundled Binance USDⓈ-M example (examples/binance_story.jsonl, its generator
examples/make_binance_story.py) replayed as a user runs it: ``riskmon replay`` in a
subprocess, the Binance decoder chosen by the configuration's venue table.

The generator's arithmetic is the expectation: with both marks at a fraction L of entry,
equity = 60,000 L - 55,000 and MM = 270 L (closing fee 0), so every figure an alert
carries can be checked against its own mark.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cli_replay import ROOT, replay

STORY = ROOT / "examples" / "binance_story.jsonl"
CONFIG = ROOT / "examples" / "binance.toml"
ENTRY = {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0}


def test_the_binance_example_tells_its_story(tmp_path: Path) -> None:
    alerts, state = replay(tmp_path, STORY, CONFIG)

    assert [(a["kind"], a["from_level"], a["level"]) for a in alerts] == [
        ("feed_stale", None, "normal"),
        ("feed_recovered", None, "normal"),
        ("stop_loss", None, "normal"),
        ("level_changed", "normal", "warning"),
        ("level_changed", "warning", "withdrawal_lock"),
        ("level_changed", "withdrawal_lock", "deleverage"),
        ("deleverage_plan", None, "deleverage"),
        ("level_changed", "deleverage", "liquidation"),
        ("reminder", None, "liquidation"),
        ("level_changed", "liquidation", "normal"),
    ]
    thresholds = {"warning": 1.5, "withdrawal_lock": 1.2, "deleverage": 1.0,
                  "liquidation": 0.85}
    for alert in alerts[:8]:
        if alert["kind"] != "level_changed" or alert["mark"] is None:
            continue
        level = alert["mark"] / ENTRY[alert["inst_id"]]
        assert alert["equity_usd"] == pytest.approx(60_000 * level - 55_000, abs=2.0)
        assert alert["maint_margin_usd"] == pytest.approx(270 * level, rel=1e-3)
        assert alert["margin_ratio"] <= thresholds[alert["level"]]
    stop = alerts[2]
    assert stop["payload"]["rule"] == "guard-110"
    assert stop["payload"]["value"] < 1.10
    main = state["accounts"]["main"]
    # After the deposit (10,000 USDT of wallet) and the rebound to entry.
    assert main["risk_known"] is True and main["level"] == "normal"
    assert main["equity_usd"] == pytest.approx(10_000, abs=1.0)
