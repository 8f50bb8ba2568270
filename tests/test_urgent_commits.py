"""The SQLite sink's observers and urgent batches (adapters/sinks.py): a batch holding an
alert the executor acts on is committed, handed to the observers, and only then synced
and passed to the followers; a failed sync is retried without writing the batch twice;
and no reader that publishes (a subscriber's catch-up) sees it before its sync.

Real SQLite files; the store's own sync, observed by a subclass that notes each call."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from adapters.sinks import SqliteSink
from adapters.sqlite_store import SqliteStore
from monitor.core.alerts import Alert
from monitor.core.batch import Batch
from monitor.core.errors import SinkError
from monitor.runtime.pipeline import SinkTask
from monitor.runtime.stream import EARLIEST, AlertHub
from tests.builders import make_alert
from tests.test_executor import until
from tests.test_storage_faults import Keeping, quick_store, write_locked


def stored_ids(db: Path) -> list[str]:
    """The alert ids in the file, as another connection reads them."""
    with closing(sqlite3.connect(db)) as connection:
        return [row[0] for row in connection.execute("SELECT id FROM alerts ORDER BY seq")]


class NotingStore(SqliteStore):
    """The real store; each :meth:`sync` notes what the file, the observers and the
    follower held when it began, and the first ``failures`` of them fail."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.db_path: Path | None = None
        self.observed: list[Batch] = []
        self.keeping: Keeping | None = None
        self.syncs: list[tuple[list[str], int, int]] = []
        self.failures = 0

    async def sync(self) -> None:
        assert self.db_path is not None and self.keeping is not None
        self.syncs.append((stored_ids(self.db_path), len(self.observed),
                           len(self.keeping.stored)))
        if self.failures:
            self.failures -= 1
            raise SinkError("syncing the WAL failed: Input/output error")
        await super().sync()


async def chain(db: Path) -> tuple[NotingStore, SinkTask, Keeping]:
    """The daemon's head: the SQLite sink, urgent for account ``exec``, observed, and a
    follower."""
    store = await NotingStore.open(db, writable=True)
    keeping = Keeping()
    store.db_path, store.keeping = db, keeping
    sink = SqliteSink(store, observers=[store.observed.append],
                      urgent=lambda alert: alert.account == "exec")
    head = SinkTask(sink, max_attempts=None, followers=[SinkTask(keeping)])
    head.start()
    return store, head, keeping


def trigger(n: int) -> Alert:
    return make_alert(n, account="exec")


async def test_an_observer_sees_each_stored_batch_once_before_any_follower(
        tmp_path: Path) -> None:
    # The executor's place (persist before act, and ahead of the log and subscribers):
    # nothing while the store fails, then each written batch, before a follower has it.
    db = tmp_path / "daemon.db"
    store = await quick_store(db)
    keeping = Keeping()
    seen: list[tuple[Batch, int]] = []
    sink = SqliteSink(store, observers=[lambda batch: seen.append((batch,
                                                                   len(keeping.stored)))])
    head = SinkTask(sink, max_attempts=None, followers=[SinkTask(keeping)])
    head.start()
    a = [make_alert(n) for n in range(2)]
    with write_locked(db):
        await head.put(Batch.of(alerts=a[:1]))
        await until(lambda: head.failing() != [])
        assert seen == []
    await until(lambda: len(keeping.stored) == 1)
    await head.put(Batch.of(alerts=a[1:]))
    await until(lambda: len(keeping.stored) == 2)
    await head.drain_and_close()
    assert [([s.alert for s in batch.stored], followed) for batch, followed in seen] == [
        ([a[0]], 0), ([a[1]], 1)]


async def test_an_urgent_batch_is_observed_once_committed_and_followed_once_synced(
        tmp_path: Path) -> None:
    db = tmp_path / "daemon.db"
    store, head, keeping = await chain(db)
    plain, urgent = make_alert(1), trigger(2)
    await head.put(Batch.of(alerts=[plain]))
    await until(lambda: len(keeping.stored) == 1)
    assert store.syncs == []  # its commit synced the WAL itself
    await head.put(Batch.of(alerts=[urgent]))
    await until(lambda: len(keeping.stored) == 2)
    # When the sync began the trigger was in the file for every connection and the
    # observer had it; the follower had only the batch before.
    assert store.syncs == [([plain.id, urgent.id], 2, 1)]
    assert [s.alert for s in store.observed[1].stored] == [urgent]
    # The connection's own mode is back for the next commit (FULL is 2).
    assert await store._read("reading the mode", "PRAGMA synchronous") == [(2,)]
    await head.drain_and_close()
    assert [s.alert.id for s in keeping.stored] == stored_ids(db) == [plain.id, urgent.id]


async def test_a_failed_sync_is_retried_and_the_batch_is_neither_written_again_nor_lost(
        tmp_path: Path) -> None:
    db = tmp_path / "daemon.db"
    store, head, keeping = await chain(db)
    store.failures = 2
    alerts = [make_alert(1), trigger(2)]
    await head.put(Batch.of(alerts=alerts))
    await until(lambda: len(keeping.stored) == 2)
    await head.drain_and_close()
    assert len(store.syncs) == 3
    # Observed once, when committed; followed once, with both alerts, after the sync.
    assert [[s.alert for s in batch.stored] for batch in store.observed] == [alerts]
    assert [s.alert for s in keeping.stored] == alerts
    assert stored_ids(db) == [a.id for a in alerts]


async def test_a_store_that_syncs_no_commit_commits_an_urgent_batch_as_any_other(
        tmp_path: Path) -> None:
    # synchronous=NORMAL: no commit waits for the disk, and there is nothing to sync.
    db = tmp_path / "daemon.db"
    store = await SqliteStore.open(db, synchronous="NORMAL")
    [stored] = await store.write_batch(alerts=[trigger(1)], synced=False)
    await store.sync()
    assert await store._read("reading the mode", "PRAGMA synchronous") == [(1,)]
    await store.close()
    assert stored_ids(db) == [stored.alert.id]


async def test_a_subscriber_catching_up_never_reads_past_what_the_hub_published(
        tmp_path: Path) -> None:
    # The sync window: the trigger is in the file, committed, and not yet published.
    db = tmp_path / "daemon.db"
    store = await SqliteStore.open(db)
    published = await store.write_batch(alerts=[make_alert(1), make_alert(2)])
    hub = AlertHub(store, page_size=1, last_id=published[-1].alert.id,
                   last_seq=published[-1].seq)
    [unsynced] = await store.write_batch(alerts=[trigger(3)], synced=False)
    subscription = hub.subscribe(since=EARLIEST)
    received: list[Alert] = []

    async def consume() -> None:
        async for alert in subscription:
            received.append(alert)

    consumer = asyncio.create_task(consume())
    await until(lambda: len(received) == 2)
    await asyncio.sleep(0.1)
    assert received == [p.alert for p in published]
    await store.sync()
    await hub.write(Batch.of(alerts=[unsynced.alert]).with_stored([unsynced]))
    await until(lambda: len(received) == 3)
    await hub.close()
    await consumer
    await store.close()
    assert received == [p.alert for p in published] + [unsynced.alert]
