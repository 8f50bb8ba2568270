"""The level ladder and stop-loss rule table (seed 000 thresholds, SPEC 1.6 and 1.7)."""

from __future__ import annotations

import math

import pytest

from monitor.alerts import Level
from monitor.config import RiskConfig, StopLossRule
from monitor.transitions import LevelLadder, RuleState

LADDER = LevelLadder(RiskConfig())


@pytest.mark.parametrize(
    ("current", "ratio", "expected"),
    [
        # Seed 000: notice below 150%, withdrawals blocked below 120%, deleveraging at
        # 100%, liquidation at 85%.
        ("normal", 1.5000001, "normal"),
        ("normal", 1.5, "normal"),
        ("normal", 1.4999, "warning"),
        ("normal", 1.1999, "withdrawal_lock"),
        ("normal", 1.2, "warning"),
        ("normal", 1.0, "deleverage"),
        ("normal", 1.0000001, "withdrawal_lock"),
        ("normal", 0.85, "liquidation"),
        ("normal", 0.8500001, "deleverage"),
        ("normal", -3.0, "liquidation"),
        ("normal", math.inf, "normal"),
        # Hysteresis 0.02: leaving a level needs MR >= threshold + 0.02.
        ("warning", 1.51, "warning"),
        ("warning", 1.52, "normal"),
        ("withdrawal_lock", 1.21, "withdrawal_lock"),
        ("withdrawal_lock", 1.22, "warning"),
        ("withdrawal_lock", 1.6, "normal"),
        ("deleverage", 1.01, "deleverage"),
        ("deleverage", 1.02, "withdrawal_lock"),
        ("liquidation", 0.86, "liquidation"),
        ("liquidation", 0.90, "deleverage"),
        ("liquidation", 1.3, "warning"),
        ("liquidation", math.inf, "normal"),
        # Worsening from inside a hysteresis band moves at once.
        ("warning", 1.19, "withdrawal_lock"),
    ],
)
def test_next_level(current: Level, ratio: float, expected: Level) -> None:
    assert LADDER.next_level(current, ratio) == expected


@pytest.mark.parametrize("level", ["normal", "warning", "withdrawal_lock", "deleverage",
                                   "liquidation"])
def test_band_is_exactly_where_the_level_holds(level: Level) -> None:
    low, high = LADDER.band(level)
    for ratio in [x / 1000 for x in range(-500, 2500)]:
        inside = low < ratio < high
        if inside:
            assert LADDER.next_level(level, ratio) == level, ratio


def test_custom_thresholds() -> None:
    ladder = LevelLadder(RiskConfig(warning=3.0, withdrawal_lock=2.0, deleverage=1.5,
                                    liquidation=1.1, hysteresis=0.1))
    assert ladder.next_level("normal", 2.5) == "warning"
    assert ladder.next_level("warning", 3.05) == "warning"
    assert ladder.next_level("warning", 3.1) == "normal"


class TestRule:
    rule = StopLossRule(name="guard", metric="im_coverage", below=1.10, action="close_all")

    def test_fires_once_and_rearms_after_hysteresis(self) -> None:
        state = RuleState(self.rule, hysteresis=0.02)
        assert state.step(1.2) is False
        assert state.step(1.09) is True
        assert state.step(1.05) is False  # still below: no second trigger
        assert state.step(1.11) is False  # above the bound but inside hysteresis
        assert state.step(1.09) is False  # so it has not re-armed
        assert state.step(1.12) is False  # clears 1.10 + 0.02: re-armed
        assert state.step(1.0) is True

    def test_undefined_metric_is_never_below(self) -> None:
        state = RuleState(self.rule, hysteresis=0.02)
        assert state.step(None) is False
        assert state.armed

    def test_equity_hysteresis_is_relative(self) -> None:
        rule = StopLossRule(name="floor", metric="equity_usd", below=10_000, action="close_all")
        state = RuleState(rule, hysteresis=0.02)
        assert state.step(9_999) is True
        assert state.step(10_100) is False
        assert not state.armed  # needs 10,200
        state.step(10_200)
        assert state.armed

    def test_band_matches_step(self) -> None:
        state = RuleState(self.rule, hysteresis=0.02)
        for value in [1.3, 1.1, 1.0999, 1.05, 1.115, 1.12, 1.2, 1.0]:
            before = state.armed
            inside = state.low <= value < state.high
            fired = state.step(value)
            if inside:
                assert not fired and state.armed == before
