"""The engine beyond one-way cross positions (SPEC 1.2, 1.4, 1.5, 1.9): hedge mode, isolated
positions, account modes, tiered collateral, borrowing margin, risk unknown as a state and
the checks against the exchange's own figures. Every number is worked out in a comment."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from monitor.core.alerts import Alert
from monitor.core.engine import MarginEngine
from monitor.core.events import (
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
    InstrumentUpdate,
    Order,
    OrderUpdate,
    Position,
    PositionSnapshot,
    PositionUpdate,
)
from monitor.core.instruments import BorrowTier, CollateralTier, CollateralTiers, Instrument, Tier
from monitor.core.settings import AccountConfig, BoundsConfig, Config, RiskConfig
from tests.builders import balance, index, make_config, mark, order, run, snapshots

approx = pytest.approx
BTC = "BTC-USDT-SWAP"
INVERSE = "BTC-USD-SWAP"
ETH = "ETH-USDT-SWAP"


def kinds(alerts: Sequence[Alert]) -> list[str]:
    return [alert.kind for alert in alerts]


def config_with(**changes: Any) -> Config:
    return replace(make_config(), **changes)


def mode_update(mode: AccountMode, level: str, ts: int, hedge: bool = False) -> Event:
    return AccountConfigUpdate("main", mode, level, hedge, ts, ts)


# -- hedge mode (SPEC 1.2) ---------------------------------------------------------------


def hedge_engine() -> MarginEngine:
    """1000 USDT; long 10 BTC-USDT-SWAP at 40000 and short 5 at 41000, both cross, L 10."""
    engine = MarginEngine(make_config())
    run(engine, [*snapshots(1, cash={"USDT": 1000}, positions=(
        Position(BTC, 10, 40_000, 10, "long"), Position(BTC, -5, 41_000, 10, "short"))),
        mark(BTC, 40_000, 1)])
    return engine


def test_hedge_mode_prices_each_side_on_its_own() -> None:
    engine = hedge_engine()
    # Long: PV 4000, UPL 0, MM 16, CF 2. Short: PV 2000, UPL -5 * 0.01 * (40000 - 41000)
    # = +50, MM 8, CF 1. AE = 1000 + 50; MM 24; CF 3; IM = 400 + 200.
    figures = engine.figures("main")
    assert figures.equity_usd == approx(1050)
    assert figures.maint_margin_usd == approx(24)
    assert figures.closing_fee_usd == approx(3)
    assert figures.init_margin_usd == approx(600)
    assert figures.margin_ratio == approx(1050 / 27)
    sides = {(p["inst_id"], p["side"]): p for p in engine.state()["main"]["positions"]}
    assert sides[(BTC, "long")]["contracts"] == 10
    assert sides[(BTC, "short")]["contracts"] == -5
    assert sides[(BTC, "short")]["upl"] == approx(50)


def test_hedge_mode_orders_carry_margin_only_when_they_open() -> None:
    engine = hedge_engine()
    orders = [
        Order("1", BTC, "buy", 39_000.0, 2, 0, False, 10.0, "long"),    # opens long: 780
        Order("2", BTC, "sell", 39_500.0, 3, 0, False, 10.0, "long"),   # closes long
        Order("3", BTC, "sell", 40_500.0, 4, 0, False, 10.0, "short"),  # opens short: 1620
        Order("4", BTC, "buy", 39_800.0, 5, 0, False, 10.0, "short"),   # closes short
    ]
    run(engine, [OrderUpdate("main", order, True, 2, 2) for order in orders])
    # Long: (4000 + 780) / 10 = 478 (the buy is below the mark: no potential loss).
    # Short: (2000 + 1620) / 10 = 362 (the sell is above the mark). Closing orders: 0.
    assert engine.figures("main").init_margin_usd == approx(478 + 362)


def test_hedge_mode_close_orders_name_the_side_they_close() -> None:
    engine = MarginEngine(replace(make_config(), accounts={"main": AccountConfig(
        "main", stop_loss=(_rule("margin_ratio", 1000.0),))}))
    alerts = run(engine, [*snapshots(1, cash={"USDT": 1000}, positions=(
        Position(BTC, 10, 40_000, 10, "long"), Position(BTC, -5, 41_000, 10, "short"))),
        mark(BTC, 40_000, 1)])
    [trigger] = [a for a in alerts if a.kind == "stop_loss"]
    assert trigger.payload["orders"] == [
        {"inst_id": BTC, "side": "sell", "size": 10, "reduce_only": True,
         "ord_type": "market", "pos_side": "long", "margin_mode": "cross"},
        {"inst_id": BTC, "side": "buy", "size": 5, "reduce_only": True,
         "ord_type": "market", "pos_side": "short", "margin_mode": "cross"},
    ]


def _rule(metric: str, below: float) -> Any:
    from monitor.core.settings import StopLossRule
    assert metric in ("margin_ratio", "im_coverage", "equity_usd")
    return StopLossRule(name="r", metric="margin_ratio", below=below, action="close_all")


# -- isolated positions (SPEC 1.2) -------------------------------------------------------
#
# 1000 USDT of cross cash; long 10 BTC-USDT-SWAP at 40000, isolated, margin 400 (L 10).
# At mark m: equity 400 + 0.1 (m - 40000) = 0.1 m - 3600; MM + CF = 0.00045 m, so the
# position's ratio is (0.1 m - 3600) / (0.00045 m):
#     40000: 22.22 normal;  36200: 20 / 16.29 = 1.2277 warning;
#     36150: 15 / 16.2675 = 0.9221 deleverage;  36100: 10 / 16.245 = 0.6156 liquidation.


def isolated_engine(**kwargs: Any) -> MarginEngine:
    engine = MarginEngine(make_config(**kwargs))
    run(engine, [*snapshots(1, cash={"USDT": 1000}, positions=(
        Position(BTC, 10, 40_000, 10, "net", "isolated", 400.0),)), mark(BTC, 40_000, 1)])
    return engine


def test_an_isolated_position_stays_out_of_the_cross_sums() -> None:
    engine = isolated_engine()
    figures = engine.figures("main")
    # Cross: 1000 USDT and nothing at risk.
    assert figures.equity_usd == approx(1000)
    assert figures.maint_margin_usd == 0 and figures.init_margin_usd == 0
    assert figures.margin_ratio is None
    state = engine.state()["main"]
    # TE = 1000 + isolated equity 400 (OKX: eq = cashBal + isoEq).
    assert state["total_equity_usd"] == approx(1400)
    [pos] = state["positions"]
    assert pos["margin_mode"] == "isolated" and pos["margin"] == 400
    assert pos["margin_ratio"] == approx(400 / 18)
    assert pos["level"] == "normal"
    # Its liquidation mark: 0.1 m - 3600 = 0.85 * 0.00045 m.
    assert pos["liquidation_mark"] == approx(3600 / 0.0996175, rel=1e-9)


def test_an_isolated_position_walks_its_own_ladder() -> None:
    engine = isolated_engine()
    alerts = run(engine, [mark(BTC, 36_200, 2), mark(BTC, 36_150, 3), mark(BTC, 36_100, 4),
                          mark(BTC, 40_000, 5)])
    changes = [(a.from_level, a.level) for a in alerts if a.kind == "level_changed"]
    assert changes == [("normal", "warning"), ("warning", "deleverage"),
                       ("deleverage", "liquidation"), ("liquidation", "normal")]
    warning = alerts[0]
    assert warning.inst_id == BTC
    assert warning.payload["margin_mode"] == "isolated" and warning.payload["side"] == "net"
    assert warning.margin_ratio == approx(20 / 16.29)
    assert warning.equity_usd == approx(20)  # the position's own figures
    # Entering deleverage plans the whole position's close.
    [plan] = [a for a in alerts if a.kind == "deleverage_plan"]
    assert plan.payload["orders"] == [{"inst_id": BTC, "side": "sell", "size": 10,
                                       "reduce_only": True, "ord_type": "market",
                                       "pos_side": "net", "margin_mode": "isolated"}]
    # The account's own level never moved.
    assert engine.level("main") == "normal"


def test_an_isolated_positions_level_survives_a_restart() -> None:
    first = isolated_engine()
    run(first, [mark(BTC, 36_200, 2)])
    saved = first.drain_checkpoints()
    second = MarginEngine(make_config())
    second.restore(saved)
    alerts = run(second, [*snapshots(3, cash={"USDT": 1000}, positions=(
        Position(BTC, 10, 40_000, 10, "net", "isolated", 400.0),)), mark(BTC, 36_200, 3)])
    assert alerts == []  # still at warning: nothing to say
    alerts = run(second, [mark(BTC, 36_150, 4)])
    assert [(a.from_level, a.level) for a in alerts if a.kind == "level_changed"] == [
        ("warning", "deleverage")]


def test_isolated_divergence_is_checked_per_position() -> None:
    engine = isolated_engine()

    def push(ratio: float, maint: float, ts: int) -> Event:
        figures = ExchangePositionFigures(ratio, maint, 400.0)
        return PositionUpdate("main", (Position(BTC, 10, 40_000, 10, "net", "isolated", 400.0,
                                                figures),), ts, ts)

    ours = 400 / 18
    alerts = run(engine, [push(ours * 1.01, 16.0, 2), push(ours * 1.5, 16.0, 3),
                          push(ours, 16.0, 4), push(ours, 20.0, 5)])
    divergences = [a for a in alerts if a.kind == "exchange_divergence"]
    assert [a.ts for a in divergences] == [3, 5]
    assert [f["field"] for f in divergences[0].payload["fields"]] == ["margin_ratio"]
    assert [f["field"] for f in divergences[1].payload["fields"]] == ["maint_margin"]
    assert divergences[1].payload["margin_mode"] == "isolated"


# -- account modes (SPEC 1.5) ------------------------------------------------------------
#
# Single-currency margin: 1000 USDT with a long of 10 BTC-USDT-SWAP at 40000, and 0.02 BTC
# with a short of 50 BTC-USD-SWAP (inverse, k 100) at 50000; everything marked at 40000.
#   USDT pool: eq 1000, MM 16, CF 2 -> 55.56.
#   BTC pool: UPL 5000 / 40000 - 0.1 = 0.025, eq 0.045 BTC (no haircut), PV 0.125,
#             MM 0.000625, CF 0.0000625 -> 65.45.
# The BTC pool at an inverse mark p: eq = 5000 / p - 0.08, MM + CF = 27.5 / p, so the
# ratio is (5000 - 0.08 p) / 27.5: at 62000, 1.4545 (warning).


def single_currency_engine() -> MarginEngine:
    engine = MarginEngine(make_config())
    run(engine, [mode_update("single_currency", "2", 1), index("BTC", "USDT", 40_000, 1),
                 *snapshots(1, cash={"USDT": 1000, "BTC": 0.02}, positions=(
                     Position(BTC, 10, 40_000, 10), Position(INVERSE, -50, 50_000, 20))),
                 mark(BTC, 40_000, 1), mark(INVERSE, 40_000, 1)])
    return engine


def test_single_currency_pools_each_count_their_own_currency() -> None:
    engine = single_currency_engine()
    pools = engine.pool_figures("main")
    assert set(pools) == {"USDT", "BTC"}
    assert pools["USDT"].margin_ratio == approx(1000 / 18)
    assert pools["BTC"].margin_ratio == approx(0.045 / 0.0006875)
    assert pools["BTC"].equity_usd == approx(0.045 * 40_000)  # no haircut
    headline = engine.figures("main")
    assert headline.equity_usd == approx(1000 + 1800)
    assert headline.maint_margin_usd == approx(16 + 25)
    assert headline.margin_ratio == approx(1000 / 18)  # the lowest pool
    state = engine.state()["main"]
    assert state["mode"] == "single_currency"
    assert state["pools"]["BTC"]["margin_ratio"] == approx(0.045 / 0.0006875)


def test_single_currency_pools_walk_their_own_ladders() -> None:
    engine = single_currency_engine()
    alerts = run(engine, [mark(INVERSE, 62_000, 2)])
    [change] = [a for a in alerts if a.kind == "level_changed"]
    assert (change.from_level, change.level) == ("normal", "warning")
    assert change.payload["pool"] == "BTC"
    assert change.margin_ratio == approx((5000 - 0.08 * 62_000) / 27.5)
    # The USDT pool is untouched: the account's level is the worst pool's.
    assert engine.level("main") == "warning"


def test_single_currency_divergence_is_checked_per_currency() -> None:
    engine = single_currency_engine()
    theirs = ExchangeAccountFigures(1000 / 18 * 1.3, 1000.0, 400.0, 16.0)
    alerts = run(engine, [BalanceUpdate("main", (
        CurrencyBalance("USDT", 1000, None, None, theirs),), False, None, 2, 2)])
    [divergence] = [a for a in alerts if a.kind == "exchange_divergence"]
    assert divergence.payload["pool"] == "USDT"
    assert [f["field"] for f in divergence.payload["fields"]] == ["margin_ratio"]


def test_portfolio_margin_is_followed_on_the_exchanges_figures() -> None:
    engine = MarginEngine(make_config())
    alerts = run(engine, [mode_update("portfolio", "4", 1), *snapshots(1)])
    assert kinds(alerts) == ["account_mode"]
    assert alerts[0].payload["source"] == "exchange" and alerts[0].payload["followed"]
    # Until the exchange has sent its figures the risk is unknown.
    assert engine.state()["main"]["missing"] == ["exchange:figures"]
    figures = ExchangeAccountFigures(1.3, 13_000.0, 20_000.0, 10_000.0)
    alerts = run(engine, [BalanceUpdate("main", (CurrencyBalance("USDT", 13_000, None, None),),
                                        False, figures, 2, 2)])
    [change] = alerts
    assert (change.kind, change.level) == ("level_changed", "warning")
    assert change.payload["source"] == "exchange"
    assert change.margin_ratio == 1.3 and change.equity_usd == 13_000
    assert change.maint_margin_usd == 10_000 and change.init_margin_usd == 20_000
    # Our marks do not move the exchange's ratio; its next push does.
    figures = ExchangeAccountFigures(0.8, 8_000.0, 20_000.0, 10_000.0)
    alerts = run(engine, [BalanceUpdate("main", (), False, figures, 3, 3)])
    assert [(a.kind, a.level) for a in alerts] == [("level_changed", "liquidation")]


def test_a_configured_portfolio_account_is_announced_at_its_first_event() -> None:
    engine = MarginEngine(replace(make_config(), accounts={
        "main": AccountConfig("main", mode="portfolio")}))
    alerts = run(engine, [mark(BTC, 40_000, 5)])
    assert kinds(alerts) == ["account_mode"] and alerts[0].ts == 5


def test_a_mode_riskmon_cannot_follow_is_said_and_never_looks_safe() -> None:
    engine = MarginEngine(make_config())
    alerts = run(engine, [mode_update("unsupported", "1", 1), *snapshots(1, cash={"USDT": 5})])
    assert kinds(alerts) == ["account_mode"]
    assert alerts[0].payload["followed"] is False
    state = engine.state()["main"]
    assert state["risk_known"] is False and state["missing"] == ["mode:acctLv 1"]


# -- tiered collateral and borrowing (SPEC 1.4) --------------------------------------------


def test_tiered_collateral_from_the_feed_replaces_the_default() -> None:
    engine = MarginEngine(make_config())
    run(engine, [index("BTC", "USDT", 50_000, 1), *snapshots(1, cash={"BTC": 3})])
    # Seed default: 3 * 50000 * 0.9 = 135000.
    assert engine.figures("main").equity_usd == approx(135_000)
    tiers = CollateralTiers((CollateralTier(1, 0.98), CollateralTier(math.inf, 0.5)))
    run(engine, [CollateralTiersUpdate("BTC", tiers, 2, 2)])
    # 1 BTC at 0.98 and 2 at 0.5: (0.98 + 1.0) * 50000 = 99000.
    assert engine.figures("main").equity_usd == approx(99_000)


def test_configured_collateral_wins_over_the_feed() -> None:
    config = replace(make_config(collateral={"USDT": 1.0, "BTC": 0.7}),
                     configured_collateral=frozenset({"BTC"}))
    engine = MarginEngine(config)
    run(engine, [index("BTC", "USDT", 50_000, 1), *snapshots(1, cash={"BTC": 1}),
                 CollateralTiersUpdate("BTC", CollateralTiers.flat(0.98), 2, 2)])
    assert engine.figures("main").equity_usd == approx(35_000)


def test_a_liability_needs_borrowing_margin_and_its_tiers() -> None:
    # 1000 USDT borrowed against 1 BTC at 50000 (factor 0.9): AE = 45000 - 1000.
    engine = MarginEngine(make_config())
    alerts = run(engine, [index("BTC", "USDT", 50_000, 1),
                          *snapshots(1, cash={"USDT": -1000, "BTC": 1})])
    assert alerts == []
    # Without borrowing tiers the margin of the debt is unknown, never zero.
    assert engine.state()["main"]["missing"] == ["borrow_tiers:USDT"]
    tiers = (BorrowTier(5_000, 0.02, 0.1), BorrowTier(math.inf, 0.05, 0.2))
    run(engine, [BorrowTiersUpdate("USDT", tiers, 2, 2)])
    # MM = 1000 * 2% = 20, IM = 1000 * 10% = 100; no position, no closing fee.
    figures = engine.figures("main")
    assert figures.maint_margin_usd == approx(20)
    assert figures.init_margin_usd == approx(100)
    assert figures.margin_ratio == approx(44_000 / 20)
    assert engine.risk_known("main")
    assert engine.currencies_borrowed() == ["USDT"]


def test_configured_borrowing_tiers_apply_when_the_feed_has_none() -> None:
    engine = MarginEngine(config_with(borrow={"USDT": (BorrowTier(math.inf, 0.03, 0.3),)}))
    run(engine, [index("BTC", "USDT", 50_000, 1), *snapshots(1, cash={"USDT": -1000, "BTC": 1})])
    assert engine.figures("main").maint_margin_usd == approx(30)
    assert engine.risk_known("main")


# -- risk unknown is a state (SPEC 1.5) ---------------------------------------------------


def test_positions_before_the_balance_raise_no_level_until_both_arrived() -> None:
    engine = MarginEngine(make_config())
    # Without its cash the account would read as liquidation (AE = UPL = -70).
    alerts = run(engine, [PositionSnapshot("main", (Position(BTC, 10, 40_000, 10),), 1, 1),
                          mark(BTC, 39_300, 2)])
    assert alerts == []
    assert engine.state()["main"]["missing"] == ["snapshot:balances"]
    alerts = run(engine, [BalanceUpdate("main", (CurrencyBalance("USDT", 100, None, None),),
                                        True, None, 3, 3)])
    assert alerts == []  # MR 1.696: normal, where it started
    assert engine.risk_known("main")


def test_a_balance_update_is_not_the_snapshot() -> None:
    engine = MarginEngine(make_config())
    run(engine, [balance("USDT", 100, 1), PositionSnapshot("main", (), 1, 1)])
    assert engine.state()["main"]["missing"] == ["snapshot:balances"]


def test_an_unknown_instrument_makes_the_risk_unknown_never_zero() -> None:
    engine = MarginEngine(make_config(risk=RiskConfig(stale_after_s=10)))
    sol = "SOL-USDT-SWAP"
    run(engine, [*snapshots(1_000, cash={"USDT": 10}),
                 PositionUpdate("main", (Position(sol, 1000, 100, 10),), 1_000, 1_000),
                 mark(sol, 100, 1_000)])
    state = engine.state()["main"]
    assert state["risk_known"] is False and state["missing"] == [f"instrument:{sol}"]
    # After stale_after a feed_stale names what is missing (the marks keep coming).
    alerts = run(engine, [mark(sol, 100, t) for t in range(2_000, 13_000, 1000)])
    [stale] = [a for a in alerts if a.kind == "feed_stale"]
    assert stale.ts == 12_000 and stale.payload["missing"] == [f"instrument:{sol}"]
    # The spec arrives: MM = 1000 * 100 * 1% = 1000 against 10 USDT: liquidation at once.
    spec = Instrument(sol, "linear", 1.0, 1.0, "SOL", "USDT", (Tier(1e15, 0.01),))
    alerts = run(engine, [mark(sol, 100, 12_500), InstrumentUpdate(spec, 13_000, 13_000)])
    assert [(a.kind, a.level) for a in alerts] == [("feed_recovered", "normal"),
                                                   ("level_changed", "liquidation")]
    assert alerts[0].payload["recovered"] == f"instrument:{sol}"


def test_a_stale_mark_makes_the_risk_unknown_until_it_recovers() -> None:
    engine = MarginEngine(make_config())
    run(engine, [*snapshots(1_000, cash={"USDT": 100}, positions=(Position(BTC, 10, 40_000, 10),)),
                 mark(BTC, 39_300, 1_000)])
    alerts = run(engine, [ClockTick(12_000, 12_000)])
    assert kinds(alerts) == ["feed_stale"]
    assert engine.state()["main"]["missing"] == [f"mark:{BTC}"]
    # The index ticks while the mark is stale: nothing is evaluated meanwhile.
    assert run(engine, [index("BTC", "USDT", 1.0, 12_500)]) == []
    alerts = run(engine, [mark(BTC, 39_130, 13_000)])
    assert [(a.kind, a.level) for a in alerts] == [("feed_recovered", "normal"),
                                                   ("level_changed", "liquidation")]


def test_a_currency_without_a_price_makes_the_risk_unknown() -> None:
    engine = MarginEngine(make_config(collateral={"USDT": 1.0, "ETH": 0.8}))
    run(engine, [*snapshots(1, cash={"USDT": 100, "ETH": 2})])
    assert engine.state()["main"]["missing"] == ["price:ETH"]
    run(engine, [index("ETH", "USDT", 2_000, 2)])
    assert engine.risk_known("main")
    assert engine.figures("main").equity_usd == approx(100 + 2 * 2000 * 0.8)


def test_holdings_worth_nothing_as_collateral_need_no_price() -> None:
    # PEPE is not collateral (factor 0): a positive balance counts 0 whatever its price.
    engine = MarginEngine(make_config())
    run(engine, [*snapshots(1, cash={"USDT": 100, "PEPE": 1e9})])
    assert engine.risk_known("main")


# -- checking against the exchange (SPEC 1.9) ---------------------------------------------


def test_ours_null_against_a_finite_exchange_ratio_is_a_divergence() -> None:
    # Cash only: nothing at risk by our model. The exchange says 15987 (it sees a borrow).
    engine = MarginEngine(make_config())
    theirs = ExchangeAccountFigures(15_987.0, 30_000.0, 5.0, 1.5)
    alerts = run(engine, [BalanceUpdate("main", (CurrencyBalance("USDT", 30_000, None, None),),
                                        True, theirs, 1, 1), PositionSnapshot("main", (), 1, 1),
                          BalanceUpdate("main", (), False, theirs, 2, 2)])
    [divergence] = [a for a in alerts if a.kind == "exchange_divergence"]
    fields = {f["field"]: f for f in divergence.payload["fields"]}
    assert fields["margin_ratio"]["ours"] is None and fields["margin_ratio"]["theirs"] == 15_987
    assert fields["maint_margin"]["ours"] == 0 and fields["maint_margin"]["theirs"] == 1.5
    assert fields["init_margin"]["theirs"] == 5
    state = engine.state()["main"]
    assert state["exchange"]["margin_ratio"] == 15_987


def test_maint_and_init_margin_are_compared_too() -> None:
    engine = MarginEngine(make_config())
    run(engine, [*snapshots(1, cash={"USDT": 100}, positions=(Position(BTC, 10, 40_000, 10),)),
                 mark(BTC, 39_300, 1)])
    ratio = 30 / 17.685

    def push(maint: float, init: float, ts: int) -> Event:
        return BalanceUpdate("main", (), False,
                             ExchangeAccountFigures(ratio, 30.0, init, maint), ts, ts)

    alerts = run(engine, [push(15.72, 393, 2), push(15.72, 500, 3), push(15.72, 393, 4),
                          push(17.0, 393, 5)])
    divergences = [a for a in alerts if a.kind == "exchange_divergence"]
    assert [[f["field"] for f in a.payload["fields"]] for a in divergences] == [
        ["init_margin"], ["maint_margin"]]
    assert [a.ts for a in divergences] == [3, 5]


def test_the_account_mode_arriving_after_a_restart_repeats_no_transition() -> None:
    # The daemon restores the checkpoint, then OKX's account/config (the REST bootstrap)
    # confirms the mode: the restored level must survive the pools being rebuilt.
    first = MarginEngine(make_config())
    run(first, [*snapshots(1, cash={"USDT": 100}, positions=(Position(BTC, 10, 40_000, 10),)),
                mark(BTC, 39_150, 1)])
    assert first.level("main") == "deleverage"
    second = MarginEngine(make_config())
    second.restore(first.drain_checkpoints())
    alerts = run(second, [mode_update("multi_currency", "3", 2),
                          *snapshots(2, cash={"USDT": 100},
                                     positions=(Position(BTC, 10, 40_000, 10),)),
                          mark(BTC, 39_150, 2)])
    assert alerts == []
    assert second.level("main") == "deleverage"


def test_closed_positions_leave_no_residue_for_their_pool_to_divide() -> None:
    # Found by tests/test_engine_properties.py: a single-currency account whose USDT
    # positions closed while orders on them stayed open. Subtracting the positions' MM
    # and UPL after marks that do not cancel exactly left about 1e-11 of each in the USDT
    # sums; with no USDT cash the pool's ratio, residue over residue, came out at -24
    # (liquidation, with nothing at risk but orders), and with cash it is a ratio of 1e15
    # where there is none. Closed, the pool has no MM, no fee and no ratio.
    engine = MarginEngine(make_config(bounds=BoundsConfig(confirm_after=1)))
    rng = random.Random(7)
    events: list[Event] = [mode_update("single_currency", "2", 1),
                           index("BTC", "USDT", 40_000, 1), index("ETH", "USDT", 2_000, 1),
                           *snapshots(1, cash={"USDT": 50_000.0}, positions=(
                               Position(BTC, 7, 41_868.96955418439, 3),
                               Position(ETH, -13, 2_017.3, 5))),
                           order("o1", BTC, "buy", 1.0, None, 1, leverage=3.0),
                           order("o2", ETH, "sell", 2.0, None, 1, leverage=5.0)]
    for n in range(200):
        events += [mark(BTC, rng.uniform(30_000.0, 50_000.0), 2 + n),
                   mark(ETH, rng.uniform(1_500.0, 2_500.0), 2 + n)]
    run(engine, [*events, PositionSnapshot("main", (), 300, 301)])

    usdt = engine.pool_figures("main")["USDT"]
    assert (usdt.maint_margin_usd, usdt.closing_fee_usd, usdt.margin_ratio) == (0.0, 0.0, None)
    assert usdt.init_margin_usd > 0  # the orders are still there
