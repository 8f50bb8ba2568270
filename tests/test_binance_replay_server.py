"""The Binance USDⓈ-M replay server (``adapters/binance/replay_server.py``) as a client meets
it: a real server on 127.0.0.1 port 0, real websockets clients, real HTTP requests (httpx),
small recordings in ``tmp_path``. Assertions are on what the clients receive.

Waits are for events (a frame, an answer, the end of the replay) with generous timeouts;
the few timings asserted are lower bounds that a loaded machine can only lengthen.
"""

from __future__ import annotations

import asyncio
import string
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from adapters.binance.replay_server import (
    LISTEN_KEY_PATH,
    MARKET_PATH,
    Faults,
    RecordingError,
    ReplayServer,
    serve,
)
from monitor.core.errors import ConfigError
from tests.binance_recordings import (
    T0,
    Line,
    account_update,
    bracket_row,
    frame,
    margin_call,
    mark_price,
    order_row,
    order_update,
    position_risk_row,
    rest,
    stream_name,
    write_recording,
)

TIMEOUT = 20.0
BTC_STREAM = stream_name("BTCUSDT")
ETH_STREAM = stream_name("ETHUSDT")
STREAMS = (BTC_STREAM, ETH_STREAM)
POSITION_RISK = "/fapi/v3/positionRisk"
OPEN_ORDERS = "/fapi/v1/openOrders"
ACCOUNT = "/fapi/v3/account"
BRACKETS = "/fapi/v1/leverageBracket"
EXCHANGE_INFO = "/fapi/v1/exchangeInfo"

Message = Any  # a decoded JSON frame, or the text of one that is not JSON


# --- client helpers -------------------------------------------------------------------------


@asynccontextmanager
async def running(recording: Path, **options: Any
                  ) -> AsyncIterator[tuple[ReplayServer, int, httpx.AsyncClient]]:
    """A started server, its websocket port and an HTTP client of its REST port."""
    server = ReplayServer(recording, **options)
    port = await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.rest_port}",
                                     timeout=TIMEOUT) as client:
            yield server, port, client
    finally:
        await server.close()


async def open_ws(port: int, path: str) -> ClientConnection:
    return await connect(f"ws://127.0.0.1:{port}{path}", ping_interval=None)


async def receive(ws: ClientConnection, within: float = TIMEOUT) -> Message:
    async with asyncio.timeout(within):
        message = await ws.recv()
    try:
        return orjson.loads(message)
    except orjson.JSONDecodeError:
        return message


async def request(ws: ClientConnection, message: dict[str, Any] | str) -> Message:
    await ws.send(message if isinstance(message, str) else orjson.dumps(message).decode())
    return await receive(ws)


async def subscribed_market(port: int, *streams: str) -> ClientConnection:
    ws = await open_ws(port, MARKET_PATH)
    assert await request(ws, {"method": "SUBSCRIBE", "params": list(streams), "id": 1}) == {
        "result": None, "id": 1}
    return ws


