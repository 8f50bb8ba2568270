"""The live OKX adapter's parts: signing, credentials, backoff, instrument families, the
inbox, the REST client (against the real replay server), the metrics text, and what the
reader delivers (against a websockets server on loopback)."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from adapters.backoff import backoff_delay
from adapters.okx.auth import Credentials, load_credentials, login_request, rest_headers, sign
from adapters.okx.config import OkxConfig
from adapters.okx.decode import OkxDecoder, mark_price_key
from adapters.okx.live import OkxFeed, instrument_family
from adapters.okx.replay_server import ReplayServer
from adapters.okx.rest import OkxRest
from adapters.recording import RecordingWriter
from monitor.core.errors import BadInput, ConfigError, FeedError
from monitor.core.settings import AccountConfig
from monitor.runtime.feed import FeedItem, Frame, Inbox, LinkChange, RestBody
from monitor.runtime.metrics import Metrics

# The secret the OKX docs use in their examples. The expected signatures were computed
# outside Python, from the documented formula:
#   printf '1538054050GET/users/self/verify' | openssl dgst -sha256 -hmac SECRET -binary | base64
DOC_SECRET = "22582BD0CFF14C41EDBF1AB98506286D"
LOGIN_SIGN = "+LdIr8lkkvhr5hoA3g9TMC0+uQJ849ftAcocA/ouu4M="
REST_SIGN = "YZhzoPmYJFBjWZSpmnhQtt8Hn+AKBMsU1fibj/UndWY="
CREDS = Credentials("key-1", DOC_SECRET, "phrase-1")


def test_login_signature_matches_the_documented_formula() -> None:
    assert sign(DOC_SECRET, "1538054050GET/users/self/verify") == LOGIN_SIGN
    assert login_request(CREDS, 1538054050) == {
        "op": "login",
        "args": [{"apiKey": "key-1", "passphrase": "phrase-1", "timestamp": "1538054050",
                  "sign": LOGIN_SIGN}],
    }


def test_rest_headers_sign_the_iso_timestamp_method_and_path_with_query() -> None:
    now = datetime(2020, 12, 8, 9, 8, 57, 715_000, tzinfo=UTC)
    headers = rest_headers(CREDS, "get", "/api/v5/trade/orders-pending?limit=100", "", now)
    assert headers == {"OK-ACCESS-KEY": "key-1", "OK-ACCESS-SIGN": REST_SIGN,
                       "OK-ACCESS-TIMESTAMP": "2020-12-08T09:08:57.715Z",
                       "OK-ACCESS-PASSPHRASE": "phrase-1"}


def test_credentials_never_show_their_values() -> None:
    assert DOC_SECRET not in repr(CREDS) and "phrase-1" not in str(CREDS)
    assert "key-1" not in f"{CREDS}"


def account(**names: str) -> AccountConfig:
    return AccountConfig(name="main", **names)  # type: ignore[arg-type]


ENV_NAMES = {"api_key_env": "K", "api_secret_env": "S", "passphrase_env": "P"}


def test_credentials_from_the_environment() -> None:
    creds = load_credentials(account(**ENV_NAMES), {"K": "k", "S": "s", "P": "p"})
    assert (creds.api_key, creds.secret, creds.passphrase) == ("k", "s", "p")


def test_a_missing_variable_is_named_and_no_value_is_shown() -> None:
    with pytest.raises(ConfigError) as raised:
        load_credentials(account(**ENV_NAMES), {"K": "k-value", "S": "", "P": "p-value"})
    assert raised.value.key == "accounts.main.api_secret_env"
    assert "S is not set" in raised.value.message
    assert "k-value" not in str(raised.value) and "p-value" not in str(raised.value)
    with pytest.raises(ConfigError, match="api_key_env"):
        load_credentials(account(), {})


def test_credentials_file_must_be_owner_only(tmp_path: Path) -> None:
    file = tmp_path / "okx.toml"
    file.write_text('api_key = "k"\napi_secret = "very-secret"\npassphrase = "p"\n')
    file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600") as raised:
        load_credentials(account(credentials_file=str(file)), {})
    assert raised.value.key == "accounts.main.credentials_file"
    file.chmod(0o600)
    assert load_credentials(account(credentials_file=str(file)), {}).secret == "very-secret"


def test_a_bad_credentials_file_does_not_echo_its_content(tmp_path: Path) -> None:
    file = tmp_path / "okx.toml"
    file.write_text('api_key = "k"\napi_secret = "very-secret\n')
    os.chmod(file, 0o600)
    with pytest.raises(ConfigError) as raised:
        load_credentials(account(credentials_file=str(file)), {})
    assert "very-secret" not in str(raised.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_credentials(account(credentials_file=str(tmp_path / "absent.toml")), {})


def test_backoff_doubles_within_jitter_up_to_the_cap() -> None:
    rng = random.Random(7)
    for failures, cap in [(0, 1.0), (1, 2.0), (2, 4.0), (5, 30.0), (60, 30.0)]:
        for _ in range(50):
            assert cap / 2 <= backoff_delay(failures, 1.0, 30.0, rng) <= cap


@pytest.mark.parametrize(("inst_id", "family"), [
    ("BTC-USDT-SWAP", ("SWAP", "BTC-USDT")),
    ("BTC-USD-250328", ("FUTURES", "BTC-USD")),
    ("BTC-USDT", None),
    ("BTC-USD-250328-50000-C", None),
])
def test_instrument_family(inst_id: str, family: tuple[str, str] | None) -> None:
    assert instrument_family(inst_id) == family


def mark_frame(inst_id: str, n: int) -> Frame:
    return Frame(n, None, f'{{"n":{n}}}', inst_id)


def test_inbox_keeps_everything_in_order_without_pressure() -> None:
    inbox = Inbox(conflate_after=100)
    items: list[FeedItem] = [mark_frame("BTC", 1), mark_frame("BTC", 2),
                             RestBody(3, "a", "/p", {}),
             LinkChange(4, None, True, "up"), mark_frame("ETH", 5)]
    for item in items:
        inbox.put(item)
    assert inbox.take() == items and inbox.conflated == 0 and len(inbox) == 0


def test_inbox_conflates_only_marks_under_pressure() -> None:
    inbox = Inbox(conflate_after=3)
    order_frame = Frame(2, "a", '{"arg":{"channel":"orders"}}')
    items: list[FeedItem] = [mark_frame("BTC", 1), order_frame, mark_frame("ETH", 3),
                 mark_frame("BTC", 4), Frame(5, "a", '{"x":1}'), mark_frame("BTC", 6)]
    for item in items:
        inbox.put(item)
    # BTC 1 and BTC 4 were replaced by the newer BTC mark, which takes the newer place.
    assert inbox.take() == [order_frame, mark_frame("ETH", 3), Frame(5, "a", '{"x":1}'),
                            mark_frame("BTC", 6)]
    assert inbox.conflated == 2


def orders(count: int) -> list[dict[str, str]]:
    return [{"instType": "SWAP", "instId": "BTC-USDT-SWAP", "ordId": str(1000 + n),
             "clOrdId": "", "side": "buy", "ordType": "limit", "px": "100", "sz": "1",
             "accFillSz": "0", "state": "live", "reduceOnly": "false", "lever": "10",
             "tdMode": "cross", "cTime": str(1_700_000_000_000 + n),
             "uTime": str(1_700_000_000_000 + n)} for n in range(count)]


async def test_orders_pending_merges_every_page(tmp_path: Path) -> None:
    recording = tmp_path / "rec.jsonl"
    rows = orders(250)
    body = {"code": "0", "msg": "", "data": rows}
    recording.write_bytes(orjson.dumps(
        {"recv_ts": 1, "account": "main", "rest": "/api/v5/trade/orders-pending", "body": body})
        + b"\n")
    server = ReplayServer(recording, speed=None)
    port = await server.start("127.0.0.1", 0)
    try:
        rest = OkxRest(f"http://127.0.0.1:{port}")
        path, merged = await rest.orders_pending(Credentials("main", "s", "p"))
        assert path == "/api/v5/trade/orders-pending"
        assert sorted(row["ordId"] for row in merged["data"]) == sorted(
            row["ordId"] for row in rows)
        with pytest.raises(FeedError, match="HTTP 404"):
            await rest.get("/api/v5/no/such/path")
    finally:
        await server.close()


async def test_rest_errors_name_the_path_not_the_headers() -> None:
    rest = OkxRest("http://127.0.0.1:9", timeout_s=2)  # port 9: nothing listens
    with pytest.raises(FeedError) as raised:
        await rest.orders_pending(Credentials("key-1", DOC_SECRET, "phrase-1"))
    assert "/api/v5/trade/orders-pending" in str(raised.value)
    assert DOC_SECRET not in str(raised.value) and "phrase-1" not in str(raised.value)
    with pytest.raises(ConfigError, match=r"okx\.rest_url"):
        OkxRest("ftp://example.invalid")


def test_metrics_render_in_prometheus_text_format() -> None:
    metrics = Metrics(frames=12, events=10, alerts_by_kind={"stop_loss": 2},
                      margin_ratio={"main": 1.25, "idle": None},
                      feeds_connected={"public": True, "private:main": False}, started_s=100)
    text = metrics.render(now_s=160)
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert samples["riskmon_frames_total"] == "12"
    assert samples['riskmon_alerts_total{kind="stop_loss"}'] == "2"
    assert samples['riskmon_margin_ratio{account="main"}'] == "1.25"
    assert 'riskmon_margin_ratio{account="idle"}' not in samples
    assert samples['riskmon_feed_connected{feed="private:main"}'] == "0"
    assert samples["riskmon_uptime_seconds"] == "60"
    assert "# TYPE riskmon_events_total counter" in text


# --- reading without parsing: the conflation key from the text, events in the reader --------

BTC_SWAP = "BTC-USDT-SWAP"
# A mark-price push as OKX sends it (docs: "Public Data > WebSocket > Mark price channel").
MARK_PUSH = ('{"arg":{"channel":"mark-price","instId":"BTC-USDT-SWAP"},"data":[{"instType":'
             '"SWAP","instId":"BTC-USDT-SWAP","markPx":"42133.7","ts":"1700000000123"}]}')


def test_the_key_of_a_mark_price_push_is_its_instrument() -> None:
    assert mark_price_key(MARK_PUSH) == BTC_SWAP
    several = MARK_PUSH.replace("}]}", '},{"instId":"BTC-USDT-SWAP","markPx":"1","ts":"2"}]}')
    assert mark_price_key(several) == BTC_SWAP
    # The shape is all that is checked: the decoder rejects bad content later.
    assert mark_price_key('{"arg":{"channel":"mark-price","instId":"X"},"data":[{oops}]}') == "X"


@pytest.mark.parametrize("text", [
    # Keys that would change what the frame is, after or inside the usual ones.
    MARK_PUSH[:-1] + ',"event":"error"}',
    MARK_PUSH[:-1] + ',"event":["x"]}',
    MARK_PUSH[:-1] + ',"arg":{"channel":"orders"}}',
    MARK_PUSH.replace('"instId":"BTC-USDT-SWAP"},', '"instId":"BTC-USDT-SWAP","x":1},', 1),
    MARK_PUSH.replace('"data":[', '"event":"subscribe","data":[', 1),
    # Escapes: an instId with a quote or a backslash, so its end is not the first quote.
    MARK_PUSH.replace('"instId":"BTC-USDT-SWAP"},', '"instId":"BTC\\"},\\"-SWAP"},', 1),
    MARK_PUSH.replace('"instId":"BTC-USDT-SWAP"},', '"instId":"BTC\\u0022-SWAP"},', 1),
    # Arrays inside the data, which could hide the end of the data array.
    MARK_PUSH.replace('"ts":"1700000000123"}]}', '"ts":"1"}],"event":[{"a":"b"}]}'),
    MARK_PUSH.replace('"ts":"1700000000123"}', '"ts":["1"]}'),
    # Other shapes: spaces, another order, another channel, empty or missing pieces.
    MARK_PUSH.replace('"data":[', '"data": [', 1),
    MARK_PUSH.replace("}]}", "}] }"),
    '{"data":[{"instId":"BTC-USDT-SWAP","markPx":"1","ts":"1"}],'
    '"arg":{"channel":"mark-price","instId":"BTC-USDT-SWAP"}}',
    MARK_PUSH.replace("mark-price", "index-tickers"),
    MARK_PUSH.replace('"instId":"BTC-USDT-SWAP"},', '"instId":""},', 1),
    MARK_PUSH[:60],  # truncated
    '{"arg":{"channel":"mark-price","instId":"BTC-USDT-SWAP"}}',
    "pong",
    "",
])
def test_only_a_certain_mark_price_push_has_a_key(text: str) -> None:
    assert mark_price_key(text) is None


_KEYS = st.sampled_from(["arg", "data", "event", "op", "code", "instId"])
_STRINGS = st.sampled_from(["", "x", "]", "[", '"', "\\", "event", '"event"', "}]}",
                            "mark-price", BTC_SWAP, '"},"data":[', "\u00e9"])
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-9, 9) | _STRINGS,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(_KEYS | _STRINGS, children, max_size=3),
    max_leaves=8,
)
_MARK_ARG = {"channel": "mark-price", "instId": BTC_SWAP}
_ARGS = st.sampled_from([
    _MARK_ARG,
    {"channel": "mark-price", "instId": 'B"},"data":['},
    {"channel": "mark-price", "instId": BTC_SWAP, "x": "y"},
    {"instId": BTC_SWAP, "channel": "mark-price"},
    {"channel": "index-tickers", "instId": BTC_SWAP},
]) | _VALUES
_ROWS = st.lists(st.dictionaries(_KEYS | _STRINGS, _STRINGS, max_size=4), max_size=3)


@st.composite
def frame_texts(draw: st.DrawFn) -> str:
    """JSON texts around the mark-price shape: often the shape itself, else keys in any
    order, repeated keys (written by hand, as a dict cannot hold them), values that mimic
    the delimiters, and cuts."""
    usual = draw(st.booleans())
    members = [("arg", _MARK_ARG if usual else draw(_ARGS)),
               ("data", draw(_ROWS if usual else _VALUES))]
    members += draw(st.lists(st.tuples(_KEYS, _VALUES), max_size=2))
    if not usual:
        members = draw(st.permutations(members))
    body = ",".join(orjson.dumps(key).decode() + ":" + orjson.dumps(value).decode()
                    for key, value in members)
    text = "{" + body + "}"
    if draw(st.integers(0, 3)) == 0:
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(["", "]", "}", "]}", "}]}"]))
    return text


@given(frame_texts())
def test_a_key_is_only_given_to_what_parses_as_a_mark_price_push(text: str) -> None:
    key = mark_price_key(text)
    if key is None:
        return
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        return  # not JSON at all: the engine task quarantines it
    # As the decoder will see it: orjson keeps the last of repeated keys.
    assert list(frame) == ["arg", "data"]
    assert frame["arg"] == {"channel": "mark-price", "instId": key}


class NotUtf8Text(bytes):
    """Sent as a text frame although it is not UTF-8."""


Message = str | bytes | list[str]


class PublicServer:
    """A websockets server on loopback that answers the public connection's subscribe
    and then sends ``script`` once: text, bytes for a binary frame, a list of strings for
    a message in fragments, NotUtf8Text for a text frame that is not UTF-8. ``greeting``
    is sent as soon as a connection opens, before the client has sent anything."""

    def __init__(self, script: list[Message], greeting: str | None = None) -> None:
        self.script = script
        self.greeting = greeting
        self.connections = 0
        self.server: Server | None = None

    async def handle(self, connection: ServerConnection) -> None:
        self.connections += 1
        first = self.connections == 1
        if first and self.greeting is not None:
            await connection.send(self.greeting)
        async for message in connection:
            request = orjson.loads(message)
            for arg in request["args"]:
                await connection.send(orjson.dumps(
                    {"event": request["op"], "arg": arg, "connId": "c1"}).decode())
            if first:
                for item in self.script:
                    if isinstance(item, NotUtf8Text):
                        await connection.send(bytes(item), text=True)
                    else:
                        await connection.send(item)

    @staticmethod
    def answer_rest(connection: ServerConnection, request: Request) -> Response | None:
        """The feed's REST loads (instruments, tiers) get an empty answer."""
        if not request.path.startswith("/api/v5/"):
            return None
        body = orjson.dumps({"code": "0", "msg": "", "data": []})
        return Response(200, "OK", Headers([("Content-Type", "application/json"),
                                            ("Content-Length", str(len(body)))]), body)

    async def start(self) -> int:
        self.server = await serve(self.handle, "127.0.0.1", 0, compression=None,
                                  process_request=self.answer_rest)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_the_reader_delivers_text_and_acts_on_events_itself() -> None:
    order_like = ('{"arg":{"channel":"index-tickers","instId":"BTC-USDT"},"data":[{"instId":'
                  '"BTC-USDT","idxPx":"42000.1","ts":"1700000000200","note":"event"}]}')
    mark_with_event = MARK_PUSH[:-1] + ',"event":"x"}'
    garbage = MARK_PUSH[:70]
    eth_push = MARK_PUSH.replace("BTC", "ETH")
    script: list[Message] = [
        MARK_PUSH,
        MARK_PUSH.encode(),  # a binary frame: decoded as UTF-8
        [MARK_PUSH[:50], MARK_PUSH[50:90], MARK_PUSH[90:]],  # in fragments: delivered whole
        order_like,  # "event" in a value: parsed by the reader, and delivered
        mark_with_event,  # an event key beside the data: delivered, never conflated
        garbage,  # not JSON: delivered for quarantine
        NotUtf8Text(b'{"note":"caf\xe9"}'),  # not UTF-8: delivered for quarantine
        b'{"note":"\xff"}',  # the same in a binary frame
        '{"event":"error","code":"60012","msg":"Invalid request","connId":"c1"}',
        "pong",
        '{"event":"notice","code":"64008","msg":"Service upgrade","connId":"c1"}',
    ]
    server = PublicServer(script, greeting=eth_push)
    port = await server.start()
    items: list[FeedItem] = []
    config = OkxConfig(public_url=f"ws://127.0.0.1:{port}/ws/v5/public",
                       rest_url=f"http://127.0.0.1:{port}", backoff_initial_s=30,
                       backoff_max_s=60)
    feed = OkxFeed(config, {}, items.append)
    feed.want([BTC_SWAP], [], [])
    runner = asyncio.create_task(feed.run())
    try:
        # The notice makes the link reconnect at once (despite the 30 s backoff).
        await until(lambda: sum(type(i) is LinkChange and i.connected for i in items) == 2)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await server.close()

    frames = [(i.account, i.text, i.conflate_key) for i in items if isinstance(i, Frame)]
    assert frames == [(None, eth_push, "ETH-USDT-SWAP"),
                      (None, MARK_PUSH, BTC_SWAP), (None, MARK_PUSH, BTC_SWAP),
                      (None, MARK_PUSH, BTC_SWAP),
                      (None, order_like, None), (None, mark_with_event, None),
                      (None, garbage, None),
                      (None, '{"note":"caf\\xe9"}', None), (None, '{"note":"\\xff"}', None)]
    # Bytes that are not UTF-8 are shown as \xNN, which no JSON parser accepts: the engine
    # task quarantines those messages, with the bytes visible.
    for _, text, _ in frames[-2:]:
        with pytest.raises(BadInput):
            OkxDecoder().decode_message(text, None, 1)
    changes = [(i.connected, i.reason) for i in items if isinstance(i, LinkChange)]
    assert changes == [(True, "subscribed"), (False, "notice 64008: Service upgrade"),
                       (True, "subscribed")]
    # The REST loads (instruments at each connect, the family's tiers) are delivered too.
    pushed = [i for i in items if not isinstance(i, RestBody)]
    # The greeting came before the link was open: held, and delivered after the change.
    assert isinstance(pushed[0], LinkChange) and pushed[1] == Frame(pushed[1].recv_ms, None,
                                                                    eth_push, "ETH-USDT-SWAP")
    # The acknowledgements, the error and the pong were handled, not delivered.
    assert len(pushed) == len(frames) + len(changes)


