"""Kill -9 cycles of the real daemon against the real replay server, for the crash tests
(tests/test_crash_live.py in CI, tests/long/crash_cycles.py for longer runs).

Each cycle starts ``riskmon replay-server`` on the recording (port 0) and ``riskmon run``
on the same database, waits until the daemon has stored some more alerts (a random number
of them) and a random moment more, and kills it with SIGKILL, the server with it. The
server of the next cycle serves the recording again from its start, so the restarted daemon
is re-delivered every event it had already seen, then the ones it had not. After the last
kill a final cycle runs the recording to its end and stops the daemon with SIGTERM.

What the database then holds is compared with ``riskmon replay`` of the same recording by
the caller: the same alerts, ids included, but the daemon's connection alerts.
"""

from __future__ import annotations

import random
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.live_harness import LIVE_ENV, Process, live_config, running, wait_quiet


@dataclass
class CycleReport:
    """What the cycles did: the engine alerts stored at each kill (id -> insertion
    number), and the final exit code."""

    kills: list[dict[str, int]] = field(default_factory=list)
    exit_code: int | None = None


def stored_rows(db: Path) -> dict[str, int]:
    """The engine's alerts stored so far (not the connection alerts), id -> insertion
    number; empty before the database exists."""
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0) as connection:
            return dict(connection.execute(
                "SELECT id, seq FROM alerts WHERE kind NOT IN"
                " ('feed_connected', 'feed_disconnected') ORDER BY seq").fetchall())
    except sqlite3.Error:
        return {}


def stored_count(db: Path) -> int:
    return len(stored_rows(db))


def _daemon_config(tmp_path: Path, port: int, base: Path) -> Path:
    return live_config(tmp_path, port, base=base)


def run_cycles(tmp_path: Path, recording: Path, base_config: Path, *, kills: int,
               seed: int, speed: float, expected_alerts: int,
               cycle_timeout_s: float = 60.0) -> CycleReport:
    """``kills`` kill -9 cycles at random points, then one to the end (see the module
    docstring). The kills are spread over the recording's ``expected_alerts``."""
    rng = random.Random(seed)
    report = CycleReport()
    db = tmp_path / "daemon.db"
    step = max(1, expected_alerts // (kills + 1))
    server_args = ["replay-server", str(recording), "--port", "0", "--speed", str(speed)]
    for _cycle in range(kills):
        before = stored_count(db)
        target = min(expected_alerts - 1, before + rng.randint(1, 2 * step - 1))
        with running(server_args) as server:
            port = server.wait_status("listening")["port"]
            config = _daemon_config(tmp_path, port, base_config)
            with running(["run", "--config", str(config)], env=LIVE_ENV) as daemon:
                deadline = time.monotonic() + cycle_timeout_s
                while stored_count(db) < target:
                    if daemon.popen.poll() is not None:
                        raise AssertionError(f"the daemon exited {daemon.popen.returncode}:"
                                             f" {daemon.stderr_tail()}")
                    if time.monotonic() > deadline:
                        raise AssertionError(f"no {target} alerts stored within "
                                             f"{cycle_timeout_s} s: {daemon.stderr_tail()}")
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.2))
                daemon.popen.kill()
                daemon.popen.wait()
        report.kills.append(stored_rows(db))
    with running(server_args) as server:
        port = server.wait_status("listening")["port"]
        config = _daemon_config(tmp_path, port, base_config)
        daemon = Process(["run", "--config", str(config)], LIVE_ENV)
        try:
            http_port = daemon.wait_status("listening")["port"]
            server.wait_status("finished", cycle_timeout_s)
            wait_quiet(http_port, settle_s=0.5)
            report.exit_code = daemon.terminate()
        finally:
            if daemon.popen.poll() is None:
                daemon.popen.kill()
                daemon.popen.wait()
            daemon.close()
    return report