async def assert_silent(ws: ClientConnection, seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await receive(ws, within=seconds)


async def new_key(client: httpx.AsyncClient, api_key: str = "main") -> str:
    answer = await client.post(LISTEN_KEY_PATH, headers={"X-MBX-APIKEY": api_key})
    assert answer.status_code == 200, answer.text
    key: str = answer.json()["listenKey"]
    return key


async def signed(client: httpx.AsyncClient, path: str, api_key: str = "main",
                 **params: str) -> tuple[int, Any]:
    """A USER_DATA GET with a timestamp and a (not checkable) signature."""
    answer = await client.get(path, headers={"X-MBX-APIKEY": api_key},
                              params={**params, "timestamp": "1767225600000",
                                      "signature": "ab" * 32})
    return answer.status_code, answer.json()


def closed_code(closed: ConnectionClosed) -> int | None:
    """The close code the server sent (None: no close frame, the TCP connection ended)."""
    return None if closed.rcvd is None else closed.rcvd.code


class Feed:
    """A client shaped like the live feed: one market connection (subscribed to
    ``streams``) and one user-data connection per account, each opened again whenever it
    closes (a user-data one after asking for the account's key again, which is the same key
    while it lives), collecting what arrives in arrival order."""

    def __init__(self, port: int, client: httpx.AsyncClient, *, streams: tuple[str, ...] = (),
                 accounts: tuple[str, ...] = (), expected_frames: int,
                 pause_before_reconnect: float = 0.0) -> None:
        self.port = port
        self.client = client
        self.streams = streams
        self.accounts = accounts
        self.expected_frames = expected_frames
        self.pause_before_reconnect = pause_before_reconnect
        self.received: list[tuple[str, Message]] = []  # (role, data frame); role: "market"
        self.others: dict[str, list[Message]] = {}  # answers, garbage, listenKeyExpired
        self.closures: list[tuple[str, int | None]] = []  # role, close code received
        self.keys: dict[str, list[str]] = {account: [] for account in accounts}
        self.connected_at: list[tuple[str, float]] = []
        self._done = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def frames(self, role: str) -> list[Message]:
        return [message for who, message in self.received if who == role]

    async def __aenter__(self) -> Feed:
        if self.streams:
            self._tasks.append(asyncio.create_task(self._market()))
        self._tasks.extend(asyncio.create_task(self._user(account))
                           for account in self.accounts)
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

    async def _market(self) -> None:
        while True:
            ws = await open_ws(self.port, MARKET_PATH)
            self.connected_at.append(("market", time.monotonic()))
            await ws.send(orjson.dumps({"method": "SUBSCRIBE", "params": list(self.streams),
                                        "id": 1}).decode())
            await self._read("market", ws)
            await asyncio.sleep(self.pause_before_reconnect)

    async def _user(self, account: str) -> None:
        while True:
            key = await new_key(self.client, account)
            self.keys[account].append(key)
            ws = await open_ws(self.port, f"/ws/{key}")
            self.connected_at.append((account, time.monotonic()))
            await self._read(account, ws)
            await asyncio.sleep(self.pause_before_reconnect)

    async def _read(self, role: str, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                self._note(role, raw)
            self.closures.append((role, ws.close_code))
        except ConnectionClosed as closed:
            self.closures.append((role, closed_code(closed)))

    def _note(self, role: str, raw: str | bytes) -> None:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.others.setdefault(role, []).append(raw)
            return
        data = isinstance(message, dict) and (
            "stream" in message if role == "market"
            else message.get("e") not in (None, "listenKeyExpired"))
        if not data:
            self.others.setdefault(role, []).append(message)
            return
        self.received.append((role, message))
        if len(self.received) >= self.expected_frames:
            self._done.set()


# --- recordings -----------------------------------------------------------------------------


def market_story(count: int, step_ms: int = 100) -> list[Line]:
    """``count`` mark prices, alternately BTC and ETH, ``step_ms`` apart."""
    return [mark_price("BTCUSDT" if i % 2 == 0 else "ETHUSDT", str(60000 + i),
                       T0 + i * step_ms) for i in range(count)]


def mixed_story() -> list[Line]:
    """One account ("main") and the market streams, interleaved."""
    return [
        account_update("main", T0, positions=(("BTCUSDT", "0.010", "60000"),)),
        mark_price("BTCUSDT", "60000", T0 + 100),
        order_update("main", T0 + 200, 11, "NEW"),
        mark_price("ETHUSDT", "3000", T0 + 300),
        mark_price("BTCUSDT", "60100", T0 + 400),
        margin_call("main", T0 + 500),
        account_update("main", T0 + 600, wallet="990"),
        mark_price("ETHUSDT", "3010", T0 + 700),
    ]


def roles_of(lines: list[Line]) -> list[tuple[str, Any]]:
    """Each frame of a recording with the role that receives it, in recorded order."""
    return [(line.get("account", "market"), frame(line)) for line in lines if "frame" in line]


def of_role(lines: list[Line], role: str) -> list[Any]:
    return [message for who, message in roles_of(lines) if who == role]


# --- listen keys and API keys ---------------------------------------------------------------


async def test_listen_keys_are_created_kept_alive_and_deleted(tmp_path: Path) -> None:
    recording = write_recording(tmp_path / "r.jsonl", mixed_story())
    async with running(recording, speed=None) as (server, port, client):
        key = await new_key(client)
        assert len(key) == 60 and set(key) <= set(string.ascii_letters + string.digits)
        # The account has a live key: creating one again returns it.
        assert await new_key(client) == key
        headers = {"X-MBX-APIKEY": "main"}
        keepalive = await client.put(LISTEN_KEY_PATH, params={"listenKey": key},
                                     headers=headers)
        assert (keepalive.status_code, keepalive.json()) == (200, {})
        # The key may come in a form body too, or not at all (the account's live key).
        in_body = await client.put(LISTEN_KEY_PATH, content=f"listenKey={key}",
                                   headers={**headers, "Content-Type":
                                            "application/x-www-form-urlencoded"})
        assert (in_body.status_code, in_body.json()) == (200, {})
        assert (await client.put(LISTEN_KEY_PATH, headers=headers)).status_code == 200
        unknown = await client.put(LISTEN_KEY_PATH, params={"listenKey": "x" * 60},
                                   headers=headers)
        assert (unknown.status_code, unknown.json()) == (
            400, {"code": -1125, "msg": "This listenKey does not exist."})
        # The three accepted keepalives are counted, with what they carried.
        assert server.keepalives == {"accounts": {"main": 3}, "parameters": ["listenKey"]}
        deleted = await client.delete(LISTEN_KEY_PATH, params={"listenKey": key},
                                      headers=headers)
        assert (deleted.status_code, deleted.json()) == (200, {})
        again = await client.put(LISTEN_KEY_PATH, params={"listenKey": key}, headers=headers)
        assert (again.status_code, again.json()["code"]) == (400, -1125)
        # Deleting a key closes its connections.
        key = await new_key(client)
        user = await open_ws(port, f"/ws/{key}")
        assert (await client.delete(LISTEN_KEY_PATH, headers=headers)).json() == {}
        with pytest.raises(ConnectionClosed) as closed:
            await receive(user)
        assert closed_code(closed.value) == 1000
        with pytest.raises(InvalidStatus) as refused:
            await open_ws(port, f"/ws/{key}")
        assert refused.value.response.status_code == 400
        fresh = await new_key(client)
        assert fresh != key


async def test_api_keys_map_to_the_recordings_accounts(tmp_path: Path) -> None:
    lines = [account_update("main", T0), account_update("hedge", T0 + 10, wallet="5"),
             account_update("main", T0 + 20, wallet="990")]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None) as (server, port, client):
        missing = await client.post(LISTEN_KEY_PATH)
        assert (missing.status_code, missing.json()) == (
            401, {"code": -2014, "msg": "API-key format invalid."})
        unknown = await client.post(LISTEN_KEY_PATH, headers={"X-MBX-APIKEY": "nobody"})
        assert (unknown.status_code, unknown.json()) == (
            401, {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."})
        main_key, hedge_key = await new_key(client, "main"), await new_key(client, "hedge")
        assert main_key != hedge_key
        main = await open_ws(port, f"/ws/{main_key}")
        hedge = await open_ws(port, f"/ws/{hedge_key}")
        assert [await receive(main), await receive(main)] == of_role(lines, "main")
        assert await receive(hedge) == frame(lines[1])
        assert await server.wait_finished() == 3
        # A key names its account only: hedge's key is no keepalive of main's.
        wrong = await client.put(LISTEN_KEY_PATH, params={"listenKey": hedge_key},
                                 headers={"X-MBX-APIKEY": "main"})
        assert wrong.json()["code"] == -1125
        await main.close()
        await hedge.close()
    single = write_recording(tmp_path / "single.jsonl", [account_update("main", T0)])
    async with running(single, speed=None) as (_, _, client):
        # The recording's only account stands behind any API key.
        assert await new_key(client, "anything") == await new_key(client, "main")


async def test_signed_gets_check_the_key_the_timestamp_and_the_signature(
        tmp_path: Path) -> None:
    lines = [rest(ACCOUNT, {"totalMarginBalance": "1000"}, T0, "main"),
             rest(ACCOUNT, {"totalMarginBalance": "7"}, T0, "hedge"),
             account_update("main", T0)]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None) as (_, _, client):
        stamp = {"timestamp": "1767225600000", "signature": "ab" * 32}
        no_key = await client.get(ACCOUNT, params=stamp)
        assert (no_key.status_code, no_key.json()["code"]) == (401, -2014)
        bad_key = await client.get(ACCOUNT, params=stamp, headers={"X-MBX-APIKEY": "nobody"})
        assert (bad_key.status_code, bad_key.json()["code"]) == (401, -2015)
        headers = {"X-MBX-APIKEY": "main"}
        unsigned = await client.get(ACCOUNT, params={"timestamp": "1767225600000"},
                                    headers=headers)
        assert (unsigned.status_code, unsigned.json()) == (400, {
            "code": -1102, "msg": "Mandatory parameter 'signature' was not sent, was "
                                  "empty/null, or malformed."})
        undated = await client.get(ACCOUNT, params={"signature": "ab"}, headers=headers)
        assert (undated.status_code, undated.json()["code"]) == (400, -1102)
        assert "'timestamp'" in undated.json()["msg"]
        bad_date = await client.get(ACCOUNT, params={**stamp, "timestamp": "soon"},
                                    headers=headers)
        assert bad_date.json()["code"] == -1102
        assert await signed(client, ACCOUNT, "main") == (200, {"totalMarginBalance": "1000"})
        assert await signed(client, ACCOUNT, "hedge") == (200, {"totalMarginBalance": "7"})
        # Unknown paths and methods.
        unknown = await client.get("/fapi/v9/nothing")
        assert (unknown.status_code, unknown.json()["code"]) == (404, -1)
        post = await client.post(ACCOUNT, headers=headers)
        assert (post.status_code, post.json()["code"]) == (405, -1)
        get_key = await client.get(LISTEN_KEY_PATH, headers=headers)
        assert get_key.status_code == 405


async def test_signed_gets_answer_as_of_the_push_position(tmp_path: Path) -> None:
    p1 = [position_risk_row("BTCUSDT", "0.010", "60000", T0)]
    p2 = [position_risk_row("BTCUSDT", "0.020", "60050", T0 + 150),
          position_risk_row("ETHUSDT", "-1", "3000", T0 + 150)]
    p3 = [position_risk_row("ETHUSDT", "-1", "3000", T0 + 250)]
    o1 = [order_row("BTCUSDT", 11, T0 + 150)]
    o2: list[Any] = []
    lines = [
        rest(POSITION_RISK, p1, T0, "main"),
        account_update("main", T0 + 1),
        mark_price("BTCUSDT", "60000", T0 + 100),
        rest(POSITION_RISK, p2, T0 + 150, "main"),
        rest(OPEN_ORDERS, o1, T0 + 150, "main"),
        rest(OPEN_ORDERS, {"code": -1021, "msg": "Timestamp outside recvWindow."}, T0 + 160,
             "main"),
        account_update("main", T0 + 200, wallet="990"),
        rest(POSITION_RISK, p3, T0 + 250, "main"),
        rest(OPEN_ORDERS, o2, T0 + 250, "main"),
        mark_price("ETHUSDT", "3000", T0 + 300),
    ]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    # The third frame (user data) finds its connection aborted: the push position stays
    # there (after two frames) until the user-data connection is back.
    async with running(recording, speed=None, faults=Faults(drop_after=2)) as (
            server, port, client):
        # Nothing pushed: the body before the first frame is read; openOrders has none read
        # yet, so its first recorded one answers; nothing of the others: [] or 404.
        assert await signed(client, POSITION_RISK) == (200, p1)
        assert await signed(client, OPEN_ORDERS) == (200, o1)
        assert (await signed(client, ACCOUNT))[0] == 404
        assert await signed(client, BRACKETS) == (200, [])
        assert await signed(client, "/fapi/v1/multiAssetsMargin") == (404, {
            "code": -1, "msg": "No /fapi/v1/multiAssetsMargin response recorded for this "
                               "account"})
        key = await new_key(client)
        user = await open_ws(port, f"/ws/{key}")
        market = await subscribed_market(port, *STREAMS)
        assert await receive(user) == frame(lines[1])
        assert await receive(market) == frame(lines[2])
        with pytest.raises(ConnectionClosed):
            await receive(user)
        # Two frames pushed: the lines before the third frame are read (the error body is
        # not an answer to serve).
        assert await signed(client, POSITION_RISK) == (200, p2)
        assert await signed(client, OPEN_ORDERS) == (200, o1)
        assert await signed(client, "/fapi/v2/positionRisk") == (200, [])  # another path
        assert await signed(client, POSITION_RISK, symbol="ETHUSDT") == (200, p2[1:])
        user = await open_ws(port, f"/ws/{key}")
        assert await receive(user) == frame(lines[6])
        assert await receive(market) == frame(lines[9])
        assert await server.wait_finished() == 4
        # p3 is the latest body, but a frame recorded after it has been pushed: its
        # positions stand, the exchange's figures (which moved with that mark) are left out.
        assert await signed(client, POSITION_RISK) == (200, [without_figures(row)
                                                             for row in p3])
        assert await signed(client, OPEN_ORDERS) == (200, o2)
        await user.close()
        await market.close()


POSITION_FIGURES = {"maintMargin", "initialMargin", "unRealizedProfit", "liquidationPrice",
                    "markPrice", "breakEvenPrice", "isolatedMargin"}


def without_figures(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if key not in POSITION_FIGURES}


async def test_state_answers_after_later_pushes_follow_the_pushes_without_figures(
        tmp_path: Path) -> None:
    account = {"totalMaintMargin": "2.0", "totalMarginBalance": "1000.0",
               "totalInitialMargin": "30.0", "totalWalletBalance": "1000.0",
               "assets": [{"asset": "USDT", "walletBalance": "1000", "crossWalletBalance": "1000",
                           "maintMargin": "2.0", "marginBalance": "1000.0",
                           "initialMargin": "30.0"}], "positions": []}
    lines = [
        rest(ACCOUNT, account, T0, "main"),
        rest(POSITION_RISK, [position_risk_row("BTCUSDT", "0.010", "60000", T0)], T0, "main"),
        mark_price("BTCUSDT", "60000", T0 + 100),
        account_update("main", T0 + 200, wallet="1500",
                       positions=(("BTCUSDT", "0.020", "60100"), ("ETHUSDT", "1", "3000"))),
        mark_price("BTCUSDT", "60500", T0 + 300),
    ]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None) as (server, port, client):
        # Before any push the recorded bodies stand as they are, figures and all.
        assert await signed(client, ACCOUNT) == (200, account)
        key = await new_key(client)
        user = await open_ws(port, f"/ws/{key}")
        market = await subscribed_market(port, *STREAMS)
        assert await server.wait_finished() == 3
        status, answer = await signed(client, ACCOUNT)
        assert status == 200
        assert "totalMaintMargin" not in answer and "totalMarginBalance" not in answer
        [usdt] = answer["assets"]
        assert usdt == {"asset": "USDT", "walletBalance": "1500",
                        "crossWalletBalance": "1500"}
        status, rows = await signed(client, POSITION_RISK)
        assert status == 200
        by_symbol = {row["symbol"]: row for row in rows}
        assert (by_symbol["BTCUSDT"]["positionAmt"], by_symbol["BTCUSDT"]["entryPrice"]) == (
            "0.020", "60100")
        assert not POSITION_FIGURES & set(by_symbol["BTCUSDT"])
        assert (by_symbol["ETHUSDT"]["positionAmt"], by_symbol["ETHUSDT"]["entryPrice"]) == (
            "1", "3000")
        await user.close()
        await market.close()


async def test_leverage_brackets_from_public_lines_and_per_symbol(tmp_path: Path) -> None:
    whole = [bracket_row("BTCUSDT"), bracket_row("ETHUSDT", 0.005)]
    sol = bracket_row("SOLUSDT", 0.01)
    own = [bracket_row("BTCUSDT", 0.02)]
    lines = [
        rest(BRACKETS, whole, T0),  # public: for every account
        rest(f"{BRACKETS}?symbol=SOLUSDT", sol, T0 + 1, "main"),
        account_update("main", T0 + 2),
        rest(BRACKETS, own, T0 + 3, "main"),  # the account's own, newer
    ]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None) as (server, port, client):
        assert await signed(client, BRACKETS) == (200, whole)
        assert await signed(client, BRACKETS, symbol="ETHUSDT") == (200, whole[1])
        assert await signed(client, BRACKETS, symbol="SOLUSDT") == (200, sol)
        assert await signed(client, BRACKETS, symbol="XRPUSDT") == (400, {
            "code": -1121, "msg": "Invalid symbol."})
        user = await open_ws(port, f"/ws/{await new_key(client)}")
        assert await receive(user) == frame(lines[2])
        assert await server.wait_finished() == 1
        assert await signed(client, BRACKETS) == (200, own)
        assert await signed(client, BRACKETS, symbol="ETHUSDT") == (400, {
            "code": -1121, "msg": "Invalid symbol."})
        await user.close()
    only_symbols = write_recording(tmp_path / "symbols.jsonl", [
        rest(f"{BRACKETS}?symbol=SOLUSDT", sol, T0),
        rest(f"{BRACKETS}?symbol=BTCUSDT", whole[0], T0),
        rest(f"{POSITION_RISK}?symbol=BTCUSDT",
             [position_risk_row("BTCUSDT", "1", "60000", T0)], T0, "main")])
    async with running(only_symbols, speed=None) as (_, _, client):
        # Per-symbol bodies only: their rows together, by symbol.
        assert await signed(client, BRACKETS) == (200, [whole[0], sol])
        assert await signed(client, POSITION_RISK) == (
            200, [position_risk_row("BTCUSDT", "1", "60000", T0)])


