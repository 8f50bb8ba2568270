"""Quarantine without floods, end to end (issue 12): a recording of many megabytes of
garbage, replayed by ``riskmon replay`` and served to ``riskmon run``, writes a few
kilobytes to standard error, not an amount proportional to the input, while the counts by
reason are exact and the quarantine table stays bounded.

Asserted on data: byte counts, the rows and counts in SQLite, ``--state-out``, the
structured fields of the log lines and ``/metrics``.
"""

from __future__ import annotations

import json
import math
import random
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import orjson

from monitor.core.settings import QuarantineConfig
from tests.live_harness import (
    EXAMPLE_CONFIG,
    LIVE_ENV,
    ROOT,
    STORY,
    live_config,
    metric,
    running,
    wait_quiet,
)

DEFAULTS = QuarantineConfig()
STDERR_BOUND = 16 * 1024
"""What a run full of garbage may write to standard error: the first ``log_first`` lines
(each input cut to 256 characters), a summary or two, the start and the end."""

NOT_JSON = "line is not valid JSON …"
ARRAY = "line is a JSON array, not an object"
NO_RECV_TS = "line has no recv_ts"
BAD_MARK = "mark-price BTC-USDT-SWAP markPx … is not a number"


def garbage_recording(path: Path, megabytes: int, seed: int = 12) -> dict[str, int]:
    """Write about ``megabytes`` MB of bad lines of four kinds; their counts by class."""
    rng = random.Random(seed)
    counts = dict.fromkeys((NOT_JSON, ARRAY, NO_RECV_TS, BAD_MARK), 0)
    written = 0
    with path.open("wb") as out:
        while written < megabytes * 1_000_000:
            kind = rng.randrange(10)
            if kind < 4:
                # Random printable noise, 20 bytes to 2 kB long: never valid JSON.
                line = b"#" + bytes(rng.randrange(33, 127)
                                    for _ in range(rng.randrange(20, 2_000)))
                counts[NOT_JSON] += 1
            elif kind < 7:
                line = orjson.dumps([rng.random() for _ in range(rng.randrange(1, 40))])
                counts[ARRAY] += 1
            elif kind < 8:
                line = orjson.dumps({"frame": {"arg": {"channel": "mark-price"}}})
                counts[NO_RECV_TS] += 1
            else:
                line = orjson.dumps({"recv_ts": 1_767_225_600_000 + written, "frame": {
                    "arg": {"channel": "mark-price", "instId": "BTC-USDT-SWAP"},
                    "data": [{"instType": "SWAP", "instId": "BTC-USDT-SWAP",
                              "markPx": "x" * rng.randrange(1, 50), "ts": "1767225600000"}]}})
                counts[BAD_MARK] += 1
            out.write(line + b"\n")
            written += len(line) + 1
    return counts


def json_logs(stderr: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith(b"{")]


def stored_counts(db: Path) -> tuple[dict[str, int], int, int]:
    """``quarantine_counts`` as a dict, the rows of ``quarantine`` and how many are sampled."""
    with closing(sqlite3.connect(db)) as connection:
        counts = dict(connection.execute("SELECT reason, count FROM quarantine_counts"))
        rows, sampled = connection.execute(
            "SELECT count(*), coalesce(sum(sampled), 0) FROM quarantine").fetchone()
    return counts, rows, sampled


def test_a_replay_of_many_megabytes_of_garbage_logs_a_few_kilobytes(tmp_path: Path) -> None:
    recording = tmp_path / "garbage.jsonl"
    expected = garbage_recording(recording, 32)
    bad = sum(expected.values())
    size = recording.stat().st_size
    db, state_out = tmp_path / "garbage.db", tmp_path / "state.json"

    result = subprocess.run(
        [sys.executable, "-m", "monitor", "--log-format", "json", "replay", str(recording),
         "--config", str(EXAMPLE_CONFIG), "--alerts-out", str(tmp_path / "alerts.jsonl"),
         "--state-out", str(state_out), "--db", str(db)],
        cwd=ROOT, capture_output=True, timeout=300)

    assert result.returncode == 0, result.stderr[-2000:]
    assert size > 30_000_000 and bad > 10_000
    # Bounded: a few kilobytes for 32 MB (it was about 3.7 bytes per byte of input).
    assert len(result.stderr) < STDERR_BOUND
    logs = json_logs(result.stderr)
    lines = [r for r in logs if r["event"] == "quarantine"]
    summaries = [r for r in logs if r["event"] == "quarantine_summary"]
    assert len(lines) == DEFAULTS.log_first
    assert all(len(str(r["raw"])) <= 256 for r in lines)
    assert sum(int(str(r["suppressed"])) for r in summaries) == bad - DEFAULTS.log_first
    assert summaries and summaries[-1]["total"] == bad
    # Exact counts: the run's statistics and the database's counts by reason class.
    assert json.loads(state_out.read_text())["stats"]["quarantined"] == bad
    counts, rows, sampled = stored_counts(db)
    assert counts == expected
    kept = DEFAULTS.store_first + math.ceil(
        (bad - DEFAULTS.store_first) / DEFAULTS.store_sample_every)
    assert rows == kept and sampled == kept - DEFAULTS.store_first
    assert rows <= DEFAULTS.store_max_rows


