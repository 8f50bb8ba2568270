"""A daemon of two venues in process (monitor/runtime/daemon.py, ``Lane``), on a fake wall clock
with scripted feeds: each venue's accounts are judged on that venue's own exchange clock,
a silent venue goes stale on its own while the other keeps ticking, and ``/healthz`` and
the metrics name each venue's public connection apart."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from adapters.okx.decode import OkxDecoder
from monitor.core.engine import MarginEngine
from monitor.core.settings import AccountConfig, HealthConfig
from monitor.runtime.daemon import Daemon, Lane
from monitor.runtime.feed import Frame, Inbox, LinkChange, LinkStats
from monitor.runtime.pipeline import SinkTask
from tests.builders import make_config
from tests.daemon_fakes import Clock, NullSink, ScriptedFeed
from tests.test_daemon_health import _until, reasons
from tests.test_daemon_loop import BTC, account_frame, mark, positions_frame

SKEW_MS = 30_000
"""Venue b's exchange clock runs this far behind venue a's."""


class TwoVenues:
    def __init__(self) -> None:
        self.clock = Clock(1_000.0)
        ready = asyncio.Event()
        self.inbox_a, self.inbox_b = Inbox(ready=ready), Inbox(ready=ready)
        self.feed_a, self.feed_b = ScriptedFeed(), ScriptedFeed()
        self.feed_b.stats = {"public": LinkStats(), "private:other": LinkStats()}
        config = make_config()
        self.engine_a = MarginEngine(config)
        self.engine_b = MarginEngine(replace(config, accounts={"other": AccountConfig("other")}))
        self.daemon = Daemon(
            [Lane(self.engine_a, OkxDecoder(), self.feed_a, self.inbox_a, "a"),
             Lane(self.engine_b, OkxDecoder(), self.feed_b, self.inbox_b, "b")],
            SinkTask(NullSink()), health=HealthConfig(feed_grace_s=5, risk_unknown_grace_s=8),
            wall_s=self.clock)

    async def start(self, stop: asyncio.Event) -> asyncio.Task[None]:
        runner = asyncio.create_task(self.daemon.run(stop))
        await asyncio.wait_for(self.feed_a.running.wait(), 10)
        await asyncio.wait_for(self.feed_b.running.wait(), 10)
        return runner

    async def at(self, now: float, a: tuple[Any, ...] = (),
                 b: tuple[Any, ...] = ()) -> tuple[bool, dict[str, Any]]:
        """Move the wall clock, deliver each venue's items, let the loop turn."""
        self.clock.now = now
        turned = self.daemon.last_loop_s
        for item in a:
            self.inbox_a.put(item)
        for item in b:
            self.inbox_b.put(item)
        self.inbox_a.wake()
        await _until(lambda: self.daemon.last_loop_s > turned or self.clock.now == turned)
        await asyncio.sleep(0)
        return self.daemon.health(now)


def of_other(frame: Frame) -> Frame:
    return frame._replace(account="other")


def snapshots(ts: int, account: str) -> tuple[Frame, ...]:
    frames = (account_frame(10_000, ts), positions_frame(10, ts))
    return frames if account == "main" else tuple(map(of_other, frames))


async def test_each_venue_runs_on_its_own_clock_and_goes_stale_on_its_own() -> None:
    venues = TwoVenues()
    stop = asyncio.Event()
    runner = await venues.start(stop)
    try:
        a_ms, b_ms = 1_000_000, 1_000_000 - SKEW_MS
        healthy, details = await venues.at(
            1_001.0,
            (LinkChange(1, None, True, "subscribed"), LinkChange(1, "main", True, "subscribed"),
             *snapshots(a_ms, "main"), mark(40_000, a_ms)),
            (LinkChange(1, None, True, "subscribed"), LinkChange(1, "other", True, "subscribed"),
             *snapshots(b_ms, "other"), mark(40_000, b_ms)))
        # Venue b's figures are 30 s older than venue a's clock, and fresh on its own: in
        # one engine for both they would be stale (stale_after_s is 10 s) as they came.
        assert venues.engine_a.now_ms == a_ms and venues.engine_b.now_ms == b_ms
        assert venues.engine_a.risk_known("main") and venues.engine_b.risk_known("other")
        assert venues.engine_b.stale_instruments() == []
        assert healthy, details
        assert details["event_time_ms"] == a_ms
        assert venues.daemon.state().keys() == {"main", "other"}
        # Venue a keeps ticking, b falls silent: b's clock moves on by the wall clock from
        # b's own last event, and b's mark goes stale; a's does not.
        for second in range(1, 13):
            await venues.at(1_001.0 + second, (mark(40_000 + second, a_ms + second * 1000),))
        assert venues.engine_b.stale_instruments() == [BTC]
        assert venues.engine_b.now_ms >= b_ms + 10_000
        assert venues.engine_a.stale_instruments() == []
        assert venues.engine_a.now_ms == a_ms + 12_000
    finally:
        stop.set()
        await asyncio.wait_for(runner, 10)


async def test_health_and_metrics_name_each_venues_public_connection() -> None:
    venues = TwoVenues()
    stop = asyncio.Event()
    runner = await venues.start(stop)
    try:
        # Venue a connects; venue b never does.
        await venues.at(1_001.0, (LinkChange(1, None, True, "subscribed"),
                                  LinkChange(1, "main", True, "subscribed")))
        healthy, details = await venues.at(1_007.0)
        assert not healthy
        down = reasons(details)["feed_disconnected"]
        assert {item["feed"] for item in down["items"]} == {"public:b", "private:other"}
        assert details["feeds"] == {"public:a": True, "private:main": True}
        venues.daemon.refresh_gauges()
        metrics = venues.daemon.metrics
        assert set(metrics.feed_reconnects) == {"public:a", "private:main", "public:b",
                                                "private:other"}
        assert metrics.account_risk_known == {"main": False, "other": False}
    finally:
        stop.set()
        await asyncio.wait_for(runner, 10)
