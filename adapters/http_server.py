"""The daemon's HTTP face on the ``[stream]`` host and port: ``/healthz`` and ``/metrics``.

One websockets server answers both plain HTTP GETs (through its ``process_request`` hook)
and, on ``/v1/alerts``, the alert-stream websocket, so riskmon opens a single port. It
binds to loopback by default (SPEC 6).

- ``GET /healthz``: 200 with a JSON body while the engine loop turns and every sink is
  alive, else 503 with the same body saying what is wrong.
- ``GET /metrics``: the Prometheus text format (monitor.metrics).
- ``GET /v1/status``: every account's figures now (monitor.status), for ``riskmon status``;
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
"""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

HealthCheck = Callable[[float], tuple[bool, dict[str, Any]]]
MetricsText = Callable[[float], str]
StreamHandler = Callable[[ServerConnection], Awaitable[None]]
StatusAnswer = Callable[[str | None], tuple[HTTPStatus, dict[str, Any]]]
"""``/v1/status``: the bearer token sent (None: none) -> status code and JSON body."""


class Control:
    """The executor's kill switch as the HTTP face sees it: who may use it and what it
    does (monitor.service wires it to adapters/executor.py)."""

    def __init__(self, token: str, status: Callable[[], dict[str, Any]],
                 operate: Callable[[str], Awaitable[dict[str, Any]]]) -> None:
        self.token = token
        self.status = status
        self.operate = operate

    def allowed(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token, self.token)

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
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


class HttpServer:
    """``/healthz``, ``/metrics`` and (when given a handler) the alert stream."""

    def __init__(self, health: HealthCheck, metrics: MetricsText,
                 stream: StreamHandler | None = None,
                 status: StatusAnswer | None = None,
                 control: Control | None = None) -> None:
        self._health = health
        self._metrics = metrics
        self._stream = stream
        self._status = status
        self._control = control
        self._server: Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (``port`` 0 picks a free one)."""
        # No permessage-deflate: the stream sends each alert's JSON, encoded once, to every
        # subscriber, and compressing it again per connection cost a fifth of the fan-out
        # rate and tripled its p99 in bench/stream_bench.py. Alerts are small; the stream
        # runs on loopback or a LAN.
        self._server = await serve(self._handle, host, port,
                                   process_request=self._process_request,
                                   compression=None, close_timeout=CLOSE_TIMEOUT_S)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
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
