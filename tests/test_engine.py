"""The margin engine: events in, alerts and state out (synchronous, no I/O).

The main scenario: 100 USDT of cash and a long of 10 BTC-USDT-SWAP (k = 0.01) at 40000,
leverage 10. At mark m:  AE = 100 + 0.1 (m - 40000),  MM = 0.1 m * 0.4% = 0.0004 m, the
closing fee CF = 0.1 m * 0.05% = 0.00005 m (SPEC 1.2), so
MR(m) = (0.1 m - 3900) / (0.00045 m). Worked values:

    mark    AE     MM       CF        MR       level
    39300   30     15.72    1.965     1.6964   normal
    39230   23     15.692   1.9615    1.3029   warning
    39180   18     15.672   1.959     1.0209   withdrawal_lock
    39150   15     15.66    1.9575    0.8514   deleverage
    39130   13     15.652   1.9565    0.7383   liquidation
    39400   40     15.76    1.97      2.2561   normal

Every account waits for its balance and positions snapshots before it is evaluated
(SPEC 1.5); the scenarios start with them.
"""

from __future__ import annotations

from typing import Any

import pytest

from monitor.core.engine import MarginEngine
from monitor.core.events import (
    UNTIMED,
    BalanceUpdate,
    ClockTick,
    CurrencyBalance,
    Event,
    ExchangeAccountFigures,
    FeedStatus,
    InstrumentUpdate,
    Order,
    OrdersSnapshot,
    Position,
    PositionSnapshot,
)
from monitor.core.instruments import Instrument, Tier
from monitor.core.records import AccountCheckpoint, PoolCheckpoint
from monitor.core.settings import BoundsConfig, RiskConfig, StopLossRule
from tests.builders import balance, index, make_config, mark, order, position, run, snapshots

approx = pytest.approx
BTC = "BTC-USDT-SWAP"
ETH = "ETH-USDT-SWAP"


def scenario_engine(**kwargs: Any) -> MarginEngine:
    engine = MarginEngine(make_config(**kwargs))
    run(engine, [*snapshots(1_000), balance("USDT", 100, 1_000),
                 position(BTC, 10, 40_000, 1_000), mark(BTC, 39_300, 1_000)])
    return engine


def close_order(inst_id: str, side: str, size: float) -> dict[str, Any]:
    """A reduce-only market order of a one-way cross position, as alerts carry them."""
    return {"inst_id": inst_id, "side": side, "size": size, "reduce_only": True,
            "ord_type": "market", "pos_side": "net", "margin_mode": "cross"}


def test_account_figures_for_a_linear_long() -> None:
    engine = scenario_engine()
    figures = engine.figures("main")
    assert figures.equity_usd == approx(30)
    assert figures.maint_margin_usd == approx(15.72)
    # IM = PV / L = 3930 / 10.
    assert figures.init_margin_usd == approx(393)
    assert figures.closing_fee_usd == approx(1.965)
    assert figures.margin_ratio == approx(30 / (15.72 + 1.965))
    assert figures.im_coverage == approx(30 / 393)
    state = engine.state()["main"]
    assert state["free_margin_usd"] == approx(30 - 393)
    assert state["max_withdrawable_usd"] == 0.0
    assert state["level"] == "normal"
    assert state["risk_known"] is True and state["missing"] == []
    assert state["closing_fee_usd"] == approx(1.965)
    [pos] = state["positions"]
    assert pos["side"] == "net" and pos["margin_mode"] == "cross"
    assert pos["closing_fee"] == approx(1.965) and pos["maint_margin"] == approx(15.72)
    assert pos["contracts"] == 10 and pos["avg_px"] == 40_000 and pos["mark"] == 39_300
    assert pos["upl"] == approx(-70)
    assert pos["position_value"] == approx(3930)


def test_max_withdrawable() -> None:
    # 5000 USDT cash, long 10 at 40000 marked at 40000: AE 5000, MM 16, CF 2, IM 400.
    # min(5000 - 400, 5000 - 1.2 * (16 + 2)) = 4600.
    engine = MarginEngine(make_config())
    run(engine, [*snapshots(1), balance("USDT", 5000, 1), position(BTC, 10, 40_000, 1),
                 mark(BTC, 40_000, 1)])
    assert engine.state()["main"]["max_withdrawable_usd"] == approx(4600)
    # 60 USDT: AE 60; 60 - 400 < 0: nothing can be withdrawn.
    run(engine, [balance("USDT", 60, 2)])
    assert engine.state()["main"]["max_withdrawable_usd"] == 0.0
    # 1000 USDT, no position: all of it.
    run(engine, [position(BTC, 0, 0, 3), balance("USDT", 1000, 3)])
    assert engine.state()["main"]["max_withdrawable_usd"] == approx(1000)


