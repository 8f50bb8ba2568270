"""The OKX v5 replay server (``adapters/okx/replay_server.py``) as a client meets it: a real
server on 127.0.0.1 port 0, real websockets clients, real HTTP requests, small recordings in
``tmp_path``. Assertions are on what the clients receive.

Waits are for events (a frame, an acknowledgement, the end of the replay) with generous
timeouts; the few timings asserted are lower bounds that a loaded machine can only lengthen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from adapters.okx.replay_server import (
    PRIVATE_PATH,
    PUBLIC_PATH,
    Faults,
    RecordingError,
    ReplayServer,
    serve,
)
from monitor.core.errors import ConfigError, RiskmonError
from tests.recordings import (
    T0,
    Line,
    account_push,
    balance_row,
    mark_price,
    order_row,
    orders,
    position_row,
    positions,
    rest,
    write_recording,
)

TIMEOUT = 20.0
BTC = "BTC-USDT-SWAP"
ETH = "ETH-USDT-SWAP"
ORDERS_PENDING = "/api/v5/trade/orders-pending"

Message = Any  # a decoded JSON frame, or the text of one that is not JSON


# --- client helpers -------------------------------------------------------------------------


@asynccontextmanager
async def running(recording: Path, **options: Any) -> AsyncIterator[tuple[ReplayServer, int]]:
    server = ReplayServer(recording, **options)
    port = await server.start()
    try:
        yield server, port
    finally:
        await server.close()


async def open_ws(port: int, path: str = PUBLIC_PATH) -> ClientConnection:
    return await connect(f"ws://127.0.0.1:{port}{path}", ping_interval=None)


async def receive(ws: ClientConnection, within: float = TIMEOUT) -> Message:
    async with asyncio.timeout(within):
        message = await ws.recv()
    try:
        return orjson.loads(message)
    except orjson.JSONDecodeError:
        return message


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(message).decode())


async def request(ws: ClientConnection, message: dict[str, Any]) -> Message:
    await send(ws, message)
    return await receive(ws)


def login_request(api_key: str = "main") -> dict[str, Any]:
    return {"op": "login", "args": [{"apiKey": api_key, "passphrase": "phrase",
                                     "timestamp": "1767225600", "sign": "c2lnbmF0dXJl"}]}


async def login(ws: ClientConnection, api_key: str = "main") -> Message:
    return await request(ws, login_request(api_key))


def subscribe_request(*args: dict[str, Any], op: str = "subscribe",
                      request_id: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {} if request_id is None else {"id": request_id}
    message.update(op=op, args=list(args))
    return message


async def subscribe(ws: ClientConnection, *args: dict[str, Any]) -> list[Message]:
    await send(ws, subscribe_request(*args))
    return [await receive(ws) for _ in args]


async def data_frames(ws: ClientConnection, count: int) -> list[Message]:
    return [await receive(ws) for _ in range(count)]


async def pong_after_ping(ws: ClientConnection) -> None:
    """A round trip: everything sent before the ping has been handled by the server."""
    await ws.send("ping")
    assert await receive(ws) == "pong"


async def assert_silent(ws: ClientConnection, seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await receive(ws, within=seconds)


async def http_get(port: int, path: str,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One plain HTTP/1.1 GET; returns the status and the decoded JSON body."""
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}",
                 *(f"{name}: {value}" for name, value in (headers or {}).items()),
                 "Connection: close", "", ""]
        writer.write("\r\n".join(lines).encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        status = int(head.split(" ", 2)[1])
        fields = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
        body = await reader.readexactly(int(fields["Content-Length"]))
        writer.close()
        await writer.wait_closed()
    assert fields["Content-Type"] == "application/json"
    return status, orjson.loads(body)


def frame(line: Line) -> dict[str, Any]:
    result: dict[str, Any] = line["frame"]
    return result


def mark_arg(inst_id: str) -> dict[str, Any]:
    return {"channel": "mark-price", "instId": inst_id}


PRIVATE_ARGS = ({"channel": "positions", "instType": "ANY"}, {"channel": "account"},
                {"channel": "orders", "instType": "ANY"})


class Session:
    """A client shaped like the live adapter: a public and a private connection, each opened
    again (logged in, subscribed) whenever it closes, collecting what arrives in order."""

    def __init__(self, port: int, *, public: tuple[dict[str, Any], ...] = (),
                 private: tuple[dict[str, Any], ...] = (), api_key: str = "main",
                 expected_frames: int, pause_before_reconnect: float = 0.0) -> None:
        self.port = port
        self.api_key = api_key
        self.args = {"public": public, "private": private}
        self.expected_frames = expected_frames
        self.frames: dict[str, list[Message]] = {"public": [], "private": []}
        self.others: dict[str, list[Message]] = {"public": [], "private": []}
        self.closures: list[tuple[str, int | None]] = []  # role, close code received
        self.connected: list[tuple[str, float]] = []  # role, time a connection opened
        self.pause_before_reconnect = pause_before_reconnect
        self._done = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Session:
        self._tasks = [asyncio.create_task(self._run(role))
                       for role, args in self.args.items() if args]
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(asyncio.CancelledError):
                await task

    async def wait(self) -> None:
        async with asyncio.timeout(TIMEOUT):
            await self._done.wait()

    async def _run(self, role: str) -> None:
        path = PUBLIC_PATH if role == "public" else PRIVATE_PATH
        while True:
            ws = await open_ws(self.port, path)
            self.connected.append((role, time.monotonic()))
            try:
                if role == "private":
                    assert (await login(ws, self.api_key))["event"] == "login"
                await send(ws, subscribe_request(*self.args[role]))
                async for message in ws:
                    self._note(role, message)
                self.closures.append((role, ws.close_code))
            except ConnectionClosed as closed:
                self.closures.append((role, None if closed.rcvd is None else closed.rcvd.code))
            await asyncio.sleep(self.pause_before_reconnect)

    def _note(self, role: str, raw: str | bytes) -> None:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.others[role].append(raw)
            return
        if isinstance(message, dict) and "data" in message:
            self.frames[role].append(message)
            if sum(map(len, self.frames.values())) >= self.expected_frames:
                self._done.set()
        else:
            self.others[role].append(message)


# --- recordings -----------------------------------------------------------------------------


def public_story(count: int, step_ms: int = 100) -> list[Line]:
    """``count`` mark prices, alternately BTC and ETH, ``step_ms`` apart."""
    return [mark_price(BTC if i % 2 == 0 else ETH, str(60000 + i), T0 + i * step_ms)
            for i in range(count)]


def mixed_story() -> list[Line]:
    """One account ("main") and the public feed, interleaved; a position closes on line 7."""
    return [
        positions("main", [position_row(BTC, "1", "60000", T0),
                           position_row(ETH, "2", "3000", T0)], T0, snapshot=True),
        account_push("main", [balance_row("USDT", "1000", T0)], T0 + 10, snapshot=True),
        mark_price(BTC, "60000", T0 + 100),
        mark_price(ETH, "3000", T0 + 200),
        positions("main", [position_row(BTC, "3", "60100", T0 + 300)], T0 + 300),
        mark_price(BTC, "60100", T0 + 400),
        positions("main", [position_row(ETH, "0", "", T0 + 500)], T0 + 500),
        mark_price(ETH, "3010", T0 + 600),
        account_push("main", [balance_row("USDT", "900", T0 + 700)], T0 + 700),
        mark_price(BTC, "60200", T0 + 800),
    ]


def split_roles(lines: list[Line]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    public = [frame(line) for line in lines if "account" not in line]
    private = [frame(line) for line in lines if "account" in line]
    return public, private


def account_snapshot(line: Line) -> dict[str, Any]:
    """The snapshot of the account as one recorded account push left it."""
    return {"arg": frame(line)["arg"], "eventType": "snapshot", "curPage": 1,
            "lastPage": True, "data": frame(line)["data"]}


def positions_snapshot(*rows: dict[str, Any]) -> dict[str, Any]:
    return {"arg": {"channel": "positions", "instType": "ANY", "uid": "44705892343619584"},
            "eventType": "snapshot", "curPage": 1, "lastPage": True, "data": list(rows)}


# --- keepalive, login, subscribe ------------------------------------------------------------


async def test_ping_is_answered_with_pong_on_both_endpoints(tmp_path: Path) -> None:
    recording = write_recording(tmp_path / "r.jsonl", public_story(2))
    async with running(recording, speed=None) as (_, port):
        for path in (PUBLIC_PATH, PRIVATE_PATH):
            ws = await open_ws(port, path)
            await pong_after_ping(ws)
            await pong_after_ping(ws)
            await ws.close()


async def test_login_succeeds_with_the_documented_reply(tmp_path: Path) -> None:
    recording = write_recording(tmp_path / "r.jsonl", mixed_story())
    async with running(recording, speed=None) as (_, port):
        ws = await open_ws(port, PRIVATE_PATH)
        reply = await login(ws, "main")
        assert reply == {"event": "login", "code": "0", "msg": "", "connId": reply["connId"]}
        assert isinstance(reply["connId"], str) and reply["connId"]
        # A second login on the same connection is refused (docs: 60031).
        again = await login(ws, "main")
        assert (again["event"], again["code"]) == ("error", "60031")
        await ws.close()


async def test_login_failures_answer_documented_errors_and_keep_the_connection(
        tmp_path: Path) -> None:
    lines = [positions("alpha", [], T0, snapshot=True), positions("beta", [], T0, snapshot=True)]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    good = login_request("alpha")["args"][0]
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"op": "login"}, "60012", "Invalid request"),
        ({"op": "login", "args": [good, good]}, "60013", "Invalid args"),
        ({"op": "login", "args": [{**good, "apiKey": ""}]}, "60027",
         "Parameter apiKey can not be empty."),
        ({"op": "login", "args": [{k: v for k, v in good.items() if k != "sign"}]}, "60027",
         "Parameter sign can not be empty."),
        ({"op": "login", "args": [{**good, "timestamp": 1767225600}]}, "60013",
         "Invalid args"),
        # Two accounts in the recording: the key must name one of them.
        (login_request("gamma"), "60005", "Invalid apiKey"),
    ]
    async with running(recording, speed=None) as (_, port):
        ws = await open_ws(port, PRIVATE_PATH)
        for message, code, text in cases:
            reply = await request(ws, message)
            assert reply["event"] == "error" and reply["code"] == code, message
            assert reply["msg"].startswith(text)
            assert reply["connId"]
        public = await open_ws(port, PUBLIC_PATH)
        refused = await login(public, "alpha")
        assert (refused["event"], refused["code"]) == ("error", "60028")
        # Still open, and a good login goes through.
        assert (await login(ws, "alpha"))["event"] == "login"
        await pong_after_ping(public)
        await ws.close()
        await public.close()


