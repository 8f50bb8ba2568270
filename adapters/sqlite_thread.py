"""One thread owning one stdlib ``sqlite3`` connection, driven from asyncio.

:class:`SqliteThread` is how :class:`~adapters.sqlite_store.SqliteStore` writes: every
call hands the thread one function, ``work(connection)``, which runs a whole transaction
there (BEGIN, the statements, COMMIT) and comes back as one result. The point is the
number of trips: under load the event loop's thread holds the GIL most of the time, and
each trip back from a worker thread must win it, so a transaction made of four or five
awaited statements took 2.8-4.6 ms at p99 in ``bench/live_bench.py`` at 10,000 frames/s,
against 1.8-2.1 ms as one call. aiosqlite (which the read-only stores use) has no public
way to run a function on its thread, so the writers own theirs.

Jobs run one at a time in the order they were handed over. A coroutine cancelled while
its job waits or runs gets CancelledError at once; the job itself still runs to its end
(a transaction is never cut in half), and its result is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")

_Job = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]"]


class SqliteThread:
    """A connection to the SQLite file at ``location`` and the thread that owns it.

    Create with :meth:`open`, run work with :meth:`run`, release with :meth:`close`.
    """

    def __init__(self, location: str, name: str) -> None:
        """Start nothing; use :meth:`open`."""
        self._location = location
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._connected: asyncio.Future[None] | None = None
        self._done: asyncio.Future[None] | None = None
        self._closing = False

    @classmethod
    async def open(cls, location: str, *, name: str = "riskmon-sqlite") -> SqliteThread:
        """Start the thread and connect; raises ``sqlite3.Error`` when the file cannot be
        opened (the thread has then ended).

        The connection has ``isolation_level=None`` (the sqlite3 module opens no implicit
        transactions: work issues BEGIN and COMMIT itself) and sqlite3's default 5 s busy
        timeout for locks held by other processes."""
        owner = cls(location, name)
        loop = asyncio.get_running_loop()
        owner._connected = loop.create_future()
        owner._done = loop.create_future()
        owner._thread.start()
        try:
            await asyncio.shield(owner._connected)
        except BaseException:
            await owner.close()
            raise
        return owner

    async def run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """``work(connection)`` on the thread; its result, or what it raised."""
        if self._closing:
            raise sqlite3.ProgrammingError("the SQLite connection is closed")
        future: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        self._jobs.put((work, future))
        return await future

    async def close(self) -> None:
        """Close the connection once the jobs handed over so far have run; the thread then
        ends. Closing twice is harmless."""
        if not self._closing:
            self._closing = True
            self._jobs.put(None)
        if self._done is not None:
            await asyncio.shield(self._done)
            # Its last act was to settle _done: the join is immediate.
            self._thread.join()

    def _serve(self) -> None:
        """The thread: connect, then run jobs until the close marker."""
        try:
            connection = sqlite3.connect(self._location, isolation_level=None)
        except BaseException as e:
            self._settle(self._connected, None, e)
            self._settle(self._done, None, None)
            return
        self._settle(self._connected, None, None)
        try:
            while (job := self._jobs.get()) is not None:
                work, future = job
                try:
                    result = work(connection)
                except BaseException as e:
                    self._settle(future, None, e)
                else:
                    self._settle(future, result, None)
        finally:
            try:
                connection.close()
            finally:
                self._settle(self._done, None, None)

    def _settle(self, future: asyncio.Future[Any] | None, result: Any,
                error: BaseException | None) -> None:
        """Complete ``future`` on its event loop's thread (a loop already closed has
        nobody waiting)."""
        if future is None:
            return
        loop = future.get_loop()
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_complete, future, result, error)


def _complete(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """On the loop: set the outcome unless the waiter has gone (cancelled)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
