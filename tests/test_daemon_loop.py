"""The daemon loop in process, with a fake feed and a deliberately slow sink: the feed's
deliveries never wait, marks are conflated only under pressure (and never parsed then),
nothing else is dropped, text that is not JSON is quarantined, and a stop drains everything
into the sink."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping
from typing import Any

import orjson

from adapters.okx.decode import OkxDecoder
from monitor.core.batch import Batch
from monitor.core.engine import MarginEngine
from monitor.core.events import Event
from monitor.runtime.daemon import Daemon, Lane
from monitor.runtime.feed import Frame, Inbox, LinkChange, LinkStats
from monitor.runtime.pipeline import SinkTask
from tests.builders import make_config

BTC = "BTC-USDT-SWAP"


def text(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


def mark(price: float, ts: int) -> Frame:
    frame = {"arg": {"channel": "mark-price", "instId": BTC},
             "data": [{"instId": BTC, "instType": "SWAP", "markPx": str(price), "ts": str(ts)}]}
    return Frame(ts, None, text(frame), BTC)


def account_frame(cash: float, ts: int) -> Frame:
    return Frame(ts, "main", text({
        "arg": {"channel": "account"}, "eventType": "snapshot", "curPage": 1, "lastPage": True,
        "data": [{"uTime": str(ts), "details": [{"ccy": "USDT", "cashBal": str(cash),
                                                  "uTime": str(ts)}]}]}))


def positions_frame(contracts: int, ts: int) -> Frame:
    return Frame(ts, "main", text({
        "arg": {"channel": "positions", "instType": "ANY"}, "eventType": "snapshot",
        "curPage": 1, "lastPage": True,
        "data": [{"instType": "SWAP", "instId": BTC, "mgnMode": "cross", "posSide": "net",
                  "pos": str(contracts), "avgPx": "40000", "lever": "10", "uTime": str(ts),
                  "pTime": str(ts)}]}))


class BurstFeed:
    """Delivers a scripted burst as fast as it can, then idles; records what it was asked
    to subscribe."""

    def __init__(self, deliver: Inbox, items: list[Frame | LinkChange]) -> None:
        self.inbox = deliver
        self.items = items
        self.wanted: list[list[str]] = []
        self.delivered = asyncio.Event()

    def want(self, instruments: Collection[str], currencies: Collection[str],
             borrowed: Collection[str]) -> None:
        self.wanted.append(sorted(instruments))

    def link_stats(self) -> Mapping[str, LinkStats]:
        return {"public": LinkStats(), "private:main": LinkStats()}

    async def run(self) -> None:
        for n, item in enumerate(self.items):
            self.inbox.put(item)  # synchronous: the feed never waits on the engine
            if n % 50 == 0:
                await asyncio.sleep(0)
        self.delivered.set()
        await asyncio.Event().wait()


class CountingDecoder:
    """The OKX decoder, counting the messages it was given (it parses each one)."""

    def __init__(self) -> None:
        self.decoder = OkxDecoder()
        self.messages = 0

    def decode_message(self, text: str, account: str | None, recv_ms: Any) -> list[Event]:
        self.messages += 1
        return self.decoder.decode_message(text, account, recv_ms)

    def decode_rest(self, path: str, body: Any, account: str | None,
                    recv_ms: Any) -> list[Event]:
        return self.decoder.decode_rest(path, body, account, recv_ms)


class SlowSink:
    name = "slow"

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    async def write(self, batch: Batch) -> None:
        await asyncio.sleep(0.02)
        self.batches.append(batch)

    async def close(self) -> None:
        return None


async def test_a_slow_sink_conflates_marks_and_loses_nothing_else() -> None:
    engine = MarginEngine(make_config())
    inbox = Inbox(conflate_after=20)
    items: list[Frame | LinkChange] = [LinkChange(1, "main", True, "subscribed"),
                                       account_frame(100, 1_000), positions_frame(10, 1_000)]
    ts = 1_000
    for cycle in range(40):
        for price in (39_300, 39_150):  # normal, then deleverage: two alerts a cycle
            for _ in range(25):
                ts += 10
                items.append(mark(price, ts))
        items.append(account_frame(100 + cycle / 1000, ts))  # never conflated
    feed = BurstFeed(inbox, items)
    sink = SlowSink()
    decoder = CountingDecoder()
    daemon = Daemon([Lane(engine, decoder, feed, inbox)], SinkTask(sink, maxsize=1))
    stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))
    await asyncio.wait_for(feed.delivered.wait(), 10)
    stop.set()  # run() applies what is still waiting, then drains the sink
    await asyncio.wait_for(runner, 10)

    assert feed.wanted[-1] == [BTC]
    assert inbox.conflated > 0  # the slow sink made the inbox conflate marks
    # A conflated mark was never parsed: the engine task parses only what it takes.
    frames = sum(isinstance(item, Frame) for item in items)
    assert decoder.messages == frames - inbox.conflated
    # Every account frame was applied: the last cash is the engine's.
    assert engine.accounts["main"].currencies["USDT"].cash == 100.039
    # Everything the engine emitted reached the sink before run() returned.
    alerts = Batch.merged(sink.batches).alerts
    assert len(alerts) == daemon.stats.alerts
    assert alerts[0].kind == "feed_connected"
    assert engine.level("main") == "deleverage"


async def test_text_that_is_not_json_is_quarantined_whole_and_the_stream_goes_on() -> None:
    engine = MarginEngine(make_config())
    inbox = Inbox()
    truncated = text({"arg": {"channel": "orders"}, "data": []})[:20]
    # Shaped like a mark-price push, so it carries a conflation key, but not JSON.
    shaped = '{"arg":{"channel":"mark-price","instId":"' + BTC + '"},"data":[{oops}]}'
    items: list[Frame | LinkChange] = [
        account_frame(100, 1_000), positions_frame(10, 1_000),
        Frame(1_001, "main", truncated), Frame(1_002, None, shaped, BTC), mark(39_300, 1_003)]
    feed = BurstFeed(inbox, items)
    sink = SlowSink()
    daemon = Daemon([Lane(engine, OkxDecoder(), feed, inbox)], SinkTask(sink))
    stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))
    await asyncio.wait_for(feed.delivered.wait(), 10)
    stop.set()
    await asyncio.wait_for(runner, 10)

    quarantined = Batch.merged(sink.batches).quarantine
    assert [(r.source, r.recv_ms, r.reason, r.raw) for r in quarantined] == [
        ("feed:private:main", 1_001, "frame is not JSON", truncated),
        ("feed:public", 1_002, "frame is not JSON", shaped)]
    assert engine.marks[BTC] == 39_300  # the mark after them was applied


class InterestFeed:
    """Records every ``want`` call; delivers nothing by itself."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str], list[str]]] = []

    def want(self, instruments: Collection[str], currencies: Collection[str],
             borrowed: Collection[str]) -> None:
        self.calls.append((sorted(instruments), sorted(currencies), sorted(borrowed)))

    def link_stats(self) -> Mapping[str, LinkStats]:
        return {}

    async def run(self) -> None:
        await asyncio.Event().wait()