async def test_exchange_info_is_the_latest_of_the_recording(tmp_path: Path) -> None:
    early = {"symbols": [{"symbol": "BTCUSDT"}], "serverTime": T0}
    late = {"symbols": [{"symbol": "BTCUSDT"}, {"symbol": "ETHUSDT"}], "serverTime": T0 + 9}
    lines = [rest(EXCHANGE_INFO, early, T0), mark_price("BTCUSDT", "60000", T0 + 1),
             rest(EXCHANGE_INFO, late, T0 + 9),
             rest(EXCHANGE_INFO, {"code": -1003, "msg": "Too many requests."}, T0 + 10)]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None) as (_, _, client):
        answer = await client.get(EXCHANGE_INFO)  # public: no API key
        assert (answer.status_code, answer.json()) == (200, late)
    none = write_recording(tmp_path / "none.jsonl", [mark_price("BTCUSDT", "1", T0)])
    async with running(none, speed=None) as (_, _, client):
        assert (await client.get(EXCHANGE_INFO)).status_code == 404


# --- market requests ------------------------------------------------------------------------


async def test_subscriptions_are_answered_and_listed(tmp_path: Path) -> None:
    recording = write_recording(tmp_path / "r.jsonl", market_story(2))
    async with running(recording, speed=None) as (_, port, _):
        ws = await open_ws(port, MARKET_PATH)
        assert await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1}) == {
            "result": [], "id": 1}
        assert await request(ws, {"method": "SUBSCRIBE", "params": [ETH_STREAM, BTC_STREAM],
                                  "id": 2}) == {"result": None, "id": 2}
        assert await receive(ws) == frame(market_story(2)[0])
        assert await receive(ws) == frame(market_story(2)[1])
        assert await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": "x"}) == {
            "result": [ETH_STREAM, BTC_STREAM], "id": "x"}
        assert await request(ws, {"method": "UNSUBSCRIBE", "params": [ETH_STREAM],
                                  "id": 3}) == {"result": None, "id": 3}
        assert await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 4}) == {
            "result": [BTC_STREAM], "id": 4}
        await ws.close()
        # Streams in the URL are subscribed at connect.
        combined = await open_ws(port, f"{MARKET_PATH}?streams={BTC_STREAM}/{ETH_STREAM}")
        assert await request(combined, {"method": "LIST_SUBSCRIPTIONS", "id": 5}) == {
            "result": [BTC_STREAM, ETH_STREAM], "id": 5}
        await combined.close()


