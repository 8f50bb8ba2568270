"""A Binance USDⓈ-M futures protocol server over a recording, the Binance counterpart of
``adapters/okx/replay_server.py`` (SPEC 3.3, ``riskmon replay-server``).

:class:`ReplayServer` serves a recording (SPEC 3.2) so that the live Binance adapter can be
pointed at it unchanged: the websocket base ``ws://H:P`` (market streams on ``/stream``,
user data on ``/ws/<listenKey>``) and the REST base ``http://H:R`` on a port of its own, as
Binance keeps them on separate hosts. Formats and codes follow the USDⓈ-M futures docs
(https://developers.binance.com/docs/derivatives/usds-margined-futures/: "Websocket Market
Streams", "User Data Streams", "Error Codes").

Websockets (the websocket port):

- ``/stream`` is a combined-stream connection. ``{"method": "SUBSCRIBE" | "UNSUBSCRIBE",
  "params": [names], "id": n}`` answers ``{"result": null, "id": n}``;
  ``LIST_SUBSCRIPTIONS`` answers ``{"result": [names in subscription order], "id": n}``;
  ``/stream?streams=a/b`` subscribes at connect. Anything else (not JSON, not an object, an
  unknown ``method``, ``params`` that are not a non-empty list of non-empty strings, an
  ``id`` that is neither a non-negative integer, a string nor null, more than 1024 streams
  on one connection) answers ``{"error": {"code": 2, "msg": "Invalid request"}, "id": n}``
  (``id`` null when it was not readable) and the connection stays open. Binance's limit of
  incoming messages per second is not enforced.
- ``/ws/<listenKey>`` (one path segment) is the user data of the key's account. An
  unknown, deleted or expired key is refused at the handshake with HTTP 400 ``{"code":
  -1125, "msg": "This listenKey does not exist."}`` (a key that dies during the handshake:
  accepted, then closed with 1008). These connections take no requests: every message
  gets the error above.
- Other paths are refused with HTTP 404. The server pings every 180 s and closes a
  connection that has not answered within 600 s (Binance: "a ping frame every 3 minutes",
  "within a 10 minute period"); client pings are answered by websockets. There is no text
  ping/pong in Binance's protocol.

REST (HTTP/1.1 on the REST port, :mod:`adapters.rest_listener`, on h11: keep-alive, bodies
up to 1 MiB; its own errors in Binance's shape, ``{"code": -1000, "msg"}``). Parameters are
read from the query string, and for POST, PUT and DELETE also from a form-encoded body.

- ``POST /fapi/v1/listenKey`` (header ``X-MBX-APIKEY``) answers ``{"listenKey": K}``: 60
  random alphanumerics, or the account's live key if it has one (Binance: "POST on an
  account with an active listenKey will return the currently active listenKey").
  ``PUT`` (keepalive) answers ``{}`` and ``DELETE`` answers ``{}``, invalidates the key and
  closes its connections (1000); both take the key as ``listenKey`` (query or body), else
  the account's live key, and answer 400 -1125 for a key that is not the account's live
  one (Binance documents no parameter for either; the server takes the spot API's
  ``listenKey`` too). Keys do not lapse after 60 minutes here; only the fault below
  expires them. :attr:`ReplayServer.keepalives` counts each account's accepted ``PUT``
  requests and notes the parameters they carried (the status line ``finished`` shows
  them).
- The API key maps to an account: the recording's account of that name, else its only
  account. A missing or empty ``X-MBX-APIKEY`` is 401 ``-2014 API-key format invalid.``,
  one that maps to no account 401 ``-2015 Invalid API-key, IP, or permissions for
  action.``.
- Signed GETs (USER_DATA: the API key as above, then the ``timestamp`` and ``signature``
  parameters, 400 -1102 "Mandatory parameter '...' was not sent, was empty/null, or
  malformed." when missing, or for a timestamp that is not digits): ``/fapi/v3/account``,
  ``/fapi/v2/account``, ``/fapi/v3/positionRisk``, ``/fapi/v2/positionRisk``,
  ``/fapi/v1/openOrders``, ``/fapi/v1/multiAssetsMargin``, ``/fapi/v1/positionSide/dual``
  and ``/fapi/v1/leverageBracket``. Neither the signature (there is no secret) nor the
  timestamp's distance from the server's clock (``recvWindow``) can be checked.
- Public: ``GET /fapi/v1/exchangeInfo``: the latest body of the whole recording (404
  without one: specs do not change within a recording, and the feed needs them first).
- Another path is 404 ``{"code": -1, "msg"}``; a known path with another method 405.

What a signed GET answers: the account's body of that path *as of the push position*.
REST lines are read as the push position passes them (those just before the next unsent
frame count): the latest body read so far is the answer; before any is read, the first
one recorded for that account; none at all: ``[]`` for positionRisk, openOrders and
leverageBracket, 404 for the others. leverageBracket also takes lines recorded without an
account (brackets are the same for everyone). Recorded error bodies (``{"code", "msg"}``,
which the decoder rejects) and recorded listenKey answers are not served. The query of a
request or a recorded path is ignored except ``symbol`` on the three list paths: a body
recorded for one symbol stands for that symbol only, beside the whole list; a request for
one symbol answers the rows of that symbol from the newest of the whole list and that
symbol's own body (by the rule above), as a list for positionRisk and openOrders and as
the one object for leverageBracket (400 ``-1121 Invalid symbol.`` without one, as Binance
does); a request without ``symbol`` answers the whole list, or, if only per-symbol bodies
were recorded, their rows together by symbol.

The account's state after pushes (the *overlay*). A recorded ``account`` or
``positionRisk`` body served after frames recorded later than it were pushed is no longer
the account's state: the wallets and positions the pushed ``ACCOUNT_UPDATE`` frames changed
replace the body's (``crossWalletBalance`` and ``walletBalance`` from ``cw`` and ``wb``;
``positionAmt``, ``entryPrice``, ``isolatedWallet`` from ``pa``, ``ep``, ``iw``; a position
the body lacks is added), and the exchange's own figures, which move with every mark and
which no margin model here can recompute, are left out: the totals and each asset's
``maintMargin``, ``initialMargin`` and ``marginBalance``, each position's ``maintMargin``,
``initialMargin``, ``unRealizedProfit``, ``liquidationPrice`` and ``markPrice``. A client
then has no exchange figures to compare with until the next recorded body, rather than
stale ones (the daemon's divergence check would report a difference the exchange never
showed).

Pushes. Every data frame of the recording goes, in recorded order, to the connection it
belongs to: market frames (no ``account``) to the latest ``/stream`` connection, user-data
frames of account A to the latest user-data connection of A. A role's connection is
*ready* once it subscribed at least once (market) or once connected (user data). Pushing
starts, and after a disconnect resumes, only when every role the recording needs has a
ready connection, so no frame is lost and none is sent twice, and the cross-connection
order is the recorded one: two consecutive pushes to different connections are at least
``switch_gap_s`` apart. A market frame whose stream its connection has not subscribed
waits up to ``subscribe_grace_s`` for the subscription, then goes anyway; later frames of
that stream then go at once. Frames go out as recorded: the combined-stream envelope
``{"stream", "data"}`` for market frames, the raw event object for user data (a user-data
frame recorded inside an envelope is unwrapped, as ``/ws/<listenKey>`` sends it).

Pace: frame i is due ``(recv_ts_i - recv_ts_first) / speed`` seconds after pushing
started; ``speed=None`` does not pace. Time spent waiting for a connection, a
subscription or a stall shifts the schedule (it is *re-based*), so a reconnect is never
followed by a burst.

Faults (:class:`Faults`, for integration tests), counted in recorded frames pushed: drop
(abort the TCP connection of the next frame, no close frame), garbage (a text frame that is
not JSON before the next frame, on its connection), stall (no pushes and no answers to
websocket requests for ``stall_s``; REST and websockets' own pongs are not held), a clean
close of every websocket connection (``notice_after``: Binance sends no notice before it
cuts a connection, at 24 hours; code 1001), listen-key expiry (``expire_listen_key_after``:
``{"e": "listenKeyExpired", "E", "listenKey"}`` to every user-data connection, whose keys
are then invalid and whose connections are closed with 1000: the client creates a new key
and reconnects), and refused listen-key creation (``fail_logins``). The order faults of
the command line are accepted and ignored (no order simulator here; a warning says so).

The recording is streamed: a first pass in a worker thread counts frames, finds the roles
and accounts, the latest ``exchangeInfo`` and the first body of each REST path; the pump
then reads it again as it pushes. Lines that are not of the SPEC 3.2 shapes are skipped
and counted, the first few logged each and the count once. Recorded operational frames
(answers to the recorder's requests, ``listenKeyExpired``) are not pushed: this server
answers and expires keys for itself. Nothing is logged per pushed frame, and neither API
keys nor listen keys are logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import secrets
import string
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, field, fields
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as serve_websockets
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from adapters.binance.decode import RestPath
from adapters.logging import get_logger
from adapters.replay_common import (
    DropSchedule,
    Pace,
    RecordingError,
    account_for_key,
    check_readable,
    json_response,
    url_host,
    wait_until,
)
from adapters.rest_listener import HttpRequest, HttpResponse, RestListener
from monitor.core.errors import ConfigError, RiskmonError

__all__ = ["LISTEN_KEY_PATH", "MARKET_PATH", "NO_FAULTS", "USER_DATA_PREFIX", "Faults",
           "RecordingError", "ReplayServer", "serve"]

MARKET_PATH: Final = "/stream"
USER_DATA_PREFIX: Final = "/ws/"
LISTEN_KEY_PATH: Final = "/fapi/v1/listenKey"

_SIGNED_PATHS: Final = frozenset({
    RestPath.ACCOUNT, RestPath.ACCOUNT_V2, RestPath.POSITION_RISK, RestPath.POSITION_RISK_V2,
    RestPath.OPEN_ORDERS, RestPath.MULTI_ASSETS, RestPath.POSITION_MODE,
    RestPath.LEVERAGE_BRACKET,
})
# Paths answered with a list, filtered by ``symbol``, and ``[]`` when nothing is recorded.
_LIST_PATHS: Final = frozenset({RestPath.POSITION_RISK, RestPath.POSITION_RISK_V2,
                                RestPath.OPEN_ORDERS, RestPath.LEVERAGE_BRACKET})
# Recorded without an account: served (exchangeInfo to anyone, brackets to every account).
_PUBLIC_PATHS: Final = frozenset({RestPath.EXCHANGE_INFO, RestPath.LEVERAGE_BRACKET})
_REST_METHODS: Final[dict[str, frozenset[str]]] = {
    LISTEN_KEY_PATH: frozenset({"POST", "PUT", "DELETE"}),
    RestPath.EXCHANGE_INFO: frozenset({"GET"}),
    **dict.fromkeys(_SIGNED_PATHS, frozenset({"GET"})),
}
_API_KEY_HEADER: Final = "x-mbx-apikey"

# docs "Error Codes".
_KEY_FORMAT: Final = (HTTPStatus.UNAUTHORIZED, {"code": -2014, "msg": "API-key format invalid."})
_KEY_REFUSED: Final = (HTTPStatus.UNAUTHORIZED, {
    "code": -2015, "msg": "Invalid API-key, IP, or permissions for action."})
_NO_LISTEN_KEY: Final = (HTTPStatus.BAD_REQUEST, {"code": -1125,
                                                  "msg": "This listenKey does not exist."})
_INVALID_SYMBOL: Final = (HTTPStatus.BAD_REQUEST, {"code": -1121, "msg": "Invalid symbol."})
_INVALID_REQUEST: Final = {"code": 2, "msg": "Invalid request"}  # websocket requests

_LISTEN_KEY_ALPHABET: Final = string.ascii_letters + string.digits
_LISTEN_KEY_LENGTH: Final = 60
_MAX_STREAMS: Final = 1024  # docs "Websocket Market Streams": streams per connection
_PING_INTERVAL_S: Final = 180.0
_PING_TIMEOUT_S: Final = 600.0
_GARBAGE: Final = "riskmon replay-server: a frame that is not JSON {"
_YIELD_EVERY_S: Final = 0.0005  # the push loop lets other tasks run at least this often
_READ_CHUNK_BYTES: Final = 1 << 20
_LOGGED_SKIPS: Final = 20
_SHOWN_PATH_CHARS: Final = 200


@dataclass(frozen=True, slots=True)
class Faults:
    """Faults to inject, all off by default; counts are of recorded frames pushed.

    - ``drop_after=N``: after every N frames, up to ``drop_times`` times, abort the TCP
      connection (no close frame) the next frame is destined for.
    - ``garbage_after=N``: once, send a text frame that is not JSON to the connection of the
      next frame, before it.
    - ``stall_after=N``: once, push nothing and answer no websocket request for
      ``stall_s`` seconds (requests are answered afterwards).
    - ``fail_logins=N``: the first N ``POST /fapi/v1/listenKey`` with an API key answer 401
      -2015, whatever the key.
    - ``notice_after=N``: once, close every websocket connection (1001, going away);
      pushing waits for new connections.
    - ``expire_listen_key_after=N``: once, push ``listenKeyExpired`` to every user-data
      connection, invalidate their listen keys and close them (1000); pushing waits for
      connections on new keys.
    - ``reject_orders`` to ``read_only_keys``: the order faults of the command line,
      accepted so that one set of options serves every venue, and ignored.

    Raises:
        ConfigError: a count is not a non-negative integer (``drop_after`` must be
            positive), a duration is negative or not finite, ``partial_fill_ratio`` is
            outside [0, 1], ``reject_code`` or ``reject_message`` is not a string or an
            integer, or ``read_only_keys`` is not a collection of strings; the key is the
            field name.
    """

    drop_after: int | None = None
    drop_times: int = 1
    garbage_after: int | None = None
    stall_after: int | None = None
    stall_s: float = 40.0
    fail_logins: int = 0
    notice_after: int | None = None
    expire_listen_key_after: int | None = None
    reject_orders: int = 0
    reject_code: str | int = "-2019"
    reject_message: str = "Margin is insufficient."
    rate_limit_requests: int = 0
    timeout_requests: int = 0
    order_timeout_s: float = 30.0
    partial_fills: int = 0
    partial_fill_ratio: float = 0.5
    delay_fills: int = 0
    fill_delay_s: float = 5.0
    read_only_keys: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None or item.name in _SPECIAL_FAULT_FIELDS:
                continue
            if item.name.endswith("_s"):
                if type(value) not in (int, float) or not 0 <= value < math.inf:
                    raise ConfigError(item.name, "must be a non-negative number of seconds")
            elif type(value) is not int or value < 0:
                raise ConfigError(item.name, "must be a non-negative integer")
        if self.drop_after == 0:
            raise ConfigError("drop_after", "must be a positive integer")
        if type(self.partial_fill_ratio) not in (int, float) or not (
                0 <= self.partial_fill_ratio <= 1):
            raise ConfigError("partial_fill_ratio", "must be a number in [0, 1]")
        for name in ("reject_code", "reject_message"):
            if type(getattr(self, name)) not in (str, int):
                raise ConfigError(name, "must be a string")
        keys = self.read_only_keys
        if not isinstance(keys, set | frozenset | list | tuple) or not all(
                type(key) is str for key in keys):
            raise ConfigError("read_only_keys", "must be a collection of API keys")
        object.__setattr__(self, "read_only_keys", frozenset(keys))

    def ignored(self) -> list[str]:
        """The order faults asked for, which this server does not simulate."""
        return [item.name for item in fields(self) if item.name in _ORDER_FAULT_FIELDS
                and getattr(self, item.name) != item.default]


_SPECIAL_FAULT_FIELDS: Final = frozenset(
    {"reject_code", "reject_message", "partial_fill_ratio", "read_only_keys"})
_ORDER_FAULT_FIELDS: Final = frozenset(
    {"reject_orders", "rate_limit_requests", "timeout_requests", "partial_fills",
     "delay_fills", "read_only_keys"})

NO_FAULTS: Final = Faults()


# --- recording lines (pure) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _FrameLine:
    """A data frame of the recording, to be pushed."""

    line_number: int
    recv_ms: int
    account: str | None  # None: a market frame
    stream: str | None  # a market frame's stream name
    payload: bytes  # the frame as it goes out


@dataclass(frozen=True, slots=True)
class _RestLine:
    """A recorded REST response this server serves."""

    line_number: int
    account: str | None
    path: str
    symbol: str | None  # the ``symbol`` of its query, on the list paths
    body: Any


@dataclass(frozen=True, slots=True)
class _Skipped:
    """A line that is not of the SPEC 3.2 shapes."""

    line_number: int
    reason: str


_Line = _FrameLine | _RestLine | _Skipped | None


def _encoded(value: Any) -> bytes | None:
    """``value`` as JSON, or None when it cannot be written: orjson reads JSON nested up to
    1024 deep but writes at most 255 deep, so such a line is skipped when read, rather than
    left to fail its push."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return None


