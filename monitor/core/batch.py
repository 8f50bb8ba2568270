"""What the pipeline hands a sink at once: a :class:`Batch`, its records sorted by kind.

A producer (the line processor's :meth:`~monitor.runtime.pipeline.LineProcessor.take`, the
executor's emitted alerts) builds a batch with :meth:`Batch.of`, which encodes every alert's
JSON (SPEC 2) there, once: the alert file, the alert stream and the webhooks send those
bytes, whichever of them follow. The durable sink passes the batch on with what storing it
produced (:meth:`Batch.with_stored`), and a sink task merges the batches that waited for
its sink (:meth:`Batch.merged`).

Within each kind the records keep the order they were produced in: alerts as the engine
emitted them, margin history as sampled (a later point of an account at the same time
replaces an earlier one when stored), checkpoints as taken (a later one of an account
supersedes an earlier one: :meth:`Batch.latest_checkpoints`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from monitor.core.alerts import Alert
from monitor.core.engine import Notice
from monitor.core.records import (
    AccountCheckpoint,
    MarginPoint,
    QuarantineCounts,
    QuarantineRecord,
    QuarantineSummary,
    StoredAlert,
)


@dataclass(frozen=True, slots=True)
class Batch:
    """Records for the sinks, one field per kind; ``len()`` counts the records.

    ``alert_json`` holds each of ``alerts``' JSON (SPEC 2, :meth:`Alert.to_json`), in the
    same order: build a batch with alerts through :meth:`of`, which encodes them.
    ``stored`` holds the alerts the durable store inserted for this batch, with their
    ``seq`` (adapters/sinks.SqliteSink); a batch fresh from a producer has none.
    """

    alerts: tuple[Alert, ...] = ()
    alert_json: tuple[bytes, ...] = ()
    quarantine: tuple[QuarantineRecord, ...] = ()
    quarantine_counts: tuple[QuarantineCounts, ...] = ()
    quarantine_summaries: tuple[QuarantineSummary, ...] = ()
    history: tuple[MarginPoint, ...] = ()
    notices: tuple[Notice, ...] = ()
    checkpoints: tuple[AccountCheckpoint, ...] = ()
    stored: tuple[StoredAlert, ...] = ()

    def __post_init__(self) -> None:
        if len(self.alert_json) != len(self.alerts):
            raise ValueError(f"a batch of {len(self.alerts)} alerts with"
                             f" {len(self.alert_json)} encodings; build it with Batch.of")

    @classmethod
    def of(
        cls,
        *,
        alerts: Sequence[Alert] = (),
        quarantine: Sequence[QuarantineRecord] = (),
        quarantine_counts: Sequence[QuarantineCounts] = (),
        quarantine_summaries: Sequence[QuarantineSummary] = (),
        history: Sequence[MarginPoint] = (),
        notices: Sequence[Notice] = (),
        checkpoints: Sequence[AccountCheckpoint] = (),
    ) -> Batch:
        """A producer's batch: each alert's JSON is encoded here, for every sink."""
        return cls(tuple(alerts), tuple([alert.to_json() for alert in alerts]),
                   tuple(quarantine), tuple(quarantine_counts), tuple(quarantine_summaries),
                   tuple(history), tuple(notices), tuple(checkpoints))

    @classmethod
    def merged(cls, batches: Iterable[Batch]) -> Batch:
        """The batches as one, each kind in the order of the batches (nothing dropped or
        combined: the merged batch holds as many records as they did)."""
        batches = [batch for batch in batches if batch]
        if len(batches) <= 1:
            return batches[0] if batches else cls()
        return cls(
            tuple([a for b in batches for a in b.alerts]),
            tuple([j for b in batches for j in b.alert_json]),
            tuple([r for b in batches for r in b.quarantine]),
            tuple([c for b in batches for c in b.quarantine_counts]),
            tuple([s for b in batches for s in b.quarantine_summaries]),
            tuple([p for b in batches for p in b.history]),
            tuple([n for b in batches for n in b.notices]),
            tuple([c for b in batches for c in b.checkpoints]),
            tuple([s for b in batches for s in b.stored]),
        )

    def __len__(self) -> int:
        """Records held (an alert and its JSON count once)."""
        return (len(self.alerts) + len(self.quarantine) + len(self.quarantine_counts)
                + len(self.quarantine_summaries) + len(self.history) + len(self.notices)
                + len(self.checkpoints) + len(self.stored))

    def latest_checkpoints(self) -> list[AccountCheckpoint]:
        """One checkpoint per account: its last in the batch, which supersedes the others."""
        return list({checkpoint.account: checkpoint for checkpoint in self.checkpoints}
                    .values())

    def with_stored(self, stored: Sequence[StoredAlert]) -> Batch:
        """The batch as the durable store passes it on: with ``stored`` (the alerts it
        newly inserted, in ``seq`` order) and without the alerts it held already (an
        event re-delivered after a restart re-derives them: they are news to nobody)."""
        if len(stored) == len(self.alerts):
            alerts, alert_json = self.alerts, self.alert_json
        else:
            fresh = {entry.alert.id for entry in stored}
            kept = [(alert, json) for alert, json in zip(self.alerts, self.alert_json,
                                                           strict=True)
                    if alert.id in fresh]
            alerts = tuple([alert for alert, _ in kept])
            alert_json = tuple([json for _, json in kept])
        return replace(self, alerts=alerts, alert_json=alert_json,
                       stored=self.stored + tuple(stored))
