"""Sinks for the pipeline: SQLite (durable) and structured logs."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from adapters.logging import get_logger, log_alert, log_quarantine, log_quarantine_summary
from adapters.sqlite_store import SqliteStore
from monitor.core.alerts import Alert
from monitor.core.batch import Batch
from monitor.core.errors import SinkError

CONNECTION_KINDS = frozenset({"feed_connected", "feed_disconnected"})


class SqliteSink:
    """Stores alerts (idempotently), quarantine (the records marked ``store``, and every
    count), margin history and account checkpoints, a whole batch in one transaction (see
    SqliteStore.write_batch), and tells its observers what it stored.

    ``observers`` are told each stored batch (with its StoredAlerts) as soon as it is
    committed, in the sink's task, before the followers' queues get it: for what must act
    at once on what is stored (the executor hands triggers to its workers; persist before
    act). An observer must not block and must not raise.

    ``urgent``: alerts an observer acts on. A batch holding one is committed without
    waiting for the disk (``synced=False``), handed to the observers, and only then synced
    (:meth:`SqliteStore.sync`): the act overlaps the fsync instead of following it. The
    trigger is committed before the act, so a process that dies after it (``kill -9``)
    finds it at the next start; a power loss in the fsync's 0.2-10 ms can lose it together
    with the record of its orders, and the executor's guards then hold (README, "Stop-loss
    execution"). The followers (log, subscribers, notifiers) get the batch only after the
    sync, as every other batch after its own synced commit: persist before publish is
    unchanged. Without ``urgent`` every commit waits for the disk first.
    """

    name = "sqlite"

    PRUNE_EVERY_S = 3600.0
    PRUNE_RETRY_S = 60.0

    def __init__(self, store: SqliteStore, *, close_store: bool = True,
                 prune: bool = False, observers: Sequence[Callable[[Batch], None]] = (),
                 urgent: Callable[[Alert], bool] | None = None) -> None:
        """``prune``: delete rows past retention once an hour (by the wall clock), between
        writes: the daemon's choice; a replay keeps what it stored. Alerts and history
        are judged by event time (SqliteStore.prune): the newest this sink has stored, so
        nothing is pruned before the first event time is known."""
        self.store = store
        self.observers = list(observers)
        self._urgent = urgent
        self._close_store = close_store
        self._next_prune_s = 0.0 if prune else math.inf
        self._event_ms: int | None = None
        self._unsynced: tuple[Batch, Batch] | None = None
        """A batch committed, handed to the observers and not synced (the sync failed),
        with what it stored: the retry of its write syncs it and passes that on."""
        self._logger = get_logger("riskmon.sink")

    async def write(self, batch: Batch) -> Batch:
        """Store the batch; the observers and then the followers get it with a
        StoredAlert added per newly inserted alert, and without the alerts that were
        stored already (an event re-delivered after a restart re-derives them: they are
        news to nobody).

        A failed sync of an urgent batch fails the write (SinkError), and the pipeline's
        retry of the same batch only syncs again: what was committed is neither written
        twice nor lost to the followers."""
        unsynced = self._unsynced
        if unsynced is not None and unsynced[0] is batch:
            await self.store.sync()
            self._unsynced = None
            return unsynced[1]
        urgent = self._urgent
        early = urgent is not None and any(urgent(alert) for alert in batch.alerts)
        counts: dict[str, int] = {}
        for record in batch.quarantine_counts:
            for reason, count in record.counts:
                counts[reason] = counts.get(reason, 0) + count
        times = [point.ts for point in batch.history]
        times += [checkpoint.ts for checkpoint in batch.checkpoints]
        # Not a connection alert: before the engine has a clock it is dated by its receive
        # time, which is no event time (a replayed recording's are older).
        times += [alert.ts for alert in batch.alerts if alert.kind not in CONNECTION_KINDS]
        newest = max(times, default=None)
        if newest is not None and (self._event_ms is None or newest > self._event_ms):
            self._event_ms = newest
        event_ms = self._event_ms
        stored = await self.store.write_batch(
            alerts=batch.alerts,
            alert_json=batch.alert_json,
            quarantine=[record for record in batch.quarantine if record.store],
            history=batch.history,
            checkpoints=batch.latest_checkpoints(),
            quarantine_counts=counts,
            synced=not early,
        )
        passed = batch.with_stored(stored)
        for observe in self.observers:
            observe(passed)
        if early:
            self._unsynced = (batch, passed)
            await self.store.sync()
            self._unsynced = None
        now = time.time()
        if now >= self._next_prune_s and event_ms is not None:
            self._next_prune_s = now + self.PRUNE_EVERY_S
            try:
                await self.store.prune(int(now * 1000), event_ms=event_ms)
            except SinkError as e:
                # The batch is stored: failing the write now would make the pipeline write
                # it again, and the retry would find its alerts stored and report none as
                # newly inserted to the followers. Try pruning again sooner instead.
                self._next_prune_s = now + self.PRUNE_RETRY_S
                self._logger.warning("prune_failed", error=str(e))
        return passed

    async def close(self) -> None:
        if self._close_store:
            await self.store.close()


class LogSink:
    """Every alert and notice as one structured log event; quarantined input as one
    event each for the records marked ``log`` (the first of a run), and the periodic
    summaries of the rest (monitor.core.quarantine). A batch is logged kind by kind: its
    alerts, quarantined input, notices, then summaries."""

    name = "log"

    def __init__(self) -> None:
        self.logger = get_logger("riskmon.sink")

    async def write(self, batch: Batch) -> None:
        logger = self.logger
        for alert in batch.alerts:
            log_alert(logger, alert)
        for record in batch.quarantine:
            if record.log:
                log_quarantine(logger, record)
        for notice in batch.notices:
            logger.warning("notice", notice=notice.kind, account=notice.account,
                           subject=notice.subject)
        for summary in batch.quarantine_summaries:
            log_quarantine_summary(logger, summary)

    async def close(self) -> None:
        return None