_UNSERVABLE: Final = "nested too deep to be sent again as JSON"


def _is_answer(frame: dict[str, Any]) -> bool:
    """An answer to a websocket request the recorder made (``{"result", "id"}``, or an
    ``error``), not data."""
    return "id" in frame and ("result" in frame or "error" in frame)


def _is_error_body(body: Any) -> bool:
    """A Binance error answer, ``{"code": -2015, "msg": "..."}`` (the decoder's test)."""
    return type(body) is dict and "code" in body and "msg" in body and len(body) <= 3


def _classify(raw: bytes, line_number: int) -> _Line:
    """What one recording line is; None for a blank line, an operational frame, or a REST
    response this server does not serve."""
    if not raw.strip():
        return None
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        return _Skipped(line_number, f"not valid JSON ({error})")
    if type(record) is not dict:
        return _Skipped(line_number, "not a JSON object")
    recv_ms = record.get("recv_ts")
    if type(recv_ms) is not int or recv_ms < 0:
        return _Skipped(line_number, "no millisecond recv_ts")
    account = record.get("account")
    if account is not None and (type(account) is not str or not account):
        return _Skipped(line_number, "account is not a name")
    if "frame" in record:
        if account is None:
            return _market_frame(record["frame"], recv_ms, line_number)
        return _user_frame(record["frame"], account, recv_ms, line_number)
    if "rest" in record:
        return _rest_line(record, account, line_number)
    return _Skipped(line_number, "neither a frame nor a rest response")


