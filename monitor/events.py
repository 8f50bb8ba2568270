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

from monitor.instruments import Instrument

Side = Literal["buy", "sell"]
FeedState = Literal["connected", "disconnected"]

UNTIMED: Final = 0
"""``event_ms`` of an event that has no exchange time (see the module docstring)."""


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

    @property
    def remaining(self) -> float:
        return max(0.0, self.size - self.filled)


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """An order changed. ``live`` is False once it is filled, cancelled or otherwise done."""

    account: str
    order: Order
    live: bool
    event_ms: int
    recv_ms: int


@dataclass(frozen=True, slots=True)
class OrdersSnapshot:
    """The complete set of live orders of an account (REST ``orders-pending``)."""

    account: str
    orders: tuple[Order, ...]
    event_ms: int
    recv_ms: int


@dataclass(frozen=True, slots=True)
class Position:
    """A one-way (net) position: signed ``contracts`` (long > 0)."""

    inst_id: str
    contracts: float
    avg_price: float
    leverage: float | None


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
class CurrencyBalance:
    """One currency of an account. ``cash`` is signed (a debt is negative).

    ``liability`` is the exchange's positive liability figure, informational only;
    ``interest`` is the accrued interest the exchange reports, when it reports one.
    """

    currency: str
    cash: float
    liability: float | None
    interest: float | None


@dataclass(frozen=True, slots=True)
class ExchangeAccountFigures:
    """The exchange's own account-level figures, for the divergence check."""

    margin_ratio: float | None
    adjusted_equity: float | None
    init_margin: float | None
    maint_margin: float | None


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
    | FeedStatus
    | ClockTick
)
