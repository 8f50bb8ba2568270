"""The incremental margin engine: ``apply(event) -> alerts``, with no I/O and no clock.

Time is an input: the engine's clock is the largest event time it has seen, so a replay is
deterministic. One object owns all state; whoever drives it (the pipeline task) is its only
caller, so nothing here needs a lock.

Incremental bookkeeping (SPEC 1, issue "incremental"): every (account, instrument) pair with
a position or live orders is an :class:`Exposure` holding its last contribution (PV, UPL,
MM, IM in settlement currency). The account keeps, per currency, the running sums of those
contributions. A mark-price tick therefore touches only the exposures on that instrument:
it recomputes each one, adds the difference into its account's sums, and re-evaluates that
account over its (few) currencies. Every :data:`REANCHOR_EVERY` updates an account's sums
are rebuilt from its exposures so float drift cannot grow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from monitor.alerts import LEVEL_RANK, Alert, AlertKind, Level, alert_id
from monitor.config import AccountConfig, Config, StopLossRule
from monitor.events import (
    UNTIMED,
    BalanceUpdate,
    ClockTick,
    CurrencyBalance,
    Event,
    ExchangeAccountFigures,
    FeedStatus,
    IndexPrice,
    InstrumentUpdate,
    MarkPrice,
    Order,
    OrdersSnapshot,
    OrderUpdate,
    Position,
    PositionSnapshot,
    PositionUpdate,
)
from monitor.formulas import exposure_figures, position_value, unrealized_pnl
from monitor.instruments import Instrument, round_up_to_lot
from monitor.records import AccountCheckpoint
from monitor.transitions import INFINITY, LevelLadder, RuleState

REANCHOR_EVERY = 4096
SWEEP_INTERVAL_MS = 1000
DELEVERAGE_RANK = LEVEL_RANK["deleverage"]

NoticeKind = Literal["uncollateralised_currency", "unknown_instrument", "unpriced_currency"]


@dataclass(frozen=True, slots=True)
class Notice:
    """Something worth one log line, reported once: not an alert, not an error."""

    kind: NoticeKind
    account: str | None
    subject: str


@dataclass(frozen=True, slots=True)
class Figures:
    """An account's figures in USD (SPEC 1.5). Ratios are None when undefined."""

    equity_usd: float
    maint_margin_usd: float
    init_margin_usd: float

    @property
    def margin_ratio(self) -> float | None:
        return self.equity_usd / self.maint_margin_usd if self.maint_margin_usd > 0 else None

    @property
    def im_coverage(self) -> float | None:
        return self.equity_usd / self.init_margin_usd if self.init_margin_usd > 0 else None

    @property
    def free_margin_usd(self) -> float:
        return self.equity_usd - self.init_margin_usd


class CurrencyState:
    """One currency of one account: balance, accrued interest and contribution sums."""

    __slots__ = (
        "accrual_ms",
        "cash",
        "currency",
        "factor",
        "init",
        "interest",
        "liability",
        "maint",
        "price",
        "rate",
        "upl",
        "value",
    )

    def __init__(self, currency: str, factor: float, rate: float, price: float) -> None:
        self.currency = currency
        self.factor = factor
        self.rate = rate
        self.price = price
        self.value = 0.0  # this currency's term of the adjusted equity, in USD
        self.cash = 0.0
        self.interest = 0.0
        self.liability: float | None = None
        self.accrual_ms: int | None = None
        self.upl = 0.0
        self.maint = 0.0
        self.init = 0.0

    @property
    def debt(self) -> float:
        """The liability interest accrues on: the feed's figure, else the negative cash."""
        return self.liability if self.liability is not None else max(0.0, -self.cash)

    @property
    def equity(self) -> float:
        """``eq_c = cash_c - int_c + UPL_c`` (SPEC 1.4)."""
        return self.cash - self.interest + self.upl

    def adjusted_value(self) -> float:
        """``value(eq_c)`` in USD: assets after their collateral haircut, debts in full
        (seed 000)."""
        eq = self.cash - self.interest + self.upl
        return eq * self.price * self.factor if eq > 0.0 else eq * self.price


class Exposure:
    """One account's position and live orders on one instrument, with its contribution."""

    __slots__ = (
        "abs_qk",
        "account",
        "avg_price",
        "contracts",
        "currency",
        "init",
        "inst_id",
        "instrument",
        "inverse",
        "leverage",
        "maint",
        "maint_rate",
        "orders",
        "position_leverage",
        "qk",
        "simple",
        "since_ms",
        "upl",
        "value",
    )

    def __init__(self, account: AccountState, inst_id: str, since_ms: int) -> None:
        self.account = account
        self.inst_id = inst_id
        self.instrument: Instrument | None = None
        self.currency: CurrencyState | None = None
        self.contracts = 0.0
        self.avg_price = 0.0
        self.position_leverage: float | None = None
        self.leverage = 1.0
        self.orders: dict[str, Order] = {}
        self.since_ms = since_ms
        self.value = self.upl = self.maint = self.init = 0.0
        # Constants of the mark-tick fast path, valid while ``simple`` (a known instrument,
        # a position and no live orders); set by MarginEngine._refresh.
        self.simple = False
        self.inverse = False
        self.qk = self.abs_qk = self.maint_rate = 0.0

    @property
    def empty(self) -> bool:
        return self.contracts == 0.0 and not self.orders


