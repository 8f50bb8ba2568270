"""The live daemon's core loop: feed items in, one engine task, sinks out (SPEC 3.1, 4, 5).

Shape (STYLE: one owner per resource)::

    feed connections --put--> Inbox --> engine task --> SQLite sink --> log, subscribers

- The feed's connections only ``put`` what they receive, unparsed, as it arrives
  (monitor.runtime.feed); they never wait on the engine or a sink.
- The engine task is the only one that touches the decoder and the engine. It takes every
  waiting item at once, parses and decodes it, applies it, and hands the records to the
  head sink's bounded queue. When a sink is slow that queue fills, the engine task waits
  on it, the inbox grows, and the inbox conflates mark prices (monitor.runtime.feed): the feed
  never stalls, and order, position and balance events are never dropped.
- Persist before publish: followers get a batch only after the head (SQLite) stored it.
- Time: the engine runs on exchange time. During silence the daemon sends
  :class:`~monitor.core.events.ClockTick` events (the last event time plus the wall time since
  it arrived, once a second) so that a silent feed still goes stale and reminders fire.
- Stop: :meth:`Daemon.run` returns when ``stop`` is set, after cancelling the feed,
  applying what is still in the inbox and draining every sink.
- Health (``/healthz``, :meth:`Daemon.health`): once a second the engine task notes which
  feed connections are down, which instruments have a stale mark and which accounts'
  risk is unknown (monitor.runtime.health); any of them lasting past its ``[health]`` grace
  period makes the daemon *degraded*, and a stalled engine loop or a failed sink makes
  it *unhealthy*; both answer 503 with the reasons.
- Venues (:class:`Lane`): a daemon follows one or more venues, each in a lane of its own:
  its feed, inbox, decoder and engine. One engine per venue, not one for all: an engine
  runs on exchange time, and two exchanges' clocks differ, as do their index prices and
  collateral rules for the same currency (two venues' USDT are two prices), so each
  venue's accounts are judged against their own venue's. The lanes share the engine task,
  the sink chain, the metrics and ``/healthz``. In a daemon of several lanes each public
  connection is named ``public:VENUE`` (one venue: ``public``, as SPEC 5 has it); account
  names are unique across venues, so ``private:ACCOUNT`` stays as it is.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from monitor.core.alerts import LEVEL_RANK
from monitor.core.batch import Batch
from monitor.core.engine import ExposureKey, MarginEngine
from monitor.core.errors import BadInput
from monitor.core.events import UNTIMED, ClockTick, Event, FeedStatus, OrderUpdate
from monitor.core.records import AccountCheckpoint
from monitor.core.settings import HealthConfig, QuarantineConfig
from monitor.runtime.feed import Feed, FeedDecoder, FeedItem, Frame, Inbox, LinkChange, RestBody
from monitor.runtime.health import LISTED, Onsets
from monitor.runtime.metrics import BuildInfo, Metrics
from monitor.runtime.pipeline import LineProcessor, SinkTask, Stats

TICK_INTERVAL_S = 1.0
RAW_LIMIT = 4096
LOOP_STALLED_S = 5 * TICK_INTERVAL_S
"""The engine loop turns at least once a second; not within this long, it is stalled."""

SWITCH_INTERVAL_S = 0.0002
"""The thread switch interval a daemon process runs with (Python's default: 5 ms).

The event loop thread runs Python almost without pause under load, and SQLite runs on
the store's own thread (adapters/sqlite_thread.py): when that thread finishes a commit it
needs the GIL to hand the result back, and waits until the loop thread yields it, at the
latest after the switch interval. At the default that adds up to 5 ms to an alert's
receive-to-stored time; at 0.2 ms the extra switching costs little (the SQLite thread is
idle most of the time)."""


def tune_interpreter() -> None:
    """Set :data:`SWITCH_INTERVAL_S` for this process and freeze what exists so far out of
    the cyclic garbage collector's reach; ``riskmon run`` calls it at start.

    Freezing (``gc.freeze``): the modules, classes and configuration loaded at start live
    as long as the process, yet every full collection would walk them again. Those
    collections stop the event loop while they run (several ms each in live_bench, and
    10 ms is a backlog of a thousand frames at 100,000 frames/s); frozen, they walk only
    what the daemon created since.

    Process-wide settings, so the daemon's entry point makes them, not :class:`Daemon`: a
    program that embeds a daemon decides for itself.
    """
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.freeze()


@dataclass(frozen=True, slots=True)
class Lane:
    """One venue's part of a daemon (see the module docstring): what its feed delivers
    goes through its inbox and decoder into its engine. ``venue`` names it in the public
    connection's name when the daemon has several; None in a one-venue daemon."""

    engine: MarginEngine
    decoder: FeedDecoder
    feed: Feed
    inbox: Inbox
    venue: str | None = None


class _Running:
    """A lane as the daemon runs it: its line processor, and the exchange time of the
    last event that moved its engine's clock, with when it came (for clock ticks)."""

    __slots__ = ("anchor_event_ms", "anchor_wall_s", "decoder", "engine", "feed", "inbox",
                 "interest_version", "processor", "venue")

    def __init__(self, lane: Lane, processor: LineProcessor) -> None:
        self.engine = lane.engine
        self.decoder = lane.decoder
        self.feed = lane.feed
        self.inbox = lane.inbox
        self.venue = lane.venue
        self.processor = processor
        self.anchor_event_ms = 0
        self.anchor_wall_s = 0.0
        self.interest_version = -1

    def link_name(self, name: str) -> str:
        """A feed connection's name as the daemon reports it (``public:VENUE`` beside
        other venues)."""
        return name if self.venue is None or name != "public" else f"public:{self.venue}"

    def link_names(self) -> Iterator[str]:
        return (self.link_name(name) for name in self.feed.link_stats())


class Daemon:
    """Runs each lane's feed into its engine and the engines into the sinks, until
    stopped."""

    def __init__(
        self,
        lanes: Sequence[Lane],
        head: SinkTask,
        *,
        history_interval_ms: int = 60_000,
        quarantine: QuarantineConfig | None = None,
        health: HealthConfig | None = None,
        wall_s: Callable[[], float] = time.time,
        order_observer: Callable[[OrderUpdate], None] | None = None,
    ) -> None:
        """``order_observer`` is told every order update, after the engine applied it
        (the executor follows its own orders by them); it must not wait. The lanes'
        inboxes must share one ``ready`` event (:class:`~monitor.runtime.feed.Inbox`) when there
        are several: the engine task waits on it."""
        if not lanes:
            raise ValueError("a daemon needs at least one lane")
        self.lanes = tuple(lanes)
        self.order_observer = order_observer
        self.head = head
        self._lanes = tuple(
            _Running(lane, LineProcessor(lane.engine, _no_lines, "feed", history_interval_ms,
                                         quarantine=quarantine))
            for lane in lanes)
        self._by_account = {name: lane for lane in self._lanes for name in lane.engine.accounts}
        self.metrics = Metrics(started_s=wall_s(), build=BuildInfo.current())
        self.health_config = health or HealthConfig()
        self.wall_s = wall_s
        self.last_loop_s = wall_s()
        # When each adverse condition began (wall time), observed once a second.
        self._links_down = Onsets()
        self._stale = Onsets()
        self._unknown = Onsets()
        self._next_watch_s = 0.0
        self.checks: list[Callable[[], list[dict[str, Any]]]] = []
        """Failures other parts of the program report to ``/healthz`` (the executor's
        crashed workers, say), each a reason object; any makes the daemon unhealthy."""

    async def run(self, stop: asyncio.Event,
                  before_drain: Callable[[], Awaitable[None]] | None = None) -> None:
        """Until ``stop`` is set; then drain and return. A sink failure raises.

        ``before_drain`` runs once the feed has stopped and its last records are queued,
        before the sink chain drains and closes: a follower that emits alerts of its own
        (the executor) stops there, so that what it emits while stopping is still stored.
        """
        self.head.start()
        lanes = self._lanes
        for lane in lanes:
            self._follow_interest(lane)
        feeds = [asyncio.create_task(lane.feed.run(), name=f"feed:{lane.venue or ''}")
                 for lane in lanes]
        ticker = asyncio.create_task(self._tick_every_second(), name="ticker")
        stopper = asyncio.create_task(self._wake_on(stop), name="stopper")
        tasks = [*feeds, ticker, stopper]
        self._watch()
        try:
            while not stop.is_set():
                await lanes[0].inbox.wait()  # the lanes' inboxes share the event
                for lane in lanes:
                    self._process(lane, lane.inbox.take())
                    self._tick(lane)
                self._watch()
                await self._flush()
                for feed_task in feeds:
                    if feed_task.done():
                        feed_task.result()  # a feed that ended by itself is a bug
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for lane in lanes:
                self._process(lane, lane.inbox.take())
                lane.processor.finish()
            try:
                await self._flush()
                if before_drain is not None:
                    await before_drain()
            finally:
                await self.head.drain_and_close()

    # -- the engine task ---------------------------------------------------------------

    def _process(self, lane: _Running, items: list[FeedItem]) -> None:
        """Parse, decode and apply every waiting item, each whole or not at all.

        An item the decoder or the engine refuses (monitor.core.engine: implausible) is
        quarantined and changes nothing. The bookkeeping (history sample, clock anchor, lag
        gauge, wall-clock read) runs once per batch instead of once per frame.
        """
        processor = lane.processor
        decoder = lane.decoder
        engine = lane.engine
        self.metrics.frames += len(items)
        events: list[Event] = []
        before = engine.now_ms
        for item in items:
            try:
                if isinstance(item, Frame):
                    decoded = decoder.decode_message(item.text, item.account, item.recv_ms)
                elif isinstance(item, RestBody):
                    decoded = decoder.decode_rest(item.path, item.body, item.account,
                                                  item.recv_ms)
                else:
                    decoded = [self._link_change(lane, item)]
                processor.apply_input(decoded)
                events += decoded
            except BadInput as e:
                processor.quarantine(_source(lane, item), e.reason, _raw(item), item.recv_ms)
        now_s = self.wall_s()
        if events:
            processor.settle()
            if engine.now_ms > before:
                lane.anchor_event_ms = engine.now_ms
                lane.anchor_wall_s = now_s
            observer = self.order_observer
            if observer is not None:
                for event in events:
                    if isinstance(event, OrderUpdate):
                        observer(event)
            timed = next((e for e in reversed(events) if e.event_ms != UNTIMED), None)
            if timed is not None:
                self.metrics.feed_lag_s = (timed.recv_ms - timed.event_ms) / 1000
        self._follow_interest(lane)
        self.last_loop_s = now_s

    def live_positions(self, account: str) -> dict[ExposureKey, float] | None:
        """The account's positions as its private connection last reported them, while
        that connection is up and the first positions snapshot has come; else None (the
        executor then asks the exchange). Right after a reconnect they are those held
        before it until the new snapshot replaces them (the REST bootstrap and the
        channel's snapshot follow the connect at once); the executor's orders are
        reduce-only in any case. Read between engine turns: one event loop, no lock."""
        lane = self._by_account.get(account)
        if lane is None or not self.metrics.feeds_connected.get(f"private:{account}", False):
            return None
        return lane.engine.held_positions(account)

    # -- the engines, together ------------------------------------------------------

    @property
    def now_ms(self) -> int:
        """The latest exchange time any lane's engine has reached."""
        return max(lane.engine.now_ms for lane in self._lanes)

    @property
    def stats(self) -> Stats:
        """The lanes' counters, summed (``--state-out``, ``/metrics``)."""
        processors = [lane.processor for lane in self._lanes]
        if len(processors) == 1:
            return processors[0].stats
        total = Stats()
        for processor in processors:
            stats = processor.stats
            total.lines += stats.lines
            total.events += stats.events
            total.quarantined += stats.quarantined
            total.alerts += stats.alerts
            _add_counts(total.alerts_by_kind, stats.alerts_by_kind)
            _add_counts(total.out_of_order, stats.out_of_order)
        return total

    def state(self) -> dict[str, Any]:
        """Every account's state (``MarginEngine.state()``), the lanes in order."""
        return {name: figures for lane in self._lanes
                for name, figures in lane.engine.state().items()}

    def restore(self, checkpoints: Sequence[AccountCheckpoint]) -> None:
        """Hand each lane's engine the checkpoints of its accounts (one of an account no
        longer configured goes to the first lane, as in a one-venue daemon)."""
        first = self._lanes[0]
        mine: dict[int, list[AccountCheckpoint]] = {}
        for checkpoint in checkpoints:
            lane = self._by_account.get(checkpoint.account, first)
            mine.setdefault(id(lane), []).append(checkpoint)
        for lane in self._lanes:
            lane.engine.restore(mine.get(id(lane), []))

    def _link_change(self, lane: _Running, item: LinkChange) -> FeedStatus:
        name = (lane.link_name("public") if item.account is None
                else f"private:{item.account}")
        self.metrics.feeds_connected[name] = item.connected
        return FeedStatus(item.account, "connected" if item.connected else "disconnected",
                          item.reason, UNTIMED, item.recv_ms)

    def _tick(self, lane: _Running) -> None:
        """A ClockTick for the lane's engine when a second or more has passed since the
        last event moved its clock (see the module docstring)."""
        if lane.anchor_event_ms == 0:
            return  # no exchange time seen yet: nothing to extrapolate from
        elapsed_ms = int((self.wall_s() - lane.anchor_wall_s) * 1000)
        if elapsed_ms < TICK_INTERVAL_S * 1000:
            return
        now_ms = lane.anchor_event_ms + elapsed_ms
        if now_ms > lane.engine.now_ms:
            wall_ms = int(self.wall_s() * 1000)
            lane.processor.feed_events([ClockTick(now_ms, wall_ms)])

    def _watch(self) -> None:
        """Once a second: which connections are down (or not up yet), which instruments
        are stale and which accounts' risk is unknown, for :meth:`health`."""
        now_s = self.wall_s()
        if now_s < self._next_watch_s:
            return
        self._next_watch_s = now_s + TICK_INTERVAL_S
        connected = self.metrics.feeds_connected
        self._links_down.observe([name for lane in self._lanes for name in lane.link_names()
                                  if not connected.get(name, False)], now_s)
        self._stale.observe(self._stale_instruments(), now_s)
        self._unknown.observe([name for lane in self._lanes
                               for name in lane.engine.unknown_accounts()], now_s)

    def _stale_instruments(self) -> list[str]:
        return [inst for lane in self._lanes for inst in lane.engine.stale_instruments()]

    def _follow_interest(self, lane: _Running) -> None:
        """Tell the lane's feed what its engine needs when that changed
        (``interest_version`` moves with the instruments and currencies in use and the
        currencies borrowed)."""
        engine = lane.engine
        if engine.interest_version != lane.interest_version:
            lane.interest_version = engine.interest_version
            lane.feed.want(engine.instruments_in_use(), engine.currencies_in_use(),
                           engine.currencies_borrowed())

    async def _flush(self) -> None:
        batch = Batch.merged([lane.processor.take() for lane in self._lanes])
        metrics = self.metrics
        stats = self.stats
        metrics.events = stats.events
        metrics.quarantined = stats.quarantined
        metrics.out_of_order = dict(stats.out_of_order)
        metrics.alerts_by_kind = dict(stats.alerts_by_kind)
        metrics.conflated = sum(lane.inbox.conflated for lane in self._lanes)
        if batch:
            await self.head.put(batch)

    # -- helpers for the loop ----------------------------------------------------------

    async def _tick_every_second(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL_S)
            self._lanes[0].inbox.wake()

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._lanes[0].inbox.wake()

    def refresh_gauges(self) -> None:
        """Gauges that are read from the engine and the feed, not counted (called before
        a scrape): one pass over the accounts."""
        metrics = self.metrics
        metrics.inbox_depth = sum(len(lane.inbox) for lane in self._lanes)
        metrics.sink_queue_depth = self.head.queue_depths()
        failing = {name for name, _, _ in self.head.failing()}
        metrics.sink_failing = {name: name in failing for name in metrics.sink_queue_depth}
        metrics.sink_waiting_records = self.head.waiting_records
        for engine, name in self._account_names():
            known = engine.risk_known(name)
            metrics.account_risk_known[name] = known
            metrics.account_level[name] = LEVEL_RANK[engine.level(name)]
            if not known:
                # Only what is known so far: a number would read as the account's figure
                # (a dashboard's ratio, a rule on it). Absent, with risk_known 0 saying why.
                metrics.margin_ratio.pop(name, None)
                metrics.account_equity_usd.pop(name, None)
                metrics.account_maint_margin_usd.pop(name, None)
                continue
            figures = engine.figures(name)
            metrics.margin_ratio[name] = figures.margin_ratio
            metrics.account_equity_usd[name] = figures.equity_usd
            metrics.account_maint_margin_usd[name] = figures.maint_margin_usd
        for lane in self._lanes:
            for link, stats in lane.feed.link_stats().items():
                metrics.feed_reconnects[lane.link_name(link)] = stats.reconnects
                metrics.feed_errors[lane.link_name(link)] = stats.errors
        metrics.stale_instruments = len(self._stale_instruments())

    def _account_names(self) -> Iterator[tuple[MarginEngine, str]]:
        """Every account any engine holds (configured or seen in a feed), with its
        engine."""
        return ((lane.engine, name) for lane in self._lanes
                for name in lane.engine.account_names())

    def health(self, now_s: float) -> tuple[bool, dict[str, Any]]:
        """``(healthy, details)`` for ``/healthz``.

        Healthy while there is no reason not to be. The reasons, each an object with a
        ``reason`` field: ``engine_stalled`` (the loop has not turned for
        :data:`LOOP_STALLED_S`), ``sink_failed`` and those of :attr:`checks` (such as
        ``executor_failed``) make the status ``unhealthy``;
        ``sink_failing`` (a sink's write failing and being retried, its records held in
        memory; each such sink with ``for_s`` and the ``error``),
        ``feed_disconnected`` (connections down, or not up yet, for ``health.feed_grace_s``),
        ``feed_stale`` (instruments whose mark has been stale that long) and
        ``risk_unknown`` (accounts whose risk has been unknown for
        ``health.risk_unknown_grace_s``, with what they miss) make it ``degraded``. The
        last three name at most :data:`~monitor.runtime.health.LISTED` items, longest first, with
        how long each has lasted (``for_s``) and ``count``, all of them.
        """
        config = self.health_config
        loop_age = now_s - self.last_loop_s
        sinks_ok = self.head.alive()
        failures: list[dict[str, Any]] = []
        if loop_age >= LOOP_STALLED_S:
            failures.append({"reason": "engine_stalled", "engine_loop_age_s": round(loop_age, 3)})
        if not sinks_ok:
            failures.append({"reason": "sink_failed"})
        for check in self.checks:
            failures += check()
        degraded: list[dict[str, Any]] = []
        failing = self.head.failing()
        if failing:
            degraded.append({"reason": "sink_failing", "count": len(failing), "items": [
                {"sink": name, "for_s": round(max(0.0, now_s - since), 3), "error": error}
                for name, since, error in failing]})
        down = self._links_down.lasting(config.feed_grace_s, now_s)
        if down:
            degraded.append(_reason("feed_disconnected", config.feed_grace_s, down,
                                    lambda name, for_s: {"feed": name, "for_s": for_s}))
        stale = self._stale.lasting(config.feed_grace_s, now_s)
        if stale:
            degraded.append(_reason("feed_stale", config.feed_grace_s, stale,
                                    lambda inst, for_s: {"inst_id": inst, "for_s": for_s}))
        engines = {name: engine for engine, name in self._account_names()}
        unknown = [(name, for_s) for name, for_s in
                   self._unknown.lasting(config.risk_unknown_grace_s, now_s)
                   if name in engines and not engines[name].risk_known(name)]
        if unknown:
            degraded.append(_reason(
                "risk_unknown", config.risk_unknown_grace_s, unknown,
                lambda name, for_s: {"account": name, "for_s": for_s,
                                     "missing": engines[name].missing(name)[:LISTED]}))
        reasons = failures + degraded
        status = "unhealthy" if failures else "degraded" if degraded else "ok"
        return not reasons, {
            "status": status,
            "reasons": reasons,
            "engine_loop_age_s": round(loop_age, 3),
            "sinks_ok": sinks_ok,
            "feeds": dict(self.metrics.feeds_connected),
            "event_time_ms": self.now_ms,
        }


def _reason(code: str, grace_s: float, items: list[tuple[str, float]],
            describe: Callable[[str, float], dict[str, Any]]) -> dict[str, Any]:
    """One ``/healthz`` reason naming the first :data:`LISTED` of ``items``."""
    return {"reason": code, "grace_s": grace_s, "count": len(items),
            "items": [describe(key, round(for_s, 3)) for key, for_s in items[:LISTED]]}


def _no_lines(line: bytes) -> list[Any]:
    raise BadInput("the daemon decodes feed items, not lines")


def _add_counts(total: dict[str, int], counts: Mapping[str, int]) -> None:
    for key, value in counts.items():
        total[key] = total.get(key, 0) + value


def _source(lane: _Running, item: FeedItem) -> str:
    feed = lane.link_name("public") if item.account is None else f"private:{item.account}"
    if isinstance(item, RestBody):
        return f"rest:{item.path.split('?', 1)[0]}"
    return f"feed:{feed}"


def _raw(item: FeedItem) -> str:
    if isinstance(item, Frame):
        return item.text[:RAW_LIMIT]
    if isinstance(item, RestBody):
        return _dumps(item.body)
    return repr(item)


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()[:RAW_LIMIT]
    except TypeError:
        return repr(value)[:RAW_LIMIT]
