"""The daemon's counters and gauges, rendered in the Prometheus text format (``/metrics``).

Names follow Prometheus conventions (``_total`` counters, base units: seconds, USD in
names that hold USD). The daemon's engine task updates them; the HTTP handler only reads
and renders, in the same event loop. Every family is rendered with its ``# HELP`` and
``# TYPE`` lines even before it has a sample, so what a dashboard or a rule may query is
visible from the first scrape.

Cardinality: the ``account`` families have one series per account the engine knows
(configured, or seen in the feed), the ``feed`` families one per connection (``public``,
``private:ACCOUNT``), ``kind`` one per alert kind emitted and ``sink`` one per sink;
nothing is labelled by instrument, reason or value.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata

from monitor.core import engine as core_engine

LEVEL_RANKS_HELP = "0 normal, 1 warning, 2 withdrawal_lock, 3 deleverage, 4 liquidation"


@dataclass(frozen=True, slots=True)
class BuildInfo:
    """What ``riskmon_build_info`` reports: the package version, the Python version and
    whether the core runs compiled by mypyc (README, "Compiled build")."""

    version: str
    python: str
    compiled: bool

    @classmethod
    def current(cls) -> BuildInfo:
        """This process's build."""
        try:
            version = metadata.version("riskmon")
        except metadata.PackageNotFoundError:
            version = "unknown"
        compiled = str(getattr(core_engine, "__file__", "")).endswith((".so", ".pyd"))
        return cls(version, platform.python_version(), compiled)