async def test_fail_logins_refuses_the_first_attempts(tmp_path: Path) -> None:
    recording = write_recording(tmp_path / "r.jsonl", mixed_story())
    async with running(recording, speed=None, faults=Faults(fail_logins=2)) as (_, port):
        ws = await open_ws(port, PRIVATE_PATH)
        for _ in range(2):
            reply = await login(ws)
            assert reply == {"event": "error", "code": "60009", "msg": "Login failed.",
                             "connId": reply["connId"]}
        assert (await login(ws))["event"] == "login"
        await ws.close()


async def test_subscribe_acknowledges_each_argument_with_the_request_id(
        tmp_path: Path) -> None:
    recording = write_recording(tmp_path / "r.jsonl", public_story(2))
    async with running(recording, speed=None) as (_, port):
        ws = await open_ws(port)
        await send(ws, subscribe_request(mark_arg(BTC), mark_arg(ETH), request_id="1512"))
        acks = [await receive(ws), await receive(ws)]
        conn_id = acks[0]["connId"]
        assert acks == [
            {"id": "1512", "event": "subscribe", "arg": mark_arg(BTC), "connId": conn_id},
            {"id": "1512", "event": "subscribe", "arg": mark_arg(ETH), "connId": conn_id},
        ]
        # The replay has started: both frames come, then unsubscribing is acknowledged.
        assert await data_frames(ws, 2) == [frame(line) for line in public_story(2)]
        await send(ws, subscribe_request(mark_arg(ETH), op="unsubscribe"))
        assert await receive(ws) == {"event": "unsubscribe", "arg": mark_arg(ETH),
                                     "connId": conn_id}
        await ws.close()


