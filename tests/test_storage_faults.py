"""Storage faults at start (issue 15): ``riskmon run`` and ``riskmon replay --db`` as real
subprocesses against a database file that is corrupt, from a newer riskmon, locked by
another process or read-only. Each ends at once with exit code 1 and a ``storage error``
line naming the file and SQLite's reason, before any feed connection is made (the
configured port has nothing listening: a daemon that got that far would keep
reconnecting instead of exiting), and the file is left as it was.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from adapters.sqlite_store import SCHEMA_VERSION
from tests.live_harness import LIVE_ENV, ROOT, STORY, live_config

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
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys, time\n"
         f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
         "c.execute('PRAGMA locking_mode = EXCLUSIVE')\n"
         "c.execute('BEGIN EXCLUSIVE')\n"
         "c.execute('CREATE TABLE held (x)')\n"
         "print('held', flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        line = storage_error(run_daemon(tmp_path))
        assert str(db) in line and "database is locked" in line
    finally:
        holder.communicate("", timeout=10)


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
