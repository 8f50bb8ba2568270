"""The alert stream of the real daemon: ``riskmon run`` against ``riskmon replay-server``
followed by ``riskmon tail`` across a daemon restart, and the in-process API
(monitor.app.service.Monitor) against the replay server. Every part a real process or socket
on loopback; the story paced at 50x as in tests/test_daemon_live.py."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

from adapters.okx.auth import Credentials
from monitor.app.config import load_config
from monitor.app.service import Monitor
from monitor.core.alerts import LEVEL_RANK, Alert
from monitor.runtime.stream import SubscriberOverflow, Subscription
from tests.live_harness import (
    LIVE_ENV,
    PASSPHRASE,
    SECRET,
    STORY,
    Process,
    engine_alerts,
    live_config,
    replay_outputs,
    running,
    stored_alerts,
    wait_quiet,
)

SPEED = "50"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def config_on(tmp_path: Path, server_port: int, stream_port: int) -> Path:
    """The live configuration on a fixed stream port, keeping alerts of any age: the
    story's events are older than the default 90 days, and the restarted daemon would
    otherwise prune what the first one stored (and with it the id tail resumes from)."""
    path = live_config(tmp_path, server_port)
    text = path.read_text().replace("[stream]\nport = 0\n", f"[stream]\nport = {stream_port}\n")
    text = text.replace("[storage]\n", "[storage]\nretention_days = 36500\n")
    path.write_text(text)
    return path


def tail_alerts(tail: Process) -> list[dict[str, Any]]:
    return [json.loads(line) for line in list(tail.stdout_lines) if line.startswith("{")]


def wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_tail_resumes_after_the_daemon_restarts(tmp_path: Path) -> None:
    stream_port = free_port()
    url = f"ws://127.0.0.1:{stream_port}/v1/alerts"
    with running(["tail", "--url", url, "--since", "earliest"]) as tail:
        with running(["replay-server", str(STORY), "--port", "0", "--speed", SPEED]) as server:
            config = config_on(tmp_path, server.wait_status("listening")["port"], stream_port)
            with running(["run", "--config", str(config)], env=LIVE_ENV) as daemon:
                daemon.wait_status("listening")
                wait_for(lambda: len(tail_alerts(tail)) >= 3, "the first alerts")
                assert daemon.terminate() == 0  # mid-story
        printed_before_restart = len(tail_alerts(tail))
        stored_before_restart = len(stored_alerts(tmp_path / "daemon.db"))
        with running(["replay-server", str(STORY), "--port", "0", "--speed", SPEED]) as server:
            config = config_on(tmp_path, server.wait_status("listening")["port"], stream_port)
            with running(["run", "--config", str(config)], env=LIVE_ENV) as daemon:
                http_port = daemon.wait_status("listening")["port"]
                server.wait_status("finished", timeout=120)
                wait_quiet(http_port)
                stored = stored_alerts(tmp_path / "daemon.db")
                wait_for(lambda: len(tail_alerts(tail)) >= len(stored), "tail to catch up")
                assert daemon.terminate() == 0
        time.sleep(0.3)
        assert tail.terminate() == 0
    printed = tail_alerts(tail)
    assert [a["id"] for a in printed] == [a["id"] for a in stored]  # no gap, no duplicate
    assert printed == stored  # each line the alert JSON, as stored
    assert printed_before_restart < len(stored) and stored_before_restart < len(stored)


async def test_a_program_iterates_the_alerts_of_an_embedded_monitor(tmp_path: Path) -> None:
    expected, _ = await asyncio.to_thread(replay_outputs, tmp_path)
    with running(["replay-server", str(STORY), "--port", "0", "--speed", SPEED]) as server:
        port = (await asyncio.to_thread(server.wait_status, "listening"))["port"]
        config = load_config(live_config(tmp_path, port))
        monitor = await Monitor.open(
            config, credentials={"main": Credentials(LIVE_ENV["RISKMON_MAIN_API_KEY"],
                                                     SECRET, PASSPHRASE)},
            serve_http=False)
        everything: list[Alert] = []
        severe: list[Alert] = []

        async def collect(subscription: Subscription, into: list[Alert]) -> None:
            try:
                async for alert in subscription:
                    into.append(alert)
            except SubscriberOverflow:
                raise AssertionError("a subscriber was cut off") from None

        # Subscribed before it runs: every alert it stores reaches both.
        collectors = [
            asyncio.create_task(collect(monitor.subscribe(), everything)),
            asyncio.create_task(collect(monitor.subscribe(
                min_level="deleverage", kinds=["level_changed", "stop_loss"]), severe)),
        ]
        stop = asyncio.Event()
        runner = asyncio.create_task(monitor.run(stop))
        await asyncio.to_thread(server.wait_status, "finished", 120)
        await asyncio.sleep(1.5)
        stop.set()
        await runner
        async with asyncio.timeout(10):
            await asyncio.gather(*collectors)  # the subscriptions end when the monitor stops
    as_dicts = [alert.to_dict() for alert in everything]
    assert engine_alerts(as_dicts) == engine_alerts(expected)
    assert as_dicts == stored_alerts(tmp_path / "daemon.db")
    assert severe == [a for a in everything if a.kind in ("level_changed", "stop_loss")
                      and LEVEL_RANK[a.level] >= LEVEL_RANK["deleverage"]]
    assert severe  # the story reaches deleverage