async def test_bad_requests_get_documented_errors_and_the_connection_stays_open(
        tmp_path: Path) -> None:
    recording = write_recording(tmp_path / "r.jsonl", mixed_story())
    public_cases: list[tuple[str | bytes | dict[str, Any], str, str]] = [
        ("not json", "60012", "Invalid request: not json"),
        (b"\x01\x02", "60012", "Invalid request"),
        ({"op": "dance", "args": []}, "60019", "Invalid op: dance"),
        ({"args": [mark_arg(BTC)]}, "60012", "Invalid request"),
        ({"op": "subscribe"}, "60012", "Invalid request"),
        ({"op": "subscribe", "args": ["mark-price"]}, "60013", "Invalid args"),
        ({"op": "subscribe", "args": [{"instId": BTC}]}, "60027",
         "Parameter channel can not be empty."),
        ({"op": "subscribe", "args": [{"channel": "orders", "instType": "ANY"}]}, "60008",
         "The current WebSocket endpoint does not support subscribing to orders channels"),
    ]
    private_cases: list[tuple[str | bytes | dict[str, Any], str, str]] = [
        ({"op": "subscribe", "args": [{"channel": "orders", "instType": "ANY"}]}, "60011",
         "Please log in"),
        ({"op": "subscribe", "args": [mark_arg(BTC)]}, "60008",
         "The current WebSocket endpoint does not support subscribing to mark-price"),
    ]
    async with running(recording, speed=None) as (_, port):
        for path, cases in ((PUBLIC_PATH, public_cases), (PRIVATE_PATH, private_cases)):
            ws = await open_ws(port, path)
            for message, code, text in cases:
                if isinstance(message, dict):
                    await send(ws, message)
                else:
                    await ws.send(message)
                reply = await receive(ws)
                assert reply["event"] == "error" and reply["code"] == code, message
                assert reply["msg"].startswith(text) and reply["connId"]
                assert "id" not in reply
            # With an id, the error carries it (docs: "Subscribe", failure example).
            await send(ws, {"id": "7", "op": "subscribe", "args": [{"channel": ""}]})
            assert (await receive(ws))["id"] == "7"
            await pong_after_ping(ws)
            await ws.close()


# --- pushes ---------------------------------------------------------------------------------


async def test_nothing_is_pushed_until_every_needed_connection_is_ready(
        tmp_path: Path) -> None:
    lines = mixed_story()
    recording = write_recording(tmp_path / "r.jsonl", lines)
    public_frames, private_frames = split_roles(lines)
    async with running(recording, speed=None) as (server, port):
        public = await open_ws(port)
        await subscribe(public, mark_arg(BTC), mark_arg(ETH))
        await pong_after_ping(public)
        private = await open_ws(port, PRIVATE_PATH)
        await login(private)
        await pong_after_ping(private)
        # Logged in but not subscribed: the private connection is not ready yet.
        await assert_silent(public)
        assert server.frames_pushed == 0
        await subscribe(private, *PRIVATE_ARGS)
        assert await data_frames(public, len(public_frames)) == public_frames
        assert await data_frames(private, len(private_frames)) == private_frames
        assert await server.wait_finished() == len(lines)
        await public.close()
        await private.close()


async def test_frames_follow_the_recorded_order_across_connections(tmp_path: Path) -> None:
    lines = mixed_story()
    recording = write_recording(tmp_path / "r.jsonl", lines)
    arrivals: list[tuple[float, dict[str, Any]]] = []

    async def read(ws: ClientConnection, count: int) -> None:
        for _ in range(count):
            message = await receive(ws)
            arrivals.append((time.monotonic(), message))

    public_frames, private_frames = split_roles(lines)
    # A wide gap between pushes to different connections, so that a client reading two
    # sockets sees the recorded order even on a busy machine.
    async with running(recording, speed=None, switch_gap_s=0.15) as (_, port):
        public = await open_ws(port)
        private = await open_ws(port, PRIVATE_PATH)
        await login(private)
        await subscribe(private, *PRIVATE_ARGS)
        await subscribe(public, mark_arg(BTC), mark_arg(ETH))
        await asyncio.gather(read(public, len(public_frames)),
                             read(private, len(private_frames)))
        await public.close()
        await private.close()
    assert [message for _, message in sorted(arrivals, key=lambda item: item[0])] == [
        frame(line) for line in lines]


