"""riskmon inside a program: the daemon of ``riskmon run``, as an object (SPEC 4, 5).

A composition root like monitor/app/cli.py (it wires the venues' feeds (monitor/runtime/venues.py),
one engine per venue, SQLite and the HTTP face together); ``riskmon run`` is this class plus signal
handling. A program that embeds riskmon runs one and iterates its alerts::

    monitor = await Monitor.open(load_config("riskmon.toml"))
    stop = asyncio.Event()
    runner = asyncio.create_task(monitor.run(stop))
    async for alert in monitor.subscribe(accounts=["main"], min_level="deleverage"):
        ...                      # e.g. stop opening positions
    stop.set(); await runner

:meth:`Monitor.subscribe` has the filter semantics of the websocket stream (monitor.runtime.stream,
adapters/alert_stream.py): alerts reach a subscription only after SQLite stored them;
``since`` an alert id (or ``"earliest"``) first replays what is stored after it; a
subscription that falls more than ``[stream] queue_size`` alerts behind raises
:class:`~monitor.runtime.stream.SubscriberOverflow` (after the alerts it holds), and another
subscription ``since`` the last id received carries on without a gap. Tokens restrict
remote clients only: a program in the same process sees every account.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import time
from collections.abc import Callable, Collection, Mapping
from http import HTTPStatus
from typing import Any

from adapters.alert_stream import AlertStreamHandler, load_tokens, token_scope
from adapters.executor import Executor
from adapters.http_server import Control, HttpServer
from adapters.logging import get_logger
from adapters.notify import Notifiers
from adapters.sinks import LogSink, SqliteSink
from adapters.sqlite_store import SqliteStore, WalCheckpointer
from adapters.venues import VENUES
from monitor.app.status import status_document
from monitor.core.alerts import Alert
from monitor.core.batch import Batch
from monitor.core.engine import MarginEngine
from monitor.core.errors import ConfigError, SinkError
from monitor.core.events import OrderUpdate
from monitor.core.execution import Trader
from monitor.core.settings import Config
from monitor.runtime.daemon import Daemon, Lane
from monitor.runtime.feed import FeedItem, Inbox
from monitor.runtime.pipeline import SinkTask
from monitor.runtime.stream import AlertFilter, AlertHub, Subscription
from monitor.runtime.venues import Registry, VenueUse, resolve_venues, venue_config

STORAGE_WATCH_S = 1.0
"""How often the daemon's store is looked at for the notifiers' storage notices."""


class Monitor:
    """The live daemon with its store, alert hub and (optionally) HTTP face."""

    def __init__(self, config: Config, daemon: Daemon, store: SqliteStore,
                 reader: SqliteStore, hub: AlertHub, tokens: Mapping[str, frozenset[str]],
                 *, serve_http: bool, notifiers: Notifiers | None = None,
                 executor: Executor | None = None, control_token: str | None = None,
                 checkpointer: WalCheckpointer | None = None) -> None:
        """Use :meth:`open`."""
        self.config = config
        self.daemon = daemon
        self.store = store
        self.hub = hub
        self.notifiers = notifiers or Notifiers([], None)
        self.executor = executor
        self._control_token = control_token
        self._reader = reader
        self._tokens = tokens
        self._serve_http = serve_http
        self.port: int | None = None
        self.started = asyncio.Event()
        self._http: HttpServer | None = None
        self._stream_handler: AlertStreamHandler | None = None
        self._checkpointer = checkpointer

    @classmethod
    async def open(cls, config: Config, *,
                   credentials: Mapping[str, Any] | None = None,
                   serve_http: bool = True, venues: Registry = VENUES) -> Monitor:
        """Open the store (restoring the accounts' level state) and build the daemon.

        ``credentials`` (by account, each of its venue's type) default to those the
        configuration names (environment or a 0600 file). ``venues``: the registry the
        accounts' venues come from. ``serve_http``: serve ``/healthz``, ``/metrics`` and
        the alert stream on ``[stream] host:port`` while running. Raises ConfigError (a
        missing secret or stream token, an unsafe stream address, a venue's table) and
        SinkError (the database).

        Each ``[notify.NAME]`` destination gets a notifier following the SQLite sink
        (adapters/notify): it delivers what SQLite stored, from its saved cursor on.
        """
        uses = daemon_venues(config, venues)
        if credentials is None:
            credentials = load_all_credentials(config, uses)
        tokens = load_tokens(config.stream.tokens)
        if serve_http:
            check_stream_exposure(config)
        control_token = control_token_of(config) if config.executing_accounts() else None
        log = get_logger("riskmon.daemon")
        path = config.storage.sqlite_path
        # Every connection of the daemon leaves checkpoints to the checkpointer's own
        # (adapters/sqlite_store.WalCheckpointer): none of its commits copies the WAL.
        async with contextlib.AsyncExitStack() as opened:
            checkpointer = await WalCheckpointer.open(
                path, interval_s=config.storage.checkpoint_interval_s,
                on_error=lambda error: log.warning("sqlite_checkpoint_failed", error=error))
            opened.push_async_callback(checkpointer.close)
            # The alerts' store first: it migrates the schema and proves the file takes
            # writes, so a read-only, locked or corrupt file fails before anything else.
            store = await SqliteStore.open(path, retention_days=config.storage.retention_days,
                                           synchronous=config.storage.synchronous,
                                           quarantine_max_rows=config.quarantine.store_max_rows,
                                           auto_checkpoint=False, writable=True)
            opened.push_async_callback(store.close)
            # The first minute's commits overwrite the WAL rather than lengthen it.
            await checkpointer.reserve()
            notifiers = await Notifiers.open(config.notify, path, auto_checkpoint=False,
                                             retention_days=config.storage.retention_days)
            opened.push_async_callback(notifiers.stop, 0)
            executor: Executor | None = None
            if config.executing_accounts():
                executor = await open_executor(config, path, uses)
                opened.push_async_callback(executor.stop)
            # Catch-up reads for subscribers use a connection of their own: in WAL mode
            # they then never wait for, nor delay, the alert writes.
            reader = await SqliteStore.open(path, retention_days=config.storage.retention_days,
                                            read_only=True)
            opened.push_async_callback(reader.close)
            hub = AlertHub(reader, queue_size=config.stream.queue_size,
                           last_id=await reader.last_alert_id(),
                           last_seq=await reader.last_alert_seq())

            def on_retry(name: str, attempt: int, error: SinkError) -> None:
                log.warning("sink_retry", sink=name, attempt=attempt, error=str(error))

            followers = [SinkTask(LogSink()), SinkTask(hub),
                         *(SinkTask(n) for n in notifiers.notifiers)]
            # max_attempts=None: a storage fault holds the alerts in memory (bounded by
            # the queue; /healthz degraded) until it clears, rather than stopping.
            # The executor observes the store (persist before act): it gets each stored
            # trigger in the store's own task, before the followers' turns, and unless
            # execution.sync_before_send, as soon as it is committed, while it is synced.
            observers: list[Callable[[Batch], None]] = []
            urgent: Callable[[Alert], bool] | None = None
            if executor is not None:
                observers.append(executor.offer)
                if not config.execution.sync_before_send:
                    urgent = executor.acts_on
            sink = SqliteSink(store, prune=True, observers=observers, urgent=urgent)
            head = SinkTask(sink, followers=followers, on_retry=on_retry, max_attempts=None)
            daemon = build_daemon(config, credentials, head, uses=uses,
                                  order_observer=executor.on_order if executor else None)
            if executor is not None:
                executor.emit = head.put
                executor.live_positions = daemon.live_positions
                daemon.checks.append(executor.failures)
            daemon.restore(await store.load_checkpoints())
            opened.pop_all()  # opened: from now on run() closes them
        return cls(config, daemon, store, reader, hub, tokens, serve_http=serve_http,
                   notifiers=notifiers, executor=executor, control_token=control_token,
                   checkpointer=checkpointer)

    def subscribe(self, *, accounts: Collection[str] | None = None,
                  kinds: Collection[str] | None = None, min_level: str = "normal",
                  since: str | None = None) -> Subscription:
        """Alerts matching the filter, as an async iterator (see the module docstring).

        Without ``since`` it delivers alerts stored from this call on. Raises ValueError
        for an unknown kind or level; an unknown ``since`` raises
        :class:`~monitor.runtime.stream.UnknownAlertId` when iteration starts.
        """
        return self.hub.subscribe(AlertFilter.of(accounts, kinds, min_level), since=since)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then drain every sink (subscriptions end after the
        last stored alert) and close the store. Runs once."""
        log = get_logger("riskmon.daemon")
        http: HttpServer | None = None
        watcher: asyncio.Task[None] | None = None
        try:
            if self._serve_http:
                control = None
                if self.executor is not None and self._control_token is not None:
                    executor = self.executor

                    async def operate(op: str) -> dict[str, Any]:
                        await executor.set_paused(op == "pause")
                        return executor.status()

                    control = Control(self._control_token, executor.status, operate)
                limits = self.config.stream
                self._stream_handler = AlertStreamHandler(
                    self.hub, self._tokens, heartbeat_s=limits.heartbeat_s,
                    subscribe_timeout_s=limits.subscribe_timeout_s,
                    send_timeout_s=limits.send_timeout_s)
                http = HttpServer(self.daemon.health, self._metrics_text,
                                  self._stream_handler, self._status, control, limits)
                self._http = http
                host, port = self.config.stream.host, self.config.stream.port
                try:
                    self.port = await http.start(host, port)
                except OSError as e:
                    raise ConfigError("stream.port", f"cannot listen on {host}:{port}:"
                                                     f" {e.strerror or e}") from e
            if self._checkpointer is not None:
                self._checkpointer.start()
            self.notifiers.start()
            if self.notifiers.notifiers:
                watcher = asyncio.create_task(self._watch_storage(), name="storage-watch")
            if self.executor is not None:
                self.executor.start()
            self.started.set()
            # The executor stops before the sink chain drains: the alerts it emits while
            # finishing its turn are stored (what is still open is stored too; the next
            # start looks it up before sending).
            await self.daemon.run(stop, before_drain=self._stop_executor)
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            await self._stop_executor()  # when the daemon never ran, or failed
            # The sink chain has drained: the notifiers have every stored alert; they get
            # a short grace to deliver it (what is left goes after the next start).
            await self.notifiers.stop()
            if http is not None:
                await http.close()
            # The sink chain closed the store if the daemon ran; if it never started (the
            # port was taken) this does, or its worker thread would keep the process alive.
            await self.store.close()
            await self._reader.close()
            if self._checkpointer is not None:
                # The last connection to close: it checkpoints what is left.
                await self._checkpointer.close()
            stats = self.daemon.stats
            log.info("daemon_stopped", events=stats.events, alerts=stats.alerts,
                     quarantined=stats.quarantined)

    async def _watch_storage(self) -> None:
        """Once a second: tell the notifiers when the daemon's SQLite writes have been
        failing for ``storage.fault_notice_after_s``, and when they work again (their
        alerts wait for the store meanwhile: persist before publish)."""
        head = self.daemon.head
        after_s = self.config.storage.fault_notice_after_s
        while True:
            self.notifiers.storage(head.retrying, head.waiting_records, time.time(), after_s)
            await asyncio.sleep(STORAGE_WATCH_S)

    async def _stop_executor(self) -> None:
        if self.executor is not None:
            await self.executor.stop()

    def status(self, accounts: Collection[str] | None = None) -> dict[str, Any]:
        """Every account's figures now (monitor.app.status); ``accounts`` keeps those."""
        return status_document("daemon", self.daemon.now_ms, self.daemon.state(),
                               self.config.risk, only=accounts)

    def _status(self, token: str | None) -> tuple[HTTPStatus, dict[str, Any]]:
        """``GET /v1/status``: scoped by the token like the alert stream."""
        if not self._tokens:
            return HTTPStatus.OK, self.status()
        scope = None if token is None else token_scope(self._tokens, token)
        if scope is None:
            return HTTPStatus.UNAUTHORIZED, {"error": "unauthorized",
                                             "msg": "a known token is required"}
        return HTTPStatus.OK, self.status(scope)

    def _metrics_text(self, now: float) -> str:
        self.daemon.refresh_gauges()
        metrics = self.daemon.metrics
        metrics.stream_subscribers = self.hub.subscribers
        metrics.stream_cut_off = self.hub.cut_off
        if self._http is not None and self._stream_handler is not None:
            metrics.stream_connections = self._http.connections
            metrics.stream_pending = self._http.pending
            metrics.stream_closed = dict(self._http.gate.closed + self._stream_handler.closed)
        self.notifiers.update_metrics(self.daemon.metrics, now)
        if self.executor is not None:
            self.executor.update_metrics(self.daemon.metrics)
        return self.daemon.metrics.render(now)


def daemon_venues(config: Config, venues: Registry = VENUES) -> tuple[VenueUse, ...]:
    """The venues a daemon follows: every venue an account is on, in configuration order
    (a venue table no account uses is read, and not followed). Without accounts, the one
    venue configured (ConfigError when there are tables for several)."""
    uses = resolve_venues(config, venues)
    active = tuple(use for use in uses.values() if use.accounts)
    if active:
        return active
    if len(uses) > 1:
        raise ConfigError("venues", f"tables for several venues ({', '.join(uses)}) and no "
                          "account: an [accounts.NAME] with its venue says which to follow")
    return tuple(uses.values())


def single_venue(config: Config, venues: Registry = VENUES) -> VenueUse:
    """The one venue of a recording (``riskmon record`` writes one venue's feed, ``replay``
    reads one); ConfigError for a configuration whose accounts are on several."""
    uses = daemon_venues(config, venues)
    if len(uses) > 1:
        raise ConfigError("accounts", "the accounts are on more than one venue ("
                          f"{', '.join(use.venue.name for use in uses)}), and a recording "
                          "holds one venue's feed: record and replay with a configuration "
                          "of one venue's accounts")
    return uses[0]


def load_all_credentials(config: Config, uses: Collection[VenueUse]) -> dict[str, Any]:
    """Every configured account's API credentials, as its venue (of ``uses``) loads them;
    a live feed needs at least one account."""
    if not config.accounts:
        raise ConfigError("accounts", "a live feed needs at least one [accounts.NAME] table")
    return {name: use.venue.credentials(config.accounts[name])
            for use in uses for name in use.accounts}


def check_stream_exposure(config: Config) -> None:
    """SPEC 6: without tokens the stream port stays on loopback."""
    host = config.stream.host
    if config.stream.tokens:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError("stream.host", f"{host!r} is not a loopback address and "
                                         "[stream] has no tokens: refusing to serve alerts "
                                         "unauthenticated")


def control_token_of(config: Config, environ: Mapping[str, str] = os.environ) -> str:
    """The kill switch's token: execution does not start without one."""
    variable = config.execution.control_token_env
    token = environ.get(variable, "")
    if not token:
        raise ConfigError("execution.control_token_env",
                          f"environment variable {variable} is not set: execution needs a "
                          "kill switch (riskmon executor pause), and the switch a token")
    return token


async def open_executor(config: Config, sqlite_path: str,
                        uses: Collection[VenueUse]) -> Executor:
    """The executor of the executing accounts, each with its trade key and client on its
    venue (of ``uses``); it refuses to start (ConfigError) when a key cannot trade."""
    traders: dict[str, Trader] = {}
    on = {name: use for use in uses for name in use.accounts}
    for name in config.executing_accounts():
        use = on[name]
        traders[name] = use.venue.trader(use.settings, name,
                                         use.venue.trade_credentials(config.accounts[name]),
                                         timeout_s=config.execution.request_timeout_s)
    executor = await Executor.open(config.execution, traders, sqlite_path,
                                   retention_days=config.storage.retention_days,
                                   auto_checkpoint=False)
    try:
        await executor.check_keys()
    except BaseException:
        await executor.stop()
        raise
    return executor


def build_daemon(config: Config, credentials: Mapping[str, Any], head: SinkTask,
                 tap: Callable[[FeedItem], None] | None = None,
                 order_observer: Callable[[OrderUpdate], None] | None = None, *,
                 uses: Collection[VenueUse] | None = None) -> Daemon:
    """A lane per venue (its feed, inbox, decoder and an engine of its accounts) around the
    sink chain ``head`` (``uses``: the configuration's venues, from the built-in registry
    by default); ``tap`` sees every feed item first (``riskmon record``)."""
    uses = uses or daemon_venues(config)
    several = len(uses) > 1
    ready = asyncio.Event()  # the lanes' inboxes share it (monitor.runtime.feed.Inbox)
    lanes = []
    for use in uses:
        inbox = Inbox(ready=ready)
        deliver = inbox.put
        if tap is not None:
            def deliver(item: FeedItem, inbox: Inbox = inbox) -> None:
                tap(item)
                inbox.put(item)
        mine = ({name: key for name, key in credentials.items() if name in use.accounts}
                if several else credentials)
        # Instrument specs always load from the feed; configured ones override them per
        # inst_id in the engine (SPEC 3.1).
        feed = use.venue.feed(use.settings, mine, deliver,
                              collateral=config.collateral.keys())
        lanes.append(Lane(MarginEngine(venue_config(config, use)), use.venue.decoder(), feed,
                          inbox, use.venue.name if several else None))
    return Daemon(lanes, head, history_interval_ms=int(config.storage.history_interval_s * 1000),
                  quarantine=config.quarantine, health=config.health,
                  order_observer=order_observer)
