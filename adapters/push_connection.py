"""A websockets client connection that hands each message on the moment it is parsed.

websockets' asyncio connection queues every message it parses off the socket and wakes a
task blocked in ``recv()`` to take it: a coroutine resumption per message, and a second
buffer (with its own flow control: reading pauses above 16 queued frames and resumes
below 4) in front of the daemon's inbox. The feed's reader never waits on anything, so
that queue only costs time: in ``bench/live_bench.py`` the ``recv()`` round trip was about
2 µs of the event loop's time per mark-price frame, a sixth of the daemon's whole cost.

:class:`PushConnection` is websockets' :class:`~websockets.asyncio.client.ClientConnection`
(passed to ``connect`` as its documented ``create_connection`` factory) with one change:
``process_event``, the method websockets calls for every event it parses (and that its
own ``ClientConnection`` overrides for the handshake), passes each data message to a
callback, synchronously, in order, instead of queueing it for ``recv()``. Everything else
is websockets' own: the handshake, control frames, closing, ``max_size``, sending.

- Messages parsed before :meth:`PushConnection.push_to` is called (a server may speak
  first) are held and handed over, in order, by that call.
- A message sent in fragments is handed on whole, once its last fragment arrives.
- Text is decoded as UTF-8. A message that is not valid UTF-8 (websockets would close the
  connection with code 1007) is decoded with ``backslashreplace`` instead: each bad byte
  becomes ``\\xNN``, which is valid JSON nowhere, so the engine task quarantines the
  message with the offending bytes visible, and the connection stays up. Binary messages
  are decoded the same way (OKX v5 sends none).
- ``recv()`` returns no message once messages are pushed; :meth:`until_closed` waits for
  the end of the connection and raises as ``recv()`` would.

``process_event`` is not documented as public API, so pyproject.toml bounds websockets to
the releases checked, and :func:`check_websockets` refuses others at start.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode

from monitor.errors import FeedError

__all__ = ["PushConnection", "check_websockets"]

_DATA_OPCODES = frozenset((Opcode.TEXT, Opcode.BINARY, Opcode.CONT))


class PushConnection(ClientConnection):
    """A client connection that pushes every message to a callback (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: list[str] = []
        self._push: Callable[[str], None] = self._held.append
        self._fragments: list[bytes] = []

    def push_to(self, receive: Callable[[str], None]) -> None:
        """Hand every message to ``receive`` from now on, those held so far first."""
        held, self._held = self._held, []
        self._push = receive
        for text in held:
            receive(text)

    async def until_closed(self) -> None:
        """Return when the connection closes normally; raise ConnectionClosedError (as
        ``recv()`` does) when it fails."""
        async for message in self:  # ends at a normal close, raises at a failed one
            # Not reached: process_event pushes every message. Kept in order all the same.
            self._push(_text(message))

    def process_event(self, event: Any) -> None:
        if type(event) is not Frame or event.opcode not in _DATA_OPCODES:
            super().process_event(event)  # the handshake response, control frames
            return
        if event.fin and not self._fragments:
            self._push(_text(event.data))
            return
        self._fragments.append(bytes(event.data))
        if event.fin:
            data = b"".join(self._fragments)
            self._fragments = []
            self._push(_text(data))


def _text(data: Any) -> str:
    """A message as text: UTF-8, or with ``\\xNN`` for each byte that is not (see the
    module docstring)."""
    if type(data) is str:
        return data
    raw = data if type(data) is bytes else bytes(data)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace")


def check_websockets() -> None:
    """Raise FeedError unless websockets has the hook :class:`PushConnection` uses."""
    if not callable(getattr(ClientConnection, "process_event", None)):
        raise FeedError(f"riskmon does not support websockets {version('websockets')}: its"
                        " asyncio ClientConnection has no process_event (see pyproject.toml)")
