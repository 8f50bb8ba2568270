"""The replay server's order simulator as a client meets it: a real server on 127.0.0.1
port 0, real HTTP/1.1 (httpx, and raw sockets for malformed requests) to its REST listener,
real websockets clients for the pushes, small recordings in ``tmp_path``.

Assertions are on answers and pushed frames; waits are for frames or polled conditions.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from adapters.okx.replay_server import PRIVATE_PATH, PUBLIC_PATH, Faults, ReplayServer
from monitor.core.errors import ConfigError
from tests.recordings import (
    T0,
    Line,
    mark_price,
    position_row,
    positions,
    rest,
    write_recording,
)

TIMEOUT = 20.0
BTC = "BTC-USDT-SWAP"
ETH = "ETH-USDT-SWAP"
BATCH = "/api/v5/trade/batch-orders"
ORDER = "/api/v5/trade/order"
HISTORY = "/api/v5/trade/orders-history"
PENDING = "/api/v5/trade/orders-pending"
POSITIONS = "/api/v5/account/positions"
CONFIG = "/api/v5/account/config"
SIGNED = {"OK-ACCESS-KEY": "main", "OK-ACCESS-SIGN": "c2lnbg==",
          "OK-ACCESS-TIMESTAMP": "2026-01-01T00:00:00.000Z", "OK-ACCESS-PASSPHRASE": "p"}


def story(later_update_ms: int = 3000) -> list[Line]:
    """Account "main" long 3 BTC (net, cross), BTC marks, and ``later_update_ms`` after the
    start a recorded positions row still saying 3 (the recording knows nothing of the
    simulator), then one more mark."""
    return [
        rest(CONFIG, [{"uid": "1", "posMode": "net_mode", "acctLv": "3"}], T0 - 50,
             account="main"),
        positions("main", [position_row(BTC, "3", "60000", T0)], T0, snapshot=True),
        mark_price(BTC, "60000", T0 + 100),
        mark_price(BTC, "60100", T0 + 200),
        positions("main", [{**position_row(BTC, "3", "60000", T0 + later_update_ms),
                            "upl": "300", "availPos": "3"}], T0 + later_update_ms),
        mark_price(BTC, "60200", T0 + later_update_ms + 100),
    ]


def order(client_id: str, size: str, *, side: str = "sell", inst_id: str = BTC,
          **extra: Any) -> dict[str, Any]:
    return {"instId": inst_id, "tdMode": "cross", "side": side, "ordType": "market",
            "sz": size, "reduceOnly": True, "clOrdId": client_id, **extra}


class Client:
    """The daemon's side: a public and a private connection (positions, orders), every
    frame kept in order, and an HTTP client for the REST listener."""

    def __init__(self, port: int, rest_port: int) -> None:
        self.port = port
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{rest_port}",
                                      timeout=TIMEOUT)
        self.frames: list[dict[str, Any]] = []  # private data frames
        self.marks: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.private: ClientConnection | None = None

    async def open(self) -> None:
        public = await connect(f"ws://127.0.0.1:{self.port}{PUBLIC_PATH}", ping_interval=None)
        await public.send(orjson.dumps({"op": "subscribe", "args": [
            {"channel": "mark-price", "instId": BTC}]}).decode())
        private = await connect(f"ws://127.0.0.1:{self.port}{PRIVATE_PATH}",
                                ping_interval=None)
        await private.send(orjson.dumps({"op": "login", "args": [{
            "apiKey": "main", "passphrase": "p", "timestamp": "1", "sign": "s"}]}).decode())
        await private.send(orjson.dumps({"op": "subscribe", "args": [
            {"channel": "positions", "instType": "ANY"},
            {"channel": "orders", "instType": "ANY"}]}).decode())
        self.private = private
        self._tasks = [asyncio.create_task(self._read(public, self.marks)),
                       asyncio.create_task(self._read(private, self.frames))]

    async def _read(self, ws: ClientConnection, into: list[dict[str, Any]]) -> None:
        async for raw in ws:
            message = orjson.loads(raw)
            if "data" in message:
                into.append(message)
                self._changed.set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.http.aclose()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def pushed(self, channel: str) -> list[dict[str, Any]]:
        return [row for frame in self.frames if frame["arg"]["channel"] == channel
                for row in frame["data"]]

    async def place(self, *orders: dict[str, Any],
                    headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.http.post(BATCH, content=orjson.dumps(list(orders)),
                                    headers=SIGNED if headers is None else headers)

    async def get(self, path: str, **params: str) -> Any:
        response = await self.http.get(path, params=params, headers=SIGNED)
        return response.json()


@asynccontextmanager
async def running(recording: Path, **options: Any) -> AsyncIterator[tuple[ReplayServer,
                                                                           Client]]:
    server = ReplayServer(recording, **options)
    port = await server.start()
    assert server.rest_port is not None
    client = Client(port, server.rest_port)
    try:
        await client.open()
        yield server, client
    finally:
        await client.close()
        await server.close()


async def poll(check: Callable[[], Awaitable[bool]], within: float = TIMEOUT) -> None:
    """Poll an async condition (REST state) until it holds."""
    async with asyncio.timeout(within):
        while True:
            if await check():
                return
            await asyncio.sleep(0.02)


# --- placing and filling ------------------------------------------------------------------


async def test_a_market_order_fills_at_the_mark_and_the_overlay_follows(tmp_path: Path) -> None:
    recording = write_recording(tmp_path / "r.jsonl", story())
    async with running(recording, speed=1.0) as (server, client):
        await client.until(lambda: len(client.marks) == 2)  # the mark is now 60100
        response = await client.place(order("stop1", "2"))
        assert response.status_code == 200
        answer = response.json()
        assert answer["code"] == "0" and answer["msg"] == ""
        assert {"inTime", "outTime"} <= answer.keys()
        [row] = answer["data"]
        assert (row["clOrdId"], row["sCode"], row["sMsg"], row["tag"]) == (
            "stop1", "0", "Order placed", "")
        order_id = row["ordId"]
        assert order_id.isdigit()

        # The pushes, in order: live, filled at the mark, then the position's new size.
        await client.until(lambda: len(client.pushed("positions")) >= 2)
        live, filled = client.pushed("orders")
        assert (live["state"], live["ordId"], live["clOrdId"], live["accFillSz"]) == (
            "live", order_id, "stop1", "0")
        assert (filled["state"], filled["fillPx"], filled["avgPx"], filled["fillSz"],
                filled["accFillSz"], filled["sz"], filled["side"], filled["tdMode"],
                filled["posSide"], filled["reduceOnly"], filled["ordType"]) == (
            "filled", "60100", "60100", "2", "2", "2", "sell", "cross", "net", "true", "market")
        assert filled["fillTime"] and filled["uTime"] >= filled["cTime"]
        assert (filled["fee"], filled["feeCcy"]) == ("0", "USDT")
        positions_frames = [frame for frame in client.frames
                            if frame["arg"]["channel"] == "positions"]
        assert positions_frames[-1]["data"][0]["pos"] == "1"
        assert client.frames.index(positions_frames[-1]) > max(
            i for i, frame in enumerate(client.frames) if frame["arg"]["channel"] == "orders")

        # REST: the order, the history and the positions reflect it.
        details = await client.get(ORDER, instId=BTC, clOrdId="stop1")
        assert details["code"] == "0" and details["data"][0]["state"] == "filled"
        assert (await client.get(ORDER, instId=BTC, ordId=order_id))["data"] == details["data"]
        history = await client.get(HISTORY, instType="SWAP")
        assert [row["clOrdId"] for row in history["data"]] == ["stop1"]
        assert [row["pos"] for row in (await client.get(POSITIONS))["data"]] == ["1"]

        # The recording's own later row (pos 3, upl 300) goes out less what was closed.
        await client.until(lambda: len(client.pushed("positions")) >= 3)
        recorded = client.pushed("positions")[-1]
        assert (recorded["pos"], recorded["availPos"], recorded["upl"]) == ("1", "1", "100")

        # Closing the rest: pos "0" pushed, and the position leaves REST and snapshots.
        response = await client.place(order("stop2", "1"))
        assert response.json()["data"][0]["sCode"] == "0"
        await client.until(lambda: client.pushed("positions")[-1]["pos"] == "0")
        assert (await client.get(POSITIONS))["data"] == []
        assert client.private is not None
        await client.private.send(orjson.dumps({"op": "subscribe", "args": [
            {"channel": "positions", "instType": "ANY"}]}).decode())
        await client.until(lambda: client.frames[-1].get("eventType") == "snapshot")
        assert client.frames[-1]["data"] == []
        history = await client.get(HISTORY, instType="SWAP")
        assert [row["clOrdId"] for row in history["data"]] == ["stop2", "stop1"]

        received = server.orders_received
        assert [(r.account, r.order["clOrdId"], r.answer["sCode"]) for r in received] == [
            ("main", "stop1", "0"), ("main", "stop2", "0")]
        assert received[0].arrived_at < received[1].arrived_at


async def test_checks_refuse_with_okx_codes_and_a_mixed_batch_is_code_2(tmp_path: Path) -> None:
    recording = write_recording(tmp_path / "r.jsonl", story())
    async with running(recording, speed=1.0) as (_, client):
        await client.until(lambda: len(client.marks) == 2)
        response = await client.place(
            order("a1", "1"),
            order("a1", "1"),  # duplicate clOrdId
            order("a2", "3"),  # 3 > 3 held - 1 being closed
            order("a3", "1", side="buy"),  # the same direction as the long
            order("a4", "1", inst_id=ETH),  # no mark of ETH pushed
            order("a5", "1", ordType="limit", px="1"),
            order("a6", "1", reduceOnly=False),
            order("bad-id!", "1"),
            order("a7", "0"),
            order("a8", "1", posSide="long"),  # no long/short position of BTC
        )
        answer = response.json()
        assert answer["code"] == "2" and answer["msg"] == "Bulk operation partially succeeded."
        assert [(row["clOrdId"], row["sCode"]) for row in answer["data"]] == [
            ("a1", "0"), ("a1", "51016"), ("a2", "51112"), ("a3", "51170"), ("a4", "51109"),
            ("a5", "50038"), ("a6", "50038"), ("bad-id!", "51000"), ("a7", "51000"),
            ("a8", "51169")]
        assert all(row["ordId"] == "" for row in answer["data"][1:])
        # A refused order does not exist; all refused is code 1.
        missing = await client.get(ORDER, instId=BTC, clOrdId="a2")
        assert (missing["code"], missing["data"]) == ("51603", [])
        again = (await client.place(order("a1", "1"))).json()
        assert (again["code"], again["msg"], again["data"][0]["sCode"]) == (
            "1", "All operations failed", "51016")


async def test_requests_without_the_signed_headers_or_a_body_are_refused(tmp_path: Path) -> None:
    recording = write_recording(tmp_path / "r.jsonl", story())
    async with running(recording, speed=1.0) as (server, client):
        for header, code in (("OK-ACCESS-KEY", "50103"), ("OK-ACCESS-SIGN", "50106"),
                             ("OK-ACCESS-TIMESTAMP", "50107"),
                             ("OK-ACCESS-PASSPHRASE", "50104")):
            headers = {**SIGNED, header: ""}
            response = await client.place(order("x1", "1"), headers=headers)
            assert (response.status_code, response.json()["code"]) == (401, code), header
        empty = await client.http.post(BATCH, content=b"", headers=SIGNED)
        assert (empty.status_code, empty.json()["code"]) == (400, "50000")
        broken = await client.http.post(BATCH, content=b"[{", headers=SIGNED)
        assert (broken.status_code, broken.json()["code"]) == (400, "50002")
        too_many = await client.place(*(order(f"m{i}", "1") for i in range(21)))
        assert too_many.json()["code"] == "51111"
        wrong_method = await client.http.get(BATCH, headers=SIGNED)
        assert (wrong_method.status_code, wrong_method.json()["code"]) == (405, "50115")
        assert (await client.get(ORDER, instId=BTC))["code"] == "51003"
        assert all(received.answer["ordId"] == "" for received in server.orders_received)


# --- faults ---------------------------------------------------------------------------------


async def test_reject_and_rate_limit_faults(tmp_path: Path) -> None:
    recording = write_recording(tmp_path / "r.jsonl", story())
    faults = Faults(reject_orders=1, rate_limit_requests=1)
    async with running(recording, speed=1.0, faults=faults) as (_, client):
        await client.until(lambda: len(client.marks) == 2)
        limited = await client.place(order("r1", "1"))
        assert (limited.status_code, limited.json()["code"]) == (429, "50011")
        rejected = (await client.place(order("r1", "1"))).json()
        assert (rejected["code"], rejected["data"][0]["sCode"], rejected["data"][0]["sMsg"]) == (
            "1", "51008", "Order failed. Insufficient USDT margin in account")
        placed = (await client.place(order("r1", "1"))).json()  # the id was never used
        assert placed["data"][0]["sCode"] == "0"


async def test_a_timed_out_request_still_places_its_order(tmp_path: Path) -> None:
    recording = write_recording(tmp_path / "r.jsonl", story())
    faults = Faults(timeout_requests=1, order_timeout_s=1.0)
    async with running(recording, speed=1.0, faults=faults) as (_, client):
        await client.until(lambda: len(client.marks) == 2)
        with pytest.raises(httpx.ReadTimeout):
            await client.http.post(BATCH, content=orjson.dumps([order("t1", "1")]),
                                   headers=SIGNED, timeout=0.2)

        async def filled() -> bool:
            found = await client.get(ORDER, instId=BTC, clOrdId="t1")
            return bool(found["code"] == "0" and found["data"][0]["state"] == "filled")

        await poll(filled)
        assert client.pushed("orders")[-1]["state"] == "filled"
        # Answered late, not lost, when the client waits long enough.
        late = (await client.place(order("t2", "1"))).json()
        assert late["data"][0]["sCode"] == "0"


async def test_a_partial_fill_ends_canceled(tmp_path: Path) -> None:
    recording = write_recording(tmp_path / "r.jsonl", story())
    async with running(recording, speed=1.0, faults=Faults(partial_fills=1)) as (_, client):
        await client.until(lambda: len(client.marks) == 2)
        assert (await client.place(order("p1", "3"))).json()["data"][0]["sCode"] == "0"
        await client.until(lambda: len(client.pushed("orders")) == 3)
        states = [(row["state"], row["fillSz"], row["accFillSz"])
                  for row in client.pushed("orders")]
        assert states == [("live", "0", "0"), ("partially_filled", "1", "1"),
                          ("canceled", "0", "1")]
        await client.until(lambda: len(client.pushed("positions")) >= 2)
        assert client.pushed("positions")[-1]["pos"] == "2"
        details = (await client.get(ORDER, instId=BTC, clOrdId="p1"))["data"][0]
        assert (details["state"], details["accFillSz"], details["sz"]) == ("canceled", "1", "3")


async def test_a_delayed_fill_keeps_the_order_live_meanwhile(tmp_path: Path) -> None:
    recording = write_recording(tmp_path / "r.jsonl", story())
    faults = Faults(delay_fills=1, fill_delay_s=1.0)
    async with running(recording, speed=1.0, faults=faults) as (_, client):
        await client.until(lambda: len(client.marks) == 2)
        answer = (await client.place(order("d1", "1"))).json()
        assert answer["data"][0]["sCode"] == "0"
        pending = await client.get(PENDING)
        assert [(row["clOrdId"], row["state"]) for row in pending["data"]] == [("d1", "live")]
        assert (await client.get(ORDER, instId=BTC, clOrdId="d1"))["data"][0]["state"] == "live"
        assert [row["pos"] for row in (await client.get(POSITIONS))["data"]] == ["3"]
        await client.until(lambda: any(row["state"] == "filled"
                                       for row in client.pushed("orders")))
        assert (await client.get(PENDING))["data"] == []
        assert [row["pos"] for row in (await client.get(POSITIONS))["data"]] == ["2"]


async def test_read_only_keys(tmp_path: Path) -> None:
    recording = write_recording(tmp_path / "r.jsonl", story())
    faults = Faults(read_only_keys=frozenset({"main"}))
    async with running(recording, speed=1.0, faults=faults) as (_, client):
        await client.until(lambda: len(client.marks) == 2)
        config = await client.get(CONFIG)
        assert config["data"][0]["perm"] == "read_only"
        refused = await client.place(order("ro1", "1"))
        assert (refused.status_code, refused.json()["code"]) == (200, "50120")
        # Another key of the (only) account may trade.
        other = {**SIGNED, "OK-ACCESS-KEY": "trader"}
        response = await client.http.get(CONFIG, headers=other)
        assert response.json()["data"][0]["perm"] == "read_only,trade"
        assert (await client.place(order("ro1", "1"), headers=other)).json()["code"] == "0"


# --- the HTTP/1.1 listener ------------------------------------------------------------------


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send bytes, read until the server closes the connection."""
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        await writer.drain()
        answer = await reader.read()
        writer.close()
        return answer