async def test_private_frames_are_routed_by_api_key(tmp_path: Path) -> None:
    lines = [
        positions("alpha", [position_row(BTC, "1", "60000", T0)], T0, snapshot=True),
        positions("beta", [position_row(ETH, "5", "3000", T0)], T0 + 1, snapshot=True),
        orders("alpha", [order_row("11", "live", T0 + 2)], T0 + 2),
        orders("beta", [order_row("21", "live", T0 + 3)], T0 + 3),
        positions("beta", [position_row(ETH, "6", "3000", T0 + 4)], T0 + 4),
    ]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None) as (server, port):
        beta = await open_ws(port, PRIVATE_PATH)
        alpha = await open_ws(port, PRIVATE_PATH)
        assert (await login(beta, "beta"))["event"] == "login"
        assert (await login(alpha, "alpha"))["event"] == "login"
        await subscribe(alpha, *PRIVATE_ARGS)
        await subscribe(beta, *PRIVATE_ARGS)
        assert await data_frames(alpha, 2) == [frame(lines[0]), frame(lines[2])]
        assert await data_frames(beta, 3) == [frame(lines[1]), frame(lines[3]),
                                              frame(lines[4])]
        assert await server.wait_finished() == 5
        await alpha.close()
        await beta.close()


async def test_a_single_account_recording_accepts_any_api_key(tmp_path: Path) -> None:
    lines = [positions("main", [position_row(BTC, "1", "60000", T0)], T0, snapshot=True),
             orders("main", [order_row("11", "live", T0 + 2)], T0 + 2)]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None) as (_, port):
        ws = await open_ws(port, PRIVATE_PATH)
        assert (await login(ws, "a-real-looking-key-4f2a"))["event"] == "login"
        await subscribe(ws, *PRIVATE_ARGS)
        assert await data_frames(ws, 2) == [frame(line) for line in lines]
        await ws.close()


async def test_a_paced_replay_takes_at_least_the_recorded_time_over_speed(
        tmp_path: Path) -> None:
    lines = public_story(5, step_ms=100)  # 400 ms recorded
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=2.0) as (_, port):
        ws = await open_ws(port)
        started = time.monotonic()  # before the server can start pushing
        await subscribe(ws, mark_arg(BTC), mark_arg(ETH))
        assert await data_frames(ws, 5) == [frame(line) for line in lines]
        assert time.monotonic() - started >= 0.4 / 2.0
        await ws.close()


async def test_a_frame_waits_for_its_subscription(tmp_path: Path) -> None:
    lines = [mark_price(BTC, "60000", T0), mark_price(ETH, "3000", T0 + 1),
             mark_price(BTC, "60001", T0 + 2)]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None, subscribe_grace_s=30.0) as (_, port):
        ws = await open_ws(port)
        await subscribe(ws, mark_arg(BTC))
        assert await receive(ws) == frame(lines[0])
        await send(ws, subscribe_request(mark_arg(ETH)))
        # The ETH frame was held for the subscription: its acknowledgement comes first.
        assert (await receive(ws))["event"] == "subscribe"
        assert await data_frames(ws, 2) == [frame(lines[1]), frame(lines[2])]
        await ws.close()


async def test_a_frame_goes_anyway_after_the_subscribe_grace(tmp_path: Path) -> None:
    lines = [mark_price(BTC, "60000", T0), mark_price(ETH, "3000", T0 + 1),
             mark_price(BTC, "60001", T0 + 2), mark_price(ETH, "3001", T0 + 3)]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None, subscribe_grace_s=0.2) as (server, port):
        ws = await open_ws(port)
        await subscribe(ws, mark_arg(BTC))  # never ETH
        assert await data_frames(ws, 4) == [frame(line) for line in lines]
        assert await server.wait_finished() == 4
        await ws.close()


async def test_bad_lines_are_skipped_and_operational_frames_not_replayed(
        tmp_path: Path) -> None:
    lines: list[Line | str] = [
        "{truncated",
        mark_price(BTC, "60000", T0),
        "[1, 2]",
        {"recv_ts": T0 + 1, "frame": {"event": "subscribe", "arg": mark_arg(BTC),
                                      "connId": "a4d3ae55"}},
        {"recv_ts": T0 + 2, "frame": "pong"},
        {"recv_ts": "soon", "frame": frame(mark_price(BTC, "1", T0))},
        {"recv_ts": T0 + 3, "frame": {"arg": {"channel": "orders"}, "data": []}},
        "",
        mark_price(BTC, "60001", T0 + 4),
    ]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None) as (server, port):
        ws = await open_ws(port)
        await subscribe(ws, mark_arg(BTC))
        assert await data_frames(ws, 2) == [frame(mark_price(BTC, "60000", T0)),
                                            frame(mark_price(BTC, "60001", T0 + 4))]
        assert await server.wait_finished() == 2
        # Not JSON, not an object, no recv_ts, a private channel without an account.
        assert server.lines_skipped == 4
        await assert_silent(ws, 0.2)
        await ws.close()


async def test_a_deeply_nested_frame_is_skipped_not_a_crash(tmp_path: Path) -> None:
    # Issue 15 ("the replay server crashes on a deeply nested frame"): orjson reads JSON
    # nested up to 1024 deep but writes at most 255 deep, so a frame between the two was read
    # and then failed its push. Such lines (a frame, a REST body) are skipped when read.
    nested = "[" * 300 + "]" * 300
    lines: list[Line | str] = [
        mark_price(BTC, "60000", T0),
        f'{{"recv_ts": {T0 + 1}, "frame": {{"arg": {mark_arg_text()}, "data": [{nested}]}}}}',
        f'{{"recv_ts": {T0 + 2}, "account": "main", "rest": "/api/v5/trade/orders-pending",'
        f' "body": {{"code": "0", "msg": "", "data": [{nested}]}}}}',
        mark_price(BTC, "60001", T0 + 3),
    ]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None) as (server, port):
        ws = await open_ws(port)
        await subscribe(ws, mark_arg(BTC))
        assert await data_frames(ws, 2) == [frame(mark_price(BTC, "60000", T0)),
                                            frame(mark_price(BTC, "60001", T0 + 3))]
        assert await server.wait_finished() == 2
        assert server.lines_skipped == 2
        await ws.close()


