"""The feed's websocket client (adapters/push_connection.py) against a real websockets
server on 127.0.0.1, port 0."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trustme
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.http11 import Request, Response

from adapters.push_connection import PushConnection
from tests.stream_harness import until

Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def server(handler: Handler, **options: object) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, **options) as running:  # type: ignore[arg-type]
        port = next(iter(running.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws"


async def connect(url: str, *, max_size: int | None = 1 << 20) -> PushConnection:
    return await PushConnection.connect(url, open_timeout_s=5, max_size=max_size,
                                        close_timeout_s=1)


async def test_messages_are_pushed_in_order_those_before_push_to_held() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send("first")  # the server speaks first
        assert await ws.recv() == "go"
        for n in range(50):
            await ws.send(f"m{n}")
        await ws.send(["frag", "mented ", "message"])  # one message in three fragments
        await ws.send(b"\xffbad-utf8")  # binary, and not UTF-8
        await ws.wait_closed()

    async with server(handler) as url:
        connection = await connect(url)
        received: list[str] = []
        await asyncio.sleep(0.05)  # "first" arrives before anyone takes it
        connection.push_to(received.append)
        await connection.send("go")
        await until(lambda: len(received) == 53, 5)
        await connection.close()
        await connection.until_closed()  # a normal close: returns

    assert received == ["first", *(f"m{n}" for n in range(50)), "fragmented message",
                        "\\xffbad-utf8"]


async def test_the_servers_pings_are_answered_by_the_protocol() -> None:
    latencies: list[float] = []

    async def handler(ws: ServerConnection) -> None:
        for _ in range(3):
            pong = await ws.ping()
            latencies.append(await asyncio.wait_for(pong, 5))
        await ws.close()

    async with server(handler, ping_interval=None) as url:
        connection = await connect(url)
        connection.push_to(lambda text: None)
        await connection.until_closed()

    assert len(latencies) == 3


async def test_a_dropped_connection_raises_from_until_closed() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send("hello")
        ws.transport.abort()  # no close frame

    async with server(handler) as url:
        connection = await connect(url)
        connection.push_to(lambda text: None)
        with pytest.raises(ConnectionClosedError):
            await connection.until_closed()
        with pytest.raises(ConnectionClosedError):
            await connection.send("too late")


async def test_a_message_over_max_size_closes_the_connection_with_1009() -> None:
    closed: list[int | None] = []

    async def handler(ws: ServerConnection) -> None:
        await ws.send("x" * 2_000)
        await ws.wait_closed()
        closed.append(ws.close_code)

    async with server(handler) as url:
        connection = await connect(url, max_size=1_000)
        received: list[str] = []
        connection.push_to(received.append)
        with pytest.raises(ConnectionClosedError) as caught:
            await connection.until_closed()
        await until(lambda: bool(closed), 5)

    assert received == []
    assert caught.value.sent is not None and caught.value.sent.code == 1009
    assert closed == [1009]


async def test_a_refused_handshake_raises_invalid_status() -> None:
    def refuse(connection: ServerConnection, request: Request) -> Response:
        return Response(403, "Forbidden", Headers(), b"no")

    async def handler(ws: ServerConnection) -> None:
        raise AssertionError("not reached")

    async with server(handler, process_request=refuse) as url:
        with pytest.raises(InvalidStatus) as caught:
            await connect(url)

    assert caught.value.response.status_code == 403


async def test_nothing_listening_raises_oserror() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()

    with pytest.raises(OSError):
        await connect(f"ws://127.0.0.1:{port}/ws")


async def test_a_server_that_never_answers_the_handshake_times_out() -> None:
    done = asyncio.Event()
    handlers: list[asyncio.Task[None]] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(65536)
            await done.wait()
        finally:
            writer.close()

    def start(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.create_task(silent(reader, writer)))

    silent_server = await asyncio.start_server(start, "127.0.0.1", 0)
    port = silent_server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TimeoutError):
            await PushConnection.connect(f"ws://127.0.0.1:{port}/ws", open_timeout_s=0.3,
                                         max_size=None)
    finally:
        done.set()
        await asyncio.gather(*handlers)
        silent_server.close()
        await silent_server.wait_closed()


async def test_wss_over_tls_checks_the_servers_certificate() -> None:
    # A local certificate authority (trustme) signs the server's certificate for
    # 127.0.0.1; only a client that trusts it gets through.
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)

    async def handler(ws: ServerConnection) -> None:
        await ws.send("over tls")
        await ws.wait_closed()

    async with server(handler, ssl=server_context) as url:
        secure = url.replace("ws://", "wss://")
        client_context = ssl.create_default_context()
        authority.configure_trust(client_context)
        connection = await PushConnection.connect(secure, open_timeout_s=5, max_size=None,
                                                  ssl_context=client_context)
        received: list[str] = []
        connection.push_to(received.append)
        await until(lambda: received == ["over tls"], 5)
        await connection.close()
        await connection.until_closed()
        with pytest.raises(ssl.SSLCertVerificationError):
            await PushConnection.connect(secure, open_timeout_s=5, max_size=None)