@dataclass
class Metrics:
    frames: int = 0
    events: int = 0
    quarantined: int = 0
    conflated: int = 0
    out_of_order: dict[str, int] = field(default_factory=dict)
    alerts_by_kind: dict[str, int] = field(default_factory=dict)
    feed_lag_s: float | None = None
    inbox_depth: int = 0
    sink_queue_depth: dict[str, int] = field(default_factory=dict)
    sink_failing: dict[str, bool] = field(default_factory=dict)
    sink_waiting_records: int = 0
    margin_ratio: dict[str, float | None] = field(default_factory=dict)
    account_level: dict[str, int] = field(default_factory=dict)
    account_equity_usd: dict[str, float] = field(default_factory=dict)
    account_maint_margin_usd: dict[str, float] = field(default_factory=dict)
    account_risk_known: dict[str, bool] = field(default_factory=dict)
    feeds_connected: dict[str, bool] = field(default_factory=dict)
    feed_reconnects: dict[str, int] = field(default_factory=dict)
    feed_errors: dict[str, int] = field(default_factory=dict)
    stale_instruments: int = 0
    stream_subscribers: int = 0
    stream_cut_off: int = 0
    stream_connections: int = 0
    stream_pending: int = 0
    stream_closed: dict[str, int] = field(default_factory=dict)
    notifier_deliveries: dict[str, int] = field(default_factory=dict)
    notifier_failures: dict[str, int] = field(default_factory=dict)
    notifier_lag_s: dict[str, float] = field(default_factory=dict)
    notifier_queue_depth: dict[str, int] = field(default_factory=dict)
    executor_paused: bool | None = None
    executor_orders_sent: dict[str, int] = field(default_factory=dict)
    executor_orders_rejected: dict[str, int] = field(default_factory=dict)
    executor_legs_filled: dict[str, int] = field(default_factory=dict)
    executor_legs_failed: dict[str, int] = field(default_factory=dict)
    executor_open_legs: dict[str, int] = field(default_factory=dict)
    executor_queued_triggers: dict[str, int] = field(default_factory=dict)
    executor_worker_up: dict[str, bool] = field(default_factory=dict)
    started_s: float = 0.0
    build: BuildInfo | None = None

    def render(self, now_s: float) -> str:
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str,
                   samples: Mapping[str, float | None] | float | None) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            if isinstance(samples, Mapping):
                for labels, value in sorted(samples.items()):
                    lines.append(f"{name}{{{labels}}} {_number(value)}")
            elif samples is not None:
                lines.append(f"{name} {_number(samples)}")

        family("riskmon_frames_total", "counter", "Feed frames and REST bodies received.",
               self.frames)
        family("riskmon_events_total", "counter", "Events applied to the engine.", self.events)
        family("riskmon_quarantined_total", "counter", "Inputs quarantined as bad.",
               self.quarantined)
        family("riskmon_out_of_order_total", "counter",
               "Events ignored as older than the last applied one of their kind, by kind.",
               _by("kind", self.out_of_order))
        family("riskmon_conflated_total", "counter",
               "Mark-price frames replaced by a newer one under pressure.", self.conflated)
        family("riskmon_alerts_total", "counter", "Alerts emitted, by kind.",
               {f'kind="{_escape(k)}"': v for k, v in self.alerts_by_kind.items()})
        family("riskmon_feed_lag_seconds", "gauge",
               "Receive time minus exchange time of the last timed event.", self.feed_lag_s)
        family("riskmon_inbox_depth", "gauge", "Feed items waiting for the engine.",
               self.inbox_depth)
        family("riskmon_sink_queue_depth", "gauge", "Batches waiting in each sink's queue.",
               _by("sink", self.sink_queue_depth))
        family("riskmon_sink_failing", "gauge",
               "1 while a sink's write keeps failing and is being retried, else 0.",
               _flags("sink", self.sink_failing))
        family("riskmon_sink_waiting_records", "gauge",
               "Records (alerts, history, quarantine) waiting in memory for SQLite.",
               self.sink_waiting_records)
        family("riskmon_margin_ratio", "gauge",
               "Margin ratio per account (absent without maintenance margin or while the"
               " account's risk is unknown).",
               {f'account="{_escape(k)}"': v for k, v in self.margin_ratio.items()
                if v is not None})
        family("riskmon_account_level", "gauge",
               f"Level per account, as a rank: {LEVEL_RANKS_HELP}.",
               _by("account", self.account_level))
        family("riskmon_account_equity_usd", "gauge",
               "Adjusted equity per account, USD (the margin ratio's numerator; absent while"
               " the account's risk is unknown).",
               _by("account", self.account_equity_usd))
        family("riskmon_account_maint_margin_usd", "gauge",
               "Maintenance margin per account, USD (without the closing fee; absent while the"
               " account's risk is unknown).",
               _by("account", self.account_maint_margin_usd))
        family("riskmon_account_risk_known", "gauge",
               "1 while nothing an account's figures depend on is missing, else 0.",
               _flags("account", self.account_risk_known))
        family("riskmon_feed_connected", "gauge", "1 while a feed connection is up.",
               _flags("feed", self.feeds_connected))
        family("riskmon_feed_reconnects_total", "counter",
               "Times a feed connection was opened again after it ended or failed.",
               _by("feed", self.feed_reconnects))
        family("riskmon_feed_errors_total", "counter",
               "Feed connection failures, error messages and failed REST loads.",
               _by("feed", self.feed_errors))
        family("riskmon_stale_instruments", "gauge",
               "Instruments in use whose mark price is older than risk.stale_after_s.",
               self.stale_instruments)
        family("riskmon_stream_subscribers", "gauge",
               "Alert stream subscriptions receiving live alerts.", self.stream_subscribers)
        family("riskmon_stream_cut_off_total", "counter",
               "Alert stream subscriptions cut off for falling behind.", self.stream_cut_off)
        family("riskmon_stream_connections", "gauge",
               "TCP connections open on the [stream] port, any path.", self.stream_connections)
        family("riskmon_stream_pending_connections", "gauge",
               "Of those, connections not yet past their handshake and subscribe request.",
               self.stream_pending)
        family("riskmon_stream_closed_total", "counter",
               "Connections on the [stream] port refused or closed by riskmon, by reason.",
               _by("reason", self.stream_closed))
        # The notifier families are always announced, with no sample when none is
        # configured, so dashboards and alert rules can name them unconditionally.
        family("riskmon_notifier_deliveries_total", "counter",
               "Messages a notifier delivered (a summary counts once).",
               _by_notifier(self.notifier_deliveries))
        family("riskmon_notifier_failures_total", "counter",
               "Failed delivery attempts of a notifier (each retry counts).",
               _by_notifier(self.notifier_failures))
        family("riskmon_notifier_lag_seconds", "gauge",
               "Age of the oldest stored alert a notifier has yet to deliver (0: none).",
               _by_notifier(self.notifier_lag_s))
        family("riskmon_notifier_queue_depth", "gauge",
               "Stored alerts a notifier holds, waiting for delivery.",
               _by_notifier(self.notifier_queue_depth))
        # The executor's families too: no sample unless execution is on.
        family("riskmon_executor_paused", "gauge",
               "1 while the kill switch holds every new order (riskmon executor pause).",
               None if self.executor_paused is None else float(self.executor_paused))
        family("riskmon_executor_orders_sent_total", "counter",
               "Orders in the executor's requests (a resend under the same client id "
               "counts again).",
               _by("account", self.executor_orders_sent))
        family("riskmon_executor_orders_rejected_total", "counter",
               "Orders the exchange refused (an sCode other than 0 in its answer).",
               _by("account", self.executor_orders_rejected))
        family("riskmon_executor_legs_filled_total", "counter",
               "Trigger legs whose close filled completely.",
               _by("account", self.executor_legs_filled))
        family("riskmon_executor_legs_failed_total", "counter",
               "Trigger legs given up (execution_failed with will_retry false).",
               _by("account", self.executor_legs_failed))
        family("riskmon_executor_open_legs", "gauge",
               "Trigger legs being sent, followed or waiting for a retry.",
               _by("account", self.executor_open_legs))
        family("riskmon_executor_queued_triggers", "gauge",
               "Stored triggers waiting for the account's executor.",
               _by("account", self.executor_queued_triggers))
        family("riskmon_executor_worker_up", "gauge",
               "1 while the account's executor task runs (0: crashed, see /healthz).",
               _flags("account", self.executor_worker_up))
        family("riskmon_uptime_seconds", "gauge", "Seconds since the daemon started.",
               max(0.0, now_s - self.started_s))
        build = self.build
        family("riskmon_build_info", "gauge", "Always 1; the labels say what runs.",
               None if build is None else {
                   f'version="{_escape(build.version)}",python="{_escape(build.python)}",'
                   f'compiled="{str(build.compiled).lower()}"': 1.0})
        return "\n".join(lines) + "\n"


def _by(label: str, values: Mapping[str, float]) -> dict[str, float]:
    return {f'{label}="{_escape(key)}"': value for key, value in values.items()}
def _flags(label: str, values: Mapping[str, bool]) -> dict[str, float]:
    """1/0 samples of yes/no values, one per key."""
    return {f'{label}="{_escape(key)}"': float(value) for key, value in values.items()}


def _by_notifier(values: Mapping[str, float]) -> dict[str, float]:
    return {f'notifier="{_escape(k)}"': v for k, v in values.items()}


def _number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
