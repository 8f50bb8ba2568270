"""``riskmon tail`` as a real subprocess against the alert stream served in the test
(tests.stream_harness.StreamServer: the store, hub and websocket handler of ``riskmon run``)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from monitor.core.alerts import Alert
from tests.builders import make_alert
from tests.live_harness import ROOT
from tests.stream_harness import StreamServer, until

TOKEN = "tok-desk-5be1"


class Tail:
    """``python -m monitor tail ...``: its stdout lines parsed as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.alerts: list[dict[str, Any]] = []
        self.grew = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> Tail:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "monitor", "tail", *args, cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})})
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.alerts.append(orjson.loads(line))
            self.grew.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(30):
            while len(self.alerts) < count:
                self.grew.clear()
                await self.grew.wait()

    async def finish(self) -> tuple[int, str]:
        """Exit code and stderr, once it exits (within 30 s)."""
        async with asyncio.timeout(30):
            code = await self.process.wait()
            await self._reader
            assert self.process.stderr is not None
            stderr = (await self.process.stderr.read()).decode()
        return code, stderr

    async def stop(self) -> tuple[int, str]:
        if self.process.returncode is None:
            self.process.terminate()
        return await self.finish()


def alert_json(alerts: list[Alert]) -> list[dict[str, Any]]:
    return [orjson.loads(alert.to_json()) for alert in alerts]


async def test_tail_prints_count_alerts_as_json_lines_and_exits_zero(tmp_path: Path) -> None:
    server = await StreamServer(tmp_path / "alerts.db").start()
    try:
        stored = [make_alert(n) for n in range(1, 4)]
        await server.chain.publish(stored)
        await server.chain.settle()
        tail = await Tail.start("--url", server.url, "--since", "earliest", "--count", "5")
        await tail.wait_for(3)
        live = [make_alert(4), make_alert(5), make_alert(6)]
        await server.chain.publish(live)
        code, stderr = await tail.finish()
    finally:
        await server.stop()
    assert code == 0, stderr
    assert tail.alerts == alert_json(stored + live[:2])  # stored, then live, then stop at 5


async def test_tail_filters_by_account_and_kind(tmp_path: Path) -> None:
    server = await StreamServer(tmp_path / "alerts.db").start()
    try:
        tail = await Tail.start("--url", server.url, "--account", "desk", "--kind",
                                "feed_stale", "--kind", "stop_loss", "--count", "2")
        await until(lambda: server.chain.hub.subscribers == 1)  # live only: from now on
        produced = [make_alert(1, account="desk", kind="feed_stale"),
                    make_alert(2, account="main", kind="feed_stale"),
                    make_alert(3, account="desk", kind="level_changed"),
                    make_alert(4, account="desk", kind="stop_loss")]
        await server.chain.publish(produced)
        code, stderr = await tail.finish()
    finally:
        await server.stop()
    assert code == 0, stderr
    assert tail.alerts == alert_json([produced[0], produced[3]])


async def test_an_authentication_refusal_exits_non_zero_with_the_reason(tmp_path: Path) -> None:
    server = await StreamServer(tmp_path / "alerts.db",
                                tokens={TOKEN: frozenset({"desk"})}).start()
    try:
        wrong = await Tail.start("--url", server.url, "--token", "tok-wrong-0001")
        wrong_code, wrong_err = await wrong.finish()
        outside = await Tail.start("--url", server.url, "--account", "main",
                                   env={"RISKMON_STREAM_TOKEN": TOKEN})
        outside_code, outside_err = await outside.finish()
        allowed = await Tail.start("--url", server.url, "--since", "earliest", "--count", "1",
                                   env={"RISKMON_STREAM_TOKEN": TOKEN})
        await server.chain.publish([make_alert(1, account="main"),
                                    make_alert(2, account="desk")])
        allowed_code, allowed_err = await allowed.finish()
    finally:
        await server.stop()
    assert wrong_code == 2 and "unauthorized: unknown token" in wrong_err
    assert "tok-wrong-0001" not in wrong_err
    assert outside_code == 2
    assert "forbidden: account 'main' is outside this token's accounts" in outside_err
    assert allowed_code == 0, allowed_err
    assert [a["account"] for a in allowed.alerts] == ["desk"]


async def test_tail_resumes_after_a_restart_without_a_gap_or_a_duplicate(
        tmp_path: Path) -> None:
    server = await StreamServer(tmp_path / "alerts.db").start()
    first = [make_alert(n) for n in range(1, 6)]
    await server.chain.publish(first)
    await server.chain.settle()
    # Live only: it resumes from the ack's resume_id, having printed nothing before.
    tail = await Tail.start("--url", server.url)
    try:
        await until(lambda: server.chain.hub.subscribers == 1)
        before = [make_alert(n) for n in range(6, 9)]
        await server.chain.publish(before)
        await tail.wait_for(3)
        await server.stop()
        # Stored while the stream is down: no live subscriber can have seen these.
        server_down = await StreamServer(tmp_path / "alerts.db").start()
        await server_down.chain.publish([make_alert(n) for n in range(9, 12)])
        await server_down.chain.settle()
        await server_down.stop()
        await server.start()  # the same port and file, as a restarted daemon
        after = [make_alert(n) for n in range(12, 15)]
        await server.chain.publish(after)
        await tail.wait_for(9)
        await asyncio.sleep(0.3)
        code, stderr = await tail.stop()
    finally:
        await server.stop()
    assert tail.alerts == alert_json(before + [make_alert(n) for n in range(9, 12)] + after)
    assert code == 0, stderr  # SIGTERM: a clean stop
