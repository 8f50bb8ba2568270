"""The tables of monitor/core/transitions.py: the level ladder and stop-loss rules (seed 000
thresholds, SPEC 1.6 and 1.7), what a level change sets off, reminders, staleness,
divergence episodes and a restored checkpoint's syncing."""

from __future__ import annotations

import math

import pytest

from monitor.core.alerts import LEVELS, Level
from monitor.core.settings import RiskConfig, StopLossRule
from monitor.core.transitions import (
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


@pytest.mark.parametrize(("old", "new", "plan", "reminders"), [
    ("normal", "deleverage", True, "start"),
    ("withdrawal_lock", "deleverage", True, "start"),
    ("warning", "liquidation", False, "start"),  # straight past deleverage: no plan
    ("deleverage", "liquidation", False, "keep"),
    ("liquidation", "deleverage", False, "keep"),
    ("deleverage", "withdrawal_lock", False, "stop"),
    ("liquidation", "normal", False, "stop"),
    ("normal", "warning", False, "stop"),
])
def test_what_a_level_change_sets_off(old: Level, new: Level, plan: bool,
                                      reminders: str) -> None:
    change = level_change(old, new)
    assert (change.plan, change.reminders) == (plan, reminders)


def test_only_entering_deleverage_from_below_plans() -> None:
    planned = {(old, new) for old in LEVELS for new in LEVELS
               if old != new and level_change(old, new).plan}
    assert planned == {("normal", "deleverage"), ("warning", "deleverage"),
                       ("withdrawal_lock", "deleverage")}


def test_reminders_start_keep_their_time_and_stop() -> None:
    assert reminder_after("start", None, 1_000, 60_000) == 61_000
    assert reminder_after("start", 5_000, 1_000, 60_000) == 61_000
    assert reminder_after("keep", 5_000, 1_000, 60_000) == 5_000
    assert reminder_after("stop", 5_000, 1_000, 60_000) is None


@pytest.mark.parametrize(("due", "now", "expected"), [
    (None, 10_000, (False, None)),
    (61_000, 60_999, (False, 61_000)),
    (61_000, 61_000, (True, 121_000)),
    (61_000, 90_000, (True, 150_000)),  # a late sweep: the next one is a period on
])
def test_a_reminder_is_due_at_its_time_and_then_a_period_later(
        due: int | None, now: int, expected: tuple[bool, int | None]) -> None:
    assert reminder(due, now, 60_000) == expected


def test_stale_only_past_the_bound() -> None:
    assert not overdue(20_000, 10_000, 10_000)
    assert overdue(20_001, 10_000, 10_000)


def test_a_divergence_episode_alerts_once() -> None:
    steps = [False, True, True, False, True]
    diverging = False
    alerts = []
    for beyond in steps:
        alert, diverging = divergence(diverging, beyond)
        alerts.append(alert)
    assert alerts == [False, True, False, False, True]
    assert diverging


@pytest.mark.parametrize(("known", "live", "step"), [
    (4_000, True, "rederive"),  # re-delivered events from before the checkpoint
    (4_000, False, "take_over"),  # snapshots alone, dated by their last change
    (5_000, True, "take_over"),
    (6_000, True, "take_over"),
])
def test_a_restored_checkpoint_when_the_risk_becomes_known(known: int, live: bool,
                                                           step: str) -> None:
    assert checkpoint_on_known(known, 5_000, live) == step


def test_a_restored_checkpoint_once_the_clock_passes_it() -> None:
    assert checkpoint_on_passed(rederiving=True) == "drop"
    assert checkpoint_on_passed(rederiving=False) == "take_over"
