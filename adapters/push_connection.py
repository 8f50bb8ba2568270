"""A websocket client connection that hands each message on the moment it is parsed.

websockets' asyncio connection queues every message it parses off the socket and wakes a
task blocked in ``recv()`` to take it: a coroutine resumption per message, and a second
buffer (with its own flow control) in front of the daemon's inbox. The feed's reader never
waits on anything, so that queue only costs time: in ``bench/live_bench.py`` the ``recv()``
round trip was about 2 µs of the event loop's time per mark-price frame, a sixth of the
daemon's whole cost.

:class:`PushConnection` is an :class:`asyncio.Protocol` driving websockets' documented
Sans-I/O layer (:class:`websockets.client.ClientProtocol`): bytes from the socket go into
``receive_data()``, the frames it parses come out of ``events_received()``, and what it has
to send (the opening handshake, pongs, the closing handshake) out of ``data_to_send()``.
The framing, the handshake's checks, ping answers, closing and ``max_size`` are
websockets'; what this module adds is where a data message goes: to a callback,
synchronously, in order.

- Messages parsed before :meth:`PushConnection.push_to` is called (a server may speak
  first) are held and handed over, in order, by that call.
- A message sent in fragments is handed on whole, once its last fragment arrives.
- Text is decoded as UTF-8. A message that is not valid UTF-8 is decoded with
  ``backslashreplace``: each bad byte becomes ``\\xNN``, which is valid JSON nowhere, so
  the engine task quarantines the message with the offending bytes visible, and the
  connection stays up. Binary messages are decoded the same way (OKX v5 sends none).
- No compression is offered (``permessage-deflate``): a feed of small JSON frames gains
  little from it, and inflating each frame would cost the event loop's time.
- :meth:`until_closed` waits for the end of the connection: it returns after a normal
  close and raises :class:`~websockets.exceptions.ConnectionClosedError` after any other.
- :meth:`ping` sends a websocket ping; :attr:`last_pong` is when the latest pong came
  (:func:`time.monotonic`), for a keepalive that reads silence (adapters/feed_link.py).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable

from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosedOK
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

__all__ = ["PushConnection"]

_DATA_OPCODES = frozenset((Opcode.TEXT, Opcode.BINARY, Opcode.CONT))


class PushConnection(asyncio.Protocol):
    """A client connection that pushes every message to a callback (module docstring).

    Open with :meth:`connect`; the connection is then open (the handshake succeeded)."""

    def __init__(self, protocol: ClientProtocol, close_timeout_s: float) -> None:
        """Use :meth:`connect`."""
        self.protocol = protocol
        self.transport: asyncio.Transport | None = None
        self._close_timeout_s = close_timeout_s
        loop = asyncio.get_running_loop()
        self._opened: asyncio.Future[None] = loop.create_future()
        self._closed: asyncio.Future[None] = loop.create_future()
        self._writable: asyncio.Future[None] | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._held: list[str] = []
        self._push: Callable[[str], None] = self._held.append
        self._fragments: list[bytes] = []
        self.last_pong = 0.0

    @classmethod
    async def connect(cls, url: str, *, open_timeout_s: float, max_size: int | None,
                      close_timeout_s: float = 2.0,
                      ssl_context: ssl.SSLContext | None = None) -> PushConnection:
        """Open a TCP (TLS for ``wss://``) connection to ``url`` and make the opening
        handshake, within ``open_timeout_s``.

        Raises OSError for the TCP connection, TimeoutError, and websockets'
        :class:`~websockets.exceptions.InvalidHandshake` family (InvalidURI, InvalidStatus,
        InvalidMessage...) for the handshake."""
        uri = parse_uri(url)
        protocol = ClientProtocol(uri, max_size=max_size)
        context = (ssl_context or ssl.create_default_context()) if uri.secure else None
        loop = asyncio.get_running_loop()
        connection: PushConnection | None = None
        try:
            async with asyncio.timeout(open_timeout_s):
                _, connection = await loop.create_connection(
                    lambda: cls(protocol, close_timeout_s), uri.host, uri.port, ssl=context,
                    server_hostname=uri.host if context is not None else None)
                await asyncio.shield(connection._opened)
        except BaseException:
            if connection is not None and connection.transport is not None:
                connection.transport.abort()
            raise
        return connection

    def push_to(self, receive: Callable[[str], None]) -> None:
        """Hand every message to ``receive`` from now on, those held so far first."""
        held, self._held = self._held, []
        self._push = receive
        for text in held:
            receive(text)

    async def send(self, text: str) -> None:
        """Send a text message; raises ConnectionClosed once the connection is closing."""
        if self.protocol.state is not State.OPEN:
            await asyncio.shield(self._closed)
            raise self.protocol.close_exc
        self.protocol.send_text(text.encode())
        self._flush()
        if self._writable is not None:
            await asyncio.shield(self._writable)

    def ping(self) -> None:
        """Send a websocket ping (nothing once the connection is closing)."""
        if self.protocol.state is State.OPEN:
            self.protocol.send_ping(b"")
            self._flush()

    async def until_closed(self) -> None:
        """Return when the connection has closed normally; raise ConnectionClosedError
        when it ended any other way."""
        await asyncio.shield(self._closed)
        error = self.protocol.close_exc
        if not isinstance(error, ConnectionClosedOK):
            raise error

    async def __aenter__(self) -> PushConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """The closing handshake (code 1000), then wait for the server to close the TCP
        connection, at most ``close_timeout_s`` (then it is aborted)."""
        if self.protocol.state is State.OPEN:
            self.protocol.send_close()
            self._flush()
            self._expect_close()
        # Closing already (either side began it): its abort timer bounds the wait too.
        await asyncio.shield(self._closed)

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.protocol.send_request(self.protocol.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if type(event) is Frame:
                if event.opcode in _DATA_OPCODES:
                    self._on_data(event)
                elif event.opcode is Opcode.PONG:
                    self.last_pong = time.monotonic()
            elif not self._opened.done():  # the handshake's response
                error = self.protocol.handshake_exc
                if error is None:
                    self._opened.set_result(None)
                else:
                    self._opened.set_exception(error)
        self._flush()
        self._expect_close()

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self._flush()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.receive_eof()  # idempotent: a drop without EOF ends the protocol too
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        if not self._opened.done():
            error = self.protocol.handshake_exc
            self._opened.set_exception(
                error if error is not None else ConnectionError(
                    "the connection closed during the opening handshake"))
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # -- internals ---------------------------------------------------------------------

    def _on_data(self, frame: Frame) -> None:
        if frame.fin and not self._fragments:
            self._push(_text(frame.data))
            return
        self._fragments.append(bytes(frame.data))
        if frame.fin:
            data = b"".join(self._fragments)
            self._fragments = []
            self._push(_text(data))

    def _flush(self) -> None:
        """Write what the protocol has to send; its empty marker means half-close."""
        transport = self.transport
        if transport is None or transport.is_closing():
            self.protocol.data_to_send()  # dropped: nowhere to write it
            return
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()

    def _expect_close(self) -> None:
        """When the protocol expects the TCP connection to close (a close handshake under
        way, a failed one), abort it if the server has not closed it in time."""
        if (self._abort_timer is None and self.transport is not None
                and self.protocol.close_expected()):
            self._abort_timer = asyncio.get_running_loop().call_later(
                self._close_timeout_s, self.transport.abort)


def _text(data: bytes | bytearray | memoryview) -> str:
    """A message as text: UTF-8, or with ``\\xNN`` for each byte that is not (see the
    module docstring)."""
    try:
        return str(data, "utf-8")
    except UnicodeDecodeError:
        return str(data, "utf-8", "backslashreplace")

