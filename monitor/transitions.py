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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from monitor.alerts import LEVEL_RANK, LEVELS, Level
from monitor.config import RiskConfig, StopLossRule

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
