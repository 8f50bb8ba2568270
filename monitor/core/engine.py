"""The incremental margin engine: ``apply(event) -> alerts``, with no I/O and no clock.

Time is an input: the engine's clock is the largest event time it has seen, so a replay is
deterministic. One object owns all state; whoever drives it (the pipeline task) is its only
caller, so nothing here needs a lock.

Incremental bookkeeping (SPEC 1): every position of an account, with the live orders that
belong to it, is an :class:`Exposure`, keyed by instrument, margin mode and side (an
instrument may hold a long and a short in hedge mode, or a cross and an isolated position).
It holds its last contribution (PV, UPL, MM, CF, IM in settlement currency). Each account
keeps, per currency, the running sums of its cross exposures' contributions and running USD
totals. A mark-price tick therefore touches only the exposures on that instrument: it
recomputes each one, adds the difference into its account's sums, and checks the one
*pool* whose ratio it moves. Every :data:`REANCHOR_EVERY` updates an account's sums are
rebuilt from its exposures so float drift cannot grow.

Pools (SPEC 1.5). A pool is what walks a level ladder:

- the account's cross pool (multi-currency margin: one pool across currencies, adjusted
  equity with tiered haircuts, borrowing margin included);
- one pool per currency in single-currency margin (that currency's equity, no haircut);
- one pool per isolated position (its margin plus its UPL over its own MM + CF);
- the exchange's own figures for a portfolio-margin account (not modelled locally).

Risk unknown is a state (SPEC 1.5, "nothing unknown counts as zero"): an account lists what
it is missing (its first balance and positions snapshots, an instrument's spec, a mark, a
currency's price, borrowing tiers of a debt, a mode it can follow). While anything is
missing no level and no rule is evaluated; after ``stale_after`` a ``feed_stale`` alert names
what is missing, and ``feed_recovered`` follows when it arrives.

The clock and staleness. The clock is the largest event time seen, and staleness is judged
once a second of it, at whole seconds (the first event at or after each), so the sweeps fall
on the same times however a run began: a daemon restarted partway through a feed judges
as an uninterrupted replay of it does. Snapshots are dated by the last change of what they
hold (a position opened an hour ago, a balance last moved a minute ago), which is not the
present: until the first *live* event (a mark or index price, an order or positions push)
the clock is provisional, and nothing counts as missing from before that event, so the
jump from a restart's snapshot times to the feed's present time makes nothing stale (nor
is that jump held to ``max_ahead_s``, below: only a live clock is). Were
the feed silent instead, the clock (the daemon's ClockTicks) reaching ``stale_after`` past
the first event time makes it live as it is, and what is missing is then overdue.

Plausibility (issue 15, "bad input never moves state"; ``[bounds]``, monitor.app.config). Before
an event touches any state the engine judges it against what it holds, and either applies
it, ignores it (counted in :attr:`MarginEngine.out_of_order`) or raises
:class:`~monitor.core.errors.BadInput` for the caller to quarantine:

- an event dated more than ``max_ahead_s`` after its own receive time: bad input;
- an event that would move a live clock (see "The clock and staleness" below) more than
  ``max_ahead_s`` ahead: bad input, unless it is
  the ``confirm_after``-th in a row to do so with no move of the clock between them and each
  within ``max_ahead_s`` of the one before (a gap in a recording), which is applied;
- a mark (index) price more than ``price_band`` times away from the last accepted price of
  its instrument (index), either way; the first mark of an instrument against its index
  (``BASE-QUOTE`` of ``BASE-QUOTE-...``) when one is known: bad input, unless it is the
  ``confirm_after``-th out-of-band price in a row, each within the band of the one before,
  with no accepted price between them (the market really moved): that one is applied and
  is the new reference. So the band never locks an instrument out for longer than
  ``confirm_after - 1`` ticks;
- the first mark of an instrument id that is not an identifier (monitor.core.events): bad input
  (the decoder checks every other identifier; on the hot path this costs nothing);
- a mark or index price older than the last one applied for its instrument (index), an order
  update older than the last one of that order, a balance or positions push older than
  the last one of its account: out of order, ignored and counted.

A refused event changes nothing but the tally of votes toward confirming a jump, which the
next applied price of the instrument (the next move of the clock) clears: the run with the
bad line and the run without it end in the same state with the same alerts. ClockTick,
FeedStatus and ``UNTIMED`` events are exempt: they are the daemon's own, or dated by the
engine's clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from monitor.core.alerts import LEVEL_RANK, Alert, AlertKind, Level, alert_id
from monitor.core.errors import BadInput
from monitor.core.events import (
    UNTIMED,
    AccountConfigUpdate,
    AccountMode,
    BalanceUpdate,
    BorrowTiersUpdate,
    ClockTick,
    CollateralTiersUpdate,
    CurrencyBalance,
    Event,
    ExchangeAccountFigures,
    ExchangePositionFigures,
    FeedStatus,
    IndexPrice,
    InstrumentUpdate,
    MarginCall,
    MarginMode,
    MarkPrice,
    Order,
    OrdersSnapshot,
    OrderUpdate,
    Position,
    PositionSide,
    PositionSnapshot,
    PositionUpdate,
    identifier_problem,
)
from monitor.core.formulas import (
    borrowing_margin,
    collateral_value,
    exposure_figures,
    margin_ratio,
    position_value,
    unrealized_pnl,
)
from monitor.core.instruments import BorrowTier, CollateralTiers, Instrument, round_up_to_lot
from monitor.core.payloads import (
    AccountModePayload,
    AlertPayload,
    CloseOrder,
    DeleveragePlanPayload,
    DivergenceField,
    DivergenceFieldName,
    ExchangeDivergenceLiquidationPayload,
    ExchangeDivergenceMarginCallPayload,
    ExchangeDivergencePoolPayload,
    FeedConnectionPayload,
    FeedRecoveredMarkPayload,
    FeedRecoveredMissingPayload,
    FeedStaleMarkPayload,
    FeedStaleMissingPayload,
    LevelChangedPayload,
    MarginCallPositionFields,
    MarginCallReason,
    PlanStep,
    PoolFields,
    ReminderPayload,
    RiskUnknownFields,
    StopLossPayload,
)
from monitor.core.records import AccountCheckpoint, PoolCheckpoint
from monitor.core.settings import AccountConfig, Config, StopLossRule
from monitor.core.transitions import (
    DELEVERAGE_RANK,
    INFINITY,
    LevelLadder,
    RuleState,
    checkpoint_on_known,
    checkpoint_on_passed,
    divergence,
    level_change,
    overdue,
    reminder,
    reminder_after,
)

REANCHOR_EVERY = 4096
SWEEP_INTERVAL_MS = 1000
"""Staleness, reminders and interest are swept at every whole second of event time."""

# Pool kinds (see the module docstring).
POOL_ACCOUNT: Final = 0
POOL_CURRENCY: Final = 1
POOL_ISOLATED: Final = 2
POOL_EXCHANGE: Final = 3

NO_CLOCK_LIMIT: Final = 1 << 62
"""The clock limit before the engine has a clock: any first event time is taken."""
ORDER_TIMES_KEPT: Final = 100_000
"""Orders whose last update time is kept for the out-of-order check (the oldest go first)."""

ACCOUNT_POOL_KEY: Final = ""
"""The key of an account's own pool (cross, or the exchange's figures)."""

NoticeKind = Literal["uncollateralised_currency", "unknown_instrument", "unpriced_currency"]
ExposureKey = tuple[str, MarginMode, PositionSide]
HolderKey = tuple[str, MarginMode, PositionSide]

_NO_FIGURES: Final = ExchangeAccountFigures(None, None, None, None)

_LIVE_EVENTS: Final = (MarkPrice, IndexPrice, OrderUpdate, PositionUpdate)
"""Events dated by the present (see the module docstring, "The clock and staleness")."""
# Missing items that have alerts of their own, not the generic feed_stale: a mark's
# staleness is alerted per instrument, an unsupported mode by account_mode.
_OWN_ALERT_PREFIXES: Final = ("mark:", "mode:")


@dataclass(frozen=True, slots=True)
class Notice:
    """Something worth one log line, reported once: not an alert, not an error."""

    kind: NoticeKind
    account: str | None
    subject: str


@dataclass(frozen=True, slots=True)
class Figures:
    """A pool's or an account's figures in USD (SPEC 1.5). ``margin_ratio`` is
    ``equity / (MM + CF)`` for a pool, None when undefined."""

    equity_usd: float
    maint_margin_usd: float
    closing_fee_usd: float
    init_margin_usd: float
    margin_ratio: float | None

    @classmethod
    def of(cls, equity: float, maint: float, fee: float, init: float) -> Figures:
        return cls(equity, maint, fee, init, margin_ratio(equity, maint, fee))

    @property
    def im_coverage(self) -> float | None:
        """``AE / IM`` ("equity as a share of used margin", seed 000)."""
        return self.equity_usd / self.init_margin_usd if self.init_margin_usd > 0 else None

    @property
    def free_margin_usd(self) -> float:
        return self.equity_usd - self.init_margin_usd


class CurrencyState:
    """One currency of one account: balance, accrued interest and contribution sums.

    ``upl``, ``maint``, ``fee`` and ``init`` are the sums over the account's cross
    exposures settled in this currency; ``iso_margin`` and ``iso_upl`` those of its
    isolated positions; ``borrow_maint`` and ``borrow_init`` the margin its liability
    needs (SPEC 1.4). All in units of the currency; ``value`` is its term of the account's
    equity in USD.
    """

    __slots__ = (
        "accrual_ms",
        "borrow_init",
        "borrow_maint",
        "cash",
        "collateral",
        "currency",
        "exchange",
        "fee",
        "flat",
        "init",
        "interest",
        "iso_margin",
        "iso_upl",
        "liability",
        "maint",
        "pool",
        "price",
        "rate",
        "upl",
        "value",
    )

    def __init__(self, currency: str, collateral: CollateralTiers, rate: float,
                 price: float) -> None:
        self.currency = currency
        self.collateral = collateral
        flat = collateral.flat_factor
        self.flat = -1.0 if flat is None else flat  # -1: tiered (collateral_value)
        self.rate = rate
        self.price = price
        self.value = 0.0
        self.cash = 0.0
        self.interest = 0.0
        self.liability: float | None = None
        self.accrual_ms: int | None = None
        self.upl = self.maint = self.fee = self.init = 0.0
        self.iso_margin = self.iso_upl = 0.0
        self.borrow_maint = self.borrow_init = 0.0
        self.exchange: ExchangeAccountFigures | None = None
        self.pool: Pool | None = None

    def set_collateral(self, collateral: CollateralTiers) -> None:
        self.collateral = collateral
        flat = collateral.flat_factor
        self.flat = -1.0 if flat is None else flat

    @property
    def debt(self) -> float:
        """The liability interest accrues on: the feed's figure, else the negative cash."""
        return self.liability if self.liability is not None else max(0.0, -self.cash)

    @property
    def equity(self) -> float:
        """The cross equity ``eq_c = cash_c - int_c + UPL_c`` of cross positions (SPEC
        1.4). The cash balance a venue reports holds no isolated margin: the currency's
        equity it reports is the cash plus the cross UPL plus the isolated equity
        (isolated margin and UPL), checked on a real single-currency capture
        (tests/test_fidelity.py)."""
        return self.cash - self.interest + self.upl

    @property
    def total_equity(self) -> float:
        """``eq_c + iso_c``: the currency's equity with its isolated positions (what the
        venue reports as the currency's equity)."""
        return self.cash - self.interest + self.upl + self.iso_margin + self.iso_upl

    def adjusted_value(self) -> float:
        """``value(eq_c)`` in USD: assets after their collateral haircut, debts in full."""
        eq = self.cash - self.interest + self.upl
        if self.flat >= 0.0:
            return eq * self.price * self.flat if eq > 0.0 else eq * self.price
        return collateral_value(eq, self.price, self.collateral)


class Pool:
    """Something that walks a level ladder: see the module docstring.

    ``key`` is :data:`ACCOUNT_POOL_KEY` for the account's own pool, the currency in
    single-currency mode, ``isolated:INST:SIDE`` for an isolated position.
    """

    __slots__ = ("account", "currency", "divergent", "exposure", "key", "kind", "level",
                 "level_high", "level_low", "reminder_due_ms")

    def __init__(self, account: AccountState, key: str, kind: int, ladder: LevelLadder,
                 currency: CurrencyState | None = None,
                 exposure: Exposure | None = None) -> None:
        self.account = account
        self.key = key
        self.kind = kind
        self.currency = currency
        self.exposure = exposure
        self.level: Level = "normal"
        self.level_low, self.level_high = ladder.band("normal")
        self.reminder_due_ms: int | None = None
        self.divergent = False


class Exposure:
    """One position of an account (instrument, margin mode, side) and its live orders,
    with its contribution."""

    __slots__ = (
        "abs_qk",
        "account",
        "avg_price",
        "booked_margin",
        "contracts",
        "currency",
        "exchange",
        "fee",
        "fee_rate",
        "init",
        "inst_id",
        "instrument",
        "inverse",
        "isolated",
        "key",
        "leverage",
        "liquidation_divergent",
        "maint",
        "maint_deduction",
        "maint_high",
        "maint_low",
        "maint_rate",
        "margin",
        "margin_mode",
        "orders",
        "pool",
        "position_leverage",
        "qk",
        "side",
        "simple",
        "since_ms",
        "upl",
        "value",
    )

    def __init__(self, account: AccountState, key: ExposureKey, since_ms: int) -> None:
        self.account = account
        self.key = key
        self.inst_id, self.margin_mode, self.side = key
        self.isolated = self.margin_mode == "isolated"
        self.instrument: Instrument | None = None
        self.currency: CurrencyState | None = None
        self.pool: Pool | None = None
        self.contracts = 0.0
        self.avg_price = 0.0
        self.position_leverage: float | None = None
        self.leverage = 1.0
        self.margin = 0.0  # an isolated position's own margin
        self.booked_margin = 0.0  # the margin already in the currency's iso_margin sum
        self.exchange: ExchangePositionFigures | None = None
        self.orders: dict[str, Order] = {}
        self.since_ms = since_ms
        self.value = self.upl = self.maint = self.fee = self.init = 0.0
        # Constants of the mark-tick fast path, valid while ``simple`` (a known instrument,
        # a position and no live orders); set by MarginEngine._refresh.
        self.simple = False
        self.inverse = False
        self.qk = self.abs_qk = self.maint_rate = self.fee_rate = 0.0
        # The tier of the fast path (_on_mark): its rate and deduction hold while the
        # position value stays in (maint_low, maint_high] (instruments.Instrument).
        self.liquidation_divergent = False  # an exchange_divergence of its liquidation price
        self.maint_deduction = 0.0
        self.maint_low = -math.inf
        self.maint_high = math.inf

    @property
    def empty(self) -> bool:
        return self.contracts == 0.0 and not self.orders