async def test_bad_requests_get_an_error_and_the_connection_stays_open(
        tmp_path: Path) -> None:
    lines = [account_update("main", T0)]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    invalid = {"code": 2, "msg": "Invalid request"}
    async with running(recording, speed=None) as (_, port, client):
        ws = await open_ws(port, MARKET_PATH)
        cases: list[tuple[dict[str, Any] | str, Any]] = [
            ("not json {", None),
            ("[1, 2]", None),
            ({"method": "SUBSCRIB", "params": [BTC_STREAM], "id": 7}, 7),
            ({"params": [BTC_STREAM], "id": 8}, 8),
            ({"method": "SUBSCRIBE", "params": BTC_STREAM, "id": 9}, 9),
            ({"method": "SUBSCRIBE", "params": [], "id": 10}, 10),
            ({"method": "SUBSCRIBE", "params": [BTC_STREAM, 3], "id": 11}, 11),
            ({"method": "UNSUBSCRIBE", "id": "u"}, "u"),
            ({"method": "SUBSCRIBE", "params": [BTC_STREAM], "id": -1}, None),
            ({"method": "SUBSCRIBE", "params": [BTC_STREAM], "id": [1]}, None),
            ({"method": "SUBSCRIBE", "params": [f"s{i}" for i in range(1025)], "id": 12}, 12),
        ]
        for message, request_id in cases:
            assert await request(ws, message) == {"error": invalid, "id": request_id}, message
        assert await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 13}) == {
            "result": [], "id": 13}
        await ws.close()
        user = await open_ws(port, f"/ws/{await new_key(client)}")
        assert await receive(user) == frame(lines[0])
        assert await request(user, {"method": "LIST_SUBSCRIPTIONS", "id": 1}) == {
            "error": invalid, "id": 1}
        await user.close()