def test_levels_walk_down_and_recover_in_one_step() -> None:
    engine = scenario_engine()
    marks = [39_230, 39_180, 39_150, 39_130, 39_400]
    alerts = run(engine, [mark(BTC, m, 2_000 + i) for i, m in enumerate(marks)])
    changes = [(a.from_level, a.level) for a in alerts if a.kind == "level_changed"]
    assert changes == [
        ("normal", "warning"),
        ("warning", "withdrawal_lock"),
        ("withdrawal_lock", "deleverage"),
        ("deleverage", "liquidation"),
        ("liquidation", "normal"),
    ]
    warning = alerts[0]
    assert warning.margin_ratio == approx(23 / (15.692 + 1.9615))
    assert warning.inst_id == BTC and warning.mark == 39_230
    assert warning.ts == 2_000 and warning.emitted_ms == 2_001
    assert warning.payload["threshold"] == 1.5
    assert [a.kind for a in alerts].count("deleverage_plan") == 1


def test_skipping_levels_is_one_alert() -> None:
    engine = scenario_engine()
    alerts = run(engine, [mark(BTC, 39_130, 2_000)])
    assert [(a.kind, a.from_level, a.level) for a in alerts] == [
        ("level_changed", "normal", "liquidation")
    ]


def test_hysteresis_prevents_flapping() -> None:
    engine = scenario_engine()
    # MR crosses 1.5 down, then wobbles between 1.3029 and 1.5054 (39266: AE 26.6,
    # MM + CF = 0.00045 * 39266 = 17.6697), above 1.5 but under 1.52: one alert.
    alerts = run(engine, [mark(BTC, m, 2_000 + i)
                          for i, m in enumerate([39_230, 39_266, 39_230, 39_266])])
    assert [a.kind for a in alerts] == ["level_changed"]
    # 39270: AE 27, MM + CF 17.6715, MR 1.5279 >= 1.52: back to normal.
    alerts = run(engine, [mark(BTC, 39_270, 3_000)])
    assert [(a.from_level, a.level) for a in alerts] == [("warning", "normal")]


def test_deleverage_plan_closes_lowest_upl_first() -> None:
    # 200 USDT; long 10 BTC at 40000 and long 100 ETH (k = 0.1) at 2000, leverage 10.
    engine = MarginEngine(make_config())
    run(engine, [*snapshots(1), balance("USDT", 200, 1), position(BTC, 10, 40_000, 1),
                 position(ETH, 100, 2_000, 1), mark(ETH, 2_000, 1), mark(BTC, 40_000, 1)])
    alerts = run(engine, [mark(ETH, 1_995, 2)])
    # ETH 1995: UPL -50, AE 150, MM = 16 + 99.75, CF = (4000 + 19950) * 0.0005 = 11.975,
    # MR = 150 / 127.725 = 1.1744 -> withdrawal_lock.
    assert [a.level for a in alerts] == ["withdrawal_lock"]
    alerts = run(engine, [mark(BTC, 39_700, 3)])
    # BTC 39700: UPL -30, AE 120, MM = 15.88 + 99.75 = 115.63, CF = 11.96, MR 0.9405.
    kinds = [a.kind for a in alerts]
    assert kinds == ["level_changed", "deleverage_plan"]
    plan = alerts[1].payload
    assert plan["target_margin_ratio"] == approx(1.02)
    # Lowest UPL first: ETH (-50) before BTC (-30). Closing x ETH contracts at the mark pays
    # their fee (0.1 * 1995 * 0.0005 = 0.09975 each) and releases MM + CF of 1.09725 each:
    # (120 - 0.09975 x) / (127.59 - 1.09725 x) >= 1.02  <=>  x >= 9.948 -> 10 contracts.
    assert plan["orders"] == [close_order(ETH, "sell", 10.0)]
    assert plan["projected_margin_ratio"] == approx((120 - 0.9975) / (127.59 - 10.9725))
    assert alerts[1].margin_ratio == approx(120 / 127.59)