def _market_frame(frame: Any, recv_ms: int, line_number: int) -> _FrameLine | _Skipped | None:
    if type(frame) is not dict:
        return _Skipped(line_number, "market frame is not an object")
    if "stream" not in frame:
        if _is_answer(frame):
            return None
        return _Skipped(line_number, "market frame without the combined-stream envelope "
                                     "{stream, data}")
    stream = frame["stream"]
    if type(stream) is not str or not stream:
        return _Skipped(line_number, "market frame stream is not a name")
    if "data" not in frame:
        return _Skipped(line_number, "market frame has no data")
    payload = _encoded(frame)
    if payload is None:
        return _Skipped(line_number, _UNSERVABLE)
    return _FrameLine(line_number, recv_ms, None, stream, payload)


def _user_frame(frame: Any, account: str, recv_ms: int,
                line_number: int) -> _FrameLine | _Skipped | None:
    if type(frame) is dict and "stream" in frame and type(frame.get("data")) is dict:
        frame = frame["data"]  # recorded on a combined stream: /ws/<listenKey> sends it bare
    if type(frame) is not dict:
        return _Skipped(line_number, "user-data frame is not an object")
    kind = frame.get("e")
    if type(kind) is not str or not kind:
        if _is_answer(frame):
            return None
        return _Skipped(line_number, "user-data frame has no event type (e)")
    if kind == "listenKeyExpired":
        return None  # this server expires its own keys (Faults.expire_listen_key_after)
    payload = _encoded(frame)
    if payload is None:
        return _Skipped(line_number, _UNSERVABLE)
    return _FrameLine(line_number, recv_ms, account, None, payload)


def _rest_line(record: dict[str, Any], account: str | None,
               line_number: int) -> _RestLine | _Skipped | None:
    target = record["rest"]
    if type(target) is not str or not target.startswith("/"):
        return _Skipped(line_number, "rest is not a request path")
    if "body" not in record:
        return _Skipped(line_number, "rest response without a body")
    try:
        split = urlsplit(target)
    except ValueError:  # "Invalid IPv6 URL", for one
        return _Skipped(line_number, "rest is not a request path")
    path = split.path
    if path not in _SIGNED_PATHS and path != RestPath.EXCHANGE_INFO:
        return None  # not served (listenKey answers included: keys are this server's)
    if account is None and path not in _PUBLIC_PATHS:
        return _Skipped(line_number, f"{path} response without an account")
    body = record["body"]
    if _is_error_body(body):
        return None  # the live feed retried it; what followed counts
    if _encoded(body) is None:
        return _Skipped(line_number, _UNSERVABLE)
    return _RestLine(line_number, account, path,
                     _symbol_of(path, dict(parse_qsl(split.query))), body)


def _symbol_of(path: str, params: dict[str, str]) -> str | None:
    """The ``symbol`` a request or a recorded body is for (None: all), on the list paths."""
    if path not in _LIST_PATHS:
        return None
    return params.get("symbol") or None


# --- REST bodies as of the push position (pure) --------------------------------------------


