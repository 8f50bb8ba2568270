"""Every level and rule transition, in one place (SPEC 1.6 and 1.7).

The level ladder, read as a table (defaults from seed 000)::

    level            enter when          leave toward normal when
    warning          MR <  1.50          MR >= 1.50 + hysteresis
    withdrawal_lock  MR <  1.20          MR >= 1.20 + hysteresis
    deleverage       MR <= 1.00          MR >= 1.00 + hysteresis
    liquidation      MR <= 0.85          MR >= 0.85 + hysteresis

An undefined margin ratio (no maintenance margin) counts as +infinity. Worsening jumps
straight to the worst level whose entry condition holds; improving steps out of each level
only while MR clears that level's exit bound, so one evaluation may skip several levels in
either direction and still yields a single ``level_changed`` alert.

Stop-loss rules, as a table::

    state   condition (metric < below)   ->  state   output
    armed   true                              fired   one stop_loss trigger
    armed   false                             armed   -
    fired   metric >= rearm bound             armed   -
    fired   otherwise                         fired   -

The rearm bound is ``below + hysteresis`` for the ratio metrics and
``below + hysteresis * |below|`` for ``equity_usd`` (a USD amount: the hysteresis is read
as a fraction of the bound there, since 0.02 USD would be no hysteresis at all).

Each state also has a *band*, the open interval of the metric in which it cannot change.
The engine checks the band first and only walks the table when a value leaves it, which
keeps a mark-price tick cheap.

What a level change sets off (:func:`level_change`), by the ranks of the two levels::

    from                to                  output                          reminders
    below deleverage    deleverage          level_changed, deleverage_plan  start
    below deleverage    liquidation         level_changed                   start
    deleverage or worse deleverage or worse level_changed                   keep their time
    any                 below deleverage    level_changed                   stop

A pool's reminders (:func:`reminder`), every ``repeat_interval_s`` of event time while it
stays at deleverage or worse (SPEC 1.6)::

    state        condition     ->  state             output
    off          -                 off               -
    due at T     now <  T          due at T          -
    due at T     now >= T          due at now + R    one reminder

Staleness of what an account's figures need (:func:`overdue`): an instrument's mark, or
any other missing item (a snapshot, a spec, a price, tiers)::

    state     condition                         ->  state     output
    fresh     now - since > stale_after             stale     one feed_stale
    stale     it arrives                            fresh     one feed_recovered

``since`` is the last mark's time, or when the item went missing, and never before the
clock went live (the engine's module docstring, "The clock and staleness").

Divergence from the exchange's figures (:func:`divergence`), per pool and per position's
liquidation price (SPEC 1.9)::

    state       condition                     ->  state       output
    agreeing    a field beyond tolerance          diverging   one exchange_divergence
    diverging   a field beyond tolerance          diverging   -
    any         every field within tolerance      agreeing    -

Syncing a restored checkpoint with the snapshots after a restart
(:func:`checkpoint_on_known`, :func:`checkpoint_on_passed`; ``MarginEngine.restore`` says
why)::

    state        event                                        ->  state        output
    waiting      risk known at t < its time, clock live           rederiving   -
    waiting      risk known otherwise                             done         take over
    waiting      the clock passes its time                        done         take over
    rederiving   the clock passes its time                        done         drop it

"Take over": the account's levels, reminders and rules become the checkpoint's. "Drop
it": the re-delivered events re-derived the state through the checkpoint's time, and
that state, newer, is saved instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from monitor.core.alerts import LEVEL_RANK, LEVELS, Level
from monitor.core.settings import RiskConfig, StopLossRule

INFINITY = math.inf


@dataclass(frozen=True, slots=True)
class LevelRule:
    """One row of the ladder: enter ``level`` when MR < threshold (or <= when inclusive)."""

    level: Level
    threshold: float
    inclusive: bool

    def entered(self, ratio: float) -> bool:
        return ratio <= self.threshold if self.inclusive else ratio < self.threshold


class LevelLadder:
    """The level table for one configuration."""

    def __init__(self, risk: RiskConfig) -> None:
        self.hysteresis = risk.hysteresis
        # Seed 000: warning "drops below 150%", withdrawals blocked "below 120%",
        # deleveraging "reaches 100%", liquidation "once hit" 85%.
        self.rows: tuple[LevelRule, ...] = (
            LevelRule("warning", risk.warning, inclusive=False),
            LevelRule("withdrawal_lock", risk.withdrawal_lock, inclusive=False),
            LevelRule("deleverage", risk.deleverage, inclusive=True),
            LevelRule("liquidation", risk.liquidation, inclusive=True),
        )
        self._by_level = {row.level: row for row in self.rows}

    def threshold(self, level: Level) -> float:
        """The entry threshold of a level (infinity for ``normal``)."""
        return INFINITY if level == "normal" else self._by_level[level].threshold

    def next_level(self, current: Level, ratio: float) -> Level:
        """The level after seeing ``ratio`` while at ``current``."""
        worst: Level = "normal"
        for row in self.rows:
            if row.entered(ratio):
                worst = row.level
        if LEVEL_RANK[worst] > LEVEL_RANK[current]:
            return worst
        level = current
        while level != "normal" and ratio >= self.threshold(level) + self.hysteresis:
            level = LEVELS[LEVEL_RANK[level] - 1]
        return level

    def band(self, current: Level) -> tuple[float, float]:
        """``(low, high)``: while ``low < MR < high`` the level cannot change."""
        rank = LEVEL_RANK[current]
        low = -INFINITY if rank == len(LEVELS) - 1 else self.rows[rank].threshold
        high = INFINITY if current == "normal" else self.threshold(current) + self.hysteresis
        return low, high


class RuleState:
    """A stop-loss rule and whether it is armed."""

    __slots__ = ("armed", "high", "low", "rearm_bound", "rule")

    def __init__(self, rule: StopLossRule, hysteresis: float) -> None:
        self.rule = rule
        margin = hysteresis * abs(rule.below) if rule.metric == "equity_usd" else hysteresis
        self.rearm_bound = rule.below + margin
        self.armed = True
        self.low = rule.below
        self.high = INFINITY

    def step(self, value: float | None) -> bool:
        """Feed the metric's current value; True when the rule fires now.

        An undefined metric (its denominator is zero) is never "below" anything.
        """
        metric = INFINITY if value is None else value
        fired = False
        if self.armed and metric < self.rule.below:
            self.armed = False
            fired = True
        elif not self.armed and metric >= self.rearm_bound:
            self.armed = True
        # The band is closed at ``below`` when armed: the metric equal to the bound is
        # still not below it, and the table above must be walked to be sure.
        self.low, self.high = (
            (self.rule.below, INFINITY) if self.armed else (-INFINITY, self.rearm_bound)
        )
        return fired

    def disarm(self) -> None:
        """Restore the state "fired, not yet re-armed" (from a checkpoint)."""
        self.armed = False
        self.low, self.high = -INFINITY, self.rearm_bound

    def rearm(self) -> None:
        """Restore the state "armed" (from a checkpoint)."""
        self.armed = True
        self.low, self.high = self.rule.below, INFINITY


DELEVERAGE_RANK = LEVEL_RANK["deleverage"]

ReminderChange = Literal["start", "keep", "stop"]


@dataclass(frozen=True, slots=True)
class LevelChange:
    """What a level change sets off besides its ``level_changed`` alert."""

    plan: bool
    """A ``deleverage_plan`` alert."""
    reminders: ReminderChange


def level_change(old: Level, new: Level) -> LevelChange:
    """The row of the level-change table for ``old -> new``."""
    critical_before = LEVEL_RANK[old] >= DELEVERAGE_RANK
    if LEVEL_RANK[new] < DELEVERAGE_RANK:
        return _STOP_REMINDERS
    if critical_before:
        return _KEEP_REMINDERS
    return _PLAN_AND_START if new == "deleverage" else _START_REMINDERS


_STOP_REMINDERS = LevelChange(plan=False, reminders="stop")
_KEEP_REMINDERS = LevelChange(plan=False, reminders="keep")
_START_REMINDERS = LevelChange(plan=False, reminders="start")
_PLAN_AND_START = LevelChange(plan=True, reminders="start")


def reminder_after(change: ReminderChange, due_ms: int | None, now_ms: int,
                   repeat_ms: int) -> int | None:
    """When a pool's next reminder is due after a level change."""
    if change == "stop":
        return None
    if change == "start":
        return now_ms + repeat_ms
    return due_ms


def reminder(due_ms: int | None, now_ms: int, repeat_ms: int) -> tuple[bool, int | None]:
    """``(remind now, next due time)`` of the reminder table."""
    if due_ms is None or now_ms < due_ms:
        return False, due_ms
    return True, now_ms + repeat_ms


def overdue(now_ms: int, since_ms: int, stale_after_ms: int) -> bool:
    """Whether something missing (or last seen) since ``since_ms`` is stale now."""
    return now_ms - since_ms > stale_after_ms


def divergence(diverging: bool, beyond_tolerance: bool) -> tuple[bool, bool]:
    """``(alert now, diverging after)`` of the divergence table."""
    return beyond_tolerance and not diverging, beyond_tolerance


CheckpointStep = Literal["rederive", "take_over", "drop"]


def checkpoint_on_known(known_ms: int, checkpoint_ms: int, clock_live: bool) -> CheckpointStep:
    """A waiting checkpoint when its account's risk becomes known at ``known_ms``."""
    return "rederive" if known_ms < checkpoint_ms and clock_live else "take_over"


def checkpoint_on_passed(rederiving: bool) -> CheckpointStep:
    """A checkpoint (waiting, or rederiving) once the clock has passed its time."""
    return "drop" if rederiving else "take_over"
