"""The SQLite store against real database files in ``tmp_path``."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from adapters.sqlite_store import MIGRATIONS, SCHEMA_VERSION, SqliteStore, WalCheckpointer
from monitor.core.alerts import Alert, Level
from monitor.core.errors import SinkError
from monitor.core.records import AccountCheckpoint, MarginPoint, PoolCheckpoint, QuarantineRecord
from tests.builders import make_alert
from tests.test_executor import until

BASE_TS = 1_700_000_000_000
DAY_MS = 86_400_000


def checkpoint(account: str, level: Level, ts: int, *, reminder: int | None = None,
               rules: tuple[str, ...] = ()) -> AccountCheckpoint:
    return AccountCheckpoint(account, level, reminder, rules, ts)


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Query the database file directly, outside the store."""
    with closing(sqlite3.connect(path)) as db:
        return db.execute(sql).fetchall()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "riskmon.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(db_path)
    try:
        yield opened
    finally:
        await opened.close()


async def test_writing_the_same_alerts_twice_stores_them_once(
    store: SqliteStore, db_path: Path
) -> None:
    first = [make_alert(1), make_alert(2), make_alert(3)]

    assert await store.write_alerts(first) == 3
    assert await store.write_alerts(first) == 0
    assert await store.write_alerts([make_alert(3), make_alert(4)]) == 1

    assert rows(db_path, "SELECT count(*) FROM alerts") == [(4,)]
    assert await store.alerts() == [*first, make_alert(4)]


async def test_duplicates_inside_one_batch_count_once(store: SqliteStore) -> None:
    assert await store.write_alerts([make_alert(1), make_alert(1)]) == 1
    assert await store.alerts() == [make_alert(1)]


async def test_alerts_come_back_in_insertion_order_not_time_order(store: SqliteStore) -> None:
    written = [make_alert(3), make_alert(1)]
    await store.write_alerts(written)
    await store.write_alerts([make_alert(2)])

    assert [alert.id for alert in await store.alerts()] == [
        make_alert(3).id,
        make_alert(1).id,
        make_alert(2).id,
    ]


async def test_since_returns_only_alerts_inserted_after_the_given_one(
    store: SqliteStore,
) -> None:
    alerts = [make_alert(n) for n in range(1, 6)]
    await store.write_alerts(alerts)

    assert await store.alerts(since=alerts[1].id) == alerts[2:]
    assert await store.alerts(since=alerts[-1].id) == []
    assert await store.alerts(since=alerts[1].id, limit=2) == alerts[2:4]
    assert await store.alerts(since=alerts[3].id, limit=2) == alerts[4:]


async def test_since_an_unknown_id_is_an_error(store: SqliteStore) -> None:
    await store.write_alerts([make_alert(1)])

    with pytest.raises(SinkError, match="unknown alert id 'no-such-id'"):
        await store.alerts(since="no-such-id")


async def test_since_a_pruned_id_is_an_error(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "p.db", retention_days=1)
    try:
        old = make_alert(1, ts=BASE_TS - 2 * DAY_MS)
        await store.write_alerts([old, make_alert(2)])
        await store.prune(BASE_TS)

        with pytest.raises(SinkError, match="unknown alert id"):
            await store.alerts(since=old.id)
    finally:
        await store.close()


async def test_filters_by_account_and_kind(store: SqliteStore) -> None:
    main_level = make_alert(1)
    main_stale = make_alert(2, kind="feed_stale")
    desk_level = make_alert(3, account="desk")
    desk_stale = make_alert(4, account="desk", kind="feed_stale")
    await store.write_alerts([main_level, main_stale, desk_level, desk_stale])

    assert await store.alerts(account="desk") == [desk_level, desk_stale]
    assert await store.alerts(kind="feed_stale") == [main_stale, desk_stale]
    assert await store.alerts(account="main", kind="feed_stale") == [main_stale]
    assert await store.alerts(account="desk", since=main_stale.id) == [desk_level, desk_stale]
    assert await store.alerts(account="nobody") == []
    assert await store.alerts(limit=1) == [main_level]
    assert await store.alerts(limit=0) == []


async def test_negative_limit_is_refused(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="limit"):
        await store.alerts(limit=-1)