@dataclass(frozen=True, slots=True)
class _Body:
    line_number: int
    body: Any
    read: bool  # read by the pump; False: the first one recorded, not reached yet


@dataclass
class _PathBodies:
    """One owner's (an account's, or nobody's) bodies of one path: the whole list, and the
    bodies recorded for one ``symbol``."""

    whole: _Body | None = None
    by_symbol: dict[str, _Body] = field(default_factory=dict)

    def note(self, symbol: str | None, body: _Body) -> None:
        if symbol is None:
            self.whole = body
        else:
            self.by_symbol[symbol] = body

    def seed(self, symbol: str | None, body: _Body) -> None:
        """The first body recorded (for the time before the pump reads any)."""
        if symbol is None:
            if self.whole is None:
                self.whole = body
        else:
            self.by_symbol.setdefault(symbol, body)


_Owner = tuple[str | None, str]  # (account or None for a public line, path)


def _chosen(bodies: Iterable[_Body | None]) -> _Body | None:
    """The newest body read so far; if none is read yet, the first one recorded."""
    present = [body for body in bodies if body is not None]
    read = [body for body in present if body.read]
    if read:
        return max(read, key=lambda body: body.line_number)
    return min(present, key=lambda body: body.line_number) if present else None


def _rows(body: Any) -> list[Any]:
    return body if type(body) is list else [body]


def _symbol_rows(body: Any, symbol: str) -> list[Any]:
    return [row for row in _rows(body) if type(row) is dict and row.get("symbol") == symbol]


# The answers the overlay applies to (see the module docstring).
_STATE_PATHS: Final = frozenset({RestPath.ACCOUNT, RestPath.ACCOUNT_V2, RestPath.POSITION_RISK,
                                 RestPath.POSITION_RISK_V2})
_ACCOUNT_FIGURES: Final = frozenset({
    "totalInitialMargin", "totalMaintMargin", "totalMarginBalance", "totalUnrealizedProfit",
    "totalPositionInitialMargin", "totalOpenOrderInitialMargin", "totalCrossUnPnl",
    "availableBalance", "maxWithdrawAmount"})
_ASSET_FIGURES: Final = frozenset({
    "unrealizedProfit", "marginBalance", "maintMargin", "initialMargin",
    "positionInitialMargin", "openOrderInitialMargin", "crossUnPnl", "availableBalance",
    "maxWithdrawAmount"})
_POSITION_FIGURES: Final = frozenset({
    "maintMargin", "initialMargin", "unRealizedProfit", "liquidationPrice", "markPrice",
    "breakEvenPrice", "isolatedMargin"})


@dataclass
class _Overlay:
    """What an account's pushed ``ACCOUNT_UPDATE`` frames changed: wallets by asset,
    positions by (symbol, positionSide)."""

    wallets: dict[str, tuple[str, str]] = field(default_factory=dict)  # asset: (wb, cw)
    positions: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def note(self, payload: bytes) -> None:
        if b'"ACCOUNT_UPDATE"' not in payload:
            return
        frame = orjson.loads(payload)
        data = frame.get("a") if type(frame) is dict else None
        if type(data) is not dict:
            return
        for row in data.get("B") or ():
            if type(row) is dict and type(row.get("a")) is str:
                self.wallets[row["a"]] = (str(row.get("wb", "0")), str(row.get("cw", "0")))
        for row in data.get("P") or ():
            if type(row) is dict and type(row.get("s")) is str:
                self.positions[(row["s"], str(row.get("ps", "BOTH")))] = row

    def apply(self, path: str, body: Any) -> Any:
        """``body`` as of the pushes, without the exchange's figures."""
        if path in (RestPath.ACCOUNT, RestPath.ACCOUNT_V2) and type(body) is dict:
            answer = {key: value for key, value in body.items() if key not in _ACCOUNT_FIGURES}
            assets = []
            seen = set()
            for row in body.get("assets") or ():
                if type(row) is not dict:
                    continue
                row = {key: value for key, value in row.items() if key not in _ASSET_FIGURES}
                wallet = self.wallets.get(row.get("asset"))  # type: ignore[arg-type]
                if wallet is not None:
                    row["walletBalance"], row["crossWalletBalance"] = wallet
                seen.add(row.get("asset"))
                assets.append(row)
            assets += [{"asset": asset, "walletBalance": wb, "crossWalletBalance": cw}
                       for asset, (wb, cw) in self.wallets.items() if asset not in seen]
            answer["assets"] = assets
            return answer
        if path in (RestPath.POSITION_RISK, RestPath.POSITION_RISK_V2) and type(body) is list:
            rows = []
            seen_keys = set()
            for row in body:
                if type(row) is not dict:
                    continue
                key = (str(row.get("symbol")), str(row.get("positionSide", "BOTH")))
                seen_keys.add(key)
                row = {k: v for k, v in row.items() if k not in _POSITION_FIGURES}
                pushed = self.positions.get(key)
                if pushed is not None:
                    row["positionAmt"] = pushed.get("pa", row.get("positionAmt"))
                    row["entryPrice"] = pushed.get("ep", row.get("entryPrice"))
                    row["isolatedWallet"] = pushed.get("iw", row.get("isolatedWallet"))
                rows.append(row)
            for (symbol, side), pushed in self.positions.items():
                if (symbol, side) not in seen_keys:
                    rows.append({"symbol": symbol, "positionSide": side,
                                 "positionAmt": pushed.get("pa", "0"),
                                 "entryPrice": pushed.get("ep", "0"),
                                 "isolatedWallet": pushed.get("iw", "0"),
                                 "notional": "0", "updateTime": 0})
            return rows
        return body


def _rest_answer(bodies: dict[_Owner, _PathBodies], owners: tuple[str | None, ...],
                 path: str, symbol: str | None) -> tuple[HTTPStatus, Any]:
    """A signed GET's answer from the bodies of its owners (see the module docstring)."""
    held = [bodies[(owner, path)] for owner in owners if (owner, path) in bodies]
    listed = path in _LIST_PATHS
    if listed and symbol is not None:
        best = _chosen([*(item.whole for item in held),
                        *(item.by_symbol.get(symbol) for item in held)])
        rows = [] if best is None else _symbol_rows(best.body, symbol)
        if path == RestPath.LEVERAGE_BRACKET:
            return (HTTPStatus.OK, rows[0]) if rows else _INVALID_SYMBOL
        return HTTPStatus.OK, rows
    whole = _chosen(item.whole for item in held)
    if whole is not None:
        return HTTPStatus.OK, whole.body
    if not listed:
        return HTTPStatus.NOT_FOUND, {"code": -1, "msg": f"No {path} response recorded for "
                                                         f"this account"}
    symbols = sorted({name for item in held for name in item.by_symbol})
    rows = []
    for name in symbols:
        best = _chosen(item.by_symbol.get(name) for item in held)
        if best is not None:
            rows.extend(_symbol_rows(best.body, name))
    return HTTPStatus.OK, rows


# --- the first pass ------------------------------------------------------------------------


@dataclass
class _Scan:
    """What the first pass learnt about the recording."""

    frames: int = 0
    skipped: int = 0
    shown_skips: list[_Skipped] = field(default_factory=list)
    needs_market: bool = False
    needed_accounts: set[str] = field(default_factory=set)  # accounts with user-data frames
    accounts: set[str] = field(default_factory=set)  # every account named
    exchange_info: _Body | None = None  # the latest of the recording
    first_bodies: dict[_Owner, _PathBodies] = field(default_factory=dict)


