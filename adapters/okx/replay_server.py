"""An OKX v5 protocol server over a recording: ``riskmon replay-server`` (SPEC 3.3).

:class:`ReplayServer` serves a recording (SPEC 3.2) so that the live OKX adapter can be
pointed at it unchanged: ``ws://H:P/ws/v5/public``, ``ws://H:P/ws/v5/private`` and the REST
base ``http://H:P``, all on one port. Message formats and error codes follow the OKX v5 docs
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
  requests that are not websocket upgrades). Signed, by the ``OK-ACCESS-KEY`` header
  (mapped to an account like the ``apiKey`` at login; 401 with 50103 or 50111 otherwise):
  ``/api/v5/trade/orders-pending``, ``/api/v5/account/config``,
  ``/api/v5/account/balance`` and ``/api/v5/account/positions``. Public:
  ``/api/v5/public/instruments``, ``/api/v5/public/position-tiers`` and
  ``/api/v5/public/discount-rate-interest-free-quota``. Other paths, websocket ones
  included, are 404.

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

Faults (:class:`Faults`, for integration tests), counted in recorded frames pushed: drop
(abort the TCP connection of the next frame, no close frame), garbage (a text frame that is
not JSON), stall (no pushes, pongs or acknowledgements on any websocket connection: what
arrives is held, as by a frozen server, and answered afterwards; REST is not held, since
websockets would drop an HTTP request held past its 10 s opening-handshake timeout),
failed logins (60009 Login failed) and the 64008 service-upgrade ``notice`` to every
connection, which are then closed (code 1012) after ``notice_close_s``; pushing resumes on
new connections.

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
import email.utils
import itertools
import math
import re
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
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from adapters.logging import get_logger
from adapters.okx.decode import RestPath
from monitor.errors import ConfigError, RiskmonError

__all__ = ["NO_FAULTS", "PRIVATE_PATH", "PUBLIC_PATH", "Faults", "RecordingError",
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
_GARBAGE: Final = "riskmon replay-server: a frame that is not JSON {"
_NOTICE_CLOSE_CODE: Final = 1012  # "service restart" (RFC 6455 registry)
_READ_CHUNK_BYTES: Final = 1 << 20
_SHOWN_REQUEST_CHARS: Final = 200


class RecordingError(RiskmonError):
    """The recording cannot be served: missing or unreadable (``path`` names it)."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"recording {path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True, slots=True)
class Faults:
    """Faults to inject, all off by default; counts are of recorded frames pushed.

    - ``drop_after=N``: after every N frames, up to ``drop_times`` times, abort the TCP
      connection (no close frame) the next frame is destined for.
    - ``garbage_after=N``: once, send a text frame that is not JSON to the connection of the
      next frame, before it.
    - ``stall_after=N``: once, go silent on every websocket connection for ``stall_s``
      seconds (no pushes, pongs or acknowledgements; requests are answered afterwards).
    - ``fail_logins=N``: answer the first N well-formed logins with 60009 Login failed.
    - ``notice_after=N``: once, send the 64008 ``notice`` to every connection and close them
      (code 1012) ``notice_close_s`` seconds later; pushing waits for new connections.

    Raises:
        ConfigError: a count is negative (``drop_after`` must be positive), or a duration
            negative or not finite; the key is the field name.
    """

    drop_after: int | None = None
    drop_times: int = 1
    garbage_after: int | None = None
    stall_after: int | None = None
    stall_s: float = 40.0
    fail_logins: int = 0
    notice_after: int | None = None
    notice_close_s: float = 1.0

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None:
                continue
            if item.name.endswith("_s"):
                if type(value) not in (int, float) or not 0 <= value < math.inf:
                    raise ConfigError(item.name, "must be a non-negative number of seconds")
            elif type(value) is not int or value < 0:
                raise ConfigError(item.name, "must be a non-negative integer")
        if self.drop_after == 0:
            raise ConfigError("drop_after", "must be a positive integer")


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
    """An account's live orders, as ``GET /api/v5/trade/orders-pending`` would list them."""

    def __init__(self) -> None:
        self._orders: dict[str, dict[str, Any]] = {}

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
        for row in rows:
            if type(row) is not dict or type(row.get("ordId")) is not str:
                continue
            state = row.get("state")
            if state in _LIVE_ORDER_STATES:
                self._orders[row["ordId"]] = row
            elif state in _FINAL_ORDER_STATES:
                self._orders.pop(row["ordId"], None)

    def page(self, params: dict[str, str]) -> tuple[HTTPStatus, dict[str, Any]]:
        """The response to a request with these query parameters (see the module docstring)."""
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
        rows = [row for row in self._orders.values() if self._selected(row, params)]
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

    @staticmethod
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


