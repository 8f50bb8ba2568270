"""One daemon following an OKX account and a Binance account at once (issue 14's
acceptance): ``riskmon run`` against two replay servers, ``riskmon replay-server`` over the
bundled OKX story and ``--venue binance`` over the bundled Binance story, every part a real
process on loopback.

The daemon runs one engine per venue (monitor/runtime/daemon.py, ``Lane``): each account's alerts
and state must be exactly those of the offline replay of its own venue's recording, as if
the other venue were not there; a venue's connections going down concern its accounts
only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson

from tests.live_harness import (
    EXAMPLE_CONFIG,
    LIVE_ENV,
    ROOT,
    STORY,
    engine_alerts,
    http_get,
    metric_samples,
    near,
    replay_outputs,
    running,
    stored_alerts,
    wait_quiet,
)

BINANCE_STORY = ROOT / "examples" / "binance_story.jsonl"
BINANCE_ACCOUNT = "futures"
ENV = {**LIVE_ENV, "RISKMON_FUTURES_API_KEY": BINANCE_ACCOUNT,
       "RISKMON_FUTURES_API_SECRET": "binance-Secret-never-logged"}
SPEED = "50"


def renamed_recording(source: Path, account: str, out: Path) -> Path:
    """``source`` with its private lines' account renamed: the Binance story's account is
    "main" like the OKX story's, and one daemon's accounts need names of their own."""
    lines = []
    for line in source.read_bytes().splitlines():
        record = orjson.loads(line)
        if record.get("account") is not None:
            record["account"] = account
        lines.append(orjson.dumps(record))
    out.write_bytes(b"\n".join(lines) + b"\n")
    return out


def config_text(tmp_path: Path, *, okx_port: int, binance_ws: int, binance_rest: int,
                accounts: tuple[str, ...]) -> str:
    """The OKX example configuration with both venues' tables pointed at the replay
    servers and the ``accounts`` wanted: ``main`` (OKX, the example's) and ``futures``
    (Binance, with the Binance example's stop-loss rule)."""
    example = EXAMPLE_CONFIG.read_text()
    common, okx_account = example.split("[accounts.main]", 1)
    text = common + (
        "[venues.okx]\n"
        f'public_url = "ws://127.0.0.1:{okx_port}/ws/v5/public"\n'
        f'private_url = "ws://127.0.0.1:{okx_port}/ws/v5/private"\n'
        f'rest_url = "http://127.0.0.1:{okx_port}"\n\n'
        "[venues.binance]\n"
        f'stream_url = "ws://127.0.0.1:{binance_ws}"\n'
        f'rest_url = "http://127.0.0.1:{binance_rest}"\n\n'
        f'[storage]\nsqlite_path = "{tmp_path / "daemon.db"}"\n\n'
        "[stream]\nport = 0\n\n")
    if "main" in accounts:
        text += '[accounts.main]\nvenue = "okx"' + okx_account + "\n"
    if BINANCE_ACCOUNT in accounts:
        text += (f"[accounts.{BINANCE_ACCOUNT}]\n"
                 'venue = "binance"\n'
                 'api_key_env = "RISKMON_FUTURES_API_KEY"\n'
                 'api_secret_env = "RISKMON_FUTURES_API_SECRET"\n\n'
                 f"[[accounts.{BINANCE_ACCOUNT}.stop_loss]]\n"
                 'name = "guard-110"\nmetric = "im_coverage"\nbelow = 1.10\n'
                 'action = "close_all"\n')
    return text


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def of_account(alerts: list[dict[str, Any]], account: str) -> list[dict[str, Any]]:
    return [a for a in alerts if a["account"] == account]


def test_one_daemon_follows_an_okx_and_a_binance_account(tmp_path: Path) -> None:
    binance_story = renamed_recording(BINANCE_STORY, BINANCE_ACCOUNT,
                                      tmp_path / "binance_story.jsonl")
    with (running(["replay-server", str(STORY), "--port", "0", "--speed", SPEED]) as okx,
          running(["replay-server", str(binance_story), "--venue", "binance", "--port", "0",
                   "--rest-port", "0", "--speed", SPEED]) as binance):
        okx_port = okx.wait_status("listening")["port"]
        listening = binance.wait_status("listening")
        ports = {"okx_port": okx_port, "binance_ws": listening["port"],
                 "binance_rest": listening["rest_port"]}
        config = write(tmp_path / "live.toml", config_text(
            tmp_path, **ports, accounts=("main", BINANCE_ACCOUNT)))
        state_out = tmp_path / "daemon-state.json"
        with running(["run", "--config", str(config), "--state-out", str(state_out)],
                     env=ENV) as daemon:
            http_port = daemon.wait_status("listening")["port"]
            okx.wait_status("finished", timeout=120)
            binance.wait_status("finished", timeout=120)
            wait_quiet(http_port)
            health = http_get(http_port, "/healthz")
            _, metrics = http_get(http_port, "/metrics")
            code = daemon.terminate()
    alerts = stored_alerts(tmp_path / "daemon.db")
    state = json.loads(state_out.read_text())

    # Each venue's expectation: its recording replayed offline with only its account.
    okx_dir, binance_dir = tmp_path / "okx", tmp_path / "binance"
    okx_dir.mkdir()
    binance_dir.mkdir()
    okx_alerts, okx_state = replay_outputs(okx_dir, STORY, write(
        okx_dir / "okx.toml", config_text(okx_dir, **ports, accounts=("main",))))
    binance_alerts, binance_state = replay_outputs(binance_dir, binance_story, write(
        binance_dir / "binance.toml",
        config_text(binance_dir, **ports, accounts=(BINANCE_ACCOUNT,))))

    assert code == 0
    assert engine_alerts(of_account(alerts, "main")) == engine_alerts(okx_alerts)
    assert engine_alerts(of_account(alerts, BINANCE_ACCOUNT)) == engine_alerts(binance_alerts)
    assert len(engine_alerts(okx_alerts)) >= 9 and len(engine_alerts(binance_alerts)) >= 9
    assert {a["account"] for a in alerts} == {"main", BINANCE_ACCOUNT}
    assert near(state["accounts"]) == near({**okx_state["accounts"],
                                          **binance_state["accounts"]})
    # The Binance account is judged without a closing fee (its venue's margin rules), the
    # OKX account with the configuration's.
    assert state["accounts"][BINANCE_ACCOUNT]["closing_fee_usd"] == 0
    assert state["accounts"]["main"]["closing_fee_usd"] > 0
    # Each account heard of its own venue's two connections coming up, and only those.
    for account in ("main", BINANCE_ACCOUNT):
        connected = [a["payload"]["feed"] for a in of_account(alerts, account)
                     if a["kind"] == "feed_connected"]
        assert sorted(connected) == ["private", "public"]
    samples = metric_samples(metrics.decode())
    assert {labels for name, labels in samples if name == "riskmon_feed_connected"} == {
        '{feed="public:okx"}', '{feed="public:binance"}', '{feed="private:main"}',
        f'{{feed="private:{BINANCE_ACCOUNT}"}}'}
    status, body = health
    assert status == 200 and json.loads(body)["status"] == "ok", body