def test_stop_loss_fires_once_with_orders_and_rearms() -> None:
    rule = StopLossRule(name="guard-110", metric="im_coverage", below=1.10, action="close_all")
    engine = MarginEngine(make_config(rules=(rule,)))
    # 500 USDT, long 10 BTC at 40000, L 10: IM = PV / 10.
    # At 40000: AE 500, IM 400: coverage 1.25.  At 39500: AE 450, IM 395: 1.139.
    # At 39400: AE 440, IM 394: 1.1168. At 39300: AE 430, IM 393: 1.0941 -> fires.
    events: list[Event] = [*snapshots(1), balance("USDT", 500, 1),
                           position(BTC, 10, 40_000, 1),
                           mark(BTC, 40_000, 1), mark(BTC, 39_500, 2), mark(BTC, 39_300, 3),
                           mark(BTC, 39_200, 4)]
    alerts = [a for a in run(engine, events) if a.kind == "stop_loss"]
    assert len(alerts) == 1
    payload = alerts[0].payload
    assert payload["rule"] == "guard-110" and payload["dry_run"] is True
    assert payload["value"] == approx(430 / 393)
    assert payload["orders"] == [close_order(BTC, "sell", 10)]
    # 39400 is above 1.10 but inside the hysteresis (1.1168 < 1.12): no re-arm, no trigger.
    assert not [a for a in run(engine, [mark(BTC, 39_400, 5), mark(BTC, 39_300, 6)])
                if a.kind == "stop_loss"]
    # 39500 gives 1.139 >= 1.12: re-armed; 39300 fires again.
    again = run(engine, [mark(BTC, 39_500, 7), mark(BTC, 39_300, 8)])
    assert [a.kind for a in again] == ["stop_loss"]


def test_stop_loss_close_and_reduce_actions() -> None:
    rules = (
        StopLossRule(name="close-eth", metric="margin_ratio", below=5.0, action="close",
                     inst_id=ETH),
        StopLossRule(name="halve", metric="equity_usd", below=150.0, action="reduce",
                     fraction=0.5),
    )
    engine = MarginEngine(make_config(rules=rules))
    alerts = run(engine, [*snapshots(1, cash={"USDT": 200},
                                    positions=(Position(BTC, 9, 40_000, 10),
                                               Position(ETH, -7, 2_000, 10))),
                          mark(BTC, 40_000, 1),
                          mark(ETH, 2_000, 1), mark(ETH, 2_080, 2)])
    # ETH short 7 (k 0.1) from 2000 to 2080: UPL -56, AE 144 < 150 -> "halve";
    # MM = 14.4 + 0.7 * 2080 * 0.005 = 21.68, CF = (3600 + 1456) * 0.0005 = 2.528,
    # MR = 144 / 24.208 = 5.95: "close-eth" holds.
    fired = [a.payload for a in alerts if a.kind == "stop_loss"]
    assert [p["rule"] for p in fired] == ["halve"]
    # Halving 9 BTC rounds up to 5 whole lots; 7 ETH to 4; the short is closed by buying.
    assert [(o["inst_id"], o["side"], o["size"]) for o in fired[0]["orders"]] == [
        (BTC, "sell", 5.0), (ETH, "buy", 4.0)]
    # ETH to 2200: UPL -140, AE 60; MM 22.1, CF 2.57; MR 2.43 < 5 -> close ETH only.
    fired = [a.payload for a in run(engine, [mark(ETH, 2_200, 3)]) if a.kind == "stop_loss"]
    assert [p["rule"] for p in fired] == ["close-eth"]
    assert fired[0]["orders"] == [close_order(ETH, "buy", 7)]


def test_debts_count_in_full_assets_after_haircut() -> None:
    # Borrowed 1000 USDT (cash -1000), holds 1 BTC priced 50000 with factor 0.9,
    # and 1,000,000 PEPE which is not collateral.
    engine = MarginEngine(make_config())
    run(engine, [index("BTC", "USDT", 50_000, 1), index("PEPE", "USDT", 0.00001, 1),
                 BalanceUpdate("main", (CurrencyBalance("USDT", -1000, 1000, None),
                                        CurrencyBalance("BTC", 1, None, None),
                                        CurrencyBalance("PEPE", 1e6, None, None)),
                               True, None, 1, 1)])
    assert engine.figures("main").equity_usd == approx(-1000 + 50_000 * 0.9)
    notices = engine.drain_notices()
    assert [(n.kind, n.subject) for n in notices] == [("uncollateralised_currency", "PEPE")]
    assert engine.drain_notices() == []


def test_usdt_valued_by_its_index_when_fed() -> None:
    engine = MarginEngine(make_config())
    run(engine, [balance("USDT", 1000, 1), index("BTC", "USDT", 50_000, 1),
                 balance("BTC", 1, 1), index("USDT", "USD", 0.998, 2)])
    # USDT 1000 * 0.998 + BTC 1 * 50000 * 0.998 * 0.9.
    assert engine.figures("main").equity_usd == approx(998 + 50_000 * 0.998 * 0.9)