def test_the_table_keeps_at_most_store_max_rows_across_replays(tmp_path: Path) -> None:
    recording = tmp_path / "garbage.jsonl"
    expected = garbage_recording(recording, 2, seed=3)
    config = tmp_path / "small.toml"
    config.write_text(EXAMPLE_CONFIG.read_text() + "\n[quarantine]\nlog_first = 0\n"
                      "store_first = 150\nstore_sample_every = 0\nstore_max_rows = 200\n")
    db = tmp_path / "small.db"
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "monitor", "--log-format", "json", "replay", str(recording),
             "--config", str(config), "--alerts-out", str(tmp_path / "alerts.jsonl"),
             "--db", str(db)], cwd=ROOT, capture_output=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        assert not [r for r in json_logs(result.stderr) if r["event"] == "quarantine"]
    counts, rows, sampled = stored_counts(db)
    assert counts == {reason: 2 * count for reason, count in expected.items()}
    assert (rows, sampled) == (200, 0)  # 150 of each run, the newest 200 kept


BAD_INDEX = "index-tickers BTC-USDT idxPx … is not a number"


def test_the_daemon_fed_thousands_of_bad_frames_logs_a_few_kilobytes(tmp_path: Path) -> None:
    # The story's bootstrap and first mark, then bad index prices on the public connection
    # (not mark prices: those may be conflated under pressure, and never parsed), then the
    # story's next marks.
    story = STORY.read_bytes().splitlines()
    first_mark = next(n for n, line in enumerate(story) if b'"mark-price"' in line)
    recv_ts = json.loads(story[first_mark])["recv_ts"]
    bad = 20_000
    frames = [orjson.dumps({"recv_ts": recv_ts + 1, "frame": {
        "arg": {"channel": "index-tickers", "instId": "BTC-USDT"},
        "data": [{"instId": "BTC-USDT", "idxPx": f"n/a {number}", "ts": str(recv_ts)}]}})
        for number in range(bad)]
    recording = tmp_path / "bad-frames.jsonl"
    recording.write_bytes(b"\n".join([*story[:first_mark + 1], *frames,
                                      *story[first_mark + 1:first_mark + 20]]) + b"\n")

    with running(["replay-server", str(recording), "--port", "0", "--speed", "0"]) as server:
        config = live_config(tmp_path, server.wait_status("listening")["port"])
        with running(["run", "--config", str(config)], env=LIVE_ENV) as daemon:
            http_port = daemon.wait_status("listening")["port"]
            server.wait_status("finished", timeout=120)
            wait_quiet(http_port)
            quarantined = metric(http_port, "riskmon_quarantined_total")
            assert daemon.terminate() == 0
        server.terminate()

    assert quarantined == bad
    stderr = "\n".join(daemon.stderr_lines).encode()
    assert len(stderr) < 2 * STDERR_BOUND  # the daemon's own lines, and the alerts'
    logs = daemon.logs()
    assert len([r for r in logs if r["event"] == "quarantine"]) == DEFAULTS.log_first
    summaries = [r for r in logs if r["event"] == "quarantine_summary"]
    assert summaries[-1]["total"] == bad
    counts, rows, _ = stored_counts(tmp_path / "daemon.db")
    assert counts == {BAD_INDEX: bad}
    assert rows == DEFAULTS.store_first + math.ceil(
        (bad - DEFAULTS.store_first) / DEFAULTS.store_sample_every)
