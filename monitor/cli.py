"""The ``riskmon`` command line: the composition root (SPEC section 7).

This is the one module of ``monitor`` that imports ``adapters``: it wires feeds, engine and
sinks together. Exit codes: 0 success, 1 a run failed (a sink could not store), 2 bad usage
or configuration (the message names the offending key or file).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from adapters.logging import configure_logging, get_logger
from adapters.okx.decode import OkxDecoder
from adapters.sinks import LogSink, SqliteSink
from adapters.sqlite_store import SqliteStore
from monitor.config import Config, load_config
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

    alerts = commands.add_parser("alerts", help="print stored alerts as JSON lines")
    alerts.add_argument("--db", type=Path, required=True)
    alerts.add_argument("--account", default=None)
    alerts.add_argument("--since", default=None, metavar="ID",
                        help="only alerts stored after this alert id")
    alerts.add_argument("--kind", default=None)
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
            case "alerts":
                return asyncio.run(_alerts(args))
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
                              int(config.storage.history_interval_s * 1000))
    followers = [SinkTask(AlertLinesSink(args.alerts_out)), SinkTask(LogSink())]

    def on_retry(name: str, attempt: int, error: SinkError) -> None:
        log.warning("sink_retry", sink=name, attempt=attempt, error=str(error))

    if args.db is not None:
        store = await SqliteStore.open(args.db, retention_days=config.storage.retention_days)
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


if __name__ == "__main__":
    sys.exit(main())
