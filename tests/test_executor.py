"""The executor (adapters/executor.py) against an in-memory exchange and a real SQLite file.

:class:`FakeExchange` is a fake, not a mock: it keeps positions and orders by client id,
refuses a client id it has seen, fills market orders (or rejects, loses the answer,
fills partly, as told), and pushes order updates to the executor as the orders channel
would. It checks, at every order request, that the attempt was already stored (persist
before act). The loop over OKX's real protocol runs in tests/test_execution_live.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adapters.executor import Executor
from adapters.sqlite_store import SqliteStore
from monitor.core.alerts import Alert
from monitor.core.batch import Batch
from monitor.core.errors import ConfigError
from monitor.core.events import Order, OrderUpdate
from monitor.core.execution import (
    Leg,
    OrderAnswer,
    PositionKey,
    TradeFailure,
    client_order_id,
    legs_of,
)
from monitor.core.records import StoredAlert
from monitor.core.settings import ExecutionConfig
from monitor.runtime.metrics import Metrics
from tests.test_execution import BTC, ETH, fired_stop_loss

FAST = ExecutionConfig(fill_timeout_s=0.2, request_timeout_s=0.5, give_up_s=20.0,
                       max_trigger_age_s=1e12)


@dataclass
class FakeExchange:
    """One account's exchange. ``script`` answers the orders of each instrument in turn:
    "fill" (when the list is used up), "reject", "lose" (placed, answer lost), "drop" (not
    placed, answer lost), "partial" (fills 40 % then ends), "hold" (placed, no fill until
    ``release``)."""

    store: SqliteStore
    book: dict[PositionKey, float]
    script: dict[str, list[str]] = field(default_factory=dict)
    perm: str = "read_only,trade"
    account: str = "main"
    batch_limit: int = 20
    requests: list[list[str]] = field(default_factory=list)
    placed: dict[str, tuple[Leg, float, float]] = field(default_factory=dict)
    held: list[str] = field(default_factory=list)
    push: Callable[[OrderUpdate], None] | None = None
    warm_calls: int = 0
    positions_reads: int = 0
    answer_after_s: float = 0.0
    """How long an order request waits for its answer (an exchange under load)."""
    broken: Exception | None = None
    """Raised by the positions read: a trader with a bug."""

    async def permissions(self) -> frozenset[str]:
        return frozenset(self.perm.split(","))

    async def positions(self) -> dict[PositionKey, float]:
        self.positions_reads += 1
        if self.broken is not None:
            raise self.broken
        return self.positions_now()

    async def warm(self) -> None:
        self.warm_calls += 1

    def positions_now(self) -> dict[PositionKey, float]:
        return {k: v for k, v in self.book.items() if v != 0}

    async def place(self, orders: Sequence[tuple[Leg, str, float]]) -> list[OrderAnswer]:
        self.requests.append([cid for _, cid, _ in orders])
        await asyncio.sleep(self.answer_after_s)
        answers = []
        lost = False
        for leg, client_id, size in orders:
            if client_id in self.placed:
                answers.append(OrderAnswer(client_id, "", "51016", "Duplicated clOrdId", None))
                continue
            queue = self.script.get(leg.inst_id, [])
            action = queue.pop(0) if queue else "fill"
            if action == "reject":
                answers.append(OrderAnswer(client_id, "", "51008", "Insufficient margin", None))
                continue
            if action == "drop":
                lost = True
                continue
            fill = {"partial": 0.4 * size, "hold": 0.0}.get(action, size)
            self.placed[client_id] = (leg, size, fill)
            self._trade(leg, fill)
            answers.append(OrderAnswer(client_id, f"o{len(self.placed)}", "0", "", 1))
            if action == "hold":
                self.held.append(client_id)
            else:
                self._push(client_id)
            lost = lost or action == "lose"
        if lost:
            raise TradeFailure("POST /api/v5/trade/batch-orders: no answer in time", "lost")
        return answers

    def place_now(self, leg: Leg, client_id: str) -> None:
        """An order placed and filled as if by a run that died before storing it."""
        self.placed[client_id] = (leg, leg.size, leg.size)
        self._trade(leg, leg.size)

    def release(self) -> None:
        for client_id in self.held:
            leg, size, _ = self.placed[client_id]
            self.placed[client_id] = (leg, size, size)
            self._trade(leg, size)
            self._push(client_id)
        self.held.clear()

    async def order(self, leg: Leg, client_id: str) -> OrderUpdate | None:
        return self._update(client_id) if client_id in self.placed else None

    async def close(self) -> None:
        return None

    def _trade(self, leg: Leg, contracts: float) -> None:
        key = leg.position_key
        self.book[key] = self.book.get(key, 0.0) + (
            -contracts if leg.side == "sell" else contracts)

    def _update(self, client_id: str) -> OrderUpdate:
        leg, size, fill = self.placed[client_id]
        live = client_id in self.held
        state = "live" if live else "filled" if fill >= size else "canceled"
        order = Order(f"o{list(self.placed).index(client_id) + 1}", leg.inst_id, leg.side,
                      None, size, fill, True, None, leg.position_side, leg.margin_mode)
        return OrderUpdate(self.account, order, live, 1, 1, client_id, state,
                           40_000.0 if fill else None)

    def _push(self, client_id: str) -> None:
        if self.push is not None:
            self.push(self._update(client_id))


class Harness:
    def __init__(self, tmp_path: Path, exchange_positions: dict[PositionKey, float]) -> None:
        self.path = tmp_path / "executor.db"
        self.positions = exchange_positions
        self.alerts: list[Alert] = []
        self.store: SqliteStore | None = None

    async def open(self, config: ExecutionConfig = FAST,
                   script: dict[str, list[str]] | None = None,
                   exchange: FakeExchange | None = None) -> tuple[Executor, FakeExchange]:
        if self.store is None:
            self.store = await SqliteStore.open(self.path)
        if exchange is None:
            exchange = FakeExchange(self.store, self.positions, script or {})
        executor = await Executor.open(config, {"main": exchange}, self.path)
        exchange.push = executor.on_order

        async def emit(batch: Batch) -> None:
            assert self.store is not None
            self.alerts += batch.alerts
            await self.store.write_alerts(batch.alerts)

        executor.emit = emit
        executor.start()
        return executor, exchange

    async def trigger(self, executor: Executor, alert: Alert) -> None:
        assert self.store is not None
        await self.store.write_alerts([alert])
        seq = await self.store.alert_seq(alert.id)
        assert seq is not None
        executor.offer(Batch(stored=(StoredAlert(seq, alert, alert.to_json()),)))

    def kinds(self) -> list[str]:
        return [a.kind for a in self.alerts]

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()
            self.store = None


async def until(condition: Callable[[], bool | Awaitable[bool]], within_s: float = 10.0) -> None:
    async with asyncio.timeout(within_s):
        while True:
            result = condition()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await asyncio.sleep(0.01)


def hedged() -> dict[PositionKey, float]:
    return {(BTC, "cross", "long"): 300.0, (ETH, "cross", "short"): -400.0}


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path, hedged())
    yield harness
    await harness.close()  # also when the test failed: an open store keeps its thread


async def test_a_trigger_closes_every_leg_once(harness: Harness) -> None:
    executor, exchange = await harness.open()
    try:
        await harness.trigger(executor, fired_stop_loss())
        await until(lambda: harness.kinds().count("execution_filled") == 2)
    finally:
        await executor.stop()
    assert exchange.positions_now() == {}
    assert len(exchange.requests) == 1
    assert harness.kinds() == ["execution_sent", "execution_filled", "execution_filled"]
    sent = harness.alerts[0].payload["orders"]
    assert [(o["inst_id"], o["side"], o["pos_side"], o["order_size"], o["s_code"])
            for o in sent] == [(BTC, "sell", "long", 300.0, "0"), (ETH, "buy", "short", 400.0,
                                                                   "0")]
    assert harness.store is not None
    legs = await harness.store.execution_legs()
    assert [(p.state, p.attempt, p.total_filled) for p in legs] == [("filled", 1, 300.0),
                                                                    ("filled", 1, 400.0)]
    attempts = await harness.store.execution_attempts()
    assert len(attempts) == 2 and {a.state for a in attempts} == {"filled"}
    await harness.close()


async def test_orders_are_sized_to_the_live_position(harness: Harness) -> None:
    harness.positions[(BTC, "cross", "long")] = 120.0   # partly closed by hand meanwhile
    del harness.positions[(ETH, "cross", "short")]      # closed entirely
    executor, exchange = await harness.open()
    try:
        await harness.trigger(executor, fired_stop_loss())
        await until(lambda: "execution_filled" in harness.kinds())
    finally:
        await executor.stop()
    assert [size for _, size, _ in exchange.placed.values()] == [120.0]
    assert harness.store is not None
    legs = await harness.store.execution_legs()
    assert [p.state for p in legs] == ["filled", "skipped"]
    skipped = [a.payload for a in harness.alerts if a.kind == "execution_failed"]
    assert [(p["inst_id"], p["reason"]) for p in skipped] == [(ETH, "no position left to close")]
    await harness.close()


async def test_the_live_feed_positions_size_the_orders_when_it_has_them(
        harness: Harness) -> None:
    # The daemon's view of the account (its positions channel) is used when it can vouch
    # for it: no REST round trip before the orders. Where it cannot (None), REST is read.
    executor, exchange = await harness.open()
    views: list[str] = []

    def live(account: str) -> dict[PositionKey, float] | None:
        views.append(account)
        return {(BTC, "cross", "long"): 250.0} if len(views) == 1 else None

    executor.live_positions = live
    try:
        await harness.trigger(executor, fired_stop_loss())
        await until(lambda: "execution_filled" in harness.kinds())
        assert exchange.positions_reads == 0
        assert [size for _, size, _ in exchange.placed.values()] == [250.0]
        # The ETH leg: no position in the live view, so nothing is sent for it.
        legs = await executor.store.execution_legs()
        assert [p.state for p in legs] == ["filled", "skipped"]
        # A second trigger: the view cannot vouch now, so the exchange is asked.
        first = fired_stop_loss()
        await harness.trigger(executor, dataclasses.replace(first, id=first.id + "b"))
        await until(lambda: exchange.positions_reads == 1)
    finally:
        await executor.stop()
    assert views == ["main", "main"]
    await harness.close()


async def test_an_idle_trade_connection_is_kept_warm(harness: Harness) -> None:
    executor, exchange = await harness.open(dataclasses.replace(FAST, keep_warm_s=0.05))
    try:
        await until(lambda: exchange.warm_calls >= 3)
        warmed = exchange.warm_calls
        await harness.trigger(executor, fired_stop_loss())
        await until(lambda: harness.kinds().count("execution_filled") == 2)
    finally:
        await executor.stop()
    assert warmed >= 3 and exchange.positions_now() == {}
    # Warmed only when idle: the trigger went out without a warming call in front of it.
    assert len(exchange.requests) == 1
    await harness.close()


async def test_rejections_are_retried_then_escalated(harness: Harness) -> None:
    executor, exchange = await harness.open(script={BTC: ["reject"],
                                                    ETH: ["reject"] * 3})
    try:
        await harness.trigger(executor, fired_stop_loss())
        await until(lambda: any(a.kind == "execution_failed"
                                and not a.payload["will_retry"] for a in harness.alerts))
        await until(lambda: "execution_filled" in harness.kinds())
    finally:
        await executor.stop()
    failed = [a for a in harness.alerts if a.kind == "execution_failed"]
    btc = [a.payload for a in failed if a.payload["inst_id"] == BTC]
    eth = [a.payload for a in failed if a.payload["inst_id"] == ETH]
    assert [(p["attempt"], p["s_code"], p["will_retry"]) for p in btc] == [(1, "51008", True)]
    assert [(p["attempt"], p["will_retry"]) for p in eth] == [(1, True), (2, True), (3, False)]
    assert eth[-1]["s_msg"] == "Insufficient margin" and eth[-1]["remaining"] == 400.0
    assert exchange.positions_now() == {(ETH, "cross", "short"): -400.0}
    assert len({cid for request in exchange.requests for cid in request}) == 5
    await harness.close()


async def test_a_partial_fill_sends_the_remainder(harness: Harness) -> None:
    del harness.positions[(ETH, "cross", "short")]
    executor, exchange = await harness.open(script={BTC: ["partial"]})
    try:
        await harness.trigger(executor, fired_stop_loss())
        await until(lambda: "execution_filled" in harness.kinds())
    finally:
        await executor.stop()
    assert [size for _, size, _ in exchange.placed.values()] == [300.0, 180.0]
    assert exchange.positions_now() == {}
    failed = [a.payload for a in harness.alerts if a.kind == "execution_failed"]
    # ETH's position was gone: said so, not silently skipped.
    assert [(p["inst_id"], p["reason"], p["will_retry"]) for p in failed] == [
        (ETH, "no position left to close", False), (BTC, "partially filled", True)]
    filled = next(a for a in harness.alerts if a.kind == "execution_filled")
    assert filled.payload["filled"] == 300.0 and filled.payload["attempt"] == 2
    await harness.close()


async def test_a_lost_answer_is_looked_up_never_sent_twice(harness: Harness) -> None:
    executor, exchange = await harness.open(script={BTC: ["lose"], ETH: ["drop"]})
    try:
        await harness.trigger(executor, fired_stop_loss())
        await until(lambda: harness.kinds().count("execution_filled") == 2)
    finally:
        await executor.stop()
    # The lost order (placed) was found by its id; the dropped one (never placed) went
    # again with the same id: three requests, two orders, each leg once.
    assert exchange.positions_now() == {}
    assert len(exchange.placed) == 2
    ids = [cid for request in exchange.requests for cid in request]
    assert len(ids) == 3 and len(set(ids)) == 2
    await harness.close()


async def test_a_restart_between_send_and_fill_looks_up_and_places_nothing_again(
        harness: Harness) -> None:
    del harness.positions[(ETH, "cross", "short")]
    executor, exchange = await harness.open(script={BTC: ["hold"]})
    await harness.trigger(executor, fired_stop_loss())
    await until(lambda: "execution_sent" in harness.kinds())
    await executor.stop()                      # the fill notice never reached this run
    exchange.release()                         # ... the exchange filled it meanwhile
    exchange.push = None
    executor, _ = await harness.open(exchange=exchange)
    try:
        await until(lambda: "execution_filled" in harness.kinds())
    finally:
        await executor.stop()
    assert len(exchange.requests) == 1 and len(exchange.placed) == 1
    assert exchange.positions_now() == {}
    await harness.close()


async def test_pause_stops_new_sends_and_survives_a_restart(harness: Harness) -> None:
    executor, exchange = await harness.open()
    await executor.set_paused(True)
    await executor.stop()
    executor, _ = await harness.open(exchange=exchange)
    try:
        assert executor.status()["paused"] is True
        await harness.trigger(executor, fired_stop_loss())
        await until(lambda: harness.kinds().count("execution_failed") == 2)
        await executor.set_paused(False)
        second = fired_stop_loss("close", inst_id=BTC)
        second = dataclasses.replace(second, id=second.id + "b")
        await harness.trigger(executor, second)
        await until(lambda: "execution_filled" in harness.kinds())
    finally:
        await executor.stop()
    reasons = [a.payload["reason"] for a in harness.alerts if a.kind == "execution_failed"]
    assert reasons == ["paused", "paused"]
    assert len(exchange.placed) == 1
    await harness.close()


async def test_an_old_trigger_is_not_executed(harness: Harness) -> None:
    config = dataclasses.replace(FAST, max_trigger_age_s=60.0)
    executor, exchange = await harness.open(config)
    try:
        await harness.trigger(executor, fired_stop_loss())  # emitted in 2026-01: long ago
        await until(lambda: "execution_failed" in harness.kinds())
    finally:
        await executor.stop()
    assert exchange.requests == []
    assert harness.alerts[-1].payload["reason"] == "expired"
    await harness.close()


async def test_a_dry_run_sends_nothing_and_stores_what_it_would(harness: Harness) -> None:
    executor, exchange = await harness.open(dataclasses.replace(FAST, dry_run=True))
    try:
        alert = fired_stop_loss()
        await harness.trigger(executor, alert)
        assert harness.store is not None
        store = harness.store

        async def stored() -> bool:
            return len(await store.execution_attempts()) == 2
        await until(stored)
    finally:
        await executor.stop()
    assert exchange.requests == []
    attempts = await store.execution_attempts()
    assert [(a.inst_id, a.size, a.dry_run, a.state) for a in attempts] == [
        (BTC, 300.0, True, "dry_run"), (ETH, 400.0, True, "dry_run")]
    assert [leg.size for leg in legs_of(alert)] == [300.0, 400.0]
    await harness.close()


async def test_a_trigger_stored_while_down_is_taken_after_the_start(harness: Harness) -> None:
    executor, exchange = await harness.open()
    await executor.stop()
    assert harness.store is not None
    await harness.store.write_alerts([fired_stop_loss()])  # stored; executor not running
    executor, _ = await harness.open(exchange=exchange)
    try:
        await until(lambda: harness.kinds().count("execution_filled") == 2)
    finally:
        await executor.stop()
    assert len(exchange.placed) == 2
    await harness.close()


async def stored_while_down(harness: Harness, exchange: FakeExchange) -> Alert:
    """A trigger stored after the executor's cursor, as a run that died right after
    storing it (and perhaps after sending its orders) leaves it."""
    assert harness.store is not None
    alert = fired_stop_loss()
    await harness.store.write_alerts([alert])
    return alert


async def test_a_trigger_after_the_cursor_is_looked_up_before_it_is_sent(
        harness: Harness) -> None:
    # The first request goes while its attempts commit: a run can die after sending and
    # before the commit. Its trigger is then after the cursor, with no legs stored; the
    # next run must find the orders by their client ids and not place them again.
    executor, exchange = await harness.open()
    await executor.stop()
    alert = await stored_while_down(harness, exchange)
    btc, eth = legs_of(alert)
    exchange.place_now(btc, client_order_id(alert.id, btc.index, 1))  # sent, then died
    executor, _ = await harness.open(exchange=exchange)
    try:
        await until(lambda: harness.kinds().count("execution_filled") == 2)
    finally:
        await executor.stop()
    # BTC's order was found (no request for it); ETH's was absent and went once, with the
    # first attempt's id.
    assert exchange.requests == [[client_order_id(alert.id, eth.index, 1)]]
    assert len(exchange.placed) == 2 and exchange.positions_now() == {}
    assert harness.store is not None
    legs = await harness.store.execution_legs()
    assert [(p.state, p.attempt, p.total_filled) for p in legs] == [("filled", 1, 300.0),
                                                                    ("filled", 1, 400.0)]
    await harness.close()


async def test_a_recovered_trigger_too_old_to_act_on_is_not_sent(harness: Harness) -> None:
    config = dataclasses.replace(FAST, max_trigger_age_s=60.0)
    executor, exchange = await harness.open(config)
    await executor.stop()
    alert = await stored_while_down(harness, exchange)  # emitted in 2026-01: long ago
    btc, _ = legs_of(alert)
    exchange.place_now(btc, client_order_id(alert.id, btc.index, 1))
    executor, _ = await harness.open(config, exchange=exchange)
    try:
        await until(lambda: {"execution_filled", "execution_failed"} <= set(harness.kinds()))
    finally:
        await executor.stop()
    # The order that went is followed to its fill; the one that never went is not sent.
    assert exchange.requests == []
    failed = [a for a in harness.alerts if a.kind == "execution_failed"]
    assert [(a.payload["inst_id"], a.payload["reason"]) for a in failed] == [(ETH, "expired")]
    await harness.close()


async def test_a_key_that_cannot_trade_refuses_the_start(harness: Harness) -> None:
    store = await SqliteStore.open(harness.path)
    exchange = FakeExchange(store, hedged(), perm="read_only")
    executor = await Executor.open(FAST, {"main": exchange}, harness.path)
    try:
        with pytest.raises(ConfigError, match="cannot trade"):
            await executor.check_keys()
        dry = await Executor.open(dataclasses.replace(FAST, dry_run=True), {"main": exchange},
                                  harness.path)
        await dry.check_keys()  # a dry run only warns
        await dry.stop()
    finally:
        await executor.stop()
        await store.close()


async def test_metrics_count_orders_and_legs(harness: Harness) -> None:
    executor, _ = await harness.open(script={ETH: ["reject"] * 3})
    try:
        await harness.trigger(executor, fired_stop_loss())
        await until(lambda: {"execution_filled", "execution_failed"} <= set(harness.kinds())
                    and not executor.workers["main"].legs)
        metrics = Metrics()
        executor.update_metrics(metrics)
    finally:
        await executor.stop()
    # BTC: one order, filled. ETH: three orders, each rejected, then given up.
    assert metrics.executor_orders_sent == {"main": 4}
    assert metrics.executor_orders_rejected == {"main": 3}
    assert metrics.executor_legs_filled == {"main": 1}
    assert metrics.executor_legs_failed == {"main": 1}
    assert metrics.executor_open_legs == {"main": 0}
    assert metrics.executor_worker_up == {"main": True}
    assert metrics.executor_paused is False
    text = metrics.render(0.0)
    assert 'riskmon_executor_orders_sent_total{account="main"} 4' in text.splitlines()
    await harness.close()


async def test_stopping_lets_the_request_in_flight_finish_and_say_so(
        harness: Harness) -> None:
    # SIGTERM while an order request waits for its answer: the answer is stored and
    # execution_sent emitted before the executor stops (the sink chain still takes it).
    executor, exchange = await harness.open()
    exchange.answer_after_s = 0.3
    await harness.trigger(executor, fired_stop_loss())
    await until(lambda: exchange.requests != [])
    await executor.stop()
    assert harness.kinds()[0] == "execution_sent"
    assert harness.store is not None
    legs = await harness.store.execution_legs()
    assert {p.state for p in legs} <= {"accepted", "filled"}
    await executor.stop()  # twice is harmless
    await harness.close()


async def test_stopping_does_not_wait_past_its_grace(harness: Harness) -> None:
    executor, exchange = await harness.open()
    exchange.answer_after_s = 30.0
    await harness.trigger(executor, fired_stop_loss())
    await until(lambda: exchange.requests != [])
    started = asyncio.get_running_loop().time()
    await executor.stop(grace_s=0.2)
    assert asyncio.get_running_loop().time() - started < 5.0
    # The request never got its answer: stored as sent, so the next start looks it up.
    assert harness.store is not None
    legs = await harness.store.execution_legs(open_only=True)
    assert [p.state for p in legs] == ["sending", "sending"]
    await harness.close()


async def test_a_crashed_worker_is_reported_not_hidden(harness: Harness) -> None:
    executor, exchange = await harness.open()
    exchange.broken = KeyError("a bug in the trader")
    try:
        assert executor.failures() == []
        await harness.trigger(executor, fired_stop_loss())
        await until(lambda: executor.failures() != [])
        [failure] = executor.failures()
        metrics = Metrics()
        executor.update_metrics(metrics)
    finally:
        await executor.stop()
    assert failure["reason"] == "executor_failed" and failure["accounts"] == ["main"]
    assert failure["errors"]["main"].startswith("KeyError")
    assert metrics.executor_worker_up == {"main": False}
    assert exchange.requests == []
    await harness.close()
