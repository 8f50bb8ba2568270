"""The daemon loop in process, with a fake feed and a deliberately slow sink: the feed's
deliveries never wait, marks are conflated only under pressure, nothing else is dropped,
and a stop drains everything into the sink."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence

from adapters.okx.decode import OkxDecoder
from monitor.alerts import Alert
from monitor.daemon import Daemon
from monitor.engine import MarginEngine
from monitor.feed import Frame, Inbox, LinkChange
from monitor.pipeline import Record, SinkTask
from tests.builders import make_config

BTC = "BTC-USDT-SWAP"


def mark(price: float, ts: int) -> Frame:
    frame = {"arg": {"channel": "mark-price", "instId": BTC},
             "data": [{"instId": BTC, "instType": "SWAP", "markPx": str(price), "ts": str(ts)}]}
    return Frame(ts, None, frame, None, BTC)


def account_frame(cash: float, ts: int) -> Frame:
    return Frame(ts, "main", {
        "arg": {"channel": "account"}, "eventType": "snapshot", "curPage": 1, "lastPage": True,
        "data": [{"uTime": str(ts), "details": [{"ccy": "USDT", "cashBal": str(cash),
                                                  "uTime": str(ts)}]}]})


def positions_frame(contracts: int, ts: int) -> Frame:
    return Frame(ts, "main", {
        "arg": {"channel": "positions", "instType": "ANY"}, "eventType": "snapshot",
        "curPage": 1, "lastPage": True,
        "data": [{"instType": "SWAP", "instId": BTC, "mgnMode": "cross", "posSide": "net",
                  "pos": str(contracts), "avgPx": "40000", "lever": "10", "uTime": str(ts),
                  "pTime": str(ts)}]})


class BurstFeed:
    """Delivers a scripted burst as fast as it can, then idles; records what it was asked
    to subscribe."""

    def __init__(self, deliver: Inbox, items: list[Frame | LinkChange]) -> None:
        self.inbox = deliver
        self.items = items
        self.wanted: list[list[str]] = []
        self.delivered = asyncio.Event()

    def want(self, instruments: Collection[str], currencies: Collection[str]) -> None:
        self.wanted.append(sorted(instruments))

    async def run(self) -> None:
        for n, item in enumerate(self.items):
            self.inbox.put(item)  # synchronous: the feed never waits on the engine
            if n % 50 == 0:
                await asyncio.sleep(0)
        self.delivered.set()
        await asyncio.Event().wait()


class SlowSink:
    name = "slow"

    def __init__(self) -> None:
        self.records: list[Record] = []

    async def write(self, records: Sequence[Record]) -> None:
        await asyncio.sleep(0.02)
        self.records.extend(records)

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
    daemon = Daemon(engine, OkxDecoder(), feed, inbox, SinkTask(sink, maxsize=1))
    stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))
    await asyncio.wait_for(feed.delivered.wait(), 10)
    stop.set()  # run() applies what is still waiting, then drains the sink
    await asyncio.wait_for(runner, 10)

    assert feed.wanted[-1] == [BTC]
    assert inbox.conflated > 0  # the slow sink made the inbox conflate marks
    # Every account frame was applied: the last cash is the engine's.
    assert engine.accounts["main"].currencies["USDT"].cash == 100.039
    # Everything the engine emitted reached the sink before run() returned.
    alerts = [r for r in sink.records if isinstance(r, Alert)]
    assert len(alerts) == daemon.processor.stats.alerts
    assert alerts[0].kind == "feed_connected"
    assert engine.accounts["main"].level == "deleverage"
