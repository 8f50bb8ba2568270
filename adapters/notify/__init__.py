"""Notifiers: stored alerts to people and on-call systems (``[notify.NAME]``).

Each configured destination is a :class:`~adapters.notify.core.Notifier`: a follower of
the SQLite sink (it only ever sees what SQLite committed) with its own bounded queue,
delivery task, HTTP client, rate limit and delivery cursor in SQLite. How delivery,
retries, the rate limit and restarts work is in :mod:`adapters.notify.core`; what each
destination sends is in :mod:`adapters.notify.destinations`.

:class:`Notifiers` is what the daemon (monitor.app.service) holds: it reads the secrets from
the environment, opens the cursor connection, and starts and stops every notifier.
"""

from __future__ import annotations

import asyncio
import base64
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path

from adapters.notify.core import Destination, Notifier, StorageNotice
from adapters.notify.destinations import (
    STATEFUL_KINDS,
    Alertmanager,
    Discord,
    Slack,
    Telegram,
    Webhook,
)
from adapters.sqlite_store import SqliteStore
from monitor.core.errors import ConfigError
from monitor.core.records import NotifierCursor
from monitor.core.settings import NotifierConfig, is_loopback_host
from monitor.runtime.metrics import Metrics
from monitor.runtime.pipeline import Retrying

__all__ = ["Notifier", "Notifiers", "build_destination"]

SHUTDOWN_GRACE_S = 3.0
"""At shutdown, how long notifiers may go on delivering what is waiting; what is left is
delivered after the next start."""


def build_destination(config: NotifierConfig,
                      environ: Mapping[str, str] = os.environ) -> Destination:
    """The destination of one ``[notify.NAME]`` table, with its secrets read from the
    environment. An unset variable is a ConfigError naming the key (never a value)."""
    path = f"notify.{config.name}"

    def secret(key: str, variable: str | None) -> str:
        value = environ.get(variable or "", "")
        if not value:
            raise ConfigError(f"{path}.{key}", f"environment variable {variable} is not set")
        return value

    match config.type:
        case "webhook":
            assert config.url is not None
            return Webhook(config.url, secret("secret_env", config.secret_env)
                           if config.secret_env else None)
        case "telegram":
            assert config.url is not None and config.chat_id is not None
            return Telegram(config.url, secret("bot_token_env", config.bot_token_env),
                            config.chat_id)
        case "slack" | "discord":
            url = secret("webhook_url_env", config.webhook_url_env)
            parts = urllib.parse.urlsplit(url)
            if not (parts.scheme == "https" or (parts.scheme == "http" and parts.hostname
                                                and is_loopback_host(parts.hostname))):
                # The URL is the credential: the message names the variable, not the value.
                raise ConfigError(f"{path}.webhook_url_env",
                                  f"{config.webhook_url_env} must hold an https:// URL")
            return Slack(url, (url,)) if config.type == "slack" else Discord(url, (url,))
        case "alertmanager":
            assert config.url is not None
            authorization = None
            if config.bearer_token_env:
                authorization = "Bearer " + secret("bearer_token_env", config.bearer_token_env)
            elif config.basic_auth_user is not None:
                password = secret("basic_auth_password_env", config.basic_auth_password_env)
                pair = f"{config.basic_auth_user}:{password}".encode()
                authorization = "Basic " + base64.b64encode(pair).decode("ascii")
            return Alertmanager(config.url, config, authorization)


