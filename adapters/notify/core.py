"""A notifier: a sink that follows SQLite, with its own queue and delivery task.

Shape (STYLE: one owner per resource). The SQLite sink's followers get a batch only after
it is committed (persist before publish); a :class:`Notifier` is one of them. Its
``write`` never waits: it notes the newly stored alerts its filter keeps in its own
bounded queue and wakes its delivery task, which is the only one that talks to the
destination. So a slow or failing destination delays nothing but its own deliveries.

Delivery is at-least-once, in store order, by insertion number ``seq``:

- ``delivered`` (persisted in ``notifier_cursor``): every kept alert with a ``seq`` at or
  below it has been delivered.
- ``fetched``: every kept alert at or below it is delivered or in ``ready`` (the alerts
  about to be sent, in ``seq`` order).
- the live queue holds every kept alert published with a ``seq`` in
  ``(live_from, seen]``; when it is full it is emptied and ``live_from`` moves to the
  alert that did not fit, so nothing is lost: what is not in memory is read back from the
  store. Whenever ``fetched < live_from`` the task reads the store in pages after
  ``fetched`` and not past the ``seen`` noted before it (a catch-up, like a stream
  subscriber's: an alert committed but not yet synced, adapters/sinks.py, is not read
  before it is published); a page shorter than asked for covers everything up to that
  ``seen``, so ``fetched`` moves to it, and the live queue takes over. At start
  ``live_from`` is the newest ``seq`` stored, so what the previous run stored and did not
  deliver is read first.

Before each message the cursor is saved with the message's first and last ``seq``
(in flight); after the destination accepted it the next save moves ``delivered`` past
it. After a crash the message in flight is rebuilt from the same stored alerts and sent
again first, with the same idempotency key: that one message is the only duplicate a
crash can cause (the cursor connection commits without fsync, so after a power loss
rather than a process crash, the messages since the last checkpoint of the WAL may be
sent again too, each with its key).

Rate limit: a token bucket per destination (``rate_per_s``, ``burst``). An alert waiting
alone goes as its own message when a token is there; when more alerts wait than tokens
are left, the last token carries one summary of all of them (up to
:data:`SUMMARY_MAX`), so a burst is never dropped, only collapsed. Alertmanager batches
instead (one POST holds every waiting alert, nothing is lost by batching).

Retries: every failure (connection, timeout, 408/429/5xx, and other refusals too: a
wrong token or URL is fixed by the operator, and the backlog must still be there when it
is) is retried with capped, jittered exponential backoff (adapters/backoff.py), waiting
at least what the destination's ``Retry-After`` asks. A message is never skipped;
``riskmon_notifier_failures_total`` and ``riskmon_notifier_lag_seconds`` show a stuck one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

import httpx

from adapters.backoff import backoff_delay
from adapters.logging import get_logger
from monitor.core.alerts import LEVEL_RANK, Alert, AlertKind
from monitor.core.batch import Batch
from monitor.core.errors import SinkError
from monitor.core.records import NotifierCursor, StoredAlert
from monitor.core.settings import NotifierConfig
from monitor.runtime.stream import AlertFilter

PAGE_SIZE: Final = 500
NOTICES_HELD: Final = 16
"""Storage notices a notifier holds while its destination does not take them (the oldest
goes first when more come)."""
SUMMARY_MAX: Final = 500
"""The most alerts one summary (or Alertmanager batch) covers."""

# The alert that ends another: a filter that keeps the one keeps the other, so whoever was
# told something started also hears that it ended.
ENDED_BY: Final[Mapping[AlertKind, AlertKind]] = {
    "feed_recovered": "feed_stale",
    "feed_connected": "feed_disconnected",
}

MessageMode = Literal["alert", "summary", "batch"]


class NotifyFilter:
    """:class:`~monitor.runtime.stream.AlertFilter` (accounts, kinds, minimum level), plus the
    alerts that end what it keeps: the level change out of a level at or above
    ``min_level`` (its ``from_level`` passes), ``feed_recovered`` with ``feed_stale``,
    ``feed_connected`` with ``feed_disconnected``."""

    def __init__(self, alert_filter: AlertFilter) -> None:
        self.filter = alert_filter
        kinds = alert_filter.kinds
        self.query_kinds: frozenset[str] | None = None if kinds is None else frozenset(
            kinds | {ending for ending, started in ENDED_BY.items() if started in kinds})

    def matches(self, alert: Alert) -> bool:
        f = self.filter
        if f.accounts is not None and alert.account not in f.accounts:
            return False
        if self.query_kinds is not None and alert.kind not in self.query_kinds:
            return False
        floor = LEVEL_RANK[f.min_level]
        if LEVEL_RANK[alert.level] >= floor:
            return True
        return (alert.kind == "level_changed" and alert.from_level is not None
                and LEVEL_RANK[alert.from_level] >= floor)


@dataclass(frozen=True, slots=True)
class Message:
    """What one request delivers: one alert, a summary of several, or a batch."""

    alerts: tuple[StoredAlert, ...]
    mode: MessageMode

    @property
    def first_seq(self) -> int:
        return self.alerts[0].seq

    @property
    def last_seq(self) -> int:
        return self.alerts[-1].seq

    @property
    def key(self) -> str:
        """The idempotency key: the alert's id; for a summary or batch, the first and
        last ids it covers (the same after a restart: see the module docstring)."""
        first, last = self.alerts[0].alert.id, self.alerts[-1].alert.id
        if self.mode == "alert":
            return first
        return f"{self.mode}:{first}:{last}"


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP POST to a destination."""

    url: str
    content: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StorageNotice:
    """riskmon's own storage: its writes have been failing since ``since_s`` (wall time;
    ``failing``), or they work again (``failing`` False, at ``at_s``). While they fail, the
    alerts wait in memory (persist before publish), so no notifier would hear of them:
    this notice says so instead (README "Storage faults while running"). ``error`` is
    SQLite's reason (a path and a message: no secret); ``waiting`` the records held."""

    failing: bool
    since_s: float
    at_s: float
    error: str
    waiting: int

    @property
    def key(self) -> str:
        """The idempotency key: the fault (its start) and which end of it."""
        return f"storage:{int(self.since_s * 1000)}:{'failing' if self.failing else 'recovered'}"

    def to_dict(self) -> dict[str, object]:
        """The notice as the webhook's JSON carries it (times in ms)."""
        return {"kind": "storage_failing" if self.failing else "storage_recovered",
                "since_ts": int(self.since_s * 1000), "ts": int(self.at_s * 1000),
                "error": self.error, "waiting_records": self.waiting}