def test_interest_accrues_to_the_second_by_event_time() -> None:
    # An hour without events: a gap of the clock, which [bounds] would make wait for
    # confirmation; this is about interest, so the jump check is off (confirm_after 1).
    engine = MarginEngine(make_config(interest={"USDT": 0.00002},
                                      bounds=BoundsConfig(confirm_after=1)))
    run(engine, [index("BTC", "USDT", 50_000, 0),
                 BalanceUpdate("main", (CurrencyBalance("USDT", -1000, None, None),
                                        CurrencyBalance("BTC", 1, None, None)),
                               True, None, 0, 0)])
    base = -1000 + 45_000
    # 1.5 s later only one whole second has accrued: 1000 * 0.00002 / 3600.
    run(engine, [index("BTC", "USDT", 50_000, 1_500)])
    assert engine.figures("main").equity_usd == approx(base - 0.02 / 3600, rel=1e-12)
    # After one hour of event time: 0.02 USDT.
    run(engine, [index("BTC", "USDT", 50_000, 3_600_000)])
    assert engine.figures("main").equity_usd == approx(base - 0.02, rel=1e-12)
    # A snapshot that carries the exchange's interest resets ours.
    run(engine, [BalanceUpdate("main", (CurrencyBalance("USDT", -1000, 1000, 0.5),),
                               False, None, 3_600_000, 3_600_000)])
    assert engine.figures("main").equity_usd == approx(base - 0.5, rel=1e-12)


def test_inverse_account_in_coin() -> None:
    # 0.02 BTC cash; short 50 BTC-USD-SWAP (k 100) at 50000; BTC index 40000.
    engine = MarginEngine(make_config())
    run(engine, [index("BTC", "USDT", 40_000, 1), balance("BTC", 0.02, 1),
                 position("BTC-USD-SWAP", -50, 50_000, 1, leverage=20),
                 mark("BTC-USD-SWAP", 40_000, 1)])
    # UPL = +0.025 BTC, eq = 0.045 BTC -> 0.045 * 40000 * 0.9 = 1620 USD.
    # MM = 0.125 * 0.5% = 0.000625 BTC = 25 USD; IM = 0.125 / 20 BTC = 250 USD.
    figures = engine.figures("main")
    assert figures.equity_usd == approx(1620)
    assert figures.maint_margin_usd == approx(25)
    assert figures.init_margin_usd == approx(250)


def test_orders_partial_fill_and_cancel() -> None:
    engine = MarginEngine(make_config())
    run(engine, [balance("USDT", 10_000, 1), mark(BTC, 42_000, 1),
                 order("a", BTC, "buy", 10, 41_000, 2)])
    # Flat, buy 10 at 41000 (B 4100), L 10: IM 410.
    assert engine.figures("main").init_margin_usd == approx(410)
    run(engine, [order("a", BTC, "buy", 10, 41_000, 3, filled=4),
                 position(BTC, 4, 41_000, 3)])
    # Remaining 6 (B 2460); long 4 marked 42000 (PV 1680): (1680 + 2460) / 10 = 414.
    assert engine.figures("main").init_margin_usd == approx(414)
    run(engine, [order("a", BTC, "buy", 10, 41_000, 4, filled=4, live=False)])
    assert engine.figures("main").init_margin_usd == approx(168)
    assert engine.state()["main"]["positions"][0]["init_margin"] == approx(168)


def test_orders_snapshot_replaces_live_orders() -> None:
    engine = MarginEngine(make_config())
    run(engine, [mark(BTC, 40_000, 1), mark(ETH, 2_000, 1),
                 order("a", BTC, "buy", 10, 40_000, 1), order("b", ETH, "sell", 5, 2_000, 1)])
    snapshot = OrdersSnapshot("main", (Order("c", ETH, "buy", 1_900.0, 10, 0, False, 5.0),), 2, 2)
    run(engine, [snapshot])
    # Only order c remains: B = 10 * 0.1 * 1900 = 1900, L 5: IM 380.
    assert engine.figures("main").init_margin_usd == approx(380)
    assert list(engine.accounts["main"].exposures) == [(ETH, "cross", "net")]


def test_position_snapshot_closes_absent_positions() -> None:
    engine = MarginEngine(make_config())
    run(engine, [mark(BTC, 40_000, 1), mark(ETH, 2_000, 1), position(BTC, 1, 40_000, 1),
                 position(ETH, 1, 2_000, 1)])
    run(engine, [PositionSnapshot("main", (Position(ETH, 2, 2_000, 10),), 2, 2)])
    assert [p["inst_id"] for p in engine.state()["main"]["positions"]] == [ETH]
    assert engine.figures("main").maint_margin_usd == approx(2 * 0.1 * 2000 * 0.005)


def test_stale_mark_and_recovery() -> None:
    engine = scenario_engine()
    # No BTC mark for more than 10 s of event time (other events keep the clock going).
    alerts = run(engine, [index("BTC", "USDT", 39_000, t) for t in range(2_000, 13_000, 1000)])
    stale = [a for a in alerts if a.kind == "feed_stale"]
    assert len(stale) == 1
    assert stale[0].inst_id == BTC and stale[0].payload["last_mark_ts"] == 1_000
    assert engine.state()["main"]["stale_instruments"] == [BTC]
    alerts = run(engine, [mark(BTC, 39_300, 13_500)])
    assert [a.kind for a in alerts] == ["feed_recovered"]


