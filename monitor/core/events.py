"""Normalised, exchange-agnostic feed events (SPEC section 2).

Adapters turn wire frames into these; the engine consumes nothing else. Every event carries
``event_ms`` (exchange time, the engine's clock) and ``recv_ms`` (local receive time). Numbers
are already parsed and validated: finite, and positive where a price is meant.

Some events have no exchange time of their own: a REST response (live orders, instrument
specs) and a connection's change of state. They carry ``event_ms = UNTIMED``; the engine
dates them by its own clock and never lets them move it, so a daemon replaying an old
recording (or a host whose clock is off) cannot push the engine's clock out of the feed's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from monitor.core.instruments import BorrowTier, CollateralTiers, Instrument

Side = Literal["buy", "sell"]
FeedState = Literal["connected", "disconnected"]
PositionSide = Literal["net", "long", "short"]
"""``net`` in one-way mode; ``long`` or ``short`` in hedge mode (SPEC 1.2)."""
MarginMode = Literal["cross", "isolated"]
"""The margin mode of a position, and the one an order trades in (SPEC 1.2)."""
AccountMode = Literal["multi_currency", "single_currency", "portfolio", "unsupported"]
"""How an account is margined (SPEC 1.5). ``unsupported``: a mode riskmon cannot follow
(a spot-only mode, or a level the decoder does not know)."""

UNTIMED: Final = 0
"""``event_ms`` of an event that has no exchange time (see the module docstring)."""

IDENTIFIER_LENGTH: Final = 64
"""The longest identifier (instrument id, currency, order id, account name) accepted."""


def identifier_problem(text: str) -> str | None:
    """Why ``text`` is not an identifier, or None when it is one: 1 to
    :data:`IDENTIFIER_LENGTH` characters of printable ASCII (no NUL, no control characters,
    no spaces at either end). Adapters check every identifier with this; the engine checks
    a mark price's instrument id the first time it sees it (issue 15)."""
    if not text:
        return "is empty"
    if len(text) > IDENTIFIER_LENGTH:
        return f"is longer than {IDENTIFIER_LENGTH} characters"
    if not text.isascii() or not text.isprintable():
        return "is not printable ASCII"
    if text[0] == " " or text[-1] == " ":
        return "starts or ends with a space"
    return None


@dataclass(frozen=True, slots=True)
class InstrumentUpdate:
    """An instrument specification from the feed (or configuration)."""

    instrument: Instrument
    event_ms: int
    recv_ms: int


@dataclass(frozen=True, slots=True)
class MarkPrice:
    """A mark price tick for one instrument."""

    inst_id: str
    price: float
    event_ms: int
    recv_ms: int


@dataclass(frozen=True, slots=True)
class IndexPrice:
    """An index price: one ``base`` currency priced in ``quote`` (``BTC`` in ``USDT``)."""

    base: str
    quote: str
    price: float
    event_ms: int
    recv_ms: int


@dataclass(frozen=True, slots=True)
class Order:
    """One order as last reported. ``price`` is None for market orders."""

    order_id: str
    inst_id: str
    side: Side
    price: float | None
    size: float
    filled: float
    reduce_only: bool
    leverage: float | None
    position_side: PositionSide = "net"
    margin_mode: MarginMode = "cross"

    @property
    def remaining(self) -> float:
        return max(0.0, self.size - self.filled)


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """An order changed. ``live`` is False once it is filled, cancelled or otherwise done.

    ``client_id`` is the id the client gave the order ("" when none),
    ``state`` the exchange's own word for where the order is (``live``,
    ``partially_filled``, ``filled``, ``canceled``, ...), ``average_price`` the average
    fill price so far (None before any fill). The engine reads none of the three; the
    executor follows its own orders by them (monitor.core.execution).
    """

    account: str
    order: Order
    live: bool
    event_ms: int
    recv_ms: int
    client_id: str = ""
    state: str = ""
    average_price: float | None = None


@dataclass(frozen=True, slots=True)
class OrdersSnapshot:
    """The complete set of live orders of an account (REST ``orders-pending``)."""

    account: str
    orders: tuple[Order, ...]
    event_ms: int
    recv_ms: int


@dataclass(frozen=True, slots=True)
class ExchangePositionFigures:
    """The exchange's own figures of one position, for the divergence check (SPEC 1.9).

    All in the position's settlement currency except the ratio; None where the exchange
    leaves the field empty. ``liquidation_price``: the mark at which the exchange would
    liquidate the position, where a decoder hands it on (compared with the mark at which
    riskmon's ratio of its pool reaches 1).
    """

    margin_ratio: float | None
    maint_margin: float | None
    init_margin: float | None
    liquidation_price: float | None = None


