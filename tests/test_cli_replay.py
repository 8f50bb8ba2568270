"""``riskmon replay`` and ``riskmon alerts`` as a user runs them: a real subprocess, real
files, a real SQLite database. Assertions are on the JSON outputs, rows and exit codes.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[1]
STORY = ROOT / "examples" / "story.jsonl"
STORY_CONFIG = ROOT / "examples" / "riskmon.toml"


def riskmon(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run([sys.executable, "-m", "monitor", "--log-format", "json",
                             *map(str, args)], capture_output=True, timeout=120, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}: {result.stderr.decode()[-2000:]}")
    return result


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def replay(tmp_path: Path, recording: Path = STORY, config: Path = STORY_CONFIG,
           *extra: str | Path, name: str = "run") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    alerts_out = tmp_path / f"{name}-alerts.jsonl"
    state_out = tmp_path / f"{name}-state.json"
    riskmon("replay", recording, "--config", config, "--alerts-out", alerts_out,
            "--state-out", state_out, *extra)
    return read_lines(alerts_out), orjson.loads(state_out.read_bytes())


def test_example_tells_its_story(tmp_path: Path) -> None:
    alerts, state = replay(tmp_path)
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
    # Every level change is on the right side of its threshold (seed 000 defaults).
    thresholds = {"warning": 1.5, "withdrawal_lock": 1.2, "deleverage": 1.0,
                  "liquidation": 0.85}
    for alert in alerts:
        assert alert["margin_ratio"] == pytest.approx(
            alert["equity_usd"] / (alert["maint_margin_usd"] + alert["closing_fee_usd"]))
        if alert["kind"] == "level_changed" and alert["level"] != "normal":
            assert alert["margin_ratio"] <= thresholds[alert["level"]]
    stale = alerts[0]
    assert stale["inst_id"] == "BTC-USDT-SWAP" and stale["payload"]["age_ms"] > 10_000
    # The stop-loss ("exit when equity dips below 110% of used margin") lists the
    # reduce-only market orders closing both positions.
    stop = alerts[2]
    assert stop["payload"]["rule"] == "guard-110"
    # It fires on the first tick below 1.10 (ticks move the coverage by far less than 0.01).
    assert 1.09 < stop["payload"]["value"] < 1.10
    assert stop["payload"]["value"] == pytest.approx(stop["equity_usd"] / stop["init_margin_usd"])
    assert stop["payload"]["orders"] == [
        {"inst_id": "BTC-USDT-SWAP", "side": "sell", "size": 100.0, "reduce_only": True,
         "ord_type": "market", "pos_side": "net", "margin_mode": "cross"},
        {"inst_id": "ETH-USDT-SWAP", "side": "sell", "size": 100.0, "reduce_only": True,
         "ord_type": "market", "pos_side": "net", "margin_mode": "cross"},
    ]
    plan = alerts[6]["payload"]
    assert plan["projected_margin_ratio"] >= plan["target_margin_ratio"] == pytest.approx(1.02)
    assert all(order["reduce_only"] and order["ord_type"] == "market"
               for order in plan["orders"])
    assert alerts[8]["ts"] - alerts[5]["ts"] == 60_000  # repeat_interval_s = 60
    # Every alert has the fields of SPEC section 2.
    for alert in alerts:
        assert {"id", "ts", "account", "kind", "level", "from_level", "margin_ratio",
                "equity_usd", "maint_margin_usd", "init_margin_usd", "inst_id", "mark",
                "payload"} <= alert.keys()
    no_out_of_order = {"mark": 0, "index": 0, "order": 0, "positions": 0, "balance": 0}
    assert state["stats"] == {"events": 1444, "quarantined": 2,
                              "out_of_order": no_out_of_order}
    account = state["accounts"]["main"]
    assert account["level"] == "normal"
    # The story's account/config answer: multi-currency margin, its risk known.
    assert account["mode"] == "multi_currency" and account["risk_known"] is True
    assert account["missing"] == []
    assert set(account) >= {"equity_usd", "maint_margin_usd", "init_margin_usd",
                            "margin_ratio", "im_coverage", "free_margin_usd",
                            "max_withdrawable_usd", "level", "positions"}
    assert [p["inst_id"] for p in account["positions"]] == ["BTC-USDT-SWAP", "ETH-USDT-SWAP"]
    for position in account["positions"]:
        assert set(position) >= {"inst_id", "contracts", "avg_px", "mark", "upl",
                                 "position_value", "maint_margin", "init_margin",
                                 "liquidation_mark"}
        assert position["liquidation_mark"] < position["mark"]  # longs


def test_same_recording_same_alert_ids(tmp_path: Path) -> None:
    first, _ = replay(tmp_path, name="first")
    second, _ = replay(tmp_path, name="second")
    assert [a["id"] for a in first] == [a["id"] for a in second]
    assert first == second
    assert len({a["id"] for a in first}) == len(first)


def test_alerts_are_stored_and_listed(tmp_path: Path) -> None:
    db = tmp_path / "riskmon.db"
    alerts, _ = replay(tmp_path, STORY, STORY_CONFIG, "--db", db)
    listed = [orjson.loads(line)
              for line in riskmon("alerts", "--db", db).stdout.splitlines()]
    assert listed == alerts
    stops = [orjson.loads(line) for line in
             riskmon("alerts", "--db", db, "--kind", "stop_loss").stdout.splitlines()]
    assert [a["kind"] for a in stops] == ["stop_loss"]
    since = [orjson.loads(line) for line in
             riskmon("alerts", "--db", db, "--since", alerts[6]["id"]).stdout.splitlines()]
    assert since == alerts[7:]
    # Replaying into the same database stores nothing twice (idempotent by alert id).
    replay(tmp_path, STORY, STORY_CONFIG, "--db", db, name="again")
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT count(*) FROM alerts").fetchone()[0] == len(alerts)
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        reasons = [row[0] for row in connection.execute("SELECT reason FROM quarantine")]
        levels = dict(connection.execute("SELECT account, level FROM level_state"))
        history = connection.execute("SELECT count(*) FROM margin_history").fetchone()[0]
    # Quarantine is a log of what arrived: two bad lines, replayed twice.
    assert len(reasons) == 4 and any("NaN" in reason for reason in reasons)
    assert levels == {"main": "normal"}
    assert history > 0


def test_unknown_since_id_is_an_error(tmp_path: Path) -> None:
    db = tmp_path / "riskmon.db"
    replay(tmp_path, STORY, STORY_CONFIG, "--db", db)
    result = riskmon("alerts", "--db", db, "--since", "nope", check=False)
    assert result.returncode != 0
    assert b"nope" in result.stderr


GOOD_LINES = STORY.read_bytes().splitlines()[:400]
BAD_LINES = [
    b"this is not json",
    b'{"recv_ts": 1767225600000, "frame": {"arg": {"channel": "mark-pri',
    b"[1, 2, 3]",
    b'{"frame": {"arg": {"channel": "mark-price", "instId": "BTC-USDT-SWAP"}}}',
    b'{"recv_ts": 1, "frame": {"arg": {"channel": "mark-price", "instId": "BTC-USDT-SWAP"},'
    b' "data": [{"instId": "BTC-USDT-SWAP", "markPx": "inf", "ts": "1767225700000"}]}}',
    b'{"recv_ts": 1, "frame": {"arg": {"channel": "mark-price", "instId": "BTC-USDT-SWAP"},'
    b' "data": [{"instId": "BTC-USDT-SWAP", "markPx": "-5", "ts": "1767225700000"}]}}',
    b'{"recv_ts": 1, "frame": {"arg": {"channel": "mark-price", "instId": "BTC-USDT-SWAP"},'
    b' "data": [{"instId": "BTC-USDT-SWAP", "markPx": "0", "ts": "1767225700000"}]}}',
    b'{"recv_ts": 1, "frame": {"arg": {"channel": "mark-price", "instId": "BTC-USDT-SWAP"},'
    b' "data": [{"instId": "BTC-USDT-SWAP", "markPx": [1], "ts": "1767225700000"}]}}',
    b'{"recv_ts": 1, "account": "main", "frame": {"arg": {"channel": "orders"}, "data": [{'
    b'"instType": "SWAP", "instId": "BTC-USDT-SWAP", "ordId": "1", "side": "hold", "px": "1",'
    b' "sz": "1", "accFillSz": "0", "ordType": "limit", "state": "live", "reduceOnly": "false",'
    b' "lever": "10", "uTime": "1767225700000"}]}}',
    b'{"recv_ts": 1, "account": "main", "frame": {"arg": {"channel": "orders"}, "data": [{'
    b'"instType": "SWAP", "instId": "BTC-USDT-SWAP", "ordId": "1", "side": "buy", "px": "1",'
    b' "sz": "1", "accFillSz": "0", "ordType": "limit", "state": "paused", "reduceOnly": "false",'
    b' "lever": "10", "uTime": "1767225700000"}]}}',
    b'{"recv_ts": 1, "account": "main", "frame": {"arg": {"channel": "account"},'
    b' "eventType": "event_update", "data": [{"uTime": "1767225700000", "details": [{"ccy":'
    b' "USDT", "cashBal": "NaN"}]}]}}',
    b"\x00\xff\xfe garbage bytes",
]


def test_bad_lines_are_quarantined_and_change_nothing(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_bytes(b"\n".join(GOOD_LINES) + b"\n")
    mixed = tmp_path / "mixed.jsonl"
    interleaved: list[bytes] = []
    for number, line in enumerate(GOOD_LINES):
        interleaved.append(line)
        if number % 30 == 0:
            interleaved.append(BAD_LINES[(number // 30) % len(BAD_LINES)])
    interleaved.extend(BAD_LINES)
    mixed.write_bytes(b"\n".join(interleaved) + b"\n")
    bad_count = len(interleaved) - len(GOOD_LINES)

    good_alerts, good_state = replay(tmp_path, good, name="good")
    db = tmp_path / "mixed.db"
    mixed_alerts, mixed_state = replay(tmp_path, mixed, STORY_CONFIG, "--db", db, name="mixed")

    assert mixed_state["accounts"] == good_state["accounts"]
    assert mixed_alerts == good_alerts
    assert mixed_state["stats"]["quarantined"] == bad_count
    assert mixed_state["stats"]["events"] == good_state["stats"]["events"]
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT source, reason, raw FROM quarantine").fetchall()
    assert len(rows) == bad_count
    assert all(reason for _, reason, _ in rows)
    assert any("hold" in reason for _, reason, _ in rows)


def test_configuration_error_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[risk]\nwarning = 1.0\nwithdrawal_lock = 1.2\n")
    result = riskmon("replay", STORY, "--config", config, "--alerts-out", tmp_path / "a",
                     check=False)
    assert result.returncode == 2
    assert b"risk.withdrawal_lock" in result.stderr
    assert not (tmp_path / "a").exists() or (tmp_path / "a").read_bytes() == b""


def test_missing_recording_is_a_clear_error(tmp_path: Path) -> None:
    result = riskmon("replay", tmp_path / "none.jsonl", "--config", STORY_CONFIG, check=False)
    assert result.returncode == 2
    assert b"not found" in result.stderr


def test_speed_paces_by_receive_time(tmp_path: Path) -> None:
    # 21 lines spread over 2 s of receive time; at --speed 4 the replay takes >= 0.5 s.
    lines = []
    for number in range(21):
        ts = 1_767_225_600_000 + number * 100
        lines.append(orjson.dumps({"recv_ts": ts, "frame": {
            "arg": {"channel": "mark-price", "instId": "BTC-USDT-SWAP"},
            "data": [{"instType": "SWAP", "instId": "BTC-USDT-SWAP", "markPx": "60000",
                      "ts": str(ts)}]}}))
    recording = tmp_path / "paced.jsonl"
    recording.write_bytes(b"\n".join(lines) + b"\n")
    started = time.monotonic()
    _, state = replay(tmp_path, recording, STORY_CONFIG, "--speed", "4")
    assert time.monotonic() - started >= 0.5
    assert state["stats"]["events"] == 21