class AccountState:
    """Everything the engine knows about one account."""

    __slots__ = (
        "config",
        "currencies",
        "divergent",
        "equity_usd",
        "exchange",
        "exposures",
        "init_usd",
        "last_alert_ts",
        "level",
        "level_high",
        "level_low",
        "maint_usd",
        "name",
        "order_instruments",
        "reminder_due_ms",
        "rule_states",
        "sequence",
        "syncing",
        "updates",
    )

    def __init__(self, name: str, config: AccountConfig, ladder: LevelLadder,
                 hysteresis: float) -> None:
        self.name = name
        self.config = config
        self.currencies: dict[str, CurrencyState] = {}
        self.exposures: dict[str, Exposure] = {}
        self.order_instruments: dict[str, str] = {}
        self.level: Level = "normal"
        self.level_low, self.level_high = ladder.band("normal")
        self.rule_states = [RuleState(rule, hysteresis) for rule in config.stop_loss]
        self.reminder_due_ms: int | None = None
        # Set on an account restored from a checkpoint: the snapshots still to come before
        # its figures mean anything (see MarginEngine.restore).
        self.syncing: set[str] | None = None
        self.exchange: ExchangeAccountFigures | None = None
        self.divergent = False
        self.updates = 0
        self.last_alert_ts = -1
        self.sequence = 0
        # Running USD totals: adjusted equity, maintenance and initial margin.
        self.equity_usd = self.maint_usd = self.init_usd = 0.0


