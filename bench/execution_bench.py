"""Stop-loss execution latency: from the triggering frame to the order on the wire.

Run from the repository root: ``.venv/bin/python -m bench.execution_bench`` (options:
``--accounts N`` triggers, one per account; ``--rate`` frames per second, default 10,000;
``--seconds``; ``--synchronous`` the daemon's ``storage.synchronous``; ``--daemon-python``
the interpreter of the daemon, ``.venv-native/bin/python`` for the compiled build;
``--runs N`` runs pooled into one set of percentiles).

A generated recording: ``--accounts`` accounts, each long one of 10 instruments with a
``margin_ratio`` stop-loss whose bound its margin ratio crosses at its own price on the
way from 100 to 80, so the triggers are spread over the run; 10 mark-price frames per
millisecond (one per instrument) at ``--rate`` frames per second. The replay server runs in
this process (its order simulator, ``record_push_times``), the daemon as a subprocess
(``riskmon run``, execution on). For each order request the server notes when it arrived
(``time.perf_counter``); for each frame when it was pushed. The latency of a trigger is
its order's arrival minus the push of the frame that fired it (found by the trigger's
event time and instrument): the daemon's receive, decode, engine, SQLite commit of the
alert (persist before act), the executor's positions re-read and its own commit of the
attempt, then the POST. Both clocks are the server's. Target (issue 13): p99 under 5 ms
at 10,000 frames/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from adapters.okx.replay_server import ReplayServer
from bench.subject import command_line

INSTRUMENTS = 10
START_MS = 1_767_225_600_000
WARM_SHARE = 0.2  # flat prices first: every account's bootstrap is done before any trigger
CASH = 2_500.0
CONTRACTS = 100.0
ENTRY = 100.0
MMR = 0.004
FEE = 0.0005


def inst(i: int) -> str:
    return f"X{i}-USDT-SWAP"


def ratio_at(price: float) -> float:
    """The margin ratio of one account (CASH USDT, CONTRACTS long at ENTRY) at ``price``."""
    equity = CASH + CONTRACTS * (price - ENTRY)
    return equity / (CONTRACTS * price * (MMR + FEE))


def price_at(ms: int, total_ms: int) -> float:
    warm_ms = int(total_ms * WARM_SHARE)
    if ms < warm_ms:
        return ENTRY
    return ENTRY - 20.0 * (ms - warm_ms) / (total_ms - warm_ms)


def write_recording(path: Path, accounts: int, total_ms: int) -> None:
    lines: list[dict[str, Any]] = []
    t = START_MS - 1_000
    for n in range(accounts):
        name = f"a{n:03d}"
        lines.append({"recv_ts": t, "account": name, "rest": "/api/v5/account/config",
                      "body": {"code": "0", "msg": "", "data": [
                          {"uid": str(n), "acctLv": "3", "posMode": "net_mode"}]}})
        lines.append({"recv_ts": t, "account": name, "rest": "/api/v5/trade/orders-pending",
                      "body": {"code": "0", "msg": "", "data": []}})
        lines.append({"recv_ts": t, "account": name, "frame": {
            "arg": {"channel": "account", "uid": str(n)}, "eventType": "snapshot",
            "curPage": 1, "lastPage": True, "data": [{
                "uTime": str(t), "totalEq": "", "adjEq": "", "imr": "", "mmr": "",
                "mgnRatio": "", "notionalUsd": "", "details": [{
                    "ccy": "USDT", "cashBal": str(CASH), "eq": str(CASH), "liab": "",
                    "interest": "", "upl": "0", "uTime": str(t)}]}]}})
        lines.append({"recv_ts": t, "account": name, "frame": {
            "arg": {"channel": "positions", "instType": "ANY", "uid": str(n)},
            "eventType": "snapshot", "curPage": 1, "lastPage": True, "data": [{
                "instType": "SWAP", "instId": inst(n % INSTRUMENTS), "mgnMode": "cross",
                "posSide": "net", "pos": str(CONTRACTS), "avgPx": str(ENTRY), "lever": "10",
                "ccy": "USDT", "posId": str(n), "uTime": str(t), "cTime": str(t)}]}})
    # REST bodies first: the server answers REST with what it has read by then.
    lines.sort(key=lambda line: "frame" in line)
    with path.open("w") as handle:
        for line in lines:
            handle.write(json.dumps(line, separators=(",", ":")) + "\n")
        for ms in range(total_ms):
            price = f"{price_at(ms, total_ms):.4f}"
            for i in range(INSTRUMENTS):
                ts = START_MS + ms
                handle.write(json.dumps({"recv_ts": ts, "frame": {
                    "arg": {"channel": "mark-price", "instId": inst(i)},
                    "data": [{"instType": "SWAP", "instId": inst(i), "markPx": price,
                              "ts": str(ts)}]}}, separators=(",", ":")) + "\n")


def write_config(path: Path, port: int, rest_port: int, accounts: int, db: Path,
                 synchronous: str, sync_before_send: bool) -> dict[str, str]:
    env = {"RISKMON_CONTROL_TOKEN": "bench-control"}
    parts = [
        "[risk]\nexecute_triggers = true\nstale_after_s = 30\n",
        f'[okx]\npublic_url = "ws://127.0.0.1:{port}/ws/v5/public"\n'
        f'private_url = "ws://127.0.0.1:{port}/ws/v5/private"\n'
        f'rest_url = "http://127.0.0.1:{rest_port}"\n',
        f'[storage]\nsqlite_path = "{db}"\nsynchronous = "{synchronous}"\n',
        "[stream]\nport = 0\n",
        "[execution]\nmax_trigger_age_s = 600\n"
        f"sync_before_send = {'true' if sync_before_send else 'false'}\n",
    ]
    for i in range(INSTRUMENTS):
        parts.append(f'[[instruments]]\ninst_id = "{inst(i)}"\nct_type = "linear"\n'
                     'ct_val = 1\nct_mult = 1\nct_val_ccy = "X"\nsettle_ccy = "USDT"\n'
                     "max_leverage = 100\nlot_size = 1\n"
                     f"tiers = [ {{ max_contracts = 1e15, mmr = {MMR} }} ]\n")
    for n in range(accounts):
        name = f"a{n:03d}"
        # Account n's trigger price, evenly spread over the decline.
        bound = ratio_at(99.0 - 18.0 * (n + 0.5) / accounts)
        parts.append(
            f"[accounts.{name}]\n"
            + "".join(f'{key} = "B_{name}_{key}"\n' for key in
                      ("api_key_env", "api_secret_env", "passphrase_env"))
            + "execute = true\n"
            + "".join(f'trade_{key} = "B_{name}_T{key}"\n' for key in
                      ("api_key_env", "api_secret_env", "passphrase_env"))
            + f'[[accounts.{name}.stop_loss]]\nname = "guard"\nmetric = "margin_ratio"\n'
            f'below = {bound:.6f}\naction = "close_all"\n')
        for key in ("api_key_env", "api_secret_env", "passphrase_env"):
            env[f"B_{name}_{key}"] = name
            env[f"B_{name}_T{key}"] = name
    path.write_text("\n".join(parts))
    return env


async def run(accounts: int, rate: int, seconds: float, synchronous: str,
              sync_before_send: bool, daemon_python: str) -> dict[str, Any]:
    total_ms = int(seconds * rate / INSTRUMENTS)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        recording = directory / "bench.jsonl"
        write_recording(recording, accounts, total_ms)
        speed = rate / (INSTRUMENTS * 1000)  # 10 frames per recorded ms
        server = ReplayServer(recording, speed=speed, record_push_times=True)
        port = await server.start("127.0.0.1", 0, rest_port=0)
        rest_port = server.rest_port
        assert rest_port is not None
        db = directory / "daemon.db"
        config = directory / "bench.toml"
        env = write_config(config, port, rest_port, accounts, db, synchronous,
                           sync_before_send)
        log_path = directory / "daemon.log"
        with log_path.open("wb") as log_file:
            # ``python -m riskmon`` for an installed (compiled) build, ``-m monitor`` for
            # the editable one; from the temporary directory, away from the source tree.
            daemon = await asyncio.create_subprocess_exec(
                *command_line(daemon_python), "--log-format", "json", "--log-level",
                "warning", "run", "--config", str(config), env={**os.environ, **env},
                cwd=directory, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=log_file)
        try:
            finished = asyncio.ensure_future(server.wait_finished())
            exited = asyncio.ensure_future(daemon.wait())
            await asyncio.wait([finished, exited], return_when=asyncio.FIRST_COMPLETED)
            if not finished.done():
                finished.cancel()
                raise SystemExit(f"the daemon exited ({daemon.returncode}): "
                                 f"{log_path.read_text()[-2000:]}")
            pushed = finished.result()
            for _ in range(150):  # up to 30 s for the last orders to arrive
                if len(server.orders_received) >= accounts:
                    break
                await asyncio.sleep(0.2)
        finally:
            if daemon.returncode is None:
                daemon.send_signal(signal.SIGTERM)
            await asyncio.wait_for(daemon.wait(), 30)
            await server.close()
        with sqlite3.connect(db) as connection:
            triggers = dict(connection.execute(
                "SELECT a.client_id, al.ts || ' ' || al.inst_id FROM execution_attempts a"
                " JOIN alerts al ON al.id = a.alert_id").fetchall())
        with sqlite3.connect(db) as connection:
            inner = [row[0] for row in connection.execute(
                "SELECT min(a.sent_ts) - al.emitted_ts FROM execution_attempts a"
                " JOIN alerts al ON al.id = a.alert_id GROUP BY a.alert_id")]
        latencies = []
        for order in server.orders_received:
            trigger = triggers.get(str(order.order.get("clOrdId")))
            if trigger is None:
                continue
            ts_text, inst_id = trigger.split(" ")
            times = server.push_times.get(int(ts_text), [])
            index = int(inst_id[1:].split("-", 1)[0])
            if index < len(times):
                latencies.append((order.arrived_at - times[index]) * 1000)
        return {"inner_ms": sorted(inner), "frames": pushed, "orders": len(server.orders_received),
                "latencies_ms": sorted(latencies)}


def percentile(values: list[float], fraction: float) -> float:
    return values[min(len(values) - 1, int(fraction * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--rate", type=int, default=10_000, help="frames per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--synchronous", default="FULL", choices=("FULL", "NORMAL"),
                        help="storage.synchronous of the daemon (the alert's commit)")
    parser.add_argument("--sync-before-send", action="store_true",
                        help="execution.sync_before_send: the orders wait for the fsync of"
                             " the trigger's commit")
    parser.add_argument("--daemon-python", default=sys.executable,
                        help="the interpreter that runs the daemon (default: this one); "
                             ".venv-native/bin/python runs the compiled build")
    parser.add_argument("--runs", type=int, default=1,
                        help="runs, one after the other; the percentiles pool their triggers")
    args = parser.parse_args()
    latencies: list[float] = []
    inner: list[float] = []
    result: dict[str, Any] = {"frames": 0, "orders": 0}
    for _ in range(args.runs):
        one = asyncio.run(run(args.accounts, args.rate, args.seconds, args.synchronous,
                              args.sync_before_send, args.daemon_python))
        latencies += one["latencies_ms"]
        inner += one["inner_ms"]
        result["frames"] += one["frames"]
        result["orders"] += one["orders"]
    latencies.sort()
    inner.sort()
    if inner:
        print(f"inside the daemon, receive of the frame -> attempt stored (wall ms): p50 "
              f"{statistics.median(inner):.0f}, max {inner[-1]:.0f}")
    print(f"frames pushed {result['frames']:,} at {args.rate:,}/s; order requests "
          f"{result['orders']}, matched to their trigger {len(latencies)}")
    if latencies:
        print(f"trigger frame -> order on the wire: p50 {statistics.median(latencies):.2f} ms,"
              f" p90 {percentile(latencies, 0.90):.2f} ms, p99"
              f" {percentile(latencies, 0.99):.2f} ms, max {latencies[-1]:.2f} ms"
              f" (target p99 < 5 ms: {'met' if percentile(latencies, 0.99) < 5 else 'NOT met'})")


if __name__ == "__main__":
    main()