def test_reminders_while_in_deleverage() -> None:
    engine = scenario_engine(risk=RiskConfig(repeat_interval_s=60))
    run(engine, [mark(BTC, 39_150, 10_000)])
    alerts = run(engine, [mark(BTC, 39_150, t) for t in range(11_000, 131_000, 1000)])
    reminders = [a for a in alerts if a.kind == "reminder"]
    assert [a.ts for a in reminders] == [70_000, 130_000]
    assert all(a.level == "deleverage" for a in reminders)


def test_liquidation_mark_solves_the_margin_ratio() -> None:
    engine = scenario_engine()
    # (0.1 m - 3900) / (0.00045 m) = 0.85  ->  m = 3900 / (0.1 - 0.0003825).
    [pos] = engine.state()["main"]["positions"]
    liquidation = 3900 / 0.0996175
    assert pos["liquidation_mark"] == approx(liquidation, rel=1e-9)
    assert pos["liquidation_distance_pct"] == approx((liquidation - 39_300) / 393)


def test_liquidation_mark_of_a_short() -> None:
    engine = MarginEngine(make_config())
    run(engine, [*snapshots(1), balance("USDT", 100, 1), position(BTC, -10, 40_000, 1),
                 mark(BTC, 40_000, 1)])
    # AE = 100 - 0.1 (m - 40000) = 4100 - 0.1 m; MM + CF = 0.00045 m:
    # 4100 - 0.1 m = 0.85 * 0.00045 m  ->  m = 4100 / 0.1003825.
    [pos] = engine.state()["main"]["positions"]
    assert pos["liquidation_mark"] == approx(4100 / 0.1003825, rel=1e-9)


def test_unknown_instrument_counts_once_its_spec_arrives() -> None:
    engine = MarginEngine(make_config())
    sol = Instrument("SOL-USDT-SWAP", "linear", 1.0, 1.0, "SOL", "USDT", (Tier(1e15, 0.01),))
    run(engine, [balance("USDT", 1000, 1), position("SOL-USDT-SWAP", 10, 100, 1),
                 mark("SOL-USDT-SWAP", 100, 1)])
    assert engine.figures("main").maint_margin_usd == 0
    assert [n.kind for n in engine.drain_notices()] == ["unknown_instrument"]
    run(engine, [InstrumentUpdate(sol, 2, 2)])
    assert engine.figures("main").maint_margin_usd == approx(10.0)


def test_configured_instrument_wins_over_the_feed() -> None:
    engine = scenario_engine()
    changed = Instrument(BTC, "linear", 1.0, 1.0, "BTC", "USDT", (Tier(1e15, 0.5),))
    run(engine, [InstrumentUpdate(changed, 2, 2)])
    assert engine.figures("main").maint_margin_usd == approx(15.72)


def test_exchange_divergence_once_until_back_in_tolerance() -> None:
    engine = scenario_engine()
    ours = 30 / 17.685

    def exchange(ratio: float, ts: int) -> BalanceUpdate:
        figures = ExchangeAccountFigures(ratio, None, None, None)
        return BalanceUpdate("main", (CurrencyBalance("USDT", 100, None, None),), False,
                             figures, ts, ts)

    # After the scenario's balance snapshot at 1000: an older push would be out of order.
    alerts = run(engine, [exchange(ours * 1.01, 1002), exchange(ours * 1.2, 1003),
                          exchange(ours * 1.3, 1004), exchange(ours, 1005),
                          exchange(ours * 0.8, 1006)])
    divergences = [a for a in alerts if a.kind == "exchange_divergence"]
    assert [a.ts for a in divergences] == [1003, 1006]
    assert divergences[0].payload["theirs"] == approx(ours * 1.2)


def test_feed_status_alerts() -> None:
    engine = scenario_engine()
    alerts = run(engine, [FeedStatus(None, "disconnected", "closed", 5, 5),
                          FeedStatus("main", "connected", "login ok", 6, 6)])
    assert [(a.kind, a.payload["feed"]) for a in alerts] == [
        ("feed_disconnected", "public"), ("feed_connected", "private")]


def test_same_input_gives_same_alert_ids() -> None:
    def ids() -> list[str]:
        engine = scenario_engine()
        alerts = run(engine, [mark(BTC, m, 2_000) for m in (39_230, 39_180, 39_150, 39_400)])
        return [a.id for a in alerts]

    first = ids()
    assert first == ids()
    assert len(set(first)) == len(first)