class AccountState:
    """Everything the engine knows about one account."""

    __slots__ = (
        "config",
        "currencies",
        "equity_usd",
        "exchange",
        "exchange_level",
        "exposures",
        "fee_usd",
        "hedge_mode",
        "init_usd",
        "last_alert_ts",
        "maint_usd",
        "margin_call_divergent",
        "missing",
        "mode",
        "name",
        "occurrences",
        "order_keys",
        "owed",
        "pending",
        "pools",
        "rederiving",
        "reminder_due_ms",
        "reported",
        "restored",
        "rule_states",
        "updates",
    )

    def __init__(self, name: str, config: AccountConfig, hysteresis: float) -> None:
        self.name = name
        self.config = config
        self.mode: AccountMode = config.mode or "multi_currency"
        self.exchange_level = ""
        self.hedge_mode = False
        self.currencies: dict[str, CurrencyState] = {}
        self.exposures: dict[ExposureKey, Exposure] = {}
        self.order_keys: dict[str, ExposureKey] = {}
        self.pools: dict[str, Pool] = {}
        self.rule_states = [RuleState(rule, hysteresis) for rule in config.stop_loss]
        # The earliest reminder due among the pools (None: none due).
        self.reminder_due_ms: int | None = None
        # Levels and reminders from a checkpoint, by pool key, for pools not created yet.
        self.restored: dict[str, tuple[Level, int | None]] = {}
        # What the account's risk is missing (item -> since when, event time), and which
        # of those items a feed_stale alert has named.
        self.missing: dict[str, int] = {}
        self.reported: dict[str, None] = {}
        self.exchange: ExchangeAccountFigures | None = None
        # An exchange_divergence of the exchange's margin call (MarginEngine._on_margin_call).
        self.margin_call_divergent = False
        self.owed: frozenset[str] = frozenset()
        self.updates = 0
        # Alerts emitted at the event time ``last_alert_ts``, by kind and discriminator
        # (see _emit): what tells two alerts of one kind at one time apart.
        self.last_alert_ts = -1
        self.occurrences: dict[tuple[str, str], int] = {}
        # A checkpoint restored but not taken over yet (see MarginEngine.restore).
        self.pending: AccountCheckpoint | None = None
        # Whether the account's risk was known before that checkpoint's time: the events
        # re-delivered since the restart re-derive its state.
        self.rederiving = False
        # Running USD totals of the cross pool: equity (adjusted in multi-currency mode),
        # maintenance margin, closing fee and initial margin (borrowing margin included).
        self.equity_usd = self.maint_usd = self.fee_usd = self.init_usd = 0.0


