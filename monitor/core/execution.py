"""Carrying out a trigger's orders: legs, client order ids and each leg's progress (pure).

A ``stop_loss`` alert (SPEC 1.7) and a ``deleverage_plan`` alert (1.8) carry the reduce-only
market orders that would carry them out (``payload.orders``). With execution on for the
account (``risk.execute_triggers`` and ``[accounts.NAME] execute``), the executor
(adapters/executor.py) sends them; this module holds what it decides with, no I/O and no
clock of its own (times are arguments):

- :func:`legs_of`: the orders of an alert, one :class:`Leg` each, in payload order.
- :func:`execution_alert`: an ``execution_*`` alert about a trigger; its payload (the
  types are in monitor.core.payloads) begins with :func:`trigger_fields`.
- :func:`client_order_id`: the exchange-side id of a leg's n-th order, derived from the
  alert id, the leg and the attempt only. A retry of the same order, and the same order
  sent again after a restart, carry the same id, and the exchange refuses an id it has
  already seen (a client id is unique per account), so no order is ever placed twice; a
  *new* order for the same leg (after a rejection or a partial fill) is the next attempt
  and gets the next id.
- :func:`closable`: a leg's size against the live position, re-read before every send:
  never more than the position holds, nothing if it is gone or on the other side.
- :class:`LegProgress`: one leg's state, moved only by :meth:`LegProgress.step` through
  the table :data:`TRANSITIONS` (the h11 way: every transition in one place, as data).

Leg states::

    pending   --send-->        sending   (the attempt is stored as the request goes)
    sending   --accepted-->    accepted  (sCode 0; waiting for the final state)
    sending   --rejected-->    pending (attempts left) | failed
    sending   --lost-->        unknown   (timeout, connection error: look it up)
    sending   --duplicate-->   unknown   (the exchange has an order with this id already)
    sending   --throttled-->   pending   (rate limited, nothing done: the same id again)
    sending   --filled/ended-> as from accepted (the orders channel can beat the answer)
    unknown   --found-->       accepted  (then as reported)
    unknown   --absent-->      pending   (never placed: the same id again, at most
                                          MAX_RESENDS times) | failed
    accepted  --filled-->      filled    (final)
    accepted  --ended-->       pending (a remainder and attempts left) | failed
    accepted  --overdue-->     unknown   (no final state in time: look it up)
    any open  --give_up-->     failed    (``give_up_s`` after the first send)
    pending   --nothing-->     skipped   (no position left to close: final)

Final states: ``filled``, ``failed``, ``skipped``, ``dry_run``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, get_args

from monitor.core.alerts import Alert, AlertKind, alert_id
from monitor.core.errors import RiskmonError
from monitor.core.events import MarginMode, OrderUpdate, PositionSide, Side
from monitor.core.payloads import ExecutionPayload, TriggerFields, orders_of

__all__ = [
    "CLIENT_ID_PREFIX",
    "EXECUTED_KINDS",
    "FINAL_STATES",
    "TRANSITIONS",
    "Leg",
    "LegProgress",
    "LegState",
    "OrderAnswer",
    "OrderAttempt",
    "PositionKey",
    "TradeFailure",
    "Trader",
    "client_order_id",
    "closable",
    "execution_alert",
    "legs_of",
    "trigger_fields",
]

CLIENT_ID_PREFIX: Final = "rm"
"""Every order riskmon places has a client id starting with this (letters and digits
only: what every venue accepts)."""

EXECUTED_KINDS: Final = frozenset({"stop_loss", "deleverage_plan"})
MAX_RESENDS: Final = 3
"""How often one attempt is sent again after its request was lost and the exchange does not
know the id: each time with the same id."""
SIZE_EPSILON: Final = 1e-9

LegState = Literal["pending", "sending", "accepted", "unknown", "filled", "failed", "skipped",
                   "dry_run"]
LEG_STATES: Final = get_args(LegState)
FINAL_STATES: Final = frozenset({"filled", "failed", "skipped", "dry_run"})

LegEvent = Literal["send", "accepted", "rejected", "lost", "duplicate", "throttled", "found",
                   "absent", "filled", "ended", "overdue", "give_up", "nothing", "dry_run"]

# (state, event) -> next state; "retry" resolves to pending or failed (attempts left?).
TRANSITIONS: Final[Mapping[tuple[LegState, LegEvent], LegState | Literal["retry", "resend"]]] = {
    ("pending", "send"): "sending",
    ("pending", "nothing"): "skipped",
    ("pending", "dry_run"): "dry_run",
    ("pending", "give_up"): "failed",
    ("sending", "accepted"): "accepted",
    ("sending", "rejected"): "retry",
    ("sending", "lost"): "unknown",
    ("sending", "duplicate"): "unknown",
    ("sending", "throttled"): "resend",
    ("sending", "filled"): "filled",
    ("sending", "ended"): "retry",
    ("sending", "give_up"): "failed",
    ("unknown", "found"): "accepted",
    ("unknown", "absent"): "resend",
    ("unknown", "filled"): "filled",
    ("unknown", "ended"): "retry",
    ("unknown", "give_up"): "failed",
    ("accepted", "filled"): "filled",
    ("accepted", "ended"): "retry",
    ("accepted", "overdue"): "unknown",
    ("accepted", "give_up"): "failed",
}


@dataclass(frozen=True, slots=True)
class Leg:
    """One reduce-only market order an alert asks for: close ``size`` contracts of the
    position (``inst_id``, ``margin_mode``, ``position_side``) by a ``side`` order."""

    alert_id: str
    index: int
    account: str
    inst_id: str
    side: Side
    position_side: PositionSide
    margin_mode: MarginMode
    size: float

    @property
    def position_key(self) -> tuple[str, MarginMode, PositionSide]:
        return (self.inst_id, self.margin_mode, self.position_side)


def legs_of(alert: Alert) -> tuple[Leg, ...]:
    """The orders of a ``stop_loss`` or ``deleverage_plan`` alert, as legs (others: none).

    Orders the alert could not have produced (no instrument, a side other than buy or
    sell, a size not positive and finite) are left out: the engine never writes them.
    """
    if alert.kind not in EXECUTED_KINDS:
        return ()
    legs: list[Leg] = []
    for index, order in enumerate(orders_of(alert)):
        if not isinstance(order, Mapping):
            continue
        inst_id, side, size = order.get("inst_id"), order.get("side"), order.get("size")
        position_side = order.get("pos_side", "net")
        margin_mode = order.get("margin_mode", "cross")
        if (not isinstance(inst_id, str) or side not in ("buy", "sell")
                or isinstance(size, bool) or not isinstance(size, int | float)
                or not 0 < size < math.inf or position_side not in ("net", "long", "short")
                or margin_mode not in ("cross", "isolated")):
            continue
        legs.append(Leg(alert.id, index, alert.account, inst_id, side, position_side,
                        margin_mode, float(size)))
    return tuple(legs)


def client_order_id(alert_id_text: str, leg: int, attempt: int) -> str:
    """``rm`` + 20 hex digits of the alert id's hash + the leg (3 digits) + the attempt
    (2 digits): 27 letters and digits (venues allow up to 32 at least)."""
    if not 0 <= leg < 1000 or not 1 <= attempt < 100:
        raise ValueError(f"leg {leg} or attempt {attempt} out of range")
    digest = hashlib.blake2b(alert_id_text.encode(), digest_size=10).hexdigest()
    return f"{CLIENT_ID_PREFIX}{digest}{leg:03d}{attempt:02d}"


def closable(leg: Leg, remaining: float,
             positions: Mapping[tuple[str, MarginMode, PositionSide], float]) -> float:
    """What the next order of ``leg`` may close: ``remaining`` contracts at most, and never
    more than the live position of the leg's side holds (a sell closes a long, positive,
    position; a buy a short one). 0 when the position is gone or on the other side."""
    live = positions.get(leg.position_key, 0.0)
    held = live if leg.side == "sell" else -live
    return max(0.0, min(remaining, held))


@dataclass
class LegProgress:
    """Where one leg is (see the module docstring's table).

    ``attempt`` counts the orders placed for the leg (1 once the first is stored);
    ``filled`` the contracts filled by orders that have ended, ``order_filled`` those of
    the current order; ``resends`` how often the current attempt was sent again.
    """

    leg: Leg
    source_kind: AlertKind
    created_ms: int
    state: LegState = "pending"
    attempt: int = 0
    client_id: str = ""
    order_id: str = ""
    order_size: float = 0.0
    filled: float = 0.0
    order_filled: float = 0.0
    average_price: float | None = None
    resends: int = 0
    reuse_id: bool = False
    first_sent_ms: int | None = None
    s_code: str = ""
    s_msg: str = ""

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def total_filled(self) -> float:
        return self.filled + self.order_filled

    @property
    def remaining(self) -> float:
        return max(0.0, self.leg.size - self.total_filled)

    def next_attempt(self, size: float) -> str:
        """Start the next order of this leg, of ``size`` contracts: its client id."""
        self.attempt += 1
        self.resends = 0
        self.reuse_id = False
        self.client_id = client_order_id(self.leg.alert_id, self.leg.index, self.attempt)
        self.order_id = ""
        self.order_size = size
        self.order_filled = 0.0
        return self.client_id

    def step(self, event: LegEvent, max_attempts: int) -> LegState:
        """Apply ``event``; returns the new state. An event the table has no row for in
        this state raises ValueError (a programming error in the caller)."""
        target = TRANSITIONS.get((self.state, event))
        if target is None:
            raise ValueError(f"leg {self.leg.alert_id}/{self.leg.index}: no transition for "
                             f"{event!r} in state {self.state!r}")
        if target == "retry":
            self.filled += self.order_filled
            self.order_filled = 0.0
            self.reuse_id = False
            target = ("pending" if self.attempt < max_attempts
                      and self.remaining > SIZE_EPSILON else "failed")
        elif target == "resend":
            self.resends += event != "throttled"
            self.reuse_id = True
            target = "pending" if self.resends <= MAX_RESENDS else "failed"
        elif target == "filled":
            self.filled += self.order_filled
            self.order_filled = 0.0
        self.state = target
        return target

    def note_fill(self, order_filled: float, average_price: float | None) -> None:
        """The current order's cumulative fill and average price, as last reported."""
        self.order_filled = max(self.order_filled, order_filled)
        if average_price is not None:
            self.average_price = average_price


def trigger_fields(source: Alert) -> TriggerFields:
    """The first keys of an ``execution_*`` alert's payload: the trigger it is about."""
    return {"trigger_id": source.id, "trigger_kind": source.kind}


def execution_alert(kind: AlertKind, source: Alert, discriminator: str, emitted_ms: int,
                    payload: ExecutionPayload) -> Alert:
    """An ``execution_*`` alert about the trigger ``source``.

    It carries the trigger's event time, level and figures (what the account looked like
    when the rule fired) and an id derived from the trigger's id and ``discriminator``
    (the leg and attempt it is about), never from a clock: the same step reported again
    after a restart has the same id, and the store keeps it once. ``emitted_ms`` is when
    it happened; the exchange's own times are in the payload, which begins with
    ``trigger_fields(source)``.
    """
    return Alert(
        id=alert_id(source.account, kind, source.ts, 0, f"{source.id}/{discriminator}"),
        ts=source.ts,
        emitted_ms=emitted_ms,
        account=source.account,
        kind=kind,
        level=source.level,
        from_level=None,
        margin_ratio=source.margin_ratio,
        equity_usd=source.equity_usd,
        maint_margin_usd=source.maint_margin_usd,
        init_margin_usd=source.init_margin_usd,
        inst_id=source.inst_id,
        mark=source.mark,
        payload=payload,
        closing_fee_usd=source.closing_fee_usd,
    )


@dataclass(frozen=True, slots=True)
class OrderAttempt:
    """One order request for a leg, as stored (``execution_attempts``): written before
    the request goes, then with the exchange's answer and, in the end, the order's final
    state. ``answer`` holds what the exchange said (``sCode``, ``sMsg``, ``ordId``, HTTP
    status, or the transport error), never a header."""

    client_id: str
    alert_id: str
    leg: int
    attempt: int
    account: str
    inst_id: str
    side: Side
    size: float
    sent_ms: int
    state: str
    answer: Mapping[str, Any]
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class OrderAnswer:
    """The exchange's answer about one order of a request (client id, order id, code,
    message, time); ``s_code`` "" means the answer did not mention it."""

    client_id: str
    order_id: str
    s_code: str
    s_msg: str
    ts_ms: int | None


class TradeFailure(RiskmonError):
    """A trading call failed as a whole; ``kind`` says what is known of its outcome:
    ``throttled`` (rate limited: nothing done), ``lost`` (no answer, a timeout, a server
    error: unknown) or ``refused`` (nothing done; ``code`` and ``msg`` are the venue's).
    Messages name the call, never a header or a credential."""

    def __init__(self, message: str, kind: Literal["throttled", "lost", "refused"],
                 code: str = "", msg: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.msg = msg


PositionKey = tuple[str, MarginMode, PositionSide]


class Trader(Protocol):
    """A venue's trading calls for one account, with its trade key (a venue's
    ``trader``, monitor/runtime/venues.py). Every call raises :class:`TradeFailure` when it
    fails."""

    account: str
    batch_limit: int

    async def permissions(self) -> frozenset[str]:
        """The key's permissions; execution needs ``trade`` among them."""
        ...

    async def positions(self) -> dict[PositionKey, float]:
        """Every open position's signed contracts."""
        ...

    async def place(self, orders: Sequence[tuple[Leg, str, float]]) -> list[OrderAnswer]:
        """Reduce-only market orders (leg, client id, size): one answer each, in order."""
        ...

    async def order(self, leg: Leg, client_id: str) -> OrderUpdate | None:
        """The order with this client id as the venue reports it; None if it has none."""
        ...

    async def warm(self) -> None:
        """A cheap call that keeps the connection to the venue open (the executor makes
        it when the account has been idle for ``[execution] keep_warm_s``)."""
        ...

    async def close(self) -> None: ...