class Notifiers:
    """Every configured notifier, their cursor connection and their lifecycle."""

    def __init__(self, notifiers: Sequence[Notifier], store: SqliteStore | None) -> None:
        self.notifiers = list(notifiers)
        self._store = store
        self._fault: StorageNotice | None = None
        """The storage fault the notifiers have been told of, until it ends."""

    def storage(self, retrying: Retrying | None, waiting: int, now_s: float,
                notice_after_s: float) -> None:
        """The daemon's store as it is now: ``retrying`` its SQLite sink's failing write
        (:attr:`SinkTask.retrying <monitor.runtime.pipeline.SinkTask.retrying>`), None
        when writes work. A fault lasting ``notice_after_s`` is told to every notifier
        once (:class:`~adapters.notify.core.StorageNotice`), and so is its end; a shorter
        one is not (a lock held for a moment retries unseen)."""
        told = self._fault
        if retrying is not None:
            since_s = retrying.since_s
            if (told is None or told.since_s != since_s) and now_s - since_s >= notice_after_s:
                self._tell(StorageNotice(True, since_s, now_s, retrying.error, waiting))
        elif told is not None:
            self._tell(StorageNotice(False, told.since_s, now_s, told.error, waiting))

    def _tell(self, notice: StorageNotice) -> None:
        self._fault = notice if notice.failing else None
        for notifier in self.notifiers:
            notifier.notice(notice)

    @classmethod
    async def open(cls, configs: Mapping[str, NotifierConfig], sqlite_path: str | Path, *,
                   retention_days: float = 90.0, auto_checkpoint: bool = True,
                   environ: Mapping[str, str] = os.environ) -> Notifiers:
        """Read the secrets (ConfigError), open the cursor connection (SinkError), load
        each notifier's cursor; a notifier without one starts at the newest stored alert
        (a new destination is not sent the whole history). ``auto_checkpoint``: see
        :meth:`SqliteStore.open`."""
        if not configs:
            return cls([], None)
        destinations = {name: build_destination(config, environ)
                        for name, config in configs.items()}
        # Its own connection: cursor writes and catch-up reads never queue behind, nor
        # delay, the alert writes. synchronous=NORMAL: a cursor commit needs no fsync (a
        # lost one after a power cut means a few messages sent twice, never one lost).
        store = await SqliteStore.open(sqlite_path, retention_days=retention_days,
                                       synchronous="NORMAL", auto_checkpoint=auto_checkpoint)
        try:
            cursors = await store.notifier_cursors()
            last_seq = await store.last_alert_seq()
            notifiers = []
            for name, config in configs.items():
                cursor = cursors.get(name)
                if cursor is None:
                    cursor = NotifierCursor(name, last_seq)
                    await store.save_notifier_cursor(cursor)
                destination = destinations[name]
                notifier = Notifier(config, destination, store, cursor=cursor,
                                    last_seq=last_seq)
                if isinstance(destination, Alertmanager):
                    await _restore_firing(store, notifier, destination)
                notifiers.append(notifier)
        except BaseException:
            await store.close()
            raise
        return cls(notifiers, store)

    def start(self) -> None:
        for notifier in self.notifiers:
            notifier.start()

    async def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Let every notifier deliver for up to ``grace_s`` (together), save the
        cursors, close the connection."""
        try:
            await asyncio.gather(*(n.stop(grace_s) for n in self.notifiers))
        finally:
            if self._store is not None:
                await self._store.close()

    def update_metrics(self, metrics: Metrics, now_s: float) -> None:
        for notifier in self.notifiers:
            name = notifier.config.name
            metrics.notifier_deliveries[name] = notifier.deliveries
            metrics.notifier_failures[name] = notifier.failures
            metrics.notifier_lag_s[name] = notifier.lag_s(now_s)
            metrics.notifier_queue_depth[name] = notifier.queue_depth


async def _restore_firing(store: SqliteStore, notifier: Notifier,
                          destination: Alertmanager) -> None:
    """What was firing in Alertmanager when the last run stopped: the delivered alerts
    that fire or resolve something, folded in store order."""
    after = 0
    while after < notifier.delivered:
        page = await store.stored_alerts(after, accounts=notifier.filter.filter.accounts,
                                         kinds=STATEFUL_KINDS, limit=1000)
        for stored in page:
            if stored.seq > notifier.delivered:
                return
            if notifier.filter.matches(stored.alert):
                destination.restore(stored.alert)
        if len(page) < 1000:
            return
        after = page[-1].seq
