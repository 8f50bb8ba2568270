"""Sinks for the pipeline: SQLite (durable) and structured logs."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from adapters.logging import get_logger, log_alert, log_quarantine, log_quarantine_summary
from adapters.sqlite_store import SqliteStore
from monitor.alerts import Alert
from monitor.engine import Notice
from monitor.errors import SinkError
from monitor.pipeline import Record
from monitor.records import (
    AccountCheckpoint,
    MarginPoint,
    QuarantineCounts,
    QuarantineRecord,
    QuarantineSummary,
)

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

    async def write(self, records: Sequence[Record]) -> list[Record]:
        """Store the batch; the followers get it with a StoredAlert added per newly
        inserted alert, and without the alerts that were stored already (an event
        re-delivered after a restart re-derives them: they are news to nobody)."""
        # A checkpoint later in the batch supersedes an earlier one of the same account.
        checkpoints = {r.account: r for r in records if isinstance(r, AccountCheckpoint)}
        counts: dict[str, int] = {}
        event_ms = self._event_ms
        for record in records:
            if isinstance(record, QuarantineCounts):
                for reason, count in record.counts:
                    counts[reason] = counts.get(reason, 0) + count
            elif (isinstance(record, MarginPoint | AccountCheckpoint)
                  or (isinstance(record, Alert) and record.kind not in CONNECTION_KINDS)) and (
                    event_ms is None or record.ts > event_ms):
                # Not a connection alert: before the engine has a clock it is dated by its
                # receive time, which is no event time (a replayed recording's are older).
                event_ms = record.ts
        self._event_ms = event_ms
        alerts = [r for r in records if isinstance(r, Alert)]
        stored = await self.store.write_batch(
            alerts=alerts,
            quarantine=[r for r in records if isinstance(r, QuarantineRecord) and r.store],
            history=[r for r in records if isinstance(r, MarginPoint)],
            checkpoints=list(checkpoints.values()),
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
        if len(stored) == len(alerts):
            return [*records, *stored]
        fresh = {entry.alert.id for entry in stored}
        return [*(r for r in records if not isinstance(r, Alert) or r.id in fresh), *stored]

    async def close(self) -> None:
        if self._close_store:
            await self.store.close()


class LogSink:
    """Every alert and notice as one structured log event; quarantined input as one
    event each for the records marked ``log`` (the first of a run), and the periodic
    summaries of the rest (monitor.quarantine)."""

    name = "log"

    def __init__(self) -> None:
        self.logger = get_logger("riskmon.sink")

    async def write(self, records: Sequence[Record]) -> None:
        for record in records:
            if isinstance(record, Alert):
                log_alert(self.logger, record)
            elif isinstance(record, QuarantineRecord):
                if record.log:
                    log_quarantine(self.logger, record)
            elif isinstance(record, QuarantineSummary):
                log_quarantine_summary(self.logger, record)
            elif isinstance(record, Notice):
                self.logger.warning(
                    "notice", notice=record.kind, account=record.account, subject=record.subject
                )

    async def close(self) -> None:
        return None
