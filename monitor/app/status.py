"""``riskmon status``: every account's figures now, and how far each is from trouble (SPEC 5).

One document, whatever the source (a running daemon's ``/v1/status``, a replay, the margin
history of a database), built by :func:`status_document` and printed by the CLI as a
table on a terminal or as JSON::

    {"source": "daemon" | "replay" | "database", "as_of": <event ms>,
     "accounts": {NAME: {<the figures of --state-out (SPEC 7)>,
                         "next_level", "next_threshold", "distance_to_next",
                         "distance_to_liquidation"}}}

Distances are in margin-ratio units: ``distance_to_next`` is the margin ratio minus the
entry threshold of the next worse level (null at liquidation, or when the ratio is
undefined: nothing at risk), ``distance_to_liquidation`` the ratio minus the liquidation
threshold. A position's distance to its liquidation mark is its
``liquidation_distance_pct``. Figures from a database are its latest margin-history sample
(no positions are stored there).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from monitor.core.alerts import LEVEL_RANK, LEVELS, Level, level_named
from monitor.core.records import MarginPoint
from monitor.core.settings import RiskConfig
from monitor.core.transitions import LevelLadder


def distances(account: Mapping[str, Any], risk: RiskConfig) -> dict[str, Any]:
    """The next worse level of an account's ``level`` and its distances in ratio units;
    no distances while the account's risk is unknown (its ratio is then only what is known
    so far, and a distance from it would read as a margin of safety)."""
    ladder = LevelLadder(risk)
    level = level_named(account.get("level")) or "normal"
    ratio = account.get("margin_ratio") if account.get("risk_known") is not False else None
    rank = LEVEL_RANK[level]
    following: Level | None = LEVELS[rank + 1] if rank + 1 < len(LEVELS) else None
    threshold = None if following is None else ladder.threshold(following)
    return {
        "next_level": following,
        "next_threshold": threshold,
        "distance_to_next": None if ratio is None or threshold is None else ratio - threshold,
        "distance_to_liquidation": None if ratio is None else ratio - risk.liquidation,
    }


def status_document(source: str, as_of: int, accounts: Mapping[str, Mapping[str, Any]],
                    risk: RiskConfig, *,
                    only: Iterable[str] | None = None) -> dict[str, Any]:
    """The status document from accounts' figures (``MarginEngine.state()``'s shape);
    ``only`` keeps those accounts (a token's)."""
    wanted = None if only is None else set(only)
    return {
        "source": source,
        "as_of": as_of,
        "accounts": {name: {**figures, **distances(figures, risk)}
                     for name, figures in sorted(accounts.items())
                     if wanted is None or name in wanted},
    }


def from_history(points: Iterable[MarginPoint]) -> dict[str, dict[str, Any]]:
    """Accounts' figures from their latest margin-history samples (a database)."""
    accounts: dict[str, dict[str, Any]] = {}
    for point in points:
        im = point.init_margin_usd
        accounts[point.account] = {
            "equity_usd": point.equity_usd,
            "maint_margin_usd": point.maint_margin_usd,
            "init_margin_usd": im,
            "margin_ratio": point.margin_ratio,
            "im_coverage": point.equity_usd / im if im > 0 else None,
            "free_margin_usd": point.equity_usd - im,
            "level": point.level,
            "as_of": point.ts,
            "positions": [],
        }
    return accounts
