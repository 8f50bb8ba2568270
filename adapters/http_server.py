"""The daemon's HTTP face on the ``[stream]`` host and port: ``/healthz`` and ``/metrics``.

One websockets server answers both plain HTTP GETs (through its ``process_request`` hook)
and, on ``/v1/alerts``, the alert-stream websocket, so riskmon opens a single port. It
binds to loopback by default (SPEC 6).

- ``GET /healthz``: 200 with a JSON body while the engine loop turns and every sink is
  alive, else 503 with the same body saying what is wrong.
- ``GET /metrics``: the Prometheus text format (monitor.runtime.metrics).
- ``GET /v1/status``: every account's figures now (monitor.app.status), for ``riskmon status``;
  with ``[stream] tokens``, ``Authorization: Bearer <token>`` is required (401 without a
  known one) and the answer holds that token's accounts only, as on the alert stream.
- ``/v1/executor`` (when execution is on): the executor's kill switch, with
  ``Authorization: Bearer <control token>`` (``[execution] control_token_env``; 401
  without it). A plain GET answers the executor's status; a websocket on the same path
  takes ``{"op": "pause"}``, ``{"op": "resume"}`` or ``{"op": "status"}`` messages and
  answers each with the status after it (``riskmon executor pause|resume|status``). A
  websocket, not a POST: this server's HTTP parser (websockets') takes GET requests only,
  and a GET must not change anything.
- Anything else: 404.

Limits (``[stream]``, monitor.app.config.StreamConfig; README, "Alert stream under abuse"):
every accepted TCP connection counts toward ``max_connections`` until it is closed, and
toward ``max_pending`` until it is settled (a stream subscriber once its subscribe
request is accepted, an executor control connection once its handshake is done; a plain
HTTP request never is, it is answered and closed). A connection over either limit is
answered ``503`` at once, before anything is read, and closed. The opening handshake must
end within ``handshake_timeout_s``; a client message may be ``max_message_bytes`` long;
riskmon buffers ``send_buffer_bytes`` for a connection before a send waits for the client.
Closing never waits on a client for more than ``CLOSE_TIMEOUT_S``: the transport is then
aborted, whatever is still buffered for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, Final

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from monitor.core.settings import StreamConfig

HealthCheck = Callable[[float], tuple[bool, dict[str, Any]]]
MetricsText = Callable[[float], str]
StreamHandler = Callable[[ServerConnection], Awaitable[None]]
StatusAnswer = Callable[[str | None], tuple[HTTPStatus, dict[str, Any]]]
"""``/v1/status``: the bearer token sent (None: none) -> status code and JSON body."""


class Control:
    """The executor's kill switch as the HTTP face sees it: who may use it and what it
    does (monitor.app.service wires it to adapters/executor.py)."""

    def __init__(self, token: str, status: Callable[[], dict[str, Any]],
                 operate: Callable[[str], Awaitable[dict[str, Any]]]) -> None:
        self.token = token
        self.status = status
        self.operate = operate

    def allowed(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token, self.token)

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REFUSED_RESPONSE: Final = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                           b"Content-Length: 22\r\nConnection: close\r\n\r\n"
                           b"too many connections\r\n")
"""What a connection over ``max_connections`` or ``max_pending`` gets, unread."""
MESSAGES_QUEUED: Final = 4
"""Messages websockets reads ahead of the handler before it stops reading the socket: a
stream client sends one, a control client one at a time."""
ALERTS_PATH = "/v1/alerts"
STATUS_PATH = "/v1/status"
EXECUTOR_PATH = "/v1/executor"
CONTROL_MESSAGE_LIMIT = 1024
CLOSE_TIMEOUT_S = 2.0
"""How long a closing connection may take to answer the close frame before it is
aborted: a stuck subscriber must not hold its connection open."""


def _response(status: HTTPStatus, content_type: str, body: bytes) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store")])
    return Response(status.value, status.phrase, headers, body)


def _bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class ConnectionGate:
    """Counts the port's connections against ``max_connections`` and ``max_pending``
    (module docstring), and what was refused or ended early, by reason."""

    def __init__(self, max_connections: int, max_pending: int) -> None:
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.open: set[LimitedConnection] = set()
        self.pending: set[LimitedConnection] = set()
        self.closed: Counter[str] = Counter()
        """Connections refused or closed by riskmon, by reason: ``max_connections``,
        ``max_pending``, ``incomplete_handshake`` (no complete HTTP request), and those
        websockets closes itself, ``message_too_big`` (1009) and ``ping_timeout`` (1011,
        no pong). The alert stream's handler counts its own."""

    def admit(self, connection: LimitedConnection) -> str | None:
        """Count a new connection in, or return why it is refused."""
        if len(self.open) >= self.max_connections:
            reason = "max_connections"
        elif len(self.pending) >= self.max_pending:
            reason = "max_pending"
        else:
            self.open.add(connection)
            self.pending.add(connection)
            return None
        self.closed[reason] += 1
        return reason


