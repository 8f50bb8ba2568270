"""``/healthz`` end to end on loopback (issue 12): ``riskmon run`` against ``riskmon
replay-server`` with its fault options. A stalled feed (``--stall-after``) or a dropped
connection (``--drop-after``) turns it 503 with its reasons once past the grace period,
and 200 again after."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.live_harness import (
    LIVE_ENV,
    STORY,
    Process,
    http_get,
    live_config,
    metric_samples,
    running,
)


def wait_health(port: int, status: int, timeout: float = 30.0) -> dict[str, Any]:
    """Poll /healthz until it answers ``status``; its body."""
    deadline = time.monotonic() + timeout
    while True:
        code, body = http_get(port, "/healthz")
        if code == status:
            document: dict[str, Any] = json.loads(body)
            return document
        assert time.monotonic() < deadline, f"/healthz stayed {code}: {body!r}"
        time.sleep(0.1)


def wait_log(process: Process, event: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for record in process.logs():
            if record.get("event") == event:
                return record
        assert time.monotonic() < deadline, f"no {event!r} log: {process.stderr_tail()}"
        time.sleep(0.05)


def health_config(tmp_path: Path, port: int, okx: dict[str, float] | None = None,
                  stale_after_s: int = 10) -> Path:
    config = live_config(tmp_path, port, okx=okx)
    text = config.read_text().replace("stale_after_s = 10", f"stale_after_s = {stale_after_s}")
    config.write_text(text + "\n[health]\nfeed_grace_s = 1\nrisk_unknown_grace_s = 1\n")
    return config


def test_a_stalled_feed_turns_healthz_503_with_reasons_then_200(tmp_path: Path) -> None:
    with running(["replay-server", str(STORY), "--port", "0", "--speed", "50",
                  "--stall-after", "300", "--stall-s", "8"]) as server:
        config = health_config(tmp_path, server.wait_status("listening")["port"],
                               stale_after_s=2)
        with running(["run", "--config", str(config)], env=LIVE_ENV) as daemon:
            http_port = daemon.wait_status("listening")["port"]
            wait_health(http_port, 200)
            wait_log(server, "replay_fault")
            degraded = wait_health(http_port, 503, timeout=8)
            recovered = wait_health(http_port, 200)
            assert daemon.terminate() == 0
        server.terminate()

    assert degraded["status"] == "degraded"
    reasons = {reason["reason"]: reason for reason in degraded["reasons"]}
    assert "feed_stale" in reasons
    stale = {item["inst_id"] for item in reasons["feed_stale"]["items"]}
    assert stale <= {"BTC-USDT-SWAP", "ETH-USDT-SWAP"} and stale
    assert all(item["for_s"] >= 1 for item in reasons["feed_stale"]["items"])
    if "risk_unknown" in reasons:  # a second later than the stale marks, often seen too
        [account] = reasons["risk_unknown"]["items"]
        assert account["account"] == "main" and account["missing"][0].startswith("mark:")
    assert "feed_disconnected" not in reasons  # silent, not disconnected: no ping due yet
    assert recovered == {**recovered, "status": "ok", "reasons": []}


def test_a_dropped_connection_turns_healthz_503_until_it_is_back(tmp_path: Path) -> None:
    # Reconnecting waits 3-6 s (backoff 6 s, jittered): longer than the 1 s grace period.
    with running(["replay-server", str(STORY), "--port", "0", "--speed", "50",
                  "--drop-after", "300"]) as server:
        config = health_config(tmp_path, server.wait_status("listening")["port"],
                               okx={"backoff_initial_s": 6, "backoff_max_s": 6})
        with running(["run", "--config", str(config)], env=LIVE_ENV) as daemon:
            http_port = daemon.wait_status("listening")["port"]
            wait_health(http_port, 200)
            degraded = wait_health(http_port, 503)
            recovered = wait_health(http_port, 200)
            _, metrics = http_get(http_port, "/metrics")
            assert daemon.terminate() == 0
        server.terminate()

    reasons = {reason["reason"]: reason for reason in degraded["reasons"]}
    [down] = reasons["feed_disconnected"]["items"]
    assert down["feed"] in ("public", "private:main") and down["for_s"] >= 1
    assert degraded["feeds"][down["feed"]] is False
    assert recovered["status"] == "ok" and all(recovered["feeds"].values())
    found = metric_samples(metrics.decode())
    assert found["riskmon_feed_reconnects_total", f'{{feed="{down["feed"]}"}}'] == 1
    assert found["riskmon_feed_errors_total", f'{{feed="{down["feed"]}"}}'] == 1
    assert found["riskmon_feed_connected", f'{{feed="{down["feed"]}"}}'] == 1
