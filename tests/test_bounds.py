"""Plausibility bounds (issue 15, ``[bounds]``): what the engine refuses, ignores and accepts.

Synchronous, event in, state and alerts out (STYLE). The decoder's own limits are in
tests/test_okx_decode.py; the fuzzer in tests/test_fuzz_input.py.
"""

from __future__ import annotations

import pytest

from adapters.okx.decode import OkxDecoder
from monitor.app.config import parse_config
from monitor.core.engine import MarginEngine
from monitor.core.errors import BadInput, ConfigError
from monitor.core.events import ClockTick, MarkPrice
from monitor.core.settings import BoundsConfig
from tests.builders import (
    BTC_SWAP,
    balance,
    index,
    make_config,
    mark,
    order,
    position,
    run,
    snapshots,
)

BTC = BTC_SWAP.inst_id
T = 1_767_225_600_000


def held_engine(bounds: BoundsConfig | None = None) -> MarginEngine:
    """One account long 10 BTC-USDT-SWAP, marked at 40,000 at T."""
    engine = MarginEngine(make_config(bounds=bounds))
    run(engine, [*snapshots(T), balance("USDT", 1000, T), position(BTC, 10, 40_000, T),
                 mark(BTC, 40_000, T)])
    return engine


def refused(engine: MarginEngine, event: MarkPrice) -> str:
    before = engine.state()
    with pytest.raises(BadInput) as caught:
        engine.apply(event)
    assert engine.state() == before
    return caught.value.reason


def test_a_mark_out_of_the_band_is_refused_and_changes_nothing() -> None:
    engine = held_engine()
    assert "more than 2 times away from the reference 40000" in refused(
        engine, mark(BTC, 1_000, T + 1_000))
    assert "1 of 3" in refused(engine, mark(BTC, 90_000, T + 2_000))
    assert engine.marks[BTC] == 40_000
    run(engine, [mark(BTC, 79_000, T + 3_000)])  # just inside the band: taken
    assert engine.marks[BTC] == 79_000


def test_the_market_really_moving_is_accepted_after_confirm_after_prices() -> None:
    engine = held_engine()
    refused(engine, mark(BTC, 10_000, T + 1_000))
    refused(engine, mark(BTC, 10_100, T + 2_000))
    run(engine, [mark(BTC, 9_900, T + 3_000)])  # the third in a row, each near the last
    assert engine.marks[BTC] == 9_900
    # ... and the new price is the reference from now on.
    run(engine, [mark(BTC, 9_800, T + 4_000)])
    assert engine.marks[BTC] == 9_800


def test_an_accepted_price_between_out_of_band_ones_starts_the_count_again() -> None:
    engine = held_engine()
    refused(engine, mark(BTC, 10_000, T + 1_000))
    refused(engine, mark(BTC, 10_000, T + 2_000))
    run(engine, [mark(BTC, 40_100, T + 3_000)])
    assert "1 of 3" in refused(engine, mark(BTC, 10_000, T + 4_000))


def test_out_of_band_prices_that_disagree_do_not_confirm_each_other() -> None:
    engine = held_engine()
    refused(engine, mark(BTC, 1_000, T + 1_000))
    refused(engine, mark(BTC, 1_000_000, T + 2_000))
    assert "2 of 3" not in refused(engine, mark(BTC, 1_000, T + 3_000))


def test_the_first_mark_of_an_instrument_is_held_to_its_index() -> None:
    engine = MarginEngine(make_config())
    run(engine, [index("BTC", "USDT", 40_000, T)])
    assert "reference 40000" in refused(engine, mark(BTC, 400, T + 1))
    run(engine, [mark(BTC, 40_050, T + 2)])
    assert engine.marks[BTC] == 40_050


def test_a_mark_older_than_the_last_is_ignored_and_counted() -> None:
    engine = held_engine()
    run(engine, [mark(BTC, 40_100, T + 2_000)])
    assert run(engine, [mark(BTC, 39_000, T + 1_000)]) == []
    assert engine.marks[BTC] == 40_100 and engine.out_of_order["mark"] == 1


