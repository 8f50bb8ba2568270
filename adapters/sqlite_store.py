"""The durable SQLite store: alerts, margin history, quarantine and level state (SPEC section 4).

One :class:`SqliteStore` owns one connection, opened in WAL mode so that readers such as
``riskmon alerts --db`` never block the daemon's writes: a store that writes owns a thread
with a stdlib ``sqlite3`` connection (:mod:`adapters.sqlite_thread`), and makes every
public call one transaction in one call on that thread; a read-only store reads through
aiosqlite. Every SQLite failure surfaces as :class:`~monitor.core.errors.SinkError` naming what
was being done, never the row contents.

Schema (version 6, see :data:`MIGRATIONS`)::

    alerts          seq INTEGER PRIMARY KEY AUTOINCREMENT   insertion order, never reused
                    id TEXT UNIQUE NOT NULL                 the alert's stable id
                    ts, emitted_ts INTEGER                  event time, emit time (ms)
                    account, kind, level TEXT, from_level TEXT NULL
                    margin_ratio REAL NULL, equity_usd, maint_margin_usd, init_margin_usd REAL
                    inst_id TEXT NULL, mark REAL NULL
                    payload TEXT                            JSON object (orjson)
                    closing_fee_usd REAL                    (v3)
                    indexes (account, seq) and (ts)
    margin_history  (account, ts) PRIMARY KEY, margin_ratio REAL NULL, equity_usd,
                    maint_margin_usd, init_margin_usd REAL, level TEXT; index (ts)
    quarantine      id INTEGER PRIMARY KEY AUTOINCREMENT, recv_ts INTEGER NULL,
                    stored_ts INTEGER, source, reason, raw TEXT; index (stored_ts)
                    sampled INTEGER 0/1 (v4): kept as one of a sample
                    at most ``quarantine_max_rows`` rows, the newest (v4)
    quarantine_counts  reason TEXT PRIMARY KEY (a reason class, monitor.core.quarantine),
                    count INTEGER, first_ts, last_ts INTEGER (stored time, ms)   (v4)
    level_state     account TEXT PRIMARY KEY, level TEXT, updated_ts INTEGER,
                    reminder_due_ts INTEGER NULL, disarmed_rules TEXT (JSON array; v2),
                    pools TEXT (JSON array of [key, level, reminder_due_ts]; v3)
    notifier_cursor notifier TEXT PRIMARY KEY, delivered_seq INTEGER,   (v5)
                    inflight_first_seq, inflight_last_seq INTEGER NULL,
                    inflight_summary INTEGER (0/1), updated_ts INTEGER
    execution_legs  (alert_id, leg) PRIMARY KEY: one order a trigger asks for, its state  (v6)
                    (monitor.core.execution.LegProgress), attempts, fill and last sCode/sMsg
    execution_attempts  client_id TEXT PRIMARY KEY: one order request, stored before it   (v6)
                    is sent, then with the exchange's answer (JSON) and final state
    executor_state  key TEXT PRIMARY KEY, value TEXT: ``cursor``, ``paused``              (v6)

The schema version lives in ``PRAGMA user_version``; :data:`MIGRATIONS` step ``i`` takes a
database from version ``i`` to ``i + 1``, and all pending steps run in one transaction at
:meth:`SqliteStore.open`.
"""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any, Final, Self, TypeVar

import aiosqlite
import orjson

from adapters.sqlite_thread import SqliteThread
from monitor.core.alerts import Alert, alert_from_dict, level_named
from monitor.core.errors import SinkError
from monitor.core.execution import FINAL_STATES, Leg, LegProgress, OrderAttempt
from monitor.core.records import (
    AccountCheckpoint,
    MarginPoint,
    NotifierCursor,
    PoolCheckpoint,
    QuarantineRecord,
    StoredAlert,
)

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 0 -> 1: the initial schema.
    (
        """
        CREATE TABLE alerts (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            ts INTEGER NOT NULL,
            emitted_ts INTEGER NOT NULL,
            account TEXT NOT NULL,
            kind TEXT NOT NULL,
            level TEXT NOT NULL,
            from_level TEXT,
            margin_ratio REAL,
            equity_usd REAL NOT NULL,
            maint_margin_usd REAL NOT NULL,
            init_margin_usd REAL NOT NULL,
            inst_id TEXT,
            mark REAL,
            payload TEXT NOT NULL
        )
        """,
        "CREATE INDEX alerts_account_seq ON alerts (account, seq)",
        "CREATE INDEX alerts_ts ON alerts (ts)",
        # Keyed by (account, ts) so re-processing events after a restart replaces a sample
        # instead of duplicating it.
        """
        CREATE TABLE margin_history (
            account TEXT NOT NULL,
            ts INTEGER NOT NULL,
            margin_ratio REAL,
            equity_usd REAL NOT NULL,
            maint_margin_usd REAL NOT NULL,
            init_margin_usd REAL NOT NULL,
            level TEXT NOT NULL,
            PRIMARY KEY (account, ts)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX margin_history_ts ON margin_history (ts)",
        """
        CREATE TABLE quarantine (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            recv_ts INTEGER,
            stored_ts INTEGER NOT NULL,
            source TEXT NOT NULL,
            reason TEXT NOT NULL,
            raw TEXT NOT NULL
        )
        """,
        "CREATE INDEX quarantine_stored_ts ON quarantine (stored_ts)",
        """
        CREATE TABLE level_state (
            account TEXT PRIMARY KEY,
            level TEXT NOT NULL,
            updated_ts INTEGER NOT NULL
        ) WITHOUT ROWID
        """,
    ),
    # 1 -> 2: the rest of an account's checkpoint (monitor.core.records.AccountCheckpoint).
    (
        "ALTER TABLE level_state ADD COLUMN reminder_due_ts INTEGER",
        "ALTER TABLE level_state ADD COLUMN disarmed_rules TEXT NOT NULL DEFAULT '[]'",
    ),
    # 2 -> 3: the levels of an account's pools (isolated positions, currency pools), and
    # the closing fee beside an alert's maintenance margin (SPEC 1.2).
    (
        "ALTER TABLE level_state ADD COLUMN pools TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE alerts ADD COLUMN closing_fee_usd REAL NOT NULL DEFAULT 0",
    ),
    # 3 -> 4: quarantine without floods (monitor.core.quarantine). Exact counts by reason class
    # beside the (now bounded) rows; the rows of earlier versions are counted by their
    # full reason, which is all they have.
    (
        """
        CREATE TABLE quarantine_counts (
            reason TEXT PRIMARY KEY,
            count INTEGER NOT NULL,
            first_ts INTEGER NOT NULL,
            last_ts INTEGER NOT NULL
        ) WITHOUT ROWID
        """,
        "INSERT INTO quarantine_counts (reason, count, first_ts, last_ts)"
        " SELECT reason, count(*), min(stored_ts), max(stored_ts) FROM quarantine"
        " GROUP BY reason",
        "ALTER TABLE quarantine ADD COLUMN sampled INTEGER NOT NULL DEFAULT 0",
    ),
    # 4 -> 5: each notifier's delivery cursor (adapters/notify,
    # monitor.core.records.NotifierCursor).
    (
        """
        CREATE TABLE notifier_cursor (
            notifier TEXT PRIMARY KEY,
            delivered_seq INTEGER NOT NULL,
            inflight_first_seq INTEGER,
            inflight_last_seq INTEGER,
            inflight_summary INTEGER NOT NULL DEFAULT 0,
            updated_ts INTEGER NOT NULL
        ) WITHOUT ROWID
        """,
    ),
    # 5 -> 6: stop-loss execution (monitor.core.execution, adapters/executor.py).
    (
        """
        CREATE TABLE execution_legs (
            alert_id TEXT NOT NULL,
            leg INTEGER NOT NULL,
            account TEXT NOT NULL,
            source_kind TEXT NOT NULL,
            inst_id TEXT NOT NULL,
            side TEXT NOT NULL,
            pos_side TEXT NOT NULL,
            margin_mode TEXT NOT NULL,
            size REAL NOT NULL,
            state TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            client_id TEXT NOT NULL,
            order_id TEXT NOT NULL,
            order_size REAL NOT NULL,
            filled REAL NOT NULL,
            order_filled REAL NOT NULL,
            avg_price REAL,
            resends INTEGER NOT NULL,
            reuse_id INTEGER NOT NULL,
            first_sent_ts INTEGER,
            s_code TEXT NOT NULL,
            s_msg TEXT NOT NULL,
            created_ts INTEGER NOT NULL,
            updated_ts INTEGER NOT NULL,
            PRIMARY KEY (alert_id, leg)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX execution_legs_state ON execution_legs (state)",
        """
        CREATE TABLE execution_attempts (
            client_id TEXT PRIMARY KEY,
            alert_id TEXT NOT NULL,
            leg INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            account TEXT NOT NULL,
            inst_id TEXT NOT NULL,
            side TEXT NOT NULL,
            size REAL NOT NULL,
            sent_ts INTEGER NOT NULL,
            state TEXT NOT NULL,
            answer TEXT NOT NULL,
            dry_run INTEGER NOT NULL,
            updated_ts INTEGER NOT NULL
        ) WITHOUT ROWID
        """,
        "CREATE INDEX execution_attempts_alert ON execution_attempts (alert_id, leg)",
        """
        CREATE TABLE executor_state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) WITHOUT ROWID
        """,
    ),
)
"""Schema migrations; step ``i`` migrates ``user_version`` ``i`` to ``i + 1``. Append only."""