async def test_alerts_round_trip_exactly(store: SqliteStore, db_path: Path) -> None:
    no_ratio = Alert(
        id="0001700000000000-feedface",
        ts=BASE_TS,
        emitted_ms=BASE_TS + 3,
        account="main",
        kind="deleverage_plan",
        level="deleverage",
        from_level=None,
        margin_ratio=None,
        equity_usd=0.1 + 0.2,
        maint_margin_usd=0.0,
        init_margin_usd=1e-300,
        inst_id=None,
        mark=None,
        payload={
            "orders": [
                {
                    "inst_id": "BTC-USDT-SWAP",
                    "side": "sell",
                    "size": 12.5,
                    "reduce_only": True,
                    "ord_type": "market",
                }
            ],
            "positions": [{"inst_id": "ETH-USD-SWAP", "upl_usd": -1234.5678901234567}],
            "target_margin_ratio": 1.02,
            "projected_margin_ratio": None,
            "note": "ünïcødé ✓",
            "empty": {},
        },
    )
    full = make_alert(2, margin_ratio=0.8499999999999999, payload={"a": {"b": {"c": [1, 2]}}})
    await store.write_alerts([no_ratio, full])

    stored = await store.alerts()

    assert stored == [no_ratio, full]
    assert [alert.to_dict() for alert in stored] == [no_ratio.to_dict(), full.to_dict()]
    assert stored[0].margin_ratio is None
    assert isinstance(stored[0].ts, int)
    assert rows(db_path, "SELECT margin_ratio, inst_id, mark FROM alerts ORDER BY seq")[0] == (
        None,
        None,
        None,
    )


async def test_payload_that_cannot_be_encoded_stores_nothing(store: SqliteStore) -> None:
    bad = make_alert(2, payload={"levels": {"warning", "normal"}})

    with pytest.raises(SinkError, match=bad.id):
        await store.write_alerts([make_alert(1), bad])

    assert await store.alerts() == []


