"""Crash safety, proven (issue 15): the real daemon killed with SIGKILL at random points
while it produces alerts, restarted on the same database each time, against the real
replay server on loopback (tests/crash_harness.py). Afterwards the database holds exactly
what ``riskmon replay`` of the same recording emits, ids included, but the daemon's own
connection alerts; no stored alert was ever deleted or inserted twice; every level chain
is unbroken; and the stored level state is the replay's final one.

Also SIGTERM under load: the daemon stops with exit 0 while frames pour in, and what it
stored is a prefix of the replay's alerts with the level state that goes with it.

The kill points are random but derandomized (``RISKMON_CRASH_SEED`` picks others); the
long version is tests/long/crash_cycles.py.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.crash_harness import run_cycles, stored_count
from tests.crash_story import crash_config, write_crash_story
from tests.live_harness import (
    FEED_KINDS,
    LIVE_ENV,
    Process,
    engine_alerts,
    live_config,
    replay_outputs,
    running,
    stored_alerts,
)

KILLS = 10
WAVES = 10
SPEED = 100.0
SEED = int(os.environ.get("RISKMON_CRASH_SEED", "15"))


def check_chains(alerts: Sequence[dict[str, Any]]) -> None:
    """Each pool's level changes follow on from one another, from normal."""
    last: dict[tuple[str, Any, Any], str] = {}
    for alert in alerts:
        if alert["kind"] != "level_changed":
            continue
        payload = alert["payload"]
        pool = (alert["account"], payload.get("margin_mode"), payload.get("currency")
                or (alert["inst_id"] if payload.get("margin_mode") == "isolated" else None))
        assert alert["from_level"] == last.get(pool, "normal"), alert
        last[pool] = alert["level"]


def level_state(db: Path) -> dict[str, tuple[str, str]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        return {account: (level, disarmed) for account, level, disarmed in connection.execute(
            "SELECT account, level, disarmed_rules FROM level_state")}


def test_kill_9_at_random_points_loses_and_invents_nothing(tmp_path: Path) -> None:
    story = write_crash_story(tmp_path / "crash-story.jsonl", WAVES)
    base = crash_config(tmp_path)
    expected, state = replay_outputs(tmp_path, story, base)
    assert len(expected) >= 100
    started = time.monotonic()
    report = run_cycles(tmp_path, story, base, kills=KILLS, seed=SEED, speed=SPEED,
                        expected_alerts=len(expected))
    elapsed = time.monotonic() - started
    db = tmp_path / "daemon.db"
    stored = stored_alerts(db)

    assert report.exit_code == 0
    assert len(report.kills) == KILLS
    # Every kill came while the story was producing alerts, each after the last.
    counts = [len(rows) for rows in report.kills]
    assert counts == sorted(counts) and counts[0] > 0 and counts[-1] < len(expected), counts
    # A stored alert stays stored: never deleted (pruned) and inserted again, never twice.
    final = {a["id"] for a in stored}
    seqs = {row_id: seq for rows in report.kills for row_id, seq in rows.items()}
    for rows in report.kills:
        assert rows.items() <= seqs.items()
        assert set(rows) <= final
    assert len(final) == len(stored)

    # The database equals the offline replay, but the connection alerts (documented).
    assert engine_alerts(stored) == engine_alerts(expected), f"seed {SEED}"
    check_chains([a for a in stored if a["kind"] not in FEED_KINDS])
    # Each daemon start announced its connections: the excepted alerts are only those.
    connected = [a for a in stored if a["kind"] == "feed_connected"]
    assert len(connected) == 2 * (KILLS + 1)
    assert not [a for a in stored if a["kind"] == "feed_disconnected"]
    # The level state is the replay's final one; the rule re-armed as the replay's did.
    assert level_state(db) == {"main": (state["accounts"]["main"]["level"], "[]")}
    print(f"{KILLS} kills, seed {SEED}: {elapsed:.1f} s; alerts at each kill {counts}")


def test_sigterm_under_load_stores_a_consistent_prefix(tmp_path: Path) -> None:
    story = write_crash_story(tmp_path / "crash-story.jsonl", 4 * WAVES)
    base = crash_config(tmp_path)
    expected, _ = replay_outputs(tmp_path, story, base)
    db = tmp_path / "daemon.db"
    # 400 times real time: about 1,800 frames a second, as fast as the daemon takes
    # them on two shared cores without conflating marks (which it would do under a flood,
    # by design, and the prefix would then differ from the replay's). Stopped mid-flow.
    with running(["replay-server", str(story), "--port", "0", "--speed", "400"]) as server:
        port = server.wait_status("listening")["port"]
        daemon = Process(["run", "--config", str(live_config(tmp_path, port, base=base))],
                         LIVE_ENV)
        try:
            daemon.wait_status("listening")
            deadline = time.monotonic() + 30
            while stored_count(db) < len(expected) // 3:
                assert time.monotonic() < deadline, daemon.stderr_tail()
                time.sleep(0.005)
            assert daemon.terminate() == 0
        finally:
            if daemon.popen.poll() is None:
                daemon.popen.kill()
                daemon.popen.wait()
            daemon.close()
    stored = engine_alerts(stored_alerts(db))
    ours = engine_alerts(expected)
    assert len(ours) // 3 <= len(stored) < len(ours)
    assert stored == ours[:len(stored)]
    # The checkpoint went with the last alert stored: a restart would go on from there.
    last_level = next(a for a in reversed(stored_alerts(db)) if a["kind"] == "level_changed")
    assert level_state(db)["main"][0] == last_level["level"]
