"""Stop-loss execution end to end on loopback (issue 13's acceptance): ``riskmon run`` with
execution on against ``riskmon replay-server`` and its order simulator, both real
processes, over the bundled story, whose ``guard-110`` rule fires about 4 min 20 s in
(5 s at 50x) with two legs: sell 100 BTC-USDT-SWAP, sell 100 ETH-USDT-SWAP.

What was placed is read from the server's ``{"event": "orders"}`` status lines (one per
``batch-orders`` request, with every ``clOrdId`` and ``sCode``); what riskmon did, from its
SQLite file (alerts, ``execution_legs``, ``execution_attempts``).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.live_harness import (
    LIVE_ENV,
    ROOT,
    STORY,
    Process,
    http_get,
    live_config,
    metric_samples,
    running,
    stored_alerts,
)

SPEED = "50"
TRADE_ENV = {
    **LIVE_ENV,
    "RISKMON_MAIN_TRADE_KEY": "main-trade",
    "RISKMON_MAIN_TRADE_SECRET": "trade-Secret-never-logged",
    "RISKMON_MAIN_TRADE_PASSPHRASE": "trade-Pass-never-logged",
    "RISKMON_CONTROL_TOKEN": "control-Token-never-logged",
}
LEGS = {"BTC-USDT-SWAP", "ETH-USDT-SWAP"}


def execution_config(tmp_path: Path, port: int, rest_port: int, **execution: Any) -> Path:
    """The live test configuration with execution on and its REST on the order port."""
    path = live_config(tmp_path, port)
    text = path.read_text()
    text = text.replace(f'rest_url = "http://127.0.0.1:{port}"',
                        f'rest_url = "http://127.0.0.1:{rest_port}"')
    text = text.replace("[risk]\n", "[risk]\nexecute_triggers = true\n", 1)
    text = text.replace('passphrase_env = "RISKMON_MAIN_PASSPHRASE"\n', (
        'passphrase_env = "RISKMON_MAIN_PASSPHRASE"\n'
        "execute = true\n"
        'trade_api_key_env = "RISKMON_MAIN_TRADE_KEY"\n'
        'trade_api_secret_env = "RISKMON_MAIN_TRADE_SECRET"\n'
        'trade_passphrase_env = "RISKMON_MAIN_TRADE_PASSPHRASE"\n'), 1)
    settings = {"fill_timeout_s": 1.0, "request_timeout_s": 1.0, **execution}
    text += "\n[execution]\n" + "".join(f"{key} = {json.dumps(value)}\n"
                                         for key, value in settings.items())
    path.write_text(text)
    return path


def order_requests(server: Process) -> list[dict[str, Any]]:
    lines = []
    for line in server.stdout_lines:
        try:
            document = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(document, dict) and document.get("event") == "orders":
            lines.append(document)
    return lines


def legs(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT inst_id, state, attempt, filled FROM execution_legs"
                                  " ORDER BY inst_id").fetchall()


def attempts(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT client_id, inst_id, attempt, size, state FROM"
                                  " execution_attempts ORDER BY inst_id, attempt").fetchall()


def wait_for(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def run_story(tmp_path: Path, *server_flags: str, daemon_flags: tuple[str, ...] = (),
              **execution: Any) -> dict[str, Any]:
    with running(["replay-server", str(STORY), "--port", "0", "--rest-port", "0",
                  "--speed", SPEED, *server_flags]) as server:
        listening = server.wait_status("listening")
        config = execution_config(tmp_path, listening["port"], listening["rest_port"],
                                  **execution)
        state_out = tmp_path / "state.json"
        with running(["run", "--config", str(config), "--state-out", str(state_out),
                      *daemon_flags], env=TRADE_ENV) as daemon:
            daemon.wait_status("listening")
            server.wait_status("finished", timeout=120)
            db = tmp_path / "daemon.db"
            wait_for(lambda: all(state in ("filled", "failed", "skipped", "dry_run")
                                 for _, state, _, _ in legs(db)) and legs(db) != [])
            code = daemon.terminate()
        server.terminate()
    return {"code": code, "alerts": stored_alerts(tmp_path / "daemon.db"),
            "state": json.loads(state_out.read_text()), "legs": legs(tmp_path / "daemon.db"),
            "attempts": attempts(tmp_path / "daemon.db"), "requests": order_requests(server),
            "daemon": daemon}


def kinds(alerts: list[dict[str, Any]]) -> Counter[str]:
    return Counter(alert["kind"] for alert in alerts)


@pytest.mark.parametrize("sync_before_send", [False, True])
def test_the_story_with_execution_closes_the_positions(tmp_path: Path,
                                                       sync_before_send: bool) -> None:
    # Both orders of the trigger's fsync and the send (README, "Persist before act").
    out = run_story(tmp_path, sync_before_send=sync_before_send)
    assert out["code"] == 0
    # One request, one order per leg, both filled at once.
    assert len(out["requests"]) == 1
    assert [o["sCode"] for o in out["requests"][0]["orders"]] == ["0", "0"]
    assert out["legs"] == [("BTC-USDT-SWAP", "filled", 1, 100.0),
                           ("ETH-USDT-SWAP", "filled", 1, 100.0)]
    assert len(out["attempts"]) == 2
    counts = kinds(out["alerts"])
    assert (counts["stop_loss"], counts["execution_sent"], counts["execution_filled"]) == (1, 1, 2)
    stop = next(a for a in out["alerts"] if a["kind"] == "stop_loss")
    assert stop["payload"]["dry_run"] is False
    # The account's state reflects the closed positions: nothing held, nothing at risk, so
    # the story's later fall (deleverage, liquidation without execution) never happens.
    account = out["state"]["accounts"]["main"]
    assert account["maint_margin_usd"] == 0.0
    assert [p for p in account["positions"] if p["contracts"]] == []
    later = [a for a in out["alerts"] if a["kind"] == "level_changed" and a["ts"] > stop["ts"]]
    assert later == []
    # No secret of the trade key reached the log.
    log = "\n".join(out["daemon"].stderr_lines)
    assert "trade-Secret-never-logged" not in log and "trade-Pass-never-logged" not in log


def test_kill_between_send_and_fill_places_no_order_twice(tmp_path: Path) -> None:
    db = tmp_path / "daemon.db"
    with running(["replay-server", str(STORY), "--port", "0", "--rest-port", "0",
                  "--speed", SPEED, "--delay-fills", "2", "--fill-delay-s", "4"]) as server:
        listening = server.wait_status("listening")
        config = execution_config(tmp_path, listening["port"], listening["rest_port"])
        with running(["run", "--config", str(config)], env=TRADE_ENV) as daemon:
            daemon.wait_status("listening")
            wait_for(lambda: order_requests(server) != [])
            daemon.popen.kill()  # kill -9: the orders are live, their fills not yet seen
            daemon.popen.wait(10)
        with running(["run", "--config", str(config)], env=TRADE_ENV) as restarted:
            restarted.wait_status("listening")
            server.wait_status("finished", timeout=120)
            wait_for(lambda: [state for _, state, _, _ in legs(db)] == ["filled", "filled"])
            assert restarted.terminate() == 0
        server.terminate()
    requests = order_requests(server)
    assert len(requests) == 1 and len(requests[0]["orders"]) == 2
    assert kinds(stored_alerts(db))["execution_filled"] == 2


@pytest.mark.parametrize(
    ("flags", "expected_legs", "failed"),
    [
        pytest.param(("--reject-orders", "2"), [("BTC-USDT-SWAP", "filled", 2, 100.0),
                                                ("ETH-USDT-SWAP", "filled", 2, 100.0)],
                     [True, True], id="rejected-then-retried"),
        pytest.param(("--reject-orders", "6"), [("BTC-USDT-SWAP", "failed", 3, 0.0),
                                                ("ETH-USDT-SWAP", "failed", 3, 0.0)],
                     [True, True, True, True, False, False], id="rejected-until-escalated"),
        pytest.param(("--partial-fills", "2", "--partial-fill-ratio", "0.5"),
                     [("BTC-USDT-SWAP", "filled", 2, 100.0),
                      ("ETH-USDT-SWAP", "filled", 2, 100.0)],
                     [True, True], id="partial-fill-remainder"),
        pytest.param(("--timeout-requests", "1", "--order-timeout-s", "3"),
                     [("BTC-USDT-SWAP", "filled", 1, 100.0),
                      ("ETH-USDT-SWAP", "filled", 1, 100.0)],
                     [], id="answer-lost-order-found"),
    ],
)
def test_faults_end_as_documented(tmp_path: Path, flags: tuple[str, ...],
                                  expected_legs: list[tuple[Any, ...]],
                                  failed: list[bool]) -> None:
    out = run_story(tmp_path, *flags)
    assert out["legs"] == expected_legs
    failures = [a["payload"] for a in out["alerts"] if a["kind"] == "execution_failed"]
    assert sorted((p["will_retry"] for p in failures), reverse=True) == failed
    if failures:
        assert all(p["s_code"] or p["reason"] for p in failures)
    placed = [o["clOrdId"] for r in out["requests"] for o in r["orders"] if o["sCode"] == "0"]
    assert len(placed) == len(set(placed))  # no client id placed twice


def test_pause_stops_new_sends(tmp_path: Path) -> None:
    with running(["replay-server", str(STORY), "--port", "0", "--rest-port", "0",
                  "--speed", "10"]) as server:
        listening = server.wait_status("listening")
        config = execution_config(tmp_path, listening["port"], listening["rest_port"])
        with running(["run", "--config", str(config)], env=TRADE_ENV) as daemon:
            port = daemon.wait_status("listening")["port"]
            control = subprocess.run(
                [sys.executable, "-m", "monitor", "executor", "pause", "--url",
                 f"http://127.0.0.1:{port}"], cwd=ROOT, capture_output=True,
                env={**TRADE_ENV, "PATH": "/usr/bin:/bin"}, timeout=30)
            assert control.returncode == 0, control.stderr
            assert json.loads(control.stdout)["paused"] is True
            refused = subprocess.run(
                [sys.executable, "-m", "monitor", "executor", "resume", "--url",
                 f"http://127.0.0.1:{port}", "--token-env", "RISKMON_MAIN_API_KEY"],
                cwd=ROOT, capture_output=True, env=TRADE_ENV, timeout=30)
            assert refused.returncode == 1 and b"401" in refused.stderr
            db = tmp_path / "daemon.db"
            wait_for(lambda: kinds(stored_alerts(db))["execution_failed"] == 2, timeout=120)
            # /metrics says so too: paused, two legs given up, nothing sent, the task up.
            code, body = http_get(port, "/metrics")
            assert code == 200
            samples = metric_samples(body.decode())
            main = '{account="main"}'
            assert samples["riskmon_executor_paused", ""] == 1
            assert samples["riskmon_executor_legs_failed_total", main] == 2
            assert samples["riskmon_executor_orders_sent_total", main] == 0
            assert samples["riskmon_executor_worker_up", main] == 1
            assert daemon.terminate() == 0
        server.terminate()
    assert order_requests(server) == []
    reasons = {a["payload"]["reason"] for a in stored_alerts(db)
               if a["kind"] == "execution_failed"}
    assert reasons == {"paused"}


def test_a_key_that_cannot_trade_refuses_the_start(tmp_path: Path) -> None:
    with running(["replay-server", str(STORY), "--port", "0", "--rest-port", "0",
                  "--read-only-key", "main-trade"]) as server:
        listening = server.wait_status("listening")
        config = execution_config(tmp_path, listening["port"], listening["rest_port"])
        with running(["run", "--config", str(config)], env=TRADE_ENV) as daemon:
            code = daemon.popen.wait(60)
        server.terminate()
    assert code == 2
    assert any("cannot trade" in line for line in daemon.stderr_lines)


def test_a_dry_run_sends_nothing(tmp_path: Path) -> None:
    out = run_story(tmp_path, daemon_flags=("--dry-run",))
    assert out["requests"] == []
    assert [state for _, state, _, _ in out["legs"]] == ["dry_run", "dry_run"]
    stop = next(a for a in out["alerts"] if a["kind"] == "stop_loss")
    assert stop["payload"]["dry_run"] is True