async def test_unknown_paths_and_listen_keys_are_refused_at_the_handshake(
        tmp_path: Path) -> None:
    recording = write_recording(tmp_path / "r.jsonl", [account_update("main", T0)])
    async with running(recording, speed=None) as (_, port, _):
        with pytest.raises(InvalidStatus) as unknown_key:
            await open_ws(port, f"/ws/{'k' * 60}")
        assert unknown_key.value.response.status_code == 400
        assert orjson.loads(unknown_key.value.response.body or b"") == {
            "code": -1125, "msg": "This listenKey does not exist."}
        for path in ("/ws/v5/public", "/", "/ws"):
            with pytest.raises(InvalidStatus) as unknown_path:
                await open_ws(port, path)
            assert unknown_path.value.response.status_code == 404, path


# --- pushes ---------------------------------------------------------------------------------


async def test_frames_follow_the_recorded_order_across_connections(tmp_path: Path) -> None:
    lines = [*mixed_story(), account_update("hedge", T0 + 800, wallet="5"),
             mark_price("BTCUSDT", "60200", T0 + 900), account_update("hedge", T0 + 1000)]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None) as (server, port, client):
        async with Feed(port, client, streams=STREAMS, accounts=("main", "hedge"),
                        expected_frames=len(lines)) as feed:
            await feed.wait()
        assert await server.wait_finished() == len(lines)
    # Each connection got its frames, as recorded, and the arrival order across the three
    # is the recorded one.
    assert feed.received == roles_of(lines)
    assert feed.closures == []


