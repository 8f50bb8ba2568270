"""What ``/healthz`` judges by: how long each adverse condition has lasted.

The daemon observes, once a second, which feed connections are down, which instruments
in use have a stale mark and which accounts' risk is unknown (monitor.runtime.daemon). A
condition turns ``/healthz`` to 503 only once it has lasted its grace period
(``[health]``, monitor.app.config.HealthConfig): a reconnect that succeeds at once, or an
account's first second before its snapshots arrive, is not a degraded daemon.
"""

from __future__ import annotations

from collections.abc import Iterable

LISTED = 20
"""At most this many items (connections, instruments, accounts) are named per reason in
the ``/healthz`` body; ``count`` gives them all."""


class Onsets:
    """When each of a set of conditions (by key) began, from periodic observations.

    A key present in every observation since it first appeared keeps the time of that
    first observation; a key absent from one observation is forgotten, and starts again
    when it reappears.
    """

    def __init__(self) -> None:
        self._since: dict[str, float] = {}

    def observe(self, present: Iterable[str], now_s: float) -> None:
        """The keys whose condition holds now."""
        since = self._since
        self._since = {key: since.get(key, now_s) for key in present}

    def lasting(self, grace_s: float, now_s: float) -> list[tuple[str, float]]:
        """``(key, seconds)`` of the conditions that have lasted at least ``grace_s``,
        longest first (then by key)."""
        lasted = [(key, now_s - since) for key, since in self._since.items()
                  if now_s - since >= grace_s]
        lasted.sort(key=lambda item: (-item[1], item[0]))
        return lasted

    def __len__(self) -> int:
        return len(self._since)