def mark_arg_text() -> str:
    return orjson.dumps(mark_arg(BTC)).decode()


# --- faults and reconnects ------------------------------------------------------------------


async def test_dropped_connections_resume_with_the_next_frame_and_a_snapshot(
        tmp_path: Path) -> None:
    lines = mixed_story()
    recording = write_recording(tmp_path / "r.jsonl", lines)
    public_frames, private_frames = split_roles(lines)
    # Drops after 3 frames (the next is public: line 4) and after 6 (private: line 7).
    faults = Faults(drop_after=3, drop_times=2)
    async with running(recording, speed=None, faults=faults) as (server, port):
        async with Session(port, public=(mark_arg(BTC), mark_arg(ETH)), private=PRIVATE_ARGS,
                           expected_frames=len(lines) + 2) as session:
            await session.wait()
        assert await server.wait_finished() == len(lines)
    assert session.closures == [("public", None), ("private", None)]  # no close frame
    assert session.frames["public"] == public_frames
    # Re-subscribing gives the account's state as pushed so far, then the next frame: the
    # ETH position is still open (its closing update, line 7, was not pushed yet).
    assert session.frames["private"] == [
        *private_frames[:3],
        account_snapshot(lines[1]),
        positions_snapshot(position_row(BTC, "3", "60100", T0 + 300),
                           position_row(ETH, "2", "3000", T0)),
        *private_frames[3:],
    ]


async def test_subscribing_again_gives_the_latest_rows_as_a_snapshot(tmp_path: Path) -> None:
    sol = "SOL-USDT-SWAP"
    lines = [
        positions("main", [position_row(BTC, "1", "60000", T0),
                           position_row(sol, "3", "150", T0)], T0, snapshot=True),
        account_push("main", [balance_row("USDT", "1000", T0),
                              balance_row("BTC", "0.5", T0)], T0 + 1, snapshot=True),
        positions("main", [position_row(ETH, "2", "3000", T0 + 2)], T0 + 2),
        # A later snapshot without SOL: SOL is closed.
        positions("main", [position_row(BTC, "2", "60000", T0 + 3),
                           position_row(ETH, "2", "3000", T0 + 2)], T0 + 3, snapshot=True),
        positions("main", [position_row(ETH, "0", "", T0 + 4)], T0 + 4),
        account_push("main", [balance_row("BTC", "0.4", T0 + 5)], T0 + 5),
    ]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None) as (server, port):
        ws = await open_ws(port, PRIVATE_PATH)
        await login(ws)
        await subscribe(ws, *PRIVATE_ARGS)
        assert await data_frames(ws, len(lines)) == [frame(line) for line in lines]
        assert await server.wait_finished() == len(lines)
        await send(ws, subscribe_request(PRIVATE_ARGS[1], PRIVATE_ARGS[0], request_id="9"))
        acks = [await receive(ws), await receive(ws)]
        assert [(ack["id"], ack["arg"]) for ack in acks] == [("9", PRIVATE_ARGS[1]),
                                                             ("9", PRIVATE_ARGS[0])]
        balances = frame(lines[5])["data"][0]
        assert await data_frames(ws, 2) == [
            # The latest account row, with the details of every currency merged.
            {"arg": frame(lines[5])["arg"], "eventType": "snapshot", "curPage": 1,
             "lastPage": True,
             "data": [{**balances, "details": [balance_row("USDT", "1000", T0),
                                               balance_row("BTC", "0.4", T0 + 5)]}]},
            positions_snapshot(position_row(BTC, "2", "60000", T0 + 3)),
        ]
        # Orders have no snapshot (SPEC 3.1: they come from REST).
        await send(ws, subscribe_request(PRIVATE_ARGS[2]))
        assert (await receive(ws))["event"] == "subscribe"
        await assert_silent(ws, 0.2)
        await ws.close()


async def test_a_reconnect_does_not_bring_a_burst(tmp_path: Path) -> None:
    lines = public_story(6, step_ms=100)
    recording = write_recording(tmp_path / "r.jsonl", lines)
    # The client waits longer than the whole recording before it reconnects: without
    # re-basing, every remaining frame would then be overdue and pushed at once.
    async with (running(recording, speed=1.0, faults=Faults(drop_after=2)) as (_, port),
                Session(port, public=(mark_arg(BTC), mark_arg(ETH)), expected_frames=6,
                        pause_before_reconnect=0.6) as session):
        await session.wait()
        finished = time.monotonic()
    assert session.frames["public"] == [frame(line) for line in lines]
    reconnected = session.connected[1][1]
    # Frames 3 to 6 span 300 ms of recording and come at that pace after the reconnect.
    assert finished - reconnected >= 0.3


async def test_garbage_is_a_text_frame_that_is_not_json(tmp_path: Path) -> None:
    lines = public_story(3)
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None, faults=Faults(garbage_after=1)) as (_, port):
        ws = await open_ws(port)
        await subscribe(ws, mark_arg(BTC), mark_arg(ETH))
        assert await receive(ws) == frame(lines[0])
        garbage = await ws.recv()
        assert isinstance(garbage, str)
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(garbage)
        assert await data_frames(ws, 2) == [frame(line) for line in lines[1:]]
        await ws.close()