SCHEMA_VERSION: Final = len(MIGRATIONS)
"""The ``user_version`` of a fully migrated database."""

_OLDEST_SQLITE: Final = (3, 35, 0)
_SYNCHRONOUS_MODES: Final = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
_SYNCING_MODES: Final = frozenset({"FULL", "EXTRA"})
"""The modes whose commits sync the WAL (NORMAL and OFF sync nothing)."""
_MS_PER_DAY: Final = 86_400_000
WAL_RESERVE_BYTES: Final = 16 << 20
"""How long :meth:`WalCheckpointer.reserve` makes the WAL at a start: about 4,000 pages,
a minute of three-page commits at 22 a second."""
_RESERVE_CACHE_PAGES: Final = 16
_T = TypeVar("_T")

_ALERT_COLUMN_NAMES: Final = (
    "id", "ts", "emitted_ts", "account", "kind", "level", "from_level", "margin_ratio",
    "equity_usd", "maint_margin_usd", "init_margin_usd", "inst_id", "mark", "payload",
    "closing_fee_usd",
)
_ALERT_COLUMNS: Final = ", ".join(_ALERT_COLUMN_NAMES)

# SQLite (3.32 and later) binds at most 32,766 parameters per statement.
_ROWS_PER_INSERT: Final = 32_766 // len(_ALERT_COLUMN_NAMES)