def test_tick_touches_only_accounts_holding_the_instrument() -> None:
    engine = MarginEngine(make_config())
    run(engine, [*snapshots(1, "a"), balance("USDT", 100, 1, account="a"),
                 position(BTC, 1, 40_000, 1, account="a"), *snapshots(1, "b"),
                 balance("USDT", 100, 1, account="b"), position(ETH, 1, 2_000, 1, account="b"),
                 mark(BTC, 40_000, 1), mark(ETH, 2_000, 1)])
    before = engine.accounts["b"].updates
    run(engine, [mark(BTC, 40_100, 2) for _ in range(10)])
    assert engine.accounts["b"].updates == before
    assert engine.accounts["a"].updates >= 10


def test_untimed_events_are_dated_by_the_engine_clock_and_never_move_it() -> None:
    engine = scenario_engine()  # clock at 1_000
    far_future = 9_000_000_000_000
    alerts = run(engine, [FeedStatus(None, "connected", "subscribed", UNTIMED, far_future),
                          OrdersSnapshot("main", (), UNTIMED, far_future)])
    assert engine.now_ms == 1_000
    assert [(a.kind, a.ts, a.emitted_ms) for a in alerts] == [
        ("feed_connected", 1_000, far_future)]
    # The clock was not pushed ahead: a mark 9 s later is not stale.
    assert not [a for a in run(engine, [mark(BTC, 39_300, 10_000)]) if a.kind == "feed_stale"]


def test_an_untimed_event_before_any_event_takes_its_receive_time() -> None:
    engine = MarginEngine(make_config())
    [alert] = run(engine, [FeedStatus("main", "connected", "login ok", UNTIMED, 4_321)])
    assert alert.ts == 4_321 and engine.now_ms == 0


def test_clock_ticks_make_a_silent_feed_stale_and_keep_reminders_due() -> None:
    engine = scenario_engine(risk=RiskConfig(repeat_interval_s=60))
    run(engine, [mark(BTC, 39_150, 2_000)])  # deleverage; reminder due at 62_000
    alerts = run(engine, [ClockTick(t, t) for t in range(3_000, 63_000, 1000)])
    assert [(a.kind, a.ts) for a in alerts] == [("feed_stale", 13_000), ("reminder", 62_000)]


def partway_feed(start_ms: int, end_ms: int) -> list[Event]:
    """A BTC and an ETH long, marks every 500 ms and BTC index prices every second from
    ``start_ms``; the ETH marks pause from 40,000 to 53,000 (longer than stale_after)."""
    events: list[Event] = []
    for ts in range(start_ms, end_ms, 500):
        events.append(mark(BTC, 39_300, ts))
        if not 40_000 <= ts < 53_000:
            events.append(mark(ETH, 2_000, ts + 250))
        if ts % 1000 == 0:
            events.append(index("BTC", "USDT", 39_300, ts + 1))
    return events


def partway_snapshots() -> list[Event]:
    """The account's snapshots, dated by their last change (1,000), as REST sends them
    whenever it is asked."""
    return snapshots(1_000, cash={"USDT": 500, "BTC": 0.01},
                     positions=(Position(BTC, 10, 40_000, 10), Position(ETH, 10, 2_000, 10)))


def test_a_restart_partway_through_a_feed_judges_staleness_as_the_whole_run() -> None:
    # The whole run: the snapshots at 1,000, then the feed. Restarted at any point of
    # it, the engine gets the same snapshots (dated 1,000: nothing changed since) and the
    # feed from there on. Nothing counts as missing from before its first live event, so
    # the jump from 1,000 to the present makes nothing stale; and the sweeps fall on
    # whole seconds, so the real ETH gap is stale at the same time in both runs.
    whole = run(MarginEngine(make_config()), [*partway_snapshots(),
                                               *partway_feed(1_000, 70_000)])
    stale = [(a.kind, a.ts, a.inst_id) for a in whole if a.kind.startswith("feed_")]
    assert stale == [("feed_stale", 50_000, ETH), ("feed_recovered", 53_250, ETH)]
    for start in (20_000, 20_500, 30_000, 38_500):
        restarted = MarginEngine(make_config())
        alerts = run(restarted, [*partway_snapshots(), *partway_feed(start, 70_000)])
        assert [(a.kind, a.ts, a.inst_id) for a in alerts] == stale, f"from {start}"
        assert restarted.state()["main"]["risk_known"] is True


def test_clock_ticks_before_the_first_live_event_make_nothing_stale() -> None:
    # The restarted daemon ticks from the snapshots' times while the feed's first marks
    # are on their way (a second or two); those come dated by the present, a minute on.
    engine = MarginEngine(make_config())
    run(engine, partway_snapshots())
    alerts = run(engine, [ClockTick(t, t) for t in (2_000, 3_000)])
    alerts += run(engine, partway_feed(62_000, 70_000))
    assert alerts == []
    assert engine.state()["main"]["risk_known"] is True


