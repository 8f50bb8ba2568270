"""Alert stream fan-out benchmark on loopback (issue 4: ``/v1/alerts`` to 100 subscribers).

Run from the repository root:  .venv/bin/python bench/stream_bench.py [--quick]

Two processes on this machine:

  server    this process: riskmon's real components: a head ``SinkTask(SqliteSink(store))``
            on a temporary file opened with ``SqliteStore.open(path, synchronous="FULL")``,
            whose follower is ``SinkTask(hub)``, ``hub = AlertHub(store)`` (persist before
            publish), and ``HttpServer`` with ``AlertStreamHandler(hub)`` on 127.0.0.1
            serving ``/v1/alerts``. Thin subclasses note when each alert's ``write_batch``
            returned (:class:`TimedStore`) and when the hub got it (:class:`TimedHub`). A
            producer task puts alerts into the head, one batch each, with a unique id and
            ``{"bench_index": k, "produced": time.time()}`` as the payload.
  clients   this file with ``--clients N`` (a subprocess per run): N websocket clients with
            websockets' defaults (permessage-deflate offered, as most clients do; the
            server accepts none, see adapters/http_server.py), each subscribed with
            ``{"op": "subscribe"}`` and acked before the run starts. Each notes
            ``time.time()`` on receiving every alert until the run's end marker, then
            closes; the process reports every subscriber's indices and times as one JSON
            line on standard output.

Runs, 1 subscriber (the baseline) and ``--subscribers`` (default 100) in turns, each with a
fresh client process:

  paced     ``--rates`` alerts/s (default 100 and 200: 100 subscribers take about 300 a
            second here, and a subscriber more than the hub's ``queue_size`` of 1,000 alerts
            behind is cut off, so 1,000 a second fails within seconds) for ``--seconds``
            (default 5). Latency per (subscriber, alert) pair: receive minus production
            time, p50, p99, max, split into produced -> committed (the head's queue and the
            SQLite transaction), committed -> published (the hand-off to the hub's task) and
            published -> received (the handler's send, the socket, the client).
  unpaced   as fast as the fan-out takes them: the producer keeps the alerts not yet
            published plus the deepest subscription queue below half the ``queue_size``.
            Throughput: alerts / (last delivery - first production), and deliveries/s.

Every subscriber must receive every alert of its run exactly once and in order; a run where
one did not (cut off with 4408 ``slow_subscriber``, a gap, a duplicate, a reordering) is
printed as FAILED and the benchmark exits with status 1. Clients and server share the
machine's cores (both sides' CPU use is printed): compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from adapters.alert_stream import AlertStreamHandler
from adapters.http_server import ALERTS_PATH, HttpServer
from adapters.sinks import SqliteSink
from adapters.sqlite_store import SqliteStore
from monitor.core.alerts import Alert, alert_id
from monitor.core.batch import Batch
from monitor.core.records import AccountCheckpoint, MarginPoint, QuarantineRecord, StoredAlert
from monitor.runtime.daemon import tune_interpreter
from monitor.runtime.pipeline import SinkTask
from monitor.runtime.stream import AlertFilter, AlertHub, Subscription

ACCOUNT: Final = "bench"
CONNECT_AT_ONCE: Final = 20
DRAIN_TIMEOUT_S: Final = 30.0


# --- the clients (a subprocess) -------------------------------------------------------------


async def run_clients(port: int, count: int) -> None:
    """Connect and subscribe ``count`` clients, say "ready", receive until the end marker,
    then write what each received as one JSON line (see the module docstring)."""
    url = f"ws://127.0.0.1:{port}{ALERTS_PATH}"
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)

    async def subscribe() -> ClientConnection:
        async with gate:
            ws = await connect(url)
            await ws.send('{"op": "subscribe"}')
            ack = orjson.loads(await ws.recv())
            if ack.get("event") != "subscribed":
                raise RuntimeError(f"subscribe refused: {ack}")
            return ws

    connections = await asyncio.gather(*(subscribe() for _ in range(count)))
    extensions = connections[0].response.headers.get("Sec-WebSocket-Extensions") if \
        connections[0].response is not None else None
    _say({"ready": count, "extensions": extensions})
    cpu_start, wall_start = time.process_time(), time.time()
    received = await asyncio.gather(*(_receive(ws) for ws in connections))
    _say({"subscribers": received, "cpu_s": time.process_time() - cpu_start,
          "wall_s": time.time() - wall_start})


async def _receive(ws: ClientConnection) -> dict[str, Any]:
    """The index and receive time of every alert until the end marker, and the close
    code if the server closed first (heartbeats have no payload and are skipped)."""
    indices: list[int] = []
    times: list[float] = []
    try:
        while True:
            message = await ws.recv(decode=True)
            at = time.time()
            payload = orjson.loads(message).get("payload")
            if payload is not None:
                if "bench_end" in payload:
                    await ws.close()
                    return {"indices": indices, "times": times, "close_code": None}
                indices.append(payload["bench_index"])
                times.append(at)
    except ConnectionClosed as closed:
        code = None if closed.rcvd is None else closed.rcvd.code
        return {"indices": indices, "times": times, "close_code": code}


def _say(message: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
    sys.stdout.buffer.flush()


# --- the server side ------------------------------------------------------------------------


class TimedStore(SqliteStore):
    """The real store, noting when each alert's transaction committed (by alert id)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.committed: dict[str, float] = {}

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
        inserted = await super().write_batch(alerts=alerts, quarantine=quarantine,
                                             history=history, checkpoints=checkpoints,
                                             quarantine_counts=quarantine_counts,
                                             alert_json=alert_json, synced=synced)
        now = time.time()
        for alert in alerts:
            self.committed[alert.id] = now
        return inserted