async def test_nothing_is_pushed_until_every_role_is_ready(tmp_path: Path) -> None:
    lines = mixed_story()
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None) as (server, port, client):
        market = await open_ws(port, MARKET_PATH)
        key = await new_key(client)
        await assert_silent(market, 0.2)  # connected, not subscribed: not ready
        assert await request(market, {"method": "SUBSCRIBE", "params": list(STREAMS),
                                      "id": 1}) == {"result": None, "id": 1}
        await assert_silent(market, 0.3)  # no user-data connection yet
        assert server.frames_pushed == 0
        user = await open_ws(port, f"/ws/{key}")
        assert [await receive(market) for _ in of_role(lines, "market")] == of_role(
            lines, "market")
        assert [await receive(user) for _ in of_role(lines, "main")] == of_role(lines, "main")
        assert await server.wait_finished() == len(lines)
        await market.close()
        await user.close()


async def test_a_market_frame_waits_for_its_subscription_then_goes_anyway(
        tmp_path: Path) -> None:
    lines = [mark_price("ETHUSDT", "3000", T0), mark_price("BTCUSDT", "60000", T0 + 1),
             mark_price("ETHUSDT", "3001", T0 + 2), mark_price("SOLUSDT", "150", T0 + 3)]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None, subscribe_grace_s=0.4) as (server, port, _):
        market = await subscribed_market(port, BTC_STREAM)
        await assert_silent(market, 0.15)  # the ETH frame waits for its subscription
        assert await request(market, {"method": "SUBSCRIBE", "params": [ETH_STREAM],
                                      "id": 2}) == {"result": None, "id": 2}
        assert [await receive(market) for _ in range(3)] == [frame(line)
                                                             for line in lines[:3]]
        # SOL is never subscribed: it goes after the grace.
        waited = time.monotonic()
        assert await receive(market) == frame(lines[3])
        assert time.monotonic() - waited >= 0.3
        assert await server.wait_finished() == 4
        await market.close()


async def test_a_paced_replay_takes_the_recorded_time_over_speed(tmp_path: Path) -> None:
    lines = market_story(4, step_ms=1000)
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=10.0) as (server, port, _):
        market = await subscribed_market(port, *STREAMS)
        assert await receive(market) == frame(lines[0])
        first = time.monotonic()
        assert [await receive(market) for _ in range(3)] == [frame(line)
                                                             for line in lines[1:]]
        assert time.monotonic() - first >= 0.28  # 3 s of recording at 10x
        assert await server.wait_finished() == 4
        await market.close()


async def test_a_reconnect_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    lines = [mark_price("BTCUSDT", "60000", T0), account_update("main", T0 + 1000),
             mark_price("ETHUSDT", "3000", T0 + 2000), mark_price("BTCUSDT", "1", T0 + 3000),
             account_update("main", T0 + 4000, wallet="1"), mark_price("BTCUSDT", "2", T0 + 5000)]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    # 250 ms between frames: each client closes right after a frame, well before the next.
    async with running(recording, speed=4.0) as (server, port, client):
        key = await new_key(client)
        user = await open_ws(port, f"/ws/{key}")
        market = await subscribed_market(port, *STREAMS)
        received = [await receive(market)]
        await market.close()
        market = await subscribed_market(port, *STREAMS)
        received.append(await receive(user))
        await user.close()
        assert await new_key(client) == key  # still live
        user = await open_ws(port, f"/ws/{key}")
        received += [await receive(market), await receive(market), await receive(user),
                     await receive(market)]
        assert received == [frame(line) for line in lines]
        assert await server.wait_finished() == len(lines)
        await assert_silent(market, 0.1)
        await market.close()
        await user.close()


async def test_a_reconnect_does_not_bring_a_burst(tmp_path: Path) -> None:
    lines = market_story(6, step_ms=100)
    recording = write_recording(tmp_path / "r.jsonl", lines)
    # The client waits longer than the whole recording before it reconnects: without
    # re-basing, every remaining frame would then be overdue and pushed at once.
    async with (running(recording, speed=1.0, faults=Faults(drop_after=2)) as (_, port, client),
                Feed(port, client, streams=STREAMS, expected_frames=6,
                     pause_before_reconnect=0.6) as feed):
        await feed.wait()
        finished = time.monotonic()
    assert feed.frames("market") == [frame(line) for line in lines]
    reconnected = feed.connected_at[1][1]
    # Frames 3 to 6 span 300 ms of recording and come at that pace after the reconnect.
    assert finished - reconnected >= 0.3


# --- faults ---------------------------------------------------------------------------------


