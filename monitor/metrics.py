"""The daemon's counters and gauges, rendered in the Prometheus text format (``/metrics``).

Names follow Prometheus conventions (``_total`` counters, base units: seconds). The daemon's
engine task updates them; the HTTP handler only reads and renders, in the same event loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class Metrics:
    frames: int = 0
    events: int = 0
    quarantined: int = 0
    conflated: int = 0
    alerts_by_kind: dict[str, int] = field(default_factory=dict)
    feed_lag_s: float | None = None
    inbox_depth: int = 0
    sink_queue_depth: dict[str, int] = field(default_factory=dict)
    margin_ratio: dict[str, float | None] = field(default_factory=dict)
    feeds_connected: dict[str, bool] = field(default_factory=dict)
    stream_subscribers: int = 0
    stream_cut_off: int = 0
    notifier_deliveries: dict[str, int] = field(default_factory=dict)
    notifier_failures: dict[str, int] = field(default_factory=dict)
    notifier_lag_s: dict[str, float] = field(default_factory=dict)
    notifier_queue_depth: dict[str, int] = field(default_factory=dict)
    started_s: float = 0.0

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
        family("riskmon_conflated_total", "counter",
               "Mark-price frames replaced by a newer one under pressure.", self.conflated)
        family("riskmon_alerts_total", "counter", "Alerts emitted, by kind.",
               {f'kind="{_escape(k)}"': v for k, v in self.alerts_by_kind.items()})
        family("riskmon_feed_lag_seconds", "gauge",
               "Receive time minus exchange time of the last timed event.", self.feed_lag_s)
        family("riskmon_inbox_depth", "gauge", "Feed items waiting for the engine.",
               self.inbox_depth)
        family("riskmon_sink_queue_depth", "gauge", "Batches waiting in each sink's queue.",
               {f'sink="{_escape(k)}"': v for k, v in self.sink_queue_depth.items()})
        family("riskmon_margin_ratio", "gauge",
               "Margin ratio per account (absent while it has no maintenance margin).",
               {f'account="{_escape(k)}"': v for k, v in self.margin_ratio.items()
                if v is not None})
        family("riskmon_feed_connected", "gauge", "1 while a feed connection is up.",
               {f'feed="{_escape(k)}"': float(v) for k, v in self.feeds_connected.items()})
        family("riskmon_stream_subscribers", "gauge",
               "Alert stream subscriptions receiving live alerts.", self.stream_subscribers)
        family("riskmon_stream_cut_off_total", "counter",
               "Alert stream subscriptions cut off for falling behind.", self.stream_cut_off)
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
        family("riskmon_uptime_seconds", "gauge", "Seconds since the daemon started.",
               max(0.0, now_s - self.started_s))
        return "\n".join(lines) + "\n"


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
