"""The pipeline around the engine: lines in, engine, then sinks, each on its own task.

Shape (STYLE: one owner per resource): the caller's task owns the engine and is the only
one that touches it; every sink has its own bounded queue and task, so a slow sink never
runs inside the read loop. Durable sinks come first: a batch reaches the followers (alert
file, logs, subscribers) only after every durable sink has stored it (SPEC 4: persist
before publish).

:class:`LineProcessor` is the synchronous heart shared by ``riskmon replay``, the daemon
and the benchmark: one line in, events applied, alerts and quarantine records collected,
then handed out as a :class:`~monitor.core.batch.Batch`.
Bad input is counted exactly and kept within bounds (monitor.core.quarantine).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from monitor.core.alerts import Alert
from monitor.core.batch import Batch
from monitor.core.engine import MarginEngine, Notice
from monitor.core.errors import BadInput, SinkError
from monitor.core.events import Event
from monitor.core.quarantine import QuarantineBook
from monitor.core.records import (
    AccountCheckpoint,
    MarginPoint,
    QuarantineRecord,
    QuarantineSummary,
)
from monitor.core.settings import QuarantineConfig

LineDecoder = Callable[[bytes], list[Event]]

RAW_LIMIT = 4096
READ_CHUNK_BYTES = 1 << 20
_NOTHING = Batch()


class Sink(Protocol):
    """Something batches of records are written to. ``write`` raises SinkError on failure.

    What ``write`` returns is what the sink's followers get: None passes the batch on as
    it is; a durable sink may return the batch with what storing it produced (the SQLite
    sink adds a :class:`~monitor.core.records.StoredAlert` per newly inserted alert:
    :meth:`Batch.with_stored`).
    """

    name: str

    async def write(self, batch: Batch) -> Batch | None: ...

    async def close(self) -> None: ...


@dataclass
class Stats:
    """Counters for ``--state-out`` and ``/metrics``."""

    lines: int = 0
    events: int = 0
    quarantined: int = 0
    alerts: int = 0
    alerts_by_kind: dict[str, int] = field(default_factory=dict)
    # Events ignored as older than the last applied one of their kind (monitor.core.engine's
    # out_of_order, by kind: mark, index, order, positions, balance); the same dict.
    out_of_order: dict[str, int] = field(default_factory=dict)


class LineProcessor:
    """Decode lines, apply their events, collect what came out (alerts, quarantine
    records and counts, margin history, notices) for the sinks.

    ``quarantine`` bounds what is kept of bad input (monitor.core.quarantine); ``clock`` (a
    monotonic clock, seconds) times the log's quarantine summaries and is read only while
    bad input is pending.
    """

    def __init__(self, engine: MarginEngine, decode: LineDecoder, source: str,
                 history_interval_ms: int = 60_000, *,
                 quarantine: QuarantineConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.decode = decode
        self.source = source
        self.stats = Stats(out_of_order=engine.out_of_order)
        # What take() hands out next, by kind, each in the order produced.
        self._alerts: list[Alert] = []
        self._history: list[MarginPoint] = []
        self._quarantine: list[QuarantineRecord] = []
        self._notices: list[Notice] = []
        self._checkpoints: list[AccountCheckpoint] = []
        self._summaries: list[QuarantineSummary] = []
        self.clock = clock
        self.book = QuarantineBook(quarantine or QuarantineConfig(), clock())
        self._history_interval_ms = history_interval_ms
        self._next_history_ms = 0

    def feed_chunk(self, lines: list[bytes], first_line_number: int) -> int | None:
        """Decode and apply lines; return the receive time of the last event applied.

        The replay's hot loop (lookups hoisted out of it). A line that cannot be decoded,
        or whose events the engine refuses as implausible (monitor.core.engine), is quarantined
        whole: its events are never applied, so the account state is untouched by it (the
        decoder raises before returning anything; the engine judges an event before it
        changes anything, and the events of a line of several together with
        ``engine.screen`` first). Blank lines decode to nothing.
        """
        decode = self.decode
        engine = self.engine  # engine.apply(event) below: compiled by mypyc, a direct call
        stats = self.stats
        events_seen = 0
        line_number = first_line_number - 1
        for line in lines:
            line_number += 1
            try:
                events = decode(line)
                if len(events) > 1:
                    engine.screen(events)
                for event in events:
                    alerts = engine.apply(event)
                    if alerts:
                        self._collect(alerts)
            except BadInput as e:
                self.quarantine(f"{self.source}:{line_number}", e.reason, line)
                continue
            events_seen += len(events)
            if engine.now_ms >= self._next_history_ms:
                self._sample_history()
        stats.lines += len(lines)
        stats.events += events_seen
        self._collect_engine_records()
        # The engine notes each event's receive time natively; reading event.recv_ms here,
        # through the Event union, would cost a generic attribute lookup per event.
        return engine.last_recv_ms if events_seen else None

    def feed_events(self, events: list[Event]) -> None:
        """Apply events that did not come from a line (a live feed's decoded frames, or the
        daemon's own), as one input; see :meth:`apply_input` and :meth:`settle`.

        Raises:
            BadInput: the engine refused them (nothing was applied).
        """
        self.apply_input(events)
        self.settle()

    def apply_input(self, events: list[Event]) -> None:
        """Apply the events of one input (a frame, a REST body) whole or not at all.

        Raises:
            BadInput: the engine refused one of them as implausible; none was applied, and
                the caller quarantines the input.
        """
        engine = self.engine
        if len(events) > 1:
            engine.screen(events)
        for event in events:
            alerts = engine.apply(event)
            if alerts:
                self._collect(alerts)
        self.stats.events += len(events)

    def settle(self) -> None:
        """After a batch of inputs: the margin history sample when due, then the engine's
        notices and checkpoints."""
        if self.engine.now_ms >= self._next_history_ms:
            self._sample_history()
        self._collect_engine_records()

    def _collect_engine_records(self) -> None:
        """Notices and checkpoints, in the batch of the alerts that came with them."""
        engine = self.engine
        if engine.has_notices:
            self._notices.extend(engine.drain_notices())
        if engine.has_checkpoints:
            self._checkpoints.extend(engine.drain_checkpoints())

    def quarantine(self, source: str, reason: str, raw: bytes | str,
                   recv_ms: int | None = None) -> None:
        """Count one unusable input, and record it when it is to be logged or stored."""
        self.stats.quarantined += 1
        log, store, sampled = self.book.admit(reason)
        if not (log or store):
            return
        # Cut before decoding: a bad line can be megabytes long.
        text = (raw[:RAW_LIMIT * 4].decode("utf-8", "replace") if isinstance(raw, bytes)
                else raw[:RAW_LIMIT * 4])
        self._quarantine.append(QuarantineRecord(source, recv_ms, reason,
                                                 text.rstrip("\n")[:RAW_LIMIT], log, store,
                                                 sampled))

    def take(self) -> Batch:
        """Everything collected since the last call, with the quarantine counts since then
        and the log's quarantine summary when one is due."""
        book = self.book
        counts = book.take_counts() if book.pending else None
        if book.summary_pending:
            summary = book.summary(self.clock())
            if summary is not None:
                self._summaries.append(summary)
        if not (counts or self._alerts or self._history or self._quarantine or self._notices
                or self._checkpoints or self._summaries):
            return _NOTHING
        batch = Batch.of(alerts=self._alerts, quarantine=self._quarantine,
                         quarantine_counts=() if counts is None else (counts,),
                         quarantine_summaries=self._summaries, history=self._history,
                         notices=self._notices, checkpoints=self._checkpoints)
        self._alerts, self._history, self._quarantine = [], [], []
        self._notices, self._checkpoints, self._summaries = [], [], []
        return batch

    def finish(self) -> None:
        """The run ends: collect the last quarantine summary, if any bad input has not
        been summarised (:meth:`take` hands it out)."""
        summary = self.book.summary(self.clock(), final=True)
        if summary is not None:
            self._summaries.append(summary)

    def _collect(self, alerts: Sequence[Alert]) -> None:
        by_kind = self.stats.alerts_by_kind
        for alert in alerts:
            by_kind[alert.kind] = by_kind.get(alert.kind, 0) + 1
        self.stats.alerts += len(alerts)
        self._alerts.extend(alerts)
        # A level change is also a point on the margin chart.
        for alert in alerts:
            if alert.kind == "level_changed":
                self._history.append(MarginPoint(alert.account, alert.ts,
                                                 alert.margin_ratio, alert.equity_usd,
                                                 alert.maint_margin_usd,
                                                 alert.init_margin_usd, alert.level))

    def _sample_history(self) -> None:
        """Downsample every account's figures once per history interval of event time.

        Not while the clock is provisional (a restart's snapshot times are not the
        present), and not for an account whose risk is unknown: its figures are then only
        what is known so far, and a gap in the history says "unknown" where a sample
        would look like the truth."""
        now = self.engine.now_ms
        if now <= 0 or not self.engine.clock_live:
            return
        self._next_history_ms = now + self._history_interval_ms
        for name in self.engine.account_names():
            if not self.engine.risk_known(name):
                continue
            figures = self.engine.figures(name)
            self._history.append(MarginPoint(name, now, figures.margin_ratio,
                                             figures.equity_usd, figures.maint_margin_usd,
                                             figures.init_margin_usd,
                                             self.engine.level(name)))


@dataclass(slots=True)
class Retrying:
    """A sink's write that keeps failing and is being retried."""

    since_s: float
    """Wall time of its first failure."""
    error: str
    """The last failure."""
    records: int
    """Records of the batch held for it."""


class SinkTask:
    """One sink, its bounded queue and the task that drains it in batches.

    A failed write is retried with capped, jittered exponential backoff (0.05 s doubling
    to 5 s). After ``max_attempts`` failures the task fails and the run stops with the
    error (a durable sink that cannot store must not be silently skipped); with
    ``max_attempts=None`` (the daemon's SQLite sink) it retries until the write succeeds:
    the batch, and every batch queued behind it, waits in memory, the producer waits when
    the queue is full (the daemon's inbox then conflates marks), and :meth:`failing` says
    so meanwhile. When the fault clears everything queued is written in order, and only
    then passed on. The batches waiting in the queue when the task takes one are written
    as one (:meth:`Batch.merged`, each kind in order). Draining (:meth:`drain_and_close`)
    gives such a sink ``grace_s`` more; after that the task fails with how many records
    it could not write.

    What must act at once on what is stored observes the sink itself (the SQLite sink's
    ``observers``, adapters/sinks.py): it is told in this task, before the followers.
    """

    def __init__(self, sink: Sink, *, maxsize: int = 10_000, max_attempts: int | None = 5,
                 followers: Sequence[SinkTask] = (),
                 on_retry: Callable[[str, int, SinkError], None] | None = None) -> None:
        self.sink = sink
        self.queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize)
        self.followers = list(followers)
        self.max_attempts = max_attempts
        self.on_retry = on_retry
        self.task: asyncio.Task[None] | None = None
        self.retrying: Retrying | None = None
        self.queued_records = 0
        """Records waiting in the queue behind it."""
        self._deadline: float | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"sink-{self.sink.name}")
        for follower in self.followers:
            follower.start()

    async def put(self, batch: Batch) -> None:
        """Queue a batch, waiting for room (backpressure) while the sink task is alive."""
        if self.task is not None and self.task.done():
            self.task.result()  # surfaces the sink's failure to the producer
        await self.queue.put(batch)
        self.queued_records += len(batch)

    def alive(self) -> bool:
        """False once this sink's task, or a follower's, has failed."""
        tasks = [self.task] + [f.task for f in self.followers]
        return all(t is None or not t.done() or t.cancelled() or t.exception() is None
                   for t in tasks) and all(f.alive() for f in self.followers)

    def queue_depths(self) -> dict[str, int]:
        """Batches waiting, per sink name, this sink and its followers."""
        depths = {self.sink.name: self.queue.qsize()}
        for follower in self.followers:
            depths.update(follower.queue_depths())
        return depths

    @property
    def waiting_records(self) -> int:
        """Records not written yet: those of a write being retried and those queued."""
        return self.queued_records + (0 if self.retrying is None else self.retrying.records)

    def failing(self) -> list[tuple[str, float, str]]:
        """``(sink, since_s, error)`` of this sink and its followers while a write of
        theirs keeps failing and is being retried."""
        retrying = self.retrying
        found = [] if retrying is None else [(self.sink.name, retrying.since_s, retrying.error)]
        for follower in self.followers:
            found += follower.failing()
        return found

    async def drain_and_close(self, grace_s: float = 10.0) -> None:
        """Write everything queued, then close this sink and its followers. A write that
        keeps failing is retried for ``grace_s`` more, then the task fails."""
        self._deadline = asyncio.get_running_loop().time() + grace_s
        if self.task is not None and self.task.done():
            await self.task  # it failed: nobody would take the end marker
            return
        await self.queue.put(None)
        if self.task is not None:
            await self.task

    async def _run(self) -> None:
        try:
            ended = False
            while not ended:
                first = await self.queue.get()
                if first is None:
                    break
                held = [first]
                while not self.queue.empty():
                    more = self.queue.get_nowait()
                    if more is None:
                        ended = True
                        break
                    held.append(more)
                batch = Batch.merged(held)
                self.queued_records -= len(batch)
                await self._write(batch)
        finally:
            await self.sink.close()
            for follower in self.followers:
                await follower.drain_and_close()

    async def _write(self, batch: Batch) -> None:
        delay = 0.05
        passed: Batch | None = None
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            attempt += 1
            try:
                passed = await self.sink.write(batch)
                break
            except SinkError as e:
                if self.max_attempts is not None and attempt >= self.max_attempts:
                    raise
                if self._deadline is not None and loop.time() >= self._deadline:
                    waiting = len(batch) + self.queued_records
                    raise SinkError(f"{e} (stopping: {waiting} records not written)") from e
                since = time.time() if self.retrying is None else self.retrying.since_s
                self.retrying = Retrying(since, str(e), len(batch))
                if self.on_retry is not None:
                    self.on_retry(self.sink.name, attempt, e)
                pause = delay * (0.5 + random.random())
                if self._deadline is not None:
                    pause = max(0.0, min(pause, self._deadline - loop.time()))
                await asyncio.sleep(pause)
                delay = min(delay * 2, 5.0)
        self.retrying = None
        onward = batch if passed is None else passed
        for follower in self.followers:
            await follower.put(onward)