def _scan(path: Path) -> _Scan:
    """Read the whole recording once (in a worker thread), keeping only its outline."""
    scan = _Scan()
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            line = _classify(raw, line_number)
            match line:
                case _FrameLine(account=None):
                    scan.frames += 1
                    scan.needs_market = True
                case _FrameLine(account=str(account)):
                    scan.frames += 1
                    scan.needed_accounts.add(account)
                    scan.accounts.add(account)
                case _RestLine(path=RestPath.EXCHANGE_INFO, account=account, body=body):
                    if account is not None:
                        scan.accounts.add(account)
                    scan.exchange_info = _Body(line_number, body, True)
                case _RestLine(account=account, path=rest_path, symbol=symbol, body=body):
                    if account is not None:
                        scan.accounts.add(account)
                    owner = scan.first_bodies.setdefault((account, rest_path), _PathBodies())
                    owner.seed(symbol, _Body(line_number, body, False))
                case _Skipped():
                    scan.skipped += 1
                    if len(scan.shown_skips) < _LOGGED_SKIPS:
                        scan.shown_skips.append(line)
                case None:
                    pass
    return scan


# --- websocket replies (pure) --------------------------------------------------------------


def _request_id(request: dict[str, Any]) -> tuple[bool, Any]:
    """Whether the request's ``id`` is usable, and the id to echo (None: null)."""
    request_id = request.get("id")
    if request_id is None or type(request_id) is str or (
            type(request_id) is int and request_id >= 0):
        return True, request_id
    return False, None


def _stream_names(params: Any) -> list[str] | None:
    if type(params) is not list or not params or not all(
            type(name) is str and name for name in params):
        return None
    return params


def _listener_error(status: HTTPStatus, message: str) -> HttpResponse:
    """The REST listener's own errors (400, 413, 431, 500) in Binance's shape: -1000 is
    Binance's "An unknown error occurred while processing the request"."""
    return HttpResponse(status.value, orjson.dumps({"code": -1000, "msg": message}))


