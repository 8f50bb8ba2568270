"""The live feed's REST loads (SPEC 3.1), against real servers on loopback: the private
bootstrap (account config, balance, positions, orders-pending, then the subscriptions)
with the daemon against the replay server, a failed load making the connection reconnect,
the public loads that follow the engine's interest (tiers, discount rates, borrowing
tiers) once each and retried, and the demo-trading header."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from adapters.okx.auth import Credentials
from adapters.okx.config import OkxConfig
from adapters.okx.live import OkxFeed
from adapters.okx.replay_server import ReplayServer
from adapters.okx.rest import OkxRest
from adapters.okx.venue import OKX
from monitor.app.service import build_daemon
from monitor.core.batch import Batch
from monitor.core.settings import AccountConfig, Config
from monitor.runtime.feed import FeedItem, Frame, LinkChange, RestBody
from monitor.runtime.pipeline import SinkTask
from monitor.runtime.venues import VenueUse
from tests.builders import BTC_SWAP, ETH_SWAP
from tests.recordings import (
    T0,
    account_push,
    balance_row,
    mark_price,
    order_row,
    position_row,
    positions,
    rest,
    write_recording,
)

PUBLIC_PATH = "/ws/v5/public"
PRIVATE_PATH = "/ws/v5/private"
ACCOUNT_CONFIG = "/api/v5/account/config"
BALANCE = "/api/v5/account/balance"
POSITIONS = "/api/v5/account/positions"
ORDERS_PENDING = "/api/v5/trade/orders-pending"
INSTRUMENTS = "/api/v5/public/instruments"
TIERS = "/api/v5/public/position-tiers"
DISCOUNT = "/api/v5/public/discount-rate-interest-free-quota"
CREDS = Credentials("main", "secret-never-shown", "phrase")
BTC = "BTC-USDT-SWAP"


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def json_response(body: Any) -> Response:
    data = orjson.dumps(body)
    return Response(200, "OK", Headers([("Content-Type", "application/json"),
                                        ("Content-Length", str(len(data)))]), data)


class OkxStub:
    """A websockets server speaking as much OKX v5 as the feed uses: logins succeed,
    subscriptions are acknowledged, every REST GET answers an empty success, except that
    the first ``failures[path]`` requests of a path answer OKX error 50001. What arrives
    is noted in order in ``timeline`` (``("rest", path with query)``, ``("private",
    op)``, ``("public", op)``), with each request's headers in ``headers``."""

    def __init__(self, failures: dict[str, int] | None = None) -> None:
        self.failures = dict(failures or {})
        self.timeline: list[tuple[str, str]] = []
        self.headers: list[tuple[str, Headers]] = []
        self.server: Server | None = None

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path in (PUBLIC_PATH, PRIVATE_PATH):
            return None
        self.timeline.append(("rest", request.path))
        self.headers.append((request.path, request.headers))
        if self.failures.get(path, 0) > 0:
            self.failures[path] -= 1
            # docs: "Error Code > REST API": 50001 Service temporarily unavailable.
            return json_response({"code": "50001", "msg": "Service temporarily unavailable",
                                  "data": []})
        return json_response({"code": "0", "msg": "", "data": []})

    async def handle(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        role = "private" if connection.request.path == PRIVATE_PATH else "public"
        async for message in connection:
            if message == "ping":
                await connection.send("pong")
                continue
            request = orjson.loads(message)
            self.timeline.append((role, request["op"]))
            if request["op"] == "login":
                await connection.send(orjson.dumps(
                    {"event": "login", "code": "0", "msg": "", "connId": "s1"}).decode())
                continue
            for arg in request["args"]:
                await connection.send(orjson.dumps(
                    {"event": request["op"], "arg": arg, "connId": "s1"}).decode())

    async def start(self) -> int:
        self.server = await serve(self.handle, "127.0.0.1", 0, compression=None,
                                  process_request=self.process_request)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def okx_config(port: int, **options: Any) -> OkxConfig:
    return OkxConfig(public_url=f"ws://127.0.0.1:{port}{PUBLIC_PATH}",
                     private_url=f"ws://127.0.0.1:{port}{PRIVATE_PATH}",
                     rest_url=f"http://127.0.0.1:{port}", backoff_initial_s=0.01,
                     backoff_max_s=0.05, **options)


def rest_path(item: FeedItem) -> str | None:
    return urlsplit(item.path).path if isinstance(item, RestBody) else None


# --- the private bootstrap ------------------------------------------------------------------


class ListSink:
    name = "list"

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    async def write(self, batch: Batch) -> None:
        self.batches.append(batch)

    async def close(self) -> None:
        return None


async def test_the_daemon_bootstraps_each_account_by_rest_before_subscribing(
        tmp_path: Path) -> None:
    balance = {"uTime": str(T0), "totalEq": "1000", "adjEq": "", "imr": "", "mmr": "",
               "mgnRatio": "", "details": [balance_row("USDT", "1000", T0)]}
    lines = [
        rest(ACCOUNT_CONFIG, [{"acctLv": "3", "posMode": "net_mode"}], T0 - 40,
             account="main"),
        rest(BALANCE, [balance], T0 - 30, account="main"),
        rest(POSITIONS, [position_row(BTC, "1", "60000", T0)], T0 - 20, account="main"),
        rest(ORDERS_PENDING, [order_row("101", "live", T0)], T0 - 10, account="main"),
        account_push("main", [balance_row("USDT", "1000", T0)], T0, snapshot=True),
        positions("main", [position_row(BTC, "1", "60000", T0)], T0 + 10, snapshot=True),
        mark_price(BTC, "60000", T0 + 20),
    ]
    recording = write_recording(tmp_path / "r.jsonl", lines)
    server = ReplayServer(recording, speed=None)
    port = await server.start()
    config = Config(instruments=(BTC_SWAP, ETH_SWAP),
                    accounts={"main": AccountConfig(name="main")})
    items: list[FeedItem] = []
    sink = ListSink()
    daemon = build_daemon(config, {"main": CREDS}, SinkTask(sink), tap=items.append,
                          uses=[VenueUse(OKX, okx_config(port), ("main",))])
    stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))
    try:
        await until(lambda: sum(isinstance(i, Frame) for i in items) == 3)
    finally:
        stop.set()
        await asyncio.wait_for(runner, 10)
        await server.close()

    private = [item for item in items if item.account == "main"]
    kinds = [rest_path(item) or type(item).__name__ for item in private]
    # Config, balance, positions, live orders, then the subscriptions (the link is open:
    # LinkChange), then what the subscriptions bring.
    assert kinds == [ACCOUNT_CONFIG, BALANCE, POSITIONS, ORDERS_PENDING, "LinkChange",
                     "Frame", "Frame"]
    bodies = [item.body for item in private if isinstance(item, RestBody)]
    # The replay server adds the key's permissions to account/config (its order simulator).
    config_body = {**lines[0]["body"],
                   "data": [{**lines[0]["body"]["data"][0], "perm": "read_only,trade"}]}
    assert bodies == [config_body, *(line["body"] for line in lines[1:4])]
    link = private[4]
    assert isinstance(link, LinkChange) and link.connected
    # Every body decoded: nothing was quarantined, and the REST state reached the engine.
    assert daemon.stats.quarantined == 0
    assert daemon.lanes[0].engine.accounts["main"].currencies["USDT"].cash == 1000.0
    # The public side loads the instrument specs although [[instruments]] lists some.
    public_rest = [item.path for item in items if isinstance(item, RestBody)
                   and item.account is None]
    # (Other public loads, such as a currency's discount rates, may come in between.)
    instrument_loads = [path for path in public_rest if path.startswith(INSTRUMENTS)]
    assert instrument_loads[:2] == [f"{INSTRUMENTS}?instType=SWAP",
                                    f"{INSTRUMENTS}?instType=FUTURES"]


