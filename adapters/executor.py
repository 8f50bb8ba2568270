"""The executor: stored triggers in, reduce-only market orders out (issue 13; SPEC 1.7).

Shape (STYLE: one owner per resource). The executor observes the SQLite sink
(``SinkTask(observers=...)``, monitor/runtime/pipeline.py): it only ever sees a
``stop_loss`` (or, with ``[execution] deleverage_plans``, a ``deleverage_plan``) alert
after SQLite stored it (persist before act), and sees it in the store's own task, before
the followers (log, subscribers, notifiers) get their turns. :meth:`Executor.offer` never
waits: it hands each trigger of an executing account to that account's worker, a task
with its own queue, trade key and HTTP client, so a slow exchange answer for one account
delays no other. The daemon's engine task hands it the order updates of the ``orders``
channel whose client id is riskmon's (:meth:`Executor.on_order`), also without waiting.
What a worker decides with is in :mod:`monitor.core.execution` (legs, client ids, the leg
state table); this module carries it out.

For each trigger, a worker:

1. re-reads the live positions and sizes every leg to what the position still holds
   (:func:`~monitor.core.execution.closable`): no order is larger than the position, and a leg
   whose position is gone is ``skipped``. The positions are the daemon's own, as the
   account's ``positions`` channel last pushed them (:attr:`Executor.live_positions`),
   while that connection is up and has delivered its snapshot: OKX pushes every change
   there, so they are as fresh as an answer over REST, without its round trip (4-10 ms
   on loopback, tens over the internet) and its budget of 10 reads per 2 s. Otherwise
   they are read over REST (``GET account/positions``). The orders are reduce-only as
   well: the exchange itself refuses to let one grow a position;
2. stores the legs and one attempt row per order (``execution_legs``,
   ``execution_attempts``) with its advanced cursor, in one transaction, and
3. sends the orders (``POST batch-orders``, 20 per request) while that transaction
   commits: the first request does not wait for the commit (it would add the commit's
   time, about a millisecond, to every trigger's latency), its answer does. Then it
   stores the answers and emits ``execution_sent`` (one per request, listing every order
   and its ``sCode``);
4. follows each order on the ``orders`` channel to its end: ``execution_filled`` when it
   is filled; a rejection or an order that ended partly filled is ``execution_failed``
   with the exchange's ``sCode``/``sMsg`` and ``will_retry``, and the remainder is sent
   again as the next attempt (a new client id), up to ``max_attempts`` orders per leg;
   after that, or ``give_up_s`` after the first send, the leg fails for good
   (``will_retry: false``): escalated, never dropped.

An order request without an answer (timeout, connection error, HTTP 5xx), and an accepted
order without a final state after ``fill_timeout_s``, is looked up by its client id
(``GET trade/order``): found, it is followed; unknown to the exchange, it is sent again
with the *same* client id (the exchange refuses a second order with an id it has seen),
at most :data:`~monitor.core.execution.MAX_RESENDS` times. After a restart every open leg is
looked up the same way before anything is sent, and so is every leg of a trigger stored
after the cursor (the run before may have sent its first order, whose client id is known
from the trigger, and died before the commit): no order is ever placed twice.

Safety: execution needs ``risk.execute_triggers`` and the account's ``execute``; a key
that cannot trade refuses the start (:meth:`Executor.check_keys`); ``pause`` (the kill
switch, persisted) stops every new send until ``resume``: a trigger arriving while paused
fails at once (``execution_failed``, reason ``paused``), legs waiting for a retry wait; a
trigger older than ``max_trigger_age_s`` when its turn comes fails (reason ``expired``)
instead of acting on a market that has moved on. A dry run goes through every step but
sends nothing: it logs ``execution_dry_run`` with the orders and stores the attempts as
``dry_run``.

Execution alerts carry the trigger's event time, level and figures and ids derived from
the trigger's (monitor.core.execution.execution_alert): the same step reported again after a
restart is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from adapters.backoff import backoff_delay
from adapters.logging import get_logger
from adapters.sqlite_store import SqliteStore
from monitor.core.alerts import Alert, AlertKind
from monitor.core.batch import Batch
from monitor.core.errors import ConfigError, RiskmonError
from monitor.core.events import OrderUpdate
from monitor.core.execution import (
    CLIENT_ID_PREFIX,
    SIZE_EPSILON,
    LegEvent,
    LegProgress,
    OrderAnswer,
    OrderAttempt,
    PositionKey,
    TradeFailure,
    Trader,
    closable,
    execution_alert,
    legs_of,
    trigger_fields,
)
from monitor.core.payloads import (
    ExecutionFailedPayload,
    ExecutionFilledPayload,
    ExecutionSentPayload,
    LegFields,
    SentOrder,
)
from monitor.core.records import StoredAlert
from monitor.core.settings import ExecutionConfig
from monitor.runtime.metrics import Metrics

__all__ = ["Executor"]

PAGE_SIZE: Final = 200
LOOKUP_AFTER_LOST_S: Final = 0.5
"""How long after a lost request its order is looked up (the exchange may still be
processing it)."""
RETRY_BACKOFF_S: Final = (0.2, 5.0)
"""Backoff before a retry (first, cap): after a rejection, a rate limit, a failed read."""
DUPLICATE_CLIENT_ID: Final = "51016"  # OKX: "Duplicated clOrdId"
PAUSED_POLL_S: Final = 1.0
"""While paused, how often a leg waiting for a retry checks whether it may go."""


class Executor:
    """Every executing account's worker, the kill switch and the store connection."""

    def __init__(self, config: ExecutionConfig, traders: Mapping[str, Trader],
                 store: SqliteStore, kinds: frozenset[str], *, paused: bool = False,
                 wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        self.config = config
        self.store = store
        self.kinds = kinds
        self.paused = paused
        self.wall_ms = wall_ms
        self.emit: Callable[[Batch], Awaitable[None]] | None = None
        """Where its alerts go, a batch at a time: the head of the sink chain (put)."""
        self.live_positions: Callable[[str], Mapping[PositionKey, float] | None] | None = None
        """The account's positions as the live feed holds them now, or None when it cannot
        vouch for them (not connected, no snapshot yet): then they are read over REST."""
        self.workers = {account: _Worker(self, trader) for account, trader in traders.items()}
        self.log = get_logger("riskmon.executor")
        self._stopped = False

    @classmethod
    async def open(cls, config: ExecutionConfig, traders: Mapping[str, Trader],
                   sqlite_path: str | Path, *, retention_days: float = 90.0,
                   auto_checkpoint: bool = True) -> Executor:
        """Open the executor's own store connection, load the kill switch, each account's
        cursor and open legs. An account without a cursor starts at the newest stored
        alert: turning execution on never acts on old triggers. ``auto_checkpoint``: see
        :meth:`SqliteStore.open`."""
        kinds = frozenset({"stop_loss", "deleverage_plan"} if config.deleverage_plans
                          else {"stop_loss"})
        # synchronous=NORMAL: in WAL mode a commit survives a process crash (kill -9)
        # without an fsync; after a power loss the exchange's refusal of a client id it
        # has seen still keeps an order from being placed twice.
        store = await SqliteStore.open(sqlite_path, retention_days=retention_days,
                                       synchronous="NORMAL", auto_checkpoint=auto_checkpoint)
        try:
            state = await store.executor_state()
            last_seq = await store.last_alert_seq()
            executor = cls(config, traders, store, kinds, paused=state.get("paused") == "1")
            fresh: dict[str, str] = {}
            for account, worker in executor.workers.items():
                saved = state.get(f"cursor:{account}")
                worker.cursor = int(saved) if saved is not None else last_seq
                if saved is None:
                    fresh[f"cursor:{account}"] = str(last_seq)
                await worker.load()
            if fresh:  # from now on, every trigger stored is taken, across restarts too
                await store.save_execution(state=fresh)
        except BaseException:
            await store.close()
            raise
        return executor

    async def check_keys(self) -> None:
        """Refuse to start (ConfigError) when an account's trade key cannot trade, or the
        exchange cannot tell. A dry run only warns: it sends nothing."""
        for account, worker in self.workers.items():
            try:
                permissions = await worker.trader.permissions()
            except (RiskmonError, OSError) as e:
                if self.config.dry_run:
                    self.log.warning("execution_key_unchecked", account=account, error=str(e))
                    continue
                raise ConfigError(f"accounts.{account}.trade_api_key_env",
                                  f"cannot check the trade key's permissions: {e}") from None
            if "trade" not in permissions:
                message = (f"the trade key cannot trade (permissions: "
                           f"{','.join(sorted(permissions)) or 'none'})")
                if self.config.dry_run:
                    self.log.warning("execution_key_cannot_trade", account=account)
                    continue
                raise ConfigError(f"accounts.{account}.trade_api_key_env", message)

    def start(self) -> None:
        for worker in self.workers.values():
            worker.start()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop the workers and close the store; stopping twice is harmless.

        Each worker first finishes the turn it is in (a request on the wire gets its
        answer, and the alerts saying so are emitted while the sink chain still takes
        them), for at most ``grace_s`` (default: the request timeout and a second); then
        it is cancelled. What is still open is stored either way: the next start looks it
        up before sending anything.
        """
        if self._stopped:
            return
        self._stopped = True
        if grace_s is None:
            grace_s = self.config.request_timeout_s + 1.0
        try:
            await asyncio.gather(*(w.stop(grace_s) for w in self.workers.values()))
        finally:
            for worker in self.workers.values():
                await worker.trader.close()
            await self.store.close()

    def failures(self) -> list[dict[str, Any]]:
        """The ``/healthz`` failure of workers that crashed (a bug: the account's triggers
        are no longer carried out), or nothing."""
        crashed = sorted(account for account, worker in self.workers.items()
                         if worker.crash is not None)
        if not crashed:
            return []
        return [{"reason": "executor_failed", "accounts": crashed,
                 "errors": {a: self.workers[a].crash for a in crashed}}]

    def update_metrics(self, metrics: Metrics) -> None:
        """Copy the executor's figures into the ``/metrics`` families."""
        metrics.executor_paused = self.paused
        for account, worker in self.workers.items():
            metrics.executor_orders_sent[account] = worker.counts["requested"]
            metrics.executor_orders_rejected[account] = worker.counts["rejected"]
            metrics.executor_legs_filled[account] = worker.counts["filled"]
            metrics.executor_legs_failed[account] = worker.counts["failed"]
            metrics.executor_open_legs[account] = len(worker.legs)
            metrics.executor_queued_triggers[account] = len(worker.triggers)
            metrics.executor_worker_up[account] = worker.running()

    # -- an observer of the SQLite sink ---------------------------------------------------

    def acts_on(self, alert: Alert) -> bool:
        """Whether ``alert`` is a trigger this executor carries out (its kind, an
        executing account): the SQLite sink hands a batch holding one over before its
        fsync (adapters/sinks.py, ``urgent``)."""
        return alert.kind in self.kinds and alert.account in self.workers

    def offer(self, batch: Batch) -> None:
        """Hand each stored trigger of an executing account to its worker; never waits
        (the daemon calls it as an observer of the SQLite sink, monitor.runtime.pipeline)."""
        for record in batch.stored:
            if self.acts_on(record.alert):
                self.workers[record.alert.account].offer(record)

    # -- from the engine task -------------------------------------------------------------

    def on_order(self, update: OrderUpdate) -> None:
        """An order update of the orders channel; riskmon's own go to their worker."""
        if update.client_id.startswith(CLIENT_ID_PREFIX):
            worker = self.workers.get(update.account)
            if worker is not None:
                worker.orders.append(update)
                worker.wake.set()

    # -- the kill switch ------------------------------------------------------------------

    async def set_paused(self, paused: bool) -> None:
        """Pause (no new sends) or resume; persisted, so a restart keeps it."""
        await self.store.save_execution(state={"paused": "1" if paused else "0"})
        self.paused = paused
        self.log.warning("executor_paused" if paused else "executor_resumed")
        for worker in self.workers.values():
            worker.wake.set()

    def status(self) -> dict[str, Any]:
        return {
            "paused": self.paused,
            "dry_run": self.config.dry_run,
            "accounts": {account: worker.status() for account, worker in self.workers.items()},
        }

    async def _emit(self, alerts: list[Alert]) -> None:
        if alerts and self.emit is not None:
            await self.emit(Batch.of(alerts=alerts))


class _Worker:
    """One account's executor task: its triggers, open legs and timers."""

    def __init__(self, executor: Executor, trader: Trader) -> None:
        self.executor = executor
        self.trader = trader
        self.account = trader.account
        self.config = executor.config
        self.cursor = 0
        self.triggers: deque[StoredAlert] = deque()
        self.behind = False
        self.orders: deque[OrderUpdate] = deque()
        self.wake = asyncio.Event()
        self.legs: dict[tuple[str, int], LegProgress] = {}
        self.due: dict[tuple[str, int], float] = {}
        self.sources: dict[str, Alert] = {}
        self.counts = {"requested": 0, "sent": 0, "rejected": 0, "filled": 0, "failed": 0}
        """Since the start: orders in requests (resends too), orders the exchange took
        or that went unanswered (looked up then), orders it refused; legs filled, legs
        given up or refused before sending."""
        self.task: asyncio.Task[None] | None = None
        self.stopping = False
        """Set by :meth:`stop`: the loop ends after the turn in progress."""
        self.crash: str | None = None
        """The error that ended the task, if one did."""
        self._rng = random.Random()
        self._failures = 0
        self._idle_since = time.monotonic()
        self.recovering = False
        """The first catch-up after a start: its triggers may have been sent already."""
        self._unconfirmed: set[tuple[str, int]] = set()
        """Legs of such triggers not yet known to have been placed."""

    # -- set-up ---------------------------------------------------------------------------

    async def load(self) -> None:
        """Open legs from the store: each is looked up (or sent, if it never was) first."""
        store = self.executor.store
        for progress in await store.execution_legs(open_only=True):
            if progress.leg.account != self.account:
                continue
            source = await store.alert_by_id(progress.leg.alert_id)
            if source is None:
                continue  # pruned: nothing left to report about
            self.sources[source.id] = source
            if progress.state == "sending":
                progress.state = "unknown"  # stored with its request: may have gone
            self._track(progress, 0.0)
        # Triggers stored after the cursor: the previous run stopped before taking them,
        # or took one, sent its orders and died before their commit (see _recover).
        self.behind = True
        self.recovering = True

    def start(self) -> None:
        self.wake.set()  # the first turn catches up and follows up what load() found
        self.task = asyncio.create_task(self._run(), name=f"executor-{self.account}")
        self.task.add_done_callback(self._ended)

    async def stop(self, grace_s: float) -> None:
        """Let the turn in progress finish (at most ``grace_s``), then end the task."""
        task = self.task
        if task is None or task.done():
            return
        self.stopping = True
        self.wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await asyncio.shield(task)
        if not task.done():
            self.executor.log.warning("executor_stop_timeout", account=self.account,
                                      grace_s=grace_s)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A worker ends only when stopped: anything else is a bug, reported on
        ``/healthz`` and in the log (the task's exception is retrieved here)."""
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.crash = f"{type(error).__name__}: {error}"
            self.executor.log.error("executor_crashed", account=self.account,
                                    error=self.crash, exc_info=error)

    def offer(self, stored: StoredAlert) -> None:
        if stored.seq <= self.cursor:
            return
        if len(self.triggers) >= self.config.queue_size:
            # Out of room: forget the queue and read the store after the cursor instead.
            self.triggers.clear()
            self.behind = True
        elif not self.behind:
            self.triggers.append(stored)
        self.wake.set()

    def status(self) -> dict[str, Any]:
        return {"open_legs": len(self.legs), "queued_triggers": len(self.triggers),
                **self.counts}

    # -- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        log = self.executor.log
        keep_warm_s = self.config.keep_warm_s
        while not self.stopping:
            warm_at = self._idle_since + keep_warm_s
            timeout = max(0.0, min([warm_at, *self.due.values()]) - time.monotonic())
            # asyncio.timeout, not wait_for: in Python 3.11 wait_for returns the result
            # and swallows a cancellation that arrives as the event is set (stop() right
            # after set_paused()), and stop() would wait for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()
            self.wake.clear()
            if self.stopping:
                return
            try:
                if time.monotonic() >= warm_at:
                    await self._warm()
                await self._turn()
                self._idle_since = time.monotonic()
            except (RiskmonError, OSError) as e:  # the store failed: retry after a backoff
                self._failures += 1
                delay = backoff_delay(self._failures, *RETRY_BACKOFF_S, self._rng)
                log.error("executor_error", account=self.account, error=str(e),
                          retry_in_s=round(delay, 3))
                if self.stopping:
                    return
                await asyncio.sleep(delay)
                self.wake.set()
            else:
                self._failures = 0

    async def _warm(self) -> None:
        """Keep the trade connection open (``keep_warm_s``); a failure only logs: the
        next request opens a new connection."""
        try:
            await self.trader.warm()
        except (RiskmonError, OSError) as e:
            self.executor.log.warning("execution_warm_failed", account=self.account,
                                      error=str(e))
        self._idle_since = time.monotonic()

    async def _turn(self) -> None:
        while self.orders:
            await self._on_update(self.orders.popleft())
        if self.behind:
            await self._catch_up()
        while self.triggers:
            stored = self.triggers[0]
            await self._take(stored)
            self.triggers.popleft()
        now = time.monotonic()
        ready = [key for key, due in self.due.items() if due <= now]
        to_send: list[LegProgress] = []
        for key in ready:
            progress = self.legs.get(key)
            if progress is None:
                self.due.pop(key, None)
                continue
            if self._give_up_due(progress):
                await self._finish(progress, "give_up", reason="no final state in time")
            elif progress.state == "pending":
                to_send.append(progress)
            elif progress.state in ("unknown", "accepted"):
                await self._look_up(progress)
        if to_send:
            await self._send(to_send)

    async def _catch_up(self) -> None:
        store = self.executor.store
        while True:
            page = await store.stored_alerts(self.cursor, accounts=[self.account],
                                             kinds=self.executor.kinds, limit=PAGE_SIZE)
            for stored in page:
                await self._take(stored, recovering=self.recovering)
            if len(page) < PAGE_SIZE:
                break
        self.behind = False
        self.recovering = False
        self.triggers.clear()  # everything queued was in the store too, and is taken

    # -- a trigger ------------------------------------------------------------------------

    async def _take(self, stored: StoredAlert, *, recovering: bool = False) -> None:
        """Turn a stored trigger into legs and send them (or fail them at once); when
        ``recovering``, look its first orders up instead (see :meth:`_recover`)."""
        if stored.seq <= self.cursor:
            return
        source = stored.alert
        self.cursor = stored.seq
        now_ms = self.executor.wall_ms()
        progress = [LegProgress(leg, source.kind, now_ms) for leg in legs_of(source)]
        cursor = {f"cursor:{self.account}": str(stored.seq)}
        if not progress:
            await self.executor.store.save_execution(state=cursor)
            return
        self.sources[source.id] = source
        if recovering:
            await self._recover(progress, cursor, now_ms)
            return
        age_ms = now_ms - source.emitted_ms
        reason = ("paused" if self.executor.paused
                  else "expired" if age_ms > self.config.max_trigger_age_s * 1000 else None)
        if reason is not None:
            alerts = []
            for item in progress:
                item.state = "failed"
                item.s_msg = reason
                alerts.append(self._failed_alert(item, reason, will_retry=False))
            await self.executor.store.save_execution(progress, state=cursor)
            self.counts["failed"] += len(progress)
            await self.executor._emit(alerts)
            self.executor.log.warning("execution_refused", account=self.account,
                                      trigger=source.id, reason=reason)
            return
        for item in progress:
            self._track(item, 0.0)
        await self._send(progress, state=cursor)

    async def _recover(self, progress: list[LegProgress], cursor: Mapping[str, str],
                       now_ms: int) -> None:
        """A trigger found after the cursor at a start. The run before may have sent its
        orders and died before their commit (the first request goes while the attempts
        commit): each leg's first order, whose client id follows from the trigger, is
        looked up before anything is sent. Found, it is followed; absent, it goes as a
        resend of that id (or fails ``expired``, or waits while paused, as a new trigger
        would)."""
        for item in progress:
            item.next_attempt(item.leg.size)
            item.state = "unknown"
            item.first_sent_ms = now_ms
            self._unconfirmed.add(self._key(item))
        await self.executor.store.save_execution(progress, state=cursor)
        for item in progress:
            self._track(item, 0.0)

    # -- sending --------------------------------------------------------------------------

    async def _send(self, pending: list[LegProgress],
                    state: Mapping[str, str] | None = None) -> None:
        """Size each pending leg to the live position, store the attempts, send."""
        if self.executor.paused:
            if state:
                await self.executor.store.save_execution(pending, state=state)
            for item in pending:
                self._track(item, PAUSED_POLL_S)
            return
        live = self.executor.live_positions
        held = live(self.account) if live is not None else None
        try:
            positions = held if held is not None else await self.trader.positions()
        except (RiskmonError, OSError) as e:
            self.executor.log.warning("execution_positions_unread", account=self.account,
                                      error=str(e))
            if state:
                await self.executor.store.save_execution(pending, state=state)
            self._retry_later(pending)
            return
        now_ms = self.executor.wall_ms()
        dry_run = self.config.dry_run
        orders: list[tuple[LegProgress, str, float]] = []
        attempts: list[OrderAttempt] = []
        finished: list[LegProgress] = []
        for item in pending:
            size = closable(item.leg, item.remaining if not item.reuse_id else item.order_size,
                            positions)
            if size <= SIZE_EPSILON:
                item.step("nothing", self.config.max_attempts)
                finished.append(item)
                continue
            client_id = item.client_id if item.reuse_id and item.client_id else (
                item.next_attempt(size))
            item.order_size = size
            item.step("dry_run" if dry_run else "send", self.config.max_attempts)
            if item.first_sent_ms is None:
                item.first_sent_ms = now_ms
            orders.append((item, client_id, size))
            attempts.append(self._attempt(item, now_ms, "dry_run" if dry_run else "sending",
                                          {}, dry_run))
        save = self.executor.store.save_execution(pending, attempts, state)
        limit = max(1, self.trader.batch_limit)
        if orders and not dry_run:
            # The first request goes while the attempts commit; its answer waits for it.
            await self._request(orders[:limit], asyncio.ensure_future(save))
            orders = orders[limit:]
        else:
            await save
        skipped = []
        for item in finished:
            self._untrack(item)
            self.executor.log.warning("execution_skipped", account=self.account,
                                      trigger=item.leg.alert_id, leg=item.leg.index)
            # Nothing was sent for it: say so (the position was closed by someone else,
            # or flipped), never stay silent about a trigger that did not act.
            skipped.append(self._failed_alert(item, "no position left to close",
                                              will_retry=False))
        await self.executor._emit(skipped)
        if dry_run:
            for item, client_id, size in orders:
                self._untrack(item)
                self.executor.log.warning(
                    "execution_dry_run", account=self.account, trigger=item.leg.alert_id,
                    leg=item.leg.index, client_id=client_id, inst_id=item.leg.inst_id,
                    side=item.leg.side, pos_side=item.leg.position_side,
                    margin_mode=item.leg.margin_mode, size=size)
            return
        for start in range(0, len(orders), limit):
            await self._request(orders[start:start + limit])

    async def _request(self, batch: list[tuple[LegProgress, str, float]],
                       stored: asyncio.Future[None] | None = None) -> None:
        """Send one request and take its answers; ``stored``, the commit of its attempts
        if still under way, is waited for before anything about the answers is."""
        max_attempts = self.config.max_attempts
        self.counts["requested"] += len(batch)
        try:
            answers = await self.trader.place([(item.leg, cid, size) for item, cid, size in batch])
        except TradeFailure as failure:
            await self._committed(stored, batch)
            answers = [OrderAnswer(cid, "", failure.code, failure.msg or str(failure), None)
                       for _, cid, _ in batch]
            outcome: LegEvent = ("throttled" if failure.kind == "throttled"
                                 else "lost" if failure.kind == "lost" else "rejected")
        except BaseException:  # cancelled (stop()): the commit still ends before the store
            with contextlib.suppress(Exception):
                await self._committed(stored, batch)
            raise
        else:
            await self._committed(stored, batch)
            outcome = "accepted"
        now_ms = self.executor.wall_ms()
        attempts: list[OrderAttempt] = []
        failed_alerts: list[Alert] = []
        sent: list[SentOrder] = []
        for (item, client_id, size), answer in zip(batch, answers, strict=True):
            record = {"s_code": answer.s_code, "s_msg": answer.s_msg,
                      "order_id": answer.order_id, "exchange_ts": answer.ts_ms}
            if item.state != "sending" or item.client_id != client_id:
                # The orders channel was faster than the answer: already moved on.
                attempts.append(self._attempt(item, now_ms, item.state, record))
                sent.append(self._sent_entry(item, client_id, size, answer))
                continue
            event: LegEvent = outcome
            if outcome == "accepted":
                if answer.s_code == "0":
                    event = "accepted"
                elif answer.s_code == DUPLICATE_CLIENT_ID:
                    event = "duplicate"
                elif answer.s_code == "":
                    event = "lost"
                else:
                    event = "rejected"
            item.s_code, item.s_msg = answer.s_code, answer.s_msg
            if answer.order_id:
                item.order_id = answer.order_id
            state = item.step(event, max_attempts)
            attempts.append(self._attempt(item, now_ms, event, record))
            if event in ("accepted", "duplicate", "lost"):
                sent.append(self._sent_entry(item, client_id, size, answer))
            match event:
                case "accepted":
                    self._track(item, self.config.fill_timeout_s)
                case "duplicate" | "lost":
                    self._track(item, LOOKUP_AFTER_LOST_S)
                case "throttled":
                    self._retry_later([item])
                case _:  # rejected
                    self.counts["rejected"] += 1
                    failed_alerts.append(self._failed_alert(
                        item, "rejected", will_retry=state == "pending"))
                    if state == "pending":
                        self._retry_later([item])
                    else:
                        self._untrack(item)
        await self.executor.store.save_execution([item for item, _, _ in batch], attempts)
        alerts = failed_alerts
        if sent:
            first = batch[0][0]
            self.counts["sent"] += len(sent)
            source = self.sources[first.leg.alert_id]
            payload: ExecutionSentPayload = {**trigger_fields(source), "orders": sent,
                                             "dry_run": False}
            alerts = [execution_alert("execution_sent", source, f"sent/{batch[0][1]}",
                                      now_ms, payload),
                      *failed_alerts]
        self.counts["failed"] += sum(1 for a in failed_alerts
                                     if not a.payload.get("will_retry"))
        await self.executor._emit(alerts)
        if outcome == "throttled":
            self.executor.log.warning("execution_rate_limited", account=self.account)

    async def _committed(self, stored: asyncio.Future[None] | None,
                         batch: list[tuple[LegProgress, str, float]]) -> None:
        """Wait for the attempts' commit. If it failed, the request went all the same:
        its orders are looked up (and stored then), and the error goes on to the loop."""
        if stored is None:
            return
        try:
            await asyncio.shield(stored)
        except asyncio.CancelledError:
            await stored
            raise
        except BaseException:
            for item, _, _ in batch:
                item.state = "unknown"
                self._track(item, LOOKUP_AFTER_LOST_S)
            raise

    # -- following orders -----------------------------------------------------------------

    async def _on_update(self, update: OrderUpdate) -> None:
        progress = next((p for p in self.legs.values() if p.client_id == update.client_id),
                        None)
        if progress is None:
            return
        await self._apply(progress, update)

    async def _look_up(self, progress: LegProgress) -> None:
        try:
            update = await self.trader.order(progress.leg, progress.client_id)
        except (RiskmonError, OSError) as e:
            self.executor.log.warning("execution_lookup_failed", account=self.account,
                                      client_id=progress.client_id, error=str(e))
            self._track(progress, self.config.fill_timeout_s)
            return
        key = self._key(progress)
        if update is None:
            if progress.state == "accepted":
                # Accepted, yet unknown to the lookup: the exchange is behind; ask again.
                self._track(progress, self.config.fill_timeout_s)
                return
            if key in self._unconfirmed:  # a recovered trigger's order: never placed
                self._unconfirmed.discard(key)
                source = self.sources.get(progress.leg.alert_id)
                age_ms = self.executor.wall_ms() - (source.emitted_ms if source else 0)
                if age_ms > self.config.max_trigger_age_s * 1000:
                    await self._finish(progress, "give_up", reason="expired")
                    return
            state = progress.step("absent", self.config.max_attempts)
            await self.executor.store.save_execution([progress])
            if state == "pending":
                self._track(progress, 0.0)
            else:
                await self._report_failed(progress, "absent after resends")
            return
        self._unconfirmed.discard(key)
        await self._apply(progress, update)
        if not progress.final and progress.state in ("accepted", "unknown"):
            self._track(progress, self.config.fill_timeout_s)

    async def _apply(self, progress: LegProgress, update: OrderUpdate) -> None:
        """An order's state as the exchange reports it (channel or lookup)."""
        if update.order.order_id:
            progress.order_id = update.order.order_id
        progress.note_fill(update.order.filled, update.average_price)
        max_attempts = self.config.max_attempts
        if update.live:
            if progress.state == "unknown":
                progress.step("found", max_attempts)
            await self.executor.store.save_execution([progress])
            if progress.state == "accepted":
                self._track(progress, self.config.fill_timeout_s)
            return
        now_ms = self.executor.wall_ms()
        done = update.order.filled >= update.order.size - SIZE_EPSILON
        record = {"state": update.state, "filled": update.order.filled,
                  "avg_price": update.average_price, "exchange_ts": update.event_ms}
        attempt = self._attempt(progress, now_ms, update.state or "ended", record)
        if done:
            progress.step("filled", max_attempts)
            self._untrack(progress)
            await self.executor.store.save_execution([progress], [attempt])
            self.counts["filled"] += 1
            source = self.sources.get(progress.leg.alert_id)
            if source is not None:
                filled: ExecutionFilledPayload = {
                    **trigger_fields(source), **self._leg_fields(progress),
                    "order_id": progress.order_id, "filled": progress.total_filled,
                    "avg_price": progress.average_price, "exchange_ts": update.event_ms}
                await self.executor._emit([execution_alert(
                    "execution_filled", source, f"{progress.leg.index}/filled", now_ms,
                    filled)])
            return
        state = progress.step("ended", max_attempts)
        await self.executor.store.save_execution([progress], [attempt])
        reason = "partially filled" if progress.filled > SIZE_EPSILON else "ended unfilled"
        if state == "pending":
            self._retry_later([progress])
            await self.executor._emit([self._failed_alert(progress, reason, will_retry=True)])
        else:
            await self._report_failed(progress, reason)

    async def _finish(self, progress: LegProgress, event: LegEvent, reason: str) -> None:
        progress.step(event, self.config.max_attempts)
        progress.s_msg = progress.s_msg or reason
        await self.executor.store.save_execution([progress])
        await self._report_failed(progress, reason)  # untracks it

    async def _report_failed(self, progress: LegProgress, reason: str) -> None:
        self.counts["failed"] += 1
        self._untrack(progress)
        self.executor.log.error("execution_failed", account=self.account,
                                trigger=progress.leg.alert_id, leg=progress.leg.index,
                                reason=reason, s_code=progress.s_code)
        await self.executor._emit([self._failed_alert(progress, reason, will_retry=False)])

    # -- helpers --------------------------------------------------------------------------

    def _give_up_due(self, progress: LegProgress) -> bool:
        first = progress.first_sent_ms
        return (first is not None and not progress.final
                and self.executor.wall_ms() - first > self.config.give_up_s * 1000)

    def _retry_later(self, items: Sequence[LegProgress]) -> None:
        for item in items:
            delay = backoff_delay(max(1, item.attempt + item.resends), *RETRY_BACKOFF_S,
                                  self._rng)
            self._track(item, delay)

    def _track(self, progress: LegProgress, delay_s: float) -> None:
        key = self._key(progress)
        self.legs[key] = progress
        self.due[key] = time.monotonic() + delay_s

    def _untrack(self, progress: LegProgress) -> None:
        key = self._key(progress)
        self.legs.pop(key, None)
        self.due.pop(key, None)
        self._unconfirmed.discard(key)

    @staticmethod
    def _key(progress: LegProgress) -> tuple[str, int]:
        return (progress.leg.alert_id, progress.leg.index)

    def _attempt(self, progress: LegProgress, now_ms: int, state: str,
                 answer: Mapping[str, Any], dry_run: bool = False) -> OrderAttempt:
        leg = progress.leg
        return OrderAttempt(progress.client_id, leg.alert_id, leg.index, progress.attempt,
                            leg.account, leg.inst_id, leg.side, progress.order_size,
                            progress.first_sent_ms or now_ms, state, answer, dry_run)

    @staticmethod
    def _leg_fields(progress: LegProgress) -> LegFields:
        leg = progress.leg
        return {"leg": leg.index, "inst_id": leg.inst_id, "side": leg.side,
                "pos_side": leg.position_side, "margin_mode": leg.margin_mode,
                "size": leg.size, "client_id": progress.client_id,
                "attempt": progress.attempt}

    def _sent_entry(self, progress: LegProgress, client_id: str, size: float,
                    answer: OrderAnswer) -> SentOrder:
        return {**self._leg_fields(progress), "client_id": client_id, "order_size": size,
                "order_id": answer.order_id, "s_code": answer.s_code,
                "s_msg": answer.s_msg}

    def _failed_alert(self, progress: LegProgress, reason: str, *, will_retry: bool) -> Alert:
        source = self.sources[progress.leg.alert_id]
        step = f"{progress.leg.index}/{progress.attempt}/{progress.resends}/failed"
        kind: AlertKind = "execution_failed"
        payload: ExecutionFailedPayload = {
            **trigger_fields(source), **self._leg_fields(progress), "reason": reason,
            "s_code": progress.s_code, "s_msg": progress.s_msg, "will_retry": will_retry,
            "filled": progress.total_filled, "remaining": progress.remaining,
            "max_attempts": self.config.max_attempts}
        return execution_alert(kind, source, step, self.executor.wall_ms(), payload)
