"""The long run of the kill -9 crash test (issue 15); the short one is
tests/test_crash_live.py.

Run from the repository root::

    .venv/bin/python -m tests.long.crash_cycles [KILLS] [--waves N] [--seed N] [--speed X]

It kills the real daemon KILLS times at random points of a story of N waves
(tests/crash_story.py) served by the real replay server, restarting both each time
(tests/crash_harness.py), then runs the story to its end, and compares the database with
``riskmon replay``: it prints the alerts expected, stored, missing and extra (connection
alerts aside), and exits 1 when they differ or a stored alert was deleted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.crash_harness import run_cycles
from tests.crash_story import crash_config, write_crash_story
from tests.live_harness import FEED_KINDS, engine_alerts, replay_outputs, stored_alerts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kills", type=int, nargs="?", default=25)
    parser.add_argument("--waves", type=int, default=25)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--speed", type=float, default=100.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="riskmon-crash-") as directory:
        tmp = Path(directory)
        story = write_crash_story(tmp / "crash-story.jsonl", args.waves)
        base = crash_config(tmp)
        expected, _ = replay_outputs(tmp, story, base)
        started = time.monotonic()
        report = run_cycles(tmp, story, base, kills=args.kills, seed=args.seed,
                            speed=args.speed, expected_alerts=len(expected),
                            cycle_timeout_s=300.0)
        elapsed = time.monotonic() - started
        stored = stored_alerts(tmp / "daemon.db")
    ours = engine_alerts(stored)
    theirs = engine_alerts(expected)
    ours_ids = {a[0] for a in ours}
    theirs_ids = {a[0] for a in theirs}
    kinds = {a["id"]: a["kind"] for a in [*stored, *expected]}
    seqs: dict[str, int] = {}
    deleted = 0
    for rows in report.kills:
        for row_id, seq in rows.items():
            if seqs.setdefault(row_id, seq) != seq or row_id not in ours_ids:
                deleted += 1
    print(f"{args.kills} kills at random points, seed {args.seed}, {args.waves} waves, "
          f"{elapsed:.1f} s; final exit code {report.exit_code}")
    print(f"alerts: expected {len(theirs)}, stored {len(ours)} (+ "
          f"{sum(a['kind'] in FEED_KINDS for a in stored)} connection alerts)")
    print(f"missing: {dict(Counter(kinds[i] for i in theirs_ids - ours_ids))}")
    print(f"extra: {dict(Counter(kinds[i] for i in ours_ids - theirs_ids))}")
    print(f"stored alerts deleted or inserted again: {deleted}")
    same = ours == theirs and deleted == 0 and report.exit_code == 0
    print("equal to the offline replay" if same else "DIFFERENT from the offline replay")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
