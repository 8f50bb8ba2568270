"""Property: whatever the event sequence, the incremental sums equal a recomputation.

The recomputation (``MarginEngine.recompute``) ignores every running sum and rebuilds the
account from its positions, orders and balances. Tolerance is relative 1e-9 of the size of
the terms summed (a sum of large opposite terms can cancel to nearly nothing, where a purely
relative bound on the result would be meaningless).
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.config import StopLossRule
from monitor.engine import MarginEngine
from monitor.events import (
    BalanceUpdate,
    CurrencyBalance,
    Event,
    FeedStatus,
    IndexPrice,
    MarkPrice,
    Order,
    OrdersSnapshot,
    OrderUpdate,
    Position,
    PositionSnapshot,
    PositionUpdate,
)
from tests.builders import make_config

INSTRUMENTS = ["BTC-USDT-SWAP", "ETH-USDT-SWAP", "BTC-USD-SWAP"]
ACCOUNTS = ["main", "other"]
PRICE = {"BTC-USDT-SWAP": 40_000.0, "ETH-USDT-SWAP": 2_000.0, "BTC-USD-SWAP": 40_000.0}

factors = st.floats(min_value=0.5, max_value=1.5)
sizes = st.sampled_from([0.0, 1.0, 2.0, 5.0, 10.0, 250.0, 6000.0])


@st.composite
def an_order(draw: st.DrawFn) -> Order:
    inst = draw(st.sampled_from(INSTRUMENTS))
    size = draw(st.sampled_from([1.0, 3.0, 10.0, 7000.0]))
    market = draw(st.booleans())
    return Order(
        order_id=f"o{draw(st.integers(0, 6))}",
        inst_id=inst,
        side=draw(st.sampled_from(["buy", "sell"])),
        price=None if market else PRICE[inst] * draw(factors),
        size=size,
        filled=draw(st.sampled_from([0.0, 0.5, 1.0])) * size,
        reduce_only=draw(st.booleans()),
        leverage=draw(st.sampled_from([None, 1.0, 5.0, 20.0])),
    )


@st.composite
def a_position(draw: st.DrawFn) -> Position:
    inst = draw(st.sampled_from(INSTRUMENTS))
    contracts = draw(sizes) * draw(st.sampled_from([1, -1]))
    return Position(inst, contracts, PRICE[inst] * draw(factors),
                    draw(st.sampled_from([None, 3.0, 10.0])))


@st.composite
def an_event(draw: st.DrawFn, ts: int) -> Event:
    account = draw(st.sampled_from(ACCOUNTS))
    kind = draw(st.integers(0, 8))
    if kind <= 2:
        inst = draw(st.sampled_from(INSTRUMENTS))
        return MarkPrice(inst, PRICE[inst] * draw(factors), ts, ts)
    if kind == 3:
        base, quote = draw(st.sampled_from([("BTC", "USDT"), ("USDT", "USD"), ("ETH", "USD")]))
        value = {"BTC": 40_000.0, "USDT": 1.0, "ETH": 2_000.0}[base] * draw(factors)
        return IndexPrice(base, quote, value, ts, ts)
    if kind == 4:
        return OrderUpdate(account, draw(an_order()), draw(st.booleans()), ts, ts)
    if kind == 5:
        orders = tuple(draw(st.lists(an_order(), max_size=4, unique_by=lambda o: o.order_id)))
        return OrdersSnapshot(account, orders, ts, ts)
    if kind == 6:
        positions = tuple(draw(st.lists(a_position(), max_size=3, unique_by=lambda p: p.inst_id)))
        if draw(st.booleans()):
            return PositionSnapshot(account, positions, ts, ts)
        return PositionUpdate(account, positions, ts, ts)
    if kind == 7:
        balances = tuple(
            CurrencyBalance(c, draw(st.floats(-5_000, 50_000)) * (0.001 if c == "BTC" else 1),
                            None, draw(st.sampled_from([None, 0.0, 1.5])))
            for c in draw(st.lists(st.sampled_from(["USDT", "BTC", "ETH", "PEPE"]),
                                   min_size=1, max_size=3, unique=True))
        )
        return BalanceUpdate(account, balances, draw(st.booleans()), None, ts, ts)
    return FeedStatus(draw(st.sampled_from([None, account])),
                      draw(st.sampled_from(["connected", "disconnected"])), "test", ts, ts)


@st.composite
def event_sequences(draw: st.DrawFn) -> list[Event]:
    count = draw(st.integers(1, 80))
    events = []
    ts = 1_000
    for _ in range(count):
        ts += draw(st.sampled_from([0, 1, 999, 4_000, 20_000]))
        events.append(draw(an_event(ts)))
    return events


def scale(engine: MarginEngine, name: str) -> float:
    """The magnitude of the terms that make up the account's figures (USD)."""
    account = engine.accounts[name]
    total = 1.0
    for currency, state in account.currencies.items():
        price = engine.usd_prices.get(currency, 0.0)
        total += (abs(state.cash) + abs(state.interest)) * price
    for exposure in account.exposures.values():
        currency = exposure.instrument.settle_currency if exposure.instrument else "USD"
        price = engine.usd_prices.get(currency, 0.0)
        total += (abs(exposure.upl) + exposure.maint + exposure.init) * price
    return total


def assert_matches(engine: MarginEngine) -> None:
    for name in engine.account_names():
        incremental = engine.figures(name)
        scratch = engine.recompute(name)
        tolerance = 1e-9 * scale(engine, name)
        for field in ("equity_usd", "maint_margin_usd", "init_margin_usd"):
            ours, theirs = getattr(incremental, field), getattr(scratch, field)
            assert math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=tolerance), (
                name, field, ours, theirs)


@given(event_sequences())
def test_incremental_equals_recomputation(events: list[Event]) -> None:
    rules = (StopLossRule(name="r", metric="margin_ratio", below=2.0, action="close_all"),)
    engine = MarginEngine(make_config(rules=rules, interest={"USDT": 0.001, "BTC": 0.0001}))
    for event in events:
        engine.apply(event)
        assert_matches(engine)


@settings(max_examples=100)
@given(event_sequences())
def test_replay_is_deterministic(events: list[Event]) -> None:
    def alerts() -> list[tuple[str, str, str]]:
        engine = MarginEngine(make_config(interest={"USDT": 0.001}))
        return [(a.id, a.kind, a.level) for e in events for a in engine.apply(e)]

    first = alerts()
    assert first == alerts()
    assert len({alert_id for alert_id, _, _ in first}) == len(first)
