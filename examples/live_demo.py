"""The demo of `./dev demo`: the real daemon following the bundled recording, on loopback.

1. `riskmon replay-server examples/story.jsonl` serves the recording over the OKX v5
   protocol (websocket and REST) at 30x its recorded pace;
2. `riskmon run` connects to it exactly as it would to OKX (login, subscriptions, REST
   orders), with `examples/riskmon.toml` pointed at the server and demo credentials;
3. when the recording ends the daemon is stopped with SIGTERM (it drains and exits 0), and
   examples/summarise.py prints the stored alerts and the final state.

Outputs in out/: demo.db (SQLite), alerts.jsonl, state.json, riskmon.log (daemon),
replay-server.log. No account and no internet needed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out"
SPEED = "30"
RISKMON = [sys.executable, "-m", "monitor", "--log-format", "json"]


def status_line(stream: IO[bytes], event: str, timeout: float) -> dict[str, Any]:
    """The process's next JSON status line with this event (blocking read)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        document = json.loads(line)
        if document.get("event") == event:
            return dict(document)
    raise SystemExit(f"demo: no {event!r} from a riskmon process; see out/*.log")


def demo_config(port: int) -> Path:
    text = (ROOT / "examples" / "riskmon.toml").read_text().replace("[accounts.main]", (
        "[okx]\n"
        f'public_url = "ws://127.0.0.1:{port}/ws/v5/public"\n'
        f'private_url = "ws://127.0.0.1:{port}/ws/v5/private"\n'
        f'rest_url = "http://127.0.0.1:{port}"\n\n'
        "[storage]\n"
        f'sqlite_path = "{OUT / "demo.db"}"\n\n'
        "[stream]\nport = 0\n\n"
        "[accounts.main]"), 1)
    path = OUT / "demo.toml"
    path.write_text(text)
    return path


def stored() -> list[dict[str, Any]]:
    args = [*RISKMON, "alerts", "--db", str(OUT / "demo.db")]
    result = subprocess.run(args, cwd=ROOT, capture_output=True)
    return [json.loads(line) for line in result.stdout.splitlines()]


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("demo.db*"):
        old.unlink()
    env = {**os.environ, "RISKMON_MAIN_API_KEY": "main",
           "RISKMON_MAIN_API_SECRET": "demo-secret", "RISKMON_MAIN_PASSPHRASE": "demo-pass"}
    with open(OUT / "replay-server.log", "wb") as server_log, \
            open(OUT / "riskmon.log", "wb") as daemon_log:
        server = subprocess.Popen(
            [*RISKMON, "replay-server", "examples/story.jsonl", "--port", "0", "--speed", SPEED],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=server_log)
        daemon: subprocess.Popen[bytes] | None = None
        try:
            assert server.stdout is not None
            port = status_line(server.stdout, "listening", 30)["port"]
            print(f"replay server on ws://127.0.0.1:{port} (the recording at {SPEED}x)")
            daemon = subprocess.Popen(
                [*RISKMON, "run", "--config", str(demo_config(port)), "--state-out",
                 str(OUT / "state.json")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                stderr=daemon_log)
            assert daemon.stdout is not None
            http = status_line(daemon.stdout, "listening", 30)["http"]
            print(f"daemon running ({http}/healthz, {http}/metrics); following the "
                  "recording, about 20 s ...", flush=True)
            status_line(server.stdout, "finished", 300)
            time.sleep(2)  # the last frames through the engine and into SQLite
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(30)
            print(f"daemon stopped on SIGTERM, exit code {code}")
        finally:
            for process in (daemon, server):
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    process.wait(30)
    with open(OUT / "alerts.jsonl", "wb") as handle:
        for alert in stored():
            handle.write(json.dumps(alert).encode() + b"\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