def test_a_feed_silent_after_the_snapshots_makes_the_risk_unknown_on_time() -> None:
    # No live event at all: the daemon's ClockTicks carry the clock on from the
    # snapshots, and what is missing is overdue stale_after past them.
    engine = MarginEngine(make_config())
    run(engine, partway_snapshots())
    alerts = run(engine, [ClockTick(t, t) for t in range(2_000, 15_000, 1000)])
    assert [(a.kind, a.ts) for a in alerts] == [("feed_stale", 12_000)] * 3
    assert {a.inst_id for a in alerts} == {BTC, ETH, None}
    assert alerts[-1].payload["missing"] == ["price:BTC"]


def test_a_reminder_due_while_the_risk_is_unknown_says_what_its_figures_lack() -> None:
    # Restarted at deleverage with a reminder due, the feed's first event after the
    # snapshots an index price: the reminder is not held back by the mark still missing,
    # but its figures are not the account's, and it says so.
    engine = scenario_engine(risk=RiskConfig(repeat_interval_s=60))
    run(engine, [mark(BTC, 39_150, 2_000)])  # deleverage; reminder due at 62_000
    [saved] = engine.drain_checkpoints()
    restarted = MarginEngine(make_config(risk=RiskConfig(repeat_interval_s=60)))
    restarted.restore([saved])
    run(restarted, snapshots(1_000, cash={"USDT": 100},
                             positions=(Position(BTC, 10, 40_000, 10),)))
    alerts = run(restarted, [index("BTC", "USDT", 39_000, 62_000)])
    [reminder] = [a for a in alerts if a.kind == "reminder"]
    assert reminder.level == "deleverage"
    assert reminder.payload["risk_unknown"] == [f"mark:{BTC}"]
    fresh = [mark(BTC, 39_150, t) for t in range(3_000, 63_000, 1000)]
    [known] = [a for a in run(engine, fresh) if a.kind == "reminder"]
    assert "risk_unknown" not in known.payload


def test_checkpoints_follow_levels_rules_and_reminders() -> None:
    rule = StopLossRule(name="guard", metric="margin_ratio", below=1.0, action="close_all")
    engine = scenario_engine(rules=(rule,), risk=RiskConfig(repeat_interval_s=60))
    engine.drain_checkpoints()
    run(engine, [mark(BTC, 39_300, 2_000)])
    assert not engine.has_checkpoints  # nothing moved
    run(engine, [mark(BTC, 39_150, 3_000)])  # MR 0.958: deleverage, and the rule fires
    assert engine.drain_checkpoints() == [
        AccountCheckpoint("main", "deleverage", 63_000, ("guard",), 3_000,
                          (PoolCheckpoint("", "deleverage", 63_000),))]
    run(engine, [mark(BTC, 39_150, 63_000)])  # a reminder moves the next one
    assert engine.drain_checkpoints() == [
        AccountCheckpoint("main", "deleverage", 123_000, ("guard",), 63_000,
                          (PoolCheckpoint("", "deleverage", 123_000),))]


def test_a_restart_from_a_checkpoint_neither_repeats_nor_loses_a_transition() -> None:
    rule = StopLossRule(name="guard", metric="margin_ratio", below=1.0, action="close_all")
    ticks = [mark(BTC, m, 2_000 + i * 1000) for i, m in enumerate(
        (39_230, 39_150, 39_150, 39_180, 39_400, 39_150, 39_130, 39_400))]

    def snapshots(ts: int) -> list[Event]:
        """What the private feed sends on (re)subscribing: balances, then positions."""
        return [BalanceUpdate("main", (CurrencyBalance("USDT", 100, None, None),), True, None,
                              ts, ts),
                PositionSnapshot("main", (Position(BTC, 10, 40_000, 10),), ts, ts)]

    whole = MarginEngine(make_config(rules=(rule,)))
    expected = run(whole, [*snapshots(1_000), mark(BTC, 39_300, 1_000), *ticks])
    assert len({a.kind for a in expected}) >= 3  # transitions, a plan and a stop-loss
    for cut in range(1, len(ticks) + 1):
        first = MarginEngine(make_config(rules=(rule,)))
        alerts = run(first, [*snapshots(1_000), mark(BTC, 39_300, 1_000), *ticks[:cut]])
        saved = first.drain_checkpoints()
        # The restarted daemon gets the state anew from the feed (the last mark comes first
        # here, as it may on a real reconnect), and the checkpoint from the store.
        second = MarginEngine(make_config(rules=(rule,)))
        second.restore(saved)
        last = ticks[cut - 1]
        assert run(second, [last, *snapshots(last.event_ms)]) == [], f"restart after {cut}"
        alerts += run(second, ticks[cut:])
        assert [(a.kind, a.level, a.ts) for a in alerts] == [
            (a.kind, a.level, a.ts) for a in expected], f"restart after {cut} ticks"