class MarginEngine:
    """Margin state of every account, updated incrementally on every event."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.risk = config.risk
        # Accounts whose triggers the executor sends (not a dry run): their stop_loss
        # alerts say ``"dry_run": false``.
        self._executing = (frozenset() if config.execution.dry_run
                           else frozenset(config.executing_accounts()))
        self.ladder = LevelLadder(config.risk)
        self.instruments: dict[str, Instrument] = {i.inst_id: i for i in config.instruments}
        self._configured_instruments = frozenset(self.instruments)
        self.collateral: dict[str, CollateralTiers] = dict(config.collateral)
        self.borrow_tiers: dict[str, tuple[BorrowTier, ...]] = dict(config.borrow)
        self.accounts: dict[str, AccountState] = {}
        self.marks: dict[str, float] = {}
        self.mark_ms: dict[str, int] = {}
        self.index_prices: dict[tuple[str, str], float] = {}
        self.usd_prices: dict[str, float] = {"USD": 1.0, "USDT": 1.0}
        # inst_id -> (account, margin mode, side) -> exposure: the only index a mark tick
        # walks.
        self.holders: dict[str, dict[HolderKey, Exposure]] = {}
        # currency -> account name -> account: the accounts an index tick re-evaluates.
        self.currency_holders: dict[str, dict[str, AccountState]] = {}
        # Dicts used as ordered sets: iteration order must not depend on string hashing,
        # or two replays could emit alerts in different orders.
        self.stale: dict[str, None] = {}
        # Instruments some holder lacks a fresh mark of (never marked, or stale).
        self.awaiting_mark: dict[str, None] = {}
        self.debtors: dict[str, AccountState] = {}
        self.critical: dict[str, AccountState] = {}
        self.unknown: dict[str, AccountState] = {}
        # Accounts missing an item no feed_stale has named yet (see _sweep).
        self._unreported: dict[str, AccountState] = {}
        self._borrowers: dict[str, int] = {}
        self.now_ms = 0
        # The receive time of the last event applied (the replay paces by it).
        self.last_recv_ms = 0
        # Moves whenever the set of instruments or currencies in use (or borrowed) changes
        # (see instruments_in_use): a live feed follows it with its subscriptions.
        self.interest_version = 0
        self._next_sweep_ms = 0
        # The first event time, and where ages of what is missing start from once the
        # clock is live (None: provisional; see the module docstring).
        self._first_ms = 0
        self._live_from_ms: int | None = None
        self._notices: list[Notice] = []
        # Accounts whose checkpoint changed since the last drain_checkpoints(): an
        # ordered set, like the others.
        self._changed: dict[str, AccountState] = {}
        # Accounts whose restored checkpoint waits for the clock (see restore), and the
        # earliest time among theirs.
        self._pending: dict[str, AccountState] = {}
        self._next_takeover_ms = NO_CLOCK_LIMIT
        # Accounts followed on the exchange's figures or not at all: an account_mode alert
        # is due for each (emitted by the next event, which dates it).
        self._announce: dict[str, AccountState] = {}
        self._noticed: set[tuple[str, str | None, str]] = set()
        # Plausibility (see the module docstring).
        bounds = config.bounds
        self._band_high = bounds.price_band
        self._band_low = 1.0 / bounds.price_band
        self._confirm_after = bounds.confirm_after
        self._max_ahead_ms = int(bounds.max_ahead_s * 1000)
        self._clock_limit_ms = NO_CLOCK_LIMIT  # now_ms + max_ahead once the clock runs
        self.index_ms: dict[tuple[str, str], int] = {}
        # Out-of-band prices in a row per instrument ("mark:ID") or index ("index:B-Q"):
        # (the last of them, how many, the time of the last accepted price then).
        self._band_votes: dict[str, tuple[float, int, int]] = {}
        # Events in a row beyond the clock limit: (the last one's time, how many, the clock
        # then).
        self._jump_votes: tuple[int, int, int] = (0, 0, -1)
        self._order_ms: dict[tuple[str, str], int] = {}
        self._account_ms: dict[tuple[str, str], int] = {}
        self.out_of_order: dict[str, int] = {"mark": 0, "index": 0, "order": 0,
                                             "positions": 0, "balance": 0}
        self._stale_after_ms = int(config.risk.stale_after_s * 1000)
        self._repeat_ms = int(config.risk.repeat_interval_s * 1000)
        # The event being applied, for helpers deep in the bookkeeping that emit alerts.
        self._ts = 0
        self._recv_ms = 0
        self._alerts: list[Alert] = []
        # The list the next event's alerts go into; replaced only when one was used.
        self._collecting: list[Alert] = []
        for name, account_config in config.accounts.items():
            self._add_account(name, account_config)

    # -- public API --------------------------------------------------------------------

    def apply(self, event: Event) -> Sequence[Alert]:
        """Apply one event; return the alerts it causes, in a deterministic order.

        Most events cause none: they get an empty tuple, and no list is allocated for them
        (a mark-price tick is the replay's hot path).
        """
        alerts = self._collecting
        if type(event) is MarkPrice:
            # The hot path: ``event`` is known to be a MarkPrice here, so compiled code reads
            # its fields natively rather than through the Event union. No bookkeeping but
            # the clock (_mark_arrived does its own).
            event_ms = event.event_ms
            # Plausibility in one dict lookup and three comparisons: in the band of the last
            # mark, within the clock limit, not too far ahead of its receive time; the rest
            # (a first mark, out of band, a jump, out of order) in _admit_mark.
            last = self.marks.get(event.inst_id)
            if (last is None
                    or not last * self._band_low <= event.price <= last * self._band_high
                    or event_ms > self._clock_limit_ms
                    or event_ms - event.recv_ms > self._max_ahead_ms):
                if not self._admit_mark(event, last):
                    return ()
            elif event_ms <= self.now_ms and event_ms < self.mark_ms[event.inst_id]:
                self.out_of_order["mark"] += 1
                return ()
            self.last_recv_ms = event.recv_ms
            if self._live_from_ms is None:
                self._go_live(event_ms, True)
            if event_ms > self.now_ms:
                self._advance(event_ms, event.recv_ms, alerts)
            if self._announce:
                self._begin(event_ms, event.recv_ms, alerts)
                self._announce_modes()
            self._on_mark(event, alerts)
        else:
            if event.event_ms != UNTIMED and not self._admit(event):
                return ()
            self.last_recv_ms = event.recv_ms
            if self._live_from_ms is None and event.event_ms != UNTIMED:
                self._go_live(event.event_ms, isinstance(event, _LIVE_EVENTS))
            if event.event_ms > self.now_ms:
                self._advance(event.event_ms, event.recv_ms, alerts)
            elif event.event_ms == UNTIMED:
                # Dated by the engine's clock (the receive time before any event), never
                # moving it: see monitor.core.events.
                event = replace(event, event_ms=self.now_ms or event.recv_ms)
            if self._announce:
                self._begin(event.event_ms, event.recv_ms, alerts)
                self._announce_modes()
            self._dispatch(event, alerts)
        if not alerts:
            return ()
        self._collecting = []
        return alerts

    def _go_live(self, event_ms: int, live: bool) -> None:
        """While the clock is provisional: a live event at ``event_ms`` makes it live,
        with the ages of what is missing counted from then; any event ``stale_after`` past
        the first event time makes it live as it is (see the module docstring)."""
        if self._first_ms == 0:
            self._first_ms = event_ms
        if not self._goes_live(event_ms, live, self._first_ms):
            return
        self._live_from_ms = max(event_ms, self.now_ms) if live else self._first_ms
        self._clock_limit_ms = max(event_ms, self.now_ms) + self._max_ahead_ms

    def _goes_live(self, event_ms: int, live: bool, first_ms: int) -> bool:
        """Whether an event (of a live kind, or not) at ``event_ms`` makes a provisional
        clock live, the first event time being ``first_ms`` (the rule :meth:`screen`
        follows too)."""
        return live or event_ms - first_ms >= self._stale_after_ms

    def _advance(self, event_ms: int, recv_ms: int, alerts: list[Alert]) -> None:
        """Move the clock to ``event_ms``; the once-a-second sweep when it is due."""
        self.now_ms = event_ms
        if self._live_from_ms is not None:
            self._clock_limit_ms = event_ms + self._max_ahead_ms
        if event_ms > self._next_takeover_ms:
            self._pass_checkpoints(event_ms)
        if event_ms >= self._next_sweep_ms:
            self._next_sweep_ms = (event_ms // SWEEP_INTERVAL_MS + 1) * SWEEP_INTERVAL_MS
            self._begin(event_ms, recv_ms, alerts)
            self._sweep(event_ms, recv_ms, alerts)

    def _dispatch(self, event: Event, alerts: list[Alert]) -> None:
        self._begin(event.event_ms, event.recv_ms, alerts)
        match event:
            case MarkPrice():
                self._on_mark(event, alerts)
            case IndexPrice():
                self._on_index(event, alerts)
            case OrderUpdate():
                self._on_order(event, alerts)
            case OrdersSnapshot():
                self._on_orders_snapshot(event, alerts)
            case PositionUpdate():
                self._on_positions(event.account, event.positions, False, event, alerts)
            case PositionSnapshot():
                self._on_positions(event.account, event.positions, True, event, alerts)
            case BalanceUpdate():
                self._on_balance(event, alerts)
            case InstrumentUpdate():
                self._on_instrument(event, alerts)
            case AccountConfigUpdate():
                self._on_account_config(event, alerts)
            case CollateralTiersUpdate():
                self._on_collateral_tiers(event, alerts)
            case BorrowTiersUpdate():
                self._on_borrow_tiers(event, alerts)
            case MarginCall():
                self._on_margin_call(event, alerts)
            case FeedStatus():
                self._on_feed_status(event, alerts)
            case ClockTick():
                pass  # its only work is the sweep in apply()

    # -- plausibility (see the module docstring) ---------------------------------------

    def screen(self, events: Sequence[Event]) -> None:
        """Judge the events of one input as :meth:`apply` would, one after the other,
        without applying them or changing anything.

        The pipeline calls this for an input of more than one event, so that it is applied
        whole or not at all: :meth:`apply` judges each event against the state the events
        before it left, and this follows the clock and the prices they would set.

        Raises:
            BadInput: one of the events would be refused (the reason is that event's).
        """
        now_ms = self.now_ms
        limit = self._clock_limit_ms
        live = self._live_from_ms is not None
        first_ms = self._first_ms
        prices: dict[str, tuple[float | None, int]] = {}
        for event in events:
            event_ms = event.event_ms
            if event_ms == UNTIMED or type(event) is ClockTick or type(event) is FeedStatus:
                continue
            if event_ms - event.recv_ms > self._max_ahead_ms:
                raise BadInput(self._ahead_reason(event_ms, event.recv_ms))
            if type(event) is MarkPrice or type(event) is IndexPrice:
                if isinstance(event, MarkPrice):
                    key = f"mark:{event.inst_id}"
                    if event.inst_id not in self.marks:
                        problem = identifier_problem(event.inst_id)
                        if problem is not None:
                            raise BadInput(f"mark-price instId {event.inst_id!r} {problem}")
                else:
                    key = f"index:{event.base}-{event.quote}"
                held = prices.get(key)
                reference, reference_ms = self._reference(event) if held is None else held
                if reference_ms >= 0 and event_ms < reference_ms:
                    continue  # out of order: apply() ignores it
                if reference is not None and not (reference * self._band_low <= event.price
                                                  <= reference * self._band_high):
                    votes = self._band_votes.get(key)
                    if not self._confirms(votes, event.price, reference_ms):
                        raise BadInput(self._band_reason(key, event.price, reference, 1))
                prices[key] = (event.price, event_ms)
            if event_ms > limit and now_ms > 0:
                candidate, count, clock = self._jump_votes
                if not (clock == now_ms and count + 1 >= self._confirm_after
                        and abs(event_ms - candidate) <= self._max_ahead_ms) and (
                        self._confirm_after > 1):
                    raise BadInput(self._jump_reason(event_ms, now_ms, 1))
            if not live:
                first_ms = first_ms or event_ms
                live = self._goes_live(event_ms, isinstance(event, _LIVE_EVENTS), first_ms)
            if event_ms > now_ms:
                now_ms = event_ms
                if live:
                    limit = now_ms + self._max_ahead_ms

    def _reference(self, event: MarkPrice | IndexPrice) -> tuple[float | None, int]:
        """The price an event's price is held to, and the time of that price (-1: none of
        its own, such as the index price a first mark is held to)."""
        if type(event) is MarkPrice:
            last = self.marks.get(event.inst_id)
            if last is not None:
                return last, self.mark_ms[event.inst_id]
            base, _, rest = event.inst_id.partition("-")
            quote = rest.partition("-")[0]
            return self.index_prices.get((base, quote)), -1
        assert type(event) is IndexPrice
        pair = (event.base, event.quote)
        return self.index_prices.get(pair), self.index_ms.get(pair, -1)

    def _confirms(self, votes: tuple[float, int, int] | None, price: float,
                  reference_ms: int) -> bool:
        """Whether an out-of-band ``price`` is the ``confirm_after``-th in a row."""
        if self._confirm_after <= 1:
            return True
        if votes is None:
            return False
        candidate, count, since_ms = votes
        return (since_ms == reference_ms and count + 1 >= self._confirm_after
                and candidate * self._band_low <= price <= candidate * self._band_high)

    def _vote_band(self, key: str, price: float, reference: float, reference_ms: int) -> None:
        """Count an out-of-band price toward moving the band; raise unless confirmed."""
        if self._confirms(self._band_votes.get(key), price, reference_ms):
            self._band_votes.pop(key, None)
            return
        votes = self._band_votes.get(key)
        count = 1
        if votes is not None:
            candidate, previous, since_ms = votes
            if since_ms == reference_ms and (
                    candidate * self._band_low <= price <= candidate * self._band_high):
                count = previous + 1
        if len(self._band_votes) >= ORDER_TIMES_KEPT:
            self._band_votes.clear()  # garbage by the hundred thousand: start over
        self._band_votes[key] = (price, count, reference_ms)
        raise BadInput(self._band_reason(key, price, reference, count))

    def _vote_jump(self, event_ms: int) -> None:
        """Count an event beyond the clock limit toward a jump; raise unless confirmed."""
        if self.now_ms == 0 or self._confirm_after <= 1:
            return
        candidate, count, clock = self._jump_votes
        if clock == self.now_ms and abs(event_ms - candidate) <= self._max_ahead_ms:
            count += 1
        else:
            count = 1
        if count >= self._confirm_after:
            self._jump_votes = (0, 0, -1)
            return
        self._jump_votes = (event_ms, count, self.now_ms)
        raise BadInput(self._jump_reason(event_ms, self.now_ms, count))

    def _admit_mark(self, event: MarkPrice, last: float | None) -> bool:
        """The slow path of a mark's plausibility: True to apply it, False to ignore it (out
        of order, counted); raises BadInput to refuse it."""
        inst_id = event.inst_id
        event_ms = event.event_ms
        if last is None:
            problem = identifier_problem(inst_id)
            if problem is not None:
                raise BadInput(f"mark-price instId {inst_id!r} {problem}")
        if event_ms - event.recv_ms > self._max_ahead_ms:
            raise BadInput(self._ahead_reason(event_ms, event.recv_ms))
        reference, reference_ms = self._reference(event)
        if reference_ms >= 0 and event_ms < reference_ms:
            self.out_of_order["mark"] += 1
            return False
        if event_ms > self._clock_limit_ms:
            self._vote_jump(event_ms)
        if reference is not None and not (
                reference * self._band_low <= event.price <= reference * self._band_high):
            self._vote_band(f"mark:{inst_id}", event.price, reference, reference_ms)
        return True

    def _admit(self, event: Event) -> bool:
        """Plausibility of a timed event other than a mark (see :meth:`_admit_mark`)."""
        event_ms = event.event_ms
        if type(event) is ClockTick or type(event) is FeedStatus:
            return True
        if event_ms - event.recv_ms > self._max_ahead_ms:
            raise BadInput(self._ahead_reason(event_ms, event.recv_ms))
        order_key: tuple[str, str] | None = None
        account_key: tuple[str, str] | None = None
        if type(event) is IndexPrice:
            pair = (event.base, event.quote)
            reference, reference_ms = self._reference(event)
            if event_ms < reference_ms:
                self.out_of_order["index"] += 1
                return False
            if event_ms > self._clock_limit_ms:
                self._vote_jump(event_ms)
            if reference is not None and not (
                    reference * self._band_low <= event.price <= reference * self._band_high):
                self._vote_band(f"index:{pair[0]}-{pair[1]}", event.price, reference,
                                reference_ms)
            self.index_ms[pair] = event_ms
            return True
        if type(event) is OrderUpdate:
            order_key = (event.account, event.order.order_id)
            if event_ms < self._order_ms.get(order_key, 0):
                self.out_of_order["order"] += 1
                return False
        elif type(event) is PositionUpdate or type(event) is PositionSnapshot:
            account_key = (event.account, "positions")
        elif type(event) is BalanceUpdate:
            account_key = (event.account, "balance")
        if account_key is not None and event_ms < self._account_ms.get(account_key, 0):
            self.out_of_order[account_key[1]] += 1
            return False
        if event_ms > self._clock_limit_ms:
            self._vote_jump(event_ms)
        # Accepted: remember its time for the out-of-order check of the next one.
        if order_key is not None:
            times = self._order_ms
            times.pop(order_key, None)
            times[order_key] = event_ms
            if len(times) > ORDER_TIMES_KEPT:
                del times[next(iter(times))]
        elif account_key is not None:
            self._account_ms[account_key] = event_ms
        return True

    def _ahead_reason(self, event_ms: int, recv_ms: int) -> str:
        return (f"event time {event_ms} is {(event_ms - recv_ms) / 1000:.3f} s after its "
                f"receive time {recv_ms}, more than bounds.max_ahead_s "
                f"({self._max_ahead_ms / 1000:g} s)")

    def _jump_reason(self, event_ms: int, now_ms: int, count: int) -> str:
        return (f"event time {event_ms} would move the clock {(event_ms - now_ms) / 1000:.3f} s "
                f"ahead, more than bounds.max_ahead_s ({self._max_ahead_ms / 1000:g} s); "
                f"{count} of {self._confirm_after} in a row confirm a jump")

    def _band_reason(self, key: str, price: float, reference: float, count: int) -> str:
        kind, _, name = key.partition(":")
        return (f"{kind} price {price!r} of {name} is more than {self._band_high:g} times "
                f"away from the reference {reference!r} (bounds.price_band); {count} of "
                f"{self._confirm_after} in a row confirm a move")

    @property
    def has_notices(self) -> bool:
        return bool(self._notices)

    def drain_notices(self) -> list[Notice]:
        """Notices collected since the last call (each reported once per run)."""
        notices, self._notices = self._notices, []
        return notices

    def figures(self, name: str) -> Figures:
        """The account's headline figures (SPEC 1.5) from the incremental sums: its cross
        pool, the sum of its currency pools (the margin ratio of the lowest), or the
        exchange's figures."""
        account = self.accounts[name]
        self._accrue(account, self.now_ms)
        return self._headline(account)

    def pool_figures(self, name: str) -> dict[str, Figures]:
        """Every pool of the account, by key, from the incremental sums."""
        account = self.accounts[name]
        self._accrue(account, self.now_ms)
        return {key: self._pool_figures(pool) for key, pool in account.pools.items()}

    def recompute(self, name: str) -> Figures:
        """The account's headline figures recomputed from scratch, ignoring every running
        sum. Used by the property tests and as the benchmark baseline."""
        return self._scratch(name)[0]

    def recompute_pools(self, name: str) -> dict[str, Figures]:
        """Every pool's figures recomputed from scratch (see :meth:`recompute`)."""
        return self._scratch(name)[1]

    def level(self, name: str) -> Level:
        """The account's (headline) level: the worst of its own pools."""
        return self._account_level(self.accounts[name])

    def levels(self) -> dict[str, Level]:
        """Every account's current (headline) level."""
        return {name: self._account_level(account) for name, account in self.accounts.items()}

    @property
    def clock_live(self) -> bool:
        """Whether the clock is live: see the module docstring, "The clock and
        staleness"."""
        return self._live_from_ms is not None

    def risk_known(self, name: str) -> bool:
        """Whether nothing the account's risk depends on is missing (SPEC 1.5)."""
        return not self.accounts[name].missing

    def missing(self, name: str) -> list[str]:
        """What the account's risk lacks, sorted (``--state-out``'s ``missing``)."""
        return sorted(self.accounts[name].missing)

    def held_positions(self, name: str) -> dict[ExposureKey, float] | None:
        """The account's open positions as the feed last reported them: signed contracts
        by (instrument, margin mode, side); None before its first positions snapshot (or
        for an account the engine does not know). The executor sizes its orders by it."""
        account = self.accounts.get(name)
        if account is None or "snapshot:positions" in account.missing:
            return None
        return {key: exposure.contracts for key, exposure in account.exposures.items()
                if exposure.contracts != 0.0}

    def unknown_accounts(self) -> list[str]:
        """The accounts whose risk is unknown now (some item missing, SPEC 1.5)."""
        return [name for name, account in self.unknown.items() if account.missing]

    def stale_instruments(self) -> list[str]:
        """Instruments in use whose mark is older than ``risk.stale_after_s`` (SPEC 2)."""
        return list(self.stale)

    @property
    def has_checkpoints(self) -> bool:
        return bool(self._changed)

    def drain_checkpoints(self) -> list[AccountCheckpoint]:
        """Checkpoints of the accounts whose levels, reminders or rules changed since the
        last call, but not of an account whose restored checkpoint waits (see
        :meth:`restore`). The pipeline stores them with the alerts of the same batch."""
        changed, self._changed = self._changed, {}
        return [self._checkpoint(account) for account in changed.values()
                if account.pending is None]

    def restore(self, checkpoints: Iterable[AccountCheckpoint]) -> None:
        """Resume from checkpoints saved by a previous run, before any event is applied.

        A checkpoint waits until the account's risk is known again (its snapshots and
        marks arrived). If that happens at or after the checkpoint's time (``ts``, the
        engine's clock when it was saved), or while the clock is provisional (snapshots
        only: see the module docstring), the account's state comes from snapshots alone
        and the checkpoint is taken over then. If it
        happens before, the events since the restart are ones the previous run had
        applied, re-delivered (a feed replayed from an earlier point): re-applying them
        re-derives the same levels, rules and reminders, and the same alerts with the same
        ids, which the store holds already (idempotent insert); the checkpoint is dropped
        when the clock passes its time. A checkpoint still waiting then (the risk never
        became known) is taken over. Taking a checkpoint over at the start instead would
        judge re-delivered events against a level they had not reached yet: a false
        recovery at the first of them, then a relapse, and a stop-loss fired again.

        From then on each pool's level is where its next transition starts from, so a
        restart that finds the account where it left it emits nothing, and one that finds
        it elsewhere emits exactly the transition from the stored level. A rule that fired
        stays disarmed until its metric recovers; a reminder stays due when it was due.
        Like every account, a restored one is not evaluated until its balance and
        positions snapshots and the marks of what it holds have arrived.

        While a checkpoint waits, the account saves none (the stored one stays the truth).
        """
        for checkpoint in checkpoints:
            account = self._account(checkpoint.account)
            account.pending = checkpoint
            account.rederiving = False
            self._pending[account.name] = account
            self._changed.pop(account.name, None)
        self._next_takeover_ms = self._earliest_pending()

    def _earliest_pending(self) -> int:
        return min((account.pending.ts for account in self._pending.values()
                    if account.pending is not None), default=NO_CLOCK_LIMIT)

    def _pass_checkpoints(self, now_ms: int) -> None:
        """The clock passed the time of waiting checkpoints: each is taken over, unless
        the re-delivered events re-derived the account's state through that time, which
        is then the newer truth (a checkpoint is saved at the end of a batch; more events
        of its time may have come after it, before the kill)."""
        for account in list(self._pending.values()):
            checkpoint = account.pending
            if checkpoint is None or checkpoint.ts >= now_ms:
                continue
            if checkpoint_on_passed(account.rederiving) == "drop":
                account.pending = None
                del self._pending[account.name]
                self._changed[account.name] = account  # the stored one may be older
            else:
                self._take_over(account, checkpoint)
        self._next_takeover_ms = self._earliest_pending()

    def _first_known(self, account: AccountState, checkpoint: AccountCheckpoint,
                     ts: int) -> None:
        """The account's risk is known for the first time since the restart, at ``ts``:
        from then on its state is the re-delivered events' own when that is before the
        checkpoint's time; otherwise it comes from snapshots alone (no history to
        re-derive it), and the checkpoint is taken over now. So too while the clock is
        provisional (see the module docstring): snapshots are dated by their last change,
        and one older than the checkpoint is no sign of a feed re-delivered."""
        if checkpoint_on_known(ts, checkpoint.ts, self._live_from_ms is not None) == "rederive":
            account.rederiving = True
        else:
            self._take_over(account, checkpoint)
            self._next_takeover_ms = self._earliest_pending()

    def _take_over(self, account: AccountState, checkpoint: AccountCheckpoint) -> None:
        """The account's levels, reminders and rules become the checkpoint's."""
        account.pending = None
        del self._pending[account.name]
        self._changed[account.name] = account
        entries = {pool.key: (pool.level, pool.reminder_due_ms) for pool in checkpoint.pools}
        if not entries:
            entries[ACCOUNT_POOL_KEY] = (checkpoint.level, checkpoint.reminder_due_ms)
        account.restored = entries
        for pool in account.pools.values():
            if pool.key not in entries:
                # Not in the checkpoint: it was at normal then, with no reminder due.
                pool.level = "normal"
                pool.level_low, pool.level_high = self.ladder.band("normal")
                pool.reminder_due_ms = None
            self._restore_pool(pool)
        self._track_critical(account)
        disarmed = set(checkpoint.disarmed_rules)
        for rule_state in account.rule_states:
            if rule_state.rule.name in disarmed:
                rule_state.disarm()
            else:
                rule_state.rearm()

    def state(self) -> dict[str, Any]:
        """The ``accounts`` object of ``--state-out`` (SPEC 7)."""
        return {name: self._account_state(account) for name, account in self.accounts.items()}

    def instruments_in_use(self) -> list[str]:
        """Instruments some account holds or has live orders on: the mark prices needed."""
        return [inst_id for inst_id, holders in self.holders.items() if holders]

    def currencies_in_use(self) -> list[str]:
        """Currencies some account holds: the index prices needed."""
        return [currency for currency, holders in self.currency_holders.items() if holders]

    def currencies_borrowed(self) -> list[str]:
        """Currencies some account owes: the borrowing tiers needed (SPEC 1.4)."""
        return sorted(currency for currency, count in self._borrowers.items() if count > 0)

    def account_names(self) -> Iterator[str]:
        return iter(self.accounts)

    # -- event handlers ----------------------------------------------------------------

    def _begin(self, ts: int, recv_ms: int, alerts: list[Alert]) -> None:
        self._ts, self._recv_ms, self._alerts = ts, recv_ms, alerts

    def _on_mark(self, event: MarkPrice, alerts: list[Alert]) -> None:
        inst_id = event.inst_id
        mark = event.price
        self.marks[inst_id] = mark
        self.mark_ms[inst_id] = event.event_ms
        holders = self.holders.get(inst_id)
        if not holders:
            return
        if self.awaiting_mark and inst_id in self.awaiting_mark:
            self._mark_arrived(inst_id, holders, event, alerts)
        debtors = self.debtors
        for exposure in holders.values():
            account = exposure.account
            if exposure.simple:
                # The fast path of _refresh for a position without orders: PV = |q| k m
                # (inverse |q| k / m), IM = PV / L, MM = PV * rate - deduction, CF = PV *
                # fee rate (formulas.py), while PV stays in its tier's band (tiers by value).
                if exposure.inverse:
                    value = exposure.abs_qk / mark
                    upl = exposure.qk * (1.0 / exposure.avg_price - 1.0 / mark)
                else:
                    value = exposure.abs_qk * mark
                    upl = exposure.qk * (mark - exposure.avg_price)
                if exposure.maint_low < value <= exposure.maint_high:
                    # self._move, not a local bound to it: mypyc compiles this to a direct
                    # call.
                    self._move(exposure, value, upl,
                               value * exposure.maint_rate - exposure.maint_deduction,
                               value * exposure.fee_rate, value / exposure.leverage)
                else:
                    self._refresh(exposure)
            else:
                self._refresh(exposure)
            if account.missing:
                continue  # risk unknown: nothing is evaluated (SPEC 1.5)
            # Nothing can happen while the pool's ratio stays inside its level's band and no
            # rule, reminder, interest or re-anchoring is pending: skip the evaluation.
            account.updates += 1
            pool = exposure.pool
            if (pool is not None and not account.rule_states
                    and account.reminder_due_ms is None
                    and account.updates < REANCHOR_EVERY and account.name not in debtors):
                if pool.kind == POOL_EXCHANGE:
                    continue  # the exchange's figures do not move with our marks
                ratio = self._pool_ratio(pool)
                if pool.level_low < (INFINITY if ratio is None else ratio) < pool.level_high:
                    continue
            account.updates -= 1
            self._evaluate(account, event.event_ms, event.recv_ms, inst_id, mark, alerts)

    def _mark_arrived(self, inst_id: str, holders: Mapping[HolderKey, Exposure],
                      event: MarkPrice, alerts: list[Alert]) -> None:
        """The first fresh mark of an instrument some holder lacked one of."""
        self._begin(event.event_ms, event.recv_ms, alerts)
        del self.awaiting_mark[inst_id]
        was_stale = inst_id in self.stale
        if was_stale:
            del self.stale[inst_id]
        for account in _accounts_of(holders.values()):
            if was_stale:
                recovered: FeedRecoveredMarkPayload = {"inst_id": inst_id}
                self._emit(alerts, account, "feed_recovered", event.event_ms, event.recv_ms,
                           inst_id, event.price, recovered)
            self._resolve(account, f"mark:{inst_id}")

    def _on_index(self, event: IndexPrice, alerts: list[Alert]) -> None:
        self.index_prices[(event.base, event.quote)] = event.price
        changed, priced = self._reprice()
        if not changed:
            return
        index_id = f"{event.base}-{event.quote}"
        affected: dict[str, AccountState] = {}
        for currency in changed:
            affected.update(self.currency_holders.get(currency, {}))
        for account in affected.values():
            for currency in changed:
                state = account.currencies.get(currency)
                if state is not None:
                    state.price = self.usd_prices.get(currency, 0.0)
            if priced:
                self._check_prices(account)
            self._retotal(account)
            self._evaluate(account, event.event_ms, event.recv_ms, index_id, event.price,
                           alerts)

    def _on_order(self, event: OrderUpdate, alerts: list[Alert]) -> None:
        account = self._account(event.account)
        order = event.order
        key: ExposureKey = (order.inst_id, order.margin_mode, order.position_side)
        previous = account.order_keys.get(order.order_id)
        if previous is not None and previous != key:
            self._drop_order(account, order.order_id)
        if event.live and order.remaining > 0:
            exposure = self._exposure(account, key, event.event_ms)
            exposure.orders[order.order_id] = order
            account.order_keys[order.order_id] = key
            self._set_leverage(exposure)
            self._refresh(exposure)
        else:
            self._drop_order(account, order.order_id)
        self._evaluate(account, event.event_ms, event.recv_ms, order.inst_id,
                       self.marks.get(order.inst_id), alerts)

    def _on_orders_snapshot(self, event: OrdersSnapshot, alerts: list[Alert]) -> None:
        account = self._account(event.account)
        touched: dict[ExposureKey, None] = {}
        for order_id, key in list(account.order_keys.items()):
            del account.exposures[key].orders[order_id]
            touched[key] = None
        account.order_keys.clear()
        for order in event.orders:
            if order.remaining <= 0:
                continue
            key = (order.inst_id, order.margin_mode, order.position_side)
            exposure = self._exposure(account, key, event.event_ms)
            exposure.orders[order.order_id] = order
            account.order_keys[order.order_id] = key
            touched[key] = None
        for key in touched:
            exposure = account.exposures[key]
            self._set_leverage(exposure)
            self._refresh(exposure)
            self._discard_if_empty(exposure)
        self._evaluate(account, event.event_ms, event.recv_ms, None, None, alerts)

    def _on_positions(self, name: str, positions: tuple[Position, ...], snapshot: bool,
                      event: PositionUpdate | PositionSnapshot, alerts: list[Alert]) -> None:
        account = self._account(name)
        listed: dict[ExposureKey, None] = {}
        reported: list[Exposure] = []
        for position in positions:
            key: ExposureKey = (position.inst_id, position.margin_mode, position.side)
            listed[key] = None
            if position.contracts == 0.0 and key not in account.exposures:
                continue
            exposure = self._exposure(account, key, event.event_ms)
            self._set_position(exposure, position.contracts, position.avg_price,
                               position.leverage, position.margin)
            exposure.exchange = position.exchange
            if position.exchange is not None:
                reported.append(exposure)
            self._discard_if_empty(exposure)
        if snapshot:
            self._resolve(account, "snapshot:positions")
            # SPEC 3.1: positions absent from a full snapshot are closed.
            for key, exposure in list(account.exposures.items()):
                if key not in listed and exposure.contracts != 0.0:
                    self._set_position(exposure, 0.0, 0.0, None, None)
                    exposure.exchange = None
                    self._discard_if_empty(exposure)
        trigger = positions[0].inst_id if len(positions) == 1 else None
        self._evaluate(account, event.event_ms, event.recv_ms, trigger,
                       self.marks.get(trigger) if trigger else None, alerts)
        for exposure in reported:
            pool = exposure.pool
            if pool is not None and pool.kind == POOL_ISOLATED and exposure.exchange:
                figures = exposure.exchange
                self._check_divergence(pool, figures.margin_ratio, figures.maint_margin,
                                       figures.init_margin, event.event_ms, event.recv_ms,
                                       alerts)
            if (exposure.exchange is not None
                    and exposure.exchange.liquidation_price is not None
                    and not account.missing):
                self._check_liquidation_price(exposure, exposure.exchange.liquidation_price,
                                              event.event_ms, event.recv_ms, alerts)

    def _set_position(self, exposure: Exposure, contracts: float, avg_price: float,
                      leverage: float | None, margin: float | None) -> None:
        closed = exposure.contracts != 0.0 and contracts == 0.0
        exposure.contracts = contracts
        exposure.avg_price = avg_price if contracts != 0.0 else 0.0
        exposure.position_leverage = leverage
        exposure.margin = (margin or 0.0) if exposure.isolated and contracts != 0.0 else 0.0
        self._set_leverage(exposure)
        self._refresh(exposure)
        self._bind_pool(exposure)
        if closed:
            # Its MM, fee and UPL are zero now, but subtracting them left the rounding of
            # their history in the currency's sums: a pool with nothing left at risk but
            # an open order would divide that residue by itself (a ratio of -24 has been
            # seen) and fall to liquidation. Rebuild the sums from what remains.
            self._reanchor(exposure.account)

    def _on_balance(self, event: BalanceUpdate, alerts: list[Alert]) -> None:
        account = self._account(event.account)
        self._accrue(account, event.event_ms)
        listed: set[str] = set()
        for balance in event.balances:
            listed.add(balance.currency)
            self._set_balance(account, balance, event.event_ms)
        if event.snapshot:
            self._resolve(account, "snapshot:balances")
            for currency, state in account.currencies.items():
                if currency not in listed:
                    state.cash = 0.0
                    state.interest = 0.0
                    state.liability = None
                    state.exchange = None
        self._check_prices(account)
        self._track_debt(account)
        self._retotal(account)
        if event.exchange is not None and event.exchange != _NO_FIGURES:
            account.exchange = event.exchange
            if account.mode == "portfolio":
                self._resolve(account, "exchange:figures")
        self._evaluate(account, event.event_ms, event.recv_ms, None, None, alerts)
        if account.missing:
            return  # figures of a half-known account say nothing about the model
        ts, recv_ms = event.event_ms, event.recv_ms
        if event.exchange is not None and account.mode == "multi_currency":
            pool = account.pools.get(ACCOUNT_POOL_KEY)
            if pool is not None:
                theirs = event.exchange
                self._check_divergence(pool, theirs.margin_ratio, theirs.maint_margin,
                                       theirs.init_margin, ts, recv_ms, alerts)
        if account.mode == "single_currency":
            for balance in event.balances:
                held = account.currencies.get(balance.currency)
                theirs_ccy = balance.exchange
                if held is not None and held.pool is not None and theirs_ccy is not None:
                    self._check_divergence(held.pool, theirs_ccy.margin_ratio,
                                           theirs_ccy.maint_margin, theirs_ccy.init_margin,
                                           ts, recv_ms, alerts)

    def _on_instrument(self, event: InstrumentUpdate, alerts: list[Alert]) -> None:
        instrument = event.instrument
        # Configuration wins over the feed (SPEC 3.1: it "overrides or supplements" them).
        if instrument.inst_id in self._configured_instruments:
            return
        self.instruments[instrument.inst_id] = instrument
        holders = self.holders.get(instrument.inst_id, {})
        for exposure in holders.values():
            self._bind_instrument(exposure)
            self._refresh(exposure)
            self._bind_pool(exposure)
        for account in _accounts_of(holders.values()):
            self._check_prices(account)
            self._reanchor(account)
            self._evaluate(account, event.event_ms, event.recv_ms, instrument.inst_id,
                           self.marks.get(instrument.inst_id), alerts)

    def _on_account_config(self, event: AccountConfigUpdate, alerts: list[Alert]) -> None:
        account = self._account(event.account)
        account.hedge_mode = event.hedge_mode
        if event.mode != account.mode or event.exchange_level != account.exchange_level:
            account.exchange_level = event.exchange_level
            self._set_mode(account, event.mode)
            if self._announce:
                self._announce_modes()
        self._evaluate(account, event.event_ms, event.recv_ms, None, None, alerts)

    def _on_collateral_tiers(self, event: CollateralTiersUpdate, alerts: list[Alert]) -> None:
        currency = event.currency
        # SPEC 1.4: [collateral] overrides a currency; the exchange's tiers replace the
        # seed's defaults.
        if currency in self.config.configured_collateral:
            return
        self.collateral[currency] = event.tiers
        for account in list(self.currency_holders.get(currency, {}).values()):
            state = account.currencies[currency]
            if account.mode != "single_currency":
                state.set_collateral(event.tiers)
            self._check_prices(account)
            self._retotal(account)
            self._evaluate(account, event.event_ms, event.recv_ms, None, None, alerts)

    def _on_borrow_tiers(self, event: BorrowTiersUpdate, alerts: list[Alert]) -> None:
        # SPEC 6: [borrow.CCY] applies "when the feed does not supply them".
        self.borrow_tiers[event.currency] = event.tiers
        for account in list(self.currency_holders.get(event.currency, {}).values()):
            self._check_prices(account)
            self._retotal(account)
            self._evaluate(account, event.event_ms, event.recv_ms, None, None, alerts)

    def _on_feed_status(self, event: FeedStatus, alerts: list[Alert]) -> None:
        kind: AlertKind = "feed_connected" if event.state == "connected" else "feed_disconnected"
        if event.account is None:
            targets = list(self.accounts.values())
        else:
            targets = [self._account(event.account)]
        feed: Literal["public", "private"] = "public" if event.account is None else "private"
        for account in targets:
            # The receive time keeps a connection alert's id apart from one a previous
            # run stored at the same event time (the clock stands still while a feed is
            # down, and a restart counts occurrences afresh).
            payload: FeedConnectionPayload = {"feed": feed, "reason": event.reason}
            self._emit(alerts, account, kind, event.event_ms, event.recv_ms, None, None,
                       payload, discriminator=f"{feed}:{event.recv_ms}")

    # -- account modes (SPEC 1.5) ------------------------------------------------------

    def _set_mode(self, account: AccountState, mode: AccountMode) -> None:
        """Rebuild the account's pools for ``mode``; its isolated positions keep theirs.

        A pool of the same key in the new mode (the account's own pool when the venue's
        account configuration confirms the mode a checkpoint was restored into) takes over
        its level and reminder, so the mode's arrival after a restart repeats no
        transition.
        """
        for pool in list(account.pools.values()):
            if pool.kind != POOL_ISOLATED:
                account.restored.setdefault(pool.key, (pool.level, pool.reminder_due_ms))
                self._forget_pool(pool)
        account.mode = mode
        for state in account.currencies.values():
            state.pool = None
            state.set_collateral(self._collateral_for(account, state.currency))
        if mode in ("multi_currency", "portfolio"):
            kind = POOL_ACCOUNT if mode == "multi_currency" else POOL_EXCHANGE
            self._add_pool(account, Pool(account, ACCOUNT_POOL_KEY, kind, self.ladder))
        elif mode == "single_currency":
            for state in account.currencies.values():
                self._currency_pool(account, state)
        for exposure in account.exposures.values():
            self._bind_pool(exposure)
        if mode == "unsupported":
            self._miss(account, f"mode:acctLv {account.exchange_level or '?'}")
        else:
            for item in [item for item in account.missing if item.startswith("mode:")]:
                self._resolve(account, item)
        if mode == "portfolio" and account.exchange is None:
            self._miss(account, "exchange:figures")
        elif mode != "portfolio":
            self._resolve(account, "exchange:figures")
        if mode in ("portfolio", "unsupported"):
            self._announce[account.name] = account
        self._changed[account.name] = account
        self._check_prices(account)
        self._track_debt(account)
        self._reanchor(account)

    def _announce_modes(self) -> None:
        """One ``account_mode`` alert per account followed on the exchange's figures or
        not followed at all (SPEC 1.5: never silently unmonitored)."""
        pending, self._announce = self._announce, {}
        for account in pending.values():
            followed = account.mode == "portfolio"
            payload: AccountModePayload = {
                "mode": account.mode,
                "exchange_level": account.exchange_level or None,
                "source": "exchange" if followed else None,
                "followed": followed,
                "reason": "portfolio margin is not modelled locally: the account is followed"
                          " on the exchange's own mgnRatio, adjEq, mmr and imr" if followed
                else "riskmon cannot model this account mode: its risk is unknown",
            }
            self._emit(self._alerts, account, "account_mode", self._ts, self._recv_ms, None,
                       None, payload, discriminator=account.mode)

    def _collateral_for(self, account: AccountState, currency: str) -> CollateralTiers:
        if account.mode == "single_currency":
            return _NO_HAIRCUT  # a currency's own pool counts its equity in full
        tiers = self.collateral.get(currency)
        if tiers is None:
            self._notice("uncollateralised_currency", account.name, currency)
            return _WORTHLESS
        return tiers

    # -- pools -------------------------------------------------------------------------

    def _add_pool(self, account: AccountState, pool: Pool) -> None:
        account.pools[pool.key] = pool
        self._restore_pool(pool)

    def _restore_pool(self, pool: Pool) -> None:
        account = pool.account
        restored = account.restored.pop(pool.key, None)
        if restored is None:
            return
        level, reminder_due = restored
        pool.level = level
        pool.level_low, pool.level_high = self.ladder.band(level)
        pool.reminder_due_ms = reminder_due if LEVEL_RANK[level] >= DELEVERAGE_RANK else None
        self._track_critical(account)

    def _forget_pool(self, pool: Pool) -> None:
        account = pool.account
        del account.pools[pool.key]
        if pool.currency is not None and pool.currency.pool is pool:
            pool.currency.pool = None
        if pool.exposure is not None and pool.exposure.pool is pool:
            pool.exposure.pool = None
        self._changed[account.name] = account
        self._track_critical(account)

    def _currency_pool(self, account: AccountState, state: CurrencyState) -> Pool:
        pool = state.pool
        if pool is None:
            pool = Pool(account, state.currency, POOL_CURRENCY, self.ladder, currency=state)
            state.pool = pool
            self._add_pool(account, pool)
        return pool

    def _bind_pool(self, exposure: Exposure) -> None:
        """Point the exposure at the pool its figures move (see the module docstring)."""
        account = exposure.account
        if exposure.isolated:
            pool = exposure.pool
            if exposure.contracts != 0.0 and pool is None:
                key = f"isolated:{exposure.inst_id}:{exposure.side}"
                pool = Pool(account, key, POOL_ISOLATED, self.ladder, exposure=exposure)
                exposure.pool = pool
                self._add_pool(account, pool)
            elif exposure.contracts == 0.0 and pool is not None:
                self._forget_pool(pool)
            return
        if account.mode == "single_currency":
            currency = exposure.currency
            exposure.pool = None if currency is None else self._currency_pool(account, currency)
        else:
            exposure.pool = account.pools.get(ACCOUNT_POOL_KEY)

    def _pool_ratio(self, pool: Pool) -> float | None:
        match pool.kind:
            case 0:  # POOL_ACCOUNT
                account = pool.account
                return margin_ratio(account.equity_usd, account.maint_usd, account.fee_usd)
            case 1:  # POOL_CURRENCY
                currency = pool.currency
                assert currency is not None
                return margin_ratio(currency.equity, currency.maint, currency.fee)
            case 2:  # POOL_ISOLATED
                exposure = pool.exposure
                assert exposure is not None
                return margin_ratio(exposure.margin + exposure.upl, exposure.maint,
                                    exposure.fee)
            case _:
                return (pool.account.exchange or _NO_FIGURES).margin_ratio

    def _pool_figures(self, pool: Pool) -> Figures:
        """A pool's figures in USD."""
        match pool.kind:
            case 0:  # POOL_ACCOUNT
                account = pool.account
                return Figures.of(account.equity_usd, account.maint_usd, account.fee_usd,
                                  account.init_usd)
            case 1:  # POOL_CURRENCY
                currency = pool.currency
                assert currency is not None
                price = currency.price
                return Figures(currency.equity * price, currency.maint * price,
                               currency.fee * price, currency.init * price,
                               margin_ratio(currency.equity, currency.maint, currency.fee))
            case 2:  # POOL_ISOLATED
                exposure = pool.exposure
                assert exposure is not None
                price = exposure.currency.price if exposure.currency is not None else 0.0
                equity = exposure.margin + exposure.upl
                return Figures(equity * price, exposure.maint * price, exposure.fee * price,
                               exposure.init * price,
                               margin_ratio(equity, exposure.maint, exposure.fee))
            case _:
                theirs = pool.account.exchange or _NO_FIGURES
                return Figures(theirs.adjusted_equity or 0.0, theirs.maint_margin or 0.0, 0.0,
                               theirs.init_margin or 0.0, theirs.margin_ratio)

    def _headline(self, account: AccountState) -> Figures:
        """The account's figures: see :meth:`figures`."""
        if account.mode == "single_currency":
            ratios = [ratio for pool in account.pools.values() if pool.kind == POOL_CURRENCY
                      if (ratio := self._pool_ratio(pool)) is not None]
            return Figures(account.equity_usd, account.maint_usd, account.fee_usd,
                           account.init_usd, min(ratios) if ratios else None)
        pool = account.pools.get(ACCOUNT_POOL_KEY)
        if pool is None:
            return Figures.of(account.equity_usd, account.maint_usd, account.fee_usd,
                              account.init_usd)
        return self._pool_figures(pool)

    @staticmethod
    def _account_level(account: AccountState) -> Level:
        """The worst level of the account's own pools (isolated positions have theirs)."""
        worst: Level = "normal"
        for pool in account.pools.values():
            if pool.kind != POOL_ISOLATED and LEVEL_RANK[pool.level] > LEVEL_RANK[worst]:
                worst = pool.level
        if not account.pools and ACCOUNT_POOL_KEY in account.restored:
            worst = account.restored[ACCOUNT_POOL_KEY][0]
        return worst

    # -- risk unknown (SPEC 1.5) -------------------------------------------------------

    def _miss(self, account: AccountState, item: str, since_ms: int | None = None) -> None:
        """Note that the account's risk depends on ``item``, which is missing."""
        if item not in account.missing:
            account.missing[item] = self.now_ms if since_ms is None else since_ms
            self.unknown[account.name] = account
            if not item.startswith(_OWN_ALERT_PREFIXES):
                self._unreported[account.name] = account

    def _resolve(self, account: AccountState, item: str) -> None:
        """``item`` is no longer missing; ``feed_recovered`` if a feed_stale named it."""
        if account.missing.pop(item, None) is None:
            return
        if not account.missing:
            self.unknown.pop(account.name, None)
        if item in account.reported:
            del account.reported[item]
            payload: FeedRecoveredMissingPayload = {"recovered": item,
                                                    "missing": sorted(account.missing)}
            self._emit(self._alerts, account, "feed_recovered", self._ts, self._recv_ms,
                       None, None, payload, discriminator=item)

    def _check_prices(self, account: AccountState) -> None:
        """Which USD prices and borrowing tiers the account's figures need and lack.

        A currency needs a price when it is held (cash or interest), when a position settles
        in it, or when it is borrowed; a positive holding of a currency that counts as no
        collateral at all needs none (it is worth nothing to the margin model either way).
        A debt needs borrowing tiers in multi-currency and portfolio margin.
        """
        settled = {e.currency.currency for e in account.exposures.values()
                   if e.currency is not None}
        for currency, state in account.currencies.items():
            held = state.cash != 0.0 or state.interest != 0.0 or currency in settled
            if (held and currency not in self.usd_prices
                    and (currency in settled or state.equity < 0.0
                         or not state.collateral.worthless)):
                self._miss(account, f"price:{currency}")
                self._notice("unpriced_currency", account.name, currency)
            else:
                self._resolve(account, f"price:{currency}")
            borrowing = state.debt > 0.0 and account.mode == "multi_currency"
            if borrowing and currency not in self.borrow_tiers:
                self._miss(account, f"borrow_tiers:{currency}")
            else:
                self._resolve(account, f"borrow_tiers:{currency}")

    # -- clock-driven work -------------------------------------------------------------

    def _sweep(self, now_ms: int, recv_ms: int, alerts: list[Alert]) -> None:
        """Once a second of event time: staleness, what is missing, interest, reminders.

        Costs O(instruments in use + accounts missing something + indebted accounts +
        accounts in deleverage or worse), never a pass over every account.
        """
        # Nothing is missing from before the clock went live (None: not yet, so nothing
        # is overdue).
        floor = now_ms if self._live_from_ms is None else self._live_from_ms
        for inst_id, holders in self.holders.items():
            if inst_id in self.stale or not holders:
                continue
            last = self.mark_ms.get(inst_id)
            if last is None:
                last = max(floor, min(exposure.since_ms for exposure in holders.values()))
            if overdue(now_ms, last, self._stale_after_ms):
                self.stale[inst_id] = None
                self.awaiting_mark[inst_id] = None
                for account in _accounts_of(holders.values()):
                    self._miss(account, f"mark:{inst_id}", last)
                    stale: FeedStaleMarkPayload = {
                        "inst_id": inst_id, "last_mark_ts": self.mark_ms.get(inst_id),
                        "age_ms": now_ms - last}
                    self._emit(alerts, account, "feed_stale", now_ms, recv_ms,
                               inst_id, self.marks.get(inst_id), stale)
        # Accounts missing something the per-instrument staleness above does not report
        # (an account that lacks only marks is not walked here).
        for account in list(self._unreported.values()):
            late = []
            waiting = False
            for item, since in account.missing.items():
                if item in account.reported or item.startswith(_OWN_ALERT_PREFIXES):
                    continue
                if since == 0:
                    account.missing[item] = now_ms  # the first time the engine has a clock
                    waiting = True
                elif overdue(now_ms, max(since, floor), self._stale_after_ms):
                    late.append(item)
                else:
                    waiting = True
            if not waiting:
                del self._unreported[account.name]
            if late:
                for item in late:
                    account.reported[item] = None
                missing: FeedStaleMissingPayload = {
                    "missing": late,
                    "reason": "risk unknown: no level is evaluated until these arrive"}
                self._emit(alerts, account, "feed_stale", now_ms, recv_ms, None, None,
                           missing, discriminator=",".join(late))
        for account in list(self.debtors.values()) + list(self.critical.values()):
            self._evaluate(account, now_ms, recv_ms, None, None, alerts)

    def _accrue(self, account: AccountState, now_ms: int) -> None:
        """Interest on liabilities, to the second, by event time (seed 000)."""
        if account.name not in self.debtors:
            return
        for state in account.currencies.values():
            if state.accrual_ms is None or state.rate == 0.0:
                continue
            seconds = (now_ms - state.accrual_ms) // 1000
            if seconds <= 0:
                continue
            debt = state.debt
            if debt > 0.0:
                state.interest += debt * state.rate * seconds / 3600.0
                self._revalue(account, state)
            state.accrual_ms += seconds * 1000

    # -- evaluation --------------------------------------------------------------------

    def _evaluate(self, account: AccountState, ts: int, recv_ms: int, inst_id: str | None,
                  mark: float | None, alerts: list[Alert]) -> None:
        if account.pending is not None and not account.rederiving and not account.missing:
            self._first_known(account, account.pending, ts)  # see restore()
        if account.name in self.debtors:
            self._accrue(account, ts)
        account.updates += 1
        if account.updates >= REANCHOR_EVERY:
            self._reanchor(account)
        if not account.missing:
            for pool in list(account.pools.values()):
                ratio = self._pool_ratio(pool)
                value = INFINITY if ratio is None else ratio
                if not pool.level_low < value < pool.level_high:
                    new_level = self.ladder.next_level(pool.level, value)
                    if new_level != pool.level:
                        self._change_level(pool, new_level, ts, recv_ms, inst_id, mark,
                                           alerts)
            if account.rule_states:
                figures = self._headline(account)
                for rule_state in account.rule_states:
                    value_or_none = self._metric(rule_state.rule, figures)
                    metric = INFINITY if value_or_none is None else value_or_none
                    if rule_state.low <= metric < rule_state.high:
                        continue
                    armed = rule_state.armed
                    if rule_state.step(value_or_none):
                        self._fire_rule(account, rule_state.rule, value_or_none, figures, ts,
                                        recv_ms, inst_id, mark, alerts)
                    if rule_state.armed != armed:
                        self._changed[account.name] = account
        # Reminders go on while the risk is unknown: the level they repeat is the last one
        # known, and a silent feed is no reason to fall silent about it. Their figures are
        # then only what is known so far (after a restart, say, before the first marks):
        # the payload's "risk_unknown" lists what they lack, so none reads as the truth.
        due = account.reminder_due_ms
        if due is not None and ts >= due:
            unknown: RiskUnknownFields = ({"risk_unknown": sorted(account.missing)}
                                          if account.missing else {})
            for pool in account.pools.values():
                remind, pool.reminder_due_ms = reminder(pool.reminder_due_ms, ts,
                                                        self._repeat_ms)
                if remind:
                    payload: ReminderPayload = {"since_level": pool.level,
                                                **_pool_payload(pool), **unknown}
                    self._emit(alerts, account, "reminder", ts, recv_ms, _pool_inst(pool),
                               mark, payload, figures=self._pool_figures(pool),
                               level=pool.level, discriminator=pool.key)
            self._track_critical(account)
            self._changed[account.name] = account

    def _change_level(self, pool: Pool, new_level: Level, ts: int, recv_ms: int,
                      inst_id: str | None, mark: float | None, alerts: list[Alert]) -> None:
        account = pool.account
        old_level = pool.level
        pool.level = new_level
        self._changed[account.name] = account
        pool.level_low, pool.level_high = self.ladder.band(new_level)
        change = level_change(old_level, new_level)
        pool.reminder_due_ms = reminder_after(change.reminders, pool.reminder_due_ms, ts,
                                              self._repeat_ms)
        self._track_critical(account)
        figures = self._pool_figures(pool)
        extra = _pool_payload(pool)
        trigger = _pool_inst(pool) or inst_id
        payload: LevelChangedPayload = {
            "from": old_level, "to": new_level,
            "threshold": self.ladder.threshold(new_level) if new_level != "normal" else None,
            **extra}
        self._emit(alerts, account, "level_changed", ts, recv_ms, trigger, mark, payload,
                   figures=figures, level=new_level, from_level=old_level,
                   discriminator=f"{pool.key}:{old_level}>{new_level}")
        if change.plan:
            plan: DeleveragePlanPayload = {**self._deleverage_plan(pool, figures), **extra}
            self._emit(alerts, account, "deleverage_plan", ts, recv_ms, trigger, mark, plan,
                       figures=figures, level=new_level, discriminator=pool.key)

    def _track_critical(self, account: AccountState) -> None:
        """Keep the account's earliest reminder and its place among the critical ones."""
        dues = [pool.reminder_due_ms for pool in account.pools.values()
                if pool.reminder_due_ms is not None]
        account.reminder_due_ms = min(dues) if dues else None
        if any(LEVEL_RANK[pool.level] >= DELEVERAGE_RANK for pool in account.pools.values()):
            self.critical[account.name] = account
        else:
            self.critical.pop(account.name, None)

    @staticmethod
    def _metric(rule: StopLossRule, figures: Figures) -> float | None:
        match rule.metric:
            case "margin_ratio":
                return figures.margin_ratio
            case "im_coverage":
                return figures.im_coverage
            case "equity_usd":
                return figures.equity_usd

    def _fire_rule(self, account: AccountState, rule: StopLossRule, value: float | None,
                   figures: Figures, ts: int, recv_ms: int, inst_id: str | None,
                   mark: float | None, alerts: list[Alert]) -> None:
        orders: list[CloseOrder] = []
        for exposure in account.exposures.values():
            if exposure.contracts == 0.0:
                continue
            size = abs(exposure.contracts)
            match rule.action:
                case "close_all":
                    pass
                case "close":
                    if exposure.inst_id != rule.inst_id:
                        continue
                case "reduce":
                    lot = exposure.instrument.lot_size if exposure.instrument else None
                    size = min(size, round_up_to_lot(size * (rule.fraction or 0.0), lot))
            orders.append(_close_order(exposure, size))
        payload: StopLossPayload = {
            "rule": rule.name,
            "metric": rule.metric,
            "value": value,
            "below": rule.below,
            "action": rule.action,
            "orders": orders,
            "dry_run": account.name not in self._executing,
        }
        if rule.action == "close":
            payload["target_inst_id"] = rule.inst_id
        if rule.action == "reduce":
            payload["fraction"] = rule.fraction
        if account.mode == "portfolio":
            payload["source"] = "exchange"
        self._emit(alerts, account, "stop_loss", ts, recv_ms, inst_id, mark, payload,
                   figures=figures, discriminator=rule.name)

    def _deleverage_plan(self, pool: Pool, figures: Figures) -> DeleveragePlanPayload:
        """Seed 000: the exchange closes "starting with the lowest unrealized PnL".

        Greedy over the pool's positions by UPL (USD) ascending, partial on the last, until
        the margin ratio is back at the deleverage threshold plus hysteresis at current
        marks. Closing at the mark realises the UPL and pays the closing fee: equity falls
        by that fee, the denominator by the position's MM and CF.

        An isolated position is closed whole: closing part of it releases its margin in
        proportion, which leaves its ratio where it was. A portfolio-margin account gets
        no orders: its figures are the exchange's, and riskmon cannot project them.
        """
        target = self.risk.deleverage + self.risk.hysteresis
        if pool.kind == POOL_EXCHANGE:
            return {"target_margin_ratio": target, "orders": [], "positions": [],
                    "projected_margin_ratio": None,
                    "reason": "portfolio margin is not modelled locally"}
        if pool.kind == POOL_ISOLATED:
            exposure = pool.exposure
            assert exposure is not None
            return {"target_margin_ratio": target,
                    "orders": [_close_order(exposure, abs(exposure.contracts))],
                    "positions": [_plan_step(exposure, abs(exposure.contracts),
                                             self._price(exposure))],
                    "projected_margin_ratio": None}
        equity = figures.equity_usd
        denominator = figures.maint_margin_usd + figures.closing_fee_usd
        candidates = [e for e in pool.account.exposures.values()
                      if e.pool is pool and e.contracts != 0.0 and e.instrument is not None]
        candidates.sort(key=lambda e: (e.upl * self._price(e), e.inst_id, e.side))
        orders: list[CloseOrder] = []
        steps: list[PlanStep] = []
        for exposure in candidates:
            if denominator <= 0.0 or equity / denominator >= target:
                break
            price = self._price(exposure)
            held = abs(exposure.contracts)
            if _reaches(self._after_close(exposure, held, equity, denominator, price), target):
                size = self._shed_size(exposure, equity, denominator, price, target)
            else:
                size = held
            equity, denominator = self._after_close(exposure, size, equity, denominator, price)
            orders.append(_close_order(exposure, size))
            steps.append(_plan_step(exposure, size, price))
        projected = equity / denominator if denominator > 1e-12 else None
        return {"target_margin_ratio": target, "orders": orders, "positions": steps,
                "projected_margin_ratio": projected}

    def _after_close(self, exposure: Exposure, size: float, equity: float, denominator: float,
                     price: float) -> tuple[float, float]:
        """``(equity, MM + CF)`` in USD after closing ``size`` contracts at the mark."""
        left = math.copysign(abs(exposure.contracts) - size, exposure.contracts)
        maint, fee = self._position_margin(exposure, left)
        released = exposure.maint + exposure.fee - maint - fee
        return equity - (exposure.fee - fee) * price, denominator - released * price

    def _shed_size(self, exposure: Exposure, equity: float, denominator: float, price: float,
                   target: float) -> float:
        """The fewest contracts to close, rounded up to the lot, for the ratio to reach
        ``target`` (closing them all does). Bisection: MM is monotone in size, with jumps
        at tier edges."""
        held = abs(exposure.contracts)
        low, high = 0.0, held
        for _ in range(200):
            middle = (low + high) / 2
            if _reaches(self._after_close(exposure, middle, equity, denominator, price),
                        target):
                high = middle
            else:
                low = middle
            if high - low <= 1e-12 * held:
                break
        instrument = exposure.instrument
        lot = instrument.lot_size if instrument is not None else None
        return min(held, round_up_to_lot(high, lot))

    def _position_margin(self, exposure: Exposure, contracts: float,
                         mark: float | None = None) -> tuple[float, float]:
        """``(MM, CF)`` of the exposure's position at ``contracts``, at ``mark`` (default:
        the current mark)."""
        instrument = exposure.instrument
        if instrument is None or contracts == 0.0:
            return 0.0, 0.0
        if mark is None:
            mark = self.marks.get(exposure.inst_id, exposure.avg_price)
        value = position_value(instrument.contract_type == "inverse", instrument.multiplier,
                               contracts, mark)
        return (instrument.maintenance_margin(contracts, value),
                value * self.risk.closing_fee_rate)

    def _check_divergence(self, pool: Pool, ratio: float | None, maint: float | None,
                          init: float | None, ts: int, recv_ms: int,
                          alerts: list[Alert]) -> None:
        """SPEC 1.9: the exchange's figures of a pool against ours at the same moment.

        A field is compared when the exchange reports it; a relative difference above
        ``divergence_tolerance`` is divergent, and so is ours null (nothing at risk by our
        model) against their finite margin ratio. One ``exchange_divergence`` alert per
        episode: again only after every field came back within tolerance.
        """
        if pool.kind == POOL_EXCHANGE:
            return  # followed on those very figures
        figures = self._pool_figures(pool)
        if pool.kind == POOL_ACCOUNT:
            ours_maint, ours_init = figures.maint_margin_usd, figures.init_margin_usd
        else:  # in the currency's own units, as the exchange reports them
            source = pool.currency if pool.kind == POOL_CURRENCY else pool.exposure
            assert source is not None
            ours_maint, ours_init = source.maint, source.init
        tolerance = self.risk.divergence_tolerance
        fields: list[DivergenceField] = []
        compared: tuple[tuple[DivergenceFieldName, float | None, float | None], ...] = (
            ("margin_ratio", figures.margin_ratio, ratio),
            ("maint_margin", ours_maint, maint),
            ("init_margin", ours_init, init))
        for name, ours, theirs in compared:
            if theirs is None:
                continue
            if ours is None:
                fields.append({"field": name, "ours": None, "theirs": theirs,
                               "relative_difference": None})
                continue
            difference = abs(ours - theirs) / max(abs(theirs), 1e-12)
            if difference > tolerance:
                fields.append({"field": name, "ours": ours, "theirs": theirs,
                               "relative_difference": difference})
        alert, pool.divergent = divergence(pool.divergent, bool(fields))
        if alert:
            ratio_field = next((f for f in fields if f["field"] == "margin_ratio"), None)
            payload: ExchangeDivergencePoolPayload = {
                "fields": fields,
                "tolerance": tolerance,
                # Of earlier versions: the ratios and their difference.
                "ours": figures.margin_ratio,
                "theirs": ratio,
                "relative_difference": ratio_field["relative_difference"]
                if ratio_field else None,
                **_pool_payload(pool),
            }
            self._emit(alerts, pool.account, "exchange_divergence", ts, recv_ms,
                       _pool_inst(pool), None, payload, figures=figures, level=pool.level,
                       discriminator=pool.key)

    def _check_liquidation_price(self, exposure: Exposure, theirs: float, ts: int,
                                 recv_ms: int, alerts: list[Alert]) -> None:
        """SPEC 1.9 for a position's liquidation price: the exchange's against the mark at
        which our ratio of the position's pool reaches 1, the venue's liquidation line
        (riskmon's ratio is equity / requirement on every venue: README "Venues"). Ours
        none (no such mark) against theirs is divergent too. One ``exchange_divergence``
        alert per episode of the position, like the pools'."""
        pool = exposure.pool
        if pool is None or pool.kind == POOL_EXCHANGE:
            return
        ours = self._liquidation_mark(exposure, 1.0)
        difference = None if ours is None else abs(ours - theirs) / max(abs(theirs), 1e-12)
        tolerance = self.risk.divergence_tolerance
        alert, exposure.liquidation_divergent = divergence(
            exposure.liquidation_divergent, difference is None or difference > tolerance)
        if alert:
            figures = self._pool_figures(pool)
            payload: ExchangeDivergenceLiquidationPayload = {
                "fields": [{"field": "liquidation_price", "ours": ours, "theirs": theirs,
                            "relative_difference": difference}],
                "tolerance": tolerance,
                "ours": figures.margin_ratio,
                "theirs": None,
                "relative_difference": None,
                "inst_id": exposure.inst_id,
                "side": exposure.side,
                "margin_mode": exposure.margin_mode,
            }
            self._emit(alerts, pool.account, "exchange_divergence", ts, recv_ms,
                       exposure.inst_id, self.marks.get(exposure.inst_id), payload,
                       figures=figures, level=pool.level,
                       discriminator=f"liquidation:{exposure.inst_id}:{exposure.side}:"
                                     f"{exposure.margin_mode}")

    def _on_margin_call(self, event: MarginCall, alerts: list[Alert]) -> None:
        """SPEC 1.9 for an exchange's margin call: the exchange says the account's risk is
        high. riskmon agrees when it holds every position named, each one's maintenance
        margin at the exchange's mark is within ``divergence_tolerance`` of the exchange's,
        and its level of each one's pool is ``warning`` or worse; otherwise one
        ``exchange_divergence`` says why (``reasons``), once per episode: again only after
        a margin call riskmon agreed with. An account whose risk riskmon does not know
        disagrees by definition: the exchange's warning is then all there is."""
        account = self._account(event.account)
        tolerance = self.risk.divergence_tolerance
        reasons: list[MarginCallReason] = []
        fields: list[DivergenceField] = []
        rows: list[MarginCallPositionFields] = []
        if account.missing:
            reasons.append("risk_unknown")
        for listed in event.positions:
            exposure = account.exposures.get((listed.inst_id, listed.margin_mode, listed.side))
            held = exposure.contracts if exposure is not None else 0.0
            instrument = exposure.instrument if exposure is not None else None
            pool = exposure.pool if exposure is not None else None
            ours: float | None = None
            if exposure is None or instrument is None or held == 0.0:
                if "position_unknown" not in reasons:
                    reasons.append("position_unknown")
            else:
                ours = self._position_margin(exposure, held, listed.mark)[0]
            theirs = listed.maint_margin
            difference = None
            if ours is not None and theirs is not None:
                difference = abs(ours - theirs) / max(abs(theirs), 1e-12)
                if difference > tolerance:
                    fields.append({"field": "maint_margin", "ours": ours, "theirs": theirs,
                                   "relative_difference": difference})
                    if "maint_margin" not in reasons:
                        reasons.append("maint_margin")
            if (pool is not None and pool.kind != POOL_EXCHANGE and pool.level == "normal"
                    and not account.missing and "level_normal" not in reasons):
                reasons.append("level_normal")
            rows.append({"inst_id": listed.inst_id, "side": listed.side,
                         "margin_mode": listed.margin_mode, "contracts": listed.contracts,
                         "held": held if exposure is not None and held != 0.0 else None,
                         "ours": ours, "theirs": theirs, "relative_difference": difference,
                         "level": pool.level if pool is not None else None})
        alert, account.margin_call_divergent = divergence(account.margin_call_divergent,
                                                          bool(reasons))
        if alert:
            figures = self._headline(account)
            payload: ExchangeDivergenceMarginCallPayload = {
                "fields": fields,
                "tolerance": tolerance,
                "ours": figures.margin_ratio,
                "theirs": None,
                "relative_difference": None,
                "margin_call": True,
                "reasons": reasons,
                "positions": rows,
            }
            first = event.positions[0].inst_id if len(event.positions) == 1 else None
            self._emit(alerts, account, "exchange_divergence", event.event_ms, event.recv_ms,
                       first, self.marks.get(first) if first else None, payload,
                       figures=figures, discriminator="margin_call")

    # -- bookkeeping -------------------------------------------------------------------

    def _add_account(self, name: str, config: AccountConfig) -> AccountState:
        account = AccountState(name, config, self.risk.hysteresis)
        self.accounts[name] = account
        # SPEC 1.5: every account waits for its balance and positions snapshots.
        self._miss(account, "snapshot:balances")
        self._miss(account, "snapshot:positions")
        self._set_mode(account, account.mode)
        self._changed.pop(name, None)  # nothing to checkpoint yet
        return account

    def _account(self, name: str) -> AccountState:
        account = self.accounts.get(name)
        if account is None:
            # SPEC 6: an account seen in a feed but not configured gets defaults.
            account = self._add_account(name, AccountConfig(name=name))
        return account

    def _currency(self, account: AccountState, currency: str) -> CurrencyState:
        state = account.currencies.get(currency)
        if state is None:
            state = CurrencyState(currency, self._collateral_for(account, currency),
                                  self.config.interest.get(currency, 0.0),
                                  self.usd_prices.get(currency, 0.0))
            account.currencies[currency] = state
            holders = self.currency_holders.setdefault(currency, {})
            if not holders:
                self.interest_version += 1
            holders[account.name] = account
            if account.mode == "single_currency":
                self._currency_pool(account, state)
        return state

    def _set_balance(self, account: AccountState, balance: CurrencyBalance, now_ms: int) -> None:
        state = self._currency(account, balance.currency)
        state.cash = balance.cash
        state.liability = balance.liability
        state.exchange = balance.exchange
        if balance.interest is not None:
            state.interest = balance.interest
        if state.accrual_ms is None or balance.interest is not None:
            state.accrual_ms = now_ms

    def _track_debt(self, account: AccountState) -> None:
        if any(s.debt > 0.0 and s.rate > 0.0 for s in account.currencies.values()):
            self.debtors[account.name] = account
        else:
            self.debtors.pop(account.name, None)
        owed = frozenset(c for c, s in account.currencies.items() if s.debt > 0.0)
        if owed != account.owed:
            for currency in owed - account.owed:
                self._borrowers[currency] = self._borrowers.get(currency, 0) + 1
                if self._borrowers[currency] == 1:
                    self.interest_version += 1
            for currency in account.owed - owed:
                self._borrowers[currency] -= 1
                if self._borrowers[currency] == 0:
                    self.interest_version += 1
            account.owed = owed

    def _exposure(self, account: AccountState, key: ExposureKey, now_ms: int) -> Exposure:
        exposure = account.exposures.get(key)
        if exposure is None:
            exposure = Exposure(account, key, now_ms)
            account.exposures[key] = exposure
            inst_id = exposure.inst_id
            holders = self.holders.setdefault(inst_id, {})
            if not holders:
                self.interest_version += 1
            holders[(account.name, exposure.margin_mode, exposure.side)] = exposure
            if inst_id not in self.marks or inst_id in self.stale:
                self.awaiting_mark[inst_id] = None
                self._miss(account, f"mark:{inst_id}", now_ms)
            self._bind_instrument(exposure)
            self._bind_pool(exposure)
        return exposure

    def _bind_instrument(self, exposure: Exposure) -> None:
        instrument = self.instruments.get(exposure.inst_id)
        exposure.instrument = instrument
        account = exposure.account
        if instrument is None:
            self._notice("unknown_instrument", account.name, exposure.inst_id)
            self._miss(account, f"instrument:{exposure.inst_id}")
            exposure.currency = None
        else:
            self._resolve(account, f"instrument:{exposure.inst_id}")
            exposure.currency = self._currency(account, instrument.settle_currency)
            self._check_prices(account)
        self._set_leverage(exposure)

    def _set_leverage(self, exposure: Exposure) -> None:
        """The position's leverage, else the latest order's, else 1 (the conservative
        reading when the exchange has told us nothing)."""
        leverage = exposure.position_leverage
        if leverage is None:
            for order in exposure.orders.values():
                if order.leverage is not None:
                    leverage = order.leverage
        exposure.leverage = leverage if leverage is not None else 1.0

    def _drop_order(self, account: AccountState, order_id: str) -> None:
        key = account.order_keys.pop(order_id, None)
        if key is None:
            return
        exposure = account.exposures[key]
        del exposure.orders[order_id]
        self._set_leverage(exposure)
        self._refresh(exposure)
        self._discard_if_empty(exposure)

    def _discard_if_empty(self, exposure: Exposure) -> None:
        if not exposure.empty:
            return
        account = exposure.account
        inst_id = exposure.inst_id
        del account.exposures[exposure.key]
        holders = self.holders[inst_id]
        del holders[(account.name, exposure.margin_mode, exposure.side)]
        if exposure.pool is not None and exposure.pool.kind == POOL_ISOLATED:
            self._forget_pool(exposure.pool)
        if not any(other.inst_id == inst_id for other in account.exposures.values()):
            self._resolve(account, f"mark:{inst_id}")
            self._resolve(account, f"instrument:{inst_id}")
        if not holders:
            del self.holders[inst_id]
            self.interest_version += 1
            self.stale.pop(inst_id, None)
            self.awaiting_mark.pop(inst_id, None)
        # Subtracting a departed exposure leaves the rounding of its whole history in the
        # sums (a closed book would show 1e-9 of margin); rebuild them from what remains.
        self._check_prices(account)
        self._reanchor(account)

    def _contribution(self, exposure: Exposure) -> tuple[float, float, float, float, float]:
        instrument = exposure.instrument
        if instrument is None:
            return 0.0, 0.0, 0.0, 0.0, 0.0
        return exposure_figures(
            instrument,
            exposure.contracts,
            exposure.avg_price,
            exposure.leverage,
            exposure.orders.values(),
            self.marks.get(exposure.inst_id),
            exposure.side,
            self.risk.closing_fee_rate,
            self.risk.market_order_slippage,
            self.risk.reduce_only_orders_count,
        )

    def _refresh(self, exposure: Exposure) -> None:
        """Recompute one exposure in full and move the difference into the totals.

        Also decides whether the exposure may take the mark-tick fast path, and caches
        that path's constants: they change only with the position, orders or spec.
        """
        value, upl, maint, fee, init = self._contribution(exposure)
        self._move(exposure, value, upl, maint, fee, init)
        instrument = exposure.instrument
        exposure.simple = (instrument is not None and not exposure.orders
                           and exposure.contracts != 0.0)
        if instrument is not None:
            exposure.inverse = instrument.contract_type == "inverse"
            exposure.qk = exposure.contracts * instrument.multiplier
            exposure.abs_qk = abs(exposure.contracts) * instrument.multiplier
            tier = instrument.tier_index(exposure.contracts, value)
            exposure.maint_rate = instrument.tiers[tier].maintenance_rate
            exposure.maint_deduction = instrument.tiers[tier].deduction
            exposure.maint_low, exposure.maint_high = instrument.value_band(tier)
            exposure.fee_rate = self.risk.closing_fee_rate

    def _move(self, exposure: Exposure, value: float, upl: float, maint: float, fee: float,
              init: float) -> None:
        """Replace an exposure's contribution, adding the differences into its currency's
        sums and its account's USD totals (an isolated position's only into the sums of
        isolated equity)."""
        currency = exposure.currency
        if currency is not None:
            account = exposure.account
            if exposure.isolated:
                currency.iso_upl += upl - exposure.upl
                currency.iso_margin += exposure.margin - exposure.booked_margin
                exposure.booked_margin = exposure.margin
            else:
                maint_change = maint - exposure.maint
                fee_change = fee - exposure.fee
                init_change = init - exposure.init
                currency.upl += upl - exposure.upl
                currency.maint += maint_change
                currency.fee += fee_change
                currency.init += init_change
                price = currency.price
                eq = currency.cash - currency.interest + currency.upl
                flat = currency.flat
                if flat >= 0.0:
                    adjusted = eq * price * flat if eq > 0.0 else eq * price
                else:
                    adjusted = collateral_value(eq, price, currency.collateral)
                account.equity_usd += adjusted - currency.value
                currency.value = adjusted
                account.maint_usd += maint_change * price
                account.fee_usd += fee_change * price
                account.init_usd += init_change * price
        exposure.value, exposure.upl, exposure.maint = value, upl, maint
        exposure.fee, exposure.init = fee, init

    @staticmethod
    def _revalue(account: AccountState, state: CurrencyState) -> None:
        value = state.adjusted_value()
        account.equity_usd += value - state.value
        state.value = value

    def _reanchor(self, account: AccountState) -> None:
        """Rebuild the account's sums from its exposures' contributions, so the drift of
        adding differences cannot grow."""
        account.updates = 0
        for state in account.currencies.values():
            state.upl = state.maint = state.fee = state.init = 0.0
            state.iso_margin = state.iso_upl = 0.0
        for exposure in account.exposures.values():
            currency = exposure.currency
            if currency is None:
                continue
            if exposure.isolated:
                currency.iso_margin += exposure.margin
                currency.iso_upl += exposure.upl
                exposure.booked_margin = exposure.margin
            else:
                currency.upl += exposure.upl
                currency.maint += exposure.maint
                currency.fee += exposure.fee
                currency.init += exposure.init
        self._retotal(account)

    def _retotal(self, account: AccountState) -> None:
        """Rebuild the account's USD totals from its currencies (after a balance, a price
        or a tier changed: O(currencies of the account)). Borrowing margin is part of the
        cross pool in multi-currency and portfolio margin (SPEC 1.4)."""
        equity = maint = fee = init = 0.0
        borrowing = account.mode != "single_currency"
        for state in account.currencies.values():
            state.value = state.adjusted_value()
            if borrowing:
                state.borrow_maint, state.borrow_init = borrowing_margin(
                    state.debt, self.borrow_tiers.get(state.currency, ()))
            else:
                state.borrow_maint = state.borrow_init = 0.0
            equity += state.value
            maint += (state.maint + state.borrow_maint) * state.price
            fee += state.fee * state.price
            init += (state.init + state.borrow_init) * state.price
        account.equity_usd, account.maint_usd = equity, maint
        account.fee_usd, account.init_usd = fee, init

    def _reprice(self) -> tuple[list[str], bool]:
        """Recompute USD prices from index prices; return the currencies whose price
        changed, and whether any of them had none before.

        ``USD`` is 1; ``USDT`` is its ``USDT-USD`` index when fed, else 1.0 (SPEC 1);
        any other currency uses its ``-USD`` index, else its ``-USDT`` index times USDT.
        """
        prices: dict[str, float] = {"USD": 1.0}
        prices["USDT"] = self.index_prices.get(("USDT", "USD"), 1.0)
        for (base, quote), price in self.index_prices.items():
            if base in ("USD", "USDT"):
                continue
            if quote == "USD":
                prices[base] = price
            elif quote == "USDT" and (base, "USD") not in self.index_prices:
                prices[base] = price * prices["USDT"]
        changed = [c for c, p in prices.items() if self.usd_prices.get(c) != p]
        priced = any(c not in self.usd_prices for c in changed)
        self.usd_prices = prices
        return changed, priced

    def _price(self, exposure: Exposure) -> float:
        instrument = exposure.instrument
        if instrument is None:
            return 0.0
        return self.usd_prices.get(instrument.settle_currency, 0.0)

    def _notice(self, kind: NoticeKind, account: str | None, subject: str) -> None:
        key = (kind, account, subject)
        if key not in self._noticed:
            self._noticed.add(key)
            self._notices.append(Notice(kind, account, subject))

    def _emit(self, alerts: list[Alert], account: AccountState, kind: AlertKind, ts: int,
              recv_ms: int, inst_id: str | None, mark: float | None,
              payload: AlertPayload, *, figures: Figures | None = None,
              level: Level | None = None, from_level: Level | None = None,
              discriminator: str = "") -> None:
        if figures is None:
            figures = self._headline(account)
        # The id tells apart alerts of one kind and discriminator at one event time by
        # their count, not by their place among all the account's alerts then: so an alert
        # not emitted again (a connection alert, one a restart re-derives differently)
        # never shifts the id of another.
        if ts != account.last_alert_ts:
            account.last_alert_ts = ts
            account.occurrences.clear()
        key = (kind, discriminator or inst_id or "")
        occurrence = account.occurrences.get(key, 0)
        account.occurrences[key] = occurrence + 1
        alerts.append(Alert(
            id=alert_id(account.name, kind, ts, occurrence, key[1]),
            ts=ts,
            emitted_ms=recv_ms,
            account=account.name,
            kind=kind,
            level=self._account_level(account) if level is None else level,
            from_level=from_level,
            margin_ratio=figures.margin_ratio,
            equity_usd=figures.equity_usd,
            maint_margin_usd=figures.maint_margin_usd,
            init_margin_usd=figures.init_margin_usd,
            inst_id=inst_id,
            mark=mark,
            payload=payload,
            closing_fee_usd=figures.closing_fee_usd,
        ))

    # -- from scratch ------------------------------------------------------------------

    def _scratch(self, name: str) -> tuple[Figures, dict[str, Figures]]:
        """Headline and pool figures of an account from its positions, orders and
        balances alone (see :meth:`recompute`)."""
        account = self.accounts[name]
        self._accrue(account, self.now_ms)
        sums: dict[str, list[float]] = {}  # currency -> [upl, maint, fee, init, iso_margin]
        pools: dict[str, Figures] = {}
        for exposure in account.exposures.values():
            if exposure.instrument is None:
                continue
            _value, upl, maint, fee, init = self._contribution(exposure)
            currency = exposure.instrument.settle_currency
            row = sums.setdefault(currency, [0.0, 0.0, 0.0, 0.0, 0.0])
            price = self.usd_prices.get(currency, 0.0)
            if exposure.isolated:
                row[4] += exposure.margin
                if exposure.pool is not None:
                    equity = exposure.margin + upl
                    pools[exposure.pool.key] = Figures(
                        equity * price, maint * price, fee * price, init * price,
                        margin_ratio(equity, maint, fee))
            else:
                for index, figure in enumerate((upl, maint, fee, init)):
                    row[index] += figure
        equity_usd = maint_usd = fee_usd = init_usd = 0.0
        single = account.mode == "single_currency"
        ratios: list[float] = []
        for currency, state in account.currencies.items():
            upl, maint, fee, init, _iso_margin = sums.get(currency, [0.0] * 5)
            price = self.usd_prices.get(currency, 0.0)
            eq = state.cash - state.interest + upl
            equity_usd += collateral_value(eq, price, self._collateral_for(account, currency))
            if single:
                ratio = margin_ratio(eq, maint, fee)
                pools[currency] = Figures(eq * price, maint * price, fee * price,
                                          init * price, ratio)
                if ratio is not None:
                    ratios.append(ratio)
            else:
                borrow_maint, borrow_init = borrowing_margin(
                    state.debt, self.borrow_tiers.get(currency, ()))
                maint += borrow_maint
                init += borrow_init
            maint_usd += maint * price
            fee_usd += fee * price
            init_usd += init * price
        if single:
            headline = Figures(equity_usd, maint_usd, fee_usd, init_usd,
                               min(ratios) if ratios else None)
        elif account.mode == "portfolio":
            headline = self._pool_figures(account.pools[ACCOUNT_POOL_KEY])
            pools[ACCOUNT_POOL_KEY] = headline
        else:
            headline = Figures.of(equity_usd, maint_usd, fee_usd, init_usd)
            if ACCOUNT_POOL_KEY in account.pools:
                pools[ACCOUNT_POOL_KEY] = headline
        return headline, pools

    # -- reporting ---------------------------------------------------------------------

    def _checkpoint(self, account: AccountState) -> AccountCheckpoint:
        pools = [PoolCheckpoint(pool.key, pool.level, pool.reminder_due_ms)
                 for pool in account.pools.values()]
        # Restored pools not created yet (an isolated position whose snapshot is still to
        # come) keep their place.
        pools += [PoolCheckpoint(key, level, due)
                  for key, (level, due) in account.restored.items()]
        return AccountCheckpoint(
            account=account.name,
            level=self._account_level(account),
            reminder_due_ms=account.reminder_due_ms,
            disarmed_rules=tuple(state.rule.name for state in account.rule_states
                                 if not state.armed),
            ts=self.now_ms,
            pools=tuple(pools),
        )

    def _account_state(self, account: AccountState) -> dict[str, Any]:
        self._accrue(account, self.now_ms)
        figures = self._headline(account)
        positions = []
        for exposure in account.exposures.values():
            if exposure.contracts == 0.0:
                continue
            mark = self.marks.get(exposure.inst_id)
            liquidation = self._liquidation_mark(exposure)
            pool = exposure.pool if exposure.isolated else None
            positions.append({
                "inst_id": exposure.inst_id,
                "side": exposure.side,
                "margin_mode": exposure.margin_mode,
                "contracts": exposure.contracts,
                "avg_px": exposure.avg_price,
                "mark": mark,
                "upl": exposure.upl,
                "position_value": exposure.value,
                "maint_margin": exposure.maint,
                "closing_fee": exposure.fee,
                "init_margin": exposure.init,
                "liquidation_mark": liquidation,
                "liquidation_distance_pct": (liquidation - mark) / mark * 100.0
                if liquidation is not None and mark else None,
                "settle_ccy": exposure.instrument.settle_currency
                if exposure.instrument else None,
                "margin": exposure.margin if exposure.isolated else None,
                "margin_ratio": self._pool_ratio(pool) if pool is not None else None,
                "level": pool.level if pool is not None else None,
            })
        state = self._figures_state(figures, self.risk.withdrawal_lock)
        total_equity = sum(s.total_equity * s.price for s in account.currencies.values())
        theirs = account.exchange
        state.update({
            "total_equity_usd": total_equity,
            "level": self._account_level(account),
            "mode": account.mode,
            "risk_known": not account.missing,
            "missing": sorted(account.missing),
            "exchange": None if theirs is None else {
                "margin_ratio": theirs.margin_ratio,
                "adjusted_equity": theirs.adjusted_equity,
                "maint_margin": theirs.maint_margin,
                "init_margin": theirs.init_margin,
                "total_equity": theirs.total_equity,
            },
            "positions": positions,
            "stale_instruments": sorted({e.inst_id for e in account.exposures.values()
                                         if e.inst_id in self.stale}),
        })
        if account.mode == "single_currency":
            state["pools"] = {
                pool.key: {**self._figures_state(self._pool_figures(pool),
                                                 self.risk.withdrawal_lock),
                           "level": pool.level,
                           "exchange": None if pool.currency is None
                           or pool.currency.exchange is None else {
                               "margin_ratio": pool.currency.exchange.margin_ratio,
                               "equity": pool.currency.exchange.adjusted_equity,
                               "maint_margin": pool.currency.exchange.maint_margin,
                               "init_margin": pool.currency.exchange.init_margin}}
                for pool in account.pools.values() if pool.kind == POOL_CURRENCY}
        return state

    @staticmethod
    def _figures_state(figures: Figures, lock_level: float) -> dict[str, Any]:
        denominator = figures.maint_margin_usd + figures.closing_fee_usd
        withdrawable = max(0.0, min(figures.equity_usd - figures.init_margin_usd,
                                    figures.equity_usd - lock_level * denominator))
        return {
            "equity_usd": figures.equity_usd,
            "maint_margin_usd": figures.maint_margin_usd,
            "closing_fee_usd": figures.closing_fee_usd,
            "init_margin_usd": figures.init_margin_usd,
            "margin_ratio": figures.margin_ratio,
            "im_coverage": figures.im_coverage,
            "free_margin_usd": figures.free_margin_usd,
            "max_withdrawable_usd": withdrawable,
        }

    def _liquidation_mark(self, exposure: Exposure,
                          level: float | None = None) -> float | None:
        """The mark of this instrument at which the ratio of the exposure's pool reaches the
        liquidation level (or ``level``), every other price held (SPEC 1.5); the pool's
        other positions on the same instrument move with it. None when no such mark
        exists."""
        pool = exposure.pool
        instrument = exposure.instrument
        mark = self.marks.get(exposure.inst_id)
        currency = exposure.currency
        if (pool is None or pool.kind == POOL_EXCHANGE or instrument is None or mark is None
                or currency is None):
            return None
        price = currency.price
        if price <= 0.0:
            return None
        inverse = instrument.contract_type == "inverse"
        k = instrument.multiplier
        if level is None:
            level = self.risk.liquidation
        fee_rate = self.risk.closing_fee_rate
        moving = [e for e in pool.account.exposures.values()
                  if e.pool is pool and e.inst_id == exposure.inst_id and e.contracts != 0.0]
        figures = self._pool_figures(pool)

        def changes(candidate: float) -> tuple[float, float, float]:
            """(UPL, MM, CF) changes of the moving positions at ``candidate``."""
            upl = maint = fee = 0.0
            for other in moving:
                value = position_value(inverse, k, other.contracts, candidate)
                upl += unrealized_pnl(inverse, k, other.contracts, other.avg_price,
                                      candidate) - other.upl
                maint += instrument.maintenance_margin(other.contracts, value) - other.maint
                fee += value * fee_rate - other.fee
            return upl, maint, fee

        def surplus(candidate: float) -> float:
            upl, maint, fee = changes(candidate)
            if pool.kind == POOL_ACCOUNT:
                eq = currency.equity + upl
                equity = (figures.equity_usd - currency.value
                          + collateral_value(eq, price, currency.collateral))
            else:  # a currency's pool or an isolated position: the equity in full
                equity = figures.equity_usd + upl * price
            denominator = (figures.maint_margin_usd + figures.closing_fee_usd
                           + (maint + fee) * price)
            return equity - level * denominator

        return _solve_mark(surplus, mark)


