"""Alert payloads: one ``TypedDict`` per shape of the ``payload`` object (SPEC section 2).

Other programs parse these objects exactly as riskmon writes them, so every site that
builds a payload builds it as its type below, and ``mypy --strict`` checks its keys and
values there. At run time they are plain dicts (no cost, and mypyc compiles them as dicts);
:class:`~monitor.core.alerts.Alert` carries any ``Mapping`` (an alert read back from SQLite or
JSON is whatever was stored). A TypedDict does not fix the order of keys: a key's place
in the JSON is where the site that builds the payload puts it, and alert JSON compared
as text (a replay's output, the stored rows) stays the same only while the sites keep it.

Per kind, the payload types::

    level_changed        LevelChangedPayload
    deleverage_plan      DeleveragePlanPayload (orders: CloseOrder, positions: PlanStep)
    stop_loss            StopLossPayload (orders: CloseOrder)
    reminder             ReminderPayload
    feed_stale           FeedStaleMarkPayload (an instrument's mark is overdue)
                         FeedStaleMissingPayload (anything else the risk needs)
    feed_recovered       FeedRecoveredMarkPayload (the stale mark is back)
                         FeedRecoveredMissingPayload (a missing item is back)
    feed_connected       FeedConnectionPayload
    feed_disconnected    FeedConnectionPayload
    exchange_divergence  ExchangeDivergencePoolPayload (a pool's figures)
                         ExchangeDivergenceLiquidationPayload (a position's liquidation
                         price)
                         ExchangeDivergenceMarginCallPayload (the exchange's margin call
                         against riskmon's view; positions: MarginCallPositionFields);
                         fields: DivergenceField
    account_mode         AccountModePayload
    execution_sent       ExecutionSentPayload (orders: SentOrder)
    execution_filled     ExecutionFilledPayload
    execution_failed     ExecutionFailedPayload

:data:`PAYLOAD_TYPES` is the same table as data. The alerts of a pool (level_changed,
deleverage_plan, reminder, and exchange_divergence of a pool) name the pool with
:class:`PoolFields`; the execution alerts name their trigger with :class:`TriggerFields`
and, but for execution_sent, their leg with :class:`LegFields`.
"""

# No ``from __future__ import annotations`` here: the classes' annotations are evaluated
# as they are defined, so ``NotRequired`` counts in ``__optional_keys__`` (a string
# annotation hides it from Python 3.11; tests/test_payloads.py reads those keys).
from collections.abc import Mapping
from typing import Final, Literal, NotRequired, TypedDict

from monitor.core.alerts import Alert, AlertKind, Level
from monitor.core.events import AccountMode, MarginMode, PositionSide, Side
from monitor.core.settings import Action, Metric

__all__ = [
    "PAYLOAD_TYPES",
    "AccountModePayload",
    "AlertPayload",
    "CloseOrder",
    "DeleveragePlanPayload",
    "DivergenceField",
    "DivergenceFieldName",
    "EngineAlertPayload",
    "ExchangeDivergenceLiquidationPayload",
    "ExchangeDivergenceMarginCallPayload",
    "ExchangeDivergencePoolPayload",
    "ExecutionFailedPayload",
    "ExecutionFilledPayload",
    "ExecutionPayload",
    "ExecutionSentPayload",
    "FeedConnectionPayload",
    "FeedRecoveredMarkPayload",
    "FeedRecoveredMissingPayload",
    "FeedStaleMarkPayload",
    "FeedStaleMissingPayload",
    "LegFields",
    "LevelChangedPayload",
    "MarginCallPositionFields",
    "MarginCallReason",
    "PlanStep",
    "PoolFields",
    "ReminderPayload",
    "RiskUnknownFields",
    "SentOrder",
    "StopLossPayload",
    "TriggerFields",
    "orders_of",
]


class PoolFields(TypedDict, total=False):
    """Which pool an alert is about, when it is not the account's own cross pool (SPEC
    1.5): ``pool`` names a currency's pool in single-currency margin; ``margin_mode``,
    ``side`` and ``inst_id`` an isolated position; ``source`` an account followed on the
    exchange's own figures (portfolio margin)."""

    pool: str
    margin_mode: Literal["isolated"]
    side: PositionSide
    inst_id: str
    source: Literal["exchange"]


class CloseOrder(TypedDict):
    """A reduce-only market order closing ``size`` contracts of a position; ``pos_side``
    names the side it closes (hedge mode), ``margin_mode`` is the position's."""

    inst_id: str
    side: Side
    size: float
    reduce_only: Literal[True]
    ord_type: Literal["market"]
    pos_side: PositionSide
    margin_mode: MarginMode


