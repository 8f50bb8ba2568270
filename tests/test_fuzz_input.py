"""Bad input never moves state (issue 15): the fuzzer's short run, and the reproducers.

The fuzzer (tests/fuzzing.py) mutates real frames: the lines of examples/story.jsonl and
the OKX payloads of tests/fixtures/okx. Here it runs a modest number of examples,
derandomized so that CI cannot flake; tests/long/fuzz_input.py runs it long.

The reproducers in tests/fixtures/repro/ are copies of ../shared/repro/*.jsonl, filed with
issue 15: the story with line 116 (a BTC-USDT-SWAP mark at 1767225650000) changed.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzzing import (
    Baselines,
    Seed,
    check_decoder,
    check_line,
    fixture_seeds,
    replay,
    story_config,
    story_lines,
)

REPRO = Path(__file__).parent / "fixtures" / "repro"
LINES = story_lines()
CONFIG = story_config()
BASELINES = Baselines(LINES, CONFIG)
SEEDS = fixture_seeds()
STORY_RUN = replay(LINES, CONFIG)

FUZZ = settings(max_examples=120, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(index=st.integers(0, len(LINES) - 1), rng=st.randoms(use_true_random=False))
def test_a_mutated_story_line_is_quarantined_without_trace_or_plausible(
        index: int, rng: random.Random) -> None:
    check_line(LINES, CONFIG, BASELINES.without(index), index, rng)


@FUZZ
@given(seed=st.sampled_from(SEEDS), rng=st.randoms(use_true_random=False))
def test_nothing_but_bad_input_escapes_the_decoder(seed: Seed, rng: random.Random) -> None:
    check_decoder(seed, rng)


# --- the reproducers of issue 15 ------------------------------------------------------------

# Line 116 of each (1-based): what it holds instead of the story's "59900.00" at
# 1767225650000, and why the decoder or the engine quarantines it.
REPRODUCERS = {
    "ts2p63.jsonl": "ts '9223372036854775808' is not a millisecond timestamp",  # 2^63
    "hugets.jsonl": "ts '99999999999999999999' is not a millisecond timestamp",
    "e308.jsonl": "markPx '1e308' is not a plain decimal",
    "tiny.jsonl": "markPx '1e-320' is not a plain decimal",
    "futurets.jsonl": "s after its receive time",  # a year ahead
}


@pytest.mark.parametrize("name", sorted(REPRODUCERS))
def test_a_reproducer_of_issue_15_leaves_the_story_as_it_was(name: str) -> None:
    lines = (REPRO / name).read_bytes().splitlines(keepends=True)
    run = replay(lines, CONFIG, watched=115)
    assert len(run.quarantined) == 1 and REPRODUCERS[name] in run.quarantined[0]
    # The run equals the story's without its line 116: the same state, the same alerts.
    assert run.state == BASELINES.without(115).state
    assert run.alerts == BASELINES.without(115).alerts
    # And the story's alerts themselves: line 116 is one mark among hundreds.
    assert run.alerts == STORY_RUN.alerts


@pytest.mark.parametrize("price", [" 1 ", "1_000", "1e3", "+60000", "60000.0\n", "inf"])
def test_prices_spelt_as_okx_never_writes_them_are_quarantined(price: str) -> None:
    # tiny.jsonl's other spellings (issue 15: " 1 " and "1_000" were accepted, a false
    # liquidation), on the same line.
    lines = (REPRO / "tiny.jsonl").read_bytes().splitlines(keepends=True)
    lines[115] = lines[115].replace(b'"1e-320"', f'"{price}"'.encode().replace(b"\n", b"\\n"))
    run = replay(lines, CONFIG, watched=115)
    assert run.quarantined, price
    assert run.alerts == STORY_RUN.alerts