async def test_the_feed_is_told_of_a_new_debt_and_of_its_repayment() -> None:
    # A debt need not change what is in use (USDT is held before and after); the engine's
    # interest version moves with the currencies borrowed, so the feed hears of it at once
    # (and loads their borrowing tiers), and of nothing while the debt merely changes.
    engine = MarginEngine(make_config())
    inbox = Inbox()
    feed = InterestFeed()
    daemon = Daemon([Lane(engine, OkxDecoder(), feed, inbox)], SinkTask(SlowSink()))
    stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))
    try:
        inbox.put(account_frame(100, 1_000))
        await _until(lambda: bool(feed.calls) and feed.calls[-1][1] == ["USDT"])
        inbox.put(account_frame(-50, 1_100))
        await _until(lambda: feed.calls[-1][2] == ["USDT"])
        calls = len(feed.calls)
        inbox.put(account_frame(-60, 1_200))  # still owed: nothing new to want
        inbox.put(account_frame(-70, 1_300))
        await _until(lambda: engine.accounts["main"].currencies["USDT"].cash == -70)
        assert len(feed.calls) == calls
        inbox.put(account_frame(10, 1_400))  # repaid
        await _until(lambda: feed.calls[-1][2] == [])
    finally:
        stop.set()
        await asyncio.wait_for(runner, 10)
    assert feed.calls[-1] == ([], ["USDT"], [])


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)