class TimedHub(AlertHub):
    """The real hub, noting when each alert was handed to it and keeping its
    subscriptions, whose queue depth paces the unpaced producer."""

    def __init__(self, source: TimedStore) -> None:
        super().__init__(source)
        self.published: dict[str, float] = {}
        self.count = 0
        self.subscriptions: list[Subscription] = []

    def subscribe(self, alert_filter: AlertFilter | None = None, *,
                  since: str | None = None) -> Subscription:
        subscription = super().subscribe(
            AlertFilter() if alert_filter is None else alert_filter, since=since)
        self.subscriptions.append(subscription)
        return subscription

    async def write(self, batch: Batch) -> None:
        now = time.time()
        for record in batch.stored:
            self.published[record.alert.id] = now
        self.count += len(batch.stored)
        await super().write(batch)


@dataclass
class RunResult:
    """One run: what was produced, what each subscriber received, and the CPU used."""

    subscribers: int
    rate: float | None
    produced: list[tuple[str, float]]  # (alert id, production time), by bench_index
    received: list[dict[str, Any]]
    server_cpu: float
    client_cpu: float
    failures: list[str] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    to_commit_ms: list[float] = field(default_factory=list)
    to_publish_ms: list[float] = field(default_factory=list)
    to_receive_ms: list[float] = field(default_factory=list)
    alerts_per_s: float = math.nan


