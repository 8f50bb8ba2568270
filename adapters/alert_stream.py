"""The alert stream websocket, ``/v1/alerts`` on the ``[stream]`` host and port (SPEC 4).

Protocol (JSON text messages; ``riskmon tail`` is the reference client)::

    client -> {"op": "subscribe", "token": "...", "accounts": ["main"],
               "kinds": ["level_changed", "stop_loss"], "min_level": "warning",
               "since": "<alert id>" | "earliest"}
    server -> {"event": "subscribed", "accounts": [...] | null, "kinds": [...] | null,
               "min_level": "...", "since": ... | null, "resume_id": "<alert id>" | null}
    server -> one message per alert: the alert JSON of SPEC 2 (as ``--alerts-out`` writes)
    server -> {"event": "heartbeat", "ts": <wall clock ms>} after ``heartbeat_s`` without
              a message
    server -> {"event": "error", "code": "...", "msg": "..."}, then closes

Every field but ``op`` is optional: no ``accounts`` means every account the token may see
(every account, without tokens), no ``kinds`` all kinds, no ``min_level`` ``normal``, no
``since`` live alerts only. The subscribe request must come within ``subscribe_timeout_s``
of the handshake, be at most ``max_message_bytes`` long, and is the only message a client
sends: another one closes the connection (4400). Messages with an ``event`` field
are the server's own; alerts have none. ``resume_id`` is the alert after which this
stream starts: a client that received nothing yet resumes from it after a disconnect.

Tokens: when ``[stream] tokens`` is configured a subscribe request must carry one of them,
and may only name accounts of that token; without tokens (the port then stays on
loopback, monitor.app.cli checks) any token is ignored.

Errors and closes (close codes 4000-4999 are the application's, by RFC 6455):

    bad_request     4400  not JSON, not a subscribe request, a bad field, or too late
    unauthorized    4401  token missing or unknown
    forbidden       4403  an account outside the token's accounts
    unknown_since   4404  ``since`` names no stored alert (never stored, or pruned)
    slow_subscriber 4408  the client fell more than the queue size behind, or did not
                          read what riskmon had buffered for it (``send_buffer_bytes``)
                          for ``send_timeout_s``: resume with ``since`` set to the last id
                          received
    (1001)                riskmon is stopping
    (1009)                a message longer than ``max_message_bytes`` (websockets closes)
    (1011)                no answer to a websocket ping within ``ping_timeout_s``

A close never waits on the client for more than ``CLOSE_TIMEOUT_S``: a client that does
not read gets its connection aborted (its close frame may then never arrive).

Nothing here logs a token or puts one in a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Final

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from adapters.http_server import CLOSE_TIMEOUT_S, LimitedConnection
from monitor.core.errors import ConfigError
from monitor.core.settings import StreamToken
from monitor.runtime.stream import (
    EARLIEST,
    AlertFilter,
    AlertHub,
    SubscriberOverflow,
    Subscription,
    UnknownAlertId,
)

CLOSE_CODES: Final = {
    "bad_request": 4400,
    "unauthorized": 4401,
    "forbidden": 4403,
    "unknown_since": 4404,
    "slow_subscriber": 4408,
}
GOING_AWAY: Final = 1001
_FIELDS: Final = frozenset({"op", "token", "accounts", "kinds", "min_level", "since"})
_MAX_REASON_BYTES: Final = 123  # RFC 6455: a close frame's reason fits in 123 bytes
_ERROR_SEND_TIMEOUT_S: Final = 2.0
_STALL_CHECKS: Final = 10
"""Looks at whether sends to a subscriber wait, per ``send_timeout_s``."""


def load_tokens(tokens: Iterable[StreamToken],
                environ: Mapping[str, str] = os.environ) -> dict[str, frozenset[str]]:
    """``[stream] tokens`` resolved: token value -> its accounts. A token variable that is
    unset or empty is a ConfigError naming the variable (never a value)."""
    resolved: dict[str, frozenset[str]] = {}
    for index, token in enumerate(tokens):
        value = environ.get(token.token_env, "")
        if not value:
            raise ConfigError(f"stream.tokens[{index}].token_env",
                              f"environment variable {token.token_env} is not set")
        if value in resolved:
            raise ConfigError(f"stream.tokens[{index}].token_env",
                              f"{token.token_env} holds the same token as another entry")
        resolved[value] = frozenset(token.accounts)
    return resolved


def token_scope(tokens: Mapping[str, frozenset[str]], token: str) -> frozenset[str] | None:
    """The accounts ``token`` may see, or None when it is no known token. Every known token
    is compared, in constant time, so timing tells nothing about them."""
    scope: frozenset[str] | None = None
    for known, accounts in tokens.items():
        if hmac.compare_digest(known.encode(), token.encode()):
            scope = accounts
    return scope


class Refused(Exception):
    """A subscribe request refused: ``code`` (a key of CLOSE_CODES) and a message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class AlertStreamHandler:
    """Serves one websocket connection of the alert stream (see the module docstring)."""

    def __init__(self, hub: AlertHub, tokens: Mapping[str, frozenset[str]] | None = None, *,
                 heartbeat_s: float = 15.0, subscribe_timeout_s: float = 5.0,
                 send_timeout_s: float = 30.0) -> None:
        """``tokens``: token value -> the accounts it may see; None or empty: no auth."""
        self.hub = hub
        self._tokens = dict(tokens or {})
        self.heartbeat_s = heartbeat_s
        self.subscribe_timeout_s = subscribe_timeout_s
        self.send_timeout_s = send_timeout_s
        self.closed: Counter[str] = Counter()
        """Connections refused or closed by riskmon, by reason: a key of CLOSE_CODES
        (``slow_subscriber`` only for a stalled send buffer; the hub counts queue
        overflows). Those websockets closes on its own, HttpServer's gate counts."""

    async def __call__(self, ws: ServerConnection) -> None:
        try:
            subscription, ack = await self._subscribe(ws)
        except Refused as refused:
            self.closed[refused.code] += 1
            await _refuse(ws, refused)
            return
        except ConnectionClosed:
            return
        try:
            await ws.send(orjson.dumps(ack).decode())
            if isinstance(ws, LimitedConnection):
                ws.settle()
            await self._serve(ws, subscription)
        except ConnectionClosed:
            pass
        finally:
            subscription.close()

    async def _subscribe(self, ws: ServerConnection) -> tuple[Subscription, dict[str, Any]]:
        try:
            async with asyncio.timeout(self.subscribe_timeout_s):
                message = await ws.recv()
        except TimeoutError:
            raise Refused("bad_request", f"no subscribe request within "
                                         f"{self.subscribe_timeout_s:g} s") from None
        request = _parse_request(message)
        accounts = self._authorise(request)
        try:
            alert_filter = AlertFilter.of(accounts, request.get("kinds"),
                                          request.get("min_level", "normal"))
        except ValueError as e:
            raise Refused("bad_request", str(e)) from None
        since = request.get("since")
        subscription = self.hub.subscribe(alert_filter, since=since)
        try:
            await subscription.start()
        except UnknownAlertId as e:
            subscription.close()
            raise Refused("unknown_since", str(e)) from None
        ack = {
            "event": "subscribed",
            "accounts": None if alert_filter.accounts is None else sorted(alert_filter.accounts),
            "kinds": None if alert_filter.kinds is None else sorted(alert_filter.kinds),
            "min_level": alert_filter.min_level,
            "since": since,
            "resume_id": subscription.resume_id,
        }
        return subscription, ack

    def _authorise(self, request: Mapping[str, Any]) -> list[str] | None:
        """The accounts to subscribe to (None: all); raises Refused."""
        requested: list[str] | None = request.get("accounts")
        if not self._tokens:
            return requested
        token = request.get("token")
        if token is None:
            raise Refused("unauthorized", "this stream needs a token")
        scope = token_scope(self._tokens, token)
        if scope is None:
            raise Refused("unauthorized", "unknown token")
        if requested is None:
            return sorted(scope)
        for account in requested:
            if account not in scope:
                raise Refused("forbidden", f"account {account!r} is outside this token's"
                                           " accounts")
        return requested

    async def _serve(self, ws: ServerConnection, subscription: Subscription) -> None:
        """Send alerts (and heartbeats) until the client leaves, the subscription is cut
        off, or the hub closes."""
        sender = asyncio.create_task(self._send_alerts(ws, subscription))
        reader = asyncio.create_task(_read_until_closed(ws))
        cut_off = asyncio.create_task(subscription.cut_off.wait())
        stalled = asyncio.create_task(_until_stalled(ws, self.send_timeout_s))
        tasks = (sender, reader, cut_off, stalled)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await task
        if subscription.cut_off.is_set():
            # The client is behind by a whole queue and may not be reading at all, so no
            # error message (sending it could wait forever): the close frame carries the
            # reason, and a bounded close aborts the connection of a stuck client.
            await _close(ws, "slow_subscriber", str(subscription.error))
        elif stalled.done() and not stalled.cancelled():
            self.closed["slow_subscriber"] += 1
            await _close(ws, "slow_subscriber",
                         f"not reading for {self.send_timeout_s:g} s; resume with since set"
                         " to the last alert id received")
        elif reader.done() and not reader.cancelled() and reader.result():
            self.closed["bad_request"] += 1
            await _refuse(ws, Refused("bad_request", "the subscribe request is the only"
                                                     " message a client sends"))
        elif sender.done() and not sender.cancelled() and sender.exception() is None:
            await _close_with(ws, GOING_AWAY, "riskmon is stopping")

    async def _send_alerts(self, ws: ServerConnection, subscription: Subscription) -> None:
        while True:
            try:
                if subscription.pending:
                    # An alert is waiting: no heartbeat timer (a task and a timer per
                    # message would be most of the cost of a busy stream).
                    stored = await subscription.next_stored()
                else:
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a
                    # cancellation that comes as the alert does, and this task, cancelled
                    # when the client is refused or leaves, would then never end.
                    async with asyncio.timeout(self.heartbeat_s):
                        stored = await subscription.next_stored()
            except TimeoutError:
                await ws.send(orjson.dumps({"event": "heartbeat",
                                            "ts": time.time_ns() // 1_000_000}).decode())
                continue
            except SubscriberOverflow:
                return  # the cut_off task closes the connection
            if stored is None:
                return
            # The alert's JSON as encoded once for every follower (StoredAlert.json); a str,
            # so that websockets sends it as a text frame.
            await ws.send(stored.json.decode())


def _parse_request(message: str | bytes) -> dict[str, Any]:
    """The subscribe request, checked field by field; raises Refused."""
    try:
        request = orjson.loads(message)
    except orjson.JSONDecodeError:
        raise Refused("bad_request", "the subscribe request is not JSON") from None
    if not isinstance(request, dict) or request.get("op") != "subscribe":
        raise Refused("bad_request", 'expected {"op": "subscribe", ...}')
    unknown = sorted(set(request) - _FIELDS)
    if unknown:
        raise Refused("bad_request", f"unknown field {unknown[0]!r}")
    for name in ("accounts", "kinds"):
        value = request.get(name)
        if value is not None and not (isinstance(value, list)
                                      and all(isinstance(v, str) for v in value)):
            raise Refused("bad_request", f"{name} must be a list of strings")
    for name in ("token", "min_level", "since"):
        value = request.get(name)
        if value is not None and not isinstance(value, str):
            raise Refused("bad_request", f"{name} must be a string")
    if request.get("since") == "":
        raise Refused("bad_request", f"since must be an alert id or {EARLIEST!r}")
    return request


async def _refuse(ws: ServerConnection, refused: Refused) -> None:
    """Send the error message, then close with its code and reason."""
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        async with asyncio.timeout(_ERROR_SEND_TIMEOUT_S):
            await ws.send(orjson.dumps({"event": "error", "code": refused.code,
                                        "msg": refused.message}).decode())
    await _close(ws, refused.code, refused.message)


async def _close(ws: ServerConnection, code: str, message: str) -> None:
    """Close with the code of ``code`` and ``message`` as the reason (shortened to fit)."""
    reason = message.encode()[:_MAX_REASON_BYTES].decode("utf-8", "ignore")
    await _close_with(ws, CLOSE_CODES[code], reason)


async def _close_with(ws: ServerConnection, code: int, reason: str) -> None:
    """``ws.close``, bounded: websockets applies its close timeout only once the close
    frame is written out, and a client that does not read never lets it be, so after
    ``CLOSE_TIMEOUT_S`` the transport is aborted (descriptor and buffers freed)."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await ws.close(code, reason)
    except TimeoutError:
        ws.transport.abort()


async def _read_until_closed(ws: ServerConnection) -> bool:
    """Wait for the client's close (so its close frame is seen); True if it sent a message
    first (it must not: the connection is then refused)."""
    try:
        await ws.recv()
    except ConnectionClosed:
        return False
    return True


async def _until_stalled(ws: ServerConnection, send_timeout_s: float) -> None:
    """Return once sends have waited ``send_timeout_s`` for the client to read (its buffer
    full, not drained since): websockets' pings queue behind the data then, so nothing
    else notices that it stopped reading. Never returns for a connection that is not a
    LimitedConnection (they are what HttpServer serves)."""
    if not isinstance(ws, LimitedConnection):
        await asyncio.Future()  # cancelled with the other tasks of _serve
        return
    period = send_timeout_s / _STALL_CHECKS
    while True:
        await asyncio.sleep(period)
        since = ws.paused_since
        if since is not None and ws.loop.time() - since >= send_timeout_s:
            return