def _position_key(row: dict[str, Any]) -> tuple[str, str, str]:
    """What identifies a position (OKX): instrument, margin mode and side."""
    mode = row.get("mgnMode")
    side = row.get("posSide")
    return (row["instId"], mode if type(mode) is str else "cross",
            side if type(side) is str else "net")


class _PositionsView:
    """The latest ``positions`` row pushed (or recorded by REST) per (``instId``,
    ``mgnMode``, ``posSide``)."""

    def __init__(self) -> None:
        self._arg: dict[str, Any] | None = None
        self._rows: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._known = False
        # The recorded REST body, while no push came after it: answered as it is.
        self._recorded: Any = None

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

    def _open_rows(self) -> list[dict[str, Any]]:
        return [row for row in self._rows.values() if not _is_closed(row)]

    def snapshot(self) -> dict[str, Any] | None:
        if self._arg is None:
            return None
        return _snapshot_frame(self._arg, self._open_rows())

    def rest_body(self) -> Any:
        """The answer to ``GET /api/v5/account/positions``: the recorded body when nothing
        was pushed since, else the open positions so far (none before anything is known)."""
        if self._recorded is not None:
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


def _json_response(status: HTTPStatus, body: Any) -> Response:
    data = orjson.dumps(body)
    headers = Headers([
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Connection", "close"),
        ("Content-Length", str(len(data))),
        ("Content-Type", "application/json"),
    ])
    return Response(status.value, status.phrase, headers, data)


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


@dataclass
class _Pace:
    """When each frame is due: ``start + lag + (recv - first_recv) / speed``."""

    speed: float | None
    first_recv_ms: int
    start: float
    lag: float = 0.0

    def delay(self, recv_ms: int, now: float) -> float:
        if self.speed is None:
            return 0.0
        return self.start + self.lag + (recv_ms - self.first_recv_ms) / 1000 / self.speed - now

    def rebase(self, recv_ms: int, now: float) -> None:
        """After a pause, make the frame due now at the latest, and the rest after it."""
        late = -self.delay(recv_ms, now)
        if late > 0:
            self.lag += late