async def test_wal_mode_and_schema_version(store: SqliteStore, db_path: Path) -> None:
    assert rows(db_path, "PRAGMA journal_mode") == [("wal",)]
    assert rows(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert SCHEMA_VERSION >= 1


async def test_an_empty_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()

    store = await SqliteStore.open(path)
    await store.close()

    tables = {name for (name,) in rows(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"alerts", "margin_history", "quarantine", "level_state"} <= tables
    assert rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


async def test_reopening_keeps_everything(db_path: Path) -> None:
    store = await SqliteStore.open(db_path)
    await store.write_alerts([make_alert(1), make_alert(2)])
    await store.save_checkpoints([checkpoint("main", "warning", BASE_TS)])
    await store.write_quarantine([QuarantineRecord("feed", BASE_TS, "bad json", "{")])
    await store.close()

    reopened = await SqliteStore.open(db_path)
    try:
        assert await reopened.alerts() == [make_alert(1), make_alert(2)]
        assert await reopened.load_checkpoints() == [checkpoint("main", "warning", BASE_TS)]
        assert await reopened.quarantine_count() == 1
        assert await reopened.write_alerts([make_alert(2), make_alert(3)]) == 1
    finally:
        await reopened.close()
    assert rows(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


async def test_a_newer_schema_version_is_refused(db_path: Path) -> None:
    with closing(sqlite3.connect(db_path)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")

    with pytest.raises(SinkError, match=f"schema version {SCHEMA_VERSION + 1}"):
        await SqliteStore.open(db_path)

    assert rows(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]
    assert rows(db_path, "PRAGMA journal_mode") == [("delete",)]
    assert rows(db_path, "SELECT name FROM sqlite_master") == []


async def test_a_missing_directory_is_a_sink_error(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="cannot open"):
        await SqliteStore.open(tmp_path / "no" / "such" / "dir.db")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"synchronous": "SOMETIMES"}, "synchronous"),
        ({"retention_days": 0}, "retention_days"),
        ({"retention_days": float("nan")}, "retention_days"),
        ({"quarantine_max_rows": 0}, "quarantine_max_rows"),
    ],
)
async def test_invalid_open_arguments(
    db_path: Path, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await SqliteStore.open(db_path, **arguments)


async def test_checkpoints_save_load_and_upsert(store: SqliteStore, db_path: Path) -> None:
    assert await store.load_checkpoints() == []

    await store.save_checkpoints([checkpoint("main", "warning", BASE_TS, rules=("guard",)),
                                  checkpoint("desk", "normal", BASE_TS)])
    main = checkpoint("main", "deleverage", BASE_TS + 5, reminder=BASE_TS + 300_005)
    await store.save_checkpoints([main])

    assert await store.load_checkpoints() == [checkpoint("desk", "normal", BASE_TS), main]
    assert rows(db_path, "SELECT account, level, updated_ts, reminder_due_ts, disarmed_rules"
                         " FROM level_state ORDER BY account") == [
        ("desk", "normal", BASE_TS, None, "[]"),
        ("main", "deleverage", BASE_TS + 5, BASE_TS + 300_005, "[]"),
    ]


async def test_pool_levels_round_trip(store: SqliteStore, db_path: Path) -> None:
    pools = (PoolCheckpoint("", "warning", None),
             PoolCheckpoint("isolated:BTC-USDT-SWAP:net", "liquidation", BASE_TS + 60_000))
    saved = AccountCheckpoint("main", "warning", BASE_TS + 60_000, (), BASE_TS, pools)
    await store.save_checkpoints([saved])
    assert await store.load_checkpoints() == [saved]
    assert rows(db_path, "SELECT pools FROM level_state") == [(
        f'[["","warning",null],["isolated:BTC-USDT-SWAP:net","liquidation",{BASE_TS + 60_000}]]',
    )]


@pytest.mark.parametrize("stored", ['{"": "warning"}', '[["", "panic", null]]',
                                    '[["", "warning"]]', "not json"])
async def test_unreadable_pool_levels_are_refused(store: SqliteStore, db_path: Path,
                                                  stored: str) -> None:
    await store.save_checkpoints([checkpoint("main", "warning", BASE_TS)])
    with closing(sqlite3.connect(db_path)) as db, db:
        db.execute("UPDATE level_state SET pools = ?", (stored,))
    with pytest.raises(SinkError, match="'main'"):
        await store.load_checkpoints()


async def test_a_version_2_database_is_migrated_keeping_alerts_and_levels(
        db_path: Path) -> None:
    with closing(sqlite3.connect(db_path)) as db, db:
        for step in MIGRATIONS[:2]:
            for statement in step:
                db.execute(statement)
        db.execute("INSERT INTO level_state VALUES ('main', 'deleverage', 7, 99, '[\"r\"]')")
        db.execute("INSERT INTO alerts (id, ts, emitted_ts, account, kind, level, equity_usd,"
                   " maint_margin_usd, init_margin_usd, payload) VALUES ('a', 1, 2, 'main',"
                   " 'reminder', 'deleverage', 10, 5, 6, '{}')")
        db.execute("PRAGMA user_version = 2")

    store = await SqliteStore.open(db_path)
    try:
        assert await store.load_checkpoints() == [
            AccountCheckpoint("main", "deleverage", 99, ("r",), 7)]
        [alert] = await store.alerts()
        assert alert.id == "a" and alert.closing_fee_usd == 0.0
    finally:
        await store.close()
    assert rows(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


async def test_a_batch_is_one_transaction(store: SqliteStore, db_path: Path) -> None:
    # The checkpoint insert fails after the alerts went in: nothing of the batch may stay.
    with closing(sqlite3.connect(db_path)) as db, db:
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON level_state"
                   " BEGIN SELECT RAISE(ABORT, 'refused'); END")
    alerts = [make_alert(1)]
    checkpoints = [checkpoint("main", "warning", BASE_TS)]

    with pytest.raises(SinkError, match="refused"):
        await store.write_batch(alerts=alerts, checkpoints=checkpoints)

    assert await store.alerts() == []
    with closing(sqlite3.connect(db_path)) as db, db:
        db.execute("DROP TRIGGER refuse")
    assert len(await store.write_batch(alerts=alerts, checkpoints=checkpoints)) == 1
    assert await store.alerts() == [make_alert(1)]
    assert await store.load_checkpoints() == [checkpoint("main", "warning", BASE_TS)]


async def test_a_version_1_database_is_migrated_keeping_its_levels(db_path: Path) -> None:
    with closing(sqlite3.connect(db_path)) as db, db:
        for statement in MIGRATIONS[0]:
            db.execute(statement)
        db.execute("INSERT INTO level_state VALUES ('main', 'warning', 7)")
        db.execute("PRAGMA user_version = 1")

    store = await SqliteStore.open(db_path)
    try:
        assert await store.load_checkpoints() == [checkpoint("main", "warning", 7)]
    finally:
        await store.close()
    assert rows(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


async def test_an_unknown_stored_level_is_refused(store: SqliteStore, db_path: Path) -> None:
    with closing(sqlite3.connect(db_path)) as db, db:
        db.execute("INSERT INTO level_state (account, level, updated_ts)"
                   " VALUES ('main', 'panic', 0)")

    with pytest.raises(SinkError, match="'main'"):
        await store.load_checkpoints()


async def test_margin_history_rows(store: SqliteStore, db_path: Path) -> None:
    await store.write_history(
        [
            MarginPoint("main", BASE_TS, 1.6, 100.0, 62.5, 80.0, "normal"),
            MarginPoint("main", BASE_TS + 1000, None, 100.0, 0.0, 0.0, "normal"),
            MarginPoint("desk", BASE_TS, 1.1, 50.0, 45.0, 48.0, "withdrawal_lock"),
        ]
    )
    # The same (account, ts) again replaces the sample.
    await store.write_history([MarginPoint("main", BASE_TS, 1.4, 90.0, 64.0, 81.0, "warning")])

    assert rows(db_path, "SELECT * FROM margin_history ORDER BY account, ts") == [
        ("desk", BASE_TS, 1.1, 50.0, 45.0, 48.0, "withdrawal_lock"),
        ("main", BASE_TS, 1.4, 90.0, 64.0, 81.0, "warning"),
        ("main", BASE_TS + 1000, None, 100.0, 0.0, 0.0, "normal"),
    ]


async def test_a_failing_batch_is_rolled_back_whole(store: SqliteStore, db_path: Path) -> None:
    good = MarginPoint("main", BASE_TS, 1.6, 100.0, 62.5, 80.0, "normal")
    # SQLite stores NaN as NULL, which the NOT NULL column rejects.
    bad = MarginPoint("main", BASE_TS + 1, 1.6, float("nan"), 62.5, 80.0, "normal")

    with pytest.raises(SinkError, match="writing 2 margin history points failed") as raised:
        await store.write_history([good, bad])

    assert isinstance(raised.value.__cause__, sqlite3.IntegrityError)
    assert rows(db_path, "SELECT count(*) FROM margin_history") == [(0,)]
    await store.write_history([good])
    assert rows(db_path, "SELECT count(*) FROM margin_history") == [(1,)]


async def test_quarantine_rows_keep_reason_and_are_counted(
    store: SqliteStore, db_path: Path
) -> None:
    before_ms = time.time_ns() // 1_000_000
    await store.write_quarantine(
        [
            QuarantineRecord("replay.jsonl:3", BASE_TS, "frame is not JSON", "{oops"),
            QuarantineRecord("replay.jsonl:9", None, "missing recv_ts", '{"frame": {}}'),
        ]
    )
    after_ms = time.time_ns() // 1_000_000

    assert await store.quarantine_count() == 2
    stored = rows(db_path, "SELECT recv_ts, stored_ts, source, reason, raw FROM quarantine")
    assert stored[0] == (BASE_TS, BASE_TS, "replay.jsonl:3", "frame is not JSON", "{oops")
    recv_ts, stored_ts, source, reason, raw = stored[1]
    assert (recv_ts, source, reason, raw) == (
        None,
        "replay.jsonl:9",
        "missing recv_ts",
        '{"frame": {}}',
    )
    assert before_ms <= stored_ts <= after_ms


async def test_prune_removes_old_rows_and_keeps_new_ones(tmp_path: Path) -> None:
    path = tmp_path / "prune.db"
    now = time.time_ns() // 1_000_000
    cutoff = now - DAY_MS
    store = await SqliteStore.open(path, retention_days=1)
    try:
        old = make_alert(1, ts=cutoff - 1)
        at_cutoff = make_alert(2, ts=cutoff)
        recent = make_alert(3, ts=now - 1000)
        await store.write_alerts([old, at_cutoff, recent])
        await store.write_history(
            [
                MarginPoint("main", cutoff - 1, 1.3, 1.0, 1.0, 1.0, "warning"),
                MarginPoint("main", now, 1.3, 1.0, 1.0, 1.0, "warning"),
            ]
        )
        await store.write_quarantine(
            [
                QuarantineRecord("old", cutoff - 1, "bad", "x"),
                QuarantineRecord("new", now, "bad", "y"),
                QuarantineRecord("unknown time", None, "bad", "z"),
            ]
        )
        await store.save_checkpoints([checkpoint("main", "warning", cutoff - DAY_MS)])

        assert await store.prune(now) == 3
        assert await store.prune(now) == 0

        assert await store.alerts() == [at_cutoff, recent]
        assert await store.quarantine_count() == 2
        assert await store.load_checkpoints() == [checkpoint("main", "warning", cutoff - DAY_MS)]
    finally:
        await store.close()
    assert rows(path, "SELECT ts FROM margin_history") == [(now,)]
    assert rows(path, "SELECT source FROM quarantine ORDER BY id") == [("new",), ("unknown time",)]


async def test_concurrent_calls_are_serialised(store: SqliteStore) -> None:
    written = await asyncio.gather(
        *(store.write_alerts([make_alert(n)]) for n in range(20)),
        store.save_checkpoints([checkpoint("main", "warning", BASE_TS)]),
    )

    assert written[:20] == [1] * 20
    assert {alert.id for alert in await store.alerts()} == {make_alert(n).id for n in range(20)}


async def test_a_closed_store_refuses_calls(db_path: Path) -> None:
    store = await SqliteStore.open(db_path)
    await store.close()
    await store.close()

    with pytest.raises(SinkError, match="closed"):
        await store.write_alerts([make_alert(1)])


async def test_failed_open_leaves_no_worker_thread(tmp_path: Path) -> None:
    # A thread left behind by a failed connect could call into a closed event loop later
    # (aiosqlite's did: seen in CI as an unhandled thread exception).
    def workers() -> set[int | None]:
        return {t.ident for t in threading.enumerate()
                if "_connection_worker_thread" in t.name or t.name.startswith("riskmon-sqlite")}

    before = workers()
    with pytest.raises(SinkError, match="cannot open"):
        await SqliteStore.open(tmp_path / "no" / "such" / "dir.db")
    assert workers() - before == set()


async def test_a_cancelled_write_is_stored_whole_or_not_at_all(store: SqliteStore) -> None:
    # A write is one call on the worker thread: cancelling the caller cannot leave a
    # transaction open halfway (the next call would fail at BEGIN) or half a batch stored.
    batch = [make_alert(n) for n in range(50)]
    batch_ids = {alert.id for alert in batch}
    for ticks in range(4):
        task = asyncio.create_task(store.write_batch(
            alerts=batch, checkpoints=[checkpoint("main", "warning", BASE_TS + ticks)]))
        for _ in range(ticks):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

        stored = {alert.id for alert in await store.alerts()}
        assert stored & batch_ids in (set(), batch_ids)
        assert await store.write_alerts([make_alert(100 + ticks)]) == 1
        assert make_alert(100 + ticks).id in {alert.id for alert in await store.alerts()}


async def test_a_read_only_store_reads_the_writers_rows_and_refuses_writes(
    db_path: Path,
) -> None:
    writer = await SqliteStore.open(db_path, writable=True)
    reader = await SqliteStore.open(db_path, read_only=True)
    try:
        await writer.write_batch(alerts=[make_alert(1), make_alert(2)],
                                 checkpoints=[checkpoint("main", "warning", BASE_TS)])

        assert [a.id for a in await reader.alerts()] == [make_alert(1).id, make_alert(2).id]
        assert await reader.last_alert_seq() == 2
        assert [c.level for c in await reader.load_checkpoints()] == ["warning"]
        with pytest.raises(SinkError, match="read-only"):
            await reader.write_alerts([make_alert(3)])
        assert await writer.last_alert_seq() == 2
    finally:
        await reader.close()
        await writer.close()


async def test_a_read_only_store_migrates_a_new_file(db_path: Path) -> None:
    # A reader may be the first to open the file (riskmon alerts --db before the daemon
    # ever ran): it still finds the schema in place.
    reader = await SqliteStore.open(db_path, read_only=True)
    try:
        assert await reader.alerts() == []
        assert await reader.quarantine_count() == 0
    finally:
        await reader.close()
    with pytest.raises(ValueError, match="read-only"):
        await SqliteStore.open(db_path, read_only=True, writable=True)


async def test_quarantine_counts_add_up_and_rows_keep_the_newest(db_path: Path) -> None:
    store = await SqliteStore.open(db_path, quarantine_max_rows=3)
    try:
        for batch in range(3):
            await store.write_quarantine(
                [QuarantineRecord(f"f:{batch}:{n}", None, "frame is not JSON", "x",
                                  sampled=n == 1) for n in range(2)],
                {"frame is not JSON": 1_000, "line has no recv_ts": batch})
        assert await store.quarantine_counts() == {"frame is not JSON": 3_000,
                                                   "line has no recv_ts": 3}
        assert await store.quarantine_count() == 3
    finally:
        await store.close()
    assert rows(db_path, "SELECT source, sampled FROM quarantine ORDER BY id") == [
        ("f:1:1", 1), ("f:2:0", 0), ("f:2:1", 1)]
    # A count of zero adds no row; counts alone are a batch of their own.
    store = await SqliteStore.open(db_path)
    try:
        await store.write_batch(quarantine_counts={"other": 0, "line has no recv_ts": 2})
        assert await store.quarantine_counts() == {"frame is not JSON": 3_000,
                                                   "line has no recv_ts": 5}
    finally:
        await store.close()


async def test_quarantine_counts_are_pruned_by_the_last_time_counted(db_path: Path) -> None:
    store = await SqliteStore.open(db_path, retention_days=1)
    try:
        await store.write_quarantine([], {"frame is not JSON": 4})
        now = time.time_ns() // 1_000_000
        assert await store.prune(now) == 0
        assert await store.prune(now + 2 * DAY_MS) == 1
        assert await store.quarantine_counts() == {}
    finally:
        await store.close()


async def test_a_version_3_database_gets_counts_of_its_quarantine_rows(db_path: Path) -> None:
    with closing(sqlite3.connect(db_path)) as db, db:
        for step in MIGRATIONS[:3]:
            for statement in step:
                db.execute(statement)
        db.executemany("INSERT INTO quarantine (recv_ts, stored_ts, source, reason, raw)"
                       " VALUES (NULL, ?, 's', ?, 'x')",
                       [(5, "frame is not JSON"), (9, "frame is not JSON"), (7, "bad")])
        db.execute("PRAGMA user_version = 3")

    store = await SqliteStore.open(db_path)
    try:
        assert await store.quarantine_counts() == {"bad": 1, "frame is not JSON": 2}
        assert await store.quarantine_count() == 3
    finally:
        await store.close()
    assert rows(db_path, "SELECT reason, count, first_ts, last_ts FROM quarantine_counts"
                         " ORDER BY reason") == [("bad", 1, 7, 7), ("frame is not JSON", 2, 5, 9)]
    assert rows(db_path, "SELECT DISTINCT sampled FROM quarantine") == [(0,)]


async def test_the_daemons_sink_prunes_by_event_time_and_passes_on_only_news(
        store: SqliteStore) -> None:
    # Issue 15: a replay of a recording older than the retention kept nothing once the
    # sink pruned by the wall clock (at its first write, so at every restart).
    from adapters.sinks import SqliteSink
    from monitor.core.batch import Batch

    old = [make_alert(n, ts=BASE_TS + n) for n in range(3)]  # years before the wall clock
    sink = SqliteSink(store, close_store=False, prune=True)
    passed = await sink.write(Batch.of(alerts=old, history=[
        MarginPoint("main", BASE_TS, 1.2, 1.0, 1.0, 1.0, "warning")]))
    assert [r.alert.id for r in passed.stored] == [a.id for a in old]
    assert [a.id for a in await store.alerts()] == [a.id for a in old]
    # The same alerts again (events re-delivered after a restart) and one new: the
    # followers (log, stream, notifiers, executor) get only the new one.
    new = make_alert(9, ts=BASE_TS + 9)
    passed = await sink.write(Batch.of(alerts=[*old, new]))
    assert [r.id for r in passed.alerts] == [new.id]
    assert passed.alert_json == (new.to_json(),)
    assert [r.alert.id for r in passed.stored] == [new.id]
    # Older than the retention by the newest event time stored: pruned (when due).
    sink._next_prune_s = 0.0
    await sink.write(Batch.of(alerts=[make_alert(20, ts=BASE_TS + 100 * DAY_MS)]))
    assert [a.id for a in await store.alerts()] == [
        make_alert(20, ts=BASE_TS + 100 * DAY_MS).id]


async def test_writers_on_one_file_take_turns_instead_of_meeting_the_busy_handler(
        db_path: Path) -> None:
    # The daemon writes one file through several connections (alerts, notifier cursors,
    # executor orders). In one process they take turns on a shared lock: even with
    # SQLite's busy handler switched off, none of them ever finds the file locked (with
    # it, a writer behind another would sleep 1, 2, 5, 10... ms between tries).
    first = await SqliteStore.open(db_path, busy_timeout_s=0)
    second = await SqliteStore.open(db_path, synchronous="NORMAL", busy_timeout_s=0)
    try:

        async def write(store: SqliteStore, start: int) -> None:
            for n in range(start, start + 40):
                await store.write_alerts([make_alert(n)])

        await asyncio.gather(write(first, 0), write(second, 1000))
    finally:
        await first.close()
        await second.close()
    assert rows(db_path, "SELECT count(*) FROM alerts") == [(80,)]


async def wal_pages_after(db_path: Path, *, auto_checkpoint: bool, commits: int) -> int:
    """The WAL's length in pages after ``commits`` one-alert commits, as a checkpoint
    reports it."""
    store = await SqliteStore.open(db_path, synchronous="NORMAL",
                                   auto_checkpoint=auto_checkpoint)
    checkpointer = await WalCheckpointer.open(db_path)
    try:
        for n in range(commits):
            await store.write_alerts([make_alert(n)])
        await checkpointer.checkpoint()
        return checkpointer.wal_pages
    finally:
        await store.close()
        await checkpointer.close()


async def test_commits_leave_checkpoints_to_the_checkpointer(tmp_path: Path) -> None:
    # SQLite checkpoints inside the commit that takes the WAL past 1,000 pages (tens of ms
    # for that writer). With auto_checkpoint=False no commit does: the WAL holds every
    # frame written until the checkpointer's own connection copies it.
    automatic = await wal_pages_after(tmp_path / "auto.db", auto_checkpoint=True, commits=600)
    apart = await wal_pages_after(tmp_path / "apart.db", auto_checkpoint=False, commits=600)
    assert automatic <= 1_200 < apart
    # Once a checkpoint has copied it all, the next writer starts the WAL again.
    path = tmp_path / "apart.db"
    store = await SqliteStore.open(path, auto_checkpoint=False)
    checkpointer = await WalCheckpointer.open(path)
    try:
        lengths = []
        for n in range(1_000, 1_005):
            await store.write_alerts([make_alert(n)])
            await checkpointer.checkpoint()
            lengths.append(checkpointer.wal_pages)
    finally:
        await store.close()
        await checkpointer.close()
    assert max(lengths[1:]) < 20 and checkpointer.restarts == 0


async def test_a_wal_past_the_bound_gets_a_restart_checkpoint(tmp_path: Path) -> None:
    # Writes that keep coming while passive checkpoints run can keep the WAL from being
    # started again (seen with synchronous=NORMAL; timing-dependent, so not staged here):
    # a WAL still longer than restart_pages after a passive checkpoint gets a RESTART one,
    # and the next write starts it from its beginning.
    path = tmp_path / "long.db"
    store = await SqliteStore.open(path, auto_checkpoint=False)
    checkpointer = await WalCheckpointer.open(path, restart_pages=60)
    try:
        for n in range(100):
            await store.write_alerts([make_alert(n)])
        await checkpointer.checkpoint()
        assert checkpointer.restarts == 1
        await store.write_alerts([make_alert(100)])
        await checkpointer.checkpoint()
    finally:
        await store.close()
        await checkpointer.close()
    assert checkpointer.restarts == 1 and checkpointer.wal_pages < 60
    assert rows(path, "SELECT count(*) FROM alerts") == [(101,)]


def _make_sound(path: Path) -> None:
    """Turn the file at ``path`` (the same inode) into an SQLite database."""
    sound = path.with_name("sound.db")
    with closing(sqlite3.connect(sound)) as connection:
        connection.execute("CREATE TABLE t (x)")
    with path.open("r+b") as file:
        file.write(sound.read_bytes())
        file.truncate()


async def test_a_failed_checkpoint_is_reported_and_the_next_one_runs(db_path: Path) -> None:
    await asyncio.to_thread(db_path.write_bytes, b"not a database, not yet" * 100)
    errors: list[str] = []
    checkpointer = await WalCheckpointer.open(db_path, interval_s=0.01, on_error=errors.append)
    checkpointer.start()
    try:
        await until(lambda: errors != [])
        await asyncio.to_thread(_make_sound, db_path)
        await until(lambda: checkpointer.checkpoints >= 1)  # it went on once sound
    finally:
        await checkpointer.close()
    assert errors[0].startswith("WAL checkpoint failed: file is not a database")


def wal_bytes(path: Path) -> int | None:
    """The length of the database's WAL file, None when there is none."""
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else None


async def test_the_wal_is_reserved_at_a_start_and_the_database_left_as_it_was(
        tmp_path: Path) -> None:
    # SQLite deletes the WAL when the last connection closes: a daemon starts with an
    # empty one, and each commit of its first minute would lengthen the file (dearer to
    # sync). reserve() lengthens it once, in a transaction it rolls back.
    path = tmp_path / "reserved.db"
    store = await SqliteStore.open(path, auto_checkpoint=False)
    checkpointer = await WalCheckpointer.open(path)
    try:
        await store.write_alerts([make_alert(n) for n in range(3)])
        before = wal_bytes(path)
        assert before is not None
        length = await checkpointer.reserve(1 << 20)
        assert length == wal_bytes(path)
        assert length >= 1 << 20 > before
        assert await checkpointer.reserve(1 << 20) == length  # long enough: nothing done
        for n in range(3, 40):
            await store.write_alerts([make_alert(n)])
        assert wal_bytes(path) == length  # the commits overwrote the reserved frames
        assert [a.id for a in await store.alerts()] == [
            make_alert(n).id for n in range(40)]
    finally:
        await store.close()
        await checkpointer.close()
    assert rows(path, "SELECT count(*) FROM alerts") == [(40,)]
    assert rows(path, "SELECT count(*) FROM sqlite_master WHERE name LIKE '%reserve%'") == [(0,)]
    assert rows(path, "PRAGMA integrity_check") == [("ok",)]


async def test_a_reservation_another_process_blocks_is_reported_and_changes_nothing(
        tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    store = await SqliteStore.open(path, auto_checkpoint=False)
    errors: list[str] = []
    checkpointer = await WalCheckpointer.open(path, on_error=errors.append,
                                              busy_timeout_s=0.05)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        await store.write_alerts([make_alert(1)])
        before = wal_bytes(path)
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
        assert await checkpointer.reserve(1 << 20) == before
        holder.execute("ROLLBACK")
        await store.write_alerts([make_alert(2)])
    finally:
        holder.close()
        await store.close()
        await checkpointer.close()
    assert errors == ["WAL reservation failed: database is locked"]
    assert rows(path, "SELECT count(*) FROM alerts") == [(2,)]


async def test_a_database_not_in_wal_mode_gets_no_reservation(tmp_path: Path) -> None:
    path = tmp_path / "rollback-journal.db"
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE t (x)")
    errors: list[str] = []
    checkpointer = await WalCheckpointer.open(path, on_error=errors.append)
    try:
        assert await checkpointer.reserve(1 << 20) == 0
    finally:
        await checkpointer.close()
    assert errors == []  # left alone, not tried (the missing WAL cannot be synced)
    assert rows(path, "PRAGMA journal_mode") == [("delete",)]
    assert wal_bytes(path) is None
