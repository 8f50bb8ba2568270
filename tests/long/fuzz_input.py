"""The long run of the bad-input fuzzer (issue 15); the short one is tests/test_fuzz_input.py.

Run from the repository root::

    .venv/bin/python -m tests.long.fuzz_input [TRIALS] [--seed N]

Each trial mutates one real payload (tests/fuzzing.py): three in four a line of
examples/story.jsonl, replayed in place of the original and checked against the run without
it; one in four an OKX payload of tests/fixtures/okx, decoded alone. It prints the trials run,
how many were accepted, the quarantined ones by reason (the values quoted in a reason left
out) and every failure; it exits 1 when there was one.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter

from monitor.core.quarantine import reason_class
from tests.fuzzing import (
    Baselines,
    Failure,
    check_decoder,
    check_line,
    fixture_seeds,
    story_config,
    story_lines,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trials", type=int, nargs="?", default=8000)
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    lines = story_lines()
    config = story_config()
    baselines = Baselines(lines, config)
    seeds = fixture_seeds()
    accepted = 0
    reasons: Counter[str] = Counter()
    failures: list[str] = []
    started = time.monotonic()
    for trial in range(1, args.trials + 1):
        try:
            if rng.random() < 0.25:
                verdict = check_decoder(rng.choice(seeds), rng)
            else:
                index = rng.randrange(len(lines))
                verdict = check_line(lines, config, baselines.without(index), index,
                                     rng).verdict
        except Failure as error:
            failures.append(f"trial {trial}: {error}")
            continue
        if verdict == "accepted":
            accepted += 1
        else:
            reasons[reason_class(verdict)] += 1
        if trial % 1000 == 0:
            print(f"... {trial} trials, {time.monotonic() - started:.0f} s", file=sys.stderr)
    quarantined = sum(reasons.values())
    print(f"trials run: {args.trials} (seed {args.seed})")
    print(f"accepted: {accepted}")
    print(f"quarantined: {quarantined}")
    for reason, count in reasons.most_common():
        print(f"  {count:6d}  {reason}")
    print(f"failures: {len(failures)}")
    for failure in failures:
        print(f"  {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