class MarginEngine:
    """Margin state of every account, updated incrementally on every event."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.risk = config.risk
        self.ladder = LevelLadder(config.risk)
        self.instruments: dict[str, Instrument] = {i.inst_id: i for i in config.instruments}
        self._configured_instruments = frozenset(self.instruments)
        self.accounts: dict[str, AccountState] = {}
        self.marks: dict[str, float] = {}
        self.mark_ms: dict[str, int] = {}
        self.index_prices: dict[tuple[str, str], float] = {}
        self.usd_prices: dict[str, float] = {"USD": 1.0, "USDT": 1.0}
        # inst_id -> account name -> exposure: the only index a mark tick walks.
        self.holders: dict[str, dict[str, Exposure]] = {}
        # currency -> account name -> account: the accounts an index tick re-evaluates.
        self.currency_holders: dict[str, dict[str, AccountState]] = {}
        # Dicts used as ordered sets: iteration order must not depend on string hashing,
        # or two replays could emit alerts in different orders.
        self.stale: dict[str, None] = {}
        self.debtors: dict[str, AccountState] = {}
        self.critical: dict[str, AccountState] = {}
        self.now_ms = 0
        # Moves whenever the set of instruments or currencies in use changes (see
        # instruments_in_use): a live feed follows it with its subscriptions.
        self.interest_version = 0
        self._next_sweep_ms = 0
        self._notices: list[Notice] = []
        # Accounts whose checkpoint (level, reminder, fired rules) changed since the last
        # drain_checkpoints(): an ordered set, like the others.
        self._changed: dict[str, AccountState] = {}
        self._noticed: set[tuple[str, str | None, str]] = set()
        self._stale_after_ms = int(config.risk.stale_after_s * 1000)
        self._repeat_ms = int(config.risk.repeat_interval_s * 1000)
        for name, account_config in config.accounts.items():
            self._add_account(name, account_config)

    # -- public API --------------------------------------------------------------------

    def apply(self, event: Event) -> list[Alert]:
        """Apply one event; return the alerts it causes, in a deterministic order."""
        alerts: list[Alert] = []
        if event.event_ms > self.now_ms:
            self.now_ms = event.event_ms
            if event.event_ms >= self._next_sweep_ms:
                self._next_sweep_ms = event.event_ms + SWEEP_INTERVAL_MS
                self._sweep(event.event_ms, event.recv_ms, alerts)
        elif event.event_ms == UNTIMED:
            # Dated by the engine's clock (the receive time before any event), never moving
            # it: see monitor.events.
            event = replace(event, event_ms=self.now_ms or event.recv_ms)
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
            case FeedStatus():
                self._on_feed_status(event, alerts)
            case ClockTick():
                pass  # its only work is the sweep above
        return alerts

    @property
    def has_notices(self) -> bool:
        return bool(self._notices)

    def drain_notices(self) -> list[Notice]:
        """Notices collected since the last call (each reported once per run)."""
        notices, self._notices = self._notices, []
        return notices

    def figures(self, name: str) -> Figures:
        """The account's figures from the incremental sums."""
        account = self.accounts[name]
        self._accrue(account, self.now_ms)
        return self._figures(account)

    def recompute(self, name: str) -> Figures:
        """The account's figures recomputed from scratch, ignoring every running sum.

        Used to re-anchor the sums, by the property tests, and as the benchmark baseline.
        """
        account = self.accounts[name]
        self._accrue(account, self.now_ms)
        upl: dict[str, float] = {}
        maint: dict[str, float] = {}
        init: dict[str, float] = {}
        for exposure in account.exposures.values():
            if exposure.instrument is None:
                continue
            _value, pnl, mm, im = self._contribution(exposure)
            currency = exposure.instrument.settle_currency
            upl[currency] = upl.get(currency, 0.0) + pnl
            maint[currency] = maint.get(currency, 0.0) + mm
            init[currency] = init.get(currency, 0.0) + im
        equity = maint_usd = init_usd = 0.0
        for currency, state in account.currencies.items():
            price = self.usd_prices.get(currency, 0.0)
            eq = state.cash - state.interest + upl.get(currency, 0.0)
            equity += eq * price * state.factor if eq > 0 else eq * price
            maint_usd += maint.get(currency, 0.0) * price
            init_usd += init.get(currency, 0.0) * price
        return Figures(equity, maint_usd, init_usd)

    def levels(self) -> dict[str, Level]:
        """Every account's current level."""
        return {name: account.level for name, account in self.accounts.items()}

    @property
    def has_checkpoints(self) -> bool:
        return bool(self._changed)

    def drain_checkpoints(self) -> list[AccountCheckpoint]:
        """Checkpoints of the accounts whose level, reminder or rules changed since the
        last call. The pipeline stores them with the alerts of the same batch."""
        changed, self._changed = self._changed, {}
        return [self._checkpoint(account) for account in changed.values()]

    def restore(self, checkpoints: Iterable[AccountCheckpoint]) -> None:
        """Resume from checkpoints saved by a previous run, before any event is applied.

        The restored level is where the next transition starts from, so a restart that
        finds the account where it left it emits nothing, and one that finds it elsewhere
        emits exactly the transition from the stored level. A rule that fired stays
        disarmed until its metric recovers; a reminder stays due when it was due.

        A restored account is not evaluated until a full balance snapshot and a full
        positions snapshot have arrived (the private feed sends both on subscribing): the
        half-loaded state in between (cash but no positions yet) would otherwise read as
        a recovery and a relapse, two transitions that never happened.
        """
        for checkpoint in checkpoints:
            account = self._account(checkpoint.account)
            account.syncing = {"balances", "positions"}
            account.level = checkpoint.level
            account.level_low, account.level_high = self.ladder.band(checkpoint.level)
            if LEVEL_RANK[checkpoint.level] >= DELEVERAGE_RANK:
                self.critical[account.name] = account
                account.reminder_due_ms = checkpoint.reminder_due_ms
            disarmed = set(checkpoint.disarmed_rules)
            for rule_state in account.rule_states:
                if rule_state.rule.name in disarmed:
                    rule_state.disarm()

    def state(self) -> dict[str, Any]:
        """The ``accounts`` object of ``--state-out`` (SPEC 7)."""
        return {name: self._account_state(account) for name, account in self.accounts.items()}

    def instruments_in_use(self) -> list[str]:
        """Instruments some account holds or has live orders on: the mark prices needed."""
        return [inst_id for inst_id, holders in self.holders.items() if holders]

    def currencies_borrowed(self) -> list[str]:
        """Currencies some account owes: the borrowing tiers needed (SPEC 1.4)."""
        return sorted({state.currency for account in self.accounts.values()
                       for state in account.currencies.values() if state.debt > 0.0})

    def currencies_in_use(self) -> list[str]:
        """Currencies some account holds: the index prices needed."""
        return [currency for currency, holders in self.currency_holders.items() if holders]

    def account_names(self) -> Iterator[str]:
        return iter(self.accounts)

    # -- event handlers ----------------------------------------------------------------

    def _on_mark(self, event: MarkPrice, alerts: list[Alert]) -> None:
        inst_id = event.inst_id
        mark = event.price
        self.marks[inst_id] = mark
        self.mark_ms[inst_id] = event.event_ms
        holders = self.holders.get(inst_id)
        if not holders:
            return
        if inst_id in self.stale:
            del self.stale[inst_id]
            for exposure in holders.values():
                self._emit(alerts, exposure.account, "feed_recovered", event.event_ms,
                           event.recv_ms, inst_id, mark, {"inst_id": inst_id})
        debtors = self.debtors
        for exposure in holders.values():
            account = exposure.account
            if exposure.simple:
                # The fast path of _refresh for a position without orders: PV = |q| k m
                # (inverse |q| k / m), IM = PV / L, MM = PV * rate (formulas.py).
                if exposure.inverse:
                    value = exposure.abs_qk / mark
                    upl = exposure.qk * (1.0 / exposure.avg_price - 1.0 / mark)
                else:
                    value = exposure.abs_qk * mark
                    upl = exposure.qk * (mark - exposure.avg_price)
                # self._move, not a local bound to it: mypyc compiles this to a direct call.
                self._move(exposure, value, upl, value * exposure.maint_rate,
                           value / exposure.leverage)
            else:
                self._refresh(exposure)
            # Nothing can happen while the ratio stays inside the level's band and no rule,
            # reminder, interest or re-anchoring is pending: skip the full evaluation.
            account.updates += 1
            if (not account.rule_states and account.reminder_due_ms is None
                    and account.updates < REANCHOR_EVERY and account.name not in debtors):
                maint_usd = account.maint_usd
                ratio = account.equity_usd / maint_usd if maint_usd > 0.0 else INFINITY
                if account.level_low < ratio < account.level_high:
                    continue
            account.updates -= 1
            self._evaluate(account, event.event_ms, event.recv_ms, inst_id, mark, alerts)

    def _on_index(self, event: IndexPrice, alerts: list[Alert]) -> None:
        self.index_prices[(event.base, event.quote)] = event.price
        changed = self._reprice()
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
            self._retotal(account)
            self._evaluate(account, event.event_ms, event.recv_ms, index_id, event.price,
                           alerts)

    def _on_order(self, event: OrderUpdate, alerts: list[Alert]) -> None:
        account = self._account(event.account)
        order = event.order
        previous_inst = account.order_instruments.get(order.order_id)
        if previous_inst is not None and previous_inst != order.inst_id:
            self._drop_order(account, order.order_id, event.event_ms)
        if event.live and order.remaining > 0:
            exposure = self._exposure(account, order.inst_id, event.event_ms)
            exposure.orders[order.order_id] = order
            account.order_instruments[order.order_id] = order.inst_id
            self._set_leverage(exposure)
            self._refresh(exposure)
        else:
            self._drop_order(account, order.order_id, event.event_ms)
        self._evaluate(account, event.event_ms, event.recv_ms, order.inst_id,
                       self.marks.get(order.inst_id), alerts)

    def _on_orders_snapshot(self, event: OrdersSnapshot, alerts: list[Alert]) -> None:
        account = self._account(event.account)
        touched: dict[str, None] = {}
        for order_id, inst_id in list(account.order_instruments.items()):
            exposure = account.exposures[inst_id]
            del exposure.orders[order_id]
            touched[inst_id] = None
        account.order_instruments.clear()
        for order in event.orders:
            if order.remaining <= 0:
                continue
            exposure = self._exposure(account, order.inst_id, event.event_ms)
            exposure.orders[order.order_id] = order
            account.order_instruments[order.order_id] = order.inst_id
            touched[order.inst_id] = None
        for inst_id in touched:
            exposure = account.exposures[inst_id]
            self._set_leverage(exposure)
            self._refresh(exposure)
            self._discard_if_empty(exposure)
        self._evaluate(account, event.event_ms, event.recv_ms, None, None, alerts)

    def _on_positions(self, name: str, positions: tuple[Position, ...], snapshot: bool,
                      event: PositionUpdate | PositionSnapshot, alerts: list[Alert]) -> None:
        account = self._account(name)
        listed: dict[str, None] = {}
        for position in positions:
            listed[position.inst_id] = None
            if position.contracts == 0.0 and position.inst_id not in account.exposures:
                continue
            exposure = self._exposure(account, position.inst_id, event.event_ms)
            exposure.contracts = position.contracts
            exposure.avg_price = position.avg_price if position.contracts != 0.0 else 0.0
            exposure.position_leverage = position.leverage
            self._set_leverage(exposure)
            self._refresh(exposure)
            self._discard_if_empty(exposure)
        if snapshot:
            self._synced(account, "positions")
            # SPEC 3.1: positions absent from a full snapshot are closed.
            for inst_id, exposure in list(account.exposures.items()):
                if inst_id not in listed and exposure.contracts != 0.0:
                    exposure.contracts = 0.0
                    exposure.avg_price = 0.0
                    exposure.position_leverage = None
                    self._set_leverage(exposure)
                    self._refresh(exposure)
                    self._discard_if_empty(exposure)
        trigger = positions[0].inst_id if len(positions) == 1 else None
        self._evaluate(account, event.event_ms, event.recv_ms, trigger,
                       self.marks.get(trigger) if trigger else None, alerts)

    def _on_balance(self, event: BalanceUpdate, alerts: list[Alert]) -> None:
        account = self._account(event.account)
        self._accrue(account, event.event_ms)
        listed: set[str] = set()
        for balance in event.balances:
            listed.add(balance.currency)
            self._set_balance(account, balance, event.event_ms)
        if event.snapshot:
            self._synced(account, "balances")
            for currency, state in account.currencies.items():
                if currency not in listed:
                    state.cash = 0.0
                    state.interest = 0.0
                    state.liability = None
        self._retotal(account)
        self._track_debt(account)
        if event.exchange is not None:
            account.exchange = event.exchange
        self._evaluate(account, event.event_ms, event.recv_ms, None, None, alerts)
        if event.exchange is not None:
            self._check_divergence(account, event, alerts)

    def _on_instrument(self, event: InstrumentUpdate, alerts: list[Alert]) -> None:
        instrument = event.instrument
        # Configuration wins over the feed (SPEC 3.1: "... or configuration").
        if instrument.inst_id in self._configured_instruments:
            return
        self.instruments[instrument.inst_id] = instrument
        for exposure in self.holders.get(instrument.inst_id, {}).values():
            self._bind_instrument(exposure)
            self._refresh(exposure)
            self._evaluate(exposure.account, event.event_ms, event.recv_ms, instrument.inst_id,
                           self.marks.get(instrument.inst_id), alerts)

    def _on_feed_status(self, event: FeedStatus, alerts: list[Alert]) -> None:
        kind: AlertKind = "feed_connected" if event.state == "connected" else "feed_disconnected"
        if event.account is None:
            targets = list(self.accounts.values())
        else:
            targets = [self._account(event.account)]
        feed = "public" if event.account is None else "private"
        for account in targets:
            self._emit(alerts, account, kind, event.event_ms, event.recv_ms, None, None,
                       {"feed": feed, "reason": event.reason})

    # -- clock-driven work -------------------------------------------------------------

    def _sweep(self, now_ms: int, recv_ms: int, alerts: list[Alert]) -> None:
        """Once a second of event time: staleness, interest, reminders.

        Costs O(instruments in use + indebted accounts + accounts in deleverage or
        worse), never a pass over every account.
        """
        for inst_id, holders in self.holders.items():
            if inst_id in self.stale or not holders:
                continue
            last = self.mark_ms.get(inst_id)
            if last is None:
                last = min(exposure.since_ms for exposure in holders.values())
            if now_ms - last > self._stale_after_ms:
                self.stale[inst_id] = None
                for exposure in holders.values():
                    self._emit(alerts, exposure.account, "feed_stale", now_ms, recv_ms,
                               inst_id, self.marks.get(inst_id),
                               {"inst_id": inst_id, "last_mark_ts": self.mark_ms.get(inst_id),
                                "age_ms": now_ms - last})
        for currency in self.currency_holders:
            if currency not in self.usd_prices:
                # Counted at zero until an index price arrives (SPEC 1: USD aggregates).
                self._notice("unpriced_currency", None, currency)
        for account in list(self.debtors.values()) + list(self.critical.values()):
            self._evaluate(account, now_ms, recv_ms, None, None, alerts)

    @staticmethod
    def _synced(account: AccountState, part: str) -> None:
        if account.syncing is not None:
            account.syncing.discard(part)
            if not account.syncing:
                account.syncing = None

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
                value = state.adjusted_value()
                account.equity_usd += value - state.value
                state.value = value
            state.accrual_ms += seconds * 1000

    # -- evaluation --------------------------------------------------------------------

    @staticmethod
    def _figures(account: AccountState) -> Figures:
        return Figures(account.equity_usd, account.maint_usd, account.init_usd)

    def _evaluate(self, account: AccountState, ts: int, recv_ms: int, inst_id: str | None,
                  mark: float | None, alerts: list[Alert]) -> None:
        if account.syncing is not None:
            return
        if account.name in self.debtors:
            self._accrue(account, ts)
        account.updates += 1
        if account.updates >= REANCHOR_EVERY:
            self._reanchor(account)
        maint = account.maint_usd
        ratio = account.equity_usd / maint if maint > 0.0 else INFINITY
        if not account.level_low < ratio < account.level_high:
            new_level = self.ladder.next_level(account.level, ratio)
            if new_level != account.level:
                self._change_level(account, new_level, self._figures(account), ts, recv_ms,
                                   inst_id, mark, alerts)
        if account.rule_states:
            figures = self._figures(account)
            for rule_state in account.rule_states:
                value = self._metric(rule_state.rule, figures)
                metric = INFINITY if value is None else value
                if rule_state.low <= metric < rule_state.high:
                    continue
                armed = rule_state.armed
                if rule_state.step(value):
                    self._fire_rule(account, rule_state.rule, value, figures, ts, recv_ms,
                                    inst_id, mark, alerts)
                if rule_state.armed != armed:
                    self._changed[account.name] = account
        due = account.reminder_due_ms
        if due is not None and ts >= due:
            account.reminder_due_ms = ts + self._repeat_ms
            self._changed[account.name] = account
            self._emit(alerts, account, "reminder", ts, recv_ms, inst_id, mark,
                       {"since_level": account.level})

    def _change_level(self, account: AccountState, new_level: Level, figures: Figures,
                      ts: int, recv_ms: int, inst_id: str | None, mark: float | None,
                      alerts: list[Alert]) -> None:
        old_level = account.level
        account.level = new_level
        self._changed[account.name] = account
        account.level_low, account.level_high = self.ladder.band(new_level)
        self._emit(alerts, account, "level_changed", ts, recv_ms, inst_id, mark,
                   {"from": old_level, "to": new_level,
                    "threshold": self.ladder.threshold(new_level)
                    if new_level != "normal" else None},
                   figures=figures, from_level=old_level, discriminator=new_level)
        if LEVEL_RANK[new_level] >= DELEVERAGE_RANK:
            self.critical[account.name] = account
            if LEVEL_RANK[old_level] < DELEVERAGE_RANK:
                account.reminder_due_ms = ts + self._repeat_ms
        else:
            self.critical.pop(account.name, None)
            account.reminder_due_ms = None
        if new_level == "deleverage" and LEVEL_RANK[old_level] < DELEVERAGE_RANK:
            self._emit(alerts, account, "deleverage_plan", ts, recv_ms, inst_id, mark,
                       self._deleverage_plan(account, figures), figures=figures)

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
        orders: list[dict[str, Any]] = []
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
        payload = {
            "rule": rule.name,
            "metric": rule.metric,
            "value": value,
            "below": rule.below,
            "action": rule.action,
            "orders": orders,
            "dry_run": not self.risk.execute_triggers,
        }
        if rule.action == "close":
            payload["target_inst_id"] = rule.inst_id
        if rule.action == "reduce":
            payload["fraction"] = rule.fraction
        self._emit(alerts, account, "stop_loss", ts, recv_ms, inst_id, mark, payload,
                   figures=figures, discriminator=rule.name)

    def _deleverage_plan(self, account: AccountState, figures: Figures) -> dict[str, Any]:
        """Seed 000: the exchange closes "starting with the lowest unrealized PnL".

        Greedy over positions by UPL (USD) ascending, partial on the last, until the margin
        ratio is back at the deleverage threshold plus hysteresis at current marks. Closing
        at the mark realises the UPL, so equity is unchanged and only MM shrinks.
        """
        target = self.risk.deleverage + self.risk.hysteresis
        equity = figures.equity_usd
        maint_usd = figures.maint_margin_usd
        allowed = equity / target if equity > 0 else 0.0
        candidates = [e for e in account.exposures.values()
                      if e.contracts != 0.0 and e.instrument is not None]
        candidates.sort(key=lambda e: (e.upl * self._price(e), e.inst_id))
        orders: list[dict[str, Any]] = []
        steps: list[dict[str, Any]] = []
        for exposure in candidates:
            excess = maint_usd - allowed
            if excess <= 1e-12 * max(1.0, maint_usd):
                break
            price = self._price(exposure)
            held = abs(exposure.contracts)
            full = exposure.maint * price
            if full <= excess:
                size = held
            else:
                size = self._contracts_to_shed(exposure, excess / price) if price > 0 else held
            instrument = exposure.instrument
            assert instrument is not None
            size = min(held, round_up_to_lot(size, instrument.lot_size))
            remaining = exposure.contracts - math.copysign(size, exposure.contracts)
            maint_usd -= (exposure.maint - self._position_maint(exposure, remaining)) * price
            orders.append(_close_order(exposure, size))
            steps.append({"inst_id": exposure.inst_id, "upl_usd": exposure.upl * price,
                          "close_contracts": size, "contracts": exposure.contracts})
        projected = equity / maint_usd if maint_usd > 1e-12 else None
        return {"orders": orders, "positions": steps, "target_margin_ratio": target,
                "projected_margin_ratio": projected}

    def _contracts_to_shed(self, exposure: Exposure, excess: float) -> float:
        """Fewest contracts to close so the exposure's MM falls by ``excess`` (bisection;
        MM is monotone in size, with jumps at tier edges)."""
        held = abs(exposure.contracts)
        low, high = 0.0, held
        for _ in range(200):
            middle = (low + high) / 2
            left = math.copysign(held - middle, exposure.contracts)
            if exposure.maint - self._position_maint(exposure, left) >= excess:
                high = middle
            else:
                low = middle
            if high - low <= 1e-12 * held:
                break
        return high

    def _position_maint(self, exposure: Exposure, contracts: float) -> float:
        instrument = exposure.instrument
        if instrument is None or contracts == 0.0:
            return 0.0
        mark = self.marks.get(exposure.inst_id, exposure.avg_price)
        value = position_value(instrument.contract_type == "inverse", instrument.multiplier,
                               contracts, mark)
        return value * (instrument.maintenance_rate(contracts) + self.risk.closing_fee_rate)

    def _check_divergence(self, account: AccountState, event: BalanceUpdate,
                          alerts: list[Alert]) -> None:
        exchange = event.exchange
        if exchange is None or exchange.margin_ratio is None:
            return
        figures = self._figures(account)
        ours = figures.margin_ratio
        theirs = exchange.margin_ratio
        if ours is None:
            return
        difference = abs(ours - theirs) / max(abs(theirs), 1e-12)
        divergent = difference > self.risk.divergence_tolerance
        if divergent and not account.divergent:
            self._emit(alerts, account, "exchange_divergence", event.event_ms, event.recv_ms,
                       None, None,
                       {"ours": ours, "theirs": theirs, "relative_difference": difference,
                        "tolerance": self.risk.divergence_tolerance,
                        "exchange_adjusted_equity": exchange.adjusted_equity,
                        "exchange_maint_margin": exchange.maint_margin,
                        "exchange_init_margin": exchange.init_margin},
                       figures=figures)
        account.divergent = divergent

    # -- bookkeeping -------------------------------------------------------------------

    def _add_account(self, name: str, config: AccountConfig) -> AccountState:
        account = AccountState(name, config, self.ladder, self.risk.hysteresis)
        self.accounts[name] = account
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
            tiers = self.config.collateral.get(currency)
            factor = None if tiers is None else tiers.flat_factor
            if factor is None:
                factor = 0.0
                self._notice("uncollateralised_currency", account.name, currency)
            state = CurrencyState(currency, factor, self.config.interest.get(currency, 0.0),
                                  self.usd_prices.get(currency, 0.0))
            account.currencies[currency] = state
            holders = self.currency_holders.setdefault(currency, {})
            if not holders:
                self.interest_version += 1
            holders[account.name] = account
        return state

    def _set_balance(self, account: AccountState, balance: CurrencyBalance, now_ms: int) -> None:
        state = self._currency(account, balance.currency)
        state.cash = balance.cash
        state.liability = balance.liability
        if balance.interest is not None:
            state.interest = balance.interest
        if state.accrual_ms is None or balance.interest is not None:
            state.accrual_ms = now_ms

    def _track_debt(self, account: AccountState) -> None:
        if any(s.debt > 0.0 and s.rate > 0.0 for s in account.currencies.values()):
            self.debtors[account.name] = account
        else:
            self.debtors.pop(account.name, None)

    def _exposure(self, account: AccountState, inst_id: str, now_ms: int) -> Exposure:
        exposure = account.exposures.get(inst_id)
        if exposure is None:
            exposure = Exposure(account, inst_id, now_ms)
            account.exposures[inst_id] = exposure
            holders = self.holders.setdefault(inst_id, {})
            if not holders:
                self.interest_version += 1
            holders[account.name] = exposure
            self._bind_instrument(exposure)
        return exposure

    def _bind_instrument(self, exposure: Exposure) -> None:
        instrument = self.instruments.get(exposure.inst_id)
        exposure.instrument = instrument
        if instrument is None:
            self._notice("unknown_instrument", exposure.account.name, exposure.inst_id)
            exposure.currency = None
        else:
            exposure.currency = self._currency(exposure.account, instrument.settle_currency)
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

    def _drop_order(self, account: AccountState, order_id: str, now_ms: int) -> None:
        inst_id = account.order_instruments.pop(order_id, None)
        if inst_id is None:
            return
        exposure = account.exposures[inst_id]
        del exposure.orders[order_id]
        self._set_leverage(exposure)
        self._refresh(exposure)
        self._discard_if_empty(exposure)

    def _discard_if_empty(self, exposure: Exposure) -> None:
        if not exposure.empty:
            return
        account = exposure.account
        del account.exposures[exposure.inst_id]
        holders = self.holders[exposure.inst_id]
        del holders[account.name]
        if not holders:
            del self.holders[exposure.inst_id]
            self.interest_version += 1
            if exposure.inst_id in self.stale:
                del self.stale[exposure.inst_id]
        # Subtracting a departed exposure leaves the rounding of its whole history in the
        # sums (a closed book would show 1e-9 of margin); rebuild them from what remains.
        self._reanchor(account)

    def _contribution(self, exposure: Exposure) -> tuple[float, float, float, float]:
        instrument = exposure.instrument
        if instrument is None:
            return 0.0, 0.0, 0.0, 0.0
        return exposure_figures(
            instrument,
            exposure.contracts,
            exposure.avg_price,
            exposure.leverage,
            exposure.orders.values(),
            self.marks.get(exposure.inst_id),
            self.risk.closing_fee_rate,
            self.risk.market_order_slippage,
            self.risk.reduce_only_orders_count,
        )

    def _refresh(self, exposure: Exposure) -> None:
        """Recompute one exposure in full and move the difference into the totals.

        Also decides whether the exposure may take the mark-tick fast path, and caches
        that path's constants: they change only with the position, orders or spec.
        """
        value, upl, maint, init = self._contribution(exposure)
        self._move(exposure, value, upl, maint, init)
        instrument = exposure.instrument
        exposure.simple = (instrument is not None and not exposure.orders
                           and exposure.contracts != 0.0)
        if instrument is not None:
            exposure.inverse = instrument.contract_type == "inverse"
            exposure.qk = exposure.contracts * instrument.multiplier
            exposure.abs_qk = abs(exposure.contracts) * instrument.multiplier
            exposure.maint_rate = (instrument.maintenance_rate(exposure.contracts)
                                   + self.risk.closing_fee_rate)

    @staticmethod
    def _move(exposure: Exposure, value: float, upl: float, maint: float, init: float) -> None:
        """Replace an exposure's contribution, adding the differences into its currency's
        sums and its account's USD totals."""
        currency = exposure.currency
        if currency is not None:
            maint_change = maint - exposure.maint
            init_change = init - exposure.init
            currency.upl += upl - exposure.upl
            currency.maint += maint_change
            currency.init += init_change
            account = exposure.account
            price = currency.price
            eq = currency.cash - currency.interest + currency.upl
            adjusted = eq * price * currency.factor if eq > 0.0 else eq * price
            account.equity_usd += adjusted - currency.value
            currency.value = adjusted
            account.maint_usd += maint_change * price
            account.init_usd += init_change * price
        exposure.value, exposure.upl, exposure.maint, exposure.init = value, upl, maint, init

    def _reanchor(self, account: AccountState) -> None:
        """Rebuild the account's sums from its exposures' contributions, so the drift of
        adding differences cannot grow."""
        account.updates = 0
        for state in account.currencies.values():
            state.upl = state.maint = state.init = 0.0
        for exposure in account.exposures.values():
            currency = exposure.currency
            if currency is not None:
                currency.upl += exposure.upl
                currency.maint += exposure.maint
                currency.init += exposure.init
        self._retotal(account)

    @staticmethod
    def _retotal(account: AccountState) -> None:
        """Rebuild the account's USD totals from its currencies (after a balance or a
        price changed: O(currencies of the account))."""
        equity = maint = init = 0.0
        for state in account.currencies.values():
            state.value = state.adjusted_value()
            equity += state.value
            maint += state.maint * state.price
            init += state.init * state.price
        account.equity_usd, account.maint_usd, account.init_usd = equity, maint, init

    def _reprice(self) -> list[str]:
        """Recompute USD prices from index prices; return the currencies that changed.

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
        self.usd_prices = prices
        return changed

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
              payload: Mapping[str, Any], *, figures: Figures | None = None,
              from_level: Level | None = None, discriminator: str = "") -> None:
        if figures is None:
            figures = self._figures(account)
        if ts == account.last_alert_ts:
            account.sequence += 1
        else:
            account.last_alert_ts = ts
            account.sequence = 0
        alerts.append(Alert(
            id=alert_id(account.name, kind, ts, account.sequence, discriminator or inst_id or ""),
            ts=ts,
            emitted_ms=recv_ms,
            account=account.name,
            kind=kind,
            level=account.level,
            from_level=from_level,
            margin_ratio=figures.margin_ratio,
            equity_usd=figures.equity_usd,
            maint_margin_usd=figures.maint_margin_usd,
            init_margin_usd=figures.init_margin_usd,
            inst_id=inst_id,
            mark=mark,
            payload=payload,
        ))

    # -- reporting ---------------------------------------------------------------------

    def _checkpoint(self, account: AccountState) -> AccountCheckpoint:
        return AccountCheckpoint(
            account=account.name,
            level=account.level,
            reminder_due_ms=account.reminder_due_ms,
            disarmed_rules=tuple(state.rule.name for state in account.rule_states
                                 if not state.armed),
            ts=self.now_ms,
        )

    def _account_state(self, account: AccountState) -> dict[str, Any]:
        self._accrue(account, self.now_ms)
        figures = self._figures(account)
        lock_level = self.risk.withdrawal_lock
        withdrawable = max(0.0, min(figures.equity_usd - figures.init_margin_usd,
                                    figures.equity_usd - lock_level * figures.maint_margin_usd))
        positions = []
        for exposure in account.exposures.values():
            if exposure.contracts == 0.0:
                continue
            mark = self.marks.get(exposure.inst_id)
            liquidation = self._liquidation_mark(account, exposure, figures)
            positions.append({
                "inst_id": exposure.inst_id,
                "contracts": exposure.contracts,
                "avg_px": exposure.avg_price,
                "mark": mark,
                "upl": exposure.upl,
                "position_value": exposure.value,
                "maint_margin": exposure.maint,
                "init_margin": exposure.init,
                "liquidation_mark": liquidation,
                "liquidation_distance_pct": (liquidation - mark) / mark * 100.0
                if liquidation is not None and mark else None,
                "settle_ccy": exposure.instrument.settle_currency
                if exposure.instrument else None,
            })
        return {
            "equity_usd": figures.equity_usd,
            "maint_margin_usd": figures.maint_margin_usd,
            "init_margin_usd": figures.init_margin_usd,
            "margin_ratio": figures.margin_ratio,
            "im_coverage": figures.im_coverage,
            "free_margin_usd": figures.free_margin_usd,
            "max_withdrawable_usd": withdrawable,
            "level": account.level,
            "positions": positions,
            "stale_instruments": [i for i in account.exposures if i in self.stale],
        }

    def _liquidation_mark(self, account: AccountState, exposure: Exposure,
                          figures: Figures) -> float | None:
        """The mark of this instrument at which MR reaches the liquidation level, every
        other price held (SPEC 1.5). None when no such mark exists."""
        instrument = exposure.instrument
        mark = self.marks.get(exposure.inst_id)
        currency = exposure.currency
        if instrument is None or mark is None or currency is None:
            return None
        inverse = instrument.contract_type == "inverse"
        k = instrument.multiplier
        price = self.usd_prices.get(currency.currency, 0.0)
        if price <= 0.0:
            return None
        level = self.risk.liquidation
        rate = instrument.maintenance_rate(exposure.contracts) + self.risk.closing_fee_rate
        eq_now = currency.equity
        value_now = eq_now * price * currency.factor if eq_now > 0 else eq_now * price
        equity_rest = figures.equity_usd - value_now
        maint_rest = figures.maint_margin_usd - exposure.maint * price

        def surplus(candidate: float) -> float:
            upl = unrealized_pnl(inverse, k, exposure.contracts, exposure.avg_price, candidate)
            eq = eq_now - exposure.upl + upl
            value = eq * price * currency.factor if eq > 0 else eq * price
            maint = position_value(inverse, k, exposure.contracts, candidate) * rate
            return equity_rest + value - level * (maint_rest + maint * price)

        if surplus(mark) <= 0:
            return mark
        long = exposure.contracts > 0
        if long:
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
            if (surplus(middle) > 0) == long:
                high = middle
            else:
                low = middle
            if high - low <= 1e-12 * mark:
                break
        return (low + high) / 2


def _close_order(exposure: Exposure, size: float) -> dict[str, Any]:
    """A reduce-only market order closing ``size`` contracts of the position."""
    return {
        "inst_id": exposure.inst_id,
        "side": "sell" if exposure.contracts > 0 else "buy",
        "size": size,
        "reduce_only": True,
        "ord_type": "market",
    }