def restart_story() -> tuple[StopLossRule, list[Event]]:
    """Snapshots, then ticks down the ladder and back, with a stop-loss rule; at 4,000
    two level changes at one event time (a mark, then a position cut by half)."""
    rule = StopLossRule(name="guard", metric="margin_ratio", below=1.0, action="close_all")
    history: list[Event] = [
        BalanceUpdate("main", (CurrencyBalance("USDT", 100, None, None),), True, None,
                      1_000, 1_000),
        PositionSnapshot("main", (Position(BTC, 10, 40_000, 10),), 1_000, 1_000),
        mark(BTC, 39_300, 1_000), mark(BTC, 39_230, 2_000), mark(BTC, 39_180, 3_000),
        mark(BTC, 39_150, 4_000), position(BTC, 5, 40_000, 4_000),
        position(BTC, 10, 40_000, 5_000), mark(BTC, 39_400, 6_000),
        mark(BTC, 39_130, 7_000), mark(BTC, 39_400, 8_000)]
    return rule, history


def test_two_level_changes_at_one_event_time_have_ids_of_their_own() -> None:
    rule, history = restart_story()
    alerts = run(MarginEngine(make_config(rules=(rule,))), history)
    at_4000 = [a for a in alerts if a.ts == 4_000 and a.kind == "level_changed"]
    assert [(a.from_level, a.level) for a in at_4000] == [("withdrawal_lock", "deleverage"),
                                                          ("deleverage", "normal")]
    assert len({a.id for a in alerts}) == len(alerts)


def test_a_restart_re_delivered_from_the_start_repeats_and_loses_nothing() -> None:
    # The daemon killed after any event, its checkpoint saved with the alerts so far, then
    # fed every event again from the start (a feed replayed from an earlier point): what
    # it emits again has the ids already stored, and the rest is exactly what a run
    # without the kill emits. Taken over at the start (as before), the restored level
    # made the first re-delivered events a false recovery, then a relapse.
    rule, history = restart_story()
    expected = run(MarginEngine(make_config(rules=(rule,))), history)
    assert {"level_changed", "deleverage_plan", "stop_loss"} <= {a.kind for a in expected}
    for cut in range(1, len(history) + 1):
        first = MarginEngine(make_config(rules=(rule,)))
        stored = run(first, history[:cut])
        saved = first.drain_checkpoints()
        second = MarginEngine(make_config(rules=(rule,)))
        second.restore(saved)
        ids = {a.id for a in stored}
        again = run(second, history)
        assert stored + [a for a in again if a.id not in ids] == expected, f"cut {cut}"
        # Saved again once the clock passed the checkpoint (not when it never did).
        assert second.drain_checkpoints() == (
            run_checkpoints(rule, history) if cut < len(history) else [])


def run_checkpoints(rule: StopLossRule, history: list[Event]) -> list[AccountCheckpoint]:
    engine = MarginEngine(make_config(rules=(rule,)))
    run(engine, history)
    return engine.drain_checkpoints()


def test_connection_alerts_shift_no_other_alerts_id() -> None:
    rule, history = restart_story()
    expected = run(MarginEngine(make_config(rules=(rule,))), history)
    # A reconnect between the two events of 4,000: its alerts are dated 4,000 too.
    links = [FeedStatus("main", "disconnected", "test", UNTIMED, 50_000),
             FeedStatus("main", "connected", "test", UNTIMED, 50_001)]
    alerts = run(MarginEngine(make_config(rules=(rule,))), [*history[:6], *links, *history[6:]])
    assert [a for a in alerts if a.kind not in ("feed_connected", "feed_disconnected")] == (
        expected)
    assert [a.ts for a in alerts if a.kind in ("feed_connected", "feed_disconnected")] == [
        4_000, 4_000]


def test_a_checkpoint_waiting_for_its_time_is_not_overwritten() -> None:
    # Killed again before the re-delivered events reach the checkpoint's time: the stored
    # checkpoint must still be the one of the first run.
    rule, history = restart_story()
    first = MarginEngine(make_config(rules=(rule,)))
    run(first, history[:6])
    saved = first.drain_checkpoints()
    second = MarginEngine(make_config(rules=(rule,)))
    second.restore(saved)
    fresh = MarginEngine(make_config(rules=(rule,)))
    run(second, history[:4])
    run(fresh, history[:4])
    assert second.drain_checkpoints() == []
    assert second.level("main") == fresh.level("main") != first.level("main")
    run(second, history[4:6])
    assert second.level("main") == first.level("main") == "deleverage"
