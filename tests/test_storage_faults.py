"""Storage faults (issue 15).

At start: ``riskmon run`` and ``riskmon replay --db`` as real subprocesses against a
database file that is corrupt, from a newer riskmon, locked by another process or
read-only. Each ends at once with exit code 1 and a ``storage error`` line naming the file
and SQLite's reason, before any feed connection is made (the configured port has nothing
listening: a daemon that got that far would keep reconnecting instead of exiting), and the
file is left as it was.

While running: a real SQLite file whose write lock another connection or process holds
(the fault SQLite reports as ``database is locked``). The daemon's sink holds what it
cannot write, says so, and writes all of it, in order and once, when the lock goes.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path

import pytest

from adapters.sinks import SqliteSink
from adapters.sqlite_store import SCHEMA_VERSION, SqliteStore
from monitor.core.batch import Batch
from monitor.core.errors import SinkError
from monitor.core.records import StoredAlert
from monitor.runtime.pipeline import SinkTask
from tests.builders import make_alert
from tests.http_fakes import FakeHttpServer, Received
from tests.live_harness import (
    FEED_KINDS,
    LIVE_ENV,
    ROOT,
    STORY,
    delivered_when_done,
    http_get,
    live_config,
    metric_samples,
    running,
    stored_alerts,
    wait_quiet,
)
from tests.test_executor import until

UNUSED_PORT = 9  # discard: nothing listens on loopback there


def riskmon(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitor", *args], cwd=ROOT, text=True,
                          capture_output=True, env={**LIVE_ENV, "PATH": "/usr/bin:/bin"},
                          timeout=timeout, stdin=subprocess.DEVNULL)


def run_daemon(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return riskmon("run", "--config", str(live_config(tmp_path, UNUSED_PORT)))


def replay_into(db: Path) -> subprocess.CompletedProcess[str]:
    return riskmon("replay", str(STORY), "--config", str(ROOT / "examples" / "riskmon.toml"),
                   "--db", str(db))


def storage_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    [line] = [line for line in result.stderr.splitlines()
              if line.startswith("riskmon: storage error: ")]
    return line


@contextmanager
def locked_by_another_process(db: Path, *statements: str) -> Iterator[None]:
    """Another process runs ``statements`` on ``db`` (taking a lock) and holds what they
    took until the block ends, then rolls back."""
    script = "".join([
        "import sqlite3, sys\n",
        f"c = sqlite3.connect({str(db)!r}, isolation_level=None, timeout=30)\n",
        *(f"c.execute({statement!r})\n" for statement in statements),
        "print('held', flush=True)\n",
        "sys.stdin.read()\n",
        "c.execute('ROLLBACK')\n"])
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.communicate("", timeout=30)


def test_a_corrupt_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "daemon.db"
    garbage = b"this is not an SQLite database " * 200
    db.write_bytes(garbage)
    for result in (run_daemon(tmp_path), replay_into(db)):
        line = storage_error(result)
        assert str(db) in line and "file is not a database" in line
    assert db.read_bytes() == garbage


def test_a_schema_from_a_newer_riskmon_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "daemon.db"
    with closing(sqlite3.connect(db)) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    for result in (run_daemon(tmp_path), replay_into(db)):
        line = storage_error(result)
        assert f"schema version {SCHEMA_VERSION + 1}" in line and "upgrade riskmon" in line
    with closing(sqlite3.connect(db)) as connection:
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("delete",)


def test_a_database_another_process_holds_locked_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "daemon.db"
    with locked_by_another_process(db, "PRAGMA locking_mode = EXCLUSIVE", "BEGIN EXCLUSIVE",
                                   "CREATE TABLE held (x)"):
        line = storage_error(run_daemon(tmp_path))
        assert str(db) in line and "database is locked" in line


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` may not be written, even by root (the immutable attribute; chmod does not
    stop root). Skips where the file system or the user cannot set it."""
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("chattr is not installed: cannot make a file read-only for root")
    made = subprocess.run([chattr, "+i", str(path)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot set the immutable attribute here: {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


def test_a_read_only_database_is_refused_at_start_not_at_the_first_alert(
        tmp_path: Path) -> None:
    db = tmp_path / "daemon.db"
    first = replay_into(db)  # a current database, with the story's alerts
    assert first.returncode == 0, first.stderr[-2000:]
    with closing(sqlite3.connect(db)) as connection:
        stored = connection.execute("SELECT count(*) FROM alerts").fetchone()
    before = db.read_bytes()
    with read_only(db):
        for result in (run_daemon(tmp_path), replay_into(db)):
            line = storage_error(result)
            assert f"SQLite database {str(db)!r} cannot be written" in line
            assert "readonly database" in line
    assert db.read_bytes() == before
    with closing(sqlite3.connect(db)) as connection:
        assert connection.execute("SELECT count(*) FROM alerts").fetchone() == stored


# -- while running: the daemon's SQLite sink holds what it cannot write -------------------


class Keeping:
    """A follower that keeps what it is passed."""

    name = "keeping"

    def __init__(self) -> None:
        self.stored: list[StoredAlert] = []

    async def write(self, batch: Batch) -> None:
        self.stored += batch.stored

    async def close(self) -> None:
        return None


@contextmanager
def write_locked(db: Path) -> Iterator[None]:
    """Another connection holds the database's write lock (as ``riskmon replay --db`` on
    the same file, or a backup tool, would) until the block ends."""
    with closing(sqlite3.connect(db, isolation_level=None)) as holder:
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")


async def quick_store(db: Path) -> SqliteStore:
    """The daemon's store, giving up on a held lock after 50 ms instead of 5 s."""
    return await SqliteStore.open(db, writable=True, busy_timeout_s=0.05)


async def test_alerts_wait_in_memory_through_a_storage_fault_and_are_all_stored(
        tmp_path: Path) -> None:
    db = tmp_path / "daemon.db"
    store = await quick_store(db)
    keeping = Keeping()
    head = SinkTask(SqliteSink(store), max_attempts=None, followers=[SinkTask(keeping)])
    head.start()
    await head.put(Batch.of(alerts=[make_alert(0)]))
    await until(lambda: len(keeping.stored) == 1)
    with write_locked(db):
        for n in range(1, 31):
            await head.put(Batch.of(alerts=[make_alert(n)]))
            await asyncio.sleep(0.001)
        await until(lambda: head.failing() != [])
        [(sink, _, error)] = head.failing()
        assert sink == "sqlite" and "database is locked" in error
        assert head.waiting_records == 30
        await asyncio.sleep(0.3)  # retries go on; nothing reaches the follower meanwhile
        assert len(keeping.stored) == 1
    await until(lambda: head.failing() == [] and len(keeping.stored) == 31)
    await head.drain_and_close()
    ids = [make_alert(n).id for n in range(31)]
    with closing(sqlite3.connect(db)) as connection:
        assert [row[0] for row in connection.execute("SELECT id FROM alerts ORDER BY seq")] == ids
    assert [r.alert.id for r in keeping.stored] == ids


async def test_stopping_during_a_storage_fault_says_what_was_not_written(
        tmp_path: Path) -> None:
    db = tmp_path / "daemon.db"
    store = await quick_store(db)
    head = SinkTask(SqliteSink(store), max_attempts=None)
    head.start()
    with write_locked(db):
        await head.put(Batch.of(alerts=[make_alert(1), make_alert(2)]))
        await until(lambda: head.failing() != [])
        with pytest.raises(SinkError, match="stopping: 2 records not written"):
            await head.drain_and_close(grace_s=0.2)


def test_the_daemon_holds_alerts_through_a_locked_database_and_loses_none(
        tmp_path: Path) -> None:
    # The real daemon against the real replay server; another process holds the
    # database's write lock for over 30 s, from while alerts are produced. /healthz is
    # degraded (sink_failing) meanwhile; afterwards the database equals the offline
    # replay's.
    with running(["replay-server", str(STORY), "--port", "0", "--speed", "50"]) as server:
        port = server.wait_status("listening")["port"]
        config = live_config(tmp_path, port)
        db = tmp_path / "daemon.db"
        with running(["run", "--config", str(config)], env=LIVE_ENV) as daemon:
            http_port = daemon.wait_status("listening")["port"]
            with locked_by_another_process(db, "BEGIN IMMEDIATE"):
                deadline = time.monotonic() + 30
                while True:
                    code, body = http_get(http_port, "/healthz")
                    reasons = {r["reason"] for r in json.loads(body)["reasons"]}
                    if "sink_failing" in reasons:
                        break
                    assert time.monotonic() < deadline, body
                    time.sleep(0.2)
                assert code == 503 and json.loads(body)["status"] == "degraded"
                # Longer than five attempts of 5 s each: the old sink stopped the daemon
                # there (exit 1) and lost what it held.
                time.sleep(30)
                code, body = http_get(http_port, "/metrics")
                samples = metric_samples(body.decode())
                assert samples["riskmon_sink_failing", '{sink="sqlite"}'] == 1
                assert samples["riskmon_sink_waiting_records", ""] > 0
            server.wait_status("finished", timeout=120)
            wait_quiet(http_port)
            assert daemon.terminate() == 0
        server.terminate()
    offline = tmp_path / "offline.db"
    replayed = replay_into(offline)
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    expected = [a for a in stored_alerts(offline) if a["kind"] not in FEED_KINDS]
    # The daemon outlives the recording by the lock's 30 s: its silent feed then goes
    # stale (feed_stale, as it must), past the recording's last event.
    end_ms = max(a["ts"] for a in expected)
    live = [a for a in stored_alerts(db) if a["kind"] not in FEED_KINDS and (
        a["ts"] <= end_ms or a["kind"] != "feed_stale")]
    assert [a["id"] for a in live] == [a["id"] for a in expected]


@contextmanager
def small_file_system(tmp_path: Path, size: str = "1m") -> Iterator[Path]:
    """A file system of ``size`` (tmpfs), mounted for the test: a disk that fills up.
    Skips where this user cannot mount one."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last block; the filler's path."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as file, suppress(OSError):  # ENOSPC: full
        while file.write(b"\0" * 4096):
            pass
    return filler


async def test_a_full_disk_holds_the_alerts_until_there_is_room(tmp_path: Path) -> None:
    with small_file_system(tmp_path) as disk:
        db = disk / "daemon.db"
        store = await SqliteStore.open(db, writable=True)
        keeping = Keeping()
        head = SinkTask(SqliteSink(store), max_attempts=None, followers=[SinkTask(keeping)])
        head.start()
        filler = await asyncio.to_thread(fill, disk)
        try:
            for n in range(40):
                await head.put(Batch.of(alerts=[make_alert(n, payload={"note": "x" * 2000})]))
            await until(lambda: head.failing() != [])
            [(_, _, error)] = head.failing()
            assert "full" in error
        finally:
            await asyncio.to_thread(filler.unlink)
        await until(lambda: len(keeping.stored) == 40, within_s=20)
        await head.drain_and_close()
        with closing(sqlite3.connect(db)) as connection:
            assert connection.execute("SELECT count(*), count(DISTINCT id) FROM alerts"
                                      ).fetchone() == (40, 40)
            assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_a_lasting_fault_is_told_to_the_notifiers_and_its_alerts_follow(
        tmp_path: Path) -> None:
    # The real daemon with a webhook notifier (a fake receiver on loopback); another
    # process holds the write lock past storage.fault_notice_after_s while the story
    # produces alerts. The receiver hears of the fault while it lasts, of its end, and then
    # gets every stored alert.
    async with FakeHttpServer() as hook:
        with running(["replay-server", str(STORY), "--port", "0", "--speed", "20"]) as server:
            port = (await asyncio.to_thread(server.wait_status, "listening"))["port"]
            config = live_config(tmp_path, port)
            text = config.read_text().replace("[storage]\n", (
                "[storage]\nfault_notice_after_s = 1\nretention_days = 36500\n"))
            config.write_text(text + (
                f'\n[notify.hook]\ntype = "webhook"\nurl = "{hook.url}/riskmon"\n'
                'backoff_initial_s = 0.05\nbackoff_max_s = 0.2\n'))
            db = tmp_path / "daemon.db"
            with running(["run", "--config", str(config)], env=LIVE_ENV) as daemon:
                http_port = (await asyncio.to_thread(daemon.wait_status, "listening"))["port"]
                with locked_by_another_process(db, "BEGIN IMMEDIATE"):
                    await hook.wait_for(lambda r: any(notice_kind(q) == "storage_failing"
                                                      for q in r), within_s=30)
                    during = [notice_kind(q) for q in hook.requests]
                await hook.wait_for(lambda r: any(notice_kind(q) == "storage_recovered"
                                                  for q in r), within_s=30)
                stored = await delivered_when_done(hook, server, http_port, db)
                assert await asyncio.to_thread(daemon.terminate) == 0
    assert during.count("storage_failing") == 1 and "storage_recovered" not in during
    notices = [q.json()["notice"] for q in hook.requests if notice_kind(q)]
    assert [n["kind"] for n in notices] == ["storage_failing", "storage_recovered"]
    assert "database is locked" in notices[0]["error"]
    assert notices[0]["waiting_records"] >= 1
    assert notices[1]["since_ts"] == notices[0]["since_ts"] < notices[1]["ts"]
    delivered = [q.headers["idempotency-key"] for q in hook.requests if not notice_kind(q)]
    assert list(dict.fromkeys(delivered)) == [a["id"] for a in stored]


def notice_kind(request: Received) -> str | None:
    """The kind of a storage notice the webhook received; None for an alert."""
    if request.headers.get("x-riskmon-message") != "notice":
        return None
    kind: str = request.json()["notice"]["kind"]
    return kind