async def test_a_stall_holds_pongs_and_pushes(tmp_path: Path) -> None:
    lines = public_story(3)
    recording = write_recording(tmp_path / "r.jsonl", lines)
    faults = Faults(stall_after=2, stall_s=1.5)
    async with running(recording, speed=None, faults=faults) as (server, port):
        ws = await open_ws(port)
        await subscribe(ws, mark_arg(BTC), mark_arg(ETH))
        assert await data_frames(ws, 2) == [frame(line) for line in lines[:2]]
        sent = time.monotonic()
        await ws.send("ping")
        later = [await receive(ws), await receive(ws)]
        # The stall began with the second push, before the ping could arrive; allowing this
        # client up to a second to send it, the pong still waited half a second or more.
        assert time.monotonic() - sent >= 0.5
        assert sorted(later, key=str) == sorted(["pong", frame(lines[2])], key=str)
        assert await server.wait_finished() == 3
        await ws.close()


async def test_a_64008_notice_then_close_and_the_replay_continues_on_new_connections(
        tmp_path: Path) -> None:
    lines = mixed_story()
    recording = write_recording(tmp_path / "r.jsonl", lines)
    public_frames, private_frames = split_roles(lines)
    faults = Faults(notice_after=2, notice_close_s=0.2)
    async with running(recording, speed=None, faults=faults) as (server, port):
        async with Session(port, public=(mark_arg(BTC), mark_arg(ETH)), private=PRIVATE_ARGS,
                           expected_frames=len(lines) + 2) as session:
            await session.wait()
        assert await server.wait_finished() == len(lines)
    for role in ("public", "private"):
        notices = [m for m in session.others[role] if m.get("event") == "notice"]
        assert [(n["code"], n["msg"]) for n in notices] == [(
            "64008", "The connection will soon be closed for a service upgrade. "
                     "Please reconnect.")]
        assert notices[0]["connId"]
    assert sorted(session.closures) == [("private", 1012), ("public", 1012)]
    assert session.frames["public"] == public_frames
    assert session.frames["private"] == [
        *private_frames[:2],
        account_snapshot(lines[1]),
        positions_snapshot(position_row(BTC, "1", "60000", T0),
                           position_row(ETH, "2", "3000", T0)),
        *private_frames[2:],
    ]


# --- REST -----------------------------------------------------------------------------------


def order_ids(body: dict[str, Any]) -> list[str]:
    assert body["code"] == "0"
    return [row["ordId"] for row in body["data"]]


async def test_orders_pending_follows_the_push_position(tmp_path: Path) -> None:
    lines = [
        rest(ORDERS_PENDING, [order_row(i, "live", T0) for i in ("101", "102")]
             + [order_row("103", "partially_filled", T0)], T0, account="main"),
        positions("main", [position_row(BTC, "1", "60000", T0)], T0 + 10, snapshot=True),
        orders("main", [order_row("102", "filled", T0 + 20),
                        order_row("104", "live", T0 + 20, inst_id=ETH)], T0 + 20),
        orders("main", [order_row("105", "live", T0 + 30),
                        order_row("106", "live", T0 + 30)], T0 + 30),
        account_push("main", [balance_row("USDT", "1000", T0 + 40)], T0 + 40),
        rest(ORDERS_PENDING, [order_row(i, "live", T0 + 50) for i in ("101", "104")],
             T0 + 50, account="main"),
        orders("main", [order_row("107", "live", T0 + 60)], T0 + 60),
    ]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    key = {"OK-ACCESS-KEY": "main"}
    async with running(recording, speed=None, subscribe_grace_s=30.0) as (_, port):
        ws = await open_ws(port, PRIVATE_PATH)
        await login(ws)
        # Only positions: the first orders frame waits for its subscription.
        await subscribe(ws, PRIVATE_ARGS[0])
        assert await receive(ws) == frame(lines[1])
        status, body = await http_get(port, ORDERS_PENDING, key)
        assert status == 200 and order_ids(body) == ["103", "102", "101"]
        pages = {
            "?limit=2": ["103", "102"],
            "?after=102": ["101"],
            "?before=101": ["103", "102"],
            "?before=101&limit=1": ["102"],
            "?after=103&before=101": ["102"],
            "?state=partially_filled": ["103"],
            "?instId=ETH-USDT-SWAP": [],
            "?instType=SWAP&instFamily=BTC-USDT": ["103", "102", "101"],
        }
        for query, expected in pages.items():
            status, body = await http_get(port, ORDERS_PENDING + query, key)
            assert (status, order_ids(body)) == (200, expected), query
        for query in ("?limit=0", "?limit=101", "?limit=many"):
            status, body = await http_get(port, ORDERS_PENDING + query, key)
            assert (status, body["code"]) == (400, "51000"), query

        # Orders pushed since that response: 102 filled, 104 to 106 live. The account frame
        # now waits for its subscription, so the second recorded response is not read yet.
        await send(ws, subscribe_request(PRIVATE_ARGS[2]))
        assert (await receive(ws))["event"] == "subscribe"
        assert await data_frames(ws, 2) == [frame(lines[2]), frame(lines[3])]
        status, body = await http_get(port, ORDERS_PENDING, key)
        assert order_ids(body) == ["106", "105", "104", "103", "101"]
        _, body = await http_get(port, ORDERS_PENDING + "?after=104&limit=2", key)
        assert order_ids(body) == ["103", "101"]
        _, body = await http_get(port, ORDERS_PENDING + "?before=103&limit=2", key)
        assert order_ids(body) == ["105", "104"]

        # Past the second recorded response, then one more order.
        await send(ws, subscribe_request(PRIVATE_ARGS[1]))
        assert (await receive(ws))["event"] == "subscribe"
        assert await data_frames(ws, 2) == [frame(lines[4]), frame(lines[6])]
        _, body = await http_get(port, ORDERS_PENDING, key)
        assert order_ids(body) == ["107", "104", "101"]
        assert body["data"][0] == order_row("107", "live", T0 + 60)
        await ws.close()


