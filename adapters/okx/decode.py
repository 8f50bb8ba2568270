"""Pure decoder from OKX v5 frames and REST bodies to riskmon events (SPEC 3.1, 3.2).

:class:`OkxDecoder` turns one line of a recording, one websocket frame or one REST response
body into the exchange-agnostic events of :mod:`monitor.core.events`, or raises
:class:`~monitor.core.errors.BadInput` with a reason a person can act on. It does no I/O, reads no
clock and logs nothing: time comes in as ``recv_ms`` and from the frames themselves.

A frame decodes entirely or not at all: rows are validated before any event is built or any
decoder state changes, so the caller can quarantine the whole line and carry on.

What is decoded (field names from https://www.okx.com/docs-v5/en/):

- public ``mark-price`` -> :class:`MarkPrice`; ``index-tickers`` -> :class:`IndexPrice`.
- public ``instruments`` channel and ``GET /api/v5/public/instruments``, together with
  ``GET /api/v5/public/position-tiers`` -> :class:`InstrumentUpdate`, once both the spec and
  the maintenance tiers of its instrument family are known (the decoder keeps both).
- ``GET /api/v5/public/position-tiers?instType=MARGIN&tdMode=cross&ccy=C`` ->
  :class:`BorrowTiersUpdate` for ``C`` (the borrowing margin tiers, SPEC 1.4).
- ``GET /api/v5/public/discount-rate-interest-free-quota`` -> one
  :class:`CollateralTiersUpdate` per currency (see :func:`_parse_discount_rates` for the
  units of the bands).
- private ``orders`` channel -> :class:`OrderUpdate`; ``GET /api/v5/trade/orders-pending``
  -> :class:`OrdersSnapshot`.
- private ``positions`` channel -> :class:`PositionUpdate` / :class:`PositionSnapshot`;
  ``GET /api/v5/account/positions`` (the whole list) -> :class:`PositionSnapshot`.
  One-way (``posSide`` net) and hedge mode (``long`` / ``short``, where OKX gives ``pos``
  as a positive size: a short's contracts are made negative), cross and isolated
  (``mgnMode``; an isolated position carries its ``margin``), with the exchange's own
  ``mgnRatio``, ``mmr``, ``imr`` of the position. A position is identified by
  (``instId``, ``mgnMode``, ``posSide``).
- private ``account`` channel and ``GET /api/v5/account/balance`` (a full snapshot) ->
  :class:`BalanceUpdate`, with the exchange's account figures (``mgnRatio``, ``adjEq``,
  ``imr``, ``mmr``, ``totalEq``) and, per currency, its pool's figures when OKX reports
  them (``details[].mgnRatio``, ``eq``, ``imr``, ``mmr``: single-currency margin mode).
- ``GET /api/v5/account/config`` -> :class:`AccountConfigUpdate` (``acctLv``: 2
  single-currency, 3 multi-currency, 4 portfolio margin, anything else unsupported;
  ``posMode`` ``long_short_mode`` is hedge mode). An empty ``data`` list is nothing.

Skipped silently: ``SPOT`` and ``MARGIN`` (spot margin) rows of the instruments, orders
and positions data, and orders whose ``tdMode`` is a spot one (``cash``,
``spot_isolated``). Spot borrowing is not lost by this: it appears in the balances as a
negative cash balance and a liability (SPEC 1.4). ``OPTION`` positions and orders are
passed on as positions and orders on their instrument: the engine has no spec for
options (only ``SWAP`` and ``FUTURES`` specs are decoded), so it reports the account's
risk as unknown instead of silently leaving the options out (SPEC 1.5, "nothing unknown
counts as zero"). (Mark prices are passed on whatever their type: the engine decides
which it needs.)

Event times are the exchange's own: ``ts`` of prices, ``uTime`` of orders and account
pushes, and for positions the later of ``uTime`` (last change) and ``pTime`` (push time),
so that a snapshot of positions untouched for days is not dated days ago. REST responses
(instrument specs, tiers, discount rates, the account's configuration, balance, positions
and ``orders-pending``) are the state at the time of the response, which has no exchange
time of its own: their events are ``UNTIMED`` and the engine dates them by its clock.

Operational frames carry no domain data and decode to ``[]``: subscribe / unsubscribe / login
acknowledgements, ``error``, ``notice`` and ``channel-conn-count`` events, the text ``pong``,
replies to websocket trade operations, and channels or REST paths this module does not know.

The live feed's reader hands messages on unparsed; :func:`mark_price_key` reads the
instrument of a mark-price push from its text (for conflation) without parsing it, and is
certain about what it recognises.

Plausibility limits (issue 15, "bad input never moves state"). What the decoder can judge
from one line alone it judges here, with fixed limits; what needs state (the band around
the last price, the clock, the order of events) the engine judges with the ``[bounds]``
configuration (monitor.core.engine). The field readers and their limits are adapters/wire.py's,
shared with the other venues' decoders.

- Numbers are read only from their canonical decimal spelling, as OKX writes them
  (``"42133.7"``, ``"-0.5"``, ``"0"``; docs: every numeric field is a String of plain
  decimals, and none of the captured payloads in tests/fixtures/okx has anything else):
  no spaces, signs other than a leading ``-``, underscores, exponents, ``inf`` or ``nan``,
  at most :data:`NUMBER_LENGTH` characters. (JSON numbers, which OKX does not send either,
  are taken as parsed.) Every number is finite with a magnitude of at most
  :data:`MAGNITUDE_LIMIT` (1e18).
- Prices (``markPx``, ``idxPx``, order ``px``, position ``avgPx``) lie in
  [:data:`PRICE_MIN`, :data:`PRICE_MAX`] = [1e-12, 1e12]: positive, finite, no
  subnormal ``1e-320``, no ``1e308``.
- Timestamps (``ts``, ``uTime``, ``pTime``, ``recv_ts``) are whole milliseconds in
  [0, :data:`TIMESTAMP_MAX_MS`] (the year 2200), written with ASCII digits: no ``ts``
  of 2^63 or more reaches the engine or SQLite. (A mark price's ``ts`` is checked by
  value only, as ``int()`` reads it: the hot path spends no scan on its spelling.)
- Identifiers (``instId``, ``ccy``, ``ordId``, the other codes, account names) are
  printable ASCII, at most :data:`IDENTIFIER_LENGTH_LIMIT` characters: no NUL, no control
  characters. The mark-price path leaves this to the engine, which checks an instrument
  id the first time it sees it (monitor.core.events.identifier_problem; see the hot path).
- Nothing else escapes: every input, whatever its type, depth or size, decodes or raises
  :class:`BadInput` (tests/test_fuzz_input.py).

Paged snapshots. OKX splits large ``positions`` and ``account`` snapshots into pages
(``curPage`` 1, 2, ... and ``lastPage``). The decoder buffers the pages per account and emits
one event on the last page. When a page of the snapshot in progress is lost (rejected as
:class:`BadInput`, or missing from the sequence), the snapshot is *tainted*: its last page
yields an update (:class:`PositionUpdate`, or :class:`BalanceUpdate` with
``snapshot=False``) instead of a full snapshot, so that nothing absent from the surviving
pages is wrongly closed or zeroed. A frame without an ``eventType`` is read as an update,
for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Final, Generic, TypeVar
from urllib.parse import parse_qs, urlsplit

import orjson

from adapters.wire import (
    TIMESTAMP_MAX_MS,
    account_of,
    check_account,
    check_recv_ms,
    flag_field,
    json_kind,
    new_mark_price,
    number_field,
    optional_number_field,
    optional_text_field,
    optional_timestamp_field,
    plain_price,
    plain_timestamp,
    require_account,
    rows_of,
    show,
    text_field,
    timestamp_field,
)
from monitor.core.errors import BadInput
from monitor.core.events import (
    UNTIMED,
    AccountConfigUpdate,
    AccountMode,
    BalanceUpdate,
    BorrowTiersUpdate,
    CollateralTiersUpdate,
    CurrencyBalance,
    Event,
    ExchangeAccountFigures,
    ExchangePositionFigures,
    IndexPrice,
    InstrumentUpdate,
    MarginMode,
    Order,
    OrdersSnapshot,
    OrderUpdate,
    Position,
    PositionSide,
    PositionSnapshot,
    PositionUpdate,
)
from monitor.core.instruments import (
    BorrowTier,
    CollateralTier,
    CollateralTiers,
    Instrument,
    Tier,
    validate_borrow_tiers,
    validate_collateral,
    validate_tiers,
)

__all__ = ["OkxDecoder", "RestPath", "mark_price_key"]

_INFINITY: Final = float("inf")
_loads: Final = orjson.loads

# Plausibility limits (see the module docstring).
# The characters of a canonical positive decimal; what float() takes beyond them (spaces,
# "+", "_", exponents, "inf", "nan", non-ASCII digits) is not how OKX writes a price.


# Instrument types of positions and orders the margin model leaves to the balances (see
# the module docstring); OPTION rows are passed on, for the engine to report as unknown.
_OUT_OF_SCOPE_TYPES: Final = frozenset({"SPOT", "MARGIN"})
# Instrument specs decoded (SPEC 1.1: linear and inverse contracts).
_CONTRACT_TYPES: Final = frozenset({"SWAP", "FUTURES"})
# Trade modes of spot orders (docs: "POST / Place order", ``tdMode``: ``cash`` for spot
# without margin, ``spot_isolated`` for spot copy trading): out of scope like SPOT rows.
_SPOT_TRADE_MODES: Final = frozenset({"cash", "spot_isolated"})
_MARGIN_MODES: Final[dict[str, MarginMode]] = {"cross": "cross", "isolated": "isolated"}
_POSITION_SIDES: Final[dict[str, PositionSide]] = {"net": "net", "long": "long",
                                                   "short": "short"}
# docs: "Trading Account > REST API > Get account configuration", ``acctLv``.
_ACCOUNT_LEVELS: Final[dict[str, AccountMode]] = {
    "2": "single_currency",  # "Spot and futures mode"
    "3": "multi_currency",
    "4": "portfolio",
}
# ``posMode``: ``long_short_mode`` (hedge) or ``net_mode`` (one-way).
_POSITION_MODES: Final[dict[str, bool]] = {"long_short_mode": True, "net_mode": False}

# Order states of the orders channel (docs: "WS / Order channel", field ``state``).
_ORDER_STATE_LIVE: Final[dict[str, bool]] = {
    "live": True,
    "partially_filled": True,
    "filled": False,
    "canceled": False,
    "mmp_canceled": False,
}
# Market orders carry ``px`` "" (and optimal_limit_ioc fills at the best available price):
# the engine prices them at the mark (SPEC 1.3).
_MARKET_ORDER_TYPES: Final = frozenset({"market", "optimal_limit_ioc"})
# Order types that always rest at a stated price (docs: "POST / Place order", ``px`` is
# "only applicable to limit, post_only, fok, ioc, mmp, mmp_and_post_only").
_PRICED_ORDER_TYPES: Final = frozenset(
    {"limit", "post_only", "fok", "ioc", "mmp", "mmp_and_post_only", "op_fok"}
)


class RestPath:
    """The REST endpoints :meth:`OkxDecoder.decode_rest` understands (SPEC 3.1)."""

    INSTRUMENTS: Final = "/api/v5/public/instruments"
    POSITION_TIERS: Final = "/api/v5/public/position-tiers"
    DISCOUNT_RATE: Final = "/api/v5/public/discount-rate-interest-free-quota"
    ORDERS_PENDING: Final = "/api/v5/trade/orders-pending"
    ACCOUNT_CONFIG: Final = "/api/v5/account/config"
    BALANCE: Final = "/api/v5/account/balance"
    POSITIONS: Final = "/api/v5/account/positions"


# --- the hot path -------------------------------------------------------------------------


def _decode_mark_prices(data: Any, recv_ms: int) -> list[Event]:
    """Mark price rows ``{instType, instId, markPx, ts}`` -> :class:`MarkPrice` events.

    Docs: "Public Data > WebSocket > Mark price channel".
    """
    # Written flat on purpose: every mark-price tick of every instrument held goes through
    # here (the replay benchmark pushes a million of them and needs the pipeline at >= 40 %
    # of bare orjson.loads), so it avoids helper calls and intermediate objects. It makes the
    # same checks as the generic helpers below; keep the two in step. The plausibility
    # checks (issue 15) add one str.strip per price and one comparison per timestamp; the
    # price and timestamp ranges reuse the comparisons that were here already. The instrument
    # id is checked by the engine the first time it sees one (a dict miss there), not per
    # tick here.
    if type(data) is not list:
        raise BadInput(f"mark-price data {show(data)} is not an array")
    single = len(data) == 1  # the usual frame: return [mark], a list allocated once
    events: list[Event] = []
    for row in data:
        if type(row) is not dict:
            raise BadInput(f"mark-price data row {show(row)} is not an object")
        inst_id = row.get("instId")
        if type(inst_id) is not str or not inst_id:
            raise BadInput(f"mark-price instId {show(inst_id)} is not an instrument id")
        mark = new_mark_price(
            inst_id, plain_price(row.get("markPx"), "markPx", "mark-price", inst_id),
            plain_timestamp(row.get("ts"), "ts", "mark-price", inst_id), recv_ms)
        if single:
            return [mark]
        events.append(mark)
    return events


# --- reading a mark-price push without parsing it (the live feed's reader) ----------------

# How OKX starts every mark-price push (docs: "Public Data > WebSocket > Mark price channel").
_MARK_PUSH_HEAD: Final = '{"arg":{"channel":"mark-price","instId":"'
_MARK_PUSH_HEAD_LENGTH: Final = len(_MARK_PUSH_HEAD)


def mark_price_key(text: str) -> str | None:
    """The instrument of a mark-price push, read from its text without parsing it; None
    unless the text is certain to be one (or is not JSON at all).

    Certain means the text is ``{"arg":{"channel":"mark-price","instId":"X"},"data":[...]}``
    with no ``]`` inside the data array (the rows of a mark-price push hold only strings
    without one) and no quote or backslash in ``X``. Parsed, such a text is an object with
    exactly the keys ``arg``, which is channel and instId and nothing else, and ``data``:
    no ``event`` key, no second ``arg`` (JSON allows duplicate keys, the last one winning),
    whatever the rows say. Anything else (spaces, other keys, other key orders) is None, so
    the message is treated as any other: parsed if it may be an event, never conflated.
    """
    if not text.startswith(_MARK_PUSH_HEAD):
        return None
    start = _MARK_PUSH_HEAD_LENGTH
    end = text.find('"},"data":[', start)
    inst_id = text[start:end]
    # The first "]" closes the data array and is the last but one character: nothing
    # follows the array but the object's closing brace.
    if (end <= start or '"' in inst_id or "\\" in inst_id
            or text.find("]", end) != len(text) - 2):
        return None
    return inst_id


# --- the decoder --------------------------------------------------------------------------

_Item = TypeVar("_Item")


class _Pages(Generic[_Item]):
    """The pages received so far of one account's snapshot.

    Not a dataclass: mypyc cannot compile a generic one (the class fails at import with
    "attribute '__dict__' of 'type' objects is not writable", mypyc/mypyc#827).
    """

    __slots__ = ("figures", "items", "latest_ms", "next_page", "tainted")

    def __init__(self, *, next_page: int = 1, tainted: bool = False) -> None:
        self.items: list[_Item] = []
        self.next_page = next_page
        self.tainted = tainted
        self.latest_ms: int | None = None
        self.figures: ExchangeAccountFigures | None = None


@dataclass(frozen=True, slots=True)
class _Spec:
    """An instrument spec as received, waiting for (or combined with) its family's tiers."""

    inst_type: str
    family: str
    instrument: Instrument  # with empty tiers


class OkxDecoder:
    """Turns OKX v5 frames and REST bodies into :mod:`monitor.core.events` events.

    Stateful (instrument specs, family tiers and paged snapshots in progress) but pure: no
    I/O, no clock, no logging. Use one decoder per feed (public and private frames of one
    recording may share one). Every method raises :class:`BadInput` for input it cannot use,
    and then leaves its state as it was, except that a rejected page of a snapshot marks
    that snapshot as incomplete (see the module docstring).
    """

    def __init__(self) -> None:
        self._specs: dict[str, _Spec] = {}
        # Instrument ids per (instType, family), in arrival order, for re-emission.
        self._members: dict[tuple[str, str], dict[str, None]] = {}
        # Maintenance tiers per (instType, family); instType None when the tiers body did not
        # say which contract type it was for (then they apply to every type of the family).
        self._tiers: dict[tuple[str | None, str], tuple[Tier, ...]] = {}
        self._position_pages: dict[str, _Pages[Position]] = {}
        self._balance_pages: dict[str, _Pages[CurrencyBalance]] = {}

    # -- entry points ----------------------------------------------------------------------

    def decode_line(self, line: bytes | str) -> list[Event]:
        """Decode one line of a recording (SPEC 3.2).

        The line is ``{"recv_ts": ms, "account": name, "frame": {...}}`` (``account`` only
        on private frames) or ``{"recv_ts": ms, "account": name, "rest": path, "body":
        {...}}``. A blank line carries nothing and yields ``[]``.

        Raises:
            BadInput: the line is not JSON (truncated, for instance), not an object, has no
                valid ``recv_ts``, no ``frame`` or ``rest``, or its content is unusable.
        """
        try:
            record = _loads(line)
        except orjson.JSONDecodeError as error:
            if isinstance(line, bytes | str) and not line.strip():
                return []
            raise BadInput(f"line is not valid JSON ({error})") from error
        if type(record) is not dict:
            raise BadInput(f"line is a JSON {json_kind(record)}, not an object")
        recv_ms = record.get("recv_ts")
        if type(recv_ms) is not int or not 0 <= recv_ms <= TIMESTAMP_MAX_MS:
            if recv_ms is None:
                raise BadInput("line has no recv_ts")
            raise BadInput(f"line recv_ts {show(recv_ms)} is not a millisecond timestamp")
        frame = record.get("frame")
        if type(frame) is dict:
            # Mark prices first, with no call in between (see _decode_mark_prices).
            arg = frame.get("arg")
            if type(arg) is dict and arg.get("channel") == "mark-price" and "event" not in frame:
                return _decode_mark_prices(frame.get("data"), recv_ms)
            return self._decode_frame(frame, account_of(record), recv_ms)
        if frame is not None:
            return self._decode_frame(frame, account_of(record), recv_ms)
        path = record.get("rest")
        if path is not None:
            if "body" not in record:
                raise BadInput(f"REST line for {show(path)} has no body")
            return self._decode_rest(path, record["body"], account_of(record), recv_ms)
        raise BadInput("line has neither a frame nor a rest response")

    # recv_ms is Any in the three entry points below, which check it themselves: a function
    # compiled by mypyc checks an int argument on entry (TypeError, or a bool taken as 0 or
    # 1) before the check here could raise BadInput.
    def decode_frame(self, frame: Any, account: str | None, recv_ms: Any) -> list[Event]:
        """Decode one websocket frame as received (already JSON-decoded).

        ``account`` names the private connection the frame came from (None on the public
        one); private channels require it.

        Raises:
            BadInput: the frame is not usable (see the module docstring).
        """
        check_recv_ms(recv_ms)
        check_account(account)
        if type(frame) is dict:
            arg = frame.get("arg")
            if type(arg) is dict and arg.get("channel") == "mark-price" and "event" not in frame:
                return _decode_mark_prices(frame.get("data"), recv_ms)
        return self._decode_frame(frame, account, recv_ms)

    def decode_message(self, text: str, account: str | None, recv_ms: Any) -> list[Event]:
        """Decode one websocket message as received: its text, parsed here.

        The live feed delivers messages unparsed (monitor.runtime.feed), so that a mark price it
        conflates away is never parsed; this is :meth:`decode_frame` after ``orjson.loads``.

        Raises:
            BadInput: the text is not JSON ("frame is not JSON"), or the frame is not
                usable (see :meth:`decode_frame`).
        """
        check_recv_ms(recv_ms)
        check_account(account)
        try:
            frame = _loads(text)
        except orjson.JSONDecodeError:
            raise BadInput("frame is not JSON") from None
        if type(frame) is dict:
            # Mark prices first, with no call in between (see _decode_mark_prices).
            arg = frame.get("arg")
            if type(arg) is dict and arg.get("channel") == "mark-price" and "event" not in frame:
                return _decode_mark_prices(frame.get("data"), recv_ms)
        return self._decode_frame(frame, account, recv_ms)

    def decode_rest(self, path: str, body: Any, account: str | None, recv_ms: Any) -> list[Event]:
        """Decode a REST response body ``{"code": "0", "msg": "", "data": [...]}``.

        ``path`` is the request path, with or without its query string (the query tells
        which ``instType`` a ``position-tiers`` body is for). Unknown paths yield ``[]``.

        Raises:
            BadInput: the body is not usable, or reports an error ``code``.
        """
        check_recv_ms(recv_ms)
        check_account(account)
        return self._decode_rest(path, body, account, recv_ms)

    # -- websocket frames ------------------------------------------------------------------

    def _decode_frame(self, frame: Any, account: str | None, recv_ms: int) -> list[Event]:
        if type(frame) is not dict:
            # The reply to our text "ping" keepalive (docs: "Overview > WebSocket > Connect").
            if frame == "pong":
                return []
            raise BadInput(f"frame is a JSON {json_kind(frame)}, not an object")
        if "event" in frame:
            # subscribe / unsubscribe / login acks, error, notice (64008: reconnect now),
            # channel-conn-count[-error]: operational, for the live adapter to act on.
            return []
        arg = frame.get("arg")
        if type(arg) is not dict:
            if "op" in frame:
                return []  # the reply to a websocket trade operation; riskmon places none
            raise BadInput("frame has neither an event nor an arg")
        channel = arg.get("channel")
        if type(channel) is not str:
            raise BadInput(f"frame arg.channel {show(channel)} is not a channel name")
        data = frame.get("data")
        match channel:
            case "mark-price":
                return _decode_mark_prices(data, recv_ms)
            case "index-tickers":
                return _decode_index_tickers(rows_of(data, channel), recv_ms)
            case "instruments":
                return self._apply_instruments(rows_of(data, channel), recv_ms)
            case "orders":
                owner = require_account(account, channel)
                return _decode_orders(rows_of(data, channel), owner, recv_ms)
            case "positions":
                owner = require_account(account, channel)
                try:
                    return self._decode_positions(frame, data, owner, recv_ms)
                except BadInput:
                    _note_rejected_page(self._position_pages, owner, frame)
                    raise
            case "account":
                owner = require_account(account, channel)
                try:
                    return self._decode_account(frame, data, owner, recv_ms)
                except BadInput:
                    _note_rejected_page(self._balance_pages, owner, frame)
                    raise
            case _:
                return []

    def _decode_positions(
        self, frame: dict[str, Any], data: Any, account: str, recv_ms: int
    ) -> list[Event]:
        """Positions push (docs: "Trading Account > WebSocket > Positions channel").

        ``eventType`` is ``snapshot`` (initial and regular, paged by ``curPage`` /
        ``lastPage``) or ``event_update`` (the positions an event changed).
        """
        event_type = frame.get("eventType")
        positions, latest_ms = _parse_positions(rows_of(data, "positions"), "positions")
        if event_type != "snapshot":
            _check_update_type(event_type, "positions")
            if not positions:
                return []
            event_ms = recv_ms if latest_ms is None else latest_ms
            return [PositionUpdate(account, tuple(positions), event_ms, recv_ms)]
        current_page, last_page = _pagination(frame, "positions")
        pages = _open_page(self._position_pages, account, current_page)
        pages.items.extend(positions)
        pages.latest_ms = _later(pages.latest_ms, latest_ms)
        if not last_page:
            return []
        del self._position_pages[account]
        event_ms = recv_ms if pages.latest_ms is None else pages.latest_ms
        if pages.tainted:
            if not pages.items:
                return []
            return [PositionUpdate(account, tuple(pages.items), event_ms, recv_ms)]
        return [PositionSnapshot(account, tuple(pages.items), event_ms, recv_ms)]

    def _decode_account(
        self, frame: dict[str, Any], data: Any, account: str, recv_ms: int
    ) -> list[Event]:
        """Account push (docs: "Trading Account > WebSocket > Account channel").

        Snapshots (initial and regular, paged like positions) list every currency with a
        non-zero balance; ``event_update`` pushes only the currencies that changed.
        """
        event_type = frame.get("eventType")
        rows = rows_of(data, "account")
        balances, figures, latest_ms = _parse_account_rows(rows, "account")
        if event_type != "snapshot":
            _check_update_type(event_type, "account")
            if not rows:
                return []
            event_ms = recv_ms if latest_ms is None else latest_ms
            return [BalanceUpdate(account, tuple(balances), False, figures, event_ms, recv_ms)]
        current_page, last_page = _pagination(frame, "account")
        pages = _open_page(self._balance_pages, account, current_page)
        pages.items.extend(balances)
        if latest_ms is not None and (pages.latest_ms is None or latest_ms >= pages.latest_ms):
            pages.latest_ms = latest_ms
            pages.figures = figures
        if not last_page:
            return []
        del self._balance_pages[account]
        event_ms = recv_ms if pages.latest_ms is None else pages.latest_ms
        complete = not pages.tainted
        if not complete and not pages.items and pages.figures is None:
            return []
        return [
            BalanceUpdate(account, tuple(pages.items), complete, pages.figures, event_ms, recv_ms)
        ]

    # -- REST bodies -----------------------------------------------------------------------

    def _decode_rest(self, path: Any, body: Any, account: str | None, recv_ms: int) -> list[Event]:
        if type(path) is not str or len(path) > 1024 or not path.isascii() or (
                not path.isprintable()):
            raise BadInput(f"REST path {show(path)} is not a printable ASCII path")
        try:
            split = urlsplit(path)
            query = parse_qs(split.query)
        except ValueError as error:  # "Invalid IPv6 URL", for one
            raise BadInput(f"REST path {show(path)} is not a path ({error})") from None
        # Every response is the state at the time of the response, which has no exchange
        # time of its own: UNTIMED (see the module docstring).
        match split.path:
            case RestPath.INSTRUMENTS:
                return self._apply_instruments(_rest_rows(body, split.path), recv_ms)
            case RestPath.POSITION_TIERS:
                # Cross and isolated tiers differ; the cross-margin model uses the cross ones.
                if query.get("tdMode", ["cross"])[-1] != "cross":
                    return []
                inst_type = query.get("instType", [None])[-1]
                if inst_type == "MARGIN":
                    return _decode_borrow_tiers(_rest_rows(body, split.path),
                                                query.get("ccy", [""])[-1], recv_ms)
                return self._apply_tiers(_rest_rows(body, split.path), inst_type, recv_ms)
            case RestPath.DISCOUNT_RATE:
                return _decode_discount_rates(_rest_rows(body, split.path), recv_ms)
            case RestPath.ORDERS_PENDING:
                owner = require_account(account, split.path)
                rows = _rest_rows(body, split.path)
                orders = tuple(
                    order for order, live, _, _ in _parse_orders(rows, "orders-pending") if live
                )
                return [OrdersSnapshot(owner, orders, UNTIMED, recv_ms)]
            case RestPath.POSITIONS:
                # docs: "Trading Account > REST API > Get positions": every open position,
                # unpaged, so the body is a whole snapshot; unless the query filtered it
                # (instType, instId), which makes it an update of the positions listed.
                owner = require_account(account, split.path)
                positions, _ = _parse_positions(_rest_rows(body, split.path), split.path)
                if split.query:
                    if not positions:
                        return []
                    return [PositionUpdate(owner, tuple(positions), UNTIMED, recv_ms)]
                return [PositionSnapshot(owner, tuple(positions), UNTIMED, recv_ms)]
            case RestPath.BALANCE:
                # docs: "Trading Account > REST API > Get balance": one row, every currency
                # with a balance in ``details``, so a whole snapshot; unless the query
                # named currencies (ccy), which makes it an update of those.
                owner = require_account(account, split.path)
                rows = _rest_rows(body, split.path)
                if not rows:
                    # OKX always answers one row; none says nothing (the replay server's
                    # answer before anything of the account was pushed), not "all zero".
                    return []
                balances, figures, _ = _parse_account_rows(rows, split.path)
                complete = not split.query
                return [
                    BalanceUpdate(owner, tuple(balances), complete, figures, UNTIMED, recv_ms)
                ]
            case RestPath.ACCOUNT_CONFIG:
                owner = require_account(account, split.path)
                return [
                    _parse_account_config(row, owner, recv_ms)
                    for row in _rest_rows(body, split.path)
                ]
            case _:
                return []

    # -- instruments and tiers -------------------------------------------------------------

    def _apply_instruments(self, rows: list[dict[str, Any]], recv_ms: int) -> list[Event]:
        """Remember instrument specs; emit those whose family's tiers are known."""
        specs = [spec for spec in map(_parse_instrument, rows) if spec is not None]
        events: list[Event] = []
        for spec in specs:
            inst_id = spec.instrument.inst_id
            previous = self._specs.get(inst_id)
            if previous is not None:
                self._members[(previous.inst_type, previous.family)].pop(inst_id, None)
            self._specs[inst_id] = spec
            self._members.setdefault((spec.inst_type, spec.family), {})[inst_id] = None
            tiers = self._tiers_for(spec)
            if tiers is not None:
                instrument = replace(spec.instrument, tiers=tiers)
                events.append(InstrumentUpdate(instrument, UNTIMED, recv_ms))
        return events

    def _apply_tiers(
        self, rows: list[dict[str, Any]], inst_type: str | None, recv_ms: int
    ) -> list[Event]:
        """Remember the tiers of each family in ``rows``; emit its known instruments.

        Docs: "Public Data > REST API > Get position tiers". Rows carry no instType, so it
        comes from the request's query string when there is one.
        """
        numbered: dict[str, list[tuple[int, Tier]]] = {}
        for row in rows:
            family = (optional_text_field(row, "instFamily", "position-tiers")
                      or optional_text_field(row, "uly", "position-tiers"))
            if not family:
                # A row of no family is a spot-margin tier; as borrowing tiers they are
                # read from instType=MARGIN queries with a ccy (_decode_borrow_tiers).
                continue
            numbered.setdefault(family, []).append(_parse_tier(row, family))
        resolved: list[tuple[str, tuple[Tier, ...]]] = []
        for family, family_rows in numbered.items():
            family_rows.sort(key=lambda numbered_tier: numbered_tier[0])
            numbers = [number for number, _ in family_rows]
            if len(set(numbers)) != len(numbers):
                raise BadInput(f"position-tiers {family} lists a tier number twice")
            tiers = tuple(tier for _, tier in family_rows)
            problem = validate_tiers(tiers)
            if problem is not None:
                raise BadInput(f"position-tiers {family}: {problem}")
            resolved.append((family, tiers))
        events: list[Event] = []
        for family, tiers in resolved:
            self._tiers[(inst_type, family)] = tiers
            for spec in self._specs_of(inst_type, family):
                if self._tiers_for(spec) is tiers:
                    instrument = replace(spec.instrument, tiers=tiers)
                    events.append(InstrumentUpdate(instrument, UNTIMED, recv_ms))
        return events

    def _tiers_for(self, spec: _Spec) -> tuple[Tier, ...] | None:
        """Tiers for the spec's own contract type, else those given for any type."""
        exact = self._tiers.get((spec.inst_type, spec.family))
        if exact is not None:
            return exact
        return self._tiers.get((None, spec.family))

    def _specs_of(self, inst_type: str | None, family: str) -> list[_Spec]:
        inst_types = sorted(_CONTRACT_TYPES) if inst_type is None else [inst_type]
        return [
            self._specs[inst_id]
            for kind in inst_types
            for inst_id in self._members.get((kind, family), {})
        ]


# --- row parsers --------------------------------------------------------------------------


def _decode_index_tickers(rows: list[dict[str, Any]], recv_ms: int) -> list[Event]:
    """Index rows ``{instId: "BTC-USDT", idxPx, ts, ...}`` -> :class:`IndexPrice`.

    Docs: "Public Data > WebSocket > Index tickers channel"; the index id is
    ``BASE-QUOTE`` with quote USD, USDT, USDC or BTC.
    """
    events: list[Event] = []
    for row in rows:
        index_id = text_field(row, "instId", "index-tickers")
        base, _, quote = index_id.partition("-")
        if not base or not quote or "-" in quote:
            raise BadInput(f"index-tickers instId {show(index_id)} is not BASE-QUOTE")
        context = f"index-tickers {index_id}"
        price = number_field(row, "idxPx", context, "price")
        event_ms = timestamp_field(row, "ts", context)
        events.append(IndexPrice(base, quote, price, event_ms, recv_ms))
    return events


def _decode_orders(rows: list[dict[str, Any]], account: str, recv_ms: int) -> list[Event]:
    """Orders channel rows -> :class:`OrderUpdate` (docs: "WS / Order channel")."""
    return [
        OrderUpdate(account, order, live, event_ms, recv_ms, *_order_follow_up(row, order))
        for order, live, event_ms, row in _parse_orders(rows, "orders")
    ]


def _parse_orders(rows: list[dict[str, Any]], context: str
                  ) -> list[tuple[Order, bool, int, dict[str, Any]]]:
    """Orders in scope with their liveness, ``uTime`` and row; shared by channel and REST."""
    parsed: list[tuple[Order, bool, int, dict[str, Any]]] = []
    for row in rows:
        if optional_text_field(row, "instType", context) in _OUT_OF_SCOPE_TYPES:
            continue
        trade_mode = optional_text_field(row, "tdMode", context)
        if trade_mode in _SPOT_TRADE_MODES:
            continue
        inst_id = text_field(row, "instId", context)
        order_id = text_field(row, "ordId", context)
        where = f"{context} {inst_id} {order_id}"
        side = row.get("side")
        if side != "buy" and side != "sell":
            raise BadInput(f"{where} side {show(side)} is not buy or sell")
        state = row.get("state")
        live = _ORDER_STATE_LIVE.get(state) if type(state) is str else None
        if live is None:
            raise BadInput(f"{where} state {show(state)} is not a known order state")
        order_type = text_field(row, "ordType", where)
        price: float | None
        if order_type in _MARKET_ORDER_TYPES:
            price = None
        elif order_type in _PRICED_ORDER_TYPES:
            price = number_field(row, "px", where, "price")
        else:
            price = optional_number_field(row, "px", where, "price")
        size = number_field(row, "sz", where, "non_negative")
        filled = optional_number_field(row, "accFillSz", where, "non_negative") or 0.0
        reduce_only = flag_field(row, "reduceOnly", where)
        leverage = optional_number_field(row, "lever", where, "positive")
        event_ms = timestamp_field(row, "uTime", where)
        # docs: "WS / Order channel": ``posSide`` is ``net`` in one-way mode, ``long`` or
        # ``short`` in hedge mode, and "" where it does not apply (read as net).
        raw_side = optional_text_field(row, "posSide", where) or "net"
        position_side = _POSITION_SIDES.get(raw_side)
        if position_side is None:
            raise BadInput(f"{where} posSide {show(raw_side)} is not net, long or short")
        # ``tdMode`` "" or absent: a recording made before riskmon read it, cross then.
        margin_mode = _MARGIN_MODES.get(trade_mode or "cross")
        if margin_mode is None:
            raise BadInput(f"{where} tdMode {show(trade_mode)} is not cross or isolated")
        order = Order(order_id, inst_id, side, price, size, filled, reduce_only, leverage,
                      position_side, margin_mode)
        parsed.append((order, live, event_ms, row))
    return parsed


def _order_follow_up(row: dict[str, Any], order: Order) -> tuple[str, str, float | None]:
    """What the executor follows an order by: ``clOrdId``, ``state`` and ``avgPx``
    (docs: "WS / Order channel"; ``avgPx`` is "" or "0" before the first fill)."""
    where = f"orders {order.inst_id} {order.order_id}"
    client_id = optional_text_field(row, "clOrdId", where) or ""
    state = row.get("state")
    average = optional_number_field(row, "avgPx", where, "non_negative")
    return client_id, state if type(state) is str else "", average or None


def _parse_positions(rows: list[dict[str, Any]], context: str) -> tuple[list[Position], int | None]:
    """The positions in scope of ``rows`` and the latest of their times (channel and REST)."""
    positions: list[Position] = []
    latest_ms: int | None = None
    for row in rows:
        parsed = _parse_position(row, context)
        if parsed is None:
            continue
        position, row_ms = parsed
        positions.append(position)
        latest_ms = row_ms if latest_ms is None else max(latest_ms, row_ms)
    return positions, latest_ms


def _parse_position(row: dict[str, Any], context: str) -> tuple[Position, int] | None:
    """A position and its time, or None for a row out of scope.

    Docs: "Trading Account > WebSocket > Positions channel" (the REST "Get positions" rows
    are the same). The time is the later of ``uTime`` (last change of the position) and
    ``pTime`` (push time): a snapshot of positions untouched for days is still news of now.
    """
    if optional_text_field(row, "instType", context) in _OUT_OF_SCOPE_TYPES:
        return None
    inst_id = text_field(row, "instId", context)
    where = f"{context} {inst_id}"
    raw_side = row.get("posSide")
    side = _POSITION_SIDES.get(raw_side) if type(raw_side) is str else None
    if side is None:
        raise BadInput(f"{where} posSide {show(raw_side)} is not net, long or short")
    raw_mode = row.get("mgnMode")
    margin_mode = _MARGIN_MODES.get(raw_mode) if type(raw_mode) is str else None
    if margin_mode is None:
        raise BadInput(f"{where} mgnMode {show(raw_mode)} is not cross or isolated")
    where = f"{where} {margin_mode} {side}"
    contracts = number_field(row, "pos", where, "any")
    if side == "long":
        # Hedge mode: OKX gives the size of each side as a positive ``pos`` (SPEC 1.2).
        contracts = abs(contracts)
    elif side == "short":
        contracts = -abs(contracts)
    if contracts == 0.0:
        # A closed position: avgPx is "" (or "0") and means nothing.
        average = optional_number_field(row, "avgPx", where, "non_negative") or 0.0
    else:
        average = number_field(row, "avgPx", where, "price")
    leverage = optional_number_field(row, "lever", where, "positive")
    margin: float | None = None
    if margin_mode == "isolated":
        # An isolated position's own margin (SPEC 1.2); a closed one may carry "".
        if contracts == 0.0:
            margin = optional_number_field(row, "margin", where, "non_negative") or 0.0
        else:
            margin = number_field(row, "margin", where, "non_negative")
    exchange = _position_figures(row, where)
    event_ms = timestamp_field(row, "uTime", where)
    push_ms = optional_timestamp_field(row, "pTime", where)
    if push_ms is not None and push_ms > event_ms:
        event_ms = push_ms
    position = Position(inst_id, contracts, average, leverage, side, margin_mode, margin,
                        exchange)
    return position, event_ms


def _position_figures(row: dict[str, Any], where: str) -> ExchangePositionFigures | None:
    """The exchange's ``mgnRatio``, ``mmr``, ``imr`` and ``liqPx`` of a position (SPEC 1.9);
    None when it reports none of them ("" where they do not apply). A ``liqPx`` of 0 or
    below is no liquidation price (no mark would liquidate the position)."""
    liquidation = optional_number_field(row, "liqPx", where, "any")
    figures = ExchangePositionFigures(
        margin_ratio=optional_number_field(row, "mgnRatio", where, "any"),
        maint_margin=optional_number_field(row, "mmr", where, "non_negative"),
        init_margin=optional_number_field(row, "imr", where, "non_negative"),
        liquidation_price=liquidation if liquidation is not None and liquidation > 0 else None,
    )
    if figures.margin_ratio is None and figures.maint_margin is None and (
            figures.init_margin is None and figures.liquidation_price is None):
        return None
    return figures


def _parse_account_rows(
    rows: list[dict[str, Any]], context: str
) -> tuple[list[CurrencyBalance], ExchangeAccountFigures | None, int | None]:
    """Balances of every ``details`` row, the account figures of the latest row (by
    ``uTime``) and that time; shared by the account channel and REST balance."""
    balances: list[CurrencyBalance] = []
    figures: ExchangeAccountFigures | None = None
    latest_ms: int | None = None
    for row in rows:
        row_ms = timestamp_field(row, "uTime", context)
        if latest_ms is None or row_ms >= latest_ms:
            latest_ms = row_ms
            figures = _account_figures(row, context)
        details = row.get("details")
        if type(details) is not list:
            raise BadInput(f"{context} details {show(details)} is not an array")
        for detail in details:
            balances.append(_parse_balance(detail, context))
    return balances, figures, latest_ms


def _parse_balance(detail: Any, context: str) -> CurrencyBalance:
    """One ``details`` row of the account channel or REST balance.

    ``liab`` and ``interest`` are positive figures, "" when the account mode has none.
    ``mgnRatio``, ``imr`` and ``mmr`` are the currency's own pool's figures, which OKX
    reports in single-currency margin mode only ("" otherwise); with any of them the
    currency's ``eq`` is that pool's equity (SPEC 1.5, 1.9).
    """
    if type(detail) is not dict:
        raise BadInput(f"{context} details row {show(detail)} is not an object")
    currency = text_field(detail, "ccy", f"{context} details")
    where = f"{context} {currency}"
    exchange: ExchangeAccountFigures | None = None
    margin_ratio = optional_number_field(detail, "mgnRatio", where, "any")
    init_margin = optional_number_field(detail, "imr", where, "non_negative")
    maint_margin = optional_number_field(detail, "mmr", where, "non_negative")
    if margin_ratio is not None or init_margin is not None or maint_margin is not None:
        exchange = ExchangeAccountFigures(
            margin_ratio=margin_ratio,
            adjusted_equity=optional_number_field(detail, "eq", where, "any"),
            init_margin=init_margin,
            maint_margin=maint_margin,
        )
    return CurrencyBalance(
        currency=currency,
        cash=number_field(detail, "cashBal", where, "any"),
        liability=optional_number_field(detail, "liab", where, "non_negative"),
        interest=optional_number_field(detail, "interest", where, "non_negative"),
        exchange=exchange,
    )


def _account_figures(row: dict[str, Any], context: str) -> ExchangeAccountFigures:
    """The exchange's own account-level figures, kept for the divergence check (SPEC 1.9)."""
    return ExchangeAccountFigures(
        margin_ratio=optional_number_field(row, "mgnRatio", context, "any"),
        adjusted_equity=optional_number_field(row, "adjEq", context, "any"),
        init_margin=optional_number_field(row, "imr", context, "non_negative"),
        maint_margin=optional_number_field(row, "mmr", context, "non_negative"),
        total_equity=optional_number_field(row, "totalEq", context, "any"),
    )


def _parse_account_config(row: dict[str, Any], account: str, recv_ms: int) -> Event:
    """docs: "Trading Account > REST API > Get account configuration" -> the account's
    mode (SPEC 1.5). ``acctLv`` 1 (spot mode) or a level riskmon does not know is
    ``unsupported``, so the engine can say the account cannot be followed."""
    context = "account/config"
    level = text_field(row, "acctLv", context)
    position_mode = row.get("posMode")
    hedge_mode = _POSITION_MODES.get(position_mode) if type(position_mode) is str else None
    if hedge_mode is None:
        raise BadInput(
            f"{context} posMode {show(position_mode)} is not net_mode or long_short_mode"
        )
    mode = _ACCOUNT_LEVELS.get(level, "unsupported")
    return AccountConfigUpdate(account, mode, level, hedge_mode, UNTIMED, recv_ms)


def _decode_borrow_tiers(rows: list[dict[str, Any]], currency: str, recv_ms: int) -> list[Event]:
    """``position-tiers`` of ``instType=MARGIN`` for one ``ccy`` -> the borrowing tiers of
    that currency (SPEC 1.4).

    Docs: "Public Data > REST API > Get position tiers": with ``ccy``, ``maxSz`` is "the
    maximum borrowing amount" of the tier (in the currency; "" unbounded), ``mmr`` and
    ``imr`` its rates. The rows do not name the currency: it is the query's. A query
    without ``ccy`` (``instId``: the tiers of one spot-margin pair) is out of scope.
    """
    if not currency:
        return []
    context = f"position-tiers MARGIN {currency}"
    numbered: list[tuple[int, BorrowTier]] = []
    for row in rows:
        number = _tier_number(row, context)
        where = f"{context} tier {number}"
        maximum = optional_number_field(row, "maxSz", where, "positive")
        numbered.append((number, BorrowTier(
            max_amount=_INFINITY if maximum is None else maximum,
            maintenance_rate=number_field(row, "mmr", where, "non_negative"),
            initial_rate=number_field(row, "imr", where, "non_negative"),
        )))
    if not numbered:
        return []
    numbered.sort(key=lambda numbered_tier: numbered_tier[0])
    numbers = [number for number, _ in numbered]
    if len(set(numbers)) != len(numbers):
        raise BadInput(f"{context} lists a tier number twice")
    tiers = tuple(tier for _, tier in numbered)
    problem = validate_borrow_tiers(tiers)
    if problem is not None:
        raise BadInput(f"{context}: {problem}")
    return [BorrowTiersUpdate(currency, tiers, UNTIMED, recv_ms)]


def _decode_discount_rates(rows: list[dict[str, Any]], recv_ms: int) -> list[Event]:
    """``discount-rate-interest-free-quota`` -> one :class:`CollateralTiersUpdate` per
    currency row (SPEC 1.4), validated whole before any event is built."""
    return [_parse_discount_rates(row, recv_ms) for row in rows]


def _parse_discount_rates(row: dict[str, Any], recv_ms: int) -> CollateralTiersUpdate:
    """One currency's discount-rate bands: ``details`` (current) or ``discountInfo``
    (older responses), each band ``minAmt`` / ``maxAmt`` / ``discountRate``.

    Units of the bounds. Docs: "Public Data > REST API > Get discount rate and
    interest-free quota" describes ``details[].minAmt`` / ``maxAmt`` as "Tier - lower /
    upper bound. The unit is the currency like BTC" (in the mirror qiuham/crypto-api-docs
    @ ad484e43910e7e221b9866f0bbd4e0a742a915a7, docs/okx/public/data/rest-api-get-discount-
    rate-and-interest-free-quota.md, lines 100-103; its example has BTC bands 0-20 and
    20-25), and OKX's announcements of tier changes list the tiers as "Tier (Coin)". The
    older ``discountInfo`` shape states no unit; its magnitudes only make sense as USD
    values: the older docs example (JKorf/OKX.Net @ 88611596, OKX.Net.UnitTests/Endpoints/
    UnifiedApi/ExchangeData/GetDiscountInfo.txt) has LTC bands up to 8,000,000, about a
    tenth of all LTC, and a BTC response kept in a gocryptotrader fork's test data has bands
    up to 100,000,000, more BTC than will ever exist. So ``details`` bands are amounts of
    the currency (``in_usd`` False) and ``discountInfo`` bands are read as USD values
    (``in_usd`` True, an inference); with both, ``details`` wins.

    ``maxAmt`` "" is unbounded. When the last band is bounded, ``minDiscountRate`` (docs:
    "minimum discount rate when it exceeds the maximum amount of the last tier") covers the
    rest; without it the rest counts at 0 (monitor.core.instruments.CollateralTiers). Bands must
    follow each other without a gap, from 0.
    """
    currency = text_field(row, "ccy", "discount-rate")
    context = f"discount-rate {currency}"
    details = row.get("details")
    in_usd = False
    if details is None or details == []:
        details = row.get("discountInfo")
        in_usd = details is not None
    if details is None:
        raise BadInput(f"{context} has neither details nor discountInfo")
    if type(details) is not list or not details:
        raise BadInput(f"{context} bands {show(details)} are not a non-empty array")
    bands: list[tuple[float, float, float]] = []  # (minAmt, maxAmt, discountRate)
    for index, band in enumerate(details):
        where = f"{context} band {index + 1}"
        if type(band) is not dict:
            raise BadInput(f"{where} {show(band)} is not an object")
        low = number_field(band, "minAmt", where, "non_negative")
        high = optional_number_field(band, "maxAmt", where, "positive")
        rate = number_field(band, "discountRate", where, "non_negative")
        bands.append((low, _INFINITY if high is None else high, rate))
    bands.sort(key=lambda band: band[0])
    expected = 0.0
    for low, high, _ in bands:
        if low != expected:
            raise BadInput(f"{context}: bands do not follow each other from 0 "
                           f"(minAmt {low:g} where {expected:g} was due)")
        expected = high
    tiers = [CollateralTier(high, rate) for _, high, rate in bands]
    if tiers[-1].max_amount != _INFINITY:
        beyond = optional_number_field(row, "minDiscountRate", context, "non_negative")
        if beyond is not None:
            tiers.append(CollateralTier(_INFINITY, beyond))
    problem = validate_collateral(tuple(tiers))
    if problem is not None:
        raise BadInput(f"{context}: {problem}")
    return CollateralTiersUpdate(currency, CollateralTiers(tuple(tiers), in_usd), UNTIMED,
                                 recv_ms)


def _parse_instrument(row: dict[str, Any]) -> _Spec | None:
    """A contract spec (docs: "Public Data > REST API > Get instruments"), or None.

    None for types out of scope, and for listing announcements: a ``preopen`` instrument
    carries "" in its contract fields until shortly before it lists.
    """
    inst_type = text_field(row, "instType", "instruments")
    if inst_type not in _CONTRACT_TYPES:
        return None
    inst_id = text_field(row, "instId", "instruments")
    where = f"instruments {inst_id}"
    if row.get("state") == "preopen" and "" in (row.get("ctType"), row.get("ctVal")):
        return None
    contract_type = row.get("ctType")
    if contract_type != "linear" and contract_type != "inverse":
        raise BadInput(f"{where} ctType {show(contract_type)} is not linear or inverse")
    family = optional_text_field(row, "instFamily", where) or optional_text_field(row, "uly", where)
    if not family:
        raise BadInput(f"{where} has neither instFamily nor uly")
    instrument = Instrument(
        inst_id=inst_id,
        contract_type=contract_type,
        contract_value=number_field(row, "ctVal", where, "positive"),
        contract_multiplier=number_field(row, "ctMult", where, "positive"),
        contract_value_currency=text_field(row, "ctValCcy", where),
        settle_currency=text_field(row, "settleCcy", where),
        tiers=(),
        max_leverage=optional_number_field(row, "lever", where, "positive"),
        lot_size=optional_number_field(row, "lotSz", where, "positive"),
    )
    return _Spec(inst_type, family, instrument)


def _parse_tier(row: dict[str, Any], family: str) -> tuple[int, Tier]:
    """One tier row: its number and ``Tier(maxSz, mmr)``.

    The last tier's ``maxSz`` may be "" (no upper bound) or merely huge; "" reads as
    unbounded.
    """
    number = _tier_number(row, f"position-tiers {family}")
    where = f"position-tiers {family} tier {number}"
    maximum = optional_number_field(row, "maxSz", where, "positive")
    rate = number_field(row, "mmr", where, "non_negative")
    return number, Tier(_INFINITY if maximum is None else maximum, rate)


def _tier_number(row: dict[str, Any], context: str) -> int:
    raw_number = row.get("tier")
    if (type(raw_number) is not str or not raw_number.isascii() or not raw_number.isdecimal()
            or len(raw_number) > 6):
        raise BadInput(f"{context} tier {show(raw_number)} is not a tier number")
    return int(raw_number)


# --- paged snapshots ----------------------------------------------------------------------


def _pagination(frame: dict[str, Any], context: str) -> tuple[int | None, bool]:
    """``(curPage, lastPage)``; a snapshot without them is one complete page."""
    current = frame.get("curPage")
    if current is not None and (type(current) is not int or current < 1):
        raise BadInput(f"{context} curPage {show(current)} is not a page number")
    last = frame.get("lastPage", True)
    if type(last) is not bool:
        raise BadInput(f"{context} lastPage {show(last)} is not true or false")
    return current, last


def _open_page(pages: dict[str, _Pages[_Item]], account: str, current: int | None) -> _Pages[_Item]:
    """The buffer a snapshot page of ``account`` goes into; page 1 starts a new one."""
    buffer: _Pages[_Item] | None
    if current is None or current == 1:
        buffer = _Pages()
        pages[account] = buffer
    else:
        buffer = pages.get(account)
        if buffer is None:
            # The first pages never arrived (lost before their channel could be known, or
            # the recording starts mid-snapshot): what follows is not the whole account.
            buffer = _Pages(tainted=True)
            pages[account] = buffer
        elif current != buffer.next_page:
            buffer.tainted = True
    buffer.next_page = (current or 1) + 1
    return buffer


def _note_rejected_page(
    pages: dict[str, _Pages[_Item]], account: str, frame: dict[str, Any]
) -> None:
    """Account for a rejected push of a paged channel, so a partial snapshot is not taken whole.

    An update, or anything without pagination that is not a snapshot, does not touch the
    snapshot in progress.
    """
    current = frame.get("curPage")
    last = frame.get("lastPage")
    if frame.get("eventType") != "snapshot" and current is None and last is None:
        return
    starts = current is None or (type(current) is int and current == 1)
    if starts or account not in pages:
        if last is False:
            following = current + 1 if type(current) is int else 0
            pages[account] = _Pages(tainted=True, next_page=following)
        else:
            # A whole snapshot, or the last page of one we hold nothing of, was lost; any
            # older, unfinished snapshot is superseded and must not merge with the next.
            pages.pop(account, None)
        return
    if last is True:
        del pages[account]  # the snapshot ends here, incomplete: nothing to emit
    else:
        pages[account].tainted = True


def _later(first: int | None, second: int | None) -> int | None:
    if first is None:
        return second
    if second is None:
        return first
    return max(first, second)


def _check_update_type(event_type: Any, context: str) -> None:
    # No eventType at all is read as an update: it can never close or zero anything.
    if event_type is not None and event_type != "event_update":
        raise BadInput(f"{context} eventType {show(event_type)} is not snapshot or event_update")


# --- field helpers ------------------------------------------------------------------------


def _rest_rows(body: Any, path: str) -> list[dict[str, Any]]:
    """The ``data`` rows of a successful REST body (``code`` "0")."""
    if type(body) is not dict:
        raise BadInput(f"{path} body is a JSON {json_kind(body)}, not an object")
    code = body.get("code")
    if code != "0" and code != 0:
        # An error response is no snapshot: reading it as "no data" would wipe state.
        raise BadInput(f"{path} returned code {show(code)}: {show(body.get('msg', ''))}")
    return rows_of(body.get("data"), path)


