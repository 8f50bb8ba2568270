"""The ``riskmon`` command line: the composition root (SPEC section 7).

This is the one module of ``monitor`` that imports ``adapters``: it wires feeds, engine and
sinks together. Exit codes: 0 success, 1 a run failed (a sink could not store), 2 bad usage
or configuration (the message names the offending key or file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from adapters.alert_stream import load_tokens
from adapters.executor_client import control_executor
from adapters.logging import configure_logging, get_logger
from adapters.recording import RecordingWriter
from adapters.report import find_chromium, page_height, render_html, render_png
from adapters.sinks import LogSink, SqliteSink
from adapters.sqlite_store import SqliteStore
from adapters.status_client import fetch_status
from adapters.tail import DEFAULT_URL, TOKEN_ENV, TailRefused, TailRequest, tail
from adapters.venues import VENUES
from monitor.app.config import check_config, load_config, parse_config, read_config
from monitor.app.service import (
    Monitor,
    build_daemon,
    check_stream_exposure,
    daemon_venues,
    load_all_credentials,
    single_venue,
)
from monitor.app.status import from_history, status_document
from monitor.app.tables import ProgressBar, alerts_table, replay_summary, status_table
from monitor.core.alerts import ALERT_KINDS, LEVEL_RANK, LEVELS, level_named
from monitor.core.batch import Batch
from monitor.core.engine import MarginEngine
from monitor.core.errors import ConfigError, RiskmonError, SinkError
from monitor.core.settings import Config
from monitor.runtime.daemon import tune_interpreter
from monitor.runtime.pipeline import (
    AlertLinesSink,
    LineDecoder,
    LineProcessor,
    Relay,
    SinkTask,
    replay_file,
    state_document,
)
from monitor.runtime.venues import account_venues, venue_config, venue_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="riskmon",
                                     description="Streaming margin risk monitor.")
    parser.add_argument("--log-format", choices=("auto", "json", "console"), default="auto",
                        help="log rendering on standard error (default: console on a TTY, "
                             "else JSON lines)")
    parser.add_argument("--log-level", default="info",
                        choices=("debug", "info", "warning", "error"))
    parser.add_argument("--version", action="version", version=f"riskmon {riskmon_version()}")
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
    run.add_argument("--dry-run", action="store_true",
                     help="execution goes through every step but sends no order; it logs "
                          "what it would send (sets [execution] dry_run)")

    executor = commands.add_parser("executor", help="the kill switch of a running daemon's "
                                                    "stop-loss execution")
    executor.add_argument("op", choices=("pause", "resume", "status"),
                          help="pause: no new orders until resume (kept across restarts)")
    executor.add_argument("--url", default="http://127.0.0.1:8765",
                          help="the daemon's HTTP address (default: %(default)s)")
    executor.add_argument("--token-env", default="RISKMON_CONTROL_TOKEN", metavar="VAR",
                          help="the variable holding the control token (default: %(default)s)")

    record = commands.add_parser("record", help="write what the live feed delivers to a "
                                                "recording (SPEC 3.2)")
    record.add_argument("file", type=Path, help="recording to write (JSON lines)")
    record.add_argument("--config", type=Path, required=True, help="TOML configuration")
    record.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="stop after this long (default: at SIGTERM or SIGINT)")

    server = commands.add_parser("replay-server",
                                 help="serve a recording over a venue's protocol")
    server.add_argument("file", type=Path, help="recording (JSON lines, SPEC 3.2)")
    server.add_argument("--venue", choices=sorted(VENUES.venues), default=VENUES.default,
                        help="the venue whose protocol to speak (default: %(default)s)")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8443)
    server.add_argument("--rest-port", type=int, default=0,
                        help="HTTP/1.1 REST port, GET and POST (default 0: any free port)")
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
    faults.add_argument("--reject-orders", type=int, default=0, metavar="N",
                        help="refuse the first N orders that would be placed")
    faults.add_argument("--reject-code", default="51008",
                        help="sCode of --reject-orders (default 51008)")
    faults.add_argument("--reject-message",
                        default="Order failed. Insufficient USDT margin in account",
                        help="sMsg of --reject-orders")
    faults.add_argument("--rate-limit-requests", type=int, default=0, metavar="N",
                        help="answer the first N batch-orders requests 429 (50011)")
    faults.add_argument("--timeout-requests", type=int, default=0, metavar="N",
                        help="place the orders of the first N batch-orders requests but "
                             "answer only after --order-timeout-s")
    faults.add_argument("--order-timeout-s", type=float, default=30.0)
    faults.add_argument("--partial-fills", type=int, default=0, metavar="N",
                        help="the first N orders fill --partial-fill-ratio, then cancel")
    faults.add_argument("--partial-fill-ratio", type=float, default=0.5)
    faults.add_argument("--delay-fills", type=int, default=0, metavar="N",
                        help="the first N orders stay live --fill-delay-s before filling")
    faults.add_argument("--fill-delay-s", type=float, default=5.0)
    faults.add_argument("--read-only-key", action="append", default=[], metavar="KEY",
                        help="an API key with perm read_only (repeatable)")
    faults.add_argument("--expire-listen-key-after", type=int, default=None, metavar="N",
                        help="venues with listen keys: once, after N frames, expire every "
                             "listen key (a listenKeyExpired push)")

    alerts = commands.add_parser("alerts", help="print stored alerts (a table on a terminal, "
                                                 "else JSON lines)")
    alerts.add_argument("--db", type=Path, required=True)
    alerts.add_argument("--account", action="append", default=None, metavar="A",
                        help="only this account (repeatable)")
    alerts.add_argument("--kind", action="append", default=None, metavar="K",
                        help=f"only this kind (repeatable): {', '.join(ALERT_KINDS)}")
    alerts.add_argument("--level", default=None, metavar="LEVEL",
                        help=f"only alerts at this level or worse: {', '.join(LEVELS)}")
    alerts.add_argument("--since", default=None, metavar="ID",
                        help="only alerts stored after this alert id")
    alerts.add_argument("--from", dest="from_ts", default=None, metavar="TIME",
                        help="only alerts of this event time or later (ISO 8601, UTC unless "
                             "it says otherwise, or epoch milliseconds)")
    alerts.add_argument("--to", dest="to_ts", default=None, metavar="TIME",
                        help="only alerts of this event time or earlier")
    alerts.add_argument("--limit", type=int, default=None, metavar="N",
                        help="at most N alerts (the first N that match)")
    alerts.add_argument("--json", action="store_true",
                        help="JSON lines even on a terminal")

    check = commands.add_parser("check-config",
                                help="validate a configuration, reporting every error at once")
    check.add_argument("config", type=Path, help="TOML configuration")
    check.add_argument("--offline", action="store_true",
                       help="skip what only riskmon run needs (credentials, stream tokens)")

    status = commands.add_parser("status", help="every account's figures now: from a running "
                                                "daemon, a database or a replay")
    source = status.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", default=None,
                        help="a running daemon's HTTP address (http://127.0.0.1:8765)")
    source.add_argument("--db", type=Path, default=None,
                        help="a riskmon database: its latest margin samples")
    source.add_argument("--recording", type=Path, default=None,
                        help="replay this recording (needs --config) and show the end state")
    status.add_argument("--config", type=Path, default=None,
                        help="TOML configuration (thresholds; the replay's settings)")
    status.add_argument("--token", default=None,
                        help=f"stream token for --url (default: ${TOKEN_ENV})")
    status.add_argument("--json", action="store_true", help="JSON even on a terminal")

    report = commands.add_parser("report", help="an HTML page (and a PNG) per account: margin "
                                                "ratio over time with thresholds and alerts")
    report_source = report.add_mutually_exclusive_group(required=True)
    report_source.add_argument("--db", type=Path, default=None, help="a riskmon database")
    report_source.add_argument("--recording", type=Path, default=None,
                               help="replay this recording (needs --config)")
    report.add_argument("--config", type=Path, default=None,
                        help="TOML configuration (thresholds; the replay's settings)")
    report.add_argument("--account", action="append", default=None, metavar="A",
                        help="only this account (repeatable; default: every account)")
    report.add_argument("--out", type=Path, default=Path("."),
                        help="directory for report-ACCOUNT.html and .png (default: .)")
    report.add_argument("--no-png", action="store_true",
                        help="HTML only (the PNG needs Chromium)")
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
            case "check-config":
                return _check_config(args)
            case "status":
                return asyncio.run(_status_command(args))
            case "report":
                return asyncio.run(_report(args))
            case "tail":
                return asyncio.run(_tail(args))
            case "executor":
                return asyncio.run(_executor(args))
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
    engine, decode_line = _replay_engine(config)
    processor = LineProcessor(engine, decode_line, str(args.file),
                              int(config.storage.history_interval_s * 1000),
                              quarantine=config.quarantine)
    followers = [SinkTask(AlertLinesSink(args.alerts_out)), SinkTask(LogSink())]

    def on_retry(name: str, attempt: int, error: SinkError) -> None:
        log.warning("sink_retry", sink=name, attempt=attempt, error=str(error))

    if args.db is not None:
        store = await SqliteStore.open(args.db, retention_days=config.storage.retention_days,
                                       quarantine_max_rows=config.quarantine.store_max_rows,
                                       writable=True)
        head = SinkTask(SqliteSink(store), followers=followers, on_retry=on_retry)
    else:
        head = SinkTask(Relay(), followers=followers)
    log.info("replay_started", file=str(args.file), speed=speed)
    bar = ProgressBar(sys.stderr, args.file.stat().st_size) if sys.stderr.isatty() else None
    stats = await replay_file(args.file, processor, head, speed=speed,
                              progress=None if bar is None else bar.update)
    if bar is not None:
        bar.finish()
    log.info("replay_finished", lines=stats.lines, events=stats.events,
             quarantined=stats.quarantined, alerts=stats.alerts)
    if sys.stderr.isatty():
        sys.stderr.write(replay_summary(args.file, stats, engine.levels()))
    if args.state_out is not None:
        args.state_out.write_bytes(state_document(engine.state(), stats) + b"\n")
    return 0


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)


def _status_line(document: dict[str, Any]) -> None:
    """One JSON line on standard output: what scripts and tests read (ports, progress)."""
    sys.stdout.buffer.write(orjson.dumps(document) + b"\n")
    sys.stdout.buffer.flush()


async def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.dry_run:
        config = replace(config, execution=replace(config.execution, dry_run=True))
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
        _status_line({"event": "listening", "http": f"http://{config.stream.host}:{port}",
                 "port": port})
        get_logger("riskmon.daemon").info(
            "daemon_started", port=port, accounts=sorted(config.accounts),
            database=config.storage.sqlite_path)
    await runner
    if args.state_out is not None:
        args.state_out.write_bytes(
            state_document(monitor.daemon.state(), monitor.daemon.stats) + b"\n")
    return 0


async def _executor(args: argparse.Namespace) -> int:
    token = os.environ.get(args.token_env, "")
    if not token:
        raise ConfigError("--token-env", f"environment variable {args.token_env} is not set")
    answer = await control_executor(args.url, token, args.op)
    sys.stdout.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


async def _record(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    use = single_venue(config)
    credentials = load_all_credentials(config, (use,))
    log = get_logger("riskmon.record")
    writer = RecordingWriter(args.file)
    daemon = build_daemon(config, credentials, SinkTask(Relay()), tap=writer.write, uses=(use,))
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


# The replay server's fault options (its --read-only-key is read_only_keys).
_FAULT_OPTIONS = ("drop_after", "drop_times", "garbage_after", "stall_after", "stall_s",
                  "fail_logins", "notice_after", "reject_orders", "reject_code",
                  "reject_message", "rate_limit_requests", "timeout_requests",
                  "order_timeout_s", "partial_fills", "partial_fill_ratio", "delay_fills",
                  "fill_delay_s", "expire_listen_key_after")


async def _replay_server(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        print(f"riskmon: recording not found: {args.file}", file=sys.stderr)
        return 2
    if args.speed < 0:
        raise ConfigError("--speed", "must be 0 (no pacing) or a positive number")
    faults = {name: getattr(args, name) for name in _FAULT_OPTIONS}
    faults["read_only_keys"] = frozenset(args.read_only_key)
    stop = asyncio.Event()
    _stop_on_signals(stop)
    venue = VENUES.venue(args.venue, "--venue")
    task = asyncio.create_task(venue.serve_replay(args.file, args.host, args.port,
                                                  args.speed or None, faults, _status_line,
                                                  rest_port=args.rest_port))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    task.cancel()
    stopper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return 0


def riskmon_version() -> str:
    """The installed package's version."""
    try:
        return importlib.metadata.version("riskmon")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _event_time(value: str | None, option: str) -> int | None:
    """``--from`` / ``--to``: epoch milliseconds, or ISO 8601 (UTC unless it says)."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(option, f"{value!r} is neither ISO 8601 nor epoch milliseconds"
                          ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _levels_from(level: str | None, option: str) -> list[str] | None:
    """The levels at ``level`` or worse; a name that is no level is a usage error."""
    if level is None:
        return None
    found = level_named(level)
    if found is None:
        raise ConfigError(option, f"unknown level {level!r}; levels: {', '.join(LEVELS)}")
    return list(LEVELS[LEVEL_RANK[found]:])


def _check_kinds(kinds: list[str] | None) -> None:
    unknown = sorted(set(kinds or ()) - set(ALERT_KINDS))
    if unknown:
        raise ConfigError("--kind", f"unknown kind {', '.join(map(repr, unknown))}; kinds: "
                                    f"{', '.join(ALERT_KINDS)}")


async def _alerts(args: argparse.Namespace) -> int:
    _check_kinds(args.kind)
    levels = _levels_from(args.level, "--level")
    from_ts = _event_time(args.from_ts, "--from")
    to_ts = _event_time(args.to_ts, "--to")
    if args.limit is not None and args.limit < 0:
        raise ConfigError("--limit", "must not be negative")
    if not args.db.is_file():
        print(f"riskmon: database not found: {args.db}", file=sys.stderr)
        return 2
    store = await SqliteStore.open(args.db, read_only=True)
    try:
        after = 0
        if args.since is not None:
            seq = await store.alert_seq(args.since)
            if seq is None:
                raise ConfigError("--since", f"no stored alert has the id {args.since!r}")
            after = seq
        stored = await store.stored_alerts(after, accounts=args.account, kinds=args.kind,
                                           levels=levels, limit=args.limit,
                                           from_ts=from_ts, to_ts=to_ts)
    finally:
        await store.close()
    out = sys.stdout
    if out.isatty() and not args.json:
        alerts = [entry.alert.to_dict() for entry in stored]
        out.write(alerts_table(alerts) if alerts else "no alerts match\n")
    else:
        buffer = out.buffer
        for entry in stored:
            buffer.write(entry.json + b"\n")
    out.flush()
    return 0


def _check_config(args: argparse.Namespace) -> int:
    """Every error of the configuration at once; with what ``run`` needs unless --offline."""
    try:
        raw = read_config(args.config)
    except ConfigError as e:
        print(f"riskmon: configuration error: {e}", file=sys.stderr)
        return 2
    errors = check_config(raw)
    if not errors:
        parsed = parse_config(raw)
        errors = venue_errors(parsed, VENUES)
        if not errors:
            try:
                daemon_venues(parsed)
            except ConfigError as e:
                errors.append(e)
    if not errors and not args.offline:
        config = parse_config(raw)
        if not config.accounts:
            errors.append(ConfigError("accounts", "riskmon run needs at least one "
                                                  "[accounts.NAME] table"))
        on = account_venues(config, VENUES)
        for name, account in config.accounts.items():
            try:
                VENUES.venues[on[name]].credentials(account)
            except ConfigError as e:
                errors.append(e)
        try:
            load_tokens(config.stream.tokens)
        except ConfigError as e:
            errors.append(e)
        try:
            check_stream_exposure(config)
        except ConfigError as e:
            errors.append(e)
    for error in errors:
        print(f"{args.config}: {error.key}: {error.message}", file=sys.stderr)
    if errors:
        print(f"{len(errors)} error{'s' if len(errors) != 1 else ''} in {args.config}",
              file=sys.stderr)
        return 2
    print(f"{args.config}: ok")
    return 0


def _replay_engine(config: Config) -> tuple[MarginEngine, LineDecoder]:
    """The engine a recording replays into (its venue's margin rules applied) and the
    venue's line decoder; ConfigError when the accounts are on several venues."""
    use = single_venue(config)
    return MarginEngine(venue_config(config, use)), use.venue.decoder().decode_line


async def _replay_quietly(recording: Path, config: Config) -> tuple[MarginEngine, Batch]:
    """Replay a recording in memory: the engine at its end and every record produced."""
    if not await asyncio.to_thread(recording.is_file):
        raise ConfigError("--recording", f"recording not found: {recording}")
    engine, decode_line = _replay_engine(config)
    processor = LineProcessor(engine, decode_line, str(recording),
                              int(config.storage.history_interval_s * 1000))
    collected: list[Batch] = []

    class Keep:
        name = "keep"

        async def write(self, batch: Batch) -> None:
            collected.append(batch)

        async def close(self) -> None:
            return None

    await replay_file(recording, processor, SinkTask(Keep()))
    return engine, Batch.merged(collected)


def _config_or_default(path: Path | None, needed_for: str | None = None) -> Config:
    if path is None:
        if needed_for is not None:
            raise ConfigError("--config", f"required with {needed_for}")
        return Config()
    return load_config(path)


async def _status_command(args: argparse.Namespace) -> int:
    document: dict[str, Any]
    if args.url is not None:
        token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
        config = _config_or_default(args.config)
        document = await asyncio.to_thread(fetch_status, args.url, token)
    elif args.db is not None:
        config = _config_or_default(args.config)
        if not args.db.is_file():
            print(f"riskmon: database not found: {args.db}", file=sys.stderr)
            return 2
        store = await SqliteStore.open(args.db, read_only=True)
        try:
            points = await store.latest_margin()
        finally:
            await store.close()
        accounts = from_history(points)
        document = status_document("database", max((p.ts for p in points), default=0),
                                   accounts, config.risk)
    else:
        config = _config_or_default(args.config, "--recording")
        engine, _ = await _replay_quietly(args.recording, config)
        document = status_document("replay", engine.now_ms, engine.state(), config.risk)
    out = sys.stdout
    if out.isatty() and not args.json:
        out.write(status_table(document))
    else:
        out.buffer.write(orjson.dumps(document) + b"\n")
    out.flush()
    return 0


async def _report(args: argparse.Namespace) -> int:
    if args.db is not None:
        config = _config_or_default(args.config)
        if not args.db.is_file():
            print(f"riskmon: database not found: {args.db}", file=sys.stderr)
            return 2
        store = await SqliteStore.open(args.db, read_only=True)
        try:
            names = args.account or await store.history_accounts()
            histories = {name: await store.margin_history(name) for name in names}
            stored = await store.stored_alerts(0, accounts=names)
        finally:
            await store.close()
        alerts = [entry.alert for entry in stored]
    else:
        config = _config_or_default(args.config, "--recording")
        # A finer margin history than a daemon stores: the chart is the point here.
        config = replace(config, storage=replace(config.storage, history_interval_s=1.0))
        engine, replayed = await _replay_quietly(args.recording, config)
        names = args.account or sorted(engine.account_names())
        histories = {name: sorted((point for point in replayed.history
                                   if point.account == name), key=lambda point: point.ts)
                     for name in names}
        alerts = list(replayed.alerts)
    args.out.mkdir(parents=True, exist_ok=True)
    chromium = None if args.no_png else find_chromium()
    for name in names:
        page = args.out / f"report-{_file_safe(name)}.html"
        account_alerts = [alert for alert in alerts if alert.account == name]
        page.write_text(render_html(name, histories.get(name, []), account_alerts,
                                    config.risk))
        written = [str(page)]
        if chromium is not None:
            png = page.with_suffix(".png")
            try:
                await asyncio.to_thread(partial(render_png, page, png, chromium,
                                                height=page_height(len(account_alerts))))
                written.append(str(png))
            except (OSError, subprocess.SubprocessError) as e:
                print(f"riskmon: no PNG for {name}: Chromium failed ({e})", file=sys.stderr)
        _status_line({"event": "report", "account": name, "files": written})
    if chromium is None and not args.no_png:
        print("riskmon: no Chromium found (set RISKMON_CHROMIUM): HTML only", file=sys.stderr)
    return 0


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


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