class DeliveryFailed(Exception):
    """The destination did not take the message; ``reason`` holds no secret."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class Destination(Protocol):
    """What differs between destinations: the request for a message and how to read the
    answer. ``batches``: one request carries many alerts (no summary needed)."""

    batches: bool
    secrets: tuple[str, ...]
    refresh_interval_s: float | None

    def build(self, message: Message, now_s: float) -> Request: ...

    def check(self, response: httpx.Response) -> None: ...

    def delivered(self, message: Message) -> None: ...

    def refresh(self, now_s: float) -> Request | None: ...

    def notice(self, notice: StorageNotice, now_s: float) -> Request: ...


class NotifierStore(Protocol):
    """The stored alerts and cursors (adapters.sqlite_store.SqliteStore is one)."""

    async def stored_alerts(
        self, after_seq: int, *, accounts: Collection[str] | None = None,
        kinds: Collection[str] | None = None, levels: Collection[str] | None = None,
        limit: int | None = None, up_to_seq: int | None = None,
    ) -> list[StoredAlert]: ...

    async def save_notifier_cursor(self, cursor: NotifierCursor) -> None: ...


class TokenBucket:
    """``rate_per_s`` tokens a second, at most ``burst`` saved up; time is passed in."""

    def __init__(self, rate_per_s: float, burst: int, now_s: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._at = now_s

    def tokens(self, now_s: float) -> float:
        self._tokens = min(float(self.burst),
                           self._tokens + max(0.0, now_s - self._at) * self.rate_per_s)
        self._at = max(self._at, now_s)
        return self._tokens

    def wait_s(self, now_s: float) -> float:
        """Seconds until a whole token is there (0: now)."""
        missing = 1.0 - self.tokens(now_s)
        return 0.0 if missing <= 0 else missing / self.rate_per_s

    def take(self, now_s: float) -> None:
        self.tokens(now_s)
        self._tokens -= 1.0


def default_response_check(response: httpx.Response) -> None:
    """2xx is delivered; anything else fails, with ``Retry-After`` (seconds) if given."""
    if 200 <= response.status_code < 300:
        return
    raise DeliveryFailed(f"HTTP {response.status_code}", retry_after_header(response))


def retry_after_header(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: the backoff decides


class Notifier:
    """One destination's sink and delivery task (see the module docstring).

    The pipeline calls :meth:`write` and :meth:`close` (it is a follower of the SQLite
    sink); the owner calls :meth:`start` and, at the end, :meth:`stop`.
    """

    def __init__(self, config: NotifierConfig, destination: Destination, store: NotifierStore,
                 *, cursor: NotifierCursor, last_seq: int,
                 client: httpx.AsyncClient | None = None,
                 clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.name = f"notify:{config.name}"
        self.destination = destination
        self.store = store
        self.filter = NotifyFilter(AlertFilter.of(config.accounts, config.kinds,
                                                  config.min_level))
        self.clock = clock
        self.rng = rng or random.Random()
        self.client = client or httpx.AsyncClient(
            timeout=config.timeout_s, follow_redirects=False,
            headers={"User-Agent": "riskmon-notifier"})
        self.bucket = (TokenBucket(config.rate_per_s, config.burst, clock())
                       if config.rate_per_s > 0 else None)
        self.deliveries = 0
        self.failures = 0
        self.delivered = cursor.delivered_seq
        self.fetched = cursor.delivered_seq
        self.ready: deque[StoredAlert] = deque()
        self.live: deque[StoredAlert] = deque()
        self.live_from = max(last_seq, cursor.delivered_seq)
        self.seen = self.live_from
        self._inflight = cursor if cursor.inflight_first_seq is not None else None
        self._saved = cursor
        self._sending: Message | None = None
        self._notices: deque[StorageNotice] = deque(maxlen=NOTICES_HELD)
        self._noticed = asyncio.Event()
        self._wake = asyncio.Event()
        self._input_ended = False
        self._task: asyncio.Task[None] | None = None
        self._next_refresh_s = clock() + (destination.refresh_interval_s or 0.0)
        self._log = get_logger("riskmon.notify")

    # -- the sink (the pipeline's side) -------------------------------------------------

    async def write(self, batch: Batch) -> None:
        """Queue the newly stored alerts the filter keeps; never waits."""
        limit = self.config.queue_size
        for record in batch.stored:
            self.seen = record.seq
            if not self.filter.matches(record.alert):
                continue
            if len(self.live) >= limit:
                # Full: forget the queue; the delivery task reads these from the store.
                self.live.clear()
                self.live_from = record.seq
                continue
            self.live.append(record)
        self._wake.set()

    async def close(self) -> None:
        """No more alerts will come (the pipeline is draining)."""
        self._input_ended = True
        self._wake.set()

    def notice(self, notice: StorageNotice) -> None:
        """Deliver ``notice`` before any further alert (it never waits: the delivery task
        sends it, retrying as for alerts, and no cursor is saved for it)."""
        self._notices.append(notice)
        self._wake.set()
        self._noticed.set()

    # -- lifecycle (the owner's side) ---------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self, grace_s: float) -> None:
        """Deliver what is waiting for up to ``grace_s``, then stop, saving the cursor
        (a message still being sent stays in flight: it is sent again after a restart)."""
        self._input_ended = True
        self._wake.set()
        task = self._task
        if task is not None:
            done, _ = await asyncio.wait([task], timeout=grace_s)
            if not done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        try:
            await self._save(self._current_cursor())
        except SinkError as e:
            self._log.warning("notifier_cursor_not_saved", notifier=self.config.name,
                              error=str(e))
        await self.client.aclose()

    @property
    def queue_depth(self) -> int:
        """Stored alerts this notifier holds in memory, not yet delivered."""
        return len(self.ready) + len(self.live)

    def lag_s(self, now_s: float) -> float:
        """Age of the oldest stored alert known to be waiting (0 when none is)."""
        oldest = self.ready[0] if self.ready else self.live[0] if self.live else None
        if oldest is None:
            return 0.0
        return max(0.0, now_s - oldest.alert.emitted_ms / 1000)

    # -- the delivery task --------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                if await self._step():
                    return
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a notifier must not stop monitoring
                # The store could not be read or the cursor saved (SinkError), or a bug:
                # logged and counted; the task carries on from its cursor after a pause.
                failures += 1
                self.failures += 1
                self._log.error("notifier_error", notifier=self.config.name,
                                error=self._scrub(f"{type(e).__name__}: {e}"))
                # A notice cuts the pause short: the store failing is what it is about.
                self._noticed.clear()
                if not self._notices:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._noticed.wait(), backoff_delay(
                            failures - 1, self.config.backoff_initial_s,
                            self.config.backoff_max_s, self.rng))

    async def _step(self) -> bool:
        """Deliver one message, or wait for alerts; True once there is nothing left and
        no more will come."""
        if self._notices:
            await self._deliver_notice(self._notices[0])
            self._notices.popleft()
            return False
        await self._maybe_refresh()
        if self._inflight is not None:
            message = await self._resume_inflight()
            self._inflight = None
            if message is None:
                return False
        else:
            await self._fill(1)
            if not self.ready:
                self.delivered = self.fetched
                await self._save(self._current_cursor())
                if self._input_ended and not self.live and self.fetched >= self.live_from:
                    return True
                await self._wait_for_alerts()
                return False
            message = await self._next_message()
        await self._deliver(message)
        return False

    async def _wait_for_alerts(self) -> None:
        self._wake.clear()
        if self.live or self.fetched < self.live_from or self._input_ended or self._notices:
            return
        timeout = None
        if self.destination.refresh_interval_s is not None:
            timeout = max(0.0, self._next_refresh_s - self.clock())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _fill(self, want: int) -> None:
        """Make ``ready`` hold ``want`` alerts where that many are waiting."""
        while len(self.ready) < want:
            if self.fetched >= self.live_from:
                while self.live and len(self.ready) < want:
                    stored = self.live.popleft()
                    if stored.seq > self.fetched:
                        self.ready.append(stored)
                        self.fetched = stored.seq
                if not self.live:
                    self.fetched = max(self.fetched, self.seen)
                return
            mark = self.seen
            # A page no larger than the queue (or than what a summary takes).
            limit = min(PAGE_SIZE, max(self.config.queue_size, want - len(self.ready)))
            page = await self.store.stored_alerts(
                self.fetched, accounts=self.filter.filter.accounts,
                kinds=self.filter.query_kinds, limit=limit, up_to_seq=mark)
            self.ready.extend(s for s in page if self.filter.matches(s.alert))
            if len(page) < limit:
                # Everything up to the mark is in it (module docstring).
                self.fetched = max(page[-1].seq if page else self.fetched, mark)
            else:
                self.fetched = page[-1].seq

    async def _next_message(self) -> Message:
        """The next message from ``ready``, once the rate limit allows one."""
        bucket = self.bucket
        if bucket is not None:
            wait = bucket.wait_s(self.clock())
            if wait > 0:
                await asyncio.sleep(wait)
            now = self.clock()
            tokens = int(bucket.tokens(now))
            await self._fill(tokens + 1)
            bucket.take(now)
            collapse = len(self.ready) > tokens and tokens <= 1
        else:
            collapse = False
        if self.destination.batches:
            await self._fill(SUMMARY_MAX)
            return Message(self._take(SUMMARY_MAX), "batch")
        if collapse:
            await self._fill(SUMMARY_MAX)
            return Message(self._take(SUMMARY_MAX), "summary")
        return Message(self._take(1), "alert")

    def _take(self, count: int) -> tuple[StoredAlert, ...]:
        return tuple(self.ready[i] for i in range(min(count, len(self.ready))))

    async def _resume_inflight(self) -> Message | None:
        """The message a previous run had in flight, rebuilt from the store."""
        inflight = self._inflight
        assert inflight is not None and inflight.inflight_last_seq is not None
        last = inflight.inflight_last_seq
        while True:
            before = len(self.ready)
            await self._fill(len(self.ready) + PAGE_SIZE)
            if len(self.ready) == before or self.ready[-1].seq >= last:
                break
        alerts = tuple(s for s in self.ready if s.seq <= last)
        if not alerts:
            return None  # pruned meanwhile
        if self.destination.batches:
            mode: MessageMode = "batch"
        else:
            mode = "summary" if inflight.inflight_summary and len(alerts) > 1 else "alert"
            if mode == "alert":
                alerts = alerts[:1]
        if self.bucket is not None:
            self.bucket.take(self.clock())
        return Message(alerts, mode)

    async def _deliver(self, message: Message) -> None:
        """Send until the destination takes it (retries never give up), then advance."""
        self._sending = message
        await self._save(self._current_cursor())
        await self._until_taken(lambda: self.destination.build(message, self.clock()),
                                alerts=len(message.alerts))
        self.destination.delivered(message)
        for _ in message.alerts:
            self.ready.popleft()
        self._sending = None
        self.delivered = self.ready[0].seq - 1 if self.ready else self.fetched

    async def _deliver_notice(self, notice: StorageNotice) -> None:
        """Send a notice until the destination takes it (as :meth:`_deliver`, without a
        cursor: a notice lost to a restart is made again if the fault is still there)."""
        await self._until_taken(lambda: self.destination.notice(notice, self.clock()),
                                notice=notice.key)

    async def _until_taken(self, request: Callable[[], Request], **about: object) -> None:
        """Post ``request()`` (built anew for each attempt) until the destination takes
        it, with capped, jittered backoff, at least its Retry-After, between attempts."""
        failures = 0
        while True:
            reason, retry_after = await self._post(request())
            if reason is None:
                break
            failures += 1
            self.failures += 1
            delay = max(retry_after or 0.0,
                        backoff_delay(failures - 1, self.config.backoff_initial_s,
                                      self.config.backoff_max_s, self.rng))
            self._log.warning("notifier_retry", notifier=self.config.name,
                              attempt=failures, reason=reason, retry_in_s=round(delay, 3),
                              **about)
            await asyncio.sleep(delay)
        self.deliveries += 1

    async def _post(self, request: Request) -> tuple[str | None, float | None]:
        """One request; (None, None) when delivered, else the reason and Retry-After."""
        try:
            response = await self.client.post(request.url, content=request.content,
                                              headers=dict(request.headers))
            self.destination.check(response)
        except DeliveryFailed as e:
            return self._scrub(e.reason), e.retry_after_s
        except httpx.TimeoutException as e:
            return f"timeout ({type(e).__name__})", None
        except httpx.HTTPError as e:
            # Transport errors; the text is scrubbed of the secrets a URL may hold.
            return self._scrub(f"{type(e).__name__}: {e}"), None
        return None, None

    async def _maybe_refresh(self) -> None:
        """Alertmanager's periodic re-send of what is firing (one try; the next interval
        tries again)."""
        interval = self.destination.refresh_interval_s
        now = self.clock()
        if interval is None or now < self._next_refresh_s:
            return
        self._next_refresh_s = now + interval
        request = self.destination.refresh(now)
        if request is None:
            return
        reason, _ = await self._post(request)
        if reason is not None:
            self.failures += 1
            self._log.warning("notifier_refresh_failed", notifier=self.config.name,
                              reason=reason)

    def _current_cursor(self) -> NotifierCursor:
        sending = self._sending
        if sending is None:
            if self._inflight is not None:
                return self._inflight  # not resumed yet: keep what the last run left
            return NotifierCursor(self.config.name, self.delivered)
        return NotifierCursor(self.config.name, self.delivered, sending.first_seq,
                              sending.last_seq, sending.mode != "alert")

    async def _save(self, cursor: NotifierCursor) -> None:
        if cursor != self._saved:
            await self.store.save_notifier_cursor(cursor)
            self._saved = cursor

    def _scrub(self, text: str) -> str:
        """``text`` with every secret of the destination replaced by ``***``."""
        for secret in self.destination.secrets:
            if secret:
                text = text.replace(secret, "***")
        return text[:300]
