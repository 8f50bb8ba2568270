"""Live-path benchmark on loopback (issue 3: the daemon, ``riskmon run``).

Run from the repository root:  .venv/bin/python -m bench.live_bench [--quick]
(pure Python), or .venv-native/bin/python -m bench.live_bench for the build compiled by
mypyc: the bench measures the riskmon its interpreter has installed (bench/subject.py:
``riskmon.monitor`` of an installed build, which the source tree on sys.path cannot
shadow); the first line printed says which build.

Two processes on this machine:

  sender    this file run with ``--serve`` (a subprocess): one websockets server on
            127.0.0.1 that speaks as much OKX v5 as riskmon's live adapter uses.
            ``/ws/v5/public``: subscribe / unsubscribe acknowledged per argument
            (``{"event", "arg", "connId"}``), text ``ping`` answered ``pong``.
            ``/ws/v5/private``: ``login`` answered ``{"event": "login", "code": "0", "msg":
            "", "connId"}`` (no signature check: the credentials are dummies), subscribes
            acknowledged, then an ``account`` snapshot (3,000 USDT) and a ``positions``
            snapshot (long 100 contracts of each of 20 instruments; see Scenario), in the
            frame shapes of examples/story.jsonl. Every ``GET /api/v5/...`` (orders-pending,
            the account's config, balance and positions, instruments, tiers, discount
            rates) answers ``{"code": "0", "msg": "", "data": []}`` on the same port
            (websockets' ``process_request`` hook): instruments come from the
            configuration, the state from the snapshots. No permessage-deflate is negotiated: OKX v5
            pushes plain JSON text, and the figures should measure riskmon, not zlib.
            ``/bench/control`` is the benchmark's own websocket: "wait until the daemon's
            (or the floor client's) public connection has subscribed every mark price" and
            "push mark prices to it at R frames/s for S seconds".
  receiver  this process: riskmon's real components composed as monitor/app/cli.py ``_run``
            does: ``OkxFeed`` -> ``Inbox`` -> ``Daemon`` (``OkxDecoder``, ``MarginEngine``)
            -> head ``SinkTask(SqliteSink(store))`` on a temporary file opened with
            ``SqliteStore.open(path, synchronous="FULL", auto_checkpoint=False)`` beside a
            ``WalCheckpointer`` at ``storage.checkpoint_interval_s`` (60 s), as ``riskmon
            run`` opens it (no commit copies the WAL), whose follower is
            :class:`StoredProbe` (a Sink of this file). Persist before publish: the probe
            receives a batch only after SQLite committed it, and notes ``time.time()`` for
            each alert in it. (``riskmon run`` also has a LogSink follower, which logs each
            alert; it is left out here, and nothing in this process logs per event.)

Pushing. Mark-price frames ``{"arg": {"channel": "mark-price", "instId"}, "data":
[{"instId", "instType": "SWAP", "markPx", "ts"}]}`` go round-robin over the instruments on a
monotonic schedule: frame k is due ``k / R`` seconds after the start; the sender wakes about
once a millisecond (the event loop's timer resolution) and sends every frame due by then,
so at 10,000 frames/s they leave in bursts of about 10, each burst framed by the sender and
written to the socket at once (``Sender._push`` says why). ``ts`` is the sender's wall
clock in ms at the burst. The prices follow a triangle wave of ``--period`` frames (default 200)
that takes the account's margin ratio from 1.60 down to 0.95 and back (levels at 1.50, 1.20
and 1.00, hysteresis 0.02): every period it crosses into warning, withdrawal_lock and
deleverage (with a deleverage_plan) and back out, about 7 alerts per 200 frames, so alerts
are stored all through each measurement (350 a second at 10,000 frames/s).

Measured, in one run:

  storage   bare ``sqlite3`` commits of one row each (WAL, ``synchronous=FULL``) in the
            same directory, before the latency runs and after each of their windows: the
            disk's own commit latency (it varies a lot on a shared virtual disk, from one
            minute to the next), a lower bound of the alert latency.
  latency   at 1,000 and 10,000 frames/s, in ``--windows`` windows (default 3) of
            ``--seconds`` each (default 6), each followed by 100 bare commits (above), so
            that every window's figures sit beside the disk's at that time. For every
            alert, from the full-resolution wall time at which the feed delivered its
            triggering frame (a tap on the feed's deliver callback notes it, keyed by
            instrument, ts and markPx, which the alert carries):
              stored     until the alert's ``write_batch`` (one transaction, BEGIN
                         IMMEDIATE .. COMMIT) has returned to the daemon: the alert is in
                         SQLite and the daemon knows it. A subclass of the real store
                         (:class:`TimedStore`) notes when each alert's ``write_batch``
                         started and returned. This is the figure the target is about.
              published  until the follower sink has the batch (persist before publish:
                         :class:`StoredProbe`, standing in for the log and the subscribers).
            p50, p99 and max; also "stored" from the alert's ``emitted_ms`` (the adapter's
            wall-clock receive time, whole milliseconds, truncated: it overstates the
            latency by 0 to 1 ms, 0.5 ms on average), alerts, commits (batches the follower
            received) and the inbox conflation count. Where the time goes: engine and queues
            until ``write_batch`` starts / the transaction / the hand-off to the follower.
            The target is judged on the median window's p99 (all are printed): one window
            in which the shared disk stalls says more about the disk than about the daemon,
            and its own storage figure shows it.
  sustained the highest rate the daemon keeps up with: rates double from
            ``--start-rate`` until one fails, then ``--refine`` bisection steps. A probe
            pushes R frames/s for ``--window`` seconds (default 3) while this process samples,
            every 20 ms, the lag (wall clock minus the exchange time of the newest event the
            engine applied, i.e. the newest ``ts``) and the inbox depth. R is *sustained*
            when (1) the sender kept its schedule (all frames sent within 2 % + 20 ms of the
            window; when it did not, and not mostly because TCP flow control held it back,
            the probe is "sender-limited" and proves nothing; when the receiver held it
            back, the receiver failed), (2) frames applied per second between the second
            and last fifth of the window are at least 97 % of R, (3) the median lag of the
            last fifth exceeds that of the second fifth by at most 10 ms (the lag does not
            grow) and (4) at least 97 % of the frames were applied. Conflation under
            pressure is by design (monitor.runtime.feed) and is reported; a transient that conflates
            a few frames without the lag growing does not fail a rate, (2) and (4) fail one
            that needs conflation to keep up. A failed probe is run once more (not with
            ``--quick``), so one noisy second of a shared machine does not end the search.
  floor     the same search for a bare websockets client (``connect`` with OkxFeed's
            options, but websockets' own connection class, not riskmon's PushConnection:
            ``async for message in ws``) on the same sender that only receives and
            ``orjson.loads`` each frame;
            its lag is the wall clock minus the ``ts`` of the last frame parsed. The two
            searches advance in turns, one probe each, so the machine's noise falls on
            both alike; the ratio is printed with the bounds its two search brackets allow.

Targets (issue 3): receive-to-stored p99 at most 2 ms at 10,000 frames/s; sustained rate at
least half the floor's. The machine has 2 cores shared by the sender, the receiver (and
SQLite's worker thread) and whatever else runs: the output prints each side's CPU use and
the load average; compare the ratios measured in the same run, the absolute rates move
with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import select
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from bench.subject import (
    AccountCheckpoint,
    Alert,
    Batch,
    Config,
    Credentials,
    Daemon,
    FeedItem,
    Frame,
    Inbox,
    Lane,
    MarginEngine,
    MarginPoint,
    OkxDecoder,
    OkxFeed,
    QuarantineRecord,
    SinkTask,
    SqliteSink,
    SqliteStore,
    StoredAlert,
    WalCheckpointer,
    configure_logging,
    engine_file,
    parse_config,
    single_venue,
    tune_interpreter,
)

PUBLIC_PATH: Final = "/ws/v5/public"
PRIVATE_PATH: Final = "/ws/v5/private"
CONTROL_PATH: Final = "/bench/control"
REST_PREFIX: Final = "/api/v5/"
ACCOUNT: Final = "bench"
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024  # as adapters.okx.live
PRICE_DECIMALS: Final = 4
SAMPLE_EVERY_S: Final = 0.02
LATENCY_RATES: Final = (1_000, 10_000)
LATENCY_TARGET_MS: Final = 2.0
FLOOR_RATIO_TARGET: Final = 0.5


# --- the scenario (both processes) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    """One account long ``contracts`` of every instrument at ``entry_price``, in USDT.

    Linear contracts of value 1, one maintenance tier of ``maintenance_rate``. With all
    marks at m the account's margin ratio is (SPEC 1.5, USDT at 1)::

        MR(m) = (cash + N q (m - entry)) / (N q m rate)

    so the mark giving a ratio is ``m = (entry - cash / (N q)) / (1 - rate * MR)``. The cash
    puts MR at ``ratio_at_entry`` before any mark arrives (positions are valued at entry).
    """

    instruments: int = 20
    period: int = 200
    contracts: float = 100.0
    entry_price: float = 100.0
    maintenance_rate: float = 0.01
    leverage: float = 20.0
    ratio_at_entry: float = 1.5
    ratio_high: float = 1.6
    ratio_low: float = 0.95

    @property
    def cash(self) -> float:
        notional = self.instruments * self.contracts * self.entry_price
        return self.ratio_at_entry * notional * self.maintenance_rate

    def inst_ids(self) -> list[str]:
        return [f"B{number:02d}-USDT-SWAP" for number in range(self.instruments)]

    def mark_for_ratio(self, ratio: float) -> float:
        per_contract_cash = self.cash / (self.instruments * self.contracts)
        return (self.entry_price - per_contract_cash) / (1.0 - self.maintenance_rate * ratio)

    def price_path(self) -> list[str]:
        """``markPx`` of frame k is ``path[k % period]``: a triangle wave in margin ratio."""
        path = []
        for step in range(self.period):
            depth = 1.0 - abs(2.0 * step / self.period - 1.0)  # 0 -> 1 -> 0
            ratio = self.ratio_high - (self.ratio_high - self.ratio_low) * depth
            path.append(f"{self.mark_for_ratio(ratio):.{PRICE_DECIMALS}f}")
        return path

    def config(self, port: int, database: Path) -> Config:
        """riskmon's configuration: default levels, these instruments, the sender's URLs.

        Staleness and reminders are pushed out of the way: the pauses between probes must
        not produce feed_stale alerts, and the latency figures are of mark-driven alerts.
        """
        return parse_config({
            "risk": {"stale_after_s": 3600.0, "repeat_interval_s": 3600.0},
            "instruments": [
                {"inst_id": inst_id, "ct_type": "linear", "ct_val": 1, "ct_mult": 1,
                 "ct_val_ccy": inst_id.split("-", 1)[0], "settle_ccy": "USDT",
                 "max_leverage": 100, "lot_size": 1,
                 "tiers": [{"max_contracts": 1e15, "mmr": self.maintenance_rate}]}
                for inst_id in self.inst_ids()
            ],
            "accounts": {ACCOUNT: {}},
            "okx": {"public_url": f"ws://127.0.0.1:{port}{PUBLIC_PATH}",
                    "private_url": f"ws://127.0.0.1:{port}{PRIVATE_PATH}",
                    "rest_url": f"http://127.0.0.1:{port}"},
            "storage": {"sqlite_path": str(database), "synchronous": "FULL"},
        })


# --- the sender process ---------------------------------------------------------------------


@dataclass
class _PublicLink:
    connection: ServerConnection
    marks: set[str] = field(default_factory=set)


class Sender:
    """The sender's websocket server (see the module docstring)."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.inst_ids = scenario.inst_ids()
        self.heads = [
            (f'{{"arg":{{"channel":"mark-price","instId":"{inst_id}"}},'
             f'"data":[{{"instId":"{inst_id}","instType":"SWAP","markPx":"').encode()
            for inst_id in self.inst_ids
        ]
        self.path = [price.encode() for price in scenario.price_path()]
        self.next_frame = 0  # the price path continues across pushes
        self.public: dict[str, _PublicLink] = {}  # by client tag: "daemon", "floor"
        self._conn_ids = itertools.count(1)

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path in (PUBLIC_PATH, PRIVATE_PATH, CONTROL_PATH):
            return None
        if path.startswith(REST_PREFIX):
            # orders-pending, the account's config, balance and positions, instruments,
            # tiers, discount rates: all empty, the websocket snapshots carry the state.
            return _json_response(HTTPStatus.OK, {"code": "0", "msg": "", "data": []})
        return _json_response(HTTPStatus.NOT_FOUND,
                              {"code": "404", "msg": f"Not Found: {path}", "data": []})

    async def handle(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        split = urlsplit(connection.request.path)
        conn_id = f"{next(self._conn_ids):08x}"
        try:
            if split.path == PUBLIC_PATH:
                tag = parse_qs(split.query).get("client", ["daemon"])[0]
                await self._public(connection, conn_id, tag)
            elif split.path == PRIVATE_PATH:
                await self._private(connection, conn_id)
            elif split.path == CONTROL_PATH:
                await self._control(connection)
        except ConnectionClosed:
            pass

    async def _public(self, connection: ServerConnection, conn_id: str, tag: str) -> None:
        link = _PublicLink(connection)
        self.public[tag] = link
        try:
            async for message in connection:
                if message == "ping":
                    await connection.send("pong")
                    continue
                request = _loads_object(message)
                op = request.get("op") if request is not None else None
                if op not in ("subscribe", "unsubscribe"):
                    await connection.send(_error("60012", "Invalid request", conn_id))
                    continue
                assert request is not None
                for arg in request.get("args") or []:
                    if arg.get("channel") == "mark-price":
                        if op == "subscribe":
                            link.marks.add(arg.get("instId"))
                        else:
                            link.marks.discard(arg.get("instId"))
                    await connection.send(_dumps({"event": op, "arg": arg, "connId": conn_id}))
        finally:
            if self.public.get(tag) is link:
                del self.public[tag]

    async def _private(self, connection: ServerConnection, conn_id: str) -> None:
        logged_in = False
        async for message in connection:
            if message == "ping":
                await connection.send("pong")
                continue
            request = _loads_object(message)
            op = request.get("op") if request is not None else None
            if request is not None and op == "login":
                args = request.get("args") or [{}]
                if not all(args[0].get(name) for name in ("apiKey", "passphrase", "timestamp",
                                                          "sign")):
                    await connection.send(_error("60009", "Login failed.", conn_id))
                    continue
                logged_in = True
                await connection.send(_dumps({"event": "login", "code": "0", "msg": "",
                                              "connId": conn_id}))
            elif request is not None and op == "subscribe" and logged_in:
                channels = []
                for arg in request.get("args") or []:
                    channels.append(arg.get("channel"))
                    await connection.send(_dumps({"event": "subscribe", "arg": arg,
                                                  "connId": conn_id}))
                # OKX pushes a snapshot on subscribing to account and positions.
                if "account" in channels:
                    await connection.send(_dumps(self._account_snapshot()))
                if "positions" in channels:
                    await connection.send(_dumps(self._positions_snapshot()))
            elif op == "subscribe":
                await connection.send(_error("60011", "Please log in", conn_id))
            else:
                await connection.send(_error("60012", "Invalid request", conn_id))

    def _account_snapshot(self) -> dict[str, Any]:
        now = str(_wall_ms())
        cash = f"{self.scenario.cash:.2f}"
        return {
            "arg": {"channel": "account", "uid": ACCOUNT}, "eventType": "snapshot",
            "curPage": 1, "lastPage": True,
            "data": [{"uTime": now, "totalEq": "", "adjEq": "", "imr": "", "mmr": "",
                      "mgnRatio": "", "notionalUsd": "", "ordFroz": "",
                      "details": [{"ccy": "USDT", "cashBal": cash, "eq": cash, "liab": "",
                                   "interest": "", "upl": "0", "uTime": now,
                                   "availBal": cash, "frozenBal": "0", "mgnRatio": "",
                                   "notionalLever": ""}]}],
        }

    def _positions_snapshot(self) -> dict[str, Any]:
        now = str(_wall_ms())
        scenario = self.scenario
        return {
            "arg": {"channel": "positions", "instType": "ANY", "uid": ACCOUNT},
            "eventType": "snapshot", "curPage": 1, "lastPage": True,
            "data": [{"instType": "SWAP", "instId": inst_id, "mgnMode": "cross",
                      "posSide": "net", "pos": f"{scenario.contracts:g}",
                      "avgPx": f"{scenario.entry_price:.2f}", "lever": f"{scenario.leverage:g}",
                      "ccy": "USDT", "posId": str(1_000_000 + number), "upl": "", "imr": "",
                      "mmr": "", "mgnRatio": "", "liqPx": "", "markPx": "", "uTime": now,
                      "cTime": now}
                     for number, inst_id in enumerate(self.inst_ids)],
        }

    async def _control(self, connection: ServerConnection) -> None:
        async for message in connection:
            command = orjson.loads(message)
            match command.get("op"):
                case "ready":
                    ready = await self._wait_ready(command["target"], command["timeout_s"])
                    await connection.send(_dumps({"ready": ready}))
                case "push":
                    link = self._ready_link(command["target"])
                    if link is None:
                        await connection.send(_dumps({"error": "target not subscribed"}))
                        continue
                    result = await self._push(link.connection, float(command["rate"]),
                                              float(command["seconds"]))
                    await connection.send(_dumps(result))

    def _ready_link(self, target: str) -> _PublicLink | None:
        link = self.public.get(target)
        if link is None or not link.marks.issuperset(self.inst_ids):
            return None
        return link

    async def _wait_ready(self, target: str, timeout_s: float) -> bool:
        return await poll(lambda: self._ready_link(target) is not None, timeout_s)

    async def _push(self, connection: ServerConnection, rate: float,
                    seconds: float) -> dict[str, Any]:
        """Frame k at ``start + k / rate``, in bursts of whatever is due when it wakes.

        A burst is written to the transport in one call, its frames encoded here
        (:func:`_text_frame`): ``connection.send`` costs a system call and several
        microseconds per message, which made the sender, not the receiver, the limit of
        the floor measurement. Flow control is websockets' own (``drain``); time spent
        waiting in it is the receiver pushing back, reported as ``blocked_s``.
        """
        total = max(1, round(rate * seconds))
        heads, path = self.heads, self.path
        instruments, period = len(heads), len(path)
        first = self.next_frame
        transport = connection.transport
        monotonic = time.monotonic
        cpu_start = time.process_time()
        start = monotonic()
        sent = 0
        worst_late_s = blocked_s = 0.0
        bursts = 0
        first_ts = last_ts = 0
        while sent < total:
            now = monotonic()
            due = min(total, int((now - start) * rate) + 1)
            if due > sent:
                if connection.protocol.state is not State.OPEN:
                    return {"error": "the target connection closed"}
                worst_late_s = max(worst_late_s, now - (start + sent / rate))
                bursts += 1
                ts = time.time_ns() // 1_000_000
                first_ts = first_ts or ts
                last_ts = ts
                tail = b'","ts":"%d"}]}' % ts
                transport.write(b"".join([
                    _text_frame(heads[k % instruments] + path[k % period] + tail)
                    for k in range(first + sent, first + due)
                ]))
                sent = due
                before = monotonic()
                await connection.drain()
                blocked_s += monotonic() - before
            wait = start + sent / rate - monotonic()
            # Yield even when late, so pings and other connections are served.
            await asyncio.sleep(max(wait, 0.0))
        elapsed = monotonic() - start
        self.next_frame = first + total
        return {"sent": sent, "elapsed_s": elapsed, "worst_late_ms": worst_late_s * 1000,
                "blocked_s": blocked_s, "bursts": bursts, "first_ts": first_ts,
                "last_ts": last_ts, "cpu_s": time.process_time() - cpu_start}


def _text_frame(payload: bytes) -> bytes:
    """One unfragmented text frame: FIN and opcode 1, then the payload length (RFC 6455
    5.2); a server never masks (5.1). No extension is negotiated (compression=None)."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big") + payload
    return b"\x81\x7f" + length.to_bytes(8, "big") + payload


def _json_response(status: HTTPStatus, body: dict[str, Any]) -> Response:
    data = orjson.dumps(body)
    headers = Headers([("Content-Type", "application/json"),
                       ("Content-Length", str(len(data)))])
    return Response(status.value, status.phrase, headers, data)


def _error(code: str, msg: str, conn_id: str) -> str:
    return _dumps({"event": "error", "code": code, "msg": msg, "connId": conn_id})


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _loads_object(message: str | bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


async def poll(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Until ``condition()`` holds (True) or ``timeout_s`` has passed (False). What is
    waited for here (a subscription, a count, a commit) offers no event to wait on."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


async def run_sender(scenario: Scenario) -> None:
    """Serve until killed; the bound port goes to standard output as one JSON line."""
    sender = Sender(scenario)
    async with serve(sender.handle, "127.0.0.1", 0, process_request=sender.process_request,
                     ping_interval=None, compression=None,
                     max_size=MAX_MESSAGE_BYTES) as server:
        port = server.sockets[0].getsockname()[1]
        sys.stdout.write(_dumps({"port": port, "pid": os.getpid()}) + "\n")
        sys.stdout.flush()
        await asyncio.get_running_loop().create_future()


# --- the receiver side ----------------------------------------------------------------------


class TimedStore(SqliteStore):
    """The real store, noting when each alert's ``write_batch`` (BEGIN ... COMMIT, one
    transaction) started and ended, to split the latency into its stages (while ``noting``:
    during the latency runs, so that the alerts of the sustained-rate search do not pile up
    in this process's memory, which the daemon would not do)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spans: dict[str, tuple[float, float]] = {}
        self.noting = False

    async def write_batch(
        self,
        *,
        alerts: Sequence[Alert] = (),
        quarantine: Sequence[QuarantineRecord] = (),
        history: Sequence[MarginPoint] = (),
        checkpoints: Sequence[AccountCheckpoint] = (),
        quarantine_counts: Mapping[str, int] | None = None,
        alert_json: Sequence[bytes] | None = None,
        synced: bool = True,
    ) -> list[StoredAlert]:
        start = time.time()
        inserted = await super().write_batch(alerts=alerts, quarantine=quarantine,
                                             history=history, checkpoints=checkpoints,
                                             quarantine_counts=quarantine_counts,
                                             alert_json=alert_json, synced=synced)
        end = time.time()
        if self.noting:
            for alert in alerts:
                self.spans[alert.id] = (start, end)
        return inserted


class StoredProbe:
    """A follower Sink: the wall time at which each alert's batch reached it, which is
    after SQLite committed the batch (persist before publish). Alerts are kept only while
    ``noting`` (as :class:`TimedStore`); they are counted always."""

    name = "latency-probe"

    def __init__(self) -> None:
        self.stored: list[tuple[float, Alert]] = []
        self.noting = False
        self.alerts_seen = 0
        self.batches_with_alerts = 0

    async def write(self, batch: Batch) -> None:
        now = time.time()
        count = len(batch.alerts)
        if self.noting:
            self.stored += [(now, alert) for alert in batch.alerts]
        if count:
            self.alerts_seen += count
            self.batches_with_alerts += 1

    async def close(self) -> None:
        return None


class ReceiveTap:
    """Wraps the feed's deliver callback: notes the full-resolution wall time of every
    mark-price frame, keyed by instId, ts and markPx as the frame has them.

    The key is one string, not a tuple: the tap keeps tens of thousands of entries per
    latency window, and tuples would be objects for the cyclic garbage collector to walk
    (and to be triggered by), pausing the daemon it measures."""

    def __init__(self, put: Callable[[FeedItem], None]) -> None:
        self.put = put
        self.times: dict[str, float] = {}

    def __call__(self, item: FeedItem) -> None:
        if type(item) is not Frame or item.conflate_key is None:
            self.put(item)
            return
        now = time.time()
        self.put(item)
        # The feed delivers frames unparsed: parsed here for the key, after the frame is
        # in the inbox (the engine task runs later, in this same thread).
        row = orjson.loads(item.text)["data"][0]
        self.times[f"{row['instId']} {row['ts']} {row['markPx']}"] = now

    def received(self, alert: Alert) -> float | None:
        if alert.mark is None or alert.inst_id is None:
            return None
        return self.times.get(f"{alert.inst_id} {alert.ts} {alert.mark:.{PRICE_DECIMALS}f}")


class Receiver(Protocol):
    """What a probe reads from the side under test."""

    target: str

    def handled(self) -> int:
        """Frames processed (daemon: taken from the inbox and applied; floor: parsed)."""

    def conflated(self) -> int: ...

    def lag_ms(self, now_ms: float) -> float | None:
        """Wall clock minus the ``ts`` of the newest frame processed."""

    def depth(self) -> int: ...


class DaemonUnderTest:
    """riskmon's daemon composed like monitor/app/cli.py ``_run`` (see the module docstring)."""

    target = "daemon"

    def __init__(self, config: Config, store: TimedStore) -> None:
        self.store = store
        self.probe = StoredProbe()
        head = SinkTask(SqliteSink(store, prune=True), followers=[SinkTask(self.probe)])
        self.inbox = Inbox()
        credentials = Credentials("bench-key", "bench-secret", "bench-passphrase")
        self.feed = OkxFeed(single_venue(config).settings, {ACCOUNT: credentials},
                            self.inbox.put, collateral=config.collateral.keys())
        self.daemon = Daemon([Lane(MarginEngine(config), OkxDecoder(), self.feed, self.inbox)],
                             head,
                             history_interval_ms=int(config.storage.history_interval_s * 1000))
        self.tap = ReceiveTap(self.inbox.put)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.daemon.run(self.stop), name="daemon")

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task

    def tap_receive_times(self, on: bool) -> None:
        """Route the feed through the tap (from a clean slate), or straight to the inbox."""
        if on:
            self.tap.times.clear()
        self.feed.set_deliver(self.tap if on else self.inbox.put)

    def handled(self) -> int:
        return self.daemon.metrics.frames

    def conflated(self) -> int:
        return self.inbox.conflated

    def lag_ms(self, now_ms: float) -> float | None:
        event_ms = self.daemon.now_ms
        return now_ms - event_ms if event_ms else None

    def depth(self) -> int:
        return len(self.inbox)

    def stored_everything(self) -> bool:
        """Every alert emitted so far has reached the probe (SQLite committed it)."""
        return self.probe.alerts_seen == self.daemon.stats.alerts


