"""The ``riskmon`` command line: the composition root (SPEC section 7).

This is the one module of ``monitor`` that imports ``adapters``: it wires feeds, engine and
sinks together. Exit codes: 0 success, 1 a run failed (a sink could not store), 2 bad usage
or configuration (the message names the offending key or file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from adapters.logging import configure_logging, get_logger
from adapters.okx.decode import OkxDecoder
from adapters.okx.replay_server import Faults, serve
from adapters.recording import RecordingWriter
from adapters.sinks import LogSink, SqliteSink
from adapters.sqlite_store import SqliteStore
from adapters.tail import DEFAULT_URL, TOKEN_ENV, TailRefused, TailRequest, tail
from monitor.config import Config, load_config
from monitor.daemon import tune_interpreter
from monitor.engine import MarginEngine
from monitor.errors import ConfigError, RiskmonError, SinkError
from monitor.pipeline import (
    AlertLinesSink,
    LineProcessor,
    Relay,
    SinkTask,
    replay_file,
    state_document,
)
from monitor.service import Monitor, build_daemon, load_all_credentials


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="riskmon",
                                     description="Streaming margin risk monitor.")
    parser.add_argument("--log-format", choices=("auto", "json", "console"), default="auto",
                        help="log rendering on standard error (default: console on a TTY, "
                             "else JSON lines)")
    parser.add_argument("--log-level", default="info",
                        choices=("debug", "info", "warning", "error"))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    replay = commands.add_parser("replay", help="run the engine over a recorded feed")
    replay.add_argument("file", type=Path, help="recording (JSON lines, SPEC 3.2)")
    replay.add_argument("--config", type=Path, required=True, help="TOML configuration")
    replay.add_argument("--speed", type=float, default=None,
                        help="pace at N times real time (default: as fast as possible)")
    replay.add_argument("--alerts-out", default="-", metavar="PATH|-",
                        help="alerts as JSON lines (default: standard output)")
    replay.add_argument("--state-out", type=Path, default=None,
                        help="write every account's figures after the last event")
    replay.add_argument("--db", type=Path, default=None,
                        help="also store alerts, history and quarantine in this SQLite file")

    run = commands.add_parser("run", help="the live daemon, until SIGTERM or SIGINT")
    run.add_argument("--config", type=Path, required=True, help="TOML configuration")
    run.add_argument("--state-out", type=Path, default=None,
                     help="at shutdown, write every account's figures (as replay does)")

    record = commands.add_parser("record", help="write what the live feed delivers to a "
                                                "recording (SPEC 3.2)")
    record.add_argument("file", type=Path, help="recording to write (JSON lines)")
    record.add_argument("--config", type=Path, required=True, help="TOML configuration")
    record.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="stop after this long (default: at SIGTERM or SIGINT)")

    server = commands.add_parser("replay-server",
                                 help="serve a recording over the OKX v5 protocol")
    server.add_argument("file", type=Path, help="recording (JSON lines, SPEC 3.2)")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8443)
    server.add_argument("--speed", type=float, default=1.0,
                        help="pace at N times the recorded pace; 0: as fast as possible")
    faults = server.add_argument_group("fault injection (for tests)")
    faults.add_argument("--drop-after", type=int, default=None, metavar="N",
                        help="drop the connection of the next frame after every N frames")
    faults.add_argument("--drop-times", type=int, default=1, metavar="K",
                        help="how many times --drop-after drops (default 1)")
    faults.add_argument("--garbage-after", type=int, default=None, metavar="N",
                        help="once, after N frames, send a frame that is not JSON")
    faults.add_argument("--stall-after", type=int, default=None, metavar="N",
                        help="once, after N frames, go silent for --stall-s seconds")
    faults.add_argument("--stall-s", type=float, default=40.0)
    faults.add_argument("--fail-logins", type=int, default=0, metavar="N",
                        help="refuse the first N logins")
    faults.add_argument("--notice-after", type=int, default=None, metavar="N",
                        help="once, after N frames, send notice 64008 and close")

    alerts = commands.add_parser("alerts", help="print stored alerts as JSON lines")
    alerts.add_argument("--db", type=Path, required=True)
    alerts.add_argument("--account", default=None)
    alerts.add_argument("--since", default=None, metavar="ID",
                        help="only alerts stored after this alert id")
    alerts.add_argument("--kind", default=None)
    tail = commands.add_parser("tail", help="subscribe to a running riskmon's alerts and "
                                            "print them as JSON lines")
    tail.add_argument("--url", default=DEFAULT_URL, help=f"alert stream (default {DEFAULT_URL})")
    tail.add_argument("--token", default=None,
                      help=f"stream token (default: ${TOKEN_ENV}, which keeps it out of the "
                           "process list)")
    tail.add_argument("--account", action="append", default=None, metavar="A",
                      help="only this account (repeatable; default: all the token may see)")
    tail.add_argument("--kind", action="append", default=None, metavar="K",
                      help="only this alert kind (repeatable)")
    tail.add_argument("--min-level", default=None, metavar="LEVEL",
                      help="only alerts at this level or worse")
    tail.add_argument("--since", default=None, metavar="ID",
                      help="first the stored alerts after this id ('earliest': all stored)")
    tail.add_argument("--count", type=int, default=None, metavar="N",
                      help="exit 0 after N alerts")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``riskmon`` console script."""
    args = build_parser().parse_args(argv)
    log_json = {"auto": None, "json": True, "console": False}[args.log_format]
    configure_logging(json=log_json, stream=sys.stderr, level=args.log_level)
    try:
        match args.command:
            case "replay":
                return asyncio.run(_replay(args))
            case "run":
                return asyncio.run(_run(args))
            case "record":
                return asyncio.run(_record(args))
            case "replay-server":
                return asyncio.run(_replay_server(args))
            case "alerts":
                return asyncio.run(_alerts(args))
            case "tail":
                return asyncio.run(_tail(args))
    except ConfigError as e:
        print(f"riskmon: configuration error: {e}", file=sys.stderr)
        return 2
    except SinkError as e:
        print(f"riskmon: storage error: {e}", file=sys.stderr)
        return 1
    except RiskmonError as e:
        print(f"riskmon: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


def _positive_speed(speed: float | None) -> float | None:
    if speed is not None and not speed > 0:
        raise ConfigError("--speed", "must be a positive number")
    return speed


async def _replay(args: argparse.Namespace) -> int:
    config: Config = load_config(args.config)
    speed = _positive_speed(args.speed)
    if not args.file.is_file():
        print(f"riskmon: recording not found: {args.file}", file=sys.stderr)
        return 2
    log = get_logger("riskmon.replay")
    engine = MarginEngine(config)
    decoder = OkxDecoder()
    processor = LineProcessor(engine, decoder.decode_line, str(args.file),
                              int(config.storage.history_interval_s * 1000),
                              quarantine=config.quarantine)
    followers = [SinkTask(AlertLinesSink(args.alerts_out)), SinkTask(LogSink())]

    def on_retry(name: str, attempt: int, error: SinkError) -> None:
        log.warning("sink_retry", sink=name, attempt=attempt, error=str(error))

    if args.db is not None:
        store = await SqliteStore.open(args.db, retention_days=config.storage.retention_days,
                                       quarantine_max_rows=config.quarantine.store_max_rows)
        head = SinkTask(SqliteSink(store), followers=followers, on_retry=on_retry)
    else:
        head = SinkTask(Relay(), followers=followers)
    log.info("replay_started", file=str(args.file), speed=speed)
    stats = await replay_file(args.file, processor, head, speed=speed)
    log.info("replay_finished", lines=stats.lines, events=stats.events,
             quarantined=stats.quarantined, alerts=stats.alerts)
    if args.state_out is not None:
        args.state_out.write_bytes(state_document(engine, stats) + b"\n")
    return 0


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)


