"""An OKX v5 protocol server over a recording: ``riskmon replay-server`` (SPEC 3.3).

:class:`ReplayServer` serves a recording (SPEC 3.2) so that the live OKX adapter can be
pointed at it unchanged: ``ws://H:P/ws/v5/public``, ``ws://H:P/ws/v5/private`` and the REST
base ``http://H:P``, all on one port, and the REST base again, with POST, on a second port
(``http://H:R``, see below). Message formats and error codes follow the OKX v5 docs
(https://www.okx.com/docs-v5/en/, "Overview > WebSocket" and "Error Code > WebSocket"):

- Text ``ping`` is answered with text ``pong``.
- ``login`` (private endpoint only) answers ``{"event": "login", "code": "0", "msg": "",
  "connId"}``. The signature cannot be checked (there is no secret), so the four fields only
  have to be non-empty strings. The account is the recording's account named like the
  ``apiKey``, else the recording's only account; anything else is ``60005 Invalid apiKey``.
- ``subscribe`` / ``unsubscribe`` answer one ``{"event", "arg", "connId"}`` per argument,
  with the request's ``id`` echoed. A bad request gets one ``event: error`` frame and the
  connection stays open: not JSON, no ``args`` array (60012 Invalid request), an unknown
  ``op`` (60019), an argument without a ``channel`` (60027), a private channel on the public
  endpoint or a public one on the private endpoint (60008), a private channel before login
  (60011). Private channels are the private endpoint's (account, positions, orders, ...) and
  any channel the recording has with an account.
- REST over plain HTTP GET on the same port (websockets' ``process_request`` hook answers
  requests that are not websocket upgrades), and over HTTP/1.1 GET and POST on the REST
  port (:mod:`adapters.rest_listener`, on h11: keep-alive, bodies up to 1 MiB, else
  413; a malformed request 400). Both ports give the same answers from the same code.
  Signed, by the ``OK-ACCESS-KEY`` header (mapped to an account like the ``apiKey`` at
  login; 401 with 50103 or 50111 otherwise): ``/api/v5/trade/orders-pending``,
  ``/api/v5/account/config``, ``/api/v5/account/balance``, ``/api/v5/account/positions``,
  and the simulator's ``/api/v5/trade/order`` and ``/api/v5/trade/orders-history`` (GET)
  and ``/api/v5/trade/batch-orders`` (POST, REST port only). Public:
  ``/api/v5/public/instruments``, ``/api/v5/public/position-tiers`` and
  ``/api/v5/public/discount-rate-interest-free-quota``. Other paths, websocket ones
  included, are 404; a known path with the other method 405 (50115).

Pushes. Every data frame of the recording goes, in recorded order, to the connection it
belongs to: public frames to the public connection, private frames of account A to the
private connection logged in as A. The target of a role is the latest connection of it that
is *ready*: subscribed at least once (private: after login). Pushing starts, and after a
disconnect resumes, only when every role the recording needs has a ready connection, so no
frame is lost and none is sent twice, and the cross-connection order is the recorded one. A
client reading several sockets sees that order too: two consecutive pushes to different
connections are at least ``switch_gap_s`` apart. A frame whose channel (and, on public
channels, ``instId``) its connection has not subscribed waits up to ``subscribe_grace_s``
for the subscription, then goes anyway; later frames of that channel then go at once.

Pace: frame i is due ``(recv_ts_i - recv_ts_first) / speed`` seconds after pushing started;
``speed=None`` does not pace. Time spent waiting for a connection, a subscription or a stall
shifts the schedule (it is *re-based*), so a reconnect is never followed by a burst.

Subscribing ``positions`` or ``account`` again after frames of that channel were pushed to
the account answers, after the acknowledgement, with a snapshot built from the latest rows
pushed (OKX pushes an initial snapshot on subscribe): positions by (``instId``,
``mgnMode``, ``posSide``) without the closed ones (``pos`` "0" or ""); the latest account
row with ``details`` merged per ``ccy``. A recorded snapshot (its first page), or a recorded
REST body of the whole list, replaces what came before, as it does for the decoder: a
position absent from it is closed.

``orders-pending`` answers the account's live orders at the push position: the latest
recorded ``orders-pending`` body read so far (REST lines are read as the push position
passes them, so those just before the next unsent frame count), then the ``orders`` pushes
sent since (``live`` / ``partially_filled`` upsert by ``ordId``; ``filled``, ``canceled``,
``mmp_canceled`` remove). The list is newest first, by ``ordId`` (OKX allocates them in
increasing order), filtered by ``instType``, ``instFamily``/``uly``, ``instId``,
``ordType`` and ``state``, and paged by ``limit`` (default and maximum 100), ``after``
(older than that ``ordId``) and ``before`` (newer; alone, the ``limit`` orders closest to
it).

The account's other REST state is also answered as of the push position.
``account/balance`` and ``account/positions`` answer the latest recorded body read so far
(without a query: a filtered one is not the whole state) while no push of the channel
came after it; otherwise the snapshot built from it and what was pushed since, the rows
the re-subscribe snapshots hold, as ``{"code": "0", "msg": "", "data": [...]}``; before
anything of the account is known, ``data`` is empty (no positions; no balance row, which
the decoder reads as no news). ``account/config`` answers the latest recorded body read so
far, else an empty ``data``. Discount-rate tiers and ``position-tiers`` of
``instType=MARGIN`` (borrowing tiers, loaded live as currencies come into use) answer the
latest recorded body read so far whose query parameters match (in any order); other
instruments and tiers the latest recorded body of the whole recording whose path and query
match. Without a match: ``{"code": "0", "msg": "", "data": []}``. Recorded error bodies
of these paths are not served (the live feed retried them; what followed counts).

Order simulator (the pure part in :mod:`adapters.okx.order_simulator`; codes from the
docs "Error Code > REST API"). ``POST /api/v5/trade/batch-orders`` needs the four
``OK-ACCESS-*`` headers non-empty (the signature cannot be checked; 401 with 50103,
50104, 50106 or 50107, 50111 for a key that names no account), a JSON array of 1 to 20
orders (50000 empty body, 50002 not JSON, 51000 not an array, 51111 more than 20) and a
key not in ``Faults.read_only_keys`` (50120). Each order is checked in turn: the
parameters (50014 missing, 51000 malformed; ``clOrdId`` optional, else 1-32
alphanumerics), a ``clOrdId`` not used by an order placed for the account before
(51016; a refused order does not use it up), only ``ordType`` ``market`` with
``reduceOnly`` true (else 50038, "unavailable in demo trading": the simulator opens no
position), a mark pushed for the instrument (51109 "No available offers" otherwise), and
against the account's position of (``instId``, ``tdMode`` as ``mgnMode``, ``posSide`` or
``net``) as the simulator left it, less its live simulated orders: none (51169), the
order on the side of the position (51170), larger than it (51112). The answer is OKX's:
``{"code": "0"|"1"|"2", "msg", "data": [{"clOrdId", "ordId", "tag", "ts", "sCode",
"sMsg"}], "inTime", "outTime"}``. A placed order is pushed on the account's connection if
it subscribed ``orders`` (``live``, then ``filled`` at the latest mark pushed, with
``fillPx``, ``fillSz``, ``accFillSz``, ``avgPx``, ``fillTime``...), then ``positions``
gets the position's new row if subscribed (``pos`` "0" when closed). Exchange times
(``ts``, ``cTime``, ``uTime``, ``fillTime``, ``inTime``, ``outTime``) are on the replay
clock: the latest pushed frame's ``recv_ts`` plus the time since, times ``speed``.
``GET /api/v5/trade/order`` finds a simulated order by ``ordId`` or ``clOrdId`` (51603
otherwise; 51003 without either); ``orders-pending`` lists the simulated orders while
live (only a fault holds one live); ``orders-history`` (``instType`` required) lists the
finished ones newest first; ``account/config`` rows gain ``perm`` (``read_only,trade``,
or ``read_only`` for a key of ``read_only_keys``). Each request is reported to
``on_orders`` (``riskmon replay-server``: one ``{"event": "orders"}`` status line), and
every order kept in :attr:`ReplayServer.orders_received`.

The position overlay: every positions row that goes out after a simulated fill (recorded
pushes, re-subscribe snapshots, ``account/positions``) is the recorded row of that
(``instId``, ``mgnMode``, ``posSide``) less what the simulator closed of it: ``pos`` and
``availPos`` lose that much in magnitude, never below zero, and ``upl`` and
``notionalUsd`` (linear in the size at the row's mark) scale with them; a position left
at zero is closed, so snapshots and REST leave it out. Not adjusted: the position's
margins (``imr``, ``mmr``, ``margin``, ``mgnRatio``), ``liqPx``, realised PnL, fees (a fill
charges ``fee`` "0"), and the account channel and ``account/balance`` (cash, equity,
margins): the exchange's own figures there keep the recording's values, so the daemon's
divergence check may see them differ; no balance model is invented. Recorded orders
cannot be looked up, and ``balance_and_position`` pushes are not overlaid.

Faults (:class:`Faults`, for integration tests), counted in recorded frames pushed: drop
(abort the TCP connection of the next frame, no close frame), garbage (a text frame that is
not JSON), stall (no pushes, pongs or acknowledgements on any websocket connection: what
arrives is held, as by a frozen server, and answered afterwards; REST is not held, since
websockets would drop an HTTP request held past its 10 s opening-handshake timeout),
failed logins (60009 Login failed) and the 64008 service-upgrade ``notice`` to every
connection, which are then closed (code 1012) after ``notice_close_s``; pushing resumes on
new connections. Order faults, counted in orders or ``batch-orders`` requests: refused
orders (``reject_orders``, 51008 by default), rate limiting (HTTP 429, 50011), late
answers (``timeout_requests``: placed and filled, answered after ``order_timeout_s``),
partial fills (then ``canceled``), fills held ``fill_delay_s`` (the order stays live,
the fill and its pushes come later), and read-only keys.

The recording is streamed, never held in memory: a first pass in a worker thread counts
frames, finds the roles it needs, the accounts and the instruments and tiers bodies; the
pump then reads it again as it pushes. Lines that are not JSON objects of the SPEC 3.2
shapes are skipped, counted and logged once each (in the first pass). Recorded operational
frames (acknowledgements, errors, notices, ``pong``) are not pushed: this server answers
for itself. Nothing is logged per pushed frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import re
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, field, fields
from decimal import Decimal
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as serve_websockets
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from adapters.logging import get_logger
from adapters.okx.decode import RestPath
from adapters.okx.order_simulator import (
    DUPLICATE_CLIENT_ID,
    INSUFFICIENT_MARGIN,
    NO_PRICE,
    ParsedOrder,
    PositionKey,
    SimulatedOrder,
    answer_row,
    batch_answer,
    check_order,
    parse_decimal,
    partial_size,
    position_size,
    reduced_row,
    reduction_refusal,
)
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

__all__ = ["NO_FAULTS", "PRIVATE_PATH", "PUBLIC_PATH", "Faults", "ReceivedOrder", "RecordingError",
           "ReplayServer", "serve"]

PUBLIC_PATH: Final = "/ws/v5/public"
PRIVATE_PATH: Final = "/ws/v5/private"

# Channels of the private endpoint (docs: "Trading Account > WebSocket", "Order Book
# Trading > Trade > WebSocket"); the recording's own private channels are added to these.
_PRIVATE_CHANNELS: Final = frozenset(
    {"account", "positions", "balance_and_position", "liquidation-warning", "account-greeks",
     "orders", "fills"}
)
# Order states (docs: "GET / Order List": orders-pending lists only the first two).
_LIVE_ORDER_STATES: Final = frozenset({"live", "partially_filled"})
_FINAL_ORDER_STATES: Final = frozenset({"filled", "canceled", "mmp_canceled"})
_ORDER_FILTERS: Final = ("instType", "instId", "ordType", "state")
_PAGE_LIMIT: Final = 100
# Request ids (docs: "Subscribe", ``id``): up to 32 alphanumerics.
_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9]{1,32}")
_LOGIN_FIELDS: Final = ("apiKey", "passphrase", "timestamp", "sign")
_SNAPSHOT_CHANNELS: Final = frozenset({"positions", "account"})

_EMPTY_BODY: Final[dict[str, Any]] = {"code": "0", "msg": "", "data": []}
# Signed REST paths, answered per account (by the OK-ACCESS-KEY header).
_PRIVATE_REST_PATHS: Final = frozenset(
    {RestPath.ORDERS_PENDING, RestPath.ACCOUNT_CONFIG, RestPath.BALANCE, RestPath.POSITIONS}
)
# The REST paths and their method; the trade ones are the simulator's (docs "Order Book
# Trading > Trade").
_BATCH_ORDERS: Final = "/api/v5/trade/batch-orders"
_ORDER: Final = "/api/v5/trade/order"
_ORDERS_HISTORY: Final = "/api/v5/trade/orders-history"
_SIGNED_GET_PATHS: Final = _PRIVATE_REST_PATHS | {_ORDER, _ORDERS_HISTORY}
_REST_METHODS: Final = {
    **dict.fromkeys(_SIGNED_GET_PATHS, "GET"),
    **dict.fromkeys((RestPath.INSTRUMENTS, RestPath.POSITION_TIERS, RestPath.DISCOUNT_RATE),
                    "GET"),
    _BATCH_ORDERS: "POST",
}
_SIGNED_HEADERS: Final = ("OK-ACCESS-KEY", "OK-ACCESS-SIGN", "OK-ACCESS-TIMESTAMP",
                          "OK-ACCESS-PASSPHRASE")
# docs "Error Code > REST API > API class".
_EMPTY_HEADER_CODES: Final = {"OK-ACCESS-KEY": "50103", "OK-ACCESS-PASSPHRASE": "50104",
                              "OK-ACCESS-SIGN": "50106", "OK-ACCESS-TIMESTAMP": "50107"}
_BATCH_LIMIT: Final = 20  # docs "Place multiple orders": "up to 20 orders"
# Simulated ids: numeric like OKX's, above any a recording is likely to hold, so that the
# newest-first order of orders-pending puts them after the recorded ones.
_ORDER_ID_BASE: Final = 9_000_000_000_000_000_000
_TRADE_ID_BASE: Final = 900_000_000


def _empty_parameter_body(name: str) -> dict[str, Any]:
    # docs "Error Code > REST API > General class": 50014, HTTP 400.
    return {"code": "50014", "msg": f"Parameter {name} can not be empty.", "data": []}


_GARBAGE: Final = "riskmon replay-server: a frame that is not JSON {"
_NOTICE_CLOSE_CODE: Final = 1012  # "service restart" (RFC 6455 registry)
_YIELD_EVERY_S: Final = 0.0005  # the push loop lets other tasks run at least this often
_READ_CHUNK_BYTES: Final = 1 << 20
_SHOWN_REQUEST_CHARS: Final = 200


@dataclass(frozen=True, slots=True)
class Faults:
    """Faults to inject, all off by default; counts are of recorded frames pushed, or of
    orders and ``batch-orders`` requests where the name says so.

    - ``drop_after=N``: after every N frames, up to ``drop_times`` times, abort the TCP
      connection (no close frame) the next frame is destined for.
    - ``garbage_after=N``: once, send a text frame that is not JSON to the connection of the
      next frame, before it.
    - ``stall_after=N``: once, go silent on every websocket connection for ``stall_s``
      seconds (no pushes, pongs or acknowledgements; requests are answered afterwards).
    - ``fail_logins=N``: answer the first N well-formed logins with 60009 Login failed.
    - ``notice_after=N``: once, send the 64008 ``notice`` to every connection and close them
      (code 1012) ``notice_close_s`` seconds later; pushing waits for new connections.
    - ``reject_orders=N``: refuse the first N orders that would have been placed with
      ``reject_code`` / ``reject_message`` (default 51008, insufficient margin).
    - ``rate_limit_requests=N``: answer the first N ``batch-orders`` requests HTTP 429
      ``50011 Too Many Requests``; nothing of them is placed.
    - ``timeout_requests=N``: place the orders of the first N ``batch-orders`` requests as
      usual (they fill and push) but hold the answer ``order_timeout_s`` seconds: the order
      reached the exchange, its answer is late or, past the client's timeout, lost.
    - ``partial_fills=N``: the first N placed orders fill ``partial_fill_ratio`` of their
      size (rounded down to the precision ``sz`` was written with), then end ``canceled``
      with ``accFillSz`` < ``sz``, as an OKX market order that could not fill completely.
    - ``delay_fills=N``: the first N placed orders stay ``live`` for ``fill_delay_s``
      seconds before they fill (and before the fill's pushes).
    - ``read_only_keys``: API keys (``OK-ACCESS-KEY``) whose ``account/config`` ``perm``
      is ``read_only``; their ``batch-orders`` get 50120.

    Raises:
        ConfigError: a count is negative (``drop_after`` must be positive), a duration
            negative or not finite, ``partial_fill_ratio`` outside [0, 1), ``reject_code``
            not a non-zero code of digits, ``reject_message`` not a string, or a key of
            ``read_only_keys`` not a non-empty string; the key is the field name.
    """

    drop_after: int | None = None
    drop_times: int = 1
    garbage_after: int | None = None
    stall_after: int | None = None
    stall_s: float = 40.0
    fail_logins: int = 0
    notice_after: int | None = None
    notice_close_s: float = 1.0
    reject_orders: int = 0
    reject_code: str = INSUFFICIENT_MARGIN[0]
    reject_message: str = INSUFFICIENT_MARGIN[1]
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
                0 <= self.partial_fill_ratio < 1):
            raise ConfigError("partial_fill_ratio", "must be a number in [0, 1)")
        if type(self.reject_code) is not str or not _REJECT_CODE.fullmatch(self.reject_code):
            raise ConfigError("reject_code", "must be an OKX error code (digits, not 0)")
        if type(self.reject_message) is not str:
            raise ConfigError("reject_message", "must be a string")
        keys = self.read_only_keys
        if not isinstance(keys, set | frozenset | list | tuple) or not all(
                type(key) is str and key for key in keys):
            raise ConfigError("read_only_keys", "must be a set of non-empty API keys")
        object.__setattr__(self, "read_only_keys", frozenset(keys))


_SPECIAL_FAULT_FIELDS: Final = frozenset(
    {"reject_code", "reject_message", "partial_fill_ratio", "read_only_keys"})
_REJECT_CODE: Final = re.compile(r"[1-9][0-9]{0,7}")

NO_FAULTS: Final = Faults()


# --- recording lines (pure) ----------------------------------------------------------------

Query = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class _FrameLine:
    """A data frame of the recording, to be pushed."""

    line_number: int
    recv_ms: int
    account: str | None  # None: public
    channel: str
    inst_id: str | None
    frame: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _RestLine:
    """A recorded REST response."""

    line_number: int
    recv_ms: int
    account: str | None
    path: str
    query: Query
    body: Any


@dataclass(frozen=True, slots=True)
class _Skipped:
    """A line that is not of the SPEC 3.2 shapes."""

    line_number: int
    reason: str


def _query_key(query: str) -> Query:
    """Query parameters in a canonical order, so that ``a=1&b=2`` matches ``b=2&a=1``."""
    return tuple(sorted(parse_qsl(query, keep_blank_values=True)))


_UNSERVABLE = "nested too deep to be sent again as JSON"


def _servable(value: Any) -> bool:
    """Whether ``value`` can be serialised for sending. orjson reads JSON nested up to 1024
    deep but writes at most 255 deep (JSONEncodeError "Recursion limit reached"): such a
    line is skipped when the recording is read, not left to fail the push (issue 15)."""
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return False
    return True


def _classify(raw: bytes, line_number: int) -> _FrameLine | _RestLine | _Skipped | None:
    """What one recording line is; None for a blank line or an operational frame.

    Operational frames (acknowledgements, errors, notices, the text ``pong``, replies to
    trade operations) answered the recorder's own requests: this server makes its own.
    """
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
        return _classify_frame(record["frame"], account, recv_ms, line_number)
    path = record.get("rest")
    if path is None:
        return _Skipped(line_number, "neither a frame nor a rest response")
    if type(path) is not str or not path.startswith("/"):
        return _Skipped(line_number, "rest is not a request path")
    if "body" not in record:
        return _Skipped(line_number, "rest response without a body")
    if not _servable(record["body"]):
        return _Skipped(line_number, _UNSERVABLE)
    try:
        split = urlsplit(path)
    except ValueError:  # "Invalid IPv6 URL", for one
        return _Skipped(line_number, "rest is not a request path")
    if split.path in _PRIVATE_REST_PATHS and account is None:
        return _Skipped(line_number, f"{split.path} response without an account")
    return _RestLine(line_number, recv_ms, account, split.path, _query_key(split.query),
                     record["body"])


def _classify_frame(
    frame: Any, account: str | None, recv_ms: int, line_number: int
) -> _FrameLine | _Skipped | None:
    if type(frame) is not dict:
        return None if frame == "pong" else _Skipped(line_number, "frame is not an object")
    arg = frame.get("arg")
    if "event" in frame or (type(arg) is not dict and "op" in frame):
        return None
    if type(arg) is not dict:
        return _Skipped(line_number, "frame has neither an event nor an arg")
    channel = arg.get("channel")
    if type(channel) is not str or not channel:
        return _Skipped(line_number, "frame arg has no channel")
    if type(frame.get("data")) is not list:
        return _Skipped(line_number, "frame data is not an array")
    if account is None and channel in _PRIVATE_CHANNELS:
        return _Skipped(line_number, f"private channel {channel} without an account")
    if not _servable(frame):
        return _Skipped(line_number, _UNSERVABLE)
    inst_id = arg.get("instId")
    return _FrameLine(line_number, recv_ms, account, channel,
                      inst_id if type(inst_id) is str else None, frame)


@dataclass
class _Scan:
    """What the first pass learnt about the recording."""

    frames: int = 0
    rest_lines: int = 0
    skipped: list[_Skipped] = field(default_factory=list)
    needs_public: bool = False
    needed_accounts: set[str] = field(default_factory=set)  # accounts with private frames
    accounts: set[str] = field(default_factory=set)  # every account named
    private_channels: set[str] = field(default_factory=set)
    public_bodies: dict[tuple[str, Query], Any] = field(default_factory=dict)


def _scan(path: Path) -> _Scan:
    """Read the whole recording once (in a worker thread), keeping only its outline."""
    scan = _Scan(private_channels=set(_PRIVATE_CHANNELS))
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            line = _classify(raw, line_number)
            match line:
                case _FrameLine(account=None):
                    scan.frames += 1
                    scan.needs_public = True
                case _FrameLine(account=str(account), channel=channel):
                    scan.frames += 1
                    scan.needed_accounts.add(account)
                    scan.accounts.add(account)
                    scan.private_channels.add(channel)
                case _RestLine(account=account, path=rest_path, query=query, body=body):
                    scan.rest_lines += 1
                    if account is not None:
                        scan.accounts.add(account)
                    if rest_path in (RestPath.INSTRUMENTS, RestPath.POSITION_TIERS):
                        scan.public_bodies[(rest_path, query)] = body  # the latest wins
                case _Skipped():
                    scan.skipped.append(line)
                case None:
                    pass
    return scan


# --- per-account state at the push position (pure) -----------------------------------------


def _order_key(order_id: str) -> tuple[int, int, str]:
    """Sort key of an ``ordId``: numeric ids by value (OKX allocates them increasing)."""
    if order_id.isascii() and order_id.isdecimal() and len(order_id) <= 30:
        return (1, int(order_id), "")
    return (0, 0, order_id)


def _family(inst_id: Any) -> str | None:
    """``BTC-USDT`` of ``BTC-USDT-SWAP`` or ``BTC-USDT-250627``."""
    if type(inst_id) is not str:
        return None
    parts = inst_id.split("-")
    return "-".join(parts[:2]) if len(parts) >= 3 else None


class _OrderBook:
    """An account's live orders, as ``GET /api/v5/trade/orders-pending`` would list them:
    the recorded ones, and the simulator's while they are live."""

    def __init__(self) -> None:
        self._orders: dict[str, dict[str, Any]] = {}
        self._simulated: dict[str, dict[str, Any]] = {}  # a recorded body does not reset them

    def reset(self, body: Any) -> None:
        """Start again from a recorded response; an error body (no list of rows) is ignored."""
        if type(body) is not dict or body.get("code") not in ("0", 0):
            return
        rows = body.get("data")
        if type(rows) is not list:
            return
        self._orders = {}
        self.apply(rows)

    def apply(self, rows: Iterable[Any]) -> None:
        """Apply ``orders`` rows: live states upsert by ``ordId``, final states remove."""
        _apply_order_rows(self._orders, rows)

    def note_simulated(self, row: dict[str, Any]) -> None:
        """A simulated order's row, as it changes."""
        _apply_order_rows(self._simulated, [row])

    def page(self, params: dict[str, str]) -> tuple[HTTPStatus, dict[str, Any]]:
        """The response to a request with these query parameters (see the module docstring)."""
        return _order_page([*self._orders.values(), *self._simulated.values()], params)


def _apply_order_rows(orders: dict[str, dict[str, Any]], rows: Iterable[Any]) -> None:
    for row in rows:
        if type(row) is not dict or type(row.get("ordId")) is not str:
            continue
        state = row.get("state")
        if state in _LIVE_ORDER_STATES:
            orders[row["ordId"]] = row
        elif state in _FINAL_ORDER_STATES:
            orders.pop(row["ordId"], None)


def _order_page(orders: list[dict[str, Any]],
                params: dict[str, str]) -> tuple[HTTPStatus, dict[str, Any]]:
    """Orders filtered and paged as ``orders-pending`` and ``orders-history`` do: newest
    first by ``ordId``; ``limit``, ``after`` (older than), ``before`` (newer than)."""
    raw_limit = params.get("limit", "")
    limit = _PAGE_LIMIT
    if raw_limit:
        try:
            limit = int(raw_limit)
        except ValueError:
            limit = 0
        if not 1 <= limit <= _PAGE_LIMIT:
            # docs: "Error Code > REST API": 51000 Parameter {param0} error
            return HTTPStatus.BAD_REQUEST, {"code": "51000", "msg": "Parameter limit error",
                                            "data": []}
    rows = [row for row in orders if _selected(row, params)]
    rows.sort(key=lambda row: _order_key(row["ordId"]), reverse=True)
    after = params.get("after")
    before = params.get("before")
    if after:
        rows = [row for row in rows if _order_key(row["ordId"]) < _order_key(after)]
    if before:
        rows = [row for row in rows if _order_key(row["ordId"]) > _order_key(before)]
    # "before" alone pages toward newer orders: the ones next to the cursor come first.
    rows = rows[-limit:] if before and not after else rows[:limit]
    return HTTPStatus.OK, {"code": "0", "msg": "", "data": rows}


def _selected(row: dict[str, Any], params: dict[str, str]) -> bool:
    for name in _ORDER_FILTERS:
        wanted = params.get(name)
        if wanted and row.get(name) != wanted:
            return False
    family = params.get("instFamily") or params.get("uly")
    return not family or _family(row.get("instId")) == family


def _is_first_page(frame: dict[str, Any]) -> bool:
    return frame.get("eventType") == "snapshot" and frame.get("curPage") in (None, 1)


def _snapshot_frame(arg: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    # docs: "Positions channel" / "Account channel", push data of an initial snapshot.
    return {"arg": arg, "eventType": "snapshot", "curPage": 1, "lastPage": True, "data": rows}


def _is_closed(position: dict[str, Any]) -> bool:
    size = position.get("pos")
    if size in ("", None):
        return True
    try:
        return float(size) == 0.0
    except (TypeError, ValueError):
        return False


def _succeeded(body: Any) -> list[Any] | None:
    """The ``data`` rows of a successful REST body, else None (an error answer)."""
    if type(body) is not dict or body.get("code") not in ("0", 0):
        return None
    rows = body.get("data")
    return rows if type(rows) is list else None


def _rest_body(rows: list[Any]) -> dict[str, Any]:
    return {"code": "0", "msg": "", "data": rows}


def _position_key(row: dict[str, Any]) -> PositionKey:
    """What identifies a position (OKX): instrument, margin mode and side."""
    mode = row.get("mgnMode")
    side = row.get("posSide")
    return (row["instId"], mode if type(mode) is str else "cross",
            side if type(side) is str else "net")


class _PositionsView:
    """The latest ``positions`` row pushed (or recorded by REST) per (``instId``,
    ``mgnMode``, ``posSide``), and what the simulator closed of each: every row that goes
    out (pushes, snapshots, REST) is the recorded one less that (:func:`reduced_row`)."""

    def __init__(self) -> None:
        self._arg: dict[str, Any] | None = None
        self._rows: dict[PositionKey, dict[str, Any]] = {}
        self._known = False
        # The recorded REST body, while no push came after it: answered as it is.
        self._recorded: Any = None
        self.closed: dict[PositionKey, Decimal] = {}  # by the simulator, per position

    def apply(self, frame: dict[str, Any]) -> None:
        self._arg = frame["arg"]
        self._known = True
        self._recorded = None
        if _is_first_page(frame):
            self._rows = {}
        self._note_rows(frame["data"])

    def reset(self, body: Any) -> None:
        """A recorded ``GET /api/v5/account/positions``: the whole list, as of then."""
        rows = _succeeded(body)
        if rows is None:
            return
        self._rows = {}
        self._note_rows(rows)
        self._known = True
        self._recorded = body

    def _note_rows(self, rows: Iterable[Any]) -> None:
        for row in rows:
            if type(row) is dict and type(row.get("instId")) is str:
                self._rows[_position_key(row)] = row

    def _overlaid(self, row: dict[str, Any]) -> dict[str, Any]:
        reduction = self.closed.get(_position_key(row))
        return row if reduction is None else reduced_row(row, reduction)

    def outgoing(self, frame: dict[str, Any]) -> dict[str, Any]:
        """A recorded push as it goes out: its rows less what the simulator closed."""
        if not self.closed:
            return frame
        rows = [self._overlaid(row) if type(row) is dict and type(row.get("instId")) is str
                else row for row in frame["data"]]
        return {**frame, "data": rows}

    def current(self, key: PositionKey) -> dict[str, Any] | None:
        """The position's latest row, after the simulated trades (None: never seen)."""
        row = self._rows.get(key)
        return None if row is None else self._overlaid(row)

    def update_frame(self, key: PositionKey, now_ms: int) -> dict[str, Any] | None:
        """A ``positions`` push of one position's row as the simulator left it."""
        row = self.current(key)
        if row is None:
            return None
        arg = self._arg if self._arg is not None else {"channel": "positions",
                                                       "instType": "ANY"}
        return {"arg": arg, "eventType": "event_update",
                "data": [{**row, "uTime": str(now_ms)}]}

    def _open_rows(self) -> list[dict[str, Any]]:
        rows = (self._overlaid(row) for row in self._rows.values())
        return [row for row in rows if not _is_closed(row)]

    def snapshot(self) -> dict[str, Any] | None:
        if self._arg is None:
            return None
        return _snapshot_frame(self._arg, self._open_rows())

    def rest_body(self) -> Any:
        """The answer to ``GET /api/v5/account/positions``: the recorded body when nothing
        was pushed or simulated since, else the open positions so far (none before anything
        is known)."""
        if self._recorded is not None and not self.closed:
            return self._recorded
        return _rest_body(self._open_rows() if self._known else [])


class _AccountView:
    """The latest ``account`` row pushed (or recorded by REST balance), with its
    ``details`` merged per currency."""

    def __init__(self) -> None:
        self._arg: dict[str, Any] | None = None
        self._row: dict[str, Any] = {}
        self._details: dict[str, dict[str, Any]] = {}
        self._known = False
        self._recorded: Any = None

    def apply(self, frame: dict[str, Any]) -> None:
        self._arg = frame["arg"]
        self._known = True
        self._recorded = None
        if _is_first_page(frame):
            self._details = {}
        self._note_rows(frame["data"])

    def reset(self, body: Any) -> None:
        """A recorded ``GET /api/v5/account/balance``: every currency, as of then."""
        rows = _succeeded(body)
        if rows is None or not rows:
            return
        self._details = {}
        self._note_rows(rows)
        self._known = True
        self._recorded = body

    def _note_rows(self, rows: Iterable[Any]) -> None:
        for row in rows:
            if type(row) is not dict:
                continue
            self._row = {name: value for name, value in row.items() if name != "details"}
            details = row.get("details")
            for detail in details if type(details) is list else ():
                if type(detail) is dict and type(detail.get("ccy")) is str:
                    self._details[detail["ccy"]] = detail

    def _merged(self) -> dict[str, Any]:
        return {**self._row, "details": list(self._details.values())}

    def snapshot(self) -> dict[str, Any] | None:
        if self._arg is None:
            return None
        return _snapshot_frame(self._arg, [self._merged()])

    def rest_body(self) -> Any:
        """The answer to ``GET /api/v5/account/balance``: the recorded body when nothing
        was pushed since, else the merged row so far; before anything is known, no row
        (which the decoder reads as no news, not as an empty account)."""
        if self._recorded is not None:
            return self._recorded
        return _rest_body([self._merged()] if self._known else [])


@dataclass
class _AccountState:
    orders: _OrderBook = field(default_factory=_OrderBook)
    positions: _PositionsView = field(default_factory=_PositionsView)
    balances: _AccountView = field(default_factory=_AccountView)
    config: Any = None  # the latest successful account/config body read so far
    # The simulator's orders (every one placed, newest last), by clOrdId and ordId.
    simulated: list[SimulatedOrder] = field(default_factory=list)
    by_client_id: dict[str, SimulatedOrder] = field(default_factory=dict)
    by_order_id: dict[str, SimulatedOrder] = field(default_factory=dict)

    def reserved(self, key: PositionKey) -> Decimal:
        """What the account's live simulated orders will still close of a position."""
        return sum((order.order.size - order.filled for order in self.simulated
                    if order.live and order.order.key == key), Decimal(0))


# --- websocket replies (pure) --------------------------------------------------------------


def _dumps(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message)


def _error(code: str, message: str, conn_id: str, request_id: str | None = None) -> bytes:
    """An ``event: error`` frame (docs: "Subscribe", failure response example)."""
    reply: dict[str, Any] = {} if request_id is None else {"id": request_id}
    reply.update(event="error", code=code, msg=message, connId=conn_id)
    return _dumps(reply)


def _shown(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text[:_SHOWN_REQUEST_CHARS]


def _listener_error(status: HTTPStatus, message: str) -> HttpResponse:
    """The REST listener's own errors (400, 413, 431, 500) in OKX's shape; 50026 is OKX's
    "System error"."""
    code = "50026" if status is HTTPStatus.INTERNAL_SERVER_ERROR else str(status.value)
    return HttpResponse(status.value, orjson.dumps({"code": code, "msg": message, "data": []}))


# --- the server ----------------------------------------------------------------------------


@dataclass(eq=False)
class _Connection:
    """One websocket connection and what it asked for."""

    websocket: ServerConnection
    conn_id: str
    private: bool
    account: str | None = None
    # subscribed argument (sorted JSON) -> (channel, instId on public channels)
    subscriptions: dict[bytes, tuple[str, str | None]] = field(default_factory=dict)
    ready_seq: int | None = None  # set on the first subscription: then pushes may come
    alive: bool = True
    retiring: bool = False  # told to reconnect (64008): no more pushes
    unwanted: set[tuple[str, str | None]] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, message: bytes | str) -> None:
        """Send one text frame; the lock keeps an acknowledgement and its snapshot together."""
        async with self.lock:
            await self.websocket.send(message, text=True)

    def wants(self, line: _FrameLine) -> bool:
        return any(channel == line.channel and (inst_id is None or inst_id == line.inst_id)
                   for channel, inst_id in self.subscriptions.values())


class ReplayServer:
    """Serves one recording over the OKX v5 websocket and REST protocols.

    ``speed`` paces the pushes at N times the recorded pace (None: as fast as the clients
    take them); ``switch_gap_s`` is the least time between two pushes to different
    connections; ``subscribe_grace_s`` how long a frame waits for its channel to be
    subscribed. ``record_push_times`` keeps the time of each push (:attr:`push_times`);
    ``on_orders`` is called with a summary of each ``batch-orders`` request;
    ``max_body_bytes`` bounds a REST request's body. See the module docstring for the
    protocol and the simulator.

    Raises:
        RecordingError: the recording is missing or unreadable.
        ConfigError: ``speed`` is not positive, or a duration is negative.
    """

    def __init__(self, recording: Path, *, speed: float | None = 1.0,
                 faults: Faults = NO_FAULTS, switch_gap_s: float = 0.01,
                 subscribe_grace_s: float = 5.0, record_push_times: bool = False,
                 on_orders: Callable[[dict[str, Any]], None] | None = None,
                 max_body_bytes: int = 1 << 20) -> None:
        if speed is not None and not 0 < speed < math.inf:
            raise ConfigError("speed", "must be a positive number (None: no pacing)")
        for name, value in (("switch_gap_s", switch_gap_s),
                            ("subscribe_grace_s", subscribe_grace_s)):
            if not 0 <= value < math.inf:
                raise ConfigError(name, "must be a non-negative number of seconds")
        check_readable(recording)
        self._recording = recording
        self._speed = speed
        self._faults = faults
        self._switch_gap_s = switch_gap_s
        self._grace_s = subscribe_grace_s
        self._log = get_logger("riskmon.replay_server")
        self._scan = _Scan()
        self._server: Server | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._finished: asyncio.Future[int] | None = None
        self._connections: list[_Connection] = []
        self._states: dict[str, _AccountState] = {}
        self._conn_ids = itertools.count(1)
        self._ready_seq = itertools.count(1)
        # One waiter (the pump) wakes on any change of connections or subscriptions.
        self._changed = asyncio.Event()
        self._roles: dict[str | None, _Connection] | None = None  # see _find_roles
        self._roles_ready = False
        self._awake = asyncio.Event()  # cleared during a stall
        self._awake.set()
        self._positioned = asyncio.Event()  # REST lines before the first frame are applied
        # Public REST bodies served as of the push position (_read_as_passed).
        self._public_rest: dict[tuple[str, Query], Any] = {}
        self._pushed = 0
        self._last_target: _Connection | None = None
        self._last_push_at = 0.0
        self._yielded_at = 0.0
        self._logins = 0
        self._drops = DropSchedule(faults.drop_after, faults.drop_times)
        self._garbage_sent = False
        self._stall_armed = False
        self._stall_pending = False
        self._notice_sent = False
        self._logged_unwanted: set[tuple[str | None, str, str | None]] = set()
        # The REST listener (h11) and the order simulator.
        self._rest_listener = RestListener(self._serve_rest, max_body_bytes=max_body_bytes,
                                           error=_listener_error)
        self._rest_port: int | None = None
        self._on_orders = on_orders
        self._marks: dict[str, str] = {}  # instId -> markPx of the latest mark pushed
        self._last_recv_ms: int | None = None  # of the latest frame pushed
        self._received: list[ReceivedOrder] = []
        self._push_times: dict[int, list[float]] | None = {} if record_push_times else None
        self._order_ids = itertools.count(1)
        self._trade_ids = itertools.count(1)
        self._order_requests = 0  # authenticated batch-orders requests
        self._orders_checked = 0  # orders that passed every check (reject_orders)
        self._orders_placed = 0  # (partial_fills, delay_fills)

    # -- public API ------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0,
                    rest_port: int | None = 0) -> int:
        """Scan the recording, start listening and pushing; return the bound websocket port.

        ``rest_port`` is the HTTP/1.1 REST listener's (GET and POST, :attr:`rest_port` once
        bound; None: no listener). With port 0 the system picks a free port. Give an address
        rather than a name that resolves to several (``localhost``): each family would get
        its own port.
        """
        if self._server is not None:
            raise RuntimeError("the replay server is already started")
        try:
            self._scan = await asyncio.to_thread(_scan, self._recording)
            self._roles = None
        except OSError as error:
            raise RecordingError(self._recording, f"cannot be read ({error})") from error
        for skipped in self._scan.skipped:
            self._log.warning("replay_line_skipped", source=f"{self._recording}:"
                              f"{skipped.line_number}", reason=skipped.reason)
        self._log.info("replay_recording_scanned", file=str(self._recording),
                       frames=self._scan.frames, rest_lines=self._scan.rest_lines,
                       skipped=len(self._scan.skipped), needs_public=self._scan.needs_public,
                       accounts=sorted(self._scan.accounts))
        try:
            self._server = await serve_websockets(
                self._handle, host, port, process_request=self._process_request,
                ping_interval=None,  # OKX keeps alive with text ping/pong, client-initiated
            )
        except OSError as error:
            raise RiskmonError(f"cannot listen on {host}:{port} ({error.strerror})") from error
        if rest_port is not None:
            try:
                self._rest_port = await self._rest_listener.start(host, rest_port)
            except RiskmonError:
                self._server.close()
                await self._server.wait_closed()
                raise
        self._finished = asyncio.get_running_loop().create_future()
        bound: int = self._server.sockets[0].getsockname()[1]
        self._pump_task = asyncio.create_task(self._pump(), name="replay-server-pump")
        self._log.info("replay_server_listening", host=host, port=bound,
                       rest_port=self._rest_port)
        return bound

    async def wait_finished(self) -> int:
        """Wait until the last frame was pushed; return the number of frames pushed."""
        if self._finished is None:
            raise RuntimeError("the replay server is not started")
        return await asyncio.shield(self._finished)

    @property
    def frames_pushed(self) -> int:
        """Recorded frames pushed so far (synthesized snapshots and faults not counted)."""
        return self._pushed

    @property
    def lines_skipped(self) -> int:
        """Recording lines that are not of the SPEC 3.2 shapes."""
        return len(self._scan.skipped)

    @property
    def rest_port(self) -> int | None:
        """The HTTP/1.1 REST listener's port (None before :meth:`start` or without one)."""
        return self._rest_port

    @property
    def orders_received(self) -> tuple[ReceivedOrder, ...]:
        """Every order of every ``batch-orders`` request so far, in arrival order."""
        return tuple(self._received)

    @property
    def push_times(self) -> dict[int, list[float]]:
        """With ``record_push_times``: per recorded ``recv_ts``, the
        :func:`time.perf_counter` at which each frame of it was pushed, in push order
        (frames that share a ``recv_ts`` share a list). Empty otherwise."""
        return {} if self._push_times is None else self._push_times

    async def close(self) -> None:
        """Stop pushing, close every connection and stop listening."""
        tasks = [*self._background]
        if self._pump_task is not None:
            tasks.append(self._pump_task)
        for task in tasks:
            task.cancel()
        self._awake.set()  # handlers held by a stall must be able to finish
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
            await wait_until(self._changed, self._all_ready)
            self._log.info("replay_started", speed=self._speed)
            pace = Pace(self._speed, first.recv_ms, time.monotonic())
            self._arm_stall()
            line: _FrameLine | None = first
            while line is not None:
                await self._push(line, pace)
                line = await anext(lines, None)
        finally:
            await lines.aclose()
        return self._pushed

    async def _read_frames(self) -> AsyncGenerator[_FrameLine, None]:
        """The recording's data frames, in order; REST lines are applied as they pass."""
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
                    elif isinstance(line, _RestLine):
                        self._note_rest(line)
        finally:
            handle.close()

    async def _push(self, line: _FrameLine, pace: Pace) -> None:
        """Push one frame to its connection, waiting for whatever it needs first."""
        grace: tuple[_Connection, float] | None = None
        while True:
            if self._stall_pending:
                await self._stall()
                pace.rebase(line.recv_ms, time.monotonic())
            if self._faults.notice_after == self._pushed and not self._notice_sent:
                await self._send_notices()
            if not self._all_ready():
                self._log.info("replay_paused", frames=self._pushed)
                await wait_until(self._changed, self._all_ready)
                self._log.info("replay_resumed", frames=self._pushed)
                pace.rebase(line.recv_ms, time.monotonic())
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
            key = (line.channel, None if line.account is not None else line.inst_id)
            if key not in target.unwanted and not target.wants(line):
                if grace is None or grace[0] is not target:
                    grace = (target, time.monotonic() + self._grace_s)
                remaining = grace[1] - time.monotonic()
                if remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(remaining):
                            await wait_until(self._changed, self._subscribed_or_moved(target, line))
                    pace.rebase(line.recv_ms, time.monotonic())
                    continue
                target.unwanted.add(key)
                if (line.account, *key) not in self._logged_unwanted:
                    self._logged_unwanted.add((line.account, *key))
                    self._log.warning("replay_push_unsubscribed", conn_id=target.conn_id,
                                      account=line.account, channel=line.channel,
                                      inst_id=key[1], grace_s=self._grace_s)
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
                    await target.send(_GARBAGE)
                await target.send(self._payload(line))
            except ConnectionClosed:
                target.alive = False
                self._note_change()
                continue
            if self._push_times is not None:
                self._push_times.setdefault(line.recv_ms, []).append(time.perf_counter())
            break
        self._pushed += 1
        self._last_recv_ms = line.recv_ms
        self._last_target = target
        self._last_push_at = now = time.monotonic()
        self._note_pushed(line)
        self._arm_stall()
        if now - self._yielded_at > _YIELD_EVERY_S:
            # Behind the recording's pace no push waits, and a send into a buffer with
            # room does not yield: without this, the REST listener and the order
            # simulator would wait for the push loop to catch up.
            await asyncio.sleep(0)
            self._yielded_at = time.monotonic()

    def _payload(self, line: _FrameLine) -> bytes:
        """A recorded frame as it goes out: positions less what the simulator closed."""
        if line.account is not None and line.channel == "positions":
            return orjson.dumps(self._state(line.account).positions.outgoing(line.frame))
        return orjson.dumps(line.frame)

    def _subscribed_or_moved(self, target: _Connection,
                             line: _FrameLine) -> Callable[[], bool]:
        """Whether ``target`` subscribed the frame's channel, or is no longer its target."""
        return lambda: self._target(line.account) is not target or target.wants(line)

    def _note_change(self) -> None:
        """A connection changed (logged in, subscribed, retiring, gone): the roles are
        worked out again when next needed, and whoever waits for a change looks again."""
        self._roles = None
        self._changed.set()

    def _all_ready(self) -> bool:
        """Whether every role the recording needs has a ready connection."""
        if self._roles is None:
            self._find_roles()
        return self._roles_ready

    def _target(self, account: str | None) -> _Connection | None:
        """The latest ready connection of a role: public (None) or the account's."""
        roles = self._roles
        if roles is None:
            roles = self._find_roles()
        return roles.get(account)

    def _find_roles(self) -> dict[str | None, _Connection]:
        """Each role's latest ready connection, in one pass over the connections (per
        frame it would cost connections x accounts: the push loop could not keep up with
        a recording of many accounts), and whether every role needed has one."""
        roles: dict[str | None, _Connection] = {}
        for conn in self._connections:
            if not conn.alive or conn.retiring or conn.ready_seq is None:
                continue
            if conn.private and conn.account is None:
                continue  # not logged in: no role yet
            role = conn.account if conn.private else None
            found = roles.get(role)
            if found is None or conn.ready_seq > (found.ready_seq or 0):
                roles[role] = conn
        self._roles = roles
        self._roles_ready = ((not self._scan.needs_public or None in roles)
                             and all(account in roles
                                     for account in self._scan.needed_accounts))
        return roles


    def _note_rest(self, line: _RestLine) -> None:
        """A REST line the push position passed: what later requests of it answer."""
        if line.account is None:
            if _read_as_passed(line.path, line.query) and _succeeded(line.body) is not None:
                self._public_rest[(line.path, line.query)] = line.body
            return
        state = self._state(line.account)
        if line.path == RestPath.ORDERS_PENDING:
            state.orders.reset(line.body)
        elif line.query:
            pass  # a filtered balance or positions body is not the whole state: not kept
        elif line.path == RestPath.POSITIONS:
            state.positions.reset(line.body)
        elif line.path == RestPath.BALANCE:
            state.balances.reset(line.body)
        elif line.path == RestPath.ACCOUNT_CONFIG and _succeeded(line.body) is not None:
            state.config = line.body

    def _note_pushed(self, line: _FrameLine) -> None:
        if line.account is None:
            if line.channel == "mark-price":
                for row in line.frame["data"]:
                    if (type(row) is dict and type(row.get("instId")) is str
                            and parse_decimal(row.get("markPx")) is not None):
                        self._marks[row["instId"]] = row["markPx"]
            return
        state = self._state(line.account)
        match line.channel:
            case "orders":
                state.orders.apply(line.frame["data"])
            case "positions":
                state.positions.apply(line.frame)
            case "account":
                state.balances.apply(line.frame)
            case _:
                pass

    def _state(self, account: str) -> _AccountState:
        state = self._states.get(account)
        if state is None:
            state = self._states[account] = _AccountState()
        return state

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

    async def _send_notices(self) -> None:
        """Tell every connection to reconnect (64008), and close them a little later."""
        self._notice_sent = True
        self._log.warning("replay_fault", fault="notice", frames=self._pushed,
                          connections=len(self._connections))
        for conn in list(self._connections):
            if not conn.alive or conn.retiring:
                continue
            conn.retiring = True
            notice = {"event": "notice", "code": "64008",
                      "msg": "The connection will soon be closed for a service upgrade. "
                             "Please reconnect.",
                      "connId": conn.conn_id}
            try:
                await conn.send(_dumps(notice))
            except ConnectionClosed:
                continue
            task = asyncio.create_task(self._close_later(conn))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        self._note_change()

    async def _close_later(self, conn: _Connection) -> None:
        await asyncio.sleep(self._faults.notice_close_s)
        await conn.websocket.close(_NOTICE_CLOSE_CODE, "service upgrade")

    # -- websocket connections -------------------------------------------------------------

    async def _handle(self, websocket: ServerConnection) -> None:
        assert websocket.request is not None
        private = urlsplit(websocket.request.path).path == PRIVATE_PATH
        conn = _Connection(websocket, f"{next(self._conn_ids):08x}", private)
        self._connections.append(conn)
        self._log.info("replay_connection_opened", conn_id=conn.conn_id,
                       endpoint="private" if private else "public")
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
                           account=conn.account)

    async def _on_message(self, conn: _Connection, message: str | bytes) -> None:
        # docs: "Overview > WebSocket > Connect": the keepalive is the text "ping".
        if message == "ping":
            await conn.send("pong")
            return
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            request = None
        if type(request) is not dict:
            await conn.send(_error("60012", f"Invalid request: {_shown(message)}", conn.conn_id))
            return
        request_id = request.get("id")
        if request_id is not None and (type(request_id) is not str
                                       or not _REQUEST_ID.fullmatch(request_id)):
            await conn.send(_error("60012", f"Invalid request: {_shown(message)}", conn.conn_id))
            return
        match request.get("op"):
            case "login":
                await self._login(conn, request, message)
            case "subscribe" | "unsubscribe" as op:
                await self._subscription(conn, op, request, request_id, message)
            case str(op):
                await conn.send(_error("60019", f"Invalid op: {op}", conn.conn_id, request_id))
            case _:
                await conn.send(_error("60012", f"Invalid request: {_shown(message)}",
                                       conn.conn_id, request_id))

    async def _login(self, conn: _Connection, request: dict[str, Any],
                     message: str | bytes) -> None:
        """docs: "Overview > WebSocket > Login"."""
        failure = self._login_failure(conn, request, message)
        if failure is None:
            self._logins += 1
            if self._logins <= self._faults.fail_logins:
                self._log.warning("replay_fault", fault="login", conn_id=conn.conn_id,
                                  attempt=self._logins)
                failure = ("60009", "Login failed.")
        if failure is None:
            account = account_for_key(request["args"][0]["apiKey"], self._scan.accounts)
            if account is None:
                failure = ("60005", "Invalid apiKey")
            else:
                conn.account = account
                self._log.info("replay_login", conn_id=conn.conn_id, account=account)
                await conn.send(_dumps({"event": "login", "code": "0", "msg": "",
                                        "connId": conn.conn_id}))
                self._note_change()
                return
        self._log.info("replay_login_refused", conn_id=conn.conn_id, code=failure[0])
        await conn.send(_error(*failure, conn.conn_id))

    def _login_failure(self, conn: _Connection, request: dict[str, Any],
                       message: str | bytes) -> tuple[str, str] | None:
        if not conn.private:
            return ("60028", "The current operation is not supported by this URL. "
                             "Please use the correct WebSocket URL for the operation.")
        if conn.account is not None:
            return ("60031", "The WebSocket endpoint does not allow multiple or repeated "
                             "logins.")
        args = request.get("args")
        if type(args) is not list or not args:
            return ("60012", f"Invalid request: {_shown(message)}")
        if len(args) != 1 or type(args[0]) is not dict:
            return ("60013", "Invalid args")
        for name in _LOGIN_FIELDS:
            value = args[0].get(name)
            if value is None or value == "":
                return ("60027", f"Parameter {name} can not be empty.")
            if type(value) is not str:
                return ("60013", "Invalid args")
        return None


    async def _subscription(self, conn: _Connection, op: str, request: dict[str, Any],
                            request_id: str | None, message: str | bytes) -> None:
        """docs: "Overview > WebSocket > Subscribe" and "Unsubscribe"."""
        args = request.get("args")
        if type(args) is not list or not args:
            await conn.send(_error("60012", f"Invalid request: {_shown(message)}",
                                   conn.conn_id, request_id))
            return
        accepted: list[tuple[dict[str, Any], str, str | None]] = []
        for arg in args:
            failure = self._argument_failure(conn, arg)
            if failure is not None:
                await conn.send(_error(*failure, conn.conn_id, request_id))
                return
            inst_id = arg.get("instId")
            accepted.append((arg, arg["channel"], None if conn.private else inst_id))
        async with conn.lock:
            for arg, channel, inst_id in accepted:
                key = orjson.dumps(arg, option=orjson.OPT_SORT_KEYS)
                if op == "subscribe":
                    conn.subscriptions[key] = (channel, inst_id)
                elif conn.subscriptions.pop(key, None) is None:
                    for other, subscribed in list(conn.subscriptions.items()):
                        if subscribed == (channel, inst_id):
                            del conn.subscriptions[other]
                reply: dict[str, Any] = {} if request_id is None else {"id": request_id}
                reply.update(event=op, arg=arg, connId=conn.conn_id)
                await conn.websocket.send(_dumps(reply), text=True)
            if op == "subscribe":
                if conn.ready_seq is None:
                    conn.ready_seq = next(self._ready_seq)
                    self._note_change()
                await self._send_snapshots(conn, {channel for _, channel, _ in accepted})
        self._note_change()

    def _argument_failure(self, conn: _Connection, arg: Any) -> tuple[str, str] | None:
        if type(arg) is not dict:
            return ("60013", "Invalid args")
        channel = arg.get("channel")
        if channel is None or channel == "":
            return ("60027", "Parameter channel can not be empty.")
        if type(channel) is not str or not all(
                arg.get(name) is None or type(arg[name]) is str
                for name in ("instId", "instType", "instFamily")):
            return ("60013", "Invalid args")
        if (channel in self._scan.private_channels) != conn.private:
            return ("60008", f"The current WebSocket endpoint does not support subscribing "
                             f"to {channel} channels. Please check the WebSocket URL")
        if conn.private and conn.account is None:
            return ("60011", "Please log in")
        return None

    async def _send_snapshots(self, conn: _Connection, channels: set[str]) -> None:
        """After (re-)subscribing positions or account: what was pushed so far, as a snapshot.

        Called with ``conn.lock`` held, so no push comes between acknowledgement and snapshot.
        """
        if conn.account is None or conn.account not in self._states:
            return
        state = self._states[conn.account]
        for channel in sorted(channels & _SNAPSHOT_CHANNELS):
            view = state.positions if channel == "positions" else state.balances
            snapshot = view.snapshot()
            if snapshot is not None:
                await conn.websocket.send(_dumps(snapshot), text=True)

    # -- REST ------------------------------------------------------------------------------

    async def _process_request(self, connection: ServerConnection,
                               request: Request) -> Response | None:
        """REST on the websocket port (GET only: websockets parses nothing else); let
        websocket upgrades on the two endpoints through."""
        if urlsplit(request.path).path in (PUBLIC_PATH, PRIVATE_PATH):
            return None
        headers = {name.lower(): value for name, value in request.headers.raw_items()}
        status, body = await self._rest("GET", request.path, headers, b"",
                                        time.perf_counter())
        return json_response(status, body)

    async def _serve_rest(self, request: HttpRequest) -> HttpResponse:
        """REST on the HTTP/1.1 listener: the same answers, and POST."""
        status, body = await self._rest(request.method, request.target, request.headers,
                                        request.body, request.arrived_at)
        return HttpResponse(status.value, orjson.dumps(body))

    async def _rest(self, method: str, target: str, headers: dict[str, str], body: bytes,
                    arrived_at: float) -> tuple[HTTPStatus, Any]:
        """Every REST answer, whichever port asked (``headers`` by lower-case name)."""
        split = urlsplit(target)
        if split.path not in _REST_METHODS:
            return HTTPStatus.NOT_FOUND, {"code": "404", "msg": f"Not Found: {split.path}",
                                          "data": []}
        if method != _REST_METHODS[split.path]:
            # docs: "Error Code > REST API > API class": 50115 Invalid request method.
            return HTTPStatus.METHOD_NOT_ALLOWED, {"code": "50115",
                                                   "msg": "Invalid request method.",
                                                   "data": []}
        query = _query_key(split.query)
        match split.path:
            case str(path) if path == _BATCH_ORDERS:
                return await self._batch_orders(headers, body, arrived_at)
            case str(path) if path in _SIGNED_GET_PATHS:
                return await self._private_rest(headers, path, split.query)
            case _ if _read_as_passed(split.path, query):
                await self._positioned.wait()
                return HTTPStatus.OK, self._public_rest.get((split.path, query), _EMPTY_BODY)
            case _:
                return HTTPStatus.OK, self._scan.public_bodies.get((split.path, query),
                                                                   _EMPTY_BODY)

    def _authenticated(self, headers: dict[str, str],
                       names: tuple[str, ...]) -> tuple[str, str] | tuple[HTTPStatus, Any]:
        """(api key, account) of a signed request, or the refusal (status, body).

        docs: "Error Code > REST API > API class": 50103/50104/50106/50107 for an empty
        header, 50111 for a key that names no account (all HTTP 401).
        """
        for name in names:
            if not headers.get(name.lower()):
                code = _EMPTY_HEADER_CODES[name]
                return HTTPStatus.UNAUTHORIZED, {
                    "code": code, "msg": f"Request header {name} cannot be empty", "data": []}
        api_key = headers["ok-access-key"]
        account = account_for_key(api_key, self._scan.accounts)
        if account is None:
            return HTTPStatus.UNAUTHORIZED, {"code": "50111", "msg": "Invalid OK-ACCESS-KEY",
                                             "data": []}
        return api_key, account

    async def _private_rest(self, headers: dict[str, str], path: str,
                            query: str) -> tuple[HTTPStatus, Any]:
        """A signed request, answered for the account its ``OK-ACCESS-KEY`` names, as of
        the push position (see the module docstring)."""
        match self._authenticated(headers, ("OK-ACCESS-KEY",)):
            case (str(api_key), str(account)):
                pass
            case refusal:
                return refusal
        await self._positioned.wait()
        state = self._state(account)
        params = dict(parse_qsl(query))
        match path:
            case RestPath.ORDERS_PENDING:
                return state.orders.page(params)
            case RestPath.POSITIONS:
                return HTTPStatus.OK, state.positions.rest_body()
            case RestPath.BALANCE:
                return HTTPStatus.OK, state.balances.rest_body()
            case RestPath.ACCOUNT_CONFIG:
                return HTTPStatus.OK, self._config_body(state, api_key)
            case str(order_path) if order_path == _ORDER:
                return _order_details(state, params)
            case _:
                if not params.get("instType"):
                    return HTTPStatus.BAD_REQUEST, _empty_parameter_body("instType")
                return _order_page([dict(order.row) for order in state.simulated
                                    if not order.live], params)

    def _config_body(self, state: _AccountState, api_key: str) -> Any:
        """``account/config`` as recorded, with ``perm`` as the key's (docs "Get account
        configuration": "read_only", "trade", "withdraw", comma separated)."""
        if state.config is None:
            return _EMPTY_BODY
        perm = "read_only" if api_key in self._faults.read_only_keys else "read_only,trade"
        rows = [{**row, "perm": perm} if type(row) is dict else row
                for row in state.config["data"]]
        return {**state.config, "data": rows}

    # -- the order simulator ---------------------------------------------------------------

    async def _batch_orders(self, headers: dict[str, str], body: bytes,
                            arrived_at: float) -> tuple[HTTPStatus, Any]:
        """``POST /api/v5/trade/batch-orders`` (docs "Place multiple orders")."""
        in_us = self._exchange_now_ms() * 1000
        account: str | None = None
        orders: list[Any] | None = None
        match self._authenticated(headers, _SIGNED_HEADERS):
            case (str(api_key), str(account)):
                status, answer = await self._place_batch(api_key, account, body, in_us,
                                                         arrived_at)
            case (HTTPStatus() as status, dict() as answer):
                pass
            case _:  # pragma: no cover - _authenticated returns one of the two
                raise AssertionError("unexpected authentication result")
        if answer.get("code") not in ("0", "1", "2"):
            orders = _orders_of(body)
            rows = [answer_row(_client_id_of(raw), "", "", (answer["code"], answer["msg"]),
                               in_us // 1000) for raw in orders or ()]
            self._received.extend(ReceivedOrder(arrived_at, account, raw, row)
                                  for raw, row in zip(orders or (), rows, strict=True))
        else:
            rows = answer["data"]
        if self._on_orders is not None:
            self._on_orders({"event": "orders", "account": account,
                             "http_status": status.value, "code": answer["code"],
                             "orders": [{"clOrdId": row["clOrdId"], "ordId": row["ordId"],
                                         "sCode": row["sCode"]} for row in rows]})
        return status, answer

    async def _place_batch(self, api_key: str, account: str, body: bytes, in_us: int,
                           arrived_at: float) -> tuple[HTTPStatus, dict[str, Any]]:
        self._order_requests += 1
        request_number = self._order_requests
        if request_number <= self._faults.rate_limit_requests:
            self._log.warning("replay_fault", fault="rate_limit", account=account,
                              request=request_number)
            # docs "Error Code > REST API > General class": 50011, HTTP 429.
            return HTTPStatus.TOO_MANY_REQUESTS, {"code": "50011", "msg": "Too Many Requests",
                                                  "data": []}
        if not body.strip():
            return HTTPStatus.BAD_REQUEST, {"code": "50000", "data": [],
                                            "msg": "Body for POST request cannot be empty."}
        try:
            orders = orjson.loads(body)
        except orjson.JSONDecodeError:
            return HTTPStatus.BAD_REQUEST, {"code": "50002", "msg": "JSON syntax error",
                                            "data": []}
        if type(orders) is not list or not orders:
            return HTTPStatus.BAD_REQUEST, {"code": "51000", "msg": "Parameter orders error",
                                            "data": []}
        if len(orders) > _BATCH_LIMIT:
            return HTTPStatus.OK, {"code": "51111", "data": [],
                                   "msg": f"Maximum {_BATCH_LIMIT} orders can be placed in "
                                          f"bulk."}
        if api_key in self._faults.read_only_keys:
            # docs "Error Code > REST API > API class": 50120 (HTTP 200).
            return HTTPStatus.OK, {"code": "50120", "data": [],
                                   "msg": "This API key doesn't have permission to use this "
                                          "function"}
        await self._positioned.wait()
        rows = [self._place(account, raw, arrived_at) for raw in orders]
        if request_number <= self._faults.timeout_requests:
            self._log.warning("replay_fault", fault="order_timeout", account=account,
                              request=request_number, seconds=self._faults.order_timeout_s)
            await asyncio.sleep(self._faults.order_timeout_s)
        return HTTPStatus.OK, batch_answer(rows, in_us, self._exchange_now_ms() * 1000)

    def _place(self, account: str, raw: Any, arrived_at: float) -> dict[str, str]:
        """Check one order and place it (its fill runs as a task); its answer row."""
        now_ms = self._exchange_now_ms()
        state = self._state(account)
        outcome = self._order_refusal(state, raw)
        if isinstance(outcome, ParsedOrder):
            order = self._accept(state, account, outcome, raw, now_ms)
            row = order.answer(now_ms)
        else:
            tag = raw.get("tag", "") if type(raw) is dict else ""
            row = answer_row(_client_id_of(raw), "", tag if type(tag) is str else "",
                             outcome, now_ms)
        self._received.append(ReceivedOrder(arrived_at, account, raw, row))
        return row

    def _order_refusal(self, state: _AccountState,
                       raw: Any) -> ParsedOrder | tuple[str, str]:
        order = check_order(raw)
        if not isinstance(order, ParsedOrder):
            return order
        if order.client_id and order.client_id in state.by_client_id:
            return DUPLICATE_CLIENT_ID
        if order.inst_id not in self._marks:
            return NO_PRICE
        position = position_size(state.positions.current(order.key))
        refusal = reduction_refusal(order, position, state.reserved(order.key))
        if refusal is not None:
            return refusal
        self._orders_checked += 1
        if self._orders_checked <= self._faults.reject_orders:
            self._log.warning("replay_fault", fault="reject_order", order=self._orders_checked,
                              code=self._faults.reject_code)
            return (self._faults.reject_code, self._faults.reject_message)
        return order

    def _accept(self, state: _AccountState, account: str, parsed: ParsedOrder,
                raw: dict[str, Any], now_ms: int) -> SimulatedOrder:
        position = state.positions.current(parsed.key) or {}
        order = SimulatedOrder.placed(
            account, parsed, raw, str(_ORDER_ID_BASE + next(self._order_ids)),
            _text_field(position, "instType") or _inst_type(parsed.inst_id),
            _text_field(position, "ccy"), _text_field(position, "lever"), now_ms)
        state.simulated.append(order)
        state.by_order_id[order.row["ordId"]] = order
        if parsed.client_id:
            state.by_client_id[parsed.client_id] = order
        state.orders.note_simulated(dict(order.row))
        self._orders_placed += 1
        number = self._orders_placed
        task = asyncio.create_task(self._execute(
            order, delayed=number <= self._faults.delay_fills,
            partial=number <= self._faults.partial_fills))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return order

    async def _execute(self, order: SimulatedOrder, *, delayed: bool, partial: bool) -> None:
        """An accepted market order's life: ``live``, then its fill at the mark of the time
        (or a part of it, then ``canceled``), each pushed, then the position's new size."""
        state = self._state(order.account)
        key = order.order.key
        await self._push_order(order)
        if delayed:
            self._log.warning("replay_fault", fault="fill_delay", ord_id=order.row["ordId"],
                              seconds=self._faults.fill_delay_s)
            await asyncio.sleep(self._faults.fill_delay_s)
        size = (partial_size(order.order.size, self._faults.partial_fill_ratio) if partial
                else order.order.size)
        if size > 0:
            now_ms = self._exchange_now_ms()
            order.fill(size, self._marks[order.order.inst_id], now_ms,
                       str(_TRADE_ID_BASE + next(self._trade_ids)))
            state.positions.closed[key] = state.positions.closed.get(key, Decimal(0)) + size
            await self._push_order(order)
        if partial:
            self._log.warning("replay_fault", fault="partial_fill", ord_id=order.row["ordId"],
                              filled=str(size))
            order.cancel(self._exchange_now_ms())
            await self._push_order(order)
        if size > 0:
            frame = state.positions.update_frame(key, self._exchange_now_ms())
            if frame is not None:
                await self._push_private(order.account, "positions", frame)

    async def _push_order(self, order: SimulatedOrder) -> None:
        state = self._state(order.account)
        state.orders.note_simulated(dict(order.row))
        await self._push_private(order.account, "orders",
                                 {"arg": {"channel": "orders", "instType": "ANY"},
                                  "data": [order.push_row()]})

    async def _push_private(self, account: str, channel: str, frame: dict[str, Any]) -> None:
        """A simulator push to the account's connection, if it subscribed the channel; the
        ``arg`` is the subscription's own."""
        await self._awake.wait()  # a stall holds these too
        conn = self._target(account)
        if conn is None:
            return
        arg = next((orjson.loads(key) for key, (subscribed, _) in conn.subscriptions.items()
                    if subscribed == channel), None)
        if arg is None:
            return
        with contextlib.suppress(ConnectionClosed):
            await conn.send(orjson.dumps({**frame, "arg": arg}))

    def _exchange_now_ms(self) -> int:
        """The replay clock: the latest pushed frame's ``recv_ts`` and the time since (at
        ``speed``); wall-clock time before the first push."""
        if self._last_recv_ms is None:
            return int(time.time() * 1000)
        elapsed = time.monotonic() - self._last_push_at
        return self._last_recv_ms + int(elapsed * 1000 * (self._speed or 1.0))


@dataclass(frozen=True, slots=True)
class ReceivedOrder:
    """One order of a ``batch-orders`` request: when the request arrived
    (:func:`time.perf_counter`), the account its key named (None: refused before that),
    the order as the body held it, and its ``data`` row in the answer (for a request
    refused as a whole, a row with the request's code)."""

    arrived_at: float
    account: str | None
    order: Any
    answer: dict[str, str]


def _order_details(state: _AccountState, params: dict[str, str]) -> tuple[HTTPStatus, Any]:
    """``GET /api/v5/trade/order`` (docs "Get order details"): by ``ordId``, else
    ``clOrdId``, among the simulated orders of the instrument."""
    inst_id = params.get("instId")
    if not inst_id:
        return HTTPStatus.BAD_REQUEST, _empty_parameter_body("instId")
    order_id, client_id = params.get("ordId"), params.get("clOrdId")
    if not order_id and not client_id:
        return HTTPStatus.OK, {"code": "51003", "data": [],
                               "msg": "Either client order ID or order ID is required."}
    order = (state.by_order_id.get(order_id) if order_id
             else state.by_client_id.get(client_id or ""))
    if order is None or order.order.inst_id != inst_id:
        return HTTPStatus.OK, {"code": "51603", "msg": "Order does not exist.", "data": []}
    return HTTPStatus.OK, {"code": "0", "msg": "", "data": [dict(order.row)]}


def _orders_of(body: bytes) -> list[Any] | None:
    try:
        orders = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return orders if type(orders) is list and len(orders) <= _BATCH_LIMIT else None


def _client_id_of(raw: Any) -> str:
    client_id = raw.get("clOrdId", "") if type(raw) is dict else ""
    return client_id if type(client_id) is str else ""


def _text_field(row: dict[str, Any], name: str) -> str:
    value = row.get(name, "")
    return value if type(value) is str else ""


def _inst_type(inst_id: str) -> str:
    """An instrument's type from its id (docs "Get instruments", ``instId`` formats)."""
    parts = inst_id.split("-")
    if len(parts) == 3:
        return "SWAP" if parts[2] == "SWAP" else "FUTURES"
    return "OPTION" if len(parts) == 5 else "MARGIN"


def _read_as_passed(path: str, query: Query) -> bool:
    """Public REST served as of the push position rather than from the whole recording:
    discount-rate tiers, and borrowing tiers (``position-tiers`` of ``instType=MARGIN``),
    which the live feed loads as currencies come into use."""
    if path == RestPath.DISCOUNT_RATE:
        return True
    return path == RestPath.POSITION_TIERS and ("instType", "MARGIN") in query


async def serve(recording: Path, host: str, port: int, speed: float | None, faults: Faults,
                status: Callable[[dict[str, Any]], None], *, rest_port: int = 0) -> None:
    """Serve ``recording`` until cancelled (``riskmon replay-server``).

    Calls ``status`` with ``{"event": "listening", "ws_url", "rest_url", "port",
    "rest_port"}`` once bound (``rest_url`` is the websocket port's GET-only REST;
    ``rest_port`` the HTTP/1.1 listener's, GET and POST), ``{"event": "orders", ...}`` per
    ``batch-orders`` request, and ``{"event": "finished", "frames": N}`` after the last
    frame; it keeps serving (pongs, acknowledgements, REST, orders) afterwards.

    Raises:
        RecordingError: the recording is missing or unreadable.
        ConfigError: ``speed`` is not positive.
    """
    server = ReplayServer(recording, speed=speed, faults=faults, on_orders=status)
    try:
        bound = await server.start(host, port, rest_port)
        status({"event": "listening", "ws_url": f"ws://{url_host(host)}:{bound}",
                "rest_url": f"http://{url_host(host)}:{bound}", "port": bound,
                "rest_port": server.rest_port})
        status({"event": "finished", "frames": await server.wait_finished()})
        await asyncio.get_running_loop().create_future()  # until cancelled
    finally:
        await server.close()
