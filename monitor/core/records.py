"""Records the pipeline hands to sinks besides alerts."""

from __future__ import annotations

from dataclasses import dataclass

from monitor.core.alerts import Alert, Level


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    """A line or frame that could not be used, kept with the reason.

    ``raw`` is the offending input as text (truncated by the producer to a sane size);
    ``source`` says where it came from (a file and line number, or a feed name). ``log``:
    the log sink writes it as a line of its own; ``store``: the database keeps it;
    ``sampled``: it is kept as one of a sample, after the first ones of the run
    (monitor.core.quarantine). Every bad input is counted in a :class:`QuarantineCounts`,
    whether a record was made of it or not.
    """

    source: str
    recv_ms: int | None
    reason: str
    raw: str
    log: bool = True
    store: bool = True
    sampled: bool = False


@dataclass(frozen=True, slots=True)
class QuarantineCounts:
    """Bad inputs counted since the previous one, by reason class (monitor.core.quarantine):
    what the database adds to its exact counts."""

    counts: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class QuarantineSummary:
    """The log's summary of the bad inputs of the last ``window_s`` seconds: ``counts`` by
    reason class, ``suppressed`` of them without a log line of their own, ``total`` since
    the run started."""

    counts: tuple[tuple[str, int], ...]
    suppressed: int
    total: int
    window_s: float


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


@dataclass(frozen=True, slots=True)
class PoolCheckpoint:
    """The level of one of an account's pools (monitor.core.engine) and its next reminder."""

    key: str
    level: Level
    reminder_due_ms: int | None


@dataclass(frozen=True, slots=True)
class AccountCheckpoint:
    """The part of an account's state a restart needs so that it neither repeats nor loses
    a transition: its level, when the next reminder is due, and which stop-loss rules have
    fired and not yet re-armed. Everything else is rebuilt from the feed's snapshots.

    ``level`` and ``reminder_due_ms`` are the account's (its worst pool, its earliest
    reminder); ``pools`` holds every pool's own (the cross pool, the currency pools of
    single-currency margin, isolated positions). A checkpoint without ``pools`` (written
    by an earlier version) restores ``level`` to the account's own pool.

    Written in the same transaction as the alerts that changed it.
    """

    account: str
    level: Level
    reminder_due_ms: int | None
    disarmed_rules: tuple[str, ...]
    ts: int
    pools: tuple[PoolCheckpoint, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredAlert:
    """An alert that the durable store has just inserted, with its insertion number.

    ``seq`` grows with every insert and is never reused, so it orders alerts exactly as a
    catch-up read from the store does; the alert stream uses it to join catch-up and live
    alerts with no gap and no duplicate (monitor.runtime.stream). The SQLite sink hands these to
    its followers after the commit, one per newly inserted alert, in ``seq`` order; an
    alert the store already held (a re-processed event after a restart) gets none.

    ``json`` is the alert's JSON (SPEC 2, :meth:`Alert.to_json`), encoded once: by the
    batch that brought it to the store (monitor.core.batch), or as it is read back for a
    catch-up. Every follower that sends the alert sends these bytes.
    """

    seq: int
    alert: Alert
    json: bytes


@dataclass(frozen=True, slots=True)
class NotifierCursor:
    """How far one notifier has delivered the stored alerts (adapters/notify).

    ``delivered_seq``: every stored alert with a ``seq`` at or below it that the notifier's
    filter keeps has been delivered. ``inflight_first_seq`` and ``inflight_last_seq``,
    when set, are the first and last ``seq`` of the message being sent (``summary``: as
    one summary), written before it is sent: after a crash the same message, with the
    same idempotency key, is sent again before anything else.
    """

    notifier: str
    delivered_seq: int
    inflight_first_seq: int | None = None
    inflight_last_seq: int | None = None
    inflight_summary: bool = False