class PlanStep(TypedDict):
    """One position in a deleverage plan: its UPL in USD, how many of its ``contracts``
    the plan closes."""

    inst_id: str
    side: PositionSide
    margin_mode: MarginMode
    upl_usd: float
    close_contracts: float
    contracts: float


# "from" is a keyword: this part is declared in the functional form.
_LevelChange = TypedDict("_LevelChange", {
    "from": Level,
    "to": Level,
    "threshold": float | None,  # the entry threshold of "to"; None for normal
})


class LevelChangedPayload(_LevelChange, PoolFields):
    """``level_changed``: a pool moved from one level to another."""


class DeleveragePlanPayload(PoolFields):
    """``deleverage_plan`` (SPEC 1.8): the orders that bring the pool back to
    ``target_margin_ratio`` and the ratio they would leave; ``reason`` says why a plan has
    no orders (portfolio margin)."""

    target_margin_ratio: float
    orders: list[CloseOrder]
    positions: list[PlanStep]
    projected_margin_ratio: float | None
    reason: NotRequired[str]


class StopLossPayload(TypedDict):
    """``stop_loss`` (SPEC 1.7): a rule fired. ``target_inst_id`` for ``close``,
    ``fraction`` for ``reduce``; ``source`` when the metric is the exchange's figure."""

    rule: str
    metric: Metric
    value: float | None
    below: float
    action: Action
    orders: list[CloseOrder]
    dry_run: bool
    target_inst_id: NotRequired[str | None]
    fraction: NotRequired[float | None]
    source: NotRequired[Literal["exchange"]]


class RiskUnknownFields(TypedDict, total=False):
    """What an alert's figures lack, when the account's risk is unknown."""

    risk_unknown: list[str]


class ReminderPayload(PoolFields, RiskUnknownFields):
    """``reminder``: the pool is still at ``since_level`` (deleverage or worse)."""

    since_level: Level


class FeedStaleMarkPayload(TypedDict):
    """``feed_stale`` of an instrument whose mark is overdue (``last_mark_ts`` None: none
    has come yet)."""

    inst_id: str
    last_mark_ts: int | None
    age_ms: int


class FeedStaleMissingPayload(TypedDict):
    """``feed_stale`` of anything else the account's risk waits for (``missing``: such as
    ``price:BTC``, ``snapshot:balances``)."""

    missing: list[str]
    reason: str


class FeedRecoveredMarkPayload(TypedDict):
    """``feed_recovered``: the stale instrument's mark is back."""

    inst_id: str


class FeedRecoveredMissingPayload(TypedDict):
    """``feed_recovered``: one missing item arrived; ``missing`` is what is still
    missing."""

    recovered: str
    missing: list[str]


class FeedConnectionPayload(TypedDict):
    """``feed_connected`` and ``feed_disconnected``."""

    feed: Literal["public", "private"]
    reason: str


DivergenceFieldName = Literal["margin_ratio", "maint_margin", "init_margin",
                              "liquidation_price"]


class DivergenceField(TypedDict):
    """One figure compared with the exchange's (SPEC 1.9); ``ours`` None: riskmon has no
    such figure (nothing at risk, no liquidation mark)."""

    field: DivergenceFieldName
    ours: float | None
    theirs: float
    relative_difference: float | None


class ExchangeDivergencePoolPayload(PoolFields):
    """``exchange_divergence`` of a pool's figures. ``ours``, ``theirs`` and
    ``relative_difference`` are the margin ratios' (what earlier versions carried)."""

    fields: list[DivergenceField]
    tolerance: float
    ours: float | None
    theirs: float | None
    relative_difference: float | None


class ExchangeDivergenceLiquidationPayload(TypedDict):
    """``exchange_divergence`` of a position's liquidation price (in ``fields``); ``ours``
    is the ratio of the position's pool."""

    fields: list[DivergenceField]
    tolerance: float
    ours: float | None
    theirs: None
    relative_difference: None
    inst_id: str
    side: PositionSide
    margin_mode: MarginMode


MarginCallReason = Literal["position_unknown", "maint_margin", "level_normal", "risk_unknown"]
"""Why an exchange's margin call disagrees with riskmon: a position riskmon does not hold
(or holds without its instrument), a maintenance margin beyond the tolerance, riskmon's
level ``normal`` for a position's pool, the account's risk unknown to riskmon."""


class MarginCallPositionFields(TypedDict):
    """One position of an exchange's margin call beside riskmon's view of it. ``ours``
    is riskmon's maintenance margin of the position it holds, at the exchange's mark, in
    the settlement currency as ``theirs``; ``held`` its contracts (None: riskmon holds no
    such position); ``level`` riskmon's level of the position's pool."""

    inst_id: str
    side: PositionSide
    margin_mode: MarginMode
    contracts: float
    held: float | None
    ours: float | None
    theirs: float | None
    relative_difference: float | None
    level: Level | None


