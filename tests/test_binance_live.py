"""The live daemon on Binance USDⓈ-M, end to end on loopback: ``riskmon run`` against
``riskmon replay-server --venue binance`` over the bundled Binance recording, every part a
real process (issue 14's acceptance, as tests/test_daemon_live.py is OKX's).

The server paces the recording at 50x: the market and the user data connection's frames
then arrive in their recorded order, as a live feed's would, which a replay needs to be
comparable.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.live_harness import (
    ROOT,
    Process,
    engine_alerts,
    http_get,
    near,
    replay_outputs,
    running,
    stored_alerts,
    terminate_mid_stream,
    wait_quiet,
)

STORY = ROOT / "examples" / "binance_story.jsonl"
CONFIG = ROOT / "examples" / "binance.toml"
SECRET = "binance-Secret-never-logged"
ENV = {"RISKMON_BINANCE_API_KEY": "main", "RISKMON_BINANCE_API_SECRET": SECRET}
SPEED = "50"


def live_config(tmp_path: Path, ws_port: int, rest_port: int,
                **venue: float | str) -> Path:
    """The Binance example configuration pointed at a replay server, with its own database
    and the stream on a free port."""
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in venue.items())
    text = CONFIG.read_text().replace("[venues.binance]\n", (
        "[venues.binance]\n"
        f'rest_url = "http://127.0.0.1:{rest_port}"\n'
        f'stream_url = "ws://127.0.0.1:{ws_port}"\n'
        f"{extra}"), 1)
    text += (f'\n[storage]\nsqlite_path = "{tmp_path / "daemon.db"}"\n\n'
             "[stream]\nport = 0\n")
    path = tmp_path / "live.toml"
    path.write_text(text)
    return path


def run_against_server(tmp_path: Path, *server_flags: str,
                       **venue: float | str) -> dict[str, Any]:
    """Serve the story, run the daemon to the end of it, stop it; what came out."""
    with running(["replay-server", str(STORY), "--venue", "binance", "--port", "0",
                  "--rest-port", "0", "--speed", SPEED, *server_flags]) as server:
        listening = server.wait_status("listening")
        config = live_config(tmp_path, listening["port"], listening["rest_port"], **venue)
        state_out = tmp_path / "daemon-state.json"
        with running(["run", "--config", str(config), "--state-out", str(state_out)],
                     env=ENV) as daemon:
            http_port = daemon.wait_status("listening")["port"]
            finished = server.wait_status("finished", timeout=120)
            wait_quiet(http_port)
            health = http_get(http_port, "/healthz")
            code = daemon.terminate()
        server.terminate()
    return {"code": code, "alerts": stored_alerts(tmp_path / "daemon.db"),
            "state": json.loads(state_out.read_text()), "daemon": daemon,
            "frames": finished["frames"], "keepalives": finished["keepalives"],
            "health": health}


def of_kind(alerts: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [a for a in alerts if a["kind"] == kind]


def test_the_daemon_stores_exactly_the_alerts_replay_produces(tmp_path: Path) -> None:
    expected_alerts, expected_state = replay_outputs(tmp_path, STORY, CONFIG)
    out = run_against_server(tmp_path)

    assert out["code"] == 0
    assert engine_alerts(out["alerts"]) == engine_alerts(expected_alerts)
    assert len(engine_alerts(expected_alerts)) >= 9  # every level, the stop, the recovery
    assert near(out["state"]["accounts"]) == near(expected_state["accounts"])
    connected = of_kind(out["alerts"], "feed_connected")
    assert sorted(a["payload"]["feed"] for a in connected) == ["private", "public"]
    assert of_kind(out["alerts"], "feed_disconnected") == []
    status, body = out["health"]
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_dropped_connections_end_in_the_same_state(tmp_path: Path) -> None:
    expected_alerts, expected_state = replay_outputs(tmp_path, STORY, CONFIG)
    out = run_against_server(tmp_path, "--drop-after", "900", "--drop-times", "3",
                             backoff_initial_s=0.05, backoff_max_s=0.2)

    assert out["code"] == 0
    assert near(out["state"]["accounts"]) == near(expected_state["accounts"])
    assert engine_alerts(out["alerts"]) == engine_alerts(expected_alerts)
    assert len(of_kind(out["alerts"], "feed_disconnected")) == 3
    assert len(of_kind(out["alerts"], "feed_connected")) == 2 + 3


def test_an_expired_listen_key_is_replaced_and_nothing_is_lost(tmp_path: Path) -> None:
    expected_alerts, expected_state = replay_outputs(tmp_path, STORY, CONFIG)
    out = run_against_server(tmp_path, "--expire-listen-key-after", "1500",
                             backoff_initial_s=0.05, backoff_max_s=0.2)

    assert out["code"] == 0
    assert engine_alerts(out["alerts"]) == engine_alerts(expected_alerts)
    assert near(out["state"]["accounts"]) == near(expected_state["accounts"])
    dropped = of_kind(out["alerts"], "feed_disconnected")
    assert [a["payload"]["feed"] for a in dropped] == ["private"]
    assert "listen key expired" in dropped[0]["payload"]["reason"]


def test_the_listen_key_is_kept_alive_as_binance_documents_it(tmp_path: Path) -> None:
    # Every 0.1 s instead of 30 min: several keepalives during the story, each a PUT with
    # no parameter (USDⓈ-M's keepalive has none), none of them costing a reconnect.
    expected_alerts, _ = replay_outputs(tmp_path, STORY, CONFIG)
    out = run_against_server(tmp_path, listen_key_keepalive_s=0.1)

    assert out["code"] == 0
    assert out["keepalives"]["accounts"].get("main", 0) >= 2
    assert out["keepalives"]["parameters"] == []
    assert of_kind(out["alerts"], "feed_disconnected") == []
    assert engine_alerts(out["alerts"]) == engine_alerts(expected_alerts)


def test_the_api_secret_never_reaches_a_log_or_a_row(tmp_path: Path) -> None:
    out = run_against_server(tmp_path)
    daemon: Process = out["daemon"]

    assert SECRET not in "\n".join(daemon.stdout_lines + daemon.stderr_lines)
    assert SECRET.encode() not in (tmp_path / "daemon.db").read_bytes()


def test_record_writes_a_recording_that_replays_the_same(tmp_path: Path) -> None:
    expected_alerts, _ = replay_outputs(tmp_path, STORY, CONFIG)
    recording = tmp_path / "recorded.jsonl"
    with running(["replay-server", str(STORY), "--venue", "binance", "--port", "0",
                  "--rest-port", "0", "--speed", SPEED]) as server:
        listening = server.wait_status("listening")
        config = live_config(tmp_path, listening["port"], listening["rest_port"])
        with running(["record", str(recording), "--config", str(config)],
                     env=ENV) as recorder:
            pushed = server.wait_status("finished", timeout=120)["frames"]
            time.sleep(1.0)
            assert recorder.terminate() == 0
    lines = [json.loads(line) for line in recording.read_text().splitlines()]
    assert sum("frame" in line for line in lines) == pushed
    # The account's bootstrap in order (adapters/binance/live.py), the market's beside it;
    # no signature, timestamp or key in a recorded path.
    assert [line["rest"] for line in lines if "rest" in line and "account" in line] == [
        "/fapi/v1/multiAssetsMargin", "/fapi/v1/positionSide/dual", "/fapi/v3/account",
        "/fapi/v3/positionRisk", "/fapi/v1/openOrders", "/fapi/v1/leverageBracket"]
    assert [line["rest"] for line in lines if "rest" in line and "account" not in line] == [
        "/fapi/v1/exchangeInfo"]
    got, _ = replay_outputs(tmp_path, recording, CONFIG)
    assert engine_alerts(got) == engine_alerts(expected_alerts)
    assert all(SECRET not in line for line in recording.read_text().splitlines())


def test_sigterm_mid_stream_exits_zero_promptly_with_every_alert_stored(tmp_path: Path) -> None:
    expected = engine_alerts(replay_outputs(tmp_path, STORY, CONFIG)[0])
    with running(["replay-server", str(STORY), "--venue", "binance", "--port", "0",
                  "--rest-port", "0", "--speed", SPEED]) as server:
        listening = server.wait_status("listening")
        config = live_config(tmp_path, listening["port"], listening["rest_port"])
        with running(["run", "--config", str(config)], env=ENV) as daemon:
            http_port = daemon.wait_status("listening")["port"]
            code, elapsed = terminate_mid_stream(daemon, http_port)
    assert code == 0
    assert elapsed < 5
    stopped = next(r for r in daemon.logs() if r["event"] == "daemon_stopped")
    stored = stored_alerts(tmp_path / "daemon.db")
    assert len(stored) == stopped["alerts"]
    got = engine_alerts(stored)
    assert len(got) >= 2 and got == expected[:len(got)]


@pytest.mark.parametrize("flag", ["--garbage-after"])
def test_garbage_is_quarantined_and_the_stream_goes_on(tmp_path: Path, flag: str) -> None:
    expected_alerts, expected_state = replay_outputs(tmp_path, STORY, CONFIG)
    out = run_against_server(tmp_path, flag, "600")

    assert out["code"] == 0
    assert engine_alerts(out["alerts"]) == engine_alerts(expected_alerts)
    assert out["state"]["stats"]["quarantined"] == expected_state["stats"]["quarantined"] + 1