async def test_the_listener_survives_malformed_and_oversized_requests(tmp_path: Path) -> None:
    recording = write_recording(tmp_path / "r.jsonl", story())
    async with running(recording, speed=1.0) as (server, client):
        rest_port = server.rest_port
        assert rest_port is not None
        garbage = await raw_exchange(rest_port, b"NOT HTTP AT ALL\x00\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.1 400 ")
        oversized = await raw_exchange(rest_port, (
            f"POST {BATCH} HTTP/1.1\r\nHost: x\r\nContent-Length: {2 << 20}\r\n\r\n"
        ).encode() + b"[" * 1000)
        assert oversized.startswith(b"HTTP/1.1 413 ")
        chunked = (f"POST {BATCH} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   ).encode() + b"".join(b"100000\r\n" + b" " * 0x100000 + b"\r\n"
                                         for _ in range(2))
        assert (await raw_exchange(rest_port, chunked)).startswith(b"HTTP/1.1 413 ")
        # Two requests on one kept-alive connection, then a close.
        request = f"GET {POSITIONS} HTTP/1.1\r\nHost: x\r\nOK-ACCESS-KEY: main\r\n"
        both = await raw_exchange(rest_port, (request + "\r\n" + request
                                              + "Connection: close\r\n\r\n").encode())
        assert both.count(b"HTTP/1.1 200 ") == 2
        # Still serving, and the same answers as the websocket port's GET REST.
        async with httpx.AsyncClient(timeout=TIMEOUT) as other:
            ws_answer = await other.get(f"http://127.0.0.1:{client.port}{POSITIONS}",
                                        headers={"OK-ACCESS-KEY": "main"})
        assert ws_answer.json() == await client.get(POSITIONS)
        assert (await client.http.get("/nowhere")).status_code == 404


