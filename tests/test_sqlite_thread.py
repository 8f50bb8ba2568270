"""The thread that owns a store's sqlite3 connection (adapters/sqlite_thread.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.sqlite_thread import SqliteThread


def inserter(n: int, seen: list[tuple[int, int]]) -> Callable[[sqlite3.Connection], int]:
    def work(db: sqlite3.Connection) -> int:
        seen.append((n, threading.get_ident()))
        db.execute("INSERT INTO t VALUES (?)", (n,))
        return n * 10
    return work


def owner_threads() -> set[int | None]:
    return {t.ident for t in threading.enumerate() if t.name.startswith("riskmon-sqlite")}


async def test_work_runs_on_one_thread_in_order_and_returns_its_result(tmp_path: Path) -> None:
    owner = await SqliteThread.open(str(tmp_path / "t.db"))
    try:
        await owner.run(lambda db: db.execute("CREATE TABLE t (n INTEGER)"))
        seen: list[tuple[int, int]] = []

        results = await asyncio.gather(*(owner.run(inserter(n, seen)) for n in range(20)))

        assert results == [n * 10 for n in range(20)]
        assert [n for n, _ in seen] == list(range(20))
        assert len({ident for _, ident in seen}) == 1
        assert seen[0][1] != threading.get_ident()
        rows = await owner.run(lambda db: db.execute("SELECT n FROM t ORDER BY rowid").fetchall())
        assert [n for (n,) in rows] == list(range(20))
    finally:
        await owner.close()


async def test_an_error_in_the_work_reaches_the_caller_and_the_thread_goes_on(
    tmp_path: Path,
) -> None:
    owner = await SqliteThread.open(str(tmp_path / "t.db"))
    try:
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            await owner.run(lambda db: db.execute("SELECT * FROM missing"))
        with pytest.raises(ZeroDivisionError):
            await owner.run(lambda db: 1 // 0)
        assert await owner.run(lambda db: db.execute("SELECT 7").fetchone()[0]) == 7
    finally:
        await owner.close()


async def test_cancelled_work_still_runs_whole_and_later_work_goes_on(tmp_path: Path) -> None:
    owner = await SqliteThread.open(str(tmp_path / "t.db"))
    try:
        await owner.run(lambda db: db.execute("CREATE TABLE t (n INTEGER)"))
        gate = threading.Event()

        def slow(db: sqlite3.Connection) -> None:
            gate.wait(5)
            db.execute("INSERT INTO t VALUES (1)")

        task = asyncio.create_task(owner.run(slow))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()

        count = await owner.run(lambda db: db.execute("SELECT count(*) FROM t").fetchone()[0])
        assert count == 1
    finally:
        await owner.close()


async def test_close_runs_the_work_already_handed_over_then_ends_the_thread(
    tmp_path: Path,
) -> None:
    before = owner_threads()
    path = tmp_path / "t.db"
    owner = await SqliteThread.open(str(path))
    await owner.run(lambda db: db.execute("CREATE TABLE t (n INTEGER)"))
    seen: list[tuple[int, int]] = []
    pending = [asyncio.ensure_future(owner.run(inserter(n, seen))) for n in range(5)]
    await asyncio.sleep(0)  # each task hands its work over

    await owner.close()
    await owner.close()

    assert await asyncio.gather(*pending) == [0, 10, 20, 30, 40]
    assert owner_threads() - before == set()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        await owner.run(lambda db: None)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 5


async def test_a_file_that_cannot_be_opened_fails_open_and_leaves_no_thread(
    tmp_path: Path,
) -> None:
    before = owner_threads()

    with pytest.raises(sqlite3.OperationalError):
        await SqliteThread.open(str(tmp_path / "no" / "such" / "dir.db"))

    assert owner_threads() - before == set()