async def test_rest_authentication_and_unknown_paths(tmp_path: Path) -> None:
    lines = [positions("alpha", [], T0, snapshot=True), positions("beta", [], T0, snapshot=True)]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None) as (_, port):
        assert await http_get(port, ORDERS_PENDING) == (401, {
            "code": "50103", "msg": "Request header OK-ACCESS-KEY cannot be empty",
            "data": []})
        assert await http_get(port, ORDERS_PENDING, {"OK-ACCESS-KEY": "gamma"}) == (401, {
            "code": "50111", "msg": "Invalid OK-ACCESS-KEY", "data": []})
        assert await http_get(port, ORDERS_PENDING, {"OK-ACCESS-KEY": "beta"}) == (200, {
            "code": "0", "msg": "", "data": []})
        for path in ("/api/v5/account/balance", "/api/v5/account/positions",
                     "/api/v5/account/config"):
            status, body = await http_get(port, path)
            assert (status, body["code"]) == (401, "50103"), path
        status, body = await http_get(port, "/api/v5/account/bills")
        assert status == 404 and body["data"] == []
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"ws://127.0.0.1:{port}/ws/v5/business")
        assert refused.value.response.status_code == 404


async def test_instruments_and_tiers_are_served_by_path_and_query(tmp_path: Path) -> None:
    instrument = {"instType": "SWAP", "instId": BTC, "ctVal": "0.01", "ctMult": "1"}
    tier = {"instFamily": "BTC-USDT", "tier": "1", "maxSz": "5000", "mmr": "0.004"}
    lines = [
        rest("/api/v5/public/instruments?instType=SWAP", [instrument], T0),
        rest("/api/v5/public/position-tiers?instType=SWAP&tdMode=cross&instFamily=BTC-USDT",
             [tier], T0),
        mark_price(BTC, "60000", T0 + 1),
    ]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None) as (_, port):
        assert await http_get(port, "/api/v5/public/instruments?instType=SWAP") == (200, {
            "code": "0", "msg": "", "data": [instrument]})
        reordered = "/api/v5/public/position-tiers?instFamily=BTC-USDT&instType=SWAP&tdMode=cross"
        assert await http_get(port, reordered) == (200, {"code": "0", "msg": "",
                                                         "data": [tier]})
        empty = (200, {"code": "0", "msg": "", "data": []})
        assert await http_get(port, "/api/v5/public/instruments?instType=FUTURES") == empty
        assert await http_get(port, "/api/v5/public/position-tiers?instType=SWAP") == empty


ACCOUNT_CONFIG = "/api/v5/account/config"
BALANCE = "/api/v5/account/balance"
POSITIONS = "/api/v5/account/positions"
KEY = {"OK-ACCESS-KEY": "main"}


async def test_the_account_rest_state_follows_the_push_position(tmp_path: Path) -> None:
    config_row = {"acctLv": "2", "posMode": "long_short_mode", "uid": "1"}
    long_side = position_row(BTC, "3", "60000", T0, pos_side="long")
    short_side = position_row(BTC, "2", "61000", T0, pos_side="short")
    # Two positions on one instrument and side, told apart by their margin mode.
    eth_cross = position_row(ETH, "5", "3000", T0)
    eth_isolated = {**position_row(ETH, "1", "3100", T0), "mgnMode": "isolated",
                    "margin": "150"}
    balance = {"uTime": str(T0), "totalEq": "2000", "adjEq": "", "imr": "", "mmr": "",
               "mgnRatio": "", "details": [balance_row("USDT", "1000", T0),
                                           balance_row("BTC", "0.01", T0)]}
    discount = {"ccy": "USDT", "details": [{"minAmt": "0", "maxAmt": "", "discountRate": "1",
                                            "tier": "1"}]}
    borrow = {"instFamily": "", "instId": "", "tier": "1", "maxSz": "", "mmr": "0.03",
              "imr": "0.2"}
    margin_tiers = "/api/v5/public/position-tiers?instType=MARGIN&tdMode=cross&ccy=USDT"
    lines = [
        rest(ACCOUNT_CONFIG, [config_row], T0 - 30, account="main"),
        rest(BALANCE, [balance], T0 - 20, account="main"),
        rest(POSITIONS, [long_side, short_side, eth_cross, eth_isolated], T0 - 10,
             account="main"),
        positions("main", [position_row(BTC, "0", "", T0 + 10, pos_side="long")], T0 + 10),
        account_push("main", [balance_row("USDT", "900", T0 + 20)], T0 + 20),
        rest("/api/v5/public/discount-rate-interest-free-quota?ccy=USDT", [discount], T0 + 30),
        rest(margin_tiers, [borrow], T0 + 30),
    ]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None, subscribe_grace_s=30.0) as (server, port):
        # Before any push: the recorded bodies, as they are.
        # account/config gains the key's permissions (docs "Get account configuration").
        assert await http_get(port, ACCOUNT_CONFIG, KEY) == (200, rest(
            ACCOUNT_CONFIG, [{**config_row, "perm": "read_only,trade"}], T0)["body"])
        assert await http_get(port, BALANCE, KEY) == (200, lines[1]["body"])
        assert await http_get(port, POSITIONS, KEY) == (200, lines[2]["body"])
        empty = (200, {"code": "0", "msg": "", "data": []})
        discount_path = "/api/v5/public/discount-rate-interest-free-quota?ccy=USDT"
        assert await http_get(port, discount_path) == empty  # not read yet

        ws = await open_ws(port, PRIVATE_PATH)
        await login(ws)
        await subscribe(ws, PRIVATE_ARGS[0])  # positions only: the account push waits
        assert await receive(ws) == frame(lines[3])
        # The long side closed since the recorded list; the short side and both ETH
        # positions (cross and isolated) are still open.
        status, body = await http_get(port, POSITIONS, KEY)
        assert (status, body["data"]) == (200, [short_side, eth_cross, eth_isolated])
        assert await http_get(port, BALANCE, KEY) == (200, lines[1]["body"])

        await send(ws, subscribe_request(PRIVATE_ARGS[1]))
        assert (await receive(ws))["event"] == "subscribe"
        assert await receive(ws) == frame(lines[4])
        await server.wait_finished()  # the REST lines after the last frame are read
        # The latest account row (the push's), with every currency's latest details.
        status, body = await http_get(port, BALANCE, KEY)
        pushed_row = frame(lines[4])["data"][0]
        assert status == 200 and body["data"] == [{
            **pushed_row,
            "details": [balance_row("USDT", "900", T0 + 20), balance_row("BTC", "0.01", T0)]}]
        assert await http_get(port, discount_path) == (200, lines[5]["body"])
        reordered = "/api/v5/public/position-tiers?ccy=USDT&instType=MARGIN&tdMode=cross"
        assert await http_get(port, reordered) == (200, lines[6]["body"])
        other = "/api/v5/public/position-tiers?instType=MARGIN&tdMode=cross&ccy=BTC"
        assert await http_get(port, other) == empty
        # Re-subscribing positions: the same open positions, as a snapshot.
        await send(ws, subscribe_request(PRIVATE_ARGS[0]))
        assert (await receive(ws))["event"] == "subscribe"
        snapshot = await receive(ws)
        assert snapshot["eventType"] == "snapshot"
        assert snapshot["data"] == [short_side, eth_cross, eth_isolated]
        await ws.close()


