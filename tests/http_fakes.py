"""A small real HTTP/1.1 server on 127.0.0.1 standing in for a notification API
(Telegram, Slack, Discord, Alertmanager, a webhook receiver) in the notifier tests.

It records every request (method, path, headers, body) and answers each one with what
``reply`` says: a status, a body, headers, an optional delay, or no answer at all
(``Reply.hang``: a stuck destination). Keep-alive connections are served as httpx uses
them. Nothing here is a mock of httpx: the notifiers talk real HTTP over loopback.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at_s: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    hang: bool = False

    @classmethod
    def json(cls, document: Any, status: int = 200, **kwargs: Any) -> Reply:
        return cls(status, json.dumps(document).encode(),
                   {"Content-Type": "application/json"}, **kwargs)


Responder = Callable[[Received], Reply]


class FakeHttpServer:
    """``async with FakeHttpServer(reply) as server``: ``server.url``, ``server.requests``."""

    def __init__(self, reply: Responder | None = None) -> None:
        self.reply: Responder = reply or (lambda request: Reply())
        self.requests: list[Received] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeHttpServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def close_connections(self) -> None:
        """Drop every open connection (a request waiting on a hung reply fails at once)."""
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def wait_for(self, condition: Callable[[list[Received]], bool],
                       within_s: float = 30.0) -> None:
        """Until ``condition(requests)`` holds (polled on every request)."""
        async with asyncio.timeout(within_s):
            while not condition(self.requests):
                self._changed.clear()
                with suppress(TimeoutError):
                    async with asyncio.timeout(0.2):
                        await self._changed.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                method, path, _ = request_line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                received = Received(method, path, headers, body, time.monotonic())
                self.requests.append(received)
                self._changed.set()
                reply = self.reply(received)
                if reply.hang:
                    await asyncio.Event().wait()  # never answers; cancelled at close
                if reply.delay_s:
                    await asyncio.sleep(reply.delay_s)
                head = [f"HTTP/1.1 {reply.status} X", f"Content-Length: {len(reply.body)}",
                        *(f"{k}: {v}" for k, v in reply.headers.items())]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + reply.body)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            return  # close() or close_connections(): the connection is dropped
        finally:
            self._handlers.discard(task)
            writer.close()
            with suppress(Exception):
                await writer.wait_closed()
