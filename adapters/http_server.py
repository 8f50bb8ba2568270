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
- Anything else: 404.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

HealthCheck = Callable[[float], tuple[bool, dict[str, Any]]]
MetricsText = Callable[[float], str]
StreamHandler = Callable[[ServerConnection], Awaitable[None]]
StatusAnswer = Callable[[str | None], tuple[HTTPStatus, dict[str, Any]]]
"""``/v1/status``: the bearer token sent (None: none) -> status code and JSON body."""

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ALERTS_PATH = "/v1/alerts"
STATUS_PATH = "/v1/status"
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
                 status: StatusAnswer | None = None) -> None:
        self._health = health
        self._metrics = metrics
        self._stream = stream
        self._status = status
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
        return _response(HTTPStatus.NOT_FOUND, "application/json",
                         orjson.dumps({"error": f"no such path: {path}"}))

    async def _handle(self, connection: ServerConnection) -> None:
        if self._stream is not None:
            await self._stream(connection)