_NO_HAIRCUT: Final = CollateralTiers.flat(1.0)
_WORTHLESS: Final = CollateralTiers.flat(0.0)


def _accounts_of(exposures: Iterable[Exposure]) -> list[AccountState]:
    """The accounts of ``exposures``, each once, in order."""
    seen: dict[str, AccountState] = {}
    for exposure in exposures:
        seen.setdefault(exposure.account.name, exposure.account)
    return list(seen.values())


def _pool_payload(pool: Pool) -> PoolFields:
    """What an alert of a pool says about the pool, beyond the account."""
    match pool.kind:
        case 1:  # POOL_CURRENCY
            return {"pool": pool.key}
        case 2:  # POOL_ISOLATED
            exposure = pool.exposure
            assert exposure is not None
            return {"margin_mode": "isolated", "side": exposure.side,
                    "inst_id": exposure.inst_id}
        case 3:  # POOL_EXCHANGE
            return {"source": "exchange"}
        case _:
            return {}


def _pool_inst(pool: Pool) -> str | None:
    return pool.exposure.inst_id if pool.exposure is not None else None


def _close_order(exposure: Exposure, size: float) -> CloseOrder:
    """A reduce-only market order closing ``size`` contracts of the position (hedge mode
    names the side it closes; ``margin_mode`` is the position's, which the order trades
    in)."""
    return {
        "inst_id": exposure.inst_id,
        "side": "sell" if exposure.contracts > 0 else "buy",
        "size": size,
        "reduce_only": True,
        "ord_type": "market",
        "pos_side": exposure.side,
        "margin_mode": exposure.margin_mode,
    }