async def test_push_times_are_recorded_by_recv_ts(tmp_path: Path) -> None:
    lines = story(later_update_ms=300)
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None, record_push_times=True) as (server, _):
        await server.wait_finished()
        frames = [line for line in lines if "frame" in line]
        assert sorted(server.push_times) == sorted(line["recv_ts"] for line in frames)
        times = [server.push_times[line["recv_ts"]][0] for line in frames]
        assert times == sorted(times)
    async with running(recording, speed=None) as (server, _):
        await server.wait_finished()
        assert server.push_times == {}


def test_order_faults_are_validated() -> None:
    for options in ({"reject_orders": -1}, {"rate_limit_requests": -1},
                    {"timeout_requests": 1.5}, {"order_timeout_s": -1.0},
                    {"partial_fills": -1}, {"partial_fill_ratio": 1.0},
                    {"delay_fills": -1}, {"fill_delay_s": float("inf")},
                    {"reject_code": "0"}, {"reject_code": "abc"}, {"reject_message": 5},
                    {"read_only_keys": "main"}, {"read_only_keys": frozenset({""})}):
        with pytest.raises(ConfigError) as bad:
            Faults(**options)
        assert bad.value.key == next(iter(options))
    assert Faults(read_only_keys=("a", "b")).read_only_keys == frozenset({"a", "b"})  # type: ignore[arg-type]