class Bench:
    """The server side: store, sinks, hub and HTTP server, and one run at a time."""

    def __init__(self, args: argparse.Namespace, store: TimedStore) -> None:
        self.args = args
        self.store = store
        self.hub = TimedHub(store)
        self.head = SinkTask(SqliteSink(store), followers=[SinkTask(self.hub)])
        self.http = HttpServer(lambda now: (True, {}), lambda now: "",
                               stream=AlertStreamHandler(self.hub))
        self.port = 0
        self.runs = 0
        self.extensions: str | None = None

    async def start(self) -> None:
        self.head.start()
        self.port = await self.http.start("127.0.0.1", 0)

    async def close(self) -> None:
        await self.http.close()
        await self.head.drain_and_close()

    async def run(self, subscribers: int, rate: float | None, seconds: float) -> RunResult:
        """One run with a fresh client process (see the module docstring)."""
        self.runs += 1
        deadline = time.monotonic() + 10.0
        # The last run's connections may still be closing (the hub has no event for it).
        while self.hub.subscribers and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        command = [sys.executable, __file__, "--clients", str(subscribers),
                   "--port", str(self.port)]
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            limit=1 << 28)
        assert process.stdout is not None
        try:
            ready = orjson.loads(await asyncio.wait_for(process.stdout.readline(), 60.0))
            self.extensions = ready["extensions"]
            if self.hub.subscribers != subscribers:
                raise RuntimeError(f"{self.hub.subscribers} live subscriptions, "
                                   f"expected {subscribers}")
            cpu_start = time.process_time()
            if rate is None:
                produced = await self._produce_unpaced(seconds)
            else:
                produced = await self._produce_paced(rate, seconds)
            await self.head.put(Batch.of(alerts=[self._alert(-1, time.time(), end=True)]))
            try:
                line = await asyncio.wait_for(process.stdout.readline(), DRAIN_TIMEOUT_S)
            except TimeoutError:
                raise RuntimeError(
                    f"FAILED: not every subscriber got the end marker within "
                    f"{DRAIN_TIMEOUT_S:g} s of the last alert (alerts lost?)") from None
            server_cpu = time.process_time() - cpu_start
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()
        report = orjson.loads(line)
        self.hub.subscriptions.clear()
        return RunResult(subscribers, rate, produced, report["subscribers"],
                         server_cpu / report["wall_s"], report["cpu_s"] / report["wall_s"])

    def _alert(self, index: int, produced: float, *, end: bool = False) -> Alert:
        ts = int(produced * 1000)
        payload: dict[str, Any] = {"bench_end": True} if end else {
            "bench_index": index, "produced": produced}
        return Alert(alert_id(ACCOUNT, "level_changed", ts, index, f"run {self.runs}"), ts,
                     ts, ACCOUNT, "level_changed", "warning", "normal", 1.42, 3000.0, 2112.68,
                     4225.35, None, None, payload)

    async def _put(self, produced: list[tuple[str, float]]) -> None:
        now = time.time()
        alert = self._alert(len(produced), now)
        produced.append((alert.id, now))
        await self.head.put(Batch.of(alerts=[alert]))

    async def _produce_paced(self, rate: float, seconds: float) -> list[tuple[str, float]]:
        produced: list[tuple[str, float]] = []
        start = time.monotonic()
        for index in range(round(rate * seconds)):
            wait = start + index / rate - time.monotonic()
            await asyncio.sleep(max(wait, 0.0))
            await self._put(produced)
        return produced

    async def _produce_unpaced(self, seconds: float) -> list[tuple[str, float]]:
        produced: list[tuple[str, float]] = []
        limit = self.hub.queue_size // 2
        published_before = self.hub.count
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            # Alerts not yet published, plus the deepest subscription queue.
            behind = (len(produced) - (self.hub.count - published_before)
                      + max(subscription.pending for subscription in self.hub.subscriptions))
            room = limit - behind
            for _ in range(min(room, 50)):
                await self._put(produced)
            await asyncio.sleep(0 if room > 0 else 0.001)
        return produced


# --- the analysis ---------------------------------------------------------------------------


def analyse(result: RunResult, hub: TimedHub, store: TimedStore) -> None:
    """Check every subscriber got every alert once and in order; fill in the figures."""
    expected = list(range(len(result.produced)))
    last_receive = -math.inf
    for number, subscriber in enumerate(result.received):
        indices: list[int] = subscriber["indices"]
        times: list[float] = subscriber["times"]
        if indices != expected:
            seen = set(indices)
            cut_off = " (cut off: 4408 slow_subscriber)" if subscriber["close_code"] == 4408 \
                else ""
            reordered = sum(1 for a, b in itertools.pairwise(indices) if b <= a)
            result.failures.append(
                f"subscriber {number}: {len(indices)} of {len(expected)} alerts received"
                f"{cut_off}, {len(expected) - len(seen & set(expected))} missing, "
                f"{len(indices) - len(seen)} duplicated, {reordered} out of order, "
                f"close code {subscriber['close_code']}")
        for index, received in zip(indices, times, strict=True):
            id_, produced = result.produced[index]
            result.latency_ms.append((received - produced) * 1000)
            result.to_receive_ms.append((received - hub.published[id_]) * 1000)
        if times:
            last_receive = max(last_receive, times[-1])
    for id_, produced in result.produced:
        committed = store.committed[id_]
        result.to_commit_ms.append((committed - produced) * 1000)
        result.to_publish_ms.append((hub.published[id_] - committed) * 1000)
    for values in (result.latency_ms, result.to_commit_ms, result.to_publish_ms,
                   result.to_receive_ms):
        values.sort()
    if result.produced and last_receive > -math.inf:
        result.alerts_per_s = len(result.produced) / (last_receive - result.produced[0][1])


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted values (nan when there are none)."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _p50_p99(ordered: list[float]) -> str:
    return f"{percentile(ordered, 50):6.2f} /{percentile(ordered, 99):7.2f}"


def print_header() -> None:
    print(f"{'subs':>5}{'rate/s':>8}{'alerts':>8}  {'latency p50 / p99 / max (ms)':>28}"
          f"  {'->commit':>15}  {'->publish':>15}  {'->receive':>15}"
          f"{'alerts/s':>10}{'deliv/s':>10}{'cpu srv':>8}{'cli':>6}")