async def test_dropped_connections_resume_with_the_next_frame(tmp_path: Path) -> None:
    lines = mixed_story()
    recording = write_recording(tmp_path / "r.jsonl", lines)
    # Drops before frame 3 (user data) and frame 5 (market).
    async with running(recording, speed=None, faults=Faults(drop_after=2, drop_times=2)) as (
            server, port, client):
        async with Feed(port, client, streams=STREAMS, accounts=("main",),
                        expected_frames=len(lines)) as feed:
            await feed.wait()
        assert await server.wait_finished() == len(lines)
    assert feed.closures == [("main", None), ("market", None)]  # no close frame
    assert feed.received == roles_of(lines)
    assert feed.keys["main"] == [feed.keys["main"][0]] * 2  # the same key again


async def test_garbage_is_a_text_frame_that_is_not_json(tmp_path: Path) -> None:
    lines = mixed_story()[:3]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None, faults=Faults(garbage_after=1)) as (
            _, port, client):
        user = await open_ws(port, f"/ws/{await new_key(client)}")
        market = await subscribed_market(port, *STREAMS)
        assert await receive(user) == frame(lines[0])
        garbage = await market.recv()  # the next frame is the market's
        assert isinstance(garbage, str)
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(garbage)
        assert await receive(market) == frame(lines[1])
        assert await receive(user) == frame(lines[2])
        await user.close()
        await market.close()


async def test_a_stall_holds_pushes_and_answers(tmp_path: Path) -> None:
    lines = market_story(3)
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None, faults=Faults(stall_after=1, stall_s=0.8)) as (
            server, port, _):
        market = await subscribed_market(port, *STREAMS)
        assert await receive(market) == frame(lines[0])
        sent = time.monotonic()
        await market.send(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 2}).decode())
        later: list[tuple[Message, float]] = []
        for _ in range(3):
            later.append((await receive(market), time.monotonic() - sent))
        # The stall began with the first push; allowing the client 0.3 s to send its
        # request, its answer and the next frames still waited half a second or more.
        assert all(waited >= 0.5 for _, waited in later)
        assert sorted((message for message, _ in later), key=str) == sorted(
            [{"result": list(STREAMS), "id": 2}, frame(lines[1]), frame(lines[2])], key=str)
        assert await server.wait_finished() == 3
        await market.close()


async def test_an_expired_listen_key_needs_a_new_key_and_the_replay_resumes(
        tmp_path: Path) -> None:
    lines = mixed_story()
    recording = write_recording(tmp_path / "r.jsonl", lines)
    faults = Faults(expire_listen_key_after=3)
    async with running(recording, speed=None, faults=faults) as (server, port, client):
        async with Feed(port, client, streams=STREAMS, accounts=("main",),
                        expected_frames=len(lines)) as feed:
            await feed.wait()
        assert await server.wait_finished() == len(lines)
        old, new = feed.keys["main"]
        assert old != new
        # The expired key is gone for good.
        keepalive = await client.put(LISTEN_KEY_PATH, params={"listenKey": old},
                                     headers={"X-MBX-APIKEY": "main"})
        assert keepalive.json()["code"] == -1125
        with pytest.raises(InvalidStatus):
            await open_ws(port, f"/ws/{old}")
    # The event names the key and is dated on the replay clock: the time of the third
    # frame, the last one pushed before it, and the little time since.
    [event] = feed.others["main"]
    assert (event["e"], event["listenKey"]) == ("listenKeyExpired", old)
    assert lines[2]["recv_ts"] <= event["E"] < lines[2]["recv_ts"] + 5000
    assert feed.closures == [("main", 1000)]
    assert feed.received == roles_of(lines)  # nothing lost, nothing twice


async def test_fail_logins_refuses_the_first_listen_keys(tmp_path: Path) -> None:
    recording = write_recording(tmp_path / "r.jsonl", [account_update("main", T0)])
    async with running(recording, speed=None, faults=Faults(fail_logins=2)) as (_, _, client):
        headers = {"X-MBX-APIKEY": "main"}
        assert (await client.post(LISTEN_KEY_PATH)).json()["code"] == -2014  # not counted
        for _ in range(2):
            refused = await client.post(LISTEN_KEY_PATH, headers=headers)
            assert (refused.status_code, refused.json()["code"]) == (401, -2015)
        assert len(await new_key(client)) == 60


async def test_notice_after_closes_every_connection_and_the_replay_goes_on(
        tmp_path: Path) -> None:
    lines = mixed_story()
    recording = write_recording(tmp_path / "r.jsonl", lines)
    async with running(recording, speed=None, faults=Faults(notice_after=2)) as (
            server, port, client):
        async with Feed(port, client, streams=STREAMS, accounts=("main",),
                        expected_frames=len(lines)) as feed:
            await feed.wait()
        assert await server.wait_finished() == len(lines)
    assert sorted(feed.closures) == [("main", 1001), ("market", 1001)]
    assert feed.received == roles_of(lines)
    assert len(set(feed.keys["main"])) == 1  # the key outlives its connection


# --- bad input ------------------------------------------------------------------------------


