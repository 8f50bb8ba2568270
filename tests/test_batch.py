"""The pipeline's batch (monitor.core.batch): records by kind, merged in order, each alert's JSON
encoded once, where the batch is made, and the same bytes reaching every follower."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from adapters.notify.core import Message
from adapters.notify.destinations import Webhook
from adapters.notify.text import summary_counts
from adapters.sinks import SqliteSink
from adapters.sqlite_store import SqliteStore
from monitor.core.alerts import Alert
from monitor.core.batch import Batch
from monitor.core.engine import Notice
from monitor.core.errors import SinkError
from monitor.core.records import (
    AccountCheckpoint,
    MarginPoint,
    QuarantineCounts,
    QuarantineRecord,
    QuarantineSummary,
    StoredAlert,
)
from monitor.runtime.pipeline import AlertLinesSink, SinkTask
from monitor.runtime.stream import AlertHub
from tests.builders import make_alert


def checkpoint(account: str, ts: int) -> AccountCheckpoint:
    return AccountCheckpoint(account, "warning", None, (), ts)


def point(account: str, ts: int) -> MarginPoint:
    return MarginPoint(account, ts, 1.2, 1000.0, 800.0, 900.0, "warning")


async def until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110 (polled state another task changes)
            await asyncio.sleep(0.005)


def test_a_batch_encodes_each_alert_as_its_json_and_counts_its_records() -> None:
    alerts = [make_alert(n) for n in range(3)]
    batch = Batch.of(alerts=alerts, history=[point("main", 1)],
                     quarantine=[QuarantineRecord("f:1", None, "frame is not JSON", "{")],
                     quarantine_counts=[QuarantineCounts((("frame is not JSON", 1),))],
                     quarantine_summaries=[QuarantineSummary((), 0, 1, 60.0)],
                     notices=[Notice("unknown_instrument", "main", "X-USDT-SWAP")],
                     checkpoints=[checkpoint("main", 1)])
    assert batch.alerts == tuple(alerts)
    assert batch.alert_json == tuple(orjson.dumps(a.to_dict()) for a in alerts)
    assert len(batch) == 3 + 6  # an alert and its JSON are one record
    assert not Batch() and len(Batch()) == 0
    with pytest.raises(ValueError, match=r"Batch\.of"):
        Batch(alerts=tuple(alerts))


def test_merged_batches_keep_each_kind_in_order_and_every_record() -> None:
    a = [make_alert(n) for n in range(5)]
    first = Batch.of(alerts=a[:2], history=[point("main", 1)],
                     checkpoints=[checkpoint("main", 1)])
    second = Batch.of(alerts=a[2:3])
    third = Batch.of(alerts=a[3:], history=[point("desk", 2), point("main", 3)],
                     checkpoints=[checkpoint("desk", 2), checkpoint("main", 3)])
    merged = Batch.merged([first, Batch(), second, third])
    assert merged.alerts == tuple(a)
    assert merged.alert_json == tuple(alert.to_json() for alert in a)
    assert [(p.account, p.ts) for p in merged.history] == [("main", 1), ("desk", 2),
                                                           ("main", 3)]
    assert len(merged) == len(first) + len(second) + len(third)
    # A later checkpoint of an account supersedes its earlier one.
    assert merged.latest_checkpoints() == [checkpoint("main", 3), checkpoint("desk", 2)]
    assert Batch.merged([second]) is second
    assert Batch.merged([]) == Batch()


def test_the_stored_batch_drops_alerts_stored_before_with_their_json() -> None:
    a = [make_alert(n) for n in range(3)]
    batch = Batch.of(alerts=a, history=[point("main", 1)])
    fresh = [StoredAlert(7, a[1], batch.alert_json[1])]
    passed = batch.with_stored(fresh)
    assert passed.alerts == (a[1],) and passed.alert_json == (a[1].to_json(),)
    assert passed.stored == tuple(fresh) and passed.history == batch.history
    every = [StoredAlert(seq, alert, json)
             for seq, (alert, json) in enumerate(zip(a, batch.alert_json, strict=True))]
    assert batch.with_stored(every).alerts == tuple(a)


class Flaky:
    """A sink that fails until told to work, keeping the batches it wrote."""

    name = "flaky"

    def __init__(self) -> None:
        self.failing = True
        self.batches: list[Batch] = []

    async def write(self, batch: Batch) -> None:
        if self.failing:
            raise SinkError("not now")
        self.batches.append(batch)

    async def close(self) -> None:
        return None


class Keeping:
    name = "keeping"

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    async def write(self, batch: Batch) -> None:
        self.batches.append(batch)

    async def close(self) -> None:
        return None


async def test_batches_held_while_a_sink_fails_are_merged_in_order_and_counted() -> None:
    a = [make_alert(n) for n in range(4)]
    flaky, keeping = Flaky(), Keeping()
    head = SinkTask(flaky, max_attempts=None, followers=[SinkTask(keeping)])
    head.start()
    await head.put(Batch.of(alerts=a[:1], checkpoints=[checkpoint("main", 1)]))
    await until(lambda: head.failing() != [])
    await head.put(Batch.of(alerts=a[1:3], history=[point("main", 2)]))
    await head.put(Batch.of(alerts=a[3:], checkpoints=[checkpoint("main", 3)]))
    assert head.waiting_records == 2 + 3 + 2
    flaky.failing = False
    await until(lambda: len(Batch.merged(keeping.batches).alerts) == 4)
    assert head.waiting_records == 0 and head.failing() == []
    await head.drain_and_close()
    held, merged = flaky.batches
    assert held.alerts == (a[0],)
    assert merged.alerts == (a[1], a[2], a[3])
    assert merged.alert_json == tuple(alert.to_json() for alert in a[1:])
    assert merged.history == (point("main", 2),)
    assert merged.checkpoints == (checkpoint("main", 3),)
    # Passed on as written (the follower's own task may merge them again).
    assert Batch.merged(keeping.batches) == Batch.merged(flaky.batches)


async def test_each_alert_is_encoded_once_for_every_follower(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The alert file, the stream and the webhooks all send an alert's JSON: once encoded
    # by the batch, the same bytes reach each of them (before, each encoded its own).
    alerts = [make_alert(n) for n in range(3)]
    expected_lines = b"".join(orjson.dumps(a.to_dict()) + b"\n" for a in alerts)
    expected_summary = orjson.dumps({"summary": summary_counts(alerts),
                                     "alerts": [a.to_dict() for a in alerts]})
    encoded: list[str] = []
    to_json = Alert.to_json

    def counting(alert: Alert) -> bytes:
        encoded.append(alert.id)
        return to_json(alert)

    monkeypatch.setattr(Alert, "to_json", counting)
    store = await SqliteStore.open(tmp_path / "riskmon.db")
    hub = AlertHub(store)
    subscription = hub.subscribe()
    keeping = Keeping()
    out = tmp_path / "alerts.jsonl"
    head = SinkTask(SqliteSink(store), followers=[
        SinkTask(AlertLinesSink(str(out))), SinkTask(hub), SinkTask(keeping)])
    head.start()
    batch = Batch.of(alerts=alerts)
    await head.put(batch)
    await head.drain_and_close()
    assert encoded == [a.id for a in alerts]

    assert out.read_bytes() == expected_lines
    [passed] = keeping.batches
    assert [s.json for s in passed.stored] == list(batch.alert_json)
    assert all(s.json is json for s, json in zip(passed.stored, batch.alert_json,
                                                  strict=True))
    delivered = [await subscription.next_stored() for _ in alerts]
    assert [s.json if s else None for s in delivered] == list(batch.alert_json)
    webhook = Webhook("http://127.0.0.1:9/hook", None)
    assert webhook.body(Message(passed.stored[:1], "alert")) is batch.alert_json[0]
    assert webhook.body(Message(passed.stored, "summary")) == expected_summary
    assert encoded == [a.id for a in alerts]