class SqliteStore:
    """Alerts, margin history, quarantined input and level state in one SQLite file.

    Create with :meth:`open`, release with :meth:`close`. Calls may come from several tasks:
    they are serialised, so each runs as its own transaction.
    """

    def __init__(self, connection: SqliteThread | aiosqlite.Connection, *, retention_ms: int,
                 quarantine_max_rows: int = 10_000, location: str = "",
                 synchronous: str = "FULL") -> None:
        """Wrap an open connection to a migrated file; use :meth:`open` instead."""
        self._db: SqliteThread | aiosqlite.Connection | None = connection
        self._location = location
        self._synchronous = synchronous
        self._retention_ms = retention_ms
        self._quarantine_max_rows = quarantine_max_rows
        # One connection carries one transaction at a time; without the lock a second task
        # could issue BEGIN while the first is between BEGIN and COMMIT.
        self._lock = asyncio.Lock()
        self._write_lock = _write_lock(location)

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        retention_days: float = 90.0,
        synchronous: str = "FULL",
        quarantine_max_rows: int = 10_000,
        auto_checkpoint: bool = True,
        writable: bool = False,
        read_only: bool = False,
        busy_timeout_s: float = 5.0,
    ) -> Self:
        """Open (creating if needed) the database at ``path`` and migrate it.

        ``path`` must name a file: the store needs WAL journal mode, which in-memory
        databases lack. ``retention_days`` (positive) is how long :meth:`prune` keeps rows;
        ``synchronous`` is SQLite's ``PRAGMA synchronous`` (``OFF``, ``NORMAL``, ``FULL``
        or ``EXTRA``); ``quarantine_max_rows`` (positive) caps the ``quarantine`` table:
        each write deletes the oldest rows beyond it. ``auto_checkpoint=False``: this
        connection's commits never run a WAL checkpoint (``PRAGMA wal_autocheckpoint =
        0``); a :class:`WalCheckpointer` must then run beside it, or the WAL grows.
        ``writable``: prove at once that the file takes writes (one committed write that
        changes nothing), so that a read-only file or file system fails here, with its
        reason, rather than at the first alert.

        ``busy_timeout_s``: how long a statement waits for a lock another process holds
        before it fails with "database is locked" (SQLite's busy handler; sqlite3's
        default, 5 s). Writers of this process take turns without it (:func:`_write_lock`).

        ``read_only``: a store that only reads (``riskmon alerts --db``, the daemon's
        catch-up reads for subscribers). It reads through an aiosqlite connection, and
        its write methods raise SinkError. Otherwise the store owns a
        :class:`~adapters.sqlite_thread.SqliteThread` and makes every call one trip to it.

        Raises :class:`ValueError` for an invalid argument and :class:`SinkError` when the
        file cannot be opened, WAL cannot be enabled, or the database's schema version is
        newer than this code knows.
        """
        mode = synchronous.upper()
        if mode not in _SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS_MODES)}")
        if not (math.isfinite(retention_days) and retention_days > 0):
            raise ValueError("retention_days must be a positive number")
        if quarantine_max_rows < 1:
            raise ValueError("quarantine_max_rows must be a positive integer")
        if not (math.isfinite(busy_timeout_s) and busy_timeout_s >= 0):
            raise ValueError("busy_timeout_s must be a number >= 0")
        if read_only and writable:
            raise ValueError("a read-only store cannot prove the file writable")
        location = os.fspath(path)
        if sqlite3.sqlite_version_info < _OLDEST_SQLITE:
            raise SinkError(f"riskmon needs SQLite {'.'.join(map(str, _OLDEST_SQLITE))} or"
                            f" newer (RETURNING); this Python has {sqlite3.sqlite_version}")
        try:
            owner = await SqliteThread.open(location)
        except sqlite3.Error as e:
            raise SinkError(f"cannot open SQLite database {location!r}: {e}") from e
        try:
            await owner.run(partial(_prepare, location, mode, auto_checkpoint, writable,
                                    round(busy_timeout_s * 1000)))
            connection: SqliteThread | aiosqlite.Connection = owner
            if read_only:
                # The schema is in place (prepared above); from here on, reads only.
                await owner.close()
                connection = await aiosqlite.connect(location, isolation_level=None,
                                                     timeout=busy_timeout_s)
        except sqlite3.Error as e:
            await owner.close()
            raise SinkError(f"cannot prepare SQLite database {location!r}: {e}") from e
        except BaseException:
            await owner.close()
            raise
        return cls(connection, retention_ms=round(retention_days * _MS_PER_DAY),
                   quarantine_max_rows=quarantine_max_rows, location=location,
                   synchronous=mode)

    async def close(self) -> None:
        """Close the connection after any call in progress; closing twice is harmless."""
        async with self._lock:
            db, self._db = self._db, None
            if db is None:
                return
            try:
                await db.close()
            except sqlite3.Error as e:
                raise SinkError(f"closing SQLite database failed: {e}") from e

    async def write_alerts(self, alerts: Sequence[Alert]) -> int:
        """Store ``alerts`` in one transaction, skipping ids already stored.

        Returns how many were newly inserted, so writing the same alerts again returns 0.
        Insertion order (``seq``) follows the order of ``alerts``.
        """
        return len(await self.write_batch(alerts=alerts))

    async def write_quarantine(self, records: Sequence[QuarantineRecord],
                               counts: Mapping[str, int] | None = None) -> None:
        """Store quarantined input with its reason, and add ``counts`` (reason class ->
        bad inputs) to the exact counts, in one transaction (see write_batch)."""
        await self.write_batch(quarantine=records, quarantine_counts=counts or {})

    async def write_history(self, points: Sequence[MarginPoint]) -> None:
        """Store margin history samples in one transaction.

        A sample for an (account, ts) already stored replaces it.
        """
        await self.write_batch(history=points)

    async def save_checkpoints(self, checkpoints: Sequence[AccountCheckpoint]) -> None:
        """Record accounts' checkpoints (insert or update), in one transaction."""
        await self.write_batch(checkpoints=checkpoints)

    async def write_batch(
        self,
        *,
        alerts: Sequence[Alert] = (),
        quarantine: Sequence[QuarantineRecord] = (),
        history: Sequence[MarginPoint] = (),
        checkpoints: Sequence[AccountCheckpoint] = (),
        quarantine_counts: Mapping[str, int] | None = None,
        alert_json: Sequence[bytes] | None = None,
        synced: bool = True,
    ) -> list[StoredAlert]:
        """Store everything in ONE transaction (one commit, one fsync); returns the alerts
        newly inserted, with their ``seq``, in insertion order (an alert whose id was
        already stored is skipped and not returned). ``alert_json``: the alerts' JSON, in
        their order, when the caller has it (a pipeline batch's, monitor.core.batch); the
        returned alerts carry it (else it is encoded here).

        ``synced=False``: the commit does not wait for the disk (this one transaction runs
        with ``synchronous = NORMAL``): it is committed, seen by every connection and kept
        if the process dies, but not yet safe from a power loss until :meth:`sync`, which
        the caller must call next. For what must act on the stored rows before their fsync
        (adapters/sinks.py, SqliteSink); nothing changes when the store's own mode
        syncs no commit.

        The pipeline's unit of durability: the alerts of a batch and the checkpoints they
        moved are stored together or not at all, so a crash between them cannot make a
        restart repeat or lose a transition.

        Quarantine rows get ``stored_ts``, the time :meth:`prune` judges them by: the
        record's receive time when known, else the wall clock at this call (input whose
        receive time is unknown, such as an unparsable replay line, is then kept for the
        full retention from the moment it was quarantined rather than pruned at once).
        Once the table holds more than ``quarantine_max_rows`` rows the oldest go, in the
        same transaction. ``quarantine_counts`` (reason class -> bad inputs) is added to
        ``quarantine_counts``: the producer counts every bad input there, stored or not
        (monitor.core.quarantine), so the rows are a bounded sample and the counts exact.
        """
        counts = dict(quarantine_counts or {})
        if not (alerts or quarantine or history or checkpoints or counts):
            return []
        alert_rows = [_alert_row(alert) for alert in alerts]
        encoded = [alert.to_json() for alert in alerts] if alert_json is None else alert_json
        if len(encoded) != len(alerts):
            raise ValueError(f"{len(alerts)} alerts with {len(encoded)} encodings")
        now_ms = time.time_ns() // 1_000_000
        quarantine_rows = [
            (record.recv_ms, record.recv_ms if record.recv_ms is not None else now_ms,
             record.source, record.reason, record.raw, int(record.sampled))
            for record in quarantine
        ]
        count_rows = [(reason, count, now_ms, now_ms) for reason, count in sorted(counts.items())
                      if count > 0]
        max_rows = self._quarantine_max_rows
        history_rows = [
            (point.account, point.ts, point.margin_ratio, point.equity_usd,
             point.maint_margin_usd, point.init_margin_usd, point.level)
            for point in history
        ]
        checkpoint_rows = [
            (cp.account, cp.level, cp.ts, cp.reminder_due_ms,
             orjson.dumps(list(cp.disarmed_rules)).decode(),
             orjson.dumps([[p.key, p.level, p.reminder_due_ms] for p in cp.pools]).decode())
            for cp in checkpoints
        ]
        parts = [f"{len(rows)} {what}" for rows, what in (
            (alert_rows, "alerts"), (quarantine_rows, "quarantine records"),
            (history_rows, "margin history points"), (checkpoint_rows, "checkpoints"),
            (count_rows, "quarantine counts"),
        ) if rows]
        def write(db: sqlite3.Connection) -> list[StoredAlert]:
            stored: list[StoredAlert] = []
            for start in range(0, len(alert_rows), _ROWS_PER_INSERT):
                chunk = alert_rows[start:start + _ROWS_PER_INSERT]
                # One multi-row statement per chunk: RETURNING reports the rows actually
                # inserted (not those IGNOREd), in no promised order, hence the id.
                values = ", ".join([f"({_marks(len(_ALERT_COLUMN_NAMES))})"] * len(chunk))
                returned = db.execute(
                    f"INSERT OR IGNORE INTO alerts ({_ALERT_COLUMNS}) VALUES {values}"
                    " RETURNING seq, id",
                    [value for row in chunk for value in row],
                ).fetchall()
                seqs = {id_: seq for seq, id_ in returned}
                end = start + _ROWS_PER_INSERT
                stored.extend(StoredAlert(seqs[alert.id], alert, json)
                              for alert, json in zip(alerts[start:end], encoded[start:end],
                                                     strict=True)
                              if seqs.get(alert.id) is not None)
            if quarantine_rows:
                db.executemany(
                    "INSERT INTO quarantine (recv_ts, stored_ts, source, reason, raw, sampled)"
                    f" VALUES ({_marks(6)})",
                    quarantine_rows,
                )
                # Ids only grow (AUTOINCREMENT): at most max_rows of them lie above this.
                db.execute("DELETE FROM quarantine"
                           " WHERE id <= (SELECT max(id) FROM quarantine) - ?", (max_rows,))
            if count_rows:
                db.executemany(
                    "INSERT INTO quarantine_counts (reason, count, first_ts, last_ts)"
                    f" VALUES ({_marks(4)}) ON CONFLICT (reason) DO UPDATE SET"
                    " count = count + excluded.count, last_ts = excluded.last_ts",
                    count_rows,
                )
            if history_rows:
                db.executemany(
                    "INSERT OR REPLACE INTO margin_history (account, ts, margin_ratio,"
                    " equity_usd, maint_margin_usd, init_margin_usd, level)"
                    f" VALUES ({_marks(7)})",
                    history_rows,
                )
            if checkpoint_rows:
                db.executemany(
                    "INSERT INTO level_state (account, level, updated_ts, reminder_due_ts,"
                    " disarmed_rules, pools) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (account)"
                    " DO UPDATE SET level = excluded.level, updated_ts = excluded.updated_ts,"
                    " reminder_due_ts = excluded.reminder_due_ts,"
                    " disarmed_rules = excluded.disarmed_rules, pools = excluded.pools",
                    checkpoint_rows,
                )
            return stored

        stored = await self._transaction(f"writing {', '.join(parts)}", write,
                                         synced=synced)
        # A batch holding the same id twice inserts the first; report it once.
        unique = {entry.seq: entry for entry in stored}
        return sorted(unique.values(), key=lambda entry: entry.seq)

    async def sync(self) -> None:
        """Make the commits made with ``synced=False`` safe from a power loss: fsync the
        WAL, which is what ``synchronous = FULL`` does inside every commit. It runs on the
        store's thread (the next write waits for it) and takes no lock: the file's other
        connections commit meanwhile. Nothing to do when the store's mode syncs no commit.

        Raises SinkError when the fsync fails. Calling again is the only retry there is;
        Linux may then report success for pages a failed fsync dropped, so a failure
        here is worth an operator's look (the sink logs it as a retried write)."""
        if self._synchronous not in _SYNCING_MODES:
            return
        wal = f"{self._location}-wal"
        async with self._connection("syncing the WAL") as db:
            if not isinstance(db, SqliteThread):
                raise SinkError("syncing the WAL failed: the store was opened read-only")
            try:
                await db.run(lambda _: _sync_file(wal))
            except OSError as e:
                raise SinkError(f"syncing the WAL failed: {e.strerror or e}") from e

    async def load_checkpoints(self) -> list[AccountCheckpoint]:
        """Every account's last saved checkpoint, ordered by account name.

        Raises :class:`SinkError` if a stored row is not one this code understands, rather
        than guessing a state the engine would then act on.
        """
        rows = await self._read(
            "loading checkpoints",
            "SELECT account, level, updated_ts, reminder_due_ts, disarmed_rules, pools"
            " FROM level_state ORDER BY account",
        )
        checkpoints: list[AccountCheckpoint] = []
        for account, stored, updated_ts, reminder_due_ts, disarmed, pools_json in rows:
            level = level_named(stored)
            if level is None:
                raise SinkError(f"level_state of account {account!r} holds an unknown level")
            try:
                rules = orjson.loads(disarmed)
            except orjson.JSONDecodeError:
                rules = None
            if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
                raise SinkError(f"level_state of account {account!r} holds unreadable rules")
            checkpoints.append(AccountCheckpoint(account, level, reminder_due_ts,
                                                 tuple(rules), updated_ts,
                                                 _pool_checkpoints(account, pools_json)))
        return checkpoints

    async def prune(self, now_ms: int, *, event_ms: int | None = None) -> int:
        """Delete rows older than the retention window; returns how many were deleted.

        Alerts and history go by event time (``ts``): against ``event_ms``, the newest
        event time the caller has seen (the daemon's: a replay of an old recording keeps
        what it stores), else against ``now_ms``. Quarantine goes by ``stored_ts`` (see
        :meth:`write_quarantine`) and its counts by the last time a reason class was
        counted (``last_ts``), both against ``now_ms``. A row exactly at the cutoff is
        kept. Level state is never pruned: it is needed however old it is.
        """
        cutoff = now_ms - self._retention_ms
        event_cutoff = (now_ms if event_ms is None else event_ms) - self._retention_ms

        def prune(db: sqlite3.Connection) -> int:
            deleted = sum(db.execute(statement, (event_cutoff,)).rowcount for statement in (
                "DELETE FROM alerts WHERE ts < ?",
                "DELETE FROM margin_history WHERE ts < ?",
            ))
            return deleted + sum(db.execute(statement, (cutoff,)).rowcount for statement in (
                "DELETE FROM quarantine WHERE stored_ts < ?",
                "DELETE FROM quarantine_counts WHERE last_ts < ?",
            ))

        return await self._transaction("pruning", prune)

    async def alerts(
        self,
        *,
        account: str | None = None,
        since: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
    ) -> list[Alert]:
        """Stored alerts in insertion order, optionally filtered.

        ``since`` is an alert id: only alerts inserted after it are returned (the alert
        itself is not); an id that is not stored, including one already pruned, raises
        :class:`SinkError`. ``limit`` keeps the first ``limit`` matches, so a caller can page
        forward by passing the last id it received as ``since``.
        """
        after = 0
        if since is not None:
            seq = await self.alert_seq(since)
            if seq is None:
                raise SinkError(f"unknown alert id {since!r}")
            after = seq
        stored = await self.stored_alerts(
            after, accounts=None if account is None else [account],
            kinds=None if kind is None else [kind], limit=limit,
        )
        return [entry.alert for entry in stored]

    async def last_alert_id(self) -> str | None:
        """The id of the alert stored last, or None when none is."""
        rows = await self._read("reading alerts",
                                "SELECT id FROM alerts ORDER BY seq DESC LIMIT 1")
        return str(rows[0][0]) if rows else None

    async def alert_seq(self, alert_id: str) -> int | None:
        """The insertion number of a stored alert, or None if it is not stored."""
        rows = await self._read("reading alerts", "SELECT seq FROM alerts WHERE id = ?",
                                (alert_id,))
        return int(rows[0][0]) if rows else None

    async def stored_alerts(
        self,
        after_seq: int,
        *,
        accounts: Collection[str] | None = None,
        kinds: Collection[str] | None = None,
        levels: Collection[str] | None = None,
        limit: int | None = None,
        from_ts: int | None = None,
        to_ts: int | None = None,
        up_to_seq: int | None = None,
    ) -> list[StoredAlert]:
        """Stored alerts inserted after ``after_seq`` (0: all) and, with ``up_to_seq``, not
        after it, in insertion order, with their ``seq``; each of ``accounts``, ``kinds``
        and ``levels`` (None: any) keeps those whose field is one of the values,
        ``from_ts`` / ``to_ts`` (event time, ms, both included) those of that time.
        ``limit`` keeps the first ``limit``."""
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        conditions = ["seq > ?"]
        parameters: list[Any] = [after_seq]
        if up_to_seq is not None:
            conditions.append("seq <= ?")
            parameters.append(up_to_seq)
        for column, values in (("account", accounts), ("kind", kinds), ("level", levels)):
            if values is not None:
                wanted = sorted(set(values))
                conditions.append(f"{column} IN ({_marks(len(wanted))})")
                parameters.extend(wanted)
        for condition, bound in (("ts >= ?", from_ts), ("ts <= ?", to_ts)):
            if bound is not None:
                conditions.append(condition)
                parameters.append(bound)
        # LIMIT -1 is SQLite's "no limit".
        parameters.append(-1 if limit is None else limit)
        rows = await self._read(
            "reading alerts",
            f"SELECT seq, {_ALERT_COLUMNS} FROM alerts WHERE {' AND '.join(conditions)}"
            " ORDER BY seq LIMIT ?",
            parameters,
        )
        stored = []
        for row in rows:
            alert = _alert_from_row(row[1:])
            stored.append(StoredAlert(row[0], alert, alert.to_json()))
        return stored

    async def margin_history(self, account: str, *, from_ts: int | None = None,
                             to_ts: int | None = None) -> list[MarginPoint]:
        """An account's stored margin history in time order (``from_ts`` / ``to_ts``:
        event time, ms, both included)."""
        conditions = ["account = ?"]
        parameters: list[Any] = [account]
        for condition, bound in (("ts >= ?", from_ts), ("ts <= ?", to_ts)):
            if bound is not None:
                conditions.append(condition)
                parameters.append(bound)
        rows = await self._read(
            "reading margin history",
            "SELECT account, ts, margin_ratio, equity_usd, maint_margin_usd, init_margin_usd,"
            f" level FROM margin_history WHERE {' AND '.join(conditions)} ORDER BY ts",
            parameters)
        return [_margin_point(row) for row in rows]

    async def latest_margin(self) -> list[MarginPoint]:
        """Every account's latest margin history sample, by account name."""
        rows = await self._read(
            "reading margin history",
            "SELECT h.account, h.ts, h.margin_ratio, h.equity_usd, h.maint_margin_usd,"
            " h.init_margin_usd, h.level FROM margin_history h JOIN (SELECT account,"
            " max(ts) AS ts FROM margin_history GROUP BY account) last"
            " ON h.account = last.account AND h.ts = last.ts ORDER BY h.account")
        return [_margin_point(row) for row in rows]

    async def history_accounts(self) -> list[str]:
        """The accounts with stored margin history or alerts, by name."""
        rows = await self._read(
            "reading accounts",
            "SELECT account FROM margin_history UNION SELECT account FROM alerts"
            " ORDER BY account")
        return [str(row[0]) for row in rows]

    async def last_alert_seq(self) -> int:
        """The insertion number of the alert stored last (0 when none is)."""
        rows = await self._read("reading alerts", "SELECT max(seq) FROM alerts")
        return int(rows[0][0] or 0)

    async def notifier_cursors(self) -> dict[str, NotifierCursor]:
        """Every notifier's saved delivery cursor, by notifier name."""
        rows = await self._read(
            "loading notifier cursors",
            "SELECT notifier, delivered_seq, inflight_first_seq, inflight_last_seq,"
            " inflight_summary FROM notifier_cursor",
        )
        return {name: NotifierCursor(name, int(delivered), first, last, bool(summary))
                for name, delivered, first, last, summary in rows}

    async def save_notifier_cursor(self, cursor: NotifierCursor) -> None:
        """Record a notifier's delivery cursor (insert or replace), in one transaction."""
        row = (cursor.notifier, cursor.delivered_seq, cursor.inflight_first_seq,
               cursor.inflight_last_seq, int(cursor.inflight_summary),
               time.time_ns() // 1_000_000)

        def save(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO notifier_cursor (notifier, delivered_seq,"
                       " inflight_first_seq, inflight_last_seq, inflight_summary, updated_ts)"
                       f" VALUES ({_marks(6)})", row)

        await self._transaction("saving a notifier cursor", save)

    # -- execution (monitor.core.execution) ---------------------------------------------------

    async def save_execution(self, legs: Sequence[LegProgress] = (),
                             attempts: Sequence[OrderAttempt] = (),
                             state: Mapping[str, str] | None = None) -> None:
        """Upsert legs and order attempts and set executor state keys, in one transaction
        (the executor stores an attempt before its request goes)."""
        now = time.time_ns() // 1_000_000
        leg_rows = [(p.leg.alert_id, p.leg.index, p.leg.account, p.source_kind,
                     p.leg.inst_id, p.leg.side, p.leg.position_side, p.leg.margin_mode,
                     p.leg.size, p.state, p.attempt, p.client_id, p.order_id, p.order_size,
                     p.filled, p.order_filled, p.average_price, p.resends, int(p.reuse_id),
                     p.first_sent_ms,
                     p.s_code, p.s_msg, p.created_ms, now) for p in legs]
        attempt_rows = [(a.client_id, a.alert_id, a.leg, a.attempt, a.account, a.inst_id,
                         a.side, a.size, a.sent_ms, a.state,
                         orjson.dumps(dict(a.answer), default=_json_default).decode(),
                         int(a.dry_run), now) for a in attempts]

        def save(db: sqlite3.Connection) -> None:
            if leg_rows:
                db.executemany(f"INSERT OR REPLACE INTO execution_legs ({_LEG_COLUMNS})"
                               f" VALUES ({_marks(len(_LEG_COLUMN_NAMES))})", leg_rows)
            if attempt_rows:
                db.executemany(
                    "INSERT OR REPLACE INTO execution_attempts (client_id, alert_id, leg,"
                    " attempt, account, inst_id, side, size, sent_ts, state, answer, dry_run,"
                    f" updated_ts) VALUES ({_marks(13)})", attempt_rows)
            if state:
                db.executemany("INSERT OR REPLACE INTO executor_state (key, value)"
                               " VALUES (?, ?)", list(state.items()))

        await self._transaction("saving execution state", save)

    async def execution_legs(self, *, open_only: bool = False,
                             alert_id: str | None = None) -> list[LegProgress]:
        """Stored legs, oldest trigger first; ``open_only``: those not in a final state."""
        conditions, parameters = [], []
        if open_only:
            conditions.append(f"state NOT IN ({_marks(len(FINAL_STATES))})")
            parameters.extend(sorted(FINAL_STATES))
        if alert_id is not None:
            conditions.append("alert_id = ?")
            parameters.append(alert_id)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = await self._read("reading execution legs",
                                f"SELECT {_LEG_COLUMNS} FROM execution_legs{where}"
                                " ORDER BY created_ts, alert_id, leg", parameters)
        return [_leg_from_row(row) for row in rows]

    async def execution_attempts(self, alert_id: str | None = None) -> list[OrderAttempt]:
        """Stored order attempts (of one trigger, or all), in the order they were sent."""
        where, parameters = ("WHERE alert_id = ?", [alert_id]) if alert_id else ("", [])
        rows = await self._read(
            "reading execution attempts",
            "SELECT client_id, alert_id, leg, attempt, account, inst_id, side, size, sent_ts,"
            f" state, answer, dry_run FROM execution_attempts {where}"
            " ORDER BY sent_ts, alert_id, leg, attempt", parameters)
        return [OrderAttempt(row[0], row[1], int(row[2]), int(row[3]), row[4], row[5],
                             row[6], float(row[7]), int(row[8]), row[9],
                             orjson.loads(row[10]), bool(row[11])) for row in rows]

    async def alert_by_id(self, alert_id: str) -> Alert | None:
        """The stored alert with this id, if any."""
        rows = await self._read("reading alerts",
                                f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE id = ?", (alert_id,))
        return _alert_from_row(rows[0]) if rows else None

    async def executor_state(self) -> dict[str, str]:
        """The executor's saved keys (``cursor``: the last trigger seq taken; ``paused``)."""
        rows = await self._read("reading executor state",
                                "SELECT key, value FROM executor_state")
        return {str(key): str(value) for key, value in rows}

    async def quarantine_count(self) -> int:
        """How many quarantine rows are stored."""
        rows = await self._read("counting quarantine", "SELECT count(*) FROM quarantine")
        return int(rows[0][0])

    async def quarantine_counts(self) -> dict[str, int]:
        """Bad inputs counted, by reason class (every one, stored as a row or not)."""
        rows = await self._read("reading quarantine counts",
                                "SELECT reason, count FROM quarantine_counts ORDER BY reason")
        return {str(reason): int(count) for reason, count in rows}

    @asynccontextmanager
    async def _connection(self, action: str) -> AsyncIterator[SqliteThread | aiosqlite.Connection]:
        """The open connection, held for one call; an SQLite failure inside becomes a
        SinkError naming ``action``."""
        async with self._lock:
            db = self._db
            if db is None:
                raise SinkError(f"{action} failed: the store is closed")
            try:
                yield db
            except sqlite3.Error as e:
                raise SinkError(f"{action} failed: {e}") from e

    async def _transaction(self, action: str, work: Callable[[sqlite3.Connection], _T], *,
                           synced: bool = True) -> _T:
        """``work(connection)`` as one write transaction, rolled back if it raises, in ONE
        call on the store's thread (see :mod:`adapters.sqlite_thread`); ``synced=False``:
        its commit waits for no fsync (:func:`_unsynced`), if the store's mode has any.

        Writers take the write lock up front (``BEGIN IMMEDIATE``) so a busy database fails
        at BEGIN, not halfway through; before that, the in-process write lock of the file
        (:func:`_write_lock`). ``action`` names the operation in a SinkError.
        """
        async with self._connection(action) as db:
            if not isinstance(db, SqliteThread):
                raise SinkError(f"{action} failed: the store was opened read-only")
            job = (partial(_transact, work) if synced or self._synchronous not in _SYNCING_MODES
                   else partial(_unsynced, self._synchronous, work))
            async with self._write_lock:
                return await db.run(job)

    async def _read(self, action: str, sql: str,
                    parameters: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one query (one statement: SQLite reads it in one snapshot)."""
        arguments = tuple(parameters)

        def read(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return db.execute(sql, arguments).fetchall()

        async with self._connection(action) as db:
            if isinstance(db, SqliteThread):
                return await db.run(read)
            return [tuple(row) for row in await db.execute_fetchall(sql, arguments)]


def _prepare(location: str, mode: str, auto_checkpoint: bool, writable: bool,
             busy_timeout_ms: int, db: sqlite3.Connection) -> None:
    """Run on the store's thread at open: refuse a newer schema, enable WAL, set the
    connection's options, migrate, and (``writable``) prove the file takes writes."""
    db.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    # Refuse a newer schema before changing anything in the file, the journal mode
    # included; _migrate checks again under the write lock.
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    _check_version(version, location)
    journal = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(journal).lower() != "wal":
        raise SinkError(f"cannot enable WAL journal mode on {location!r} (got {journal!r})")
    db.execute(f"PRAGMA synchronous = {mode}")
    if not auto_checkpoint:
        db.execute("PRAGMA wal_autocheckpoint = 0")
    if version < SCHEMA_VERSION:
        # Only then: the migration takes the write lock, and a reader opening a database
        # a daemon is writing (riskmon alerts --db) must not wait for it.
        _transact(partial(_migrate, location), db)
    if writable:
        try:
            _transact(_rewrite_version, db)
        except sqlite3.Error as e:
            raise SinkError(f"SQLite database {location!r} cannot be written: {e}") from e


def _transact(work: Callable[[sqlite3.Connection], _T], db: sqlite3.Connection) -> _T:
    """Run on the store's thread: BEGIN IMMEDIATE, ``work``, COMMIT; ROLLBACK if anything
    raised, the COMMIT included (a failed COMMIT can leave the transaction open, and every
    later BEGIN on this connection would then fail)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work(db)
        db.execute("COMMIT")
    except BaseException:
        # SQLite may already have rolled back (after SQLITE_FULL, for one); the original
        # error is the one worth raising.
        with suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    return result


def _unsynced(mode: str, work: Callable[[sqlite3.Connection], _T],
              db: sqlite3.Connection) -> _T:
    """Run on the store's thread: one transaction whose commit waits for no fsync, then
    the connection's own ``mode`` again (SqliteStore.write_batch, ``synced=False``)."""
    db.execute("PRAGMA synchronous = NORMAL")
    try:
        return _transact(work, db)
    finally:
        db.execute(f"PRAGMA synchronous = {mode}")


def _migrate(location: str, connection: sqlite3.Connection) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION`, all pending steps in the caller's
    transaction."""
    # Under BEGIN IMMEDIATE (see _transact), and the version read inside it, so two
    # processes opening the same new file cannot both run the same step.
    version = int(connection.execute("PRAGMA user_version").fetchone()[0])
    _check_version(version, location)
    for step in range(version, SCHEMA_VERSION):
        for statement in MIGRATIONS[step]:
            connection.execute(statement)
        # PRAGMA takes no bound parameters; step + 1 is an int from this code.
        connection.execute(f"PRAGMA user_version = {step + 1}")


def _pool_checkpoints(account: str, stored: str) -> tuple[PoolCheckpoint, ...]:
    """The ``pools`` column of ``level_state``; SinkError unless it is what this code
    writes (a list of ``[key, level, reminder_due_ts]``)."""
    try:
        rows = orjson.loads(stored)
    except orjson.JSONDecodeError:
        rows = None
    pools = []
    for row in rows if isinstance(rows, list) else [None]:
        if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)
                and (row[2] is None or isinstance(row[2], int))):
            raise SinkError(f"level_state of account {account!r} holds unreadable pools")
        level = level_named(row[1])
        if level is None:
            raise SinkError(f"level_state of account {account!r} holds an unknown pool level")
        pools.append(PoolCheckpoint(row[0], level, row[2]))
    return tuple(pools)


class WalCheckpointer:
    """Checkpoints a WAL database from a connection (and thread) of its own, so that no
    commit has to.

    By default SQLite checkpoints inside the commit that takes the WAL past 1,000 pages:
    that commit copies the pages into the database file and fsyncs it, tens of ms during
    which its writer, and every writer queued behind it, waits (the execution bench's
    tail: a trigger's alert commit or order attempt stalled 15-60 ms). The daemon opens
    its connections with ``auto_checkpoint=False`` and runs one of these: every
    ``interval_s`` it makes a ``PASSIVE`` checkpoint, which takes no lock a reader or a
    writer waits for (it copies what no reader still needs; the rest goes next time).
    Once a checkpoint has copied the whole WAL the next writer starts it again from its
    beginning, so the file stays small. A failed checkpoint only logs: the WAL keeps the
    data safe, and the next one tries again.

    What it cannot take away: a checkpoint syncs the database file, and a commit made
    while that sync flushes the file system's journal may wait for it (up to 40 ms on
    this project's ext4 test machine, in ``write`` of the WAL). So checkpoints are rare
    (``storage.checkpoint_interval_s``, 60 s): at 1 s the execution bench's worst case
    was 37-41 ms; with no checkpoint during a run, 4.8 ms.
    """

    def __init__(self, db: aiosqlite.Connection, location: str, interval_s: float,
                 on_error: Callable[[str], None] | None, restart_pages: int) -> None:
        self._db = db
        self._location = location
        self._interval_s = interval_s
        self._restart_pages = restart_pages
        self._on_error = on_error
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.checkpoints = 0
        self.restarts = 0
        self.wal_pages = 0
        """The WAL's length in pages at the last checkpoint (from its result)."""

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *, interval_s: float = 60.0,
                   on_error: Callable[[str], None] | None = None,
                   restart_pages: int = 25_000,
                   busy_timeout_s: float = 5.0) -> WalCheckpointer:
        """Open the checkpoint connection; raises SinkError when the file cannot be.

        ``restart_pages``: a WAL longer than this after a checkpoint is started again from
        its beginning at once (see :meth:`checkpoint`). ``busy_timeout_s``: how long a
        ``RESTART`` checkpoint or :meth:`reserve` waits for a lock another process holds
        (as for :meth:`SqliteStore.open`)."""
        location = os.fspath(path)
        try:
            await asyncio.to_thread(_probe, location)
            db = await aiosqlite.connect(location, isolation_level=None,
                                         timeout=busy_timeout_s)
        except sqlite3.Error as e:
            raise SinkError(f"cannot open SQLite database {location!r}: {e}") from e
        return cls(db, location, interval_s, on_error, restart_pages)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sqlite-checkpoint")

    async def reserve(self, size_bytes: int = WAL_RESERVE_BYTES) -> int:
        """Make the WAL file at least ``size_bytes`` long, changing nothing in the
        database; returns its length. Call it once the schema's store has opened the file
        (the journal mode is WAL); a file in another journal mode is left as it is.

        Why: SQLite deletes the WAL when its last connection closes, so each start of the
        daemon begins with an empty one, and until the first checkpoint lets the writer
        start it again (a minute) every commit lengthens the file. On ext4 a commit that
        lengthens the file syncs the file system's journal too: bare one-row commits with
        ``synchronous=FULL`` took 0.25-0.30 ms at the median growing the WAL, 0.13-0.19 ms
        overwriting it (README, "WAL checkpoints"), and the first alerts after a start are
        often the urgent ones (accounts already in trouble when it came up).

        How: a transaction inserts a zero blob of the missing length into a table it
        creates, with this connection's page cache at 16 pages so that SQLite spills the
        pages into the WAL before the end (as it does for any transaction larger than its
        cache), and then rolls back: the frames are void, nothing reached the database,
        and the file keeps its length; the next writer's frames overwrite them. The file
        is then synced, so that the first commit's sync does not write them out. A failure
        (another process holding the write lock past the busy timeout, say) is reported
        through ``on_error`` and the WAL grows as before: this is an optimisation.
        """
        wal = self._location + "-wal"
        current = await asyncio.to_thread(_size_of, wal)
        if current >= size_bytes:
            return current
        try:
            async with _write_lock(self._location):
                if str(await self._value("PRAGMA journal_mode")).lower() != "wal":
                    return current
                await self._spill_and_roll_back(size_bytes - current)
            return await asyncio.to_thread(_sync_file, wal)
        except (sqlite3.Error, OSError) as e:
            if self._on_error is not None:
                self._on_error(f"WAL reservation failed: {e}")
            return await asyncio.to_thread(_size_of, wal)

    async def _spill_and_roll_back(self, missing_bytes: int) -> None:
        """:meth:`reserve`'s transaction: ``missing_bytes`` of frames into the WAL, void."""
        cache = int(await self._value("PRAGMA cache_size"))
        # The pages still in the cache at the rollback never reach the file.
        blob = missing_bytes + (_RESERVE_CACHE_PAGES + 8) * int(
            await self._value("PRAGMA page_size"))
        await self._db.execute(f"PRAGMA cache_size = {_RESERVE_CACHE_PAGES}")
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            await self._db.execute("CREATE TABLE riskmon_wal_reserve (filler BLOB)")
            await self._db.execute(
                "INSERT INTO riskmon_wal_reserve VALUES (zeroblob(?))", (blob,))
        finally:
            await self._db.execute("ROLLBACK")
            await self._db.execute(f"PRAGMA cache_size = {cache}")

    async def _value(self, sql: str) -> Any:
        """The one value a pragma query answers."""
        return next(iter(await self._db.execute_fetchall(sql)))[0]

    async def checkpoint(self) -> None:
        """One ``PASSIVE`` checkpoint now; raises SinkError.

        A WAL is started again from its beginning by the first writer after a checkpoint
        that copied all of it, unless another connection is reading it just then; under
        steady writes that can keep missing, and the WAL file would keep growing. So a WAL
        still longer than ``restart_pages`` (25,000 pages, about 100 MB) after the passive
        checkpoint gets a ``RESTART`` one: it waits for readers of the old frames (the
        busy handler) and holds writers back while it syncs, once in a long while."""
        await self._pragma("PRAGMA wal_checkpoint(PASSIVE)")
        if self.wal_pages > self._restart_pages:
            await self._pragma("PRAGMA wal_checkpoint(RESTART)")
            self.restarts += 1

    async def _pragma(self, sql: str) -> None:
        try:
            async with self._db.execute(sql) as cursor:
                row = await cursor.fetchone()
        except sqlite3.Error as e:
            raise SinkError(f"WAL checkpoint failed: {e}") from e
        self.checkpoints += 1
        if row is not None:
            self.wal_pages = max(0, int(row[1]))

    async def close(self) -> None:
        """Stop, checkpoint what is left, close the connection; closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            with suppress(SinkError):
                await self.checkpoint()
        await _close_quietly(self._db)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.checkpoint()
            except SinkError as e:
                if self._on_error is not None:
                    self._on_error(str(e))


_WRITE_LOCKS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, weakref.WeakValueDictionary[str, asyncio.Lock]
] = weakref.WeakKeyDictionary()


def _size_of(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def _sync_file(path: str) -> int:
    """Sync the data of the file at ``path`` (fdatasync where there is one: like SQLite's
    own syncs, it skips a change of the modification time alone, which on ext4 would
    commit the file system's journal); its length."""
    fd = os.open(path, os.O_RDONLY)
    try:
        _datasync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


_datasync: Final[Callable[[int], None]] = getattr(os, "fdatasync", os.fsync)


def _write_lock(location: str) -> asyncio.Lock:
    """The write lock every store of this process shares for the file at ``location``
    (per event loop; each store holds it, so it lives as long as one of them does).

    The daemon writes one file through several connections (the alerts, the notifiers'
    cursors, the executor's orders). Two of them writing at once would meet in SQLite's
    busy handler, which waits by sleeping 1, 2, 5, 10, 15... ms between tries: a commit
    behind another could then wait tens of milliseconds for a lock freed after one. Taken
    in turn through this lock, a writer waits exactly as long as the commit before it.
    The busy handler still arbitrates between processes (``riskmon alerts --db``, say).
    """
    loop = asyncio.get_running_loop()
    locks = _WRITE_LOCKS.get(loop)
    if locks is None:
        locks = _WRITE_LOCKS[loop] = weakref.WeakValueDictionary()
    key = os.path.realpath(location) if location else ""
    lock = locks.get(key)
    if lock is None:
        lock = locks[key] = asyncio.Lock()
    return lock


def _rewrite_version(db: sqlite3.Connection) -> None:
    """A write that changes nothing: the schema version, set to what it is."""
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _probe(location: str) -> None:
    """Open and close the database file (creating it if needed); raises sqlite3.Error."""
    sqlite3.connect(location).close()


def _check_version(version: int, location: str) -> None:
    """Raise SinkError unless this code can migrate or use a schema of ``version``."""
    if not 0 <= version <= SCHEMA_VERSION:
        raise SinkError(
            f"SQLite database {location!r} has schema version {version}, but this riskmon"
            f" knows versions up to {SCHEMA_VERSION}; upgrade riskmon to use it"
        )


async def _close_quietly(db: aiosqlite.Connection) -> None:
    """Close a connection whose setup failed, keeping the setup error as the one raised."""
    with suppress(sqlite3.Error):
        await db.close()


def _marks(count: int) -> str:
    """``count`` SQL parameter placeholders."""
    return ", ".join("?" * count)


def _json_default(value: Any) -> Any:
    """Encode the non-dict mappings orjson does not know (a payload is any Mapping)."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


_LEG_COLUMN_NAMES: Final = (
    "alert_id", "leg", "account", "source_kind", "inst_id", "side", "pos_side", "margin_mode",
    "size", "state", "attempt", "client_id", "order_id", "order_size", "filled",
    "order_filled", "avg_price", "resends", "reuse_id", "first_sent_ts", "s_code", "s_msg",
    "created_ts", "updated_ts",
)
_LEG_COLUMNS: Final = ", ".join(_LEG_COLUMN_NAMES)


def _leg_from_row(row: Sequence[Any]) -> LegProgress:
    leg = Leg(row[0], int(row[1]), row[2], row[4], row[5], row[6], row[7], float(row[8]))
    return LegProgress(leg, row[3], int(row[22]), state=row[9], attempt=int(row[10]),
                       client_id=row[11], order_id=row[12], order_size=float(row[13]),
                       filled=float(row[14]), order_filled=float(row[15]),
                       average_price=row[16], resends=int(row[17]), reuse_id=bool(row[18]),
                       first_sent_ms=row[19], s_code=row[20], s_msg=row[21])


def _margin_point(row: Sequence[Any]) -> MarginPoint:
    account, ts, ratio, equity, maint, init, stored = row
    level = level_named(stored)
    if level is None:
        raise SinkError(f"margin history of account {account!r} holds an unknown level")
    return MarginPoint(account, ts, ratio, equity, maint, init, level)


def _alert_row(alert: Alert) -> tuple[Any, ...]:
    """The alert as a row of the ``alerts`` table, in :data:`_ALERT_COLUMNS` order."""
    try:
        payload = orjson.dumps(alert.payload, default=_json_default).decode()
    except orjson.JSONEncodeError as e:
        raise SinkError(f"alert {alert.id}: payload cannot be encoded as JSON") from e
    return (
        alert.id,
        alert.ts,
        alert.emitted_ms,
        alert.account,
        alert.kind,
        alert.level,
        alert.from_level,
        alert.margin_ratio,
        alert.equity_usd,
        alert.maint_margin_usd,
        alert.init_margin_usd,
        alert.inst_id,
        alert.mark,
        payload,
        alert.closing_fee_usd,
    )


def _alert_from_row(row: Sequence[Any]) -> Alert:
    """Rebuild an alert from a row selected with :data:`_ALERT_COLUMNS`."""
    (
        id_,
        ts,
        emitted_ts,
        account,
        kind,
        level,
        from_level,
        margin_ratio,
        equity_usd,
        maint_margin_usd,
        init_margin_usd,
        inst_id,
        mark,
        payload,
        closing_fee_usd,
    ) = row
    try:
        decoded = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise SinkError(f"alert {id_}: stored payload is not valid JSON") from e
    return alert_from_dict(
        {
            "id": id_,
            "ts": ts,
            "emitted_ts": emitted_ts,
            "account": account,
            "kind": kind,
            "level": level,
            "from_level": from_level,
            "margin_ratio": margin_ratio,
            "equity_usd": equity_usd,
            "maint_margin_usd": maint_margin_usd,
            "init_margin_usd": init_margin_usd,
            "inst_id": inst_id,
            "mark": mark,
            "payload": decoded,
            "closing_fee_usd": closing_fee_usd,
        }
    )