async def test_bad_lines_are_skipped_and_operational_frames_not_pushed(
        tmp_path: Path) -> None:
    good = [mark_price("BTCUSDT", "60000", T0), account_update("main", T0 + 1)]
    recording = write_recording(tmp_path / "r.jsonl", [
        "not json {",
        "[1, 2]",
        '{"frame": {}}',  # no recv_ts
        orjson.dumps({"recv_ts": T0, "account": 5, "frame": {}}).decode(),
        good[0],
        {"recv_ts": T0, "frame": "pong"},
        {"recv_ts": T0, "frame": {"e": "markPriceUpdate", "s": "BTCUSDT"}},  # no envelope
        {"recv_ts": T0, "frame": {"stream": "", "data": {}}},
        {"recv_ts": T0, "frame": {"stream": BTC_STREAM}},
        {"recv_ts": T0, "account": "main", "frame": {"a": {}}},  # no event type
        # orjson reads this, but cannot write it again.
        f'{{"recv_ts": {T0}, "account": "main", "frame": {{"e": "ACCOUNT_UPDATE", "a": '
        f'{"[" * 300}0{"]" * 300}}}}}',
        {"recv_ts": T0, "frame": {"result": None, "id": 1}},  # the recorder's answer
        {"recv_ts": T0, "account": "main", "frame": {"e": "listenKeyExpired", "E": T0,
                                                     "listenKey": "k" * 60}},
        {"recv_ts": T0, "account": "main", "rest": "/fapi/v1/listenKey",
         "body": {"listenKey": "k" * 60}},
        {"recv_ts": T0, "rest": ACCOUNT, "body": {}},  # a signed path without an account
        {"recv_ts": T0, "rest": "fapi/v3/account", "body": {}},
        {"recv_ts": T0, "account": "main", "rest": ACCOUNT},
        "",
        good[1],
    ])
    async with running(recording, speed=None) as (server, port, client):
        assert server.lines_skipped == 13
        market = await subscribed_market(port, *STREAMS)
        user = await open_ws(port, f"/ws/{await new_key(client)}")
        assert await receive(market) == frame(good[0])
        assert await receive(user) == frame(good[1])
        assert await server.wait_finished() == 2
        await assert_silent(user, 0.1)
        # Neither the account body without an account nor the one without a body counts.
        assert (await signed(client, ACCOUNT))[0] == 404
        await market.close()
        await user.close()


async def test_malformed_http_gets_a_binance_error_and_the_server_goes_on(
        tmp_path: Path) -> None:
    recording = write_recording(tmp_path / "r.jsonl", [account_update("main", T0)])
    async with running(recording, speed=None) as (server, _, client):
        assert server.rest_port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", server.rest_port)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400")
        body = orjson.loads(await reader.read())
        assert body["code"] == -1000
        writer.close()
        await writer.wait_closed()
        # Odd targets and parameters are answered, not a crash.
        for target in ("/fapi/v1/listenKey?listenKey=%ff%fe", "/[::1", "//x//y"):
            answer = await client.put(target, headers={"X-MBX-APIKEY": "main"})
            assert answer.status_code in (400, 404)
        assert len(await new_key(client)) == 60


async def test_inputs_are_validated(tmp_path: Path) -> None:
    recording = write_recording(tmp_path / "r.jsonl", [account_update("main", T0)])
    with pytest.raises(RecordingError):
        ReplayServer(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError) as speed:
        ReplayServer(recording, speed=0)
    assert speed.value.key == "speed"
    refused: list[tuple[dict[str, Any], str]] = [
        ({"drop_after": 0}, "drop_after"), ({"stall_s": -1.0}, "stall_s"),
        ({"stall_s": float("inf")}, "stall_s"),
        ({"expire_listen_key_after": -1}, "expire_listen_key_after"),
        ({"fail_logins": True}, "fail_logins"), ({"read_only_keys": "abc"}, "read_only_keys")]
    for bad, key in refused:
        with pytest.raises(ConfigError) as error:
            Faults(**bad)
        assert error.value.key == key
    # Every option the command line passes is accepted (the order ones are ignored).
    options: dict[str, Any] = {
        "drop_after": None, "drop_times": 1, "garbage_after": None, "stall_after": None,
        "stall_s": 40.0, "fail_logins": 0, "notice_after": None, "reject_orders": 1,
        "reject_code": "51008", "reject_message": "Insufficient margin",
        "rate_limit_requests": 0, "timeout_requests": 0, "order_timeout_s": 30.0,
        "partial_fills": 0, "partial_fill_ratio": 0.5, "delay_fills": 0,
        "fill_delay_s": 5.0, "read_only_keys": frozenset({"k"})}
    faults = Faults(**options)
    assert faults.ignored() == ["reject_orders", "read_only_keys"]


async def test_serve_reports_listening_and_finished_and_keeps_serving(tmp_path: Path) -> None:
    lines = [account_update("main", T0)]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    statuses: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.create_task(serve(recording, "127.0.0.1", 0, None, None,
                                     statuses.put_nowait))
    try:
        async with asyncio.timeout(TIMEOUT):
            listening = await statuses.get()
        assert listening["event"] == "listening"
        assert listening["ws_url"] == f"ws://127.0.0.1:{listening['port']}"
        assert listening["rest_url"] == f"http://127.0.0.1:{listening['rest_port']}"
        async with httpx.AsyncClient(base_url=listening["rest_url"]) as client:
            key = await new_key(client)
            user = await connect(f"{listening['ws_url']}/ws/{key}", ping_interval=None)
            assert await receive(user) == frame(lines[0])
            async with asyncio.timeout(TIMEOUT):
                assert await statuses.get() == {"event": "finished", "frames": 1, "keepalives":
                                                {"accounts": {}, "parameters": []}}
            assert not task.done()
            assert await new_key(client) == key  # still serving
            await user.close()
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