class ExchangeDivergenceMarginCallPayload(TypedDict):
    """``exchange_divergence`` of an exchange's margin call
    (:class:`~monitor.core.events.MarginCall`) that riskmon's view does not bear out
    (``reasons``); ``fields`` has the maintenance margins beyond the tolerance, ``ours``
    the account's ratio."""

    fields: list[DivergenceField]
    tolerance: float
    ours: float | None
    theirs: None
    relative_difference: None
    margin_call: Literal[True]
    reasons: list[MarginCallReason]
    positions: list[MarginCallPositionFields]


class AccountModePayload(TypedDict):
    """``account_mode`` (SPEC 1.5): a mode followed on the exchange's figures, or one
    riskmon cannot follow at all."""

    mode: AccountMode
    exchange_level: str | None
    source: Literal["exchange"] | None
    followed: bool
    reason: str


class TriggerFields(TypedDict):
    """The ``stop_loss`` or ``deleverage_plan`` alert an execution alert is about."""

    trigger_id: str
    trigger_kind: AlertKind


class LegFields(TypedDict):
    """One leg of a trigger (monitor.core.execution.Leg) and its current order."""

    leg: int
    inst_id: str
    side: Side
    pos_side: PositionSide
    margin_mode: MarginMode
    size: float
    client_id: str
    attempt: int


class SentOrder(LegFields):
    """One order of a request, with the exchange's answer about it."""

    order_size: float
    order_id: str
    s_code: str
    s_msg: str


class ExecutionSentPayload(TriggerFields):
    """``execution_sent``: one request's orders."""

    orders: list[SentOrder]
    dry_run: bool


class ExecutionFilledPayload(TriggerFields, LegFields):
    """``execution_filled``: a leg's order is filled (``exchange_ts``: the exchange's
    time of the report)."""

    order_id: str
    filled: float
    avg_price: float | None
    exchange_ts: int | None


class ExecutionFailedPayload(TriggerFields, LegFields):
    """``execution_failed``: a leg's order failed; ``will_retry`` says whether another
    attempt follows."""

    reason: str
    s_code: str
    s_msg: str
    will_retry: bool
    filled: float
    remaining: float
    max_attempts: int


EngineAlertPayload = (
    LevelChangedPayload
    | DeleveragePlanPayload
    | StopLossPayload
    | ReminderPayload
    | FeedStaleMarkPayload
    | FeedStaleMissingPayload
    | FeedRecoveredMarkPayload
    | FeedRecoveredMissingPayload
    | FeedConnectionPayload
    | ExchangeDivergencePoolPayload
    | ExchangeDivergenceLiquidationPayload
    | ExchangeDivergenceMarginCallPayload
    | AccountModePayload
)
"""The payloads the margin engine emits."""

ExecutionPayload = ExecutionSentPayload | ExecutionFilledPayload | ExecutionFailedPayload
"""The payloads the executor emits (monitor.core.execution.execution_alert)."""

AlertPayload = EngineAlertPayload | ExecutionPayload
"""Every payload riskmon emits."""

PAYLOAD_TYPES: Final[Mapping[AlertKind, tuple[type, ...]]] = {
    "level_changed": (LevelChangedPayload,),
    "deleverage_plan": (DeleveragePlanPayload,),
    "stop_loss": (StopLossPayload,),
    "reminder": (ReminderPayload,),
    "feed_stale": (FeedStaleMarkPayload, FeedStaleMissingPayload),
    "feed_recovered": (FeedRecoveredMarkPayload, FeedRecoveredMissingPayload),
    "feed_connected": (FeedConnectionPayload,),
    "feed_disconnected": (FeedConnectionPayload,),
    "exchange_divergence": (ExchangeDivergencePoolPayload,
                            ExchangeDivergenceLiquidationPayload,
                            ExchangeDivergenceMarginCallPayload),
    "account_mode": (AccountModePayload,),
    "execution_sent": (ExecutionSentPayload,),
    "execution_filled": (ExecutionFilledPayload,),
    "execution_failed": (ExecutionFailedPayload,),
}
"""Per kind, the shapes its payload may have (the module docstring's table)."""


def orders_of(alert: Alert) -> list[CloseOrder]:
    """The orders of a ``stop_loss`` or ``deleverage_plan`` alert; none for other kinds.

    The alert may come from the store, written by any version: an ``orders`` that is not a
    list reads as none, and the orders themselves are as stored (a reader that acts on
    them checks each one, as monitor.core.execution.legs_of does).
    """
    if alert.kind not in ("stop_loss", "deleverage_plan"):
        return []
    orders = alert.payload.get("orders")
    return orders if isinstance(orders, list) else []