def print_run(result: RunResult) -> None:
    latency = result.latency_ms
    if result.rate is None:  # queueing by design: the producer keeps ~500 alerts in flight
        rate, figures = "max", f"{'-':>28}  {'-':>15}  {'-':>15}  {'-':>15}"
    else:
        rate = f"{result.rate:,.0f}"
        figures = (f"{_p50_p99(latency)} /{latency[-1] if latency else math.nan:7.2f}  "
                   f"{_p50_p99(result.to_commit_ms)}  {_p50_p99(result.to_publish_ms)}  "
                   f"{_p50_p99(result.to_receive_ms)}")
    print(f"{result.subscribers:>5}{rate:>8}{len(result.produced):>8,}  {figures}"
          f"{result.alerts_per_s:>10,.0f}{result.alerts_per_s * result.subscribers:>10,.0f}"
          f"{result.server_cpu:>8.0%}{result.client_cpu:>6.0%}")
    for failure in result.failures[:5]:
        print(f"      FAILED: {failure}")
    if len(result.failures) > 5:
        print(f"      FAILED: ... and {len(result.failures) - 5} more subscribers")


def _load() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


# --- the run --------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, directory: Path) -> bool:
    """All runs and the summary; False when a run failed."""
    store = await TimedStore.open(directory / "stream.db", synchronous="FULL")
    server = Bench(args, store)
    await server.start()
    results: dict[tuple[int, float | None], RunResult] = {}
    try:
        await server.run(1, 100, 0.5)  # warm-up: connections, SQLite, code paths
        print(f"stream_bench: 127.0.0.1:{server.port}, SQLite synchronous=FULL in "
              f"{directory}; permessage-deflate: {server.extensions or 'not negotiated'}; "
              f"{os.cpu_count()} CPU cores shared by server and clients (load {_load()})")
        print(f"{args.seconds:g} s per run; latency = client receive - production; "
              "p50 / p99 ms of each stage")
        print_header()
        for rate in [*args.rates, None]:
            for subscribers in (1, args.subscribers):
                result = await server.run(subscribers, rate, args.seconds)
                analyse(result, server.hub, store)
                print_run(result)
                results[subscribers, rate] = result
                await asyncio.sleep(0.2)
    finally:
        await server.close()

    print("\nsummary")
    many = args.subscribers
    for rate in args.rates:
        one, fan = results[1, rate], results[many, rate]
        p50_ratio = percentile(fan.latency_ms, 50) / percentile(one.latency_ms, 50)
        p99_ratio = percentile(fan.latency_ms, 99) / percentile(one.latency_ms, 99)
        print(f"  {rate:,.0f} alerts/s: {many} subscribers p50 / p99 "
              f"{_p50_p99(fan.latency_ms).strip()} ms, 1 subscriber "
              f"{_p50_p99(one.latency_ms).strip()} ms: x{p50_ratio:.1f} / x{p99_ratio:.1f}")
    one, fan = results[1, None], results[many, None]
    print(f"  unpaced: {many} subscribers {fan.alerts_per_s:,.0f} alerts/s "
          f"({fan.alerts_per_s * many:,.0f} deliveries/s), 1 subscriber "
          f"{one.alerts_per_s:,.0f} alerts/s: deliveries/s x"
          f"{fan.alerts_per_s * many / one.alerts_per_s:.1f}, alerts/s x"
          f"{fan.alerts_per_s / one.alerts_per_s:.3f}")
    failed = [result for result in results.values() if result.failures]
    if failed:
        print(f"  FAILED: {len(failed)} runs lost, duplicated or reordered alerts (above)")
    else:
        deliveries = sum(len(r.produced) * r.subscribers for r in results.values())
        print(f"  every subscriber received every alert of its run once, in order "
              f"({deliveries:,} deliveries)")
    print(f"  load average at the end: {_load()}")
    return not failed


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1.5 s runs (a smoke run)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="duration of each run (default 5, quick 1.5)")
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 200.0],
                        help="paced rates, alerts/s (default 100 200)")
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--clients", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients:
        asyncio.run(run_clients(args.port, args.clients))
        return
    if args.seconds is None:
        args.seconds = 1.5 if args.quick else 5.0
    tune_interpreter()  # as `riskmon run` does
    with tempfile.TemporaryDirectory(prefix="riskmon-stream-bench-") as temporary:
        ok = asyncio.run(bench(args, Path(temporary)))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
