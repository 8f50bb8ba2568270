"""Alert subscriptions (monitor.runtime.stream) over a real SQLite store, fed the way the daemon
feeds them: a SinkTask on the SQLite sink with the hub as its follower."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.sqlite_store import SqliteStore
from monitor.core.alerts import Alert
from monitor.runtime.stream import (
    EARLIEST,
    AlertFilter,
    SubscriberOverflow,
    Subscription,
    UnknownAlertId,
)
from tests.builders import make_alert
from tests.stream_harness import Chain, DelayedSource


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, SqliteStore]]:
    store = await SqliteStore.open(tmp_path / "alerts.db", synchronous="OFF")
    reader = await SqliteStore.open(tmp_path / "alerts.db")
    yield store, reader
    await reader.close()
    await store.close()


async def take(subscription: Subscription, count: int) -> list[Alert]:
    received: list[Alert] = []
    async with asyncio.timeout(10):
        while len(received) < count:
            received.append(await anext(subscription))
    return received


def alerts(first: int, count: int, **fields: object) -> list[Alert]:
    return [make_alert(n, **fields) for n in range(first, first + count)]  # type: ignore[arg-type]


async def test_a_live_subscription_gets_what_is_stored_after_it_in_order(
        stores: tuple[SqliteStore, SqliteStore]) -> None:
    chain = Chain(*stores)
    await chain.publish(alerts(1, 3))
    await chain.settle()
    subscription = chain.hub.subscribe()
    assert subscription.resume_id == make_alert(3).id  # where the live stream begins
    await chain.publish(alerts(4, 2))
    await chain.publish(alerts(6, 1))
    assert await take(subscription, 3) == alerts(4, 3)
    assert subscription.resume_id == make_alert(6).id


async def test_filters_select_accounts_kinds_and_a_minimum_level(
        stores: tuple[SqliteStore, SqliteStore]) -> None:
    chain = Chain(*stores)
    produced = [
        make_alert(1, account="main", kind="level_changed", level="warning"),
        make_alert(2, account="desk", kind="level_changed", level="deleverage"),
        make_alert(3, account="main", kind="feed_stale", level="normal"),
        make_alert(4, account="main", kind="stop_loss", level="liquidation"),
        make_alert(5, account="desk", kind="feed_stale", level="withdrawal_lock"),
    ]
    main = chain.hub.subscribe(AlertFilter.of(accounts=["main"]))
    stale = chain.hub.subscribe(AlertFilter.of(kinds=["feed_stale"]))
    severe = chain.hub.subscribe(AlertFilter.of(min_level="deleverage"))
    desk_severe = chain.hub.subscribe(AlertFilter.of(["desk"], ["level_changed"], "warning"))
    await chain.publish(produced)
    assert await take(main, 3) == [produced[0], produced[2], produced[3]]
    assert await take(stale, 2) == [produced[2], produced[4]]
    assert await take(severe, 2) == [produced[1], produced[3]]
    assert await take(desk_severe, 1) == [produced[1]]
    # The same filters over the catch-up path.
    again = chain.hub.subscribe(AlertFilter.of(["main"], None, "warning"), since=EARLIEST)
    assert await take(again, 2) == [produced[0], produced[3]]


def test_a_filter_refuses_unknown_kinds_and_levels() -> None:
    with pytest.raises(ValueError, match="unknown alert kind 'margin_call'"):
        AlertFilter.of(kinds=["margin_call"])
    with pytest.raises(ValueError, match="unknown level 'panic'"):
        AlertFilter.of(min_level="panic")


async def test_catch_up_then_live_has_no_gap_and_no_duplicate_while_alerts_are_produced(
        stores: tuple[SqliteStore, SqliteStore]) -> None:
    store, reader = stores
    # Small, slow pages: catching up takes several reads racing the producer.
    chain = Chain(store, DelayedSource(reader, 0.003), page_size=7, queue_size=10_000)
    rng = random.Random(7)
    total = 400
    await chain.publish(alerts(1, 20))
    await chain.settle()

    async def produce() -> None:
        n = 21
        while n <= total:
            size = rng.randint(1, 6)
            await chain.publish(alerts(n, min(size, total - n + 1)))
            n += size
            await asyncio.sleep(rng.choice([0, 0.001, 0.002]))

    producer = asyncio.create_task(produce())
    collected: list[tuple[str | None, list[Alert], Subscription]] = []
    consumers = []

    grew = asyncio.Event()

    def follow(since: str | None, subscription: Subscription) -> None:
        received: list[Alert] = []
        collected.append((since, received, subscription))

        async def consume() -> None:
            async for alert in subscription:
                received.append(alert)
                grew.set()

        consumers.append(asyncio.create_task(consume()))

    follow(None, chain.hub.subscribe(since=EARLIEST))
    while not producer.done():
        await asyncio.sleep(rng.uniform(0, 0.004))
        since = await store.last_alert_id()
        assert since is not None
        follow(since, chain.hub.subscribe(since=since))
        live = chain.hub.subscribe()
        follow(live.resume_id, live)
    await chain.settle()

    everything = await store.alerts()
    assert len(everything) == total
    assert len(collected) >= 10
    for since, received, _ in collected:
        expected = everything if since is None else await store.alerts(since=since)
        async with asyncio.timeout(10):
            while len(received) < len(expected):
                grew.clear()
                await grew.wait()
        await asyncio.sleep(0.02)
        assert received == expected  # no gap, no duplicate, nothing after the end
    for consumer in consumers:
        consumer.cancel()


async def test_a_subscriber_that_falls_behind_is_cut_off_and_resumes_without_a_gap(
        stores: tuple[SqliteStore, SqliteStore]) -> None:
    chain = Chain(*stores, queue_size=5)
    stuck = chain.hub.subscribe()
    healthy = chain.hub.subscribe()
    produced = alerts(1, 20)
    received: list[Alert] = []

    async def consume() -> None:
        async for alert in healthy:
            received.append(alert)

    consumer = asyncio.create_task(consume())
    for alert in produced:
        await chain.publish([alert])
        await asyncio.sleep(0.005)
    await chain.settle()

    assert stuck.cut_off.is_set() and chain.hub.cut_off == 1
    held = [alert async for alert in _until_overflow(stuck)]
    assert held == produced[:5]  # what it held, then the overflow
    assert received == produced  # the other subscriber lost nothing
    resumed = chain.hub.subscribe(since=held[-1].id)
    assert await take(resumed, 15) == produced[5:]
    consumer.cancel()


async def _until_overflow(subscription: Subscription) -> AsyncIterator[Alert]:
    try:
        async for alert in subscription:
            yield alert
    except SubscriberOverflow as e:
        assert "more than 5 alerts behind" in str(e)
        return
    raise AssertionError("the subscription was not cut off")


async def test_since_an_unknown_id_is_refused(stores: tuple[SqliteStore, SqliteStore]) -> None:
    chain = Chain(*stores)
    subscription = chain.hub.subscribe(since="0000000000000-nothere")
    with pytest.raises(UnknownAlertId, match="unknown alert id"):
        await subscription.start()


async def test_an_alert_stored_again_is_not_published_again(
        stores: tuple[SqliteStore, SqliteStore]) -> None:
    chain = Chain(*stores)
    subscription = chain.hub.subscribe()
    await chain.publish(alerts(1, 2))
    await chain.publish(alerts(1, 3))  # a restart re-processing events: 1 and 2 again
    assert await take(subscription, 3) == alerts(1, 3)
    await chain.settle()
    assert subscription.pending == 0


async def test_closing_the_hub_ends_subscriptions_after_what_they_hold(
        stores: tuple[SqliteStore, SqliteStore]) -> None:
    chain = Chain(*stores)
    subscription = chain.hub.subscribe()
    await chain.publish(alerts(1, 2))
    await chain.head.drain_and_close()  # closes the hub after the last batch
    assert [alert async for alert in subscription] == alerts(1, 2)
    late = chain.hub.subscribe(since=EARLIEST)
    assert [alert async for alert in late] == alerts(1, 2)  # catch-up still works, then ends