def test_older_orders_and_account_pushes_are_ignored_and_counted() -> None:
    engine = held_engine()
    run(engine, [order("1", BTC, "buy", 1, 39_000, T + 2_000, live=False)])
    run(engine, [order("1", BTC, "buy", 1, 39_000, T + 1_000)])  # "live" after "filled"
    assert engine.state()["main"]["init_margin_usd"] == pytest.approx(400)
    run(engine, [balance("USDT", 5, T - 1), position(BTC, 1, 40_000, T - 1)])
    assert engine.out_of_order == {"mark": 0, "index": 0, "order": 1, "positions": 1,
                                   "balance": 1}
    assert engine.state()["main"]["positions"][0]["contracts"] == 10


def test_an_event_far_ahead_of_its_receive_time_is_refused() -> None:
    engine = held_engine()
    reason = refused(engine, MarkPrice(BTC, 40_000, T + 61_000, T + 500))
    assert "after its receive time" in reason
    # Within the bound (60 s): taken.
    run(engine, [MarkPrice(BTC, 40_000, T + 59_000, T + 500)])
    assert engine.now_ms == T + 59_000


def test_no_single_event_moves_the_clock_further_than_the_bound() -> None:
    engine = held_engine()
    # Receive time and event time a year ahead: a line of a recording, say.
    year = 365 * 86_400_000
    assert "would move the clock" in refused(engine, mark(BTC, 40_000, T + year))
    assert engine.now_ms == T
    # Nothing stops: no staleness, no reminders from a clock a year ahead.
    run(engine, [mark(BTC, 40_010, T + 1_000)])
    assert engine.now_ms == T + 1_000 and engine.state()["main"]["risk_known"]


def test_a_gap_in_a_recording_is_crossed_after_confirm_after_events() -> None:
    engine = held_engine()
    hour = 3_600_000
    refused(engine, mark(BTC, 40_000, T + hour))
    refused(engine, mark(BTC, 40_000, T + hour + 1_000))
    run(engine, [mark(BTC, 40_000, T + hour + 2_000)])
    assert engine.now_ms == T + hour + 2_000


def test_the_daemons_clock_ticks_are_never_refused() -> None:
    engine = held_engine()
    run(engine, [ClockTick(T + 3_600_000, T + 1)])
    assert engine.now_ms == T + 3_600_000


def test_confirm_after_1_switches_the_band_and_the_jump_off() -> None:
    engine = held_engine(BoundsConfig(confirm_after=1))
    run(engine, [mark(BTC, 1_000, T + 3_600_000)])
    assert engine.marks[BTC] == 1_000 and engine.now_ms == T + 3_600_000


def test_a_line_of_several_events_is_applied_whole_or_not_at_all() -> None:
    # Two rows in one mark-price push: the second out of the band of the first.
    from monitor.runtime.pipeline import LineProcessor

    engine = held_engine()
    processor = LineProcessor(engine, OkxDecoder().decode_line, "test")
    rows = ",".join(f'{{"instId":"{BTC}","markPx":"{price}","ts":"{T + n}"}}'
                    for n, price in ((1, "40100"), (2, "1")))
    line = (f'{{"recv_ts":{T + 5},"frame":{{"arg":{{"channel":"mark-price"}},'
            f'"data":[{rows}]}}}}').encode()
    before = engine.state()
    processor.feed_chunk([line], 1)
    assert processor.stats.quarantined == 1 and engine.state() == before


@pytest.mark.parametrize(("table", "key"), [
    ({"price_band": 1.0}, "bounds.price_band"),
    ({"price_band": "2"}, "bounds.price_band"),
    ({"confirm_after": 0}, "bounds.confirm_after"),
    ({"max_ahead_s": 0}, "bounds.max_ahead_s"),
    ({"band": 2}, "bounds"),
])
def test_bounds_configuration_is_validated(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"bounds": table})
    assert caught.value.key.startswith(key)


def test_bounds_defaults() -> None:
    assert parse_config({}).bounds == BoundsConfig(price_band=2.0, confirm_after=3,
                                                   max_ahead_s=60.0)
