"""The live daemon end to end on loopback: ``riskmon run`` against ``riskmon replay-server``
over the bundled recording, every part a real process (issue 3's acceptance).

The server paces the recording at 50x (the story's nine minutes in about eleven seconds):
frames of the public and the private connection then arrive in their recorded order, as a
live feed's would, which a replay needs to be comparable.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.live_harness import (
    LIVE_ENV,
    PASSPHRASE,
    SECRET,
    STORY,
    Process,
    engine_alerts,
    http_get,
    live_config,
    near,
    replay_outputs,
    running,
    stored_alerts,
    terminate_mid_stream,
    wait_quiet,
)

SPEED = "50"


def run_daemon_against_server(tmp_path: Path, *server_flags: str,
                              okx: dict[str, float] | None = None) -> dict[str, Any]:
    """Serve the story, run the daemon to the end of it, stop it; what came out."""
    with running(["replay-server", str(STORY), "--port", "0", "--speed", SPEED,
                  *server_flags]) as server:
        port = server.wait_status("listening")["port"]
        config = live_config(tmp_path, port, okx=okx)
        state_out = tmp_path / "daemon-state.json"
        with running(["run", "--config", str(config), "--state-out", str(state_out)],
                     env=LIVE_ENV) as daemon:
            http_port = daemon.wait_status("listening")["port"]
            finished = server.wait_status("finished", timeout=120)
            wait_quiet(http_port)
            health = http_get(http_port, "/healthz")
            metrics = http_get(http_port, "/metrics")[1].decode()
            code = daemon.terminate()
        server.terminate()
    return {
        "code": code,
        "alerts": stored_alerts(tmp_path / "daemon.db"),
        "state": json.loads(state_out.read_text()),
        "daemon": daemon,
        "server": server,
        "frames": finished["frames"],
        "health": health,
        "metrics": metrics,
        "db": tmp_path / "daemon.db",
    }


def feed_alerts(alerts: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [a for a in alerts if a["kind"] == kind]


def test_the_daemon_stores_exactly_the_alerts_replay_produces(tmp_path: Path) -> None:
    expected_alerts, expected_state = replay_outputs(tmp_path)
    out = run_daemon_against_server(tmp_path)

    assert out["code"] == 0
    assert engine_alerts(out["alerts"]) == engine_alerts(expected_alerts)
    assert len(engine_alerts(expected_alerts)) >= 8  # the story: every level, stop, recovery
    assert near(out["state"]["accounts"]) == near(expected_state["accounts"])
    connected = feed_alerts(out["alerts"], "feed_connected")
    assert sorted(a["payload"]["feed"] for a in connected) == ["private", "public"]
    assert feed_alerts(out["alerts"], "feed_disconnected") == []
    # /healthz and /metrics while it ran.
    status, body = out["health"]
    assert status == 200 and json.loads(body)["status"] == "ok"
    samples = dict(line.rsplit(" ", 1) for line in out["metrics"].splitlines()
                   if line and not line.startswith("#"))
    assert float(samples['riskmon_alerts_total{kind="level_changed"}']) == 5
    assert float(samples['riskmon_margin_ratio{account="main"}']) == pytest.approx(
        expected_state["accounts"]["main"]["margin_ratio"])
    assert float(samples["riskmon_quarantined_total"]) == 1  # the story's NaN mark
    assert samples['riskmon_feed_connected{feed="public"}'] == "1"


def test_dropped_connections_end_in_the_same_state(tmp_path: Path) -> None:
    expected_alerts, expected_state = replay_outputs(tmp_path)
    out = run_daemon_against_server(tmp_path, "--drop-after", "350", "--drop-times", "3",
                                    okx={"backoff_initial_s": 0.05, "backoff_max_s": 0.2})

    assert out["code"] == 0
    assert near(out["state"]["accounts"]) == near(expected_state["accounts"])
    assert engine_alerts(out["alerts"]) == engine_alerts(expected_alerts)
    dropped = feed_alerts(out["alerts"], "feed_disconnected")
    connected = feed_alerts(out["alerts"], "feed_connected")
    assert len(dropped) == 3
    assert len(connected) == 2 + 3  # the first two connections, then one per drop
    # Each drop is followed by the reconnection of the same connection.
    alerts = out["alerts"]
    for alert in dropped:
        after = alerts[alerts.index(alert) + 1:]
        again = next(a for a in after if a["kind"] == "feed_connected")
        assert again["payload"]["feed"] == alert["payload"]["feed"]


def test_a_refused_login_is_reported_and_retried_with_backoff(tmp_path: Path) -> None:
    expected_alerts, _ = replay_outputs(tmp_path)
    out = run_daemon_against_server(tmp_path, "--fail-logins", "3",
                                    okx={"backoff_initial_s": 0.1, "backoff_max_s": 5})

    assert out["code"] == 0
    assert engine_alerts(out["alerts"]) == engine_alerts(expected_alerts)
    logs = out["daemon"].logs()
    failures = [r for r in logs if r["event"] == "login_failed"]
    assert [r["code"] for r in failures] == ["60009"] * 3
    assert all(r["account"] == "main" for r in failures)
    retries = [r for r in logs if r["event"] == "feed_reconnecting" and r["feed"] == "private"]
    delays = [r["delay_s"] for r in retries[:3]]
    # Jittered within [cap/2, cap] with cap 0.1, 0.2, 0.4: each at least the one before.
    assert 0.05 <= delays[0] <= 0.1 and 0.1 <= delays[1] <= 0.2 and 0.2 <= delays[2] <= 0.4
    assert all("login rejected" in r["reason"] for r in retries[:3])


def test_the_api_secret_never_reaches_a_log_or_a_row(tmp_path: Path) -> None:
    out = run_daemon_against_server(tmp_path, "--fail-logins", "1",
                                    okx={"backoff_initial_s": 0.05})
    everything = "\n".join([*out["daemon"].stderr_lines, *out["daemon"].stdout_lines,
                            *out["server"].stderr_lines, *out["server"].stdout_lines])
    database = b"".join(p.read_bytes() for p in out["db"].parent.glob("daemon.db*"))
    for secret in (SECRET, PASSPHRASE):
        assert secret not in everything
        assert secret.encode() not in database
    assert len(out["daemon"].stderr_lines) > 10  # the logs were there to be searched


def test_sigterm_mid_stream_exits_zero_promptly_with_every_alert_stored(tmp_path: Path) -> None:
    expected = engine_alerts(replay_outputs(tmp_path)[0])
    with running(["replay-server", str(STORY), "--port", "0", "--speed", SPEED]) as server:
        config = live_config(tmp_path, server.wait_status("listening")["port"])
        with running(["run", "--config", str(config)], env=LIVE_ENV) as daemon:
            http_port = daemon.wait_status("listening")["port"]
            code, elapsed = terminate_mid_stream(daemon, http_port)
    assert code == 0
    assert elapsed < 5
    stopped = next(r for r in daemon.logs() if r["event"] == "daemon_stopped")
    stored = stored_alerts(tmp_path / "daemon.db")
    assert len(stored) == stopped["alerts"]  # everything emitted was stored
    got = engine_alerts(stored)
    assert len(got) >= 2 and got == expected[:len(got)]


def test_garbage_is_quarantined_and_the_stream_goes_on(tmp_path: Path) -> None:
    expected_alerts, _ = replay_outputs(tmp_path)
    out = run_daemon_against_server(tmp_path, "--garbage-after", "100")

    assert engine_alerts(out["alerts"]) == engine_alerts(expected_alerts)
    assert out["state"]["stats"]["quarantined"] == 2  # the story's own bad frame, and this
    quarantined = [r for r in out["daemon"].logs() if r["event"] == "quarantine"]
    assert any(r["reason"] == "frame is not JSON" for r in quarantined)


def test_notice_64008_reconnects_at_once(tmp_path: Path) -> None:
    expected_alerts, expected_state = replay_outputs(tmp_path)
    out = run_daemon_against_server(tmp_path, "--notice-after", "200",
                                    okx={"backoff_initial_s": 30, "backoff_max_s": 60})
    # With a 30 s backoff, finishing at all shows the reconnect did not back off.
    assert engine_alerts(out["alerts"]) == engine_alerts(expected_alerts)
    assert near(out["state"]["accounts"]) == near(expected_state["accounts"])
    reasons = [a["payload"]["reason"] for a in feed_alerts(out["alerts"], "feed_disconnected")]
    assert len(reasons) == 2 and all("64008" in r for r in reasons)


def test_a_silent_feed_is_pinged_then_reconnected_and_goes_stale(tmp_path: Path) -> None:
    out = run_daemon_against_server(
        tmp_path, "--stall-after", "300", "--stall-s", "4",
        okx={"ping_after_s": 0.5, "pong_timeout_s": 1, "backoff_initial_s": 0.05})
    reasons = [a["payload"]["reason"] for a in feed_alerts(out["alerts"], "feed_disconnected")]
    assert reasons and all("no pong" in r for r in reasons)
    # Exchange time went on during the silence (clock ticks): the marks went stale.
    assert feed_alerts(out["alerts"], "feed_stale")


def test_record_writes_a_recording_that_replays_the_same(tmp_path: Path) -> None:
    expected_alerts, _ = replay_outputs(tmp_path)
    recording = tmp_path / "recorded.jsonl"
    with running(["replay-server", str(STORY), "--port", "0", "--speed", SPEED]) as server:
        config = live_config(tmp_path, server.wait_status("listening")["port"])
        with running(["record", str(recording), "--config", str(config)],
                     env=LIVE_ENV) as recorder:
            pushed = server.wait_status("finished", timeout=120)["frames"]
            time.sleep(1.0)
            assert recorder.terminate() == 0
    lines = [json.loads(line) for line in recording.read_text().splitlines()]
    assert sum("frame" in line for line in lines) == pushed
    # The account's bootstrap, in order (SPEC 3.1), and the public loads beside it.
    assert [line["rest"] for line in lines if "rest" in line and "account" in line] == [
        "/api/v5/account/config", "/api/v5/account/balance", "/api/v5/account/positions",
        "/api/v5/trade/orders-pending"]
    public = {line["rest"] for line in lines if "rest" in line and "account" not in line}
    assert {"/api/v5/public/instruments?instType=SWAP",
            "/api/v5/public/instruments?instType=FUTURES",
            "/api/v5/public/discount-rate-interest-free-quota?ccy=USDT",
            "/api/v5/public/discount-rate-interest-free-quota?ccy=BTC"} <= public
    got, _ = replay_outputs(tmp_path, recording)
    assert engine_alerts(got) == engine_alerts(expected_alerts)
    assert all(SECRET not in line for line in recording.read_text().splitlines())


def test_run_refuses_missing_credentials_naming_the_variable(tmp_path: Path) -> None:
    config = live_config(tmp_path, 9)
    process = Process(["run", "--config", str(config)], env={})
    assert process.popen.wait(30) == 2
    process.terminate()
    assert any("RISKMON_MAIN_API_KEY" in line for line in process.stderr_lines)


def test_run_reports_a_stream_port_in_use_as_a_configuration_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = live_config(tmp_path, 9)
        config.write_text(config.read_text().replace("[stream]\nport = 0\n",
                                                     f"[stream]\nport = {port}\n"))
        process = Process(["run", "--config", str(config)], env=LIVE_ENV)
        assert process.popen.wait(30) == 2
        process.close()
    assert any("'stream.port'" in line and f"127.0.0.1:{port}" in line
               for line in process.stderr_lines)