def _plan_step(exposure: Exposure, size: float, price: float) -> PlanStep:
    return {"inst_id": exposure.inst_id, "side": exposure.side,
            "margin_mode": exposure.margin_mode, "upl_usd": exposure.upl * price,
            "close_contracts": size, "contracts": exposure.contracts}


def _reaches(figures: tuple[float, float], target: float) -> bool:
    equity, denominator = figures
    return denominator <= 1e-12 or equity / denominator >= target


def _solve_mark(surplus: Callable[[float], float], mark: float) -> float | None:
    """The nearest mark where ``surplus`` (ratio minus the liquidation level, scaled) falls
    to zero, searching the way it falls; the mark itself when it is already there."""
    if surplus(mark) <= 0:
        return mark
    # The side on which the surplus falls: below the mark for a net long, above for a
    # short (a hedged pair's maintenance margin still grows with the price).
    falling_down = surplus(mark * 0.999) < surplus(mark * 1.001)
    if falling_down:
        low, high = mark * 1e-9, mark
        if surplus(low) > 0:
            return None
    else:
        low, high = mark, mark * 2
        while surplus(high) > 0:
            high *= 2
            if high > mark * 2**40:
                return None
    for _ in range(200):
        middle = (low + high) / 2
        if (surplus(middle) > 0) == falling_down:
            high = middle
        else:
            low = middle
        if high - low <= 1e-12 * mark:
            break
    return (low + high) / 2

