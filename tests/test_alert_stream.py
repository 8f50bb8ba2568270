"""The ``/v1/alerts`` websocket with real clients: the server riskmon runs (HttpServer and
AlertStreamHandler on 127.0.0.1, port 0) over a real SQLite store and the alert hub."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from adapters.alert_stream import load_tokens
from monitor.core.alerts import Alert
from monitor.core.errors import ConfigError
from monitor.core.settings import StreamToken
from tests.builders import make_alert
from tests.stream_harness import StreamServer

TOKENS = {"tok-main-7f3a": frozenset({"main"}), "tok-both-91c2": frozenset({"main", "desk"})}


@pytest.fixture
async def make_server(tmp_path: Path) -> AsyncIterator[Any]:
    started: list[StreamServer] = []

    async def make(**options: Any) -> StreamServer:
        server = await StreamServer(tmp_path / "stream.db", **options).start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()


async def subscribe(url: str, **request: Any) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await connect(url)
    await ws.send(orjson.dumps({"op": "subscribe", **request}).decode())
    return ws, orjson.loads(await ws.recv())


async def receive_alerts(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    """The next ``count`` alerts (heartbeats skipped)."""
    received: list[dict[str, Any]] = []
    async with asyncio.timeout(15):
        while len(received) < count:
            message = orjson.loads(await ws.recv())
            if "event" not in message:
                received.append(message)
    return received


async def refusal(ws: ClientConnection) -> tuple[dict[str, Any], int | None, str | None]:
    """The error message before the close, and the close code and reason."""
    message = orjson.loads(await ws.recv())
    with pytest.raises(ConnectionClosed):
        await ws.recv()
    return message, ws.close_code, ws.close_reason


def ids(alerts: list[Alert] | list[dict[str, Any]]) -> list[str]:
    return [a["id"] if isinstance(a, dict) else a.id for a in alerts]


async def test_catch_up_then_live_with_no_gap_and_no_duplicate_while_alerts_flow(
        make_server: Any) -> None:
    server: StreamServer = await make_server()
    chain = server.chain
    await chain.publish([make_alert(n) for n in range(1, 31)])
    await chain.settle()
    rng = random.Random(11)
    total = 300

    async def produce() -> None:
        n = 31
        while n <= total:
            size = min(rng.randint(1, 5), total - n + 1)
            await chain.publish([make_alert(k) for k in range(n, n + size)])
            n += size
            await asyncio.sleep(rng.choice([0, 0.001, 0.003]))

    producer = asyncio.create_task(produce())
    clients: list[tuple[str | None, ClientConnection, list[dict[str, Any]]]] = []
    readers = []

    async def read_all(ws: ClientConnection, sink: list[dict[str, Any]]) -> None:
        async for raw in ws:
            message = orjson.loads(raw)
            if "event" not in message:
                sink.append(message)

    earliest, ack = await subscribe(server.url, since="earliest")
    assert ack == {"event": "subscribed", "accounts": None, "kinds": None,
                   "min_level": "normal", "since": "earliest", "resume_id": None}
    clients.append((None, earliest, []))
    while not producer.done():
        await asyncio.sleep(rng.uniform(0.002, 0.02))
        since = await chain.store.last_alert_id()
        ws, ack = await subscribe(server.url, since=since)
        assert ack["event"] == "subscribed" and ack["resume_id"] == since
        clients.append((since, ws, []))
        live, ack = await subscribe(server.url)
        clients.append((ack["resume_id"], live, []))
    for _, ws, sink in clients:
        readers.append(asyncio.create_task(read_all(ws, sink)))
    await chain.settle()

    everything = await chain.store.alerts()
    assert len(everything) == total and len(clients) >= 6
    for since, ws, sink in clients:
        expected = ids(everything if since is None else await chain.store.alerts(since=since))
        async with asyncio.timeout(15):
            while len(sink) < len(expected):  # noqa: ASYNC110 (another task appends)
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert ids(sink) == expected  # in order, no gap, no duplicate
        if sink:
            assert sink[-1] == orjson.loads(everything[-1].to_json())  # the JSON, as stored
        await ws.close()
    for reader in readers:
        await reader


async def test_a_stuck_subscriber_is_cut_off_while_a_healthy_one_gets_everything(
        make_server: Any) -> None:
    server: StreamServer = await make_server(queue_size=40)
    chain = server.chain
    # Big alerts, so that the stuck client's socket buffers (a few MB) fill up soon.
    pad = "x" * 50_000
    produced = [make_alert(n, payload={"n": n, "pad": pad}) for n in range(1, 401)]
    # The client library stops reading its socket after 4 unread messages.
    stuck = await connect(server.url, max_queue=4)
    await stuck.send(orjson.dumps({"op": "subscribe"}).decode())
    healthy, _ = await subscribe(server.url)
    received: list[dict[str, Any]] = []

    async def read_healthy() -> None:
        received.extend(await receive_alerts(healthy, len(produced)))

    reader = asyncio.create_task(read_healthy())
    for start in range(0, len(produced), 4):
        await chain.publish(produced[start:start + 4])
        await asyncio.sleep(0.01)
    await reader
    assert ids(received) == ids(produced)  # the pipeline and the other subscriber went on
    async with asyncio.timeout(10):
        while chain.hub.cut_off < 1:  # noqa: ASYNC110 (the server's side)
            await asyncio.sleep(0.01)
    # Now the stuck client reads: what it was sent, then the close with the reason.
    got: list[dict[str, Any]] = []
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(10):
            while True:
                message = orjson.loads(await stuck.recv())
                if "event" not in message:
                    got.append(message)
    assert stuck.close_code == 4408
    assert "behind" in (stuck.close_reason or "")
    assert 0 < len(got) < len(produced) and ids(got) == ids(produced)[:len(got)]
    assert chain.hub.subscribers == 1
    # It resumes where it stopped, without a gap.
    resumed, ack = await subscribe(server.url, since=got[-1]["id"])
    assert ack["event"] == "subscribed"
    rest = await receive_alerts(resumed, len(produced) - len(got))
    assert ids(got) + ids(rest) == ids(produced)
    await resumed.close()
    await healthy.close()


async def test_tokens_limit_each_client_to_its_accounts(make_server: Any) -> None:
    server: StreamServer = await make_server(tokens=TOKENS)
    main_only, ack = await subscribe(server.url, token="tok-main-7f3a")
    assert ack["event"] == "subscribed" and ack["accounts"] == ["main"]
    both, ack = await subscribe(server.url, token="tok-both-91c2", accounts=["desk"])
    assert ack["accounts"] == ["desk"]
    produced = [make_alert(1, account="main"), make_alert(2, account="desk"),
                make_alert(3, account="main")]
    await server.chain.publish(produced)
    assert ids(await receive_alerts(main_only, 2)) == ids([produced[0], produced[2]])
    assert ids(await receive_alerts(both, 1)) == ids([produced[1]])
    await main_only.close()
    await both.close()


@pytest.mark.parametrize(
    ("request_fields", "code", "close_code", "message"),
    [
        pytest.param({}, "unauthorized", 4401, "this stream needs a token", id="no-token"),
        pytest.param({"token": "tok-guess-0000"}, "unauthorized", 4401, "unknown token",
                     id="unknown-token"),
        pytest.param({"token": "tok-main-7f3a", "accounts": ["main", "desk"]}, "forbidden",
                     4403, "account 'desk' is outside this token's accounts",
                     id="account-outside-scope"),
    ],
)
async def test_auth_refusals_say_why_and_close(make_server: Any, request_fields: dict[str, Any],
                                               code: str, close_code: int, message: str) -> None:
    server: StreamServer = await make_server(tokens=TOKENS)
    ws, error = await subscribe(server.url, **request_fields)
    assert error == {"event": "error", "code": code, "msg": message}
    with pytest.raises(ConnectionClosed):
        await ws.recv()
    assert ws.close_code == close_code and ws.close_reason == message
    assert server.chain.hub.subscribers == 0


async def test_without_tokens_any_client_may_subscribe(make_server: Any) -> None:
    server: StreamServer = await make_server()
    ws, ack = await subscribe(server.url, token="anything")
    assert ack["event"] == "subscribed"
    await ws.close()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param("subscribe me", "the subscribe request is not JSON", id="not-json"),
        pytest.param('{"op": "unsubscribe"}', 'expected {"op": "subscribe", ...}',
                     id="wrong-op"),
        pytest.param('{"op": "subscribe", "kinds": ["margin_call"]}',
                     "unknown alert kind 'margin_call'", id="unknown-kind"),
        pytest.param('{"op": "subscribe", "min_level": "panic"}', "unknown level 'panic'",
                     id="unknown-level"),
        pytest.param('{"op": "subscribe", "account": "main"}', "unknown field 'account'",
                     id="unknown-field"),
        pytest.param('{"op": "subscribe", "accounts": "main"}',
                     "accounts must be a list of strings", id="accounts-not-a-list"),
        pytest.param('{"op": "subscribe", "since": 42}', "since must be a string",
                     id="since-not-a-string"),
    ],
)
async def test_bad_requests_are_refused_with_the_reason(make_server: Any, raw: str,
                                                        message: str) -> None:
    server: StreamServer = await make_server()
    ws = await connect(server.url)
    await ws.send(raw)
    error, close_code, _ = await refusal(ws)
    assert error["event"] == "error" and error["code"] == "bad_request"
    assert error["msg"].startswith(message)
    assert close_code == 4400


async def test_a_client_that_never_subscribes_is_closed(make_server: Any) -> None:
    server: StreamServer = await make_server(subscribe_timeout_s=0.2)
    ws = await connect(server.url)
    error, close_code, _ = await refusal(ws)
    assert (error["code"], close_code) == ("bad_request", 4400)
    assert "no subscribe request within 0.2 s" in error["msg"]


async def test_since_an_alert_that_is_not_stored_is_refused(make_server: Any) -> None:
    server: StreamServer = await make_server()
    await server.chain.publish([make_alert(1)])
    ws, error = await subscribe(server.url, since="1700000000000-0000000000000000")
    assert error["code"] == "unknown_since"
    with pytest.raises(ConnectionClosed):
        await ws.recv()
    assert ws.close_code == 4404


async def test_heartbeats_keep_a_quiet_stream_alive(make_server: Any) -> None:
    server: StreamServer = await make_server(heartbeat_s=0.1)
    ws, _ = await subscribe(server.url)
    beats = [orjson.loads(await ws.recv()) for _ in range(3)]
    assert all(beat["event"] == "heartbeat" and isinstance(beat["ts"], int) for beat in beats)
    await server.chain.publish([make_alert(1)])
    assert ids(await receive_alerts(ws, 1)) == [make_alert(1).id]
    await ws.close()


async def test_subscribers_are_told_when_riskmon_stops(make_server: Any) -> None:
    server: StreamServer = await make_server()
    ws, _ = await subscribe(server.url)
    await server.chain.publish([make_alert(1), make_alert(2)])
    await server.chain.head.drain_and_close()  # what a SIGTERM does to the sinks
    assert ids(await receive_alerts(ws, 2)) == [make_alert(1).id, make_alert(2).id]
    with pytest.raises(ConnectionClosed):
        await ws.recv()
    assert ws.close_code == 1001


def test_tokens_come_from_the_environment_and_a_missing_one_names_its_variable() -> None:
    tokens = (StreamToken("DESK_TOKEN", ("main",)), StreamToken("OPS_TOKEN", ("main", "desk")))
    assert load_tokens(tokens, {"DESK_TOKEN": "d-1", "OPS_TOKEN": "o-2"}) == {
        "d-1": frozenset({"main"}), "o-2": frozenset({"main", "desk"})}
    with pytest.raises(ConfigError, match="OPS_TOKEN is not set") as error:
        load_tokens(tokens, {"DESK_TOKEN": "d-1"})
    assert "d-1" not in str(error.value)
    assert error.value.key == "stream.tokens[1].token_env"