async def test_a_failed_bootstrap_load_reconnects_with_the_header_of_demo_trading() -> None:
    stub = OkxStub(failures={BALANCE: 1})
    port = await stub.start()
    items: list[FeedItem] = []
    feed = OkxFeed(okx_config(port, simulated=True), {"main": CREDS}, items.append)
    feed.want([], [], [])
    runner = asyncio.create_task(feed.run())
    try:
        await until(lambda: any(isinstance(i, LinkChange) and i.account == "main"
                                for i in items))
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await stub.close()

    private = [(kind, urlsplit(what).path) for kind, what in stub.timeline
               if kind == "private" or "/account/" in what or "/trade/" in what]
    assert private == [
        ("private", "login"), ("rest", ACCOUNT_CONFIG), ("rest", BALANCE),  # 50001
        ("private", "login"), ("rest", ACCOUNT_CONFIG), ("rest", BALANCE),
        ("rest", POSITIONS), ("rest", ORDERS_PENDING), ("private", "subscribe"),
    ]
    # The failed balance was never delivered; the successful bootstrap was, in order.
    delivered = [rest_path(i) for i in items if isinstance(i, RestBody) and i.account]
    assert delivered == [ACCOUNT_CONFIG, ACCOUNT_CONFIG, BALANCE, POSITIONS, ORDERS_PENDING]
    # okx.simulated: every REST request, public and signed, carries the demo header.
    assert stub.headers and all(headers.get("x-simulated-trading") == "1"
                                for _, headers in stub.headers)


