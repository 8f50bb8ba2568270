"""Quarantine without floods (monitor.core.quarantine): reason classes, what is logged and
stored of a run's bad input, exact counts, summaries on a fake clock, and the line
processor's records."""

from __future__ import annotations

import pytest

from adapters.okx.decode import OkxDecoder
from monitor.core.batch import Batch
from monitor.core.engine import MarginEngine
from monitor.core.quarantine import MAX_REASON_CLASSES, OTHER_CLASS, QuarantineBook, reason_class
from monitor.core.records import QuarantineCounts, QuarantineSummary
from monitor.core.settings import QuarantineConfig
from monitor.runtime.pipeline import LineProcessor
from tests.builders import make_config


@pytest.mark.parametrize(("reason", "expected"), [
    ("line is not valid JSON (unexpected character: line 1 column 7 (char 6))",
     "line is not valid JSON …"),
    ("mark-price BTC-USDT-SWAP markPx 'abc' is not a number",
     "mark-price BTC-USDT-SWAP markPx … is not a number"),
    ("line recv_ts -5 is not a millisecond timestamp",
     "line recv_ts … is not a millisecond timestamp"),
    # A value the decoder cut short (repr to 60 characters, then "...").
    ("mark-price data {'arg': {'channel': 'mark-price', 'instId': 'BTC-USDT-S... is not an"
     " array", "mark-price data … is not an array"),
    ("/api/v5/account/balance returned code '50011': 'Too Many Requests'",
     "/api/v5/account/balance returned code …: …"),
    ("orders row 3 side 'hold' is not buy or sell", "orders row … side … is not buy or sell"),
    ("mark-price ETH-USD-251226 markPx [1] is not a number",
     "mark-price ETH-USD-251226 markPx … is not a number"),
    ("frame is not JSON", "frame is not JSON"),
    ("line is a JSON array, not an object", "line is a JSON array, not an object"),
])
def test_a_reason_class_drops_the_values_a_reason_names(reason: str, expected: str) -> None:
    assert reason_class(reason) == expected


def test_reasons_differing_only_in_their_values_share_a_class() -> None:
    reasons = [f"mark-price BTC-USDT-SWAP markPx {value!r} is not a number"
               for value in ("abc", "", "1e400x", "NaN", "[1]", "it's")]
    assert len({reason_class(reason) for reason in reasons}) == 1


def test_the_first_are_logged_and_stored_then_a_sample_is_stored() -> None:
    book = QuarantineBook(QuarantineConfig(log_first=2, store_first=3, store_sample_every=4),
                          0.0)
    decisions = [book.admit("frame is not JSON") for _ in range(12)]
    assert decisions == [
        (True, True, False), (True, True, False), (False, True, False),  # the first 3 kept
        (False, True, True), (False, False, False), (False, False, False),
        (False, False, False), (False, True, True), (False, False, False),
        (False, False, False), (False, False, False), (False, True, True),  # 1 in 4 then
    ]
    assert book.total == 12 and book.by_class == {"frame is not JSON": 12}


def test_sampling_off_stores_only_the_first() -> None:
    book = QuarantineBook(QuarantineConfig(log_first=0, store_first=1, store_sample_every=0),
                          0.0)
    assert [book.admit("x")[1] for _ in range(5)] == [True, False, False, False, False]


def test_counts_are_handed_out_once_and_exactly() -> None:
    book = QuarantineBook(QuarantineConfig(), 0.0)
    for value in range(5):
        book.admit(f"line recv_ts {value} is not a millisecond timestamp")
    book.admit("frame is not JSON")
    assert book.take_counts() == QuarantineCounts((
        ("frame is not JSON", 1), ("line recv_ts … is not a millisecond timestamp", 5)))
    assert book.take_counts() is None and not book.pending
    book.admit("frame is not JSON")
    assert book.take_counts() == QuarantineCounts((("frame is not JSON", 1),))


def test_classes_beyond_the_bound_are_counted_as_other() -> None:
    book = QuarantineBook(QuarantineConfig(), 0.0)
    for number in range(MAX_REASON_CLASSES + 50):
        book.admit(f"field_{number} is missing")
    assert len(book.by_class) == MAX_REASON_CLASSES + 1
    assert book.by_class[OTHER_CLASS] == 50
    assert sum(book.by_class.values()) == book.total == MAX_REASON_CLASSES + 50


def test_a_summary_comes_at_most_every_interval_and_only_for_unlogged_input() -> None:
    book = QuarantineBook(QuarantineConfig(log_first=1, log_summary_s=60), 0.0)
    book.admit("frame is not JSON")  # logged on its own: nothing to summarise
    assert book.summary(100.0) is None and not book.summary_pending
    book.admit("frame is not JSON")
    book.admit("line has no recv_ts")
    assert book.summary(100.0) == QuarantineSummary(
        (("frame is not JSON", 2), ("line has no recv_ts", 1)), 2, 3, 100.0)
    book.admit("frame is not JSON")
    assert book.summary(159.0) is None  # within the interval of the last one
    assert book.summary(160.0) == QuarantineSummary((("frame is not JSON", 1),), 1, 4, 60.0)
    book.admit("frame is not JSON")
    assert book.summary(161.0, final=True) == QuarantineSummary(
        (("frame is not JSON", 1),), 1, 5, 1.0)
    assert book.summary(500.0, final=True) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_processor_counts_every_bad_line_and_records_only_what_is_kept() -> None:
    clock = FakeClock()
    processor = LineProcessor(
        MarginEngine(make_config()), OkxDecoder().decode_line, "garbage.jsonl",
        quarantine=QuarantineConfig(log_first=2, log_summary_s=10, store_first=3,
                                    store_sample_every=100), clock=clock)
    lines = [b"not json %d" % number for number in range(250)] + [b"[1]"] * 50
    processor.feed_chunk(lines[:150], 1)
    clock.now = 5.0
    first = processor.take()
    processor.feed_chunk(lines[150:], 151)
    clock.now = 11.0
    second = processor.take()
    processor.finish()
    last = processor.take()

    records = [*first.quarantine, *second.quarantine]
    assert [(r.source, r.log, r.store, r.sampled) for r in records] == [
        ("garbage.jsonl:1", True, True, False), ("garbage.jsonl:2", True, True, False),
        ("garbage.jsonl:3", False, True, False), ("garbage.jsonl:4", False, True, True),
        ("garbage.jsonl:104", False, True, True), ("garbage.jsonl:204", False, True, True)]
    counts: dict[str, int] = {}
    for record in (*first.quarantine_counts, *second.quarantine_counts,
                   *last.quarantine_counts):
        for name, count in record.counts:
            counts[name] = counts.get(name, 0) + count
    assert counts == {"line is not valid JSON …": 250, "line is a JSON array, not an object": 50}
    assert processor.stats.quarantined == 300
    # No summary within the first 10 s; one at 11 s covering everything so far; none left.
    assert not first.quarantine_summaries
    [summary] = second.quarantine_summaries
    assert (summary.total, summary.suppressed, sum(n for _, n in summary.counts)) == (
        300, 298, 300)
    assert last == Batch()


def test_a_long_bad_line_is_cut_before_it_is_decoded() -> None:
    processor = LineProcessor(MarginEngine(make_config()), OkxDecoder().decode_line, "f")
    processor.feed_chunk([b"\xff" * 10_000_000], 1)
    [record] = processor.take().quarantine
    assert len(record.raw) == 4096
