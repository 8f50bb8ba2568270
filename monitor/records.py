"""Records the pipeline hands to sinks besides alerts."""

from __future__ import annotations

from dataclasses import dataclass

from monitor.alerts import Level


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    """A line or frame that could not be used, kept with the reason.

    ``raw`` is the offending input as text (truncated by the producer to a sane size);
    ``source`` says where it came from (a file and line number, or a feed name).
    """

    source: str
    recv_ms: int | None
    reason: str
    raw: str


@dataclass(frozen=True, slots=True)
class MarginPoint:
    """One downsampled sample of an account's margin figures, for charts."""

    account: str
    ts: int
    margin_ratio: float | None
    equity_usd: float
    maint_margin_usd: float
    init_margin_usd: float
    level: Level