class ReplayServer:
    """Serves one recording over the OKX v5 websocket and REST protocols.

    ``speed`` paces the pushes at N times the recorded pace (None: as fast as the clients
    take them); ``switch_gap_s`` is the least time between two pushes to different
    connections; ``subscribe_grace_s`` how long a frame waits for its channel to be
    subscribed. See the module docstring for the protocol.

    Raises:
        RecordingError: the recording is missing or unreadable.
        ConfigError: ``speed`` is not positive, or a duration is negative.
    """

    def __init__(self, recording: Path, *, speed: float | None = 1.0,
                 faults: Faults = NO_FAULTS, switch_gap_s: float = 0.01,
                 subscribe_grace_s: float = 5.0) -> None:
        if speed is not None and not 0 < speed < math.inf:
            raise ConfigError("speed", "must be a positive number (None: no pacing)")
        for name, value in (("switch_gap_s", switch_gap_s),
                            ("subscribe_grace_s", subscribe_grace_s)):
            if not 0 <= value < math.inf:
                raise ConfigError(name, "must be a non-negative number of seconds")
        _check_readable(recording)
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
        self._awake = asyncio.Event()  # cleared during a stall
        self._awake.set()
        self._positioned = asyncio.Event()  # REST lines before the first frame are applied
        # Public REST bodies served as of the push position (_read_as_passed).
        self._public_rest: dict[tuple[str, Query], Any] = {}
        self._pushed = 0
        self._last_target: _Connection | None = None
        self._last_push_at = 0.0
        self._logins = 0
        self._drops_left = faults.drop_times if faults.drop_after is not None else 0
        self._next_drop_at = faults.drop_after or 0
        self._garbage_sent = False
        self._stall_armed = False
        self._stall_pending = False
        self._notice_sent = False
        self._logged_unwanted: set[tuple[str | None, str, str | None]] = set()

    # -- public API ------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Scan the recording, start listening and pushing; return the bound port.

        With ``port=0`` the system picks a free port. Give an address rather than a name
        that resolves to several (``localhost``): each family would get its own port.
        """
        if self._server is not None:
            raise RuntimeError("the replay server is already started")
        try:
            self._scan = await asyncio.to_thread(_scan, self._recording)
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
        self._finished = asyncio.get_running_loop().create_future()
        bound: int = self._server.sockets[0].getsockname()[1]
        self._pump_task = asyncio.create_task(self._pump(), name="replay-server-pump")
        self._log.info("replay_server_listening", host=host, port=bound)
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
            await self._wait_until(self._all_ready)
            self._log.info("replay_started", speed=self._speed)
            pace = _Pace(self._speed, first.recv_ms, time.monotonic())
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

    async def _push(self, line: _FrameLine, pace: _Pace) -> None:
        """Push one frame to its connection, waiting for whatever it needs first."""
        payload = orjson.dumps(line.frame)
        grace: tuple[_Connection, float] | None = None
        while True:
            if self._stall_pending:
                await self._stall()
                pace.rebase(line.recv_ms, time.monotonic())
            if self._faults.notice_after == self._pushed and not self._notice_sent:
                await self._send_notices()
            if not self._all_ready():
                self._log.info("replay_paused", frames=self._pushed)
                await self._wait_until(self._all_ready)
                self._log.info("replay_resumed", frames=self._pushed)
                pace.rebase(line.recv_ms, time.monotonic())
            target = self._target(line.account)
            assert target is not None  # all ready
            if self._take_drop():
                self._abort(target)
                continue
            delay = pace.delay(line.recv_ms, time.monotonic())
            if delay > 0:
                await asyncio.sleep(delay)
                continue  # the target may be gone by now: check everything again
            key = (line.channel, None if line.account is not None else line.inst_id)
            if key not in target.unwanted and not target.wants(line):
                if grace is None or grace[0] is not target:
                    grace = (target, time.monotonic() + self._grace_s)
                remaining = grace[1] - time.monotonic()
                if remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(remaining):
                            await self._wait_until(self._subscribed_or_moved(target, line))
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
                await target.send(payload)
            except ConnectionClosed:
                target.alive = False
                continue
            break
        self._pushed += 1
        self._last_target = target
        self._last_push_at = time.monotonic()
        self._note_pushed(line)
        self._arm_stall()

    def _subscribed_or_moved(self, target: _Connection,
                             line: _FrameLine) -> Callable[[], bool]:
        """Whether ``target`` subscribed the frame's channel, or is no longer its target."""
        return lambda: self._target(line.account) is not target or target.wants(line)

    def _all_ready(self) -> bool:
        """Whether every role the recording needs has a ready connection."""
        if self._scan.needs_public and self._target(None) is None:
            return False
        return all(self._target(account) is not None for account in self._scan.needed_accounts)

    def _target(self, account: str | None) -> _Connection | None:
        """The latest ready connection of a role: public (None) or the account's."""
        found: _Connection | None = None
        for conn in self._connections:
            if (conn.alive and not conn.retiring and conn.ready_seq is not None
                    and conn.private == (account is not None) and conn.account == account
                    and (found is None or conn.ready_seq > (found.ready_seq or 0))):
                found = conn
        return found

    async def _wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait for ``predicate`` to hold, re-checking it whenever a connection changes."""
        while not predicate():
            self._changed.clear()
            await self._changed.wait()

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

    def _take_drop(self) -> bool:
        after = self._faults.drop_after
        if after is None or self._drops_left == 0 or self._pushed != self._next_drop_at:
            return False
        self._drops_left -= 1
        self._next_drop_at += after
        return True

    def _abort(self, conn: _Connection) -> None:
        self._log.warning("replay_fault", fault="drop", conn_id=conn.conn_id,
                          account=conn.account, frames=self._pushed)
        conn.alive = False
        conn.websocket.transport.abort()  # no close frame: the TCP connection just ends
        self._changed.set()

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
        self._changed.set()

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
            self._changed.set()
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
            account = self._account_for_key(request["args"][0]["apiKey"])
            if account is None:
                failure = ("60005", "Invalid apiKey")
            else:
                conn.account = account
                self._log.info("replay_login", conn_id=conn.conn_id, account=account)
                await conn.send(_dumps({"event": "login", "code": "0", "msg": "",
                                        "connId": conn.conn_id}))
                self._changed.set()
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

    def _account_for_key(self, api_key: str) -> str | None:
        """The account an API key stands for: the one it names, else the only one."""
        if api_key in self._scan.accounts:
            return api_key
        if len(self._scan.accounts) == 1:
            return next(iter(self._scan.accounts))
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
                await self._send_snapshots(conn, {channel for _, channel, _ in accepted})
        self._changed.set()

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
        """Answer REST requests; let websocket upgrades on the two endpoints through."""
        split = urlsplit(request.path)
        if split.path in (PUBLIC_PATH, PRIVATE_PATH):
            return None
        query = _query_key(split.query)
        match split.path:
            case RestPath.ORDERS_PENDING | RestPath.ACCOUNT_CONFIG | RestPath.BALANCE | (
                    RestPath.POSITIONS):
                return await self._private_rest(request, split.path, split.query)
            case _ if _read_as_passed(split.path, query):
                await self._positioned.wait()
                return _json_response(HTTPStatus.OK,
                                      self._public_rest.get((split.path, query), _EMPTY_BODY))
            case RestPath.INSTRUMENTS | RestPath.POSITION_TIERS:
                body = self._scan.public_bodies.get((split.path, query), _EMPTY_BODY)
                return _json_response(HTTPStatus.OK, body)
            case _:
                return _json_response(HTTPStatus.NOT_FOUND,
                                      {"code": "404", "msg": f"Not Found: {split.path}",
                                       "data": []})

    async def _private_rest(self, request: Request, path: str, query: str) -> Response:
        """A signed request, answered for the account its ``OK-ACCESS-KEY`` names, as of
        the push position (see the module docstring)."""
        # docs: "Error Code > REST API > Authentication" for the two refusals.
        api_key = request.headers.get("OK-ACCESS-KEY")
        if not api_key:
            return _json_response(HTTPStatus.UNAUTHORIZED, {
                "code": "50103", "msg": "Request header OK-ACCESS-KEY cannot be empty",
                "data": []})
        account = self._account_for_key(api_key)
        if account is None:
            return _json_response(HTTPStatus.UNAUTHORIZED, {
                "code": "50111", "msg": "Invalid OK-ACCESS-KEY", "data": []})
        await self._positioned.wait()
        state = self._state(account)
        match path:
            case RestPath.ORDERS_PENDING:
                status, body = state.orders.page(dict(parse_qsl(query)))
                return _json_response(status, body)
            case RestPath.POSITIONS:
                return _json_response(HTTPStatus.OK, state.positions.rest_body())
            case RestPath.BALANCE:
                return _json_response(HTTPStatus.OK, state.balances.rest_body())
            case _:
                return _json_response(HTTPStatus.OK,
                                      _EMPTY_BODY if state.config is None else state.config)


def _read_as_passed(path: str, query: Query) -> bool:
    """Public REST served as of the push position rather than from the whole recording:
    discount-rate tiers, and borrowing tiers (``position-tiers`` of ``instType=MARGIN``),
    which the live feed loads as currencies come into use."""
    if path == RestPath.DISCOUNT_RATE:
        return True
    return path == RestPath.POSITION_TIERS and ("instType", "MARGIN") in query


def _check_readable(recording: Path) -> None:
    if not recording.is_file():
        raise RecordingError(recording, "not found (or not a regular file)")
    try:
        with recording.open("rb"):
            pass
    except OSError as error:
        raise RecordingError(recording, f"cannot be read ({error.strerror})") from error


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def serve(recording: Path, host: str, port: int, speed: float | None, faults: Faults,
                status: Callable[[dict[str, Any]], None]) -> None:
    """Serve ``recording`` until cancelled (``riskmon replay-server``).

    Calls ``status`` with ``{"event": "listening", "ws_url", "rest_url", "port"}`` once
    bound, and ``{"event": "finished", "frames": N}`` after the last frame; it keeps
    serving (pongs, acknowledgements, REST) afterwards.

    Raises:
        RecordingError: the recording is missing or unreadable.
        ConfigError: ``speed`` is not positive.
    """
    server = ReplayServer(recording, speed=speed, faults=faults)
    try:
        bound = await server.start(host, port)
        status({"event": "listening", "ws_url": f"ws://{_url_host(host)}:{bound}",
                "rest_url": f"http://{_url_host(host)}:{bound}", "port": bound})
        status({"event": "finished", "frames": await server.wait_finished()})
        await asyncio.get_running_loop().create_future()  # until cancelled
    finally:
        await server.close()
