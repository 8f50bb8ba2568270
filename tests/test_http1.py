"""The trade path's kept-open HTTP/1.1 connection (adapters/http1.py) against real servers on
loopback: the replay server's h11 listener, and raw asyncio servers that misbehave."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trustme

from adapters.http1 import HttpFailure, KeepAliveConnection
from adapters.rest_listener import HttpRequest, HttpResponse, RestListener

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Echo:
    """An h11 listener answering every request with its method, target and body."""

    def __init__(self) -> None:
        self.requests: list[HttpRequest] = []

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        self.requests.append(request)
        body = request.method.encode() + b" " + request.target.encode() + b" " + request.body
        return HttpResponse(200, body)


@pytest.fixture
async def echo() -> AsyncIterator[tuple[Echo, RestListener, int]]:
    handler = Echo()
    listener = RestListener(handler, idle_timeout_s=0.2)
    port = await listener.start("127.0.0.1", 0)
    yield handler, listener, port
    await listener.close()


async def raw_server(handle: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    return server, port


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def test_requests_share_one_connection(echo: tuple[Echo, RestListener, int]) -> None:
    handler, _, port = echo
    connection = KeepAliveConnection(f"http://127.0.0.1:{port}", timeout_s=2.0,
                                     headers={"Accept": "application/json"})
    try:
        first = await connection.request("POST", "/a", body=b'{"x":1}',
                                         headers={"OK-ACCESS-KEY": "k"})
        second = await connection.request("GET", "/b?c=1")
    finally:
        await connection.close()
    assert (first.status, first.body) == (200, b'POST /a {"x":1}')
    assert (second.status, second.body) == (200, b"GET /b?c=1 ")
    assert connection.connections_opened == 1
    assert handler.requests[0].headers["ok-access-key"] == "k"
    assert handler.requests[0].headers["accept"] == "application/json"
    assert handler.requests[0].headers["host"] == f"127.0.0.1:{port}"


async def test_a_connection_the_server_closed_is_replaced(
        echo: tuple[Echo, RestListener, int]) -> None:
    _, _, port = echo
    connection = KeepAliveConnection(f"http://127.0.0.1:{port}", timeout_s=2.0)
    try:
        await connection.request("GET", "/one")
        await asyncio.sleep(0.5)  # past the listener's idle timeout: it closes
        again = await connection.request("GET", "/two")
    finally:
        await connection.close()
    assert again.body == b"GET /two "
    assert connection.connections_opened == 2


async def test_no_answer_in_time_fails_and_the_next_request_starts_afresh() -> None:
    heads: list[bytes] = []
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await read_head(reader))
        if len(heads) == 1:
            await done.wait()  # never answers the first request
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    server, port = await raw_server(handle)
    connection = KeepAliveConnection(f"http://127.0.0.1:{port}", timeout_s=0.2)
    try:
        with pytest.raises(HttpFailure) as failure:
            await connection.request("POST", "/slow", body=b"[]")
        assert failure.value.timed_out
        answer = await connection.request("POST", "/fast", body=b"[]")
    finally:
        await connection.close()
        done.set()
        server.close()
        await server.wait_closed()
    assert answer.body == b"ok" and connection.connections_opened == 2


async def test_connection_close_and_a_cut_response() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nfirst",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\ncut short",
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
    ]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(answers.pop(0))
        await writer.drain()
        writer.close()

    server, port = await raw_server(handle)
    connection = KeepAliveConnection(f"http://127.0.0.1:{port}", timeout_s=2.0)
    try:
        first = await connection.request("GET", "/1")
        with pytest.raises(HttpFailure) as failure:
            await connection.request("GET", "/2")
        third = await connection.request("GET", "/3")
    finally:
        await connection.close()
        server.close()
        await server.wait_closed()
    assert first.body == b"first"
    assert not failure.value.timed_out
    assert (third.status, third.body) == (503, b"busy")
    assert connection.connections_opened == 3


async def test_an_oversized_answer_is_refused_unread() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1_000_000)
        await writer.drain()
        writer.close()

    server, port = await raw_server(handle)
    connection = KeepAliveConnection(f"http://127.0.0.1:{port}", timeout_s=2.0,
                                     max_body_bytes=10_000)
    try:
        with pytest.raises(HttpFailure, match="over 10000 bytes"):
            await connection.request("GET", "/big")
    finally:
        await connection.close()
        server.close()
        await server.wait_closed()


async def test_nothing_listening_is_a_failure_not_a_crash() -> None:
    server, port = await raw_server(lambda r, w: asyncio.sleep(0))
    server.close()
    await server.wait_closed()
    connection = KeepAliveConnection(f"http://127.0.0.1:{port}", timeout_s=1.0)
    with pytest.raises(HttpFailure) as failure:
        await connection.request("GET", "/")
    assert not failure.value.timed_out


def test_only_http_urls() -> None:
    with pytest.raises(ValueError, match="not an http"):
        KeepAliveConnection("ws://127.0.0.1:1", timeout_s=1.0)


async def test_https_over_tls_with_the_servers_certificate_checked() -> None:
    # A local certificate authority (trustme) signs the server's certificate for
    # 127.0.0.1; the client trusts that authority, and only it.
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    heads: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                heads.append(await read_head(reader))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecure")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    trusted = KeepAliveConnection(f"https://127.0.0.1:{port}", timeout_s=5,
                                  ssl_context=client_context)
    untrusted = KeepAliveConnection(f"https://127.0.0.1:{port}", timeout_s=5)
    try:
        first = await trusted.request("GET", "/a")
        second = await trusted.request("GET", "/b")
        assert (first.status, first.body, second.body) == (200, b"secure", b"secure")
        assert trusted.connections_opened == 1
        assert [head.split(b"\r\n")[0] for head in heads] == [b"GET /a HTTP/1.1",
                                                              b"GET /b HTTP/1.1"]
        # The system's authorities do not know this one: refused, not sent.
        with pytest.raises(HttpFailure, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusted.request("GET", "/c")
        assert len(heads) == 2
    finally:
        await trusted.close()
        await untrusted.close()
        server.close()
        await server.wait_closed()


async def test_a_head_request_is_answered_with_headers_only_and_the_listener_goes_on(
        echo: tuple[Echo, RestListener, int]) -> None:
    handler, _, port = echo
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"HEAD /probe HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = await read_head(reader)
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 12" in head.lower()
    # The next answer on the same connection follows at once: no body was sent to HEAD.
    second = await read_head(reader)
    assert second.startswith(b"HTTP/1.1 200")
    assert await reader.readexactly(len(b"GET /after ")) == b"GET /after "
    writer.close()
    assert [request.method for request in handler.requests] == ["HEAD", "GET"]