class FloorClient:
    """A bare websockets client: receive, ``orjson.loads``, nothing else."""

    target = "floor"

    def __init__(self) -> None:
        self.count = 0
        self.last: Any = None
        self.ws: ClientConnection | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self, port: int, inst_ids: list[str]) -> None:
        # The connect options of adapters.okx.live._Link.run, but websockets' own connection
        # class (recv() per message): the floor is the library as it comes.
        self.ws = await connect(f"ws://127.0.0.1:{port}{PUBLIC_PATH}?client=floor",
                                ping_interval=None, close_timeout=2,
                                max_size=MAX_MESSAGE_BYTES)
        await self.ws.send(_dumps({"op": "subscribe", "args": [
            {"channel": "mark-price", "instId": inst_id} for inst_id in inst_ids]}))
        self.task = asyncio.create_task(self._read(self.ws), name="floor")

    async def _read(self, ws: ClientConnection) -> None:
        loads = orjson.loads
        async for message in ws:
            self.last = loads(message)
            self.count += 1

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)

    def handled(self) -> int:
        return self.count

    def conflated(self) -> int:
        return 0

    def lag_ms(self, now_ms: float) -> float | None:
        last = self.last
        if type(last) is not dict or "data" not in last:
            return None
        return now_ms - int(last["data"][0]["ts"])

    def depth(self) -> int:
        return 0