async def test_without_recorded_bodies_the_account_rest_state_is_what_was_pushed(
        tmp_path: Path) -> None:
    lines = [
        account_push("main", [balance_row("USDT", "1000", T0)], T0, snapshot=True),
        positions("main", [position_row(BTC, "1", "60000", T0)], T0 + 10, snapshot=True),
    ]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None) as (server, port):
        empty = (200, {"code": "0", "msg": "", "data": []})
        # Nothing known yet: no config, no balance row (no news), no positions.
        for path in (ACCOUNT_CONFIG, BALANCE, POSITIONS):
            assert await http_get(port, path, KEY) == empty, path
        ws = await open_ws(port, PRIVATE_PATH)
        await login(ws)
        await subscribe(ws, PRIVATE_ARGS[0], PRIVATE_ARGS[1])
        assert await data_frames(ws, 2) == [frame(line) for line in lines]
        await server.wait_finished()
        status, body = await http_get(port, BALANCE, KEY)
        assert status == 200 and body["data"][0]["details"] == [balance_row("USDT", "1000", T0)]
        assert await http_get(port, POSITIONS, KEY) == (200, {
            "code": "0", "msg": "", "data": [position_row(BTC, "1", "60000", T0)]})
        assert await http_get(port, ACCOUNT_CONFIG, KEY) == empty
        await ws.close()


# --- the API around it ----------------------------------------------------------------------


async def test_inputs_are_validated(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="not found") as missing:
        ReplayServer(tmp_path / "absent.jsonl")
    assert isinstance(missing.value, RiskmonError)
    recording = write_recording(tmp_path / "r.jsonl", public_story(1))
    for options in ({"drop_after": -1}, {"drop_after": 0}, {"drop_times": -1},
                    {"garbage_after": -2}, {"stall_after": -1}, {"stall_s": -1.0},
                    {"fail_logins": -1}, {"notice_after": -1}, {"notice_close_s": float("nan")}):
        with pytest.raises(ConfigError) as bad:
            Faults(**options)
        assert bad.value.key == next(iter(options))
    with pytest.raises(ConfigError):
        ReplayServer(recording, speed=0)
    with pytest.raises(ConfigError):
        ReplayServer(recording, switch_gap_s=-0.1)


async def test_serve_reports_listening_and_finished_and_keeps_serving(tmp_path: Path) -> None:
    lines = public_story(2)
    recording = write_recording(tmp_path / "r.jsonl", lines)
    statuses: list[dict[str, Any]] = []
    changed = asyncio.Event()

    def status(report: dict[str, Any]) -> None:
        statuses.append(report)
        changed.set()

    async def next_status() -> dict[str, Any]:
        async with asyncio.timeout(TIMEOUT):
            while len(statuses) <= seen:
                changed.clear()
                await changed.wait()
        return statuses[seen]

    task = asyncio.create_task(serve(recording, "127.0.0.1", 0, None, Faults(), status))
    try:
        seen = 0
        listening = await next_status()
        port = listening["port"]
        rest_port = listening["rest_port"]
        assert listening == {"event": "listening", "ws_url": f"ws://127.0.0.1:{port}",
                             "rest_url": f"http://127.0.0.1:{port}", "port": port,
                             "rest_port": rest_port}
        assert type(rest_port) is int and rest_port not in (0, port)
        ws = await connect(listening["ws_url"] + PUBLIC_PATH, ping_interval=None)
        await subscribe(ws, mark_arg(BTC), mark_arg(ETH))
        assert await data_frames(ws, 2) == [frame(line) for line in lines]
        seen = 1
        assert await next_status() == {"event": "finished", "frames": 2}
        await pong_after_ping(ws)  # still serving
        await ws.close()
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