class Relay:
    """A head for the sink chain when nothing durable is configured: it stores nothing
    and passes every batch on to its followers."""

    name = "relay"

    async def write(self, batch: Batch) -> None:
        return None

    async def close(self) -> None:
        return None


class AlertLinesSink:
    """Alerts as JSON lines (SPEC 2) to a file, or to standard output for ``-``: the
    batch's own encodings (:attr:`Batch.alert_json`)."""

    name = "alerts-out"

    def __init__(self, target: str) -> None:
        self._reader_gone = False
        self._handle = None if target == "-" else open(target, "wb")  # noqa: SIM115

    async def write(self, batch: Batch) -> None:
        if not batch.alert_json:
            return
        data = b"\n".join(batch.alert_json) + b"\n"
        if self._handle is not None:
            self._handle.write(data)
        elif not self._reader_gone:
            try:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
            except BrokenPipeError:
                # The reader went away (``| head``): stop writing to it; the run and the
                # durable sinks carry on.
                self._reader_gone = True

    async def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


async def replay_file(
    path: Path,
    processor: LineProcessor,
    head: SinkTask | None,
    *,
    speed: float | None = None,
    progress: Callable[[int, Stats], None] | None = None,
) -> Stats:
    """Run a recording through the processor; hand outputs to ``head`` (then followers).

    With ``speed`` the replay is paced by the recording's receive times, ``speed`` times
    real time; otherwise it runs as fast as possible. Lines are read about a megabyte at a
    time in a worker thread, and the loop yields to the sink tasks between chunks.
    ``progress`` is told the bytes read so far and the counts after every chunk.
    """
    if head is not None:
        head.start()
    start_wall = time.monotonic()
    first_recv: int | None = None
    # Opened in this thread: a worker-thread open cancelled midway would leak the handle.
    handle = open(path, "rb")  # noqa: ASYNC230, SIM115
    try:
        line_number = 0
        while chunk := await asyncio.to_thread(handle.readlines, READ_CHUNK_BYTES):
            if speed is None:
                processor.feed_chunk(chunk, line_number + 1)
                line_number += len(chunk)
            else:
                for line in chunk:
                    line_number += 1
                    recv = processor.feed_chunk([line], line_number)
                    if recv is None:
                        continue
                    if first_recv is None:
                        first_recv = recv
                    due = (recv - first_recv) / 1000 / speed
                    wait = due - (time.monotonic() - start_wall)
                    if wait > 0:
                        await _flush(processor, head)
                        await asyncio.sleep(wait)
            await _flush(processor, head)
            if progress is not None:
                progress(handle.tell(), processor.stats)
        processor.finish()
        await _flush(processor, head)
    finally:
        handle.close()
        if head is not None:
            await head.drain_and_close()
    return processor.stats


async def _flush(processor: LineProcessor, head: SinkTask | None) -> None:
    batch = processor.take()
    if head is not None and batch:
        await head.put(batch)
    else:
        await asyncio.sleep(0)


def state_document(accounts: Mapping[str, Any], stats: Stats) -> bytes:
    """The ``--state-out`` JSON object (SPEC 7) of accounts' states
    (``MarginEngine.state()``)."""
    return orjson.dumps(
        {"accounts": accounts,
         "stats": {"events": stats.events, "quarantined": stats.quarantined,
                   "out_of_order": dict(stats.out_of_order)}},
        option=orjson.OPT_INDENT_2,
    )