class Control:
    """The benchmark's control connection to the sender."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def call(self, command: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        await self.ws.send(_dumps(command))
        reply: dict[str, Any] = orjson.loads(await asyncio.wait_for(self.ws.recv(), timeout_s))
        if "error" in reply:
            raise RuntimeError(f"sender: {reply['error']}")
        return reply

    async def ready(self, target: str, timeout_s: float = 30.0) -> None:
        reply = await self.call({"op": "ready", "target": target, "timeout_s": timeout_s},
                                timeout_s + 5)
        if not reply["ready"]:
            raise RuntimeError(f"{target}: no subscription to every mark price in {timeout_s} s")

    async def push(self, target: str, rate: float, seconds: float) -> dict[str, Any]:
        return await self.call({"op": "push", "target": target, "rate": rate,
                                "seconds": seconds}, seconds * 3 + 30)


# --- probes ---------------------------------------------------------------------------------


@dataclass
class ProbeResult:
    target: str
    rate: float
    seconds: float
    sent: int
    sender_elapsed_s: float
    sender_worst_late_ms: float
    sender_blocked_s: float  # waiting for the receiver (TCP flow control)
    sender_cpu: float  # share of one core during the push
    handled: int
    conflated: int
    steady_rate: float
    early_lag_ms: float
    late_lag_ms: float
    max_depth: int
    receiver_cpu: float  # this process (receiver, SQLite thread), share of one core
    drained_s: float  # after the sender's last frame, until everything was handled

    @property
    def sender_kept_up(self) -> bool:
        return (self.sent == max(1, round(self.rate * self.seconds))
                and self.sender_elapsed_s <= self.seconds * 1.02 + 0.02)

    @property
    def sender_limited(self) -> bool:
        """Late on its schedule, and not mostly because the receiver pushed back."""
        late_s = self.sender_elapsed_s - self.seconds
        return not self.sender_kept_up and self.sender_blocked_s < late_s / 2

    def verdict(self) -> tuple[bool, str]:
        """(sustained, why not); see the module docstring for the four conditions."""
        if self.sender_limited:
            return False, (f"sender-limited: {self.sent:,} frames took "
                           f"{self.sender_elapsed_s:.2f} s")
        problems = []
        if not self.sender_kept_up:
            problems.append(f"receiver pushed back for {self.sender_blocked_s:.2f} s")
        if self.steady_rate < 0.97 * self.rate:
            problems.append(f"applied {self.steady_rate:,.0f}/s")
        if self.late_lag_ms - self.early_lag_ms > 10.0:
            problems.append(f"lag grew {self.early_lag_ms:.1f} -> {self.late_lag_ms:.1f} ms")
        if self.handled < 0.97 * self.sent:
            problems.append(f"{self.conflated:,} conflated")
        return not problems, ", ".join(problems)


async def run_probe(control: Control, receiver: Receiver, rate: float,
                    seconds: float) -> ProbeResult:
    """Push ``rate`` frames/s for ``seconds`` to ``receiver``, sampling it meanwhile."""
    handled_before, conflated_before = receiver.handled(), receiver.conflated()
    samples: list[tuple[float, float | None, int, int]] = []  # (t, lag, handled, depth)

    async def sample() -> None:
        while True:
            now = time.monotonic()
            samples.append((now, receiver.lag_ms(time.time() * 1000), receiver.handled(),
                            receiver.depth()))
            await asyncio.sleep(SAMPLE_EVERY_S)

    cpu_start = time.process_time()
    start = time.monotonic()
    sampler = asyncio.create_task(sample())
    try:
        reply = await control.push(receiver.target, rate, seconds)
        pushed = time.monotonic()
        await poll(lambda: receiver.handled() - handled_before + receiver.conflated()
                   - conflated_before >= reply["sent"], 60.0)
        drained = time.monotonic()
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    receiver_cpu = (time.process_time() - cpu_start) / (drained - start)

    def window(low: float, high: float) -> list[tuple[float, float | None, int, int]]:
        return [s for s in samples if start + low * seconds <= s[0] <= start + high * seconds]

    early, late = window(0.2, 0.4), window(0.8, 1.0)
    steady_rate = 0.0
    if early and late and late[-1][0] > early[0][0]:
        steady_rate = (late[-1][2] - early[0][2]) / (late[-1][0] - early[0][0])
    return ProbeResult(
        target=receiver.target, rate=rate, seconds=seconds, sent=reply["sent"],
        sender_elapsed_s=reply["elapsed_s"], sender_worst_late_ms=reply["worst_late_ms"],
        sender_blocked_s=reply["blocked_s"],
        sender_cpu=reply["cpu_s"] / max(reply["elapsed_s"], 1e-9),
        handled=receiver.handled() - handled_before,
        conflated=receiver.conflated() - conflated_before,
        steady_rate=steady_rate, early_lag_ms=_median_lag(early), late_lag_ms=_median_lag(late),
        max_depth=max((s[3] for s in samples), default=0), receiver_cpu=receiver_cpu,
        drained_s=drained - pushed,
    )


def _median_lag(samples: list[tuple[float, float | None, int, int]]) -> float:
    lags = [s[1] for s in samples if s[1] is not None]
    return statistics.median(lags) if lags else math.inf


def probe_line(result: ProbeResult, sustained: bool, why: str) -> str:
    return (f"  {result.target:<7}{result.rate:>9,.0f}/s  sent {result.sent:>8,}  "
            f"applied {result.steady_rate:>9,.0f}/s  lag {result.early_lag_ms:>6.1f} -> "
            f"{result.late_lag_ms:>7.1f} ms  depth<={result.max_depth:>5,}  "
            f"conflated {result.conflated:>6,}  cpu recv {result.receiver_cpu:>4.0%} "
            f"send {result.sender_cpu:>4.0%}  "
            + ("sustained" if sustained else f"NOT sustained ({why})"))


class RateSearch:
    """The highest sustained rate: double from ``start_rate`` until a rate fails, then
    ``refine`` bisection steps (to a multiple of 100 frames/s) between the highest rate
    that held and the lowest that failed."""

    def __init__(self, start_rate: float, max_rate: float, refine: int) -> None:
        self.highest = 0.0  # 0 while no rate has held
        self.lowest_failed: float | None = None  # None: every rate up to max_rate held
        self.sender_limited = False  # the lowest failure was the sender's, not the receiver's
        self.next_rate: float | None = start_rate  # None: done
        self._max_rate = max_rate
        self._refine_left = refine

    def record(self, rate: float, held: bool, sender_limited: bool) -> None:
        bisecting = self.lowest_failed is not None
        if held:
            self.highest = rate
        else:
            self.lowest_failed, self.sender_limited = rate, sender_limited
        if self.lowest_failed is None:
            self.next_rate = rate * 2 if rate * 2 <= self._max_rate else None
            return
        if bisecting:
            self._refine_left -= 1
        middle = round((self.highest + self.lowest_failed) / 2, -2)
        self.next_rate = (middle if self._refine_left > 0
                          and self.highest < middle < self.lowest_failed else None)

    def describe(self) -> str:
        text = f"{self.highest:,.0f} frames/s"
        if self.lowest_failed is None:
            return text + " (every rate up to --max-rate held)"
        return text + (f" (failed at {self.lowest_failed:,.0f}"
                       + (", sender-limited)" if self.sender_limited else ")"))


async def holds(control: Control, receiver: Receiver, rate: float, window_s: float,
                attempts: int) -> tuple[bool, bool]:
    """(sustained, sender-limited): one probe, repeated up to ``attempts`` times while it
    fails."""
    limited = False
    for _attempt in range(attempts):
        result = await run_probe(control, receiver, rate, window_s)
        sustained, why = result.verdict()
        print(probe_line(result, sustained, why), flush=True)
        if sustained:
            return True, False
        limited = result.sender_limited
        await asyncio.sleep(0.3)  # let sockets and the machine settle
    return False, limited


async def search_alternately(control: Control, receivers: list[Receiver], start_rate: float,
                             max_rate: float, window_s: float, refine: int,
                             attempts: int) -> dict[str, RateSearch]:
    """One :class:`RateSearch` per receiver, advanced in turns (one probe each), so that
    the machine's noise falls on all of them alike (as replay_bench alternates b0 and
    b1)."""
    searches = {r.target: RateSearch(start_rate, max_rate, refine) for r in receivers}
    while any(search.next_rate is not None for search in searches.values()):
        for receiver in receivers:
            search = searches[receiver.target]
            rate = search.next_rate
            if rate is not None:
                search.record(rate, *await holds(control, receiver, rate, window_s,
                                                 attempts))
    return searches


# --- latency --------------------------------------------------------------------------------


@dataclass
class LatencyResult:
    """Latencies in ms, each list sorted. "Stored": ``write_batch`` (the transaction) has
    returned to the daemon, committed. "Published": the follower has the batch."""

    probe: ProbeResult
    alerts: int
    commits: int
    stored_ms: list[float]  # exact receive -> stored
    stored_by_emitted_ms: list[float]  # emitted_ms -> stored
    published_ms: list[float]  # exact receive -> published
    unmatched: int  # alerts without a tapped receive time
    to_sqlite_ms: list[float]  # exact receive -> write_batch starts (engine, queues)
    in_sqlite_ms: list[float]  # write_batch: BEGIN IMMEDIATE ... COMMIT
    to_follower_ms: list[float]  # COMMIT returned -> the follower has the batch


async def measure_latency(control: Control, daemon: DaemonUnderTest, rate: float,
                          seconds: float) -> LatencyResult:
    probe = daemon.probe
    probe.stored.clear()
    daemon.store.spans.clear()
    batches_before = probe.batches_with_alerts
    daemon.tap_receive_times(True)
    probe.noting = daemon.store.noting = True
    try:
        result = await run_probe(control, daemon, rate, seconds)
        await poll(daemon.stored_everything, 30.0)
    finally:
        daemon.tap_receive_times(False)
        probe.noting = daemon.store.noting = False
    stored, stored_by_emitted, published = [], [], []
    to_sqlite, in_sqlite, to_follower = [], [], []
    unmatched = 0
    tap = daemon.tap
    for reached_follower, alert in probe.stored:
        span = daemon.store.spans.get(alert.id)
        received = tap.received(alert)
        if span is None or received is None:  # a batch that straddled the window's start
            unmatched += 1
            continue
        stored_by_emitted.append((span[1] - alert.emitted_ms / 1000) * 1000)
        stored.append((span[1] - received) * 1000)
        published.append((reached_follower - received) * 1000)
        to_sqlite.append((span[0] - received) * 1000)
        in_sqlite.append((span[1] - span[0]) * 1000)
        to_follower.append((reached_follower - span[1]) * 1000)
    alerts = len(probe.stored)
    tap.times.clear()
    probe.stored.clear()
    daemon.store.spans.clear()
    return LatencyResult(result, alerts, probe.batches_with_alerts - batches_before,
                         sorted(stored), sorted(stored_by_emitted), sorted(published),
                         unmatched, sorted(to_sqlite), sorted(in_sqlite), sorted(to_follower))


def print_latency_row(rate: int, result: LatencyResult, disk_p99: float) -> None:
    stored, published = result.stored_ms, result.published_ms
    print(f"{rate:>8,}{result.alerts:>8,}{result.commits:>9,}  "
          f"{percentile(stored, 50):>7.2f}{percentile(stored, 99):>8.2f}"
          f"{stored[-1] if stored else math.nan:>8.2f}"
          f"{percentile(result.stored_by_emitted_ms, 99):>11.2f}  "
          f"{percentile(published, 50):>7.2f}{percentile(published, 99):>8.2f}  "
          f"{result.probe.late_lag_ms:>6.1f}ms{result.probe.conflated:>10,}"
          f"{result.probe.receiver_cpu:>9.0%}{result.probe.sender_cpu:>6.0%}"
          f"{disk_p99:>8.2f}ms")
    sustained, why = result.probe.verdict()
    if not sustained:
        print(f"{'':>8}(this rate was NOT sustained: {why})")
    if result.unmatched:
        print(f"{'':>8}({result.unmatched} alerts without a tapped receive time or a "
              f"noted transaction: left out)")


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted values (nan when there are none)."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def storage_floor(directory: Path, commits: int) -> list[float]:
    """Latency (ms, sorted) of bare sqlite3 commits of one row, WAL and synchronous=FULL,
    one every 3 ms (about as often as the daemon commits at 10,000 frames/s)."""
    db = sqlite3.connect(directory / "floor.db", isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, payload TEXT)")
        times = []
        for number in range(commits):
            start = time.perf_counter()
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t (payload) VALUES (?)", (f"alert {number}" * 20,))
            db.execute("COMMIT")
            times.append((time.perf_counter() - start) * 1000)
            time.sleep(0.003)
    finally:
        db.close()
    return sorted(times)


def print_storage_floor(when: str, commits: list[float]) -> None:
    print(f"storage floor {when} the latency runs (bare sqlite3, WAL, synchronous=FULL, "
          f"one row per commit, n={len(commits)}): p50 {percentile(commits, 50):.2f} ms, "
          f"p99 {percentile(commits, 99):.2f} ms, max {commits[-1]:.2f} ms")


def filesystem_of(path: Path) -> str:
    """The filesystem type holding ``path`` (from /proc/mounts), or "unknown"."""
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) > 2 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                    best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


# --- the run --------------------------------------------------------------------------------


def start_sender(scenario: Scenario) -> tuple[subprocess.Popen[bytes], int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.live_bench", "--serve", "--instruments",
         str(scenario.instruments), "--period", str(scenario.period)],
        cwd=Path(__file__).resolve().parents[1], stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 30.0)
    line = process.stdout.readline() if ready else b""
    if not line:
        process.kill()
        process.wait()
        raise RuntimeError("the sender did not start")
    return process, int(orjson.loads(line)["port"])


def stop_sender(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


async def bench(args: argparse.Namespace, scenario: Scenario, port: int,
                directory: Path) -> None:
    config = scenario.config(port, directory / "daemon.db")
    # As `riskmon run` opens its store: no commit checkpoints the WAL; a connection of
    # its own does, every storage.checkpoint_interval_s (adapters/sqlite_store.py).
    checkpointer = await WalCheckpointer.open(
        directory / "daemon.db", interval_s=config.storage.checkpoint_interval_s)
    store = await TimedStore.open(directory / "daemon.db", synchronous="FULL",
                                  auto_checkpoint=False)
    await checkpointer.reserve()
    checkpointer.start()
    daemon = DaemonUnderTest(config, store)
    daemon.start()
    control_ws = await connect(f"ws://127.0.0.1:{port}{CONTROL_PATH}", ping_interval=None)
    control = Control(control_ws)
    try:
        await control.ready("daemon")
        await control.push("daemon", 2_000, 1.0 if not args.quick else 0.5)  # warm-up
        await asyncio.sleep(0.3)
        levels = daemon.daemon.lanes[0].engine.levels()
        print(f"daemon ready: account {ACCOUNT!r} at {levels.get(ACCOUNT)}, "
              f"{len(daemon.daemon.lanes[0].engine.instruments_in_use())} instruments held, "
              f"{daemon.probe.alerts_seen} alerts stored in the warm-up")

        print(f"\nlatency: receive -> alert committed to SQLite (synchronous=FULL) -> "
              f"follower, {args.windows} x {args.seconds:g} s per rate; after each window, "
              f"the disk's bare commit p99 (100 commits)")
        print(f"{'rate/s':>8}{'alerts':>8}{'commits':>9}  {'stored (ms)':^23}"
              f"{'emitted_ms':>11}  {'published (ms)':^15}  {'lag end':>8}{'conflated':>10}"
              f"{'cpu recv':>9}{'send':>6}{'disk p99':>10}")
        print(f"{'':>8}{'':>8}{'':>9}  {'p50':>7}{'p99':>8}{'max':>8}{'p99':>11}  {'p50':>7}"
              f"{'p99':>8}")
        latencies: dict[int, list[LatencyResult]] = {}
        for rate in LATENCY_RATES:
            for _ in range(args.windows):
                result = await measure_latency(control, daemon, rate, args.seconds)
                disk = await asyncio.to_thread(storage_floor, directory, 100)
                latencies.setdefault(rate, []).append(result)
                print_latency_row(rate, result, percentile(disk, 99))
                await asyncio.sleep(0.3)

        print("where the time goes (exact receive, all windows; p50 / p99 ms): engine and "
              "queues until SQLite starts the batch | write_batch (BEGIN IMMEDIATE .. COMMIT)"
              " | commit to follower")
        for rate, results in latencies.items():
            print(f"{rate:>8,}  " + " | ".join(
                f"{percentile(stage, 50):6.2f} / {percentile(stage, 99):6.2f}"
                for stage in (
                    sorted(x for r in results for x in r.to_sqlite_ms),
                    sorted(x for r in results for x in r.in_sqlite_ms),
                    sorted(x for r in results for x in r.to_follower_ms))))

        floor = FloorClient()
        await floor.start(port, scenario.inst_ids())
        try:
            await control.ready("floor")
            await control.push("floor", 2_000, 0.5)  # warm-up
            print(f"\nhighest sustained rate: the daemon, and the floor (a bare websockets "
                  f"client + orjson.loads), probed in turns ({args.window:g} s probes)")
            searches = await search_alternately(
                control, [daemon, floor], args.start_rate, args.max_rate, args.window,
                args.refine, 1 if args.quick else 2)
        finally:
            await floor.close()
    finally:
        await control_ws.close()
        await daemon.close()
        checkpoints = checkpointer.checkpoints
        await checkpointer.close()

    print("\nsummary")
    ten_thousand = latencies[10_000]
    for label, figures, judged in (
            ("receive -> stored", [r.stored_ms for r in ten_thousand], True),
            ("emitted_ms -> stored", [r.stored_by_emitted_ms for r in ten_thousand], False),
            ("receive -> published", [r.published_ms for r in ten_thousand], False)):
        p99s = [percentile(f, 99) for f in figures]
        value = statistics.median(p99s)
        verdict = "meets" if value <= LATENCY_TARGET_MS else "MISSES"
        print(f"  p99 at 10,000 frames/s, {label}: {value:.2f} ms, the median window "
              f"({' / '.join(f'{p:.2f}' for p in p99s)})"
              + (f" ({verdict} the {LATENCY_TARGET_MS:g} ms target)" if judged else ""))
    daemon_search, floor_search = searches["daemon"], searches["floor"]
    print(f"  daemon sustained: {daemon_search.describe()}")
    print(f"  floor sustained:  {floor_search.describe()}")
    if floor_search.highest > 0:
        ratio = daemon_search.highest / floor_search.highest
        caveat = ""
        if floor_search.lowest_failed is None or floor_search.sender_limited:
            caveat = "; the floor's own limit was not reached: the true ratio is lower"
        elif daemon_search.lowest_failed is not None:
            # Each search brackets its limit between a rate that held and one that failed.
            low = daemon_search.highest / floor_search.lowest_failed
            high = daemon_search.lowest_failed / floor_search.highest
            caveat = f"; from the search brackets, between {low:.2f} and {high:.2f}"
        print(f"  daemon / floor = {ratio:.3f} "
              f"({'meets' if ratio >= FLOOR_RATIO_TARGET else 'MISSES'} the "
              f"{FLOOR_RATIO_TARGET:g} target{caveat})")
    conflated = sum(r.probe.conflated for results in latencies.values() for r in results)
    print(f"  inbox conflation during the latency runs: {conflated:,} frames; "
          f"total this run: {daemon.inbox.conflated:,}")
    print(f"  WAL checkpoints during the run (every "
          f"{config.storage.checkpoint_interval_s:g} s, off the writer): {checkpoints}")
    print(f"  load average at the end: {_load()}")


def build_name() -> str:
    """Which riskmon was imported, and from where: the build compiled by mypyc keeps the
    engine in an extension module (setup.py), pure Python in ``engine.py``."""
    path = engine_file()
    return f"{'pure Python' if path.endswith('.py') else 'compiled by mypyc'}: {path}"


def _load() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a short smoke run: one 2 s latency window per rate, 1.5 s "
                             "probes, no retries")
    parser.add_argument("--seconds", type=float, default=None,
                        help="duration of each latency window (default 6, quick 2)")
    parser.add_argument("--windows", type=int, default=None,
                        help="latency windows per rate (default 3, quick 1)")
    parser.add_argument("--window", type=float, default=None,
                        help="duration of each sustained-rate probe (default 3, quick 1.5)")
    parser.add_argument("--start-rate", type=float, default=5_000)
    parser.add_argument("--max-rate", type=float, default=320_000)
    parser.add_argument("--refine", type=int, default=None,
                        help="bisection steps after the first failure (default 3, quick 1)")
    parser.add_argument("--instruments", type=int, default=20)
    parser.add_argument("--period", type=int, default=200,
                        help="frames per margin-ratio cycle (about 7 alerts each)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    scenario = Scenario(instruments=args.instruments, period=args.period)
    if args.serve:
        asyncio.run(run_sender(scenario))
        return
    if args.seconds is None:
        args.seconds = 2.0 if args.quick else 6.0
    if args.windows is None:
        args.windows = 1 if args.quick else 3
    if args.window is None:
        args.window = 1.5 if args.quick else 3.0
    if args.refine is None:
        args.refine = 1 if args.quick else 3
    configure_logging(json=True, stream=sys.stderr, level="warning")
    tune_interpreter()  # as `riskmon run` does
    with tempfile.TemporaryDirectory(prefix="riskmon-live-bench-") as temporary:
        directory = Path(temporary)
        commits = storage_floor(directory, 100 if args.quick else 400)
        process, port = start_sender(scenario)
        try:
            print(f"riskmon {build_name()}")
            print(f"live_bench: sender pid {process.pid} on 127.0.0.1:{port}; 1 account, "
                  f"{scenario.instruments} positions; period {scenario.period} frames; "
                  f"SQLite synchronous=FULL in {directory} ({filesystem_of(directory)})")
            print(f"note: sender and receiver share this machine's {os.cpu_count()} CPU "
                  f"cores (load average at start {_load()}); compare rates within this run")
            print_storage_floor("before", commits)
            asyncio.run(bench(args, scenario, port, directory))
        finally:
            stop_sender(process)


if __name__ == "__main__":
    main()
