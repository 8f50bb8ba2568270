"""Running riskmon's real processes on loopback for the live tests: the replay server, the
daemon, ``replay`` and ``record``, each as a subprocess (``python -m monitor``).

Processes report through JSON status lines on standard output (ports, progress) and JSON
log lines on standard error; the helpers read both as data.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from tests.http_fakes import FakeHttpServer

ROOT = Path(__file__).resolve().parent.parent
STORY = ROOT / "examples" / "story.jsonl"
EXAMPLE_CONFIG = ROOT / "examples" / "riskmon.toml"
SECRET = "s3cret-Value-never-logged"
PASSPHRASE = "pass-Phrase-never-logged"
LIVE_ENV = {
    "RISKMON_MAIN_API_KEY": "main",
    "RISKMON_MAIN_API_SECRET": SECRET,
    "RISKMON_MAIN_PASSPHRASE": PASSPHRASE,
}
FEED_KINDS = frozenset({"feed_connected", "feed_disconnected"})


class Process:
    """A riskmon subprocess whose stdout and stderr lines are collected by threads."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "monitor", "--log-format", "json", *args],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self.status: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        assert self.popen.stdout is not None and self.popen.stderr is not None
        self._threads = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, self.stdout_lines,
                                                      True), daemon=True),
            threading.Thread(target=self._pump, args=(self.popen.stderr, self.stderr_lines,
                                                      False), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self, stream: IO[bytes], lines: list[str], status: bool) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            lines.append(line)
            if status:
                with suppress(json.JSONDecodeError):
                    self.status.put(json.loads(line))

    def wait_status(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        """The next status line with this ``event``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.popen.poll() is not None and self.status.empty()):
                raise AssertionError(f"no {event!r} status from {self.args[0]} "
                                     f"(exit {self.popen.poll()}): {self.stderr_tail()}")
            try:
                document = self.status.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                continue
            if document.get("event") == event:
                return document

    def logs(self) -> list[dict[str, Any]]:
        """Standard error's JSON log lines, parsed."""
        records = []
        for line in list(self.stderr_lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def stderr_tail(self) -> str:
        return "\n".join(self.stderr_lines[-20:])

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, then the exit code (killed, and the test failed, past ``timeout``)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(
                f"{self.args[0]} did not exit {timeout} s after SIGTERM") from None
        finally:
            self.close()
        return code

    def close(self) -> None:
        """After the process ended: collect the last lines, release the pipes."""
        for thread in self._threads:
            thread.join(5)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def running(args: list[str], env: dict[str, str] | None = None) -> Iterator[Process]:
    process = Process(args, env)
    try:
        yield process
    finally:
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait()
        process.close()


def live_config(tmp_path: Path, port: int, *, okx: dict[str, float] | None = None,
                base: Path = EXAMPLE_CONFIG) -> Path:
    """The example configuration pointed at a replay server on ``port``, with its own
    database and the stream on a free port."""
    okx_lines = "".join(f"{key} = {value}\n" for key, value in (okx or {}).items())
    text = base.read_text().replace("[accounts.main]", (
        "[okx]\n"
        f'public_url = "ws://127.0.0.1:{port}/ws/v5/public"\n'
        f'private_url = "ws://127.0.0.1:{port}/ws/v5/private"\n'
        f'rest_url = "http://127.0.0.1:{port}"\n'
        f"{okx_lines}\n"
        "[storage]\n"
        f'sqlite_path = "{tmp_path / "daemon.db"}"\n\n'
        "[stream]\n"
        "port = 0\n\n"
        "[accounts.main]"), 1)
    path = tmp_path / "live.toml"
    path.write_text(text)
    return path


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


SAMPLE = re.compile(r'^([a-z_]+)(\{.*\})? (\S+)$')


def metric_samples(metrics: str) -> dict[tuple[str, str], float]:
    """``(name, labels) -> value`` of every sample line of a /metrics text."""
    found = {}
    for line in metrics.splitlines():
        match = SAMPLE.match(line)
        if match:
            found[match[1], match[2] or ""] = float(match[3])
    return found


def metric(port: int, name: str) -> float | None:
    _, body = http_get(port, "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def wait_quiet(port: int, *, settle_s: float = 1.0, timeout: float = 60.0) -> None:
    """Until the daemon's frame count has not moved for ``settle_s``."""
    deadline = time.monotonic() + timeout
    last = metric(port, "riskmon_frames_total")
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        current = metric(port, "riskmon_frames_total")
        if current != last:
            last, since = current, time.monotonic()
        elif time.monotonic() - since >= settle_s:
            return
    raise AssertionError("the daemon kept receiving frames")


def terminate_mid_stream(daemon: Process, http_port: int, *,
                         level_changes: int = 2) -> tuple[int, float]:
    """SIGTERM once the daemon has raised ``level_changes`` level changes: its exit code
    and how long it took to exit."""
    deadline = time.monotonic() + 60
    while (metric(http_port, 'riskmon_alerts_total{kind="level_changed"}') or 0) < (
            level_changes):
        assert time.monotonic() < deadline, daemon.stderr_tail()
        time.sleep(0.05)
    started = time.monotonic()
    code = daemon.terminate()
    return code, time.monotonic() - started


def stored_alerts(db: Path) -> list[dict[str, Any]]:
    result = subprocess.run([sys.executable, "-m", "monitor", "alerts", "--db", str(db)],
                            cwd=ROOT, capture_output=True, check=True)
    return [json.loads(line) for line in result.stdout.splitlines()]


def replay_outputs(tmp_path: Path, recording: Path = STORY,
                   config: Path = EXAMPLE_CONFIG) -> tuple[list[dict[str, Any]], Any]:
    """``riskmon replay``'s alerts and final state for a recording."""
    alerts_out = tmp_path / "replay-alerts.jsonl"
    state_out = tmp_path / "replay-state.json"
    subprocess.run([sys.executable, "-m", "monitor", "replay", str(recording), "--config",
                    str(config), "--alerts-out", str(alerts_out), "--state-out",
                    str(state_out)], cwd=ROOT, capture_output=True, check=True)
    alerts = [json.loads(line) for line in alerts_out.read_text().splitlines()]
    return alerts, json.loads(state_out.read_text())


async def delivered_when_done(hook: FakeHttpServer, server: Process, http_port: int,
                              db: Path) -> list[dict[str, Any]]:
    """Once the replay server has pushed its recording and the daemon on ``http_port`` is
    quiet: the alerts stored in ``db``, after ``hook`` (a webhook receiver) has had every
    one of them (by its idempotency key)."""
    await asyncio.to_thread(server.wait_status, "finished", 120)
    await asyncio.to_thread(wait_quiet, http_port)
    stored = await asyncio.to_thread(stored_alerts, db)
    ids = {a["id"] for a in stored}
    await hook.wait_for(lambda r: ids <= {q.headers["idempotency-key"] for q in r},
                        within_s=60)
    return stored


def engine_alerts(alerts: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What must match between the daemon and a replay: everything but the daemon's own
    connection alerts (a replay has no connections) and the emit time.

    Numbers match to 1e-9 (:func:`near`), not bit for bit: the daemon's REST bootstrap answers
    as of the replay server's push position, so it may reach the engine a few frames
    away from where the recording has it, and sums built in another order can differ in
    their last bits (2 ulp in a stop-loss value has been seen). Ids, kinds, levels, order
    and every other field match exactly. An account rebuilt from a reconnect's snapshots
    sums its positions in another order too."""
    return [near((a["id"], a["ts"], a["kind"], a["level"], a["from_level"], a["inst_id"],
                  a["mark"], a["margin_ratio"], a["payload"]))
            for a in alerts if a["kind"] not in FEED_KINDS]


class Near(float):
    """A float equal to any number within 1e-9 of it, relative or absolute."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, int | float) or isinstance(other, bool):
            return NotImplemented  # another kind of number (pytest.approx) decides
        return math.isclose(self, other, rel_tol=1e-9, abs_tol=1e-9)

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = float.__hash__


def near(value: Any) -> Any:
    """``value`` with every float in it a :class:`Near`."""
    if isinstance(value, float):
        return Near(value)
    if isinstance(value, dict):
        return {key: near(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(near(item) for item in value)
    return value