def _status(document: dict[str, Any]) -> None:
    """One JSON line on standard output: what scripts and tests read (ports, progress)."""
    sys.stdout.buffer.write(orjson.dumps(document) + b"\n")
    sys.stdout.buffer.flush()


async def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    tune_interpreter()
    monitor = await Monitor.open(config)
    stop = asyncio.Event()
    _stop_on_signals(stop)
    runner = asyncio.create_task(monitor.run(stop), name="monitor")
    started = asyncio.create_task(monitor.started.wait())
    await asyncio.wait([runner, started], return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    if monitor.started.is_set():
        port = monitor.port
        _status({"event": "listening", "http": f"http://{config.stream.host}:{port}",
                 "port": port})
        get_logger("riskmon.daemon").info(
            "daemon_started", port=port, accounts=sorted(config.accounts),
            database=config.storage.sqlite_path)
    await runner
    if args.state_out is not None:
        args.state_out.write_bytes(
            state_document(monitor.daemon.engine, monitor.daemon.processor.stats) + b"\n")
    return 0


async def _record(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    credentials = load_all_credentials(config)
    log = get_logger("riskmon.record")
    writer = RecordingWriter(args.file)
    daemon = build_daemon(config, credentials, SinkTask(Relay()), tap=writer.write)
    stop = asyncio.Event()
    _stop_on_signals(stop)
    if args.duration is not None:
        asyncio.get_running_loop().call_later(args.duration, stop.set)
    log.info("record_started", file=str(args.file), accounts=sorted(credentials))
    try:
        await daemon.run(stop)
    finally:
        writer.close()
    log.info("record_finished", file=str(args.file), lines=writer.lines)
    return 0


async def _replay_server(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        print(f"riskmon: recording not found: {args.file}", file=sys.stderr)
        return 2
    if args.speed < 0:
        raise ConfigError("--speed", "must be 0 (no pacing) or a positive number")
    faults = Faults(drop_after=args.drop_after, drop_times=args.drop_times,
                    garbage_after=args.garbage_after, stall_after=args.stall_after,
                    stall_s=args.stall_s, fail_logins=args.fail_logins,
                    notice_after=args.notice_after)
    stop = asyncio.Event()
    _stop_on_signals(stop)
    task = asyncio.create_task(serve(args.file, args.host, args.port, args.speed or None,
                                     faults, _status))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    task.cancel()
    stopper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return 0


async def _alerts(args: argparse.Namespace) -> int:
    if not args.db.is_file():
        print(f"riskmon: database not found: {args.db}", file=sys.stderr)
        return 2
    store = await SqliteStore.open(args.db)
    try:
        alerts = await store.alerts(account=args.account, since=args.since, kind=args.kind)
    finally:
        await store.close()
    out = sys.stdout.buffer
    for alert in alerts:
        out.write(orjson.dumps(alert.to_dict()) + b"\n")
    out.flush()
    return 0


async def _tail(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        raise ConfigError("--count", "must be a positive integer")
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    request = TailRequest(token=token, accounts=args.account, kinds=args.kind,
                          min_level=args.min_level, since=args.since)
    stop = asyncio.Event()
    _stop_on_signals(stop)
    try:
        await tail(args.url, request, sys.stdout.buffer, sys.stderr, count=args.count,
                   stop=stop)
    except TailRefused as e:
        print(f"riskmon tail: refused: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"riskmon tail: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
