"""One keep-alive HTTP/1.1 connection to one origin, for the trade path (adapters/okx/trade.py).

Why not httpx, which riskmon uses for every other REST call: a stop-loss order is the one
request whose latency is the product. On loopback (this machine, 200 POSTs 20 ms apart) an
``httpx.AsyncClient`` request reaches the server 1.6-1.7 ms after it is made, this client's
in 0.4 ms; the difference is httpx's layers (anyio, httpcore's pool), not the protocol. The
protocol itself is h11's: this module only moves its bytes over one asyncio stream.

Behaviour:

- One connection, requests one at a time (a lock): an account's worker is sequential anyway,
  and HTTP/1.1 has no multiplexing. It is opened on the first request and kept; a
  connection the server has closed (seen as end of stream before the request is written),
  or that a response asked to close, is replaced by a new one first.
- ``timeout_s`` bounds the whole request: connecting, writing and reading the response.
  On a timeout or any transport or protocol failure the connection is dropped (its state
  is unknown) and :class:`HttpFailure` raised; whether the server acted on the request is
  then unknown, and the caller treats it so (the executor looks the order up).
- ``https`` URLs use the system's default TLS context (or the one given) with the host's
  name checked.
- A response body larger than ``max_body_bytes`` is a failure, never read into memory whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import h11

__all__ = ["HttpAnswer", "HttpFailure", "KeepAliveConnection"]

READ_BYTES: Final = 65_536


class HttpFailure(Exception):
    """No usable response: ``timed_out`` when the time ran out, else a transport or
    protocol failure (the message says which)."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    body: bytes


class KeepAliveConnection:
    """Requests to ``base_url`` (``http://host:port`` or ``https://host``) over one
    kept-open connection (see the module docstring)."""

    def __init__(self, base_url: str, *, timeout_s: float,
                 headers: Mapping[str, str] | None = None,
                 max_body_bytes: int = 4 << 20,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = ((ssl_context or ssl.create_default_context())
                     if parts.scheme == "https" else None)
        self._prefix = parts.path.rstrip("/")
        default_port = self.port == (443 if self._tls else 80)
        self._host_header = self.host if default_port else f"{self.host}:{self.port}"
        self._headers = dict(headers or {})
        self.timeout_s = timeout_s
        self.max_body_bytes = max_body_bytes
        self._lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._protocol: h11.Connection | None = None
        self.connections_opened = 0

    async def request(self, method: str, target: str, *, body: bytes = b"",
                      headers: Mapping[str, str] | None = None) -> HttpAnswer:
        """Send one request and read its whole response.

        Raises:
            HttpFailure: no complete response within ``timeout_s``.
        """
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout_s):
                    return await self._exchange(method, target, body, headers or {})
            except TimeoutError:
                self._drop()
                raise HttpFailure(f"no answer within {self.timeout_s:g} s",
                                  timed_out=True) from None
            except (OSError, h11.ProtocolError, HttpFailure) as e:
                self._drop()
                if isinstance(e, HttpFailure):
                    raise
                raise HttpFailure(f"{type(e).__name__}: {e}") from None
            except BaseException:  # cancelled midway: the connection's state is unknown
                self._drop()
                raise

    async def close(self) -> None:
        async with self._lock:
            writer = self._writer
            self._drop()
            if writer is not None:
                with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                    async with asyncio.timeout(1.0):
                        await writer.wait_closed()

    async def _exchange(self, method: str, target: str, body: bytes,
                        extra: Mapping[str, str]) -> HttpAnswer:
        reader, writer, protocol = await self._ready()
        fields = [("Host", self._host_header), *self._headers.items(), *extra.items(),
                  ("Content-Length", str(len(body)))]
        data = protocol.send(h11.Request(method=method, target=self._prefix + target,
                                         headers=fields))
        if body:
            data += protocol.send(h11.Data(data=body)) or b""
        data += protocol.send(h11.EndOfMessage()) or b""
        writer.write(data or b"")
        await writer.drain()
        status = 0
        chunks: list[bytes] = []
        size = 0
        while True:
            event = protocol.next_event()
            if event is h11.NEED_DATA:
                protocol.receive_data(await reader.read(READ_BYTES))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.max_body_bytes:
                    raise HttpFailure(f"response body over {self.max_body_bytes} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise HttpFailure("the server closed the connection before answering")
        if protocol.our_state is h11.MUST_CLOSE or protocol.their_state is h11.MUST_CLOSE:
            self._drop()
        else:
            protocol.start_next_cycle()
        return HttpAnswer(status, b"".join(chunks))

    async def _ready(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection]:
        reader, writer, protocol = self._reader, self._writer, self._protocol
        if (reader is None or writer is None or protocol is None or reader.at_eof()
                or writer.is_closing() or protocol.our_state is not h11.IDLE):
            self._drop()
            reader, writer = await asyncio.open_connection(
                self.host, self.port, ssl=self._tls,
                server_hostname=self.host if self._tls else None)
            protocol = h11.Connection(h11.CLIENT)
            self._reader, self._writer, self._protocol = reader, writer, protocol
            self.connections_opened += 1
        return reader, writer, protocol

    def _drop(self) -> None:
        """Forget the connection and close it (not waiting: a broken peer could keep a
        TLS close waiting)."""
        writer = self._writer
        self._reader = self._writer = self._protocol = None
        if writer is not None:
            writer.close()
