"""Alerts: what riskmon emits, their stable ids and their JSON form (SPEC section 2)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import orjson

Level = Literal["normal", "warning", "withdrawal_lock", "deleverage", "liquidation"]
LEVELS: tuple[Level, ...] = get_args(Level)
LEVEL_RANK: dict[Level, int] = {level: rank for rank, level in enumerate(LEVELS)}


def level_named(value: object) -> Level | None:
    """``value`` as a :data:`Level`, or None if it names none."""
    for level in LEVELS:
        if value == level:
            return level
    return None

AlertKind = Literal[
    "level_changed",
    "deleverage_plan",
    "stop_loss",
    "feed_stale",
    "feed_recovered",
    "feed_disconnected",
    "feed_connected",
    "reminder",
    "exchange_divergence",
    "account_mode",
    "execution_sent",
    "execution_filled",
    "execution_failed",
]
ALERT_KINDS: tuple[AlertKind, ...] = get_args(AlertKind)


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert.

    ``ts`` is the event time of the triggering event; ``emitted_ms`` is its local receive
    time (the engine reads no clock, so a replay reproduces it exactly). The figures are
    those of the pool the alert is about (the account's, a currency's in single-currency
    margin, an isolated position's); ``margin_ratio`` is ``equity_usd / (maint_margin_usd +
    closing_fee_usd)``, None when that denominator is zero.
    """

    id: str
    ts: int
    emitted_ms: int
    account: str
    kind: AlertKind
    level: Level
    from_level: Level | None
    margin_ratio: float | None
    equity_usd: float
    maint_margin_usd: float
    init_margin_usd: float
    inst_id: str | None
    mark: float | None
    payload: Mapping[str, Any]
    closing_fee_usd: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The alert as the JSON object of SPEC section 2."""
        return {
            "id": self.id,
            "ts": self.ts,
            "emitted_ts": self.emitted_ms,
            "account": self.account,
            "kind": self.kind,
            "level": self.level,
            "from_level": self.from_level,
            "margin_ratio": self.margin_ratio,
            "equity_usd": self.equity_usd,
            "maint_margin_usd": self.maint_margin_usd,
            "closing_fee_usd": self.closing_fee_usd,
            "init_margin_usd": self.init_margin_usd,
            "inst_id": self.inst_id,
            "mark": self.mark,
            "payload": dict(self.payload),
        }

    def to_json(self) -> bytes:
        """One JSON line (without the newline)."""
        return orjson.dumps(self.to_dict())


def alert_from_dict(data: Mapping[str, Any]) -> Alert:
    """Rebuild an alert from :meth:`Alert.to_dict` output (as stored in SQLite)."""
    return Alert(
        id=data["id"],
        ts=data["ts"],
        emitted_ms=data["emitted_ts"],
        account=data["account"],
        kind=data["kind"],
        level=data["level"],
        from_level=data["from_level"],
        margin_ratio=data["margin_ratio"],
        equity_usd=data["equity_usd"],
        maint_margin_usd=data["maint_margin_usd"],
        init_margin_usd=data["init_margin_usd"],
        inst_id=data["inst_id"],
        mark=data["mark"],
        payload=data["payload"],
        closing_fee_usd=data.get("closing_fee_usd", 0.0),
    )


def alert_id(account: str, kind: str, ts: int, sequence: int, discriminator: str) -> str:
    """A stable, time-sortable alert id.

    The id depends only on the input (account, kind, event time, what distinguishes the
    alert, such as a level pair or a rule name, and ``sequence``: how many alerts of that
    account, kind and discriminator came at that event time before it), so replaying the
    same recording yields the same ids, and a daemon that re-processes an event after a
    restart produces the same id (idempotent insert).
    """
    key = f"{account}\x1f{kind}\x1f{ts}\x1f{sequence}\x1f{discriminator}".encode()
    digest = hashlib.blake2b(key, digest_size=8).hexdigest()
    return f"{ts:013d}-{digest}"