class LimitedConnection(ServerConnection):
    """websockets' server connection (passed to ``serve`` as its documented
    ``create_connection`` factory), counted by a :class:`ConnectionGate` from the moment
    the TCP connection is accepted until it is lost."""

    gate: ConnectionGate  # set on the subclass HttpServer.start makes
    paused_since: float | None = None
    """Loop time since which sends wait for the client to read (the buffer went above
    ``send_buffer_bytes`` and has not drained to a quarter of it since), else None."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.gate.admit(self) is not None:
            # Before reading anything: the handler task websockets just started sees the
            # connection lost and returns.
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(REFUSED_RESPONSE)
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        gate = self.gate
        if self in gate.open:
            gate.open.discard(self)
            if self in gate.pending:
                gate.pending.discard(self)
                if self.request is None:
                    gate.closed["incomplete_handshake"] += 1
            sent = self.protocol.close_sent
            if sent is not None and sent.code == CloseCode.MESSAGE_TOO_BIG:
                gate.closed["message_too_big"] += 1
            elif (sent is not None and sent.code == CloseCode.INTERNAL_ERROR
                  and self.protocol.close_rcvd is None):
                gate.closed["ping_timeout"] += 1  # websockets' keepalive is its only 1011
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        self.paused_since = self.loop.time()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.paused_since = None

    def settle(self) -> None:
        """The connection is past its opening: it no longer counts toward
        ``max_pending``."""
        self.gate.pending.discard(self)


class HttpServer:
    """``/healthz``, ``/metrics`` and (when given a handler) the alert stream."""

    def __init__(self, health: HealthCheck, metrics: MetricsText,
                 stream: StreamHandler | None = None,
                 status: StatusAnswer | None = None,
                 control: Control | None = None,
                 limits: StreamConfig | None = None) -> None:
        """``limits``: the ``[stream]`` limits (module docstring); None: the defaults."""
        self._health = health
        self._metrics = metrics
        self._stream = stream
        self._status = status
        self._control = control
        self.limits = limits or StreamConfig()
        self.gate = ConnectionGate(self.limits.max_connections, self.limits.max_pending)
        self._server: Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (``port`` 0 picks a free one)."""
        limits = self.limits
        connection_type = type("GatedConnection", (LimitedConnection,), {"gate": self.gate})
        # No permessage-deflate: the stream sends each alert's JSON, encoded once, to every
        # subscriber, and compressing it again per connection cost a fifth of the fan-out
        # rate and tripled its p99 in bench/stream_bench.py. Alerts are small; the stream
        # runs on loopback or a LAN.
        self._server = await serve(self._handle, host, port,
                                   process_request=self._process_request,
                                   compression=None, close_timeout=CLOSE_TIMEOUT_S,
                                   create_connection=connection_type,
                                   open_timeout=limits.handshake_timeout_s,
                                   max_size=limits.max_message_bytes,
                                   max_queue=MESSAGES_QUEUED,
                                   write_limit=limits.send_buffer_bytes,
                                   ping_interval=limits.ping_interval_s,
                                   ping_timeout=limits.ping_timeout_s)
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        """TCP connections open on the port now."""
        return len(self.gate.open)

    @property
    def pending(self) -> int:
        """Of those, the ones not yet past their opening."""
        return len(self.gate.pending)

    def buffered_bytes(self) -> int:
        """Bytes written for the port's connections and not yet taken by the kernel."""
        return sum(connection.transport.get_write_buffer_size()
                   for connection in self.gate.open)

    async def close(self) -> None:
        """Stop listening and close every connection: those that do not finish closing
        within twice the close timeout are aborted, so a client that never reads cannot
        hold the daemon's exit."""
        if self._server is not None:
            self._server.close()
            try:
                async with asyncio.timeout(2 * CLOSE_TIMEOUT_S):
                    await self._server.wait_closed()
            except TimeoutError:
                for connection in list(self.gate.open):
                    connection.transport.abort()
                await self._server.wait_closed()
            self._server = None

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        now = time.time()
        if path == "/healthz":
            healthy, details = self._health(now)
            status = HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE
            return _response(status, "application/json", orjson.dumps(details))
        if path == "/metrics":
            return _response(HTTPStatus.OK, PROMETHEUS_TYPE, self._metrics(now).encode())
        if path == STATUS_PATH and self._status is not None:
            code, body = self._status(_bearer(request.headers.get("Authorization")))
            return _response(code, "application/json", orjson.dumps(body))
        if path == ALERTS_PATH and self._stream is not None:
            return None  # on to the websocket handshake
        if path == EXECUTOR_PATH and self._control is not None:
            if not self._control.allowed(_bearer(request.headers.get("Authorization"))):
                return _response(HTTPStatus.UNAUTHORIZED, "application/json", orjson.dumps(
                    {"error": "unauthorized", "msg": "the control token is required"}))
            if request.headers.get("Upgrade", "").lower() == "websocket":
                return None
            return _response(HTTPStatus.OK, "application/json",
                             orjson.dumps(self._control.status()))
        return _response(HTTPStatus.NOT_FOUND, "application/json",
                         orjson.dumps({"error": f"no such path: {path}"}))

    async def _handle(self, connection: ServerConnection) -> None:
        path = connection.request.path.split("?", 1)[0] if connection.request else ""
        if path == EXECUTOR_PATH and self._control is not None:
            if isinstance(connection, LimitedConnection):
                connection.settle()  # the bearer token was checked before the handshake
            await self._serve_control(connection, self._control)
        elif self._stream is not None:
            await self._stream(connection)

    async def _serve_control(self, connection: ServerConnection, control: Control) -> None:
        """One answer per ``{"op": ...}`` message; anything else gets an error answer."""
        with contextlib.suppress(ConnectionClosed):
            async for message in connection:
                try:
                    if len(message) > CONTROL_MESSAGE_LIMIT:
                        raise ValueError("message too long")
                    request = orjson.loads(message)
                    op = request.get("op") if isinstance(request, dict) else None
                    if op not in ("pause", "resume", "status"):
                        raise ValueError("op must be pause, resume or status")
                except (ValueError, orjson.JSONDecodeError) as e:
                    await connection.send(orjson.dumps({"error": "bad_request",
                                                        "msg": str(e)}).decode())
                    continue
                answer = control.status() if op == "status" else await control.operate(op)
                await connection.send(orjson.dumps(answer).decode())