# --- public loads -----------------------------------------------------------------------------


async def test_public_loads_follow_the_engine_interest_once_each_and_retry() -> None:
    stub = OkxStub(failures={DISCOUNT: 1})
    port = await stub.start()
    items: list[FeedItem] = []
    feed = OkxFeed(okx_config(port), {}, items.append)
    feed.want([BTC, "ETH-USD-250328"], ["BTC", "USDT"], ["USDT"])
    runner = asyncio.create_task(feed.run())
    wanted = [
        f"{TIERS}?instType=SWAP&tdMode=cross&instFamily=BTC-USDT",
        f"{TIERS}?instType=FUTURES&tdMode=cross&instFamily=ETH-USD",
        f"{DISCOUNT}?ccy=BTC",
        f"{DISCOUNT}?ccy=USDT",
        f"{TIERS}?instType=MARGIN&tdMode=cross&ccy=USDT",
    ]

    def delivered() -> list[str]:
        return [i.path for i in items if isinstance(i, RestBody)
                and not i.path.startswith(INSTRUMENTS)]

    try:
        await until(lambda: sorted(delivered()) == sorted(wanted))
        # The same interest again loads nothing again; a new borrowed currency loads its
        # borrowing tiers only.
        feed.want([BTC, "ETH-USD-250328"], ["BTC", "USDT"], ["USDT", "BTC"])
        await until(lambda: len(delivered()) == len(wanted) + 1)
        await asyncio.sleep(0.1)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await stub.close()

    assert delivered()[-1] == f"{TIERS}?instType=MARGIN&tdMode=cross&ccy=BTC"
    requested = [what for kind, what in stub.timeline
                 if kind == "rest" and not what.startswith(INSTRUMENTS)]
    # In the order wanted; the discount rates of BTC failed once (50001) and were retried.
    assert requested == [wanted[0], wanted[1], wanted[2], wanted[3], wanted[4], wanted[2],
                         f"{TIERS}?instType=MARGIN&tdMode=cross&ccy=BTC"]
    # Not simulated: no demo header.
    assert all("x-simulated-trading" not in headers for _, headers in stub.headers)


async def test_the_demo_header_is_sent_only_when_simulated() -> None:
    stub = OkxStub()
    port = await stub.start()
    try:
        base = f"http://127.0.0.1:{port}"
        await OkxRest(base, simulated=True).get(INSTRUMENTS, {"instType": "SWAP"})
        await OkxRest(base, simulated=True).get(BALANCE, None, CREDS)
        await OkxRest(base).get(INSTRUMENTS, {"instType": "SWAP"})
        await OkxRest(base).get(BALANCE, None, CREDS)
    finally:
        await stub.close()
    seen = [(path, headers.get("x-simulated-trading"), "OK-ACCESS-SIGN" in headers)
            for path, headers in stub.headers]
    assert seen == [(f"{INSTRUMENTS}?instType=SWAP", "1", False), (BALANCE, "1", True),
                    (f"{INSTRUMENTS}?instType=SWAP", None, False), (BALANCE, None, True)]