@dataclass(frozen=True, slots=True)
class Position:
    """A position: signed ``contracts`` (long > 0; a hedge-mode short is negative).

    ``side`` and ``margin_mode`` identify it together with ``inst_id`` (an instrument may
    hold a long and a short, or a cross and an isolated position at once). ``margin`` is
    an isolated position's own margin, None for a cross one.
    """

    inst_id: str
    contracts: float
    avg_price: float
    leverage: float | None
    side: PositionSide = "net"
    margin_mode: MarginMode = "cross"
    margin: float | None = None
    exchange: ExchangePositionFigures | None = None


@dataclass(frozen=True, slots=True)
class PositionUpdate:
    """Positions changed (``event_update``): each listed position replaces the old one.

    A position with zero contracts is closed.
    """

    account: str
    positions: tuple[Position, ...]
    event_ms: int
    recv_ms: int


@dataclass(frozen=True, slots=True)
class PositionSnapshot:
    """The full set of an account's positions; every position not listed is closed."""

    account: str
    positions: tuple[Position, ...]
    event_ms: int
    recv_ms: int


@dataclass(frozen=True, slots=True)
class ExchangeAccountFigures:
    """The exchange's own figures of an account (USD) or of one currency's pool in
    single-currency mode (that currency), for the divergence check (SPEC 1.9) and for
    following a portfolio-margin account. None where the exchange leaves a field empty."""

    margin_ratio: float | None
    adjusted_equity: float | None
    init_margin: float | None
    maint_margin: float | None
    total_equity: float | None = None


@dataclass(frozen=True, slots=True)
class CurrencyBalance:
    """One currency of an account. ``cash`` is signed (a debt is negative).

    ``liability`` is the exchange's positive liability figure, informational only;
    ``interest`` is the accrued interest the exchange reports, when it reports one.
    ``exchange`` holds the exchange's figures for this currency's own pool
    (single-currency mode: its margin ratio, MM, IM and equity).
    """

    currency: str
    cash: float
    liability: float | None
    interest: float | None
    exchange: ExchangeAccountFigures | None = None


@dataclass(frozen=True, slots=True)
class BalanceUpdate:
    """Balances of some currencies changed.

    With ``snapshot`` the list is complete and currencies not listed are zero.
    """

    account: str
    balances: tuple[CurrencyBalance, ...]
    snapshot: bool
    exchange: ExchangeAccountFigures | None
    event_ms: int
    recv_ms: int


@dataclass(frozen=True, slots=True)
class AccountConfigUpdate:
    """How the exchange margins an account (SPEC 1.5).

    ``exchange_level`` is the exchange's own name of the mode (a level number, say), for
    the ``account_mode`` alert; ``hedge_mode`` is True in long/short position mode.
    """

    account: str
    mode: AccountMode
    exchange_level: str
    hedge_mode: bool
    event_ms: int
    recv_ms: int


@dataclass(frozen=True, slots=True)
class CollateralTiersUpdate:
    """A currency's tiered collateral factors (SPEC 1.4)."""

    currency: str
    tiers: CollateralTiers
    event_ms: int
    recv_ms: int


@dataclass(frozen=True, slots=True)
class BorrowTiersUpdate:
    """A currency's borrowing margin tiers (SPEC 1.4)."""

    currency: str
    tiers: tuple[BorrowTier, ...]
    event_ms: int
    recv_ms: int


@dataclass(frozen=True, slots=True)
class MarginCallPosition:
    """One position an exchange's margin call names, as the exchange sees it:
    ``maint_margin`` in the position's settlement currency at the exchange's ``mark``
    (None where either is not given)."""

    inst_id: str
    side: PositionSide
    margin_mode: MarginMode
    contracts: float
    mark: float | None
    maint_margin: float | None


@dataclass(frozen=True, slots=True)
class MarginCall:
    """The exchange warns that an account's risk is high (a venue's margin call push).

    riskmon computes the margin state itself; the engine holds the warning against its
    own view (SPEC 1.9; MarginEngine._on_margin_call): a position riskmon does
    not hold, a maintenance margin beyond the tolerance, or a level of ``normal`` where
    the exchange calls for margin is an ``exchange_divergence``.
    """

    account: str
    positions: tuple[MarginCallPosition, ...]
    event_ms: int
    recv_ms: int


@dataclass(frozen=True, slots=True)
class FeedStatus:
    """A feed connection changed state. ``account`` is None for the public feed."""

    account: str | None
    state: FeedState
    reason: str
    event_ms: int
    recv_ms: int


@dataclass(frozen=True, slots=True)
class ClockTick:
    """Time passed with no event: the daemon's estimate of exchange time during silence.

    A live feed that goes quiet must still make positions stale and reminders due; the
    daemon sends the last event time plus the wall-clock time elapsed since it arrived.
    """

    event_ms: int
    recv_ms: int


Event = (
    InstrumentUpdate
    | MarkPrice
    | IndexPrice
    | OrderUpdate
    | OrdersSnapshot
    | PositionUpdate
    | PositionSnapshot
    | BalanceUpdate
    | AccountConfigUpdate
    | CollateralTiersUpdate
    | BorrowTiersUpdate
    | MarginCall
    | FeedStatus
    | ClockTick
)
