"""Sinks for the pipeline: SQLite (durable) and structured logs."""

from __future__ import annotations

import math
import time

from adapters.logging import get_logger, log_alert, log_quarantine, log_quarantine_summary
from adapters.sqlite_store import SqliteStore
from monitor.core.batch import Batch
from monitor.core.errors import SinkError

CONNECTION_KINDS = frozenset({"feed_connected", "feed_disconnected"})


class SqliteSink:
    """Stores alerts (idempotently), quarantine (the records marked ``store``, and every
    count), margin history and account checkpoints, a whole batch in one transaction (see
    SqliteStore.write_batch)."""

    name = "sqlite"

    PRUNE_EVERY_S = 3600.0
    PRUNE_RETRY_S = 60.0

    def __init__(self, store: SqliteStore, *, close_store: bool = True,
                 prune: bool = False) -> None:
        """``prune``: delete rows past retention once an hour (by the wall clock), between
        writes: the daemon's choice; a replay keeps what it stored. Alerts and history
        are judged by event time (SqliteStore.prune): the newest this sink has stored, so
        nothing is pruned before the first event time is known."""
        self.store = store
        self._close_store = close_store
        self._next_prune_s = 0.0 if prune else math.inf
        self._event_ms: int | None = None
        self._logger = get_logger("riskmon.sink")

    async def write(self, batch: Batch) -> Batch:
        """Store the batch; the followers get it with a StoredAlert added per newly
        inserted alert, and without the alerts that were stored already (an event
        re-delivered after a restart re-derives them: they are news to nobody)."""
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
        )
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
        return batch.with_stored(stored)

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
