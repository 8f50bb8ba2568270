"""A small HTTP/1.1 server for the replay servers' REST (any method), on h11.

websockets' HTTP parser, which serves REST on the websocket port, accepts only GET, and
venues' trade and stream-key endpoints are POST, PUT and DELETE. This listener parses
HTTP/1.1 with h11 (python-hyper's sans-I/O state machine: bytes in, events out) and moves
the bytes with asyncio streams; what to answer is the caller's ``handler``.

- Keep-alive: requests on one connection are answered in turn until either side closes
  (``Connection: close``, HTTP/1.0 without keep-alive) or the connection has been idle for
  ``idle_timeout_s``.
- Bodies (``Content-Length`` or chunked) up to ``max_body_bytes``; a longer one is answered
  413 and the connection closed. A request h11 cannot parse is answered 400 (431 for an
  oversized head, as h11 hints) and the connection closed. Neither reaches the handler.
- An exception in the handler is logged and answered 500; the listener goes on.

The listener's own error answers (400, 413, 431, 500) are the caller's to shape
(``error``: the venue's error body for a status and a message; a plain ``{"code", "msg"}``
by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

import h11
import orjson

from adapters.logging import get_logger
from monitor.core.errors import ConfigError, RiskmonError

__all__ = ["ErrorBody", "HttpRequest", "HttpResponse", "RestListener", "plain_error"]

_READ_BYTES: Final = 65536
_MAX_HEAD_BYTES: Final = 16 * 1024
_LINGER_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request: ``headers`` by lower-case name (a repeated header keeps its last
    value); ``arrived_at`` is the :func:`time.perf_counter` when its head was parsed."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    arrived_at: float


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A JSON answer: ``body`` is already encoded."""

    status: int
    body: bytes


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]
ErrorBody = Callable[[HTTPStatus, str], HttpResponse]


def plain_error(status: HTTPStatus, message: str) -> HttpResponse:
    """``{"code": STATUS, "msg": message}``."""
    return HttpResponse(status.value, orjson.dumps({"code": status.value, "msg": message}))


class RestListener:
    """Serves ``handler`` over HTTP/1.1 on one TCP port.

    Raises:
        ConfigError: ``max_body_bytes`` is not positive or ``idle_timeout_s`` not a
            positive number.
    """

    def __init__(self, handler: Handler, *, max_body_bytes: int = 1 << 20,
                 idle_timeout_s: float = 60.0, error: ErrorBody = plain_error) -> None:
        if type(max_body_bytes) is not int or max_body_bytes <= 0:
            raise ConfigError("max_body_bytes", "must be a positive integer")
        if not 0 < idle_timeout_s < math.inf:
            raise ConfigError("idle_timeout_s", "must be a positive number of seconds")
        self._handler = handler
        self._error = error
        self._max_body = max_body_bytes
        self._idle_timeout_s = idle_timeout_s
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen; return the bound port (``port=0``: any free one)."""
        try:
            self._server = await asyncio.start_server(self._accept, host, port)
        except OSError as error:
            raise RiskmonError(f"cannot listen on {host}:{port} ({error.strerror})") from error
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def close(self) -> None:
        """Stop listening and end every open connection, answered or not."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The connection runs in a task of its own, which close() cancels: asyncio's stream
        # server logs the cancellation of its own callback task as an error (3.11).
        task = asyncio.create_task(self._run(reader, writer))
        self._connections.add(task)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():
                task.cancel()
                raise
        finally:
            self._connections.discard(task)

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _Connection(reader, writer, self._handler, self._max_body,
                              self._idle_timeout_s, self._error).run()
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()


class _BodyTooLarge(Exception):
    pass


class _Connection:
    """One client connection: h11 parses, this moves bytes and calls the handler."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 handler: Handler, max_body: int, idle_timeout_s: float,
                 error: ErrorBody) -> None:
        self._reader = reader
        self._writer = writer
        self._handler = handler
        self._error = error
        self._max_body = max_body
        self._idle_timeout_s = idle_timeout_s
        self._log = get_logger("riskmon.replay_server")
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD_BYTES)

    async def run(self) -> None:
        while True:
            try:
                event = await self._next_event()
                if not isinstance(event, h11.Request):
                    return  # the client closed (ConnectionClosed) between requests
                request = await self._read_request(event)
            except h11.RemoteProtocolError as error:
                status = HTTPStatus(error.error_status_hint)
                await self._answer_and_close(self._error(status, f"Bad request: {error}"))
                return
            except _BodyTooLarge:
                await self._answer_and_close(self._error(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"Request body larger than {self._max_body} bytes"))
                return
            if request is None:
                return
            try:
                response = await self._handler(request)
            except Exception as error:  # a bug in the handler must not end the listener
                self._log.error("replay_rest_failed", path=request.target, error=repr(error))
                response = self._error(HTTPStatus.INTERNAL_SERVER_ERROR,
                                       "System error. Try again later")
            await self._send_response(response, head=request.method == "HEAD")
            if self._h11.our_state is h11.MUST_CLOSE:
                return
            try:
                self._h11.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                pass
            elif event is h11.PAUSED or isinstance(event, h11.Event):
                return event
            else:  # pragma: no cover - h11 returns nothing else
                raise AssertionError(f"unexpected h11 event {event!r}")
            # Idle keep-alive connections (and slow heads) end after the timeout.
            async with asyncio.timeout(self._idle_timeout_s):
                data = await self._reader.read(_READ_BYTES)
            self._h11.receive_data(data)  # b"": the client closed

    async def _read_request(self, head: h11.Request) -> HttpRequest | None:
        arrived_at = time.perf_counter()
        headers = {name.decode("latin-1").lower(): value.decode("latin-1")
                   for name, value in head.headers}
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            raise _BodyTooLarge
        body = bytearray()
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > self._max_body:
                    raise _BodyTooLarge
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return None  # closed mid-body
        return HttpRequest(head.method.decode("ascii", "replace"),
                           head.target.decode("latin-1"), headers, bytes(body), arrived_at)

    async def _send_response(self, response: HttpResponse, *, close: bool = False,
                             head: bool = False) -> None:
        """The answer; to a HEAD request its headers only (h11 refuses a body there)."""
        headers = [("Content-Type", "application/json"),
                   ("Content-Length", str(len(response.body))),
                   ("Date", email.utils.formatdate(usegmt=True))]
        if close:
            headers.append(("Connection", "close"))
        status = HTTPStatus(response.status)
        data = self._h11.send(h11.Response(status_code=status.value, headers=headers,
                                           reason=status.phrase.encode())) or b""
        if not head:
            data += self._h11.send(h11.Data(data=response.body)) or b""
        data += self._h11.send(h11.EndOfMessage()) or b""
        self._writer.write(data)
        await self._writer.drain()

    async def _answer_and_close(self, response: HttpResponse) -> None:
        """An error answer, when h11 still lets one be sent; then the connection ends."""
        if self._h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        with contextlib.suppress(h11.LocalProtocolError):
            await self._send_response(response, close=True)
        # A lingering close: closing with the client's bytes unread would reset the
        # connection, and the client could lose the answer; so stop writing, then read and
        # drop what it still sends, for a while.
        if self._writer.can_write_eof():
            self._writer.write_eof()
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(_LINGER_S):
                while await self._reader.read(_READ_BYTES):
                    pass