def _missing_parameter(name: str) -> tuple[HTTPStatus, Any]:
    return HTTPStatus.BAD_REQUEST, {
        "code": -1102,
        "msg": f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."}


def _new_listen_key() -> str:
    return "".join(secrets.choice(_LISTEN_KEY_ALPHABET) for _ in range(_LISTEN_KEY_LENGTH))


# --- the server ----------------------------------------------------------------------------


@dataclass(eq=False)
class _Connection:
    """One websocket connection: a market one (``account`` None) or a user-data one."""

    websocket: ServerConnection
    conn_id: int
    account: str | None
    listen_key: str | None = None
    streams: dict[str, None] = field(default_factory=dict)  # subscribed, in order
    ready_seq: int | None = None  # set once pushes may come: the latest ready one is used
    alive: bool = True
    retiring: bool = False  # being closed by the server: no more pushes
    unwanted: set[str] = field(default_factory=set)  # pushed after the grace, unsubscribed


class ReplayServer:
    """Serves one recording over Binance USDⓈ-M futures' websocket and REST protocols.

    ``speed`` paces the pushes at N times the recorded pace (None: as fast as the clients
    take them); ``switch_gap_s`` is the least time between two pushes to different
    connections; ``subscribe_grace_s`` how long a market frame waits for its stream to be
    subscribed; ``max_body_bytes`` bounds a REST request's body. See the module docstring
    for the protocol.

    Raises:
        RecordingError: the recording is missing or unreadable.
        ConfigError: ``speed`` is not positive, or a duration is negative.
    """

    def __init__(self, recording: Path, *, speed: float | None = 1.0,
                 faults: Faults | None = None, switch_gap_s: float = 0.01,
                 subscribe_grace_s: float = 5.0, max_body_bytes: int = 1 << 20) -> None:
        if speed is not None and not 0 < speed < math.inf:
            raise ConfigError("speed", "must be a positive number (None: no pacing)")
        for name, value in (("switch_gap_s", switch_gap_s),
                            ("subscribe_grace_s", subscribe_grace_s)):
            if not 0 <= value < math.inf:
                raise ConfigError(name, "must be a non-negative number of seconds")
        check_readable(recording)
        self._recording = recording
        self._speed = speed
        self._faults = faults if faults is not None else NO_FAULTS
        self._switch_gap_s = switch_gap_s
        self._grace_s = subscribe_grace_s
        self._log = get_logger("riskmon.replay_server")
        self._scan = _Scan()
        self._server: Server | None = None
        self._rest_listener = RestListener(self._serve_rest, max_body_bytes=max_body_bytes,
                                           error=_listener_error)
        self._rest_port: int | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._finished: asyncio.Future[int] | None = None
        self._connections: list[_Connection] = []
        self._conn_ids = itertools.count(1)
        self._ready_seq = itertools.count(1)
        # One waiter (the pump) wakes on any change of connections or subscriptions.
        self._changed = asyncio.Event()
        self._roles: dict[str | None, _Connection] | None = None  # see _find_roles
        self._roles_ready = False
        self._awake = asyncio.Event()  # cleared during a stall
        self._awake.set()
        self._positioned = asyncio.Event()  # REST lines before the first frame are read
        self._bodies: dict[_Owner, _PathBodies] = {}
        # Live listen keys: key -> account, and each account's one key.
        self._listen_keys: dict[str, str] = {}
        self._account_keys: dict[str, str] = {}
        self._key_requests = 0  # POST listenKey with an API key (fail_logins)
        self._keepalives: dict[str, int] = {}
        self._keepalive_parameters: set[str] = set()
        self._pushed = 0
        self._pushed_line = 0  # the line number of the latest frame pushed
        self._overlays: dict[str, _Overlay] = {}
        self._first_recv_ms: int | None = None
        self._last_recv_ms: int | None = None  # of the latest frame pushed
        self._last_target: _Connection | None = None
        self._last_push_at = 0.0
        self._yielded_at = 0.0
        self._drops = DropSchedule(self._faults.drop_after, self._faults.drop_times)
        self._garbage_sent = False
        self._stall_armed = False
        self._stall_pending = False
        self._closed_all = False
        self._keys_expired = False
        self._logged_unwanted: set[str] = set()

    # -- public API ------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0, rest_port: int = 0) -> int:
        """Scan the recording, start listening and pushing; return the bound websocket port.

        ``rest_port`` is the REST listener's (:attr:`rest_port` once bound). With port 0 the
        system picks a free port. Give an address rather than a name that resolves to
        several (``localhost``): each family would get its own port.
        """
        if self._server is not None:
            raise RuntimeError("the replay server is already started")
        try:
            self._scan = await asyncio.to_thread(_scan, self._recording)
        except OSError as error:
            raise RecordingError(self._recording, f"cannot be read ({error})") from error
        self._bodies = self._scan.first_bodies
        self._roles = None
        for skipped in self._scan.shown_skips:
            self._log.warning("replay_line_skipped", source=f"{self._recording}:"
                              f"{skipped.line_number}", reason=skipped.reason)
        self._log.info("replay_recording_scanned", file=str(self._recording),
                       frames=self._scan.frames, skipped=self._scan.skipped,
                       needs_market=self._scan.needs_market,
                       accounts=sorted(self._scan.accounts))
        ignored = self._faults.ignored()
        if ignored:
            self._log.warning("replay_faults_ignored", faults=ignored,
                              reason="no order simulator on this venue")
        try:
            self._server = await serve_websockets(
                self._handle, host, port, process_request=self._process_request,
                ping_interval=_PING_INTERVAL_S, ping_timeout=_PING_TIMEOUT_S)
        except OSError as error:
            raise RiskmonError(f"cannot listen on {host}:{port} ({error.strerror})") from error
        try:
            self._rest_port = await self._rest_listener.start(host, rest_port)
        except RiskmonError:
            self._server.close()
            await self._server.wait_closed()
            raise
        self._finished = asyncio.get_running_loop().create_future()
        bound: int = self._server.sockets[0].getsockname()[1]
        self._pump_task = asyncio.create_task(self._pump(), name="binance-replay-pump")
        self._log.info("replay_server_listening", venue="binance", host=host, port=bound,
                       rest_port=self._rest_port)
        return bound

    async def wait_finished(self) -> int:
        """Wait until the last frame was pushed; return the number of frames pushed."""
        if self._finished is None:
            raise RuntimeError("the replay server is not started")
        return await asyncio.shield(self._finished)

    @property
    def frames_pushed(self) -> int:
        """Recorded frames pushed so far (faults' frames not counted)."""
        return self._pushed

    @property
    def lines_skipped(self) -> int:
        """Recording lines that are not of the SPEC 3.2 shapes."""
        return self._scan.skipped

    @property
    def keepalives(self) -> dict[str, Any]:
        """``{"accounts": {account: accepted PUT keepalives}, "parameters": [the names
        of the parameters they carried]}``."""
        return {"accounts": dict(self._keepalives),
                "parameters": sorted(self._keepalive_parameters)}

    @property
    def rest_port(self) -> int | None:
        """The REST listener's port (None before :meth:`start`)."""
        return self._rest_port

    async def close(self) -> None:
        """Stop pushing, close every connection and stop listening."""
        tasks = [*self._background]
        if self._pump_task is not None:
            tasks.append(self._pump_task)
        for task in tasks:
            task.cancel()
        self._awake.set()  # handlers held by a stall must be able to finish
        self._positioned.set()
        if self._finished is not None and not self._finished.done():
            self._finished.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._rest_listener.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # -- the pump: recorded frames out, in order -------------------------------------------

    async def _pump(self) -> None:
        assert self._finished is not None
        try:
            pushed = await self._push_all()
        except Exception as error:
            self._log.error("replay_failed", error=str(error), frames=self._pushed)
            self._finished.set_exception(error)
        else:
            self._log.info("replay_finished", frames=pushed)
            self._finished.set_result(pushed)

    async def _push_all(self) -> int:
        lines = self._read_frames()
        try:
            first = await anext(lines, None)
            self._positioned.set()
            if first is None:
                return 0
            self._first_recv_ms = first.recv_ms
            await wait_until(self._changed, self._all_ready)
            self._log.info("replay_started", speed=self._speed)
            pace = Pace(self._speed, first.recv_ms, time.monotonic())
            self._arm_stall()
            line: _FrameLine | None = first
            while line is not None:
                await self._push(line, pace)
                line = await anext(lines, None)
        finally:
            self._positioned.set()  # never leave a REST request waiting
            await lines.aclose()
        return self._pushed

    async def _read_frames(self) -> AsyncGenerator[_FrameLine, None]:
        """The recording's data frames, in order; REST lines are noted as they pass."""
        # Opened here, not in a worker thread: a cancellation (close()) while a thread opens
        # the file would leave nobody to close it. Reads, the slow part, go to a thread.
        handle = self._recording.open("rb")
        try:
            line_number = 0
            while chunk := await asyncio.to_thread(handle.readlines, _READ_CHUNK_BYTES):
                for raw in chunk:
                    line_number += 1
                    line = _classify(raw, line_number)
                    if isinstance(line, _FrameLine):
                        yield line
                    elif isinstance(line, _RestLine) and line.path != RestPath.EXCHANGE_INFO:
                        owner = self._bodies.setdefault((line.account, line.path),
                                                        _PathBodies())
                        owner.note(line.symbol, _Body(line.line_number, line.body, True))
        finally:
            handle.close()

    async def _push(self, line: _FrameLine, pace: Pace) -> None:
        """Push one frame to its connection, waiting for whatever it needs first."""
        grace: tuple[_Connection, float] | None = None
        while True:
            if self._stall_pending:
                await self._stall()
                pace.rebase(line.recv_ms, time.monotonic())
            if not self._all_ready():
                self._log.info("replay_paused", frames=self._pushed)
                await wait_until(self._changed, self._all_ready)
                self._log.info("replay_resumed", frames=self._pushed)
                pace.rebase(line.recv_ms, time.monotonic())
            # These two act on the connections of every role, so only once all are there.
            if self._faults.notice_after == self._pushed and not self._closed_all:
                self._close_everything()
                continue
            if self._faults.expire_listen_key_after == self._pushed and not self._keys_expired:
                await self._expire_listen_keys()
                continue
            target = self._target(line.account)
            assert target is not None  # all ready
            if self._drops.take(self._pushed):
                self._abort(target)
                continue
            delay = pace.delay(line.recv_ms, time.monotonic())
            if delay > 0:
                await asyncio.sleep(delay)
                self._yielded_at = time.monotonic()
                continue  # the target may be gone by now: check everything again
            stream = line.stream
            if stream is not None and stream not in target.streams and (
                    stream not in target.unwanted):
                if grace is None or grace[0] is not target:
                    grace = (target, time.monotonic() + self._grace_s)
                remaining = grace[1] - time.monotonic()
                if remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(remaining):
                            await wait_until(self._changed,
                                             self._subscribed_or_moved(target, stream))
                    pace.rebase(line.recv_ms, time.monotonic())
                    continue
                target.unwanted.add(stream)
                if stream not in self._logged_unwanted:
                    self._logged_unwanted.add(stream)
                    self._log.warning("replay_push_unsubscribed", conn_id=target.conn_id,
                                      stream=stream, grace_s=self._grace_s)
            if self._last_target is not None and self._last_target is not target:
                gap = self._last_push_at + self._switch_gap_s - time.monotonic()
                if gap > 0:
                    await asyncio.sleep(gap)
                    continue
            try:
                if self._faults.garbage_after == self._pushed and not self._garbage_sent:
                    self._garbage_sent = True
                    self._log.warning("replay_fault", fault="garbage", conn_id=target.conn_id,
                                      frames=self._pushed)
                    await target.websocket.send(_GARBAGE)
                await target.websocket.send(line.payload, text=True)
            except ConnectionClosed:
                target.alive = False
                self._note_change()
                continue
            break
        self._pushed += 1
        self._pushed_line = line.line_number
        if line.account is not None:
            self._overlays.setdefault(line.account, _Overlay()).note(line.payload)
        self._last_recv_ms = line.recv_ms
        self._last_target = target
        self._last_push_at = now = time.monotonic()
        self._arm_stall()
        if now - self._yielded_at > _YIELD_EVERY_S:
            # Behind the recording's pace no push waits, and a send into a buffer with room
            # does not yield: without this, REST and requests would wait for the pump.
            await asyncio.sleep(0)
            self._yielded_at = time.monotonic()

    def _subscribed_or_moved(self, target: _Connection, stream: str) -> Callable[[], bool]:
        """Whether ``target`` subscribed ``stream``, or is no longer the market target."""
        return lambda: self._target(None) is not target or stream in target.streams

    def _note_change(self) -> None:
        """A connection changed (connected, subscribed, retiring, gone): the roles are
        worked out again when next needed, and whoever waits for a change looks again."""
        self._roles = None
        self._changed.set()

    def _all_ready(self) -> bool:
        """Whether every role the recording needs has a ready connection."""
        if self._roles is None:
            self._find_roles()
        return self._roles_ready

    def _target(self, account: str | None) -> _Connection | None:
        """The latest ready connection of a role: market (None) or the account's."""
        roles = self._roles if self._roles is not None else self._find_roles()
        return roles.get(account)

    def _find_roles(self) -> dict[str | None, _Connection]:
        """Each role's latest ready connection, in one pass over the connections, and
        whether every role needed has one."""
        roles: dict[str | None, _Connection] = {}
        for conn in self._connections:
            if not conn.alive or conn.retiring or conn.ready_seq is None:
                continue
            found = roles.get(conn.account)
            if found is None or conn.ready_seq > (found.ready_seq or 0):
                roles[conn.account] = conn
        self._roles = roles
        self._roles_ready = ((not self._scan.needs_market or None in roles)
                             and all(account in roles
                                     for account in self._scan.needed_accounts))
        return roles


    def _replay_now_ms(self) -> int:
        """The replay clock: the latest pushed frame's ``recv_ts`` and the time since (at
        ``speed``); before the first push, the first frame's."""
        if self._last_recv_ms is None:
            return self._first_recv_ms if self._first_recv_ms is not None else int(
                time.time() * 1000)
        elapsed = time.monotonic() - self._last_push_at
        return self._last_recv_ms + int(elapsed * 1000 * (self._speed or 1.0))

    # -- faults ----------------------------------------------------------------------------


    def _abort(self, conn: _Connection) -> None:
        self._log.warning("replay_fault", fault="drop", conn_id=conn.conn_id,
                          account=conn.account, frames=self._pushed)
        conn.alive = False
        conn.websocket.transport.abort()  # no close frame: the TCP connection just ends
        self._note_change()

    def _arm_stall(self) -> None:
        # Armed right after the N-th push, before anything else can run, so that nothing a
        # client sends after receiving that frame is answered before the stall.
        if self._faults.stall_after == self._pushed and not self._stall_armed:
            self._stall_armed = True
            self._stall_pending = True
            self._awake.clear()

    async def _stall(self) -> None:
        self._log.warning("replay_fault", fault="stall", seconds=self._faults.stall_s,
                          frames=self._pushed)
        await asyncio.sleep(self._faults.stall_s)
        self._stall_pending = False
        self._awake.set()

    def _close_everything(self) -> None:
        """Close every websocket connection cleanly (1001), as at Binance's 24-hour cut."""
        self._closed_all = True
        self._log.warning("replay_fault", fault="close_all", frames=self._pushed,
                          connections=len(self._connections))
        for conn in list(self._connections):
            self._retire(conn, 1001, "going away")
        self._note_change()

    async def _expire_listen_keys(self) -> None:
        """``listenKeyExpired`` to every user-data connection (docs "User Data Streams >
        Event: User Data Stream Expired"), their keys invalidated, then closed."""
        self._keys_expired = True
        event_ms = self._replay_now_ms()
        users = [conn for conn in self._connections
                 if conn.account is not None and conn.alive and not conn.retiring]
        self._log.warning("replay_fault", fault="listen_key_expired", frames=self._pushed,
                          accounts=sorted({str(conn.account) for conn in users}))
        for conn in users:
            assert conn.listen_key is not None
            self._forget_key(conn.listen_key)
            with contextlib.suppress(ConnectionClosed):
                await conn.websocket.send(orjson.dumps(
                    {"e": "listenKeyExpired", "E": event_ms, "listenKey": conn.listen_key}),
                    text=True)
            self._retire(conn, 1000, "listenKey expired")
        self._note_change()

    def _retire(self, conn: _Connection, code: int, reason: str) -> None:
        """No more pushes to ``conn``; close it in the background."""
        if not conn.alive or conn.retiring:
            return
        conn.retiring = True
        task = asyncio.create_task(conn.websocket.close(code, reason))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _forget_key(self, key: str) -> None:
        account = self._listen_keys.pop(key, None)
        if account is not None and self._account_keys.get(account) == key:
            del self._account_keys[account]

    # -- websocket connections -------------------------------------------------------------

    async def _process_request(self, connection: ServerConnection,
                               request: Request) -> Response | None:
        """Let upgrades on ``/stream`` and ``/ws/<live listenKey>`` through; refuse others."""
        try:
            path = urlsplit(request.path).path
        except ValueError:
            path = ""
        if path == MARKET_PATH:
            return None
        key = path[len(USER_DATA_PREFIX):] if path.startswith(USER_DATA_PREFIX) else ""
        if key and "/" not in key:
            if key in self._listen_keys:
                return None
            return json_response(*_NO_LISTEN_KEY)
        return json_response(HTTPStatus.NOT_FOUND, {
            "code": -1, "msg": f"Not Found: {path[:_SHOWN_PATH_CHARS]}"})

    async def _handle(self, websocket: ServerConnection) -> None:
        assert websocket.request is not None
        split = urlsplit(websocket.request.path)
        conn_id = next(self._conn_ids)
        if split.path == MARKET_PATH:
            conn = _Connection(websocket, conn_id, None)
            names = [name for key, value in parse_qsl(split.query) if key == "streams"
                     for name in value.split("/") if name]
            if names:
                conn.streams = dict.fromkeys(names[:_MAX_STREAMS])
                conn.ready_seq = next(self._ready_seq)
        else:
            key = split.path[len(USER_DATA_PREFIX):]
            account = self._listen_keys.get(key)
            if account is None:  # deleted or expired during the handshake
                await websocket.close(1008, "This listenKey does not exist.")
                return
            conn = _Connection(websocket, conn_id, account, key,
                               ready_seq=next(self._ready_seq))
        self._connections.append(conn)
        self._note_change()
        self._log.info("replay_connection_opened", conn_id=conn.conn_id,
                       endpoint="market" if conn.account is None else "user_data",
                       account=conn.account)
        try:
            async for message in websocket:
                await self._awake.wait()
                await self._on_message(conn, message)
        except ConnectionClosed:
            pass
        finally:
            conn.alive = False
            self._connections.remove(conn)
            self._note_change()
            self._log.info("replay_connection_closed", conn_id=conn.conn_id,
                           account=conn.account, code=websocket.close_code)

    async def _on_message(self, conn: _Connection, message: str | bytes) -> None:
        """docs "Websocket Market Streams > Live Subscribing/Unsubscribing to streams"."""
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            request = None
        if type(request) is not dict:
            await self._reply(conn, {"error": _INVALID_REQUEST, "id": None})
            return
        usable, request_id = _request_id(request)
        method = request.get("method")
        if not usable or conn.account is not None or method not in (
                "SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS"):
            await self._reply(conn, {"error": _INVALID_REQUEST, "id": request_id})
            return
        if method == "LIST_SUBSCRIPTIONS":
            await self._reply(conn, {"result": list(conn.streams), "id": request_id})
            return
        names = _stream_names(request.get("params"))
        if names is None or (method == "SUBSCRIBE" and len(
                conn.streams.keys() | set(names)) > _MAX_STREAMS):
            await self._reply(conn, {"error": _INVALID_REQUEST, "id": request_id})
            return
        # Answered first, then in force: no frame of a new stream comes before its answer.
        if not await self._reply(conn, {"result": None, "id": request_id}):
            return
        if method == "SUBSCRIBE":
            conn.streams.update(dict.fromkeys(names))
            if conn.ready_seq is None:
                conn.ready_seq = next(self._ready_seq)
        else:
            for name in names:
                conn.streams.pop(name, None)
        self._note_change()

    async def _reply(self, conn: _Connection, reply: dict[str, Any]) -> bool:
        """Send one answer; False if the connection is gone."""
        try:
            await conn.websocket.send(orjson.dumps(reply), text=True)
        except ConnectionClosed:
            return False
        return True

    # -- REST ------------------------------------------------------------------------------

    async def _serve_rest(self, request: HttpRequest) -> HttpResponse:
        status, body = await self._rest(request)
        return HttpResponse(status.value, orjson.dumps(body))

    async def _rest(self, request: HttpRequest) -> tuple[HTTPStatus, Any]:
        """Every REST answer (``headers`` by lower-case name)."""
        try:
            split = urlsplit(request.target)
        except ValueError:
            split = urlsplit("/")
        path = split.path
        methods = _REST_METHODS.get(path)
        if methods is None:
            return HTTPStatus.NOT_FOUND, {"code": -1,
                                          "msg": f"Not Found: {path[:_SHOWN_PATH_CHARS]}"}
        if request.method not in methods:
            return HTTPStatus.METHOD_NOT_ALLOWED, {
                "code": -1, "msg": f"Method {request.method[:16]} is not allowed on {path}"}
        params = dict(parse_qsl(split.query, keep_blank_values=True))
        if request.method != "GET" and request.body:
            params.update(parse_qsl(request.body.decode("utf-8", "replace"),
                                    keep_blank_values=True))
        if path == LISTEN_KEY_PATH:
            return self._listen_key(request.method, request.headers, params)
        if path == RestPath.EXCHANGE_INFO:
            info = self._scan.exchange_info
            if info is None:
                return HTTPStatus.NOT_FOUND, {"code": -1,
                                              "msg": "No exchangeInfo in the recording"}
            return HTTPStatus.OK, info.body
        return await self._signed_get(path, request.headers, params)

    def _account_for(self, headers: dict[str, str]) -> str | tuple[HTTPStatus, Any]:
        """The account of the request's API key, or the refusal."""
        api_key = headers.get(_API_KEY_HEADER, "")
        if not api_key:
            return _KEY_FORMAT
        account = account_for_key(api_key, self._scan.accounts)
        return _KEY_REFUSED if account is None else account


    def _listen_key(self, method: str, headers: dict[str, str],
                    params: dict[str, str]) -> tuple[HTTPStatus, Any]:
        """docs "User Data Streams > Start / Keepalive / Close User Data Stream"."""
        if method == "POST" and headers.get(_API_KEY_HEADER):
            self._key_requests += 1
            if self._key_requests <= self._faults.fail_logins:
                self._log.warning("replay_fault", fault="listen_key_refused",
                                  attempt=self._key_requests)
                return _KEY_REFUSED
        account = self._account_for(headers)
        if not isinstance(account, str):
            return account
        if method == "POST":
            key = self._account_keys.get(account)
            if key is None:
                key = _new_listen_key()
                while key in self._listen_keys:  # pragma: no cover - 62**60 keys
                    key = _new_listen_key()
                self._listen_keys[key] = account
                self._account_keys[account] = key
                self._log.info("replay_listen_key_created", account=account)
            return HTTPStatus.OK, {"listenKey": key}
        key = params.get("listenKey") or self._account_keys.get(account, "")
        if self._listen_keys.get(key) != account:
            return _NO_LISTEN_KEY
        if method == "DELETE":
            self._forget_key(key)
            for conn in list(self._connections):
                if conn.listen_key == key:
                    self._retire(conn, 1000, "listenKey deleted")
            self._note_change()
            self._log.info("replay_listen_key_deleted", account=account)
        elif method == "PUT":
            self._keepalives[account] = self._keepalives.get(account, 0) + 1
            self._keepalive_parameters.update(params)
        return HTTPStatus.OK, {}

    async def _signed_get(self, path: str, headers: dict[str, str],
                          params: dict[str, str]) -> tuple[HTTPStatus, Any]:
        """A USER_DATA request, answered for its account as of the push position."""
        account = self._account_for(headers)
        if not isinstance(account, str):
            return account
        timestamp = params.get("timestamp", "")
        if not (timestamp.isascii() and timestamp.isdigit()):
            return _missing_parameter("timestamp")
        if not params.get("signature"):
            return _missing_parameter("signature")
        await self._positioned.wait()
        owners: tuple[str | None, ...] = (
            (account, None) if path == RestPath.LEVERAGE_BRACKET else (account,))
        status, body = _rest_answer(self._bodies, owners, path, _symbol_of(path, params))
        if status is HTTPStatus.OK and path in _STATE_PATHS:
            held = self._bodies.get((account, path))
            served = _chosen([held.whole]) if held is not None else None
            if served is not None and served.line_number < self._pushed_line:
                body = self._overlays.get(account, _Overlay()).apply(path, body)
        return status, body


async def serve(recording: Path, host: str, port: int, speed: float | None,
                faults: Faults | None, status: Callable[[dict[str, Any]], None], *,
                rest_port: int = 0) -> None:
    """Serve ``recording`` until cancelled (``riskmon replay-server``).

    Calls ``status`` with ``{"event": "listening", "ws_url", "rest_url", "port",
    "rest_port"}`` once bound (``ws_url`` the websocket base, ``rest_url`` the REST
    listener's), and ``{"event": "finished", "frames": N, "keepalives":
    ReplayServer.keepalives}`` after the last frame; it keeps serving (REST, listen keys,
    requests) afterwards.

    Raises:
        RecordingError: the recording is missing or unreadable.
        ConfigError: ``speed`` is not positive.
    """
    server = ReplayServer(recording, speed=speed, faults=faults)
    try:
        bound = await server.start(host, port, rest_port)
        status({"event": "listening", "ws_url": f"ws://{url_host(host)}:{bound}",
                "rest_url": f"http://{url_host(host)}:{server.rest_port}", "port": bound,
                "rest_port": server.rest_port})
        frames = await server.wait_finished()
        status({"event": "finished", "frames": frames, "keepalives": server.keepalives})
        await asyncio.get_running_loop().create_future()  # until cancelled
    finally:
        await server.close()
