"""``/healthz`` in process: the daemon on a fake wall clock with a scripted feed. A
connection down, a stale mark or an unknown risk degrades the daemon only once it has
lasted its grace period; a stalled loop makes it unhealthy."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from adapters.okx.decode import OkxDecoder
from monitor.core.batch import Batch
from monitor.core.engine import MarginEngine
from monitor.core.errors import SinkError
from monitor.core.settings import HealthConfig
from monitor.runtime.daemon import Daemon, Lane
from monitor.runtime.feed import Inbox, LinkChange
from monitor.runtime.pipeline import SinkTask
from tests.builders import make_config
from tests.daemon_fakes import LINKS, Clock, NullSink, ScriptedFeed
from tests.test_daemon_loop import BTC, account_frame, mark, positions_frame
from tests.test_execution import fired_stop_loss


class Harness:
    def __init__(self) -> None:
        self.clock = Clock(1_000.0)
        self.inbox = Inbox()
        self.feed = ScriptedFeed()
        self.engine = MarginEngine(make_config())
        self.daemon = Daemon([Lane(self.engine, OkxDecoder(), self.feed, self.inbox)],
                             SinkTask(NullSink()),
                             health=HealthConfig(feed_grace_s=5, risk_unknown_grace_s=8),
                             wall_s=self.clock)

    async def start(self, stop: asyncio.Event) -> asyncio.Task[None]:
        runner = asyncio.create_task(self.daemon.run(stop))
        await asyncio.wait_for(self.feed.running.wait(), 10)
        return runner

    async def at(self, now: float, *items: Any) -> tuple[bool, dict[str, Any]]:
        """Move the wall clock, deliver ``items``, let the loop turn; /healthz then."""
        self.clock.now = now
        turned = self.daemon.last_loop_s
        for item in items:
            self.inbox.put(item)
        self.inbox.wake()
        await _until(lambda: self.daemon.last_loop_s > turned or self.clock.now == turned)
        await asyncio.sleep(0)
        return self.daemon.health(now)


def reasons(details: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {reason["reason"]: reason for reason in details["reasons"]}


async def test_conditions_degrade_the_daemon_only_after_their_grace_period() -> None:
    harness = Harness()
    stop = asyncio.Event()
    runner = await harness.start(stop)
    try:
        # Nothing connected yet, the account's snapshots not in: within the grace periods.
        healthy, details = await harness.at(1_003.0)
        assert healthy and details["status"] == "ok" and details["reasons"] == []
        # Past feed_grace_s: both connections count as down since the start.
        healthy, details = await harness.at(1_006.0)
        assert not healthy and details["status"] == "degraded"
        down = reasons(details)["feed_disconnected"]
        assert down["count"] == 2 and down["grace_s"] == 5
        assert {item["feed"] for item in down["items"]} == set(LINKS)
        assert all(item["for_s"] == 6.0 for item in down["items"])
        # Past risk_unknown_grace_s: the account has had no snapshot.
        healthy, details = await harness.at(1_009.0)
        unknown = reasons(details)["risk_unknown"]
        assert unknown["items"] == [{"account": "main", "for_s": 9.0, "missing": [
            "snapshot:balances", "snapshot:positions"]}]
        # Connected, snapshots and a mark in: healthy at once.
        healthy, details = await harness.at(
            1_010.0, LinkChange(1, None, True, "subscribed"),
            LinkChange(1, "main", True, "subscribed"), account_frame(10_000, 1_000),
            positions_frame(10, 1_000), mark(40_000, 1_000))
        assert healthy and details["status"] == "ok", details
        # The mark goes stale 10 s of exchange time later (the daemon extrapolates it
        # from the wall clock during silence), the account's risk with it; degraded once
        # that has lasted 5 s (the feed) and 8 s (the risk).
        healthy, details = await harness.at(1_021.5)
        assert harness.engine.stale_instruments() == [BTC]
        assert healthy
        healthy, details = await harness.at(1_027.0)
        assert set(reasons(details)) == {"feed_stale"}
        assert reasons(details)["feed_stale"]["items"][0]["inst_id"] == BTC
        healthy, details = await harness.at(1_030.0)
        assert set(reasons(details)) == {"feed_stale", "risk_unknown"}
        assert reasons(details)["risk_unknown"]["items"][0]["missing"] == [f"mark:{BTC}"]
        # A connection drops: degraded for it only after the grace period.
        healthy, details = await harness.at(1_031.0, mark(40_100, 32_000),
                                            LinkChange(2, "main", False, "closed"))
        assert healthy, details
        healthy, details = await harness.at(1_037.0, mark(40_100, 38_000))
        assert [item["feed"] for item in reasons(details)["feed_disconnected"]["items"]] == [
            "private:main"]
        # Reconnected before the grace period ran out: the clock starts again next time.
        await harness.at(1_038.0, LinkChange(3, "main", True, "subscribed"),
                         mark(40_100, 39_000))
        await harness.at(1_039.0, LinkChange(4, "main", False, "closed"), mark(40_100, 40_000))
        healthy, _ = await harness.at(1_042.0, mark(40_100, 43_000))
        assert healthy
    finally:
        stop.set()
        await asyncio.wait_for(runner, 10)


class FailingSink:
    name = "failing"

    async def write(self, batch: Batch) -> None:
        raise SinkError("disk full")

    async def close(self) -> None:
        return None


async def test_a_stalled_loop_or_a_failed_sink_makes_the_daemon_unhealthy() -> None:
    harness = Harness()
    healthy, details = harness.daemon.health(harness.daemon.last_loop_s + 6)
    assert not healthy and details["status"] == "unhealthy"
    assert reasons(details)["engine_stalled"]["engine_loop_age_s"] == 6.0

    sink = SinkTask(FailingSink(), max_attempts=1)
    harness.daemon.head = sink
    sink.start()
    await sink.queue.put(Batch())
    await _until(lambda: sink.task is not None and sink.task.done())
    healthy, details = harness.daemon.health(harness.daemon.last_loop_s)
    assert not healthy and details["status"] == "unhealthy" and not details["sinks_ok"]
    assert set(reasons(details)) == {"sink_failed"}


async def test_a_failure_another_part_reports_makes_the_daemon_unhealthy() -> None:
    harness = Harness()
    broken: list[dict[str, Any]] = []
    harness.daemon.checks.append(lambda: list(broken))
    healthy, _ = harness.daemon.health(harness.daemon.last_loop_s)
    assert healthy
    broken.append({"reason": "executor_failed", "accounts": ["main"]})
    healthy, details = harness.daemon.health(harness.daemon.last_loop_s)
    assert not healthy and details["status"] == "unhealthy"
    assert reasons(details)["executor_failed"]["accounts"] == ["main"]


class KeepingSink:
    name = "keeping"

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.closed = False

    async def write(self, batch: Batch) -> None:
        assert not self.closed
        self.batches.append(batch)

    async def close(self) -> None:
        self.closed = True


async def test_what_is_emitted_before_the_drain_is_still_stored() -> None:
    # The executor stops in before_drain and may emit alerts while it finishes: the
    # chain must still take them, and close only after.
    harness = Harness()
    sink = KeepingSink()
    harness.daemon.head = SinkTask(sink)
    stop = asyncio.Event()
    late = fired_stop_loss()

    async def before_drain() -> None:
        await asyncio.sleep(0.05)
        await harness.daemon.head.put(Batch.of(alerts=[late]))

    runner = asyncio.create_task(harness.daemon.run(stop, before_drain=before_drain))
    await asyncio.wait_for(harness.feed.running.wait(), 10)
    stop.set()
    await asyncio.wait_for(runner, 10)
    assert Batch.merged(sink.batches) == Batch.of(alerts=[late]) and sink.closed


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)