async def test_the_inbox_wakes_its_reader_whenever_items_arrive() -> None:
    inbox = Inbox()
    for round_number in range(3):
        inbox.put(mark_frame("BTC", round_number))
        inbox.put(mark_frame("ETH", round_number))
        await asyncio.wait_for(inbox.wait(), 1)
        assert len(inbox.take()) == 2
    waiter = asyncio.create_task(inbox.wait())
    await asyncio.sleep(0.01)
    assert not waiter.done()  # nothing waiting: the engine task sleeps
    inbox.put(RestBody(9, None, "/p", {}))
    await asyncio.wait_for(waiter, 1)


def test_a_recording_holds_frames_as_json_and_other_text_as_strings(tmp_path: Path) -> None:
    writer = RecordingWriter(tmp_path / "rec.jsonl")
    items: list[FeedItem] = [Frame(1, None, MARK_PUSH, BTC_SWAP), Frame(2, "main", "{oops"),
                             RestBody(3, "main", "/api/v5/trade/orders-pending", {"data": []}),
                             LinkChange(4, None, False, "closed")]
    for item in items:
        writer.write(item)
    writer.close()
    lines = [orjson.loads(line) for line in (tmp_path / "rec.jsonl").read_bytes().splitlines()]
    assert lines == [
        {"recv_ts": 1, "frame": orjson.loads(MARK_PUSH)},
        {"recv_ts": 2, "account": "main", "frame": "{oops"},
        {"recv_ts": 3, "account": "main", "rest": "/api/v5/trade/orders-pending",
         "body": {"data": []}},
    ]