def test_the_cli_prints_rest_port_and_one_line_per_batch(tmp_path: Path) -> None:
    recording = write_recording(tmp_path / "r.jsonl", story())
    with subprocess.Popen(
        [sys.executable, "-m", "monitor", "--log-level", "error", "replay-server",
         str(recording), "--port", "0", "--rest-port", "0", "--speed", "0",
         "--read-only-key", "ro"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as process:
        try:
            assert process.stdout is not None
            listening = orjson.loads(process.stdout.readline())
            assert listening["event"] == "listening"
            assert type(listening["rest_port"]) is int and listening["rest_port"] > 0
            base = f"http://127.0.0.1:{listening['rest_port']}"
            # Nothing pushed yet (no client): no mark, the order is refused, and said so.
            answer = httpx.post(base + BATCH, content=orjson.dumps([order("c1", "1")]),
                                headers=SIGNED, timeout=TIMEOUT).json()
            assert answer["data"][0]["sCode"] == "51109"
            httpx.post(base + BATCH, content=orjson.dumps([order("c2", "1")]),
                       headers={**SIGNED, "OK-ACCESS-KEY": "ro"}, timeout=TIMEOUT)
            lines = [orjson.loads(process.stdout.readline()) for _ in range(2)]
            assert lines == [
                {"event": "orders", "account": "main", "http_status": 200, "code": "1",
                 "orders": [{"clOrdId": "c1", "ordId": "", "sCode": "51109"}]},
                {"event": "orders", "account": "main", "http_status": 200, "code": "50120",
                 "orders": [{"clOrdId": "c2", "ordId": "", "sCode": "50120"}]}]
        finally:
            process.terminate()
            assert process.wait(timeout=TIMEOUT) == 0
