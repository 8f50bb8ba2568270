"""Short human messages for chat destinations (Telegram, Slack, Discord): one line per
alert, and one summary for a burst beyond a destination's rate limit.

Pure functions of the stored alerts (no clock): the same alert always reads the same, so
a message sent again after a restart is the same message.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Final

from adapters.notify.core import StorageNotice
from monitor.core.alerts import LEVEL_RANK, Alert, Level
from monitor.core.payloads import CloseOrder, orders_of

LEVEL_ICON: Final[Mapping[Level, str]] = {
    "normal": "\U0001f7e2",            # green circle
    "warning": "\U0001f7e1",           # yellow circle
    "withdrawal_lock": "\U0001f7e0",   # orange circle
    "deleverage": "\U0001f534",        # red circle
    "liquidation": "\U0001f6a8",       # rotating light
}
SUMMARY_ICON: Final = "\u26a0\ufe0f"   # warning sign
# Kinds that need a look even while the account's level is normal: at normal they get the
# warning sign rather than the green circle.
_ATTENTION_KINDS: Final = frozenset({"stop_loss", "feed_stale", "feed_disconnected",
                                     "exchange_divergence", "account_mode",
                                     "execution_sent", "execution_filled",
                                     "execution_failed"})
MAX_ORDERS_SHOWN: Final = 8


def level_words(level: str | None) -> str:
    return "unknown" if level is None else level.replace("_", " ")


def utc_time(ms: int) -> str:
    """Event time as ``2026-01-01 00:07:06 UTC``."""
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def storage_text(notice: StorageNotice) -> str:
    """riskmon's own storage failing, or working again (a chat line)."""
    since = utc_time(int(notice.since_s * 1000))
    if notice.failing:
        return (f"{SUMMARY_ICON} riskmon cannot store alerts since {since} ({notice.error}):"
                f" {notice.waiting} records held in memory. Alerts reach you only once they"
                " are stored: watch the accounts on the exchange meanwhile")
    duration = max(0.0, notice.at_s - notice.since_s)
    return (f"{LEVEL_ICON['normal']} riskmon stores alerts again (failing since {since},"
            f" for {duration:.0f} s): the alerts held meanwhile are delivered as stored")


def ratio_words(value: float | None) -> str:
    """A margin ratio; None (nothing at risk: no maintenance margin) reads ``n/a``."""
    return "n/a" if value is None else f"{value:.3f}"


def subject(alert: Alert) -> str:
    """Who the alert is about: the account, and the pool when it is not the account's own
    (an isolated position, a currency's pool, the exchange's figures)."""
    payload = alert.payload
    if payload.get("margin_mode") == "isolated":
        side = payload.get("side")
        return (f"{alert.account} isolated {payload.get('inst_id') or alert.inst_id}"
                + (f" ({side})" if side and side != "net" else ""))
    if isinstance(payload.get("pool"), str):
        return f"{alert.account} {payload['pool']} pool"
    if payload.get("source") == "exchange" and alert.kind != "account_mode":
        return f"{alert.account} (exchange figures)"
    return alert.account


_MARGIN_CALL_REASONS: Final = {
    "position_unknown": "a position riskmon does not hold",
    "maint_margin": "maintenance margin differs",
    "level_normal": "riskmon's level is normal",
    "risk_unknown": "riskmon's risk of the account is unknown",
}
"""The words for an exchange margin call's ``reasons`` (monitor.core.payloads)."""


def orders_words(orders: Sequence[CloseOrder]) -> str:
    """``sell 6 BTC-USDT-SWAP, buy 2 ETH-USDT-SWAP long (reduce-only market)``.

    The orders are as stored (:func:`monitor.core.payloads.orders_of`): an entry that is not
    an object is left out."""
    if not orders:
        return "no orders"
    parts = []
    for order in orders[:MAX_ORDERS_SHOWN]:
        if not isinstance(order, Mapping):
            continue
        size = order.get("size")
        size_text = f"{size:g}" if isinstance(size, int | float) else str(size)
        text = f"{order.get('side')} {size_text} {order.get('inst_id')}"
        if order.get("pos_side") not in (None, "net"):
            text += f" {order['pos_side']}"
        if order.get("margin_mode") == "isolated":
            text += " isolated"
        parts.append(text)
    if len(orders) > MAX_ORDERS_SHOWN:
        parts.append(f"and {len(orders) - MAX_ORDERS_SHOWN} more")
    return ", ".join(parts) + " (reduce-only market)"


def alert_text(alert: Alert) -> str:
    """One alert as a short line: icon, who, what, the margin ratio, the event time."""
    payload = alert.payload
    who = subject(alert)
    ratio = ratio_words(alert.margin_ratio)
    match alert.kind:
        case "level_changed":
            threshold = payload.get("threshold")
            body = (f"{who}: {level_words(alert.from_level)} \u2192 {level_words(alert.level)},"
                    f" margin ratio {ratio}"
                    + (f" (threshold {threshold:.2f})" if isinstance(threshold, int | float)
                       else "")
                    + f"; equity {alert.equity_usd:,.2f} USD,"
                    f" maintenance {alert.maint_margin_usd:,.2f} USD")
        case "deleverage_plan":
            projected = payload.get("projected_margin_ratio")
            body = (f"{who}: deleverage plan at margin ratio {ratio}:"
                    f" {orders_words(orders_of(alert))}"
                    + (f"; projected margin ratio {projected:.3f}"
                       if isinstance(projected, int | float) else ""))
        case "stop_loss":
            value = payload.get("value")
            metric = payload.get("metric", "?")
            body = (f"{who}: stop-loss {payload.get('rule', '?')} fired ({metric}"
                    + (f" {value:.3f}" if isinstance(value, int | float) else "")
                    + f" below {payload.get('below')})"
                    + (", dry run" if payload.get("dry_run") else "")
                    + f": {orders_words(orders_of(alert))}")
        case "reminder":
            unknown = payload.get("risk_unknown")
            if isinstance(unknown, list):
                # The figures are only what is known so far: no ratio is given as the truth.
                body = (f"{who}: still in {level_words(alert.level)} (the last level known);"
                        f" risk unknown, missing {', '.join(map(str, unknown))}")
            else:
                body = f"{who}: still in {level_words(alert.level)}, margin ratio {ratio}"
        case "feed_stale":
            if isinstance(payload.get("inst_id"), str):
                age = payload.get("age_ms")
                body = (f"{who}: no mark price for {payload['inst_id']}"
                        + (f" for {age / 1000:.1f} s" if isinstance(age, int | float) else "")
                        + "; risk unknown until it comes back")
            else:
                missing = payload.get("missing")
                listed = ", ".join(map(str, missing)) if isinstance(missing, list) else "?"
                body = f"{who}: risk unknown, missing {listed}"
        case "feed_recovered":
            item = payload.get("inst_id") or payload.get("recovered") or "feed"
            body = f"{who}: {item} back, margin ratio {ratio}"
        case "feed_disconnected" | "feed_connected":
            state = "disconnected" if alert.kind == "feed_disconnected" else "connected"
            reason = payload.get("reason")
            body = (f"{who}: {payload.get('feed', '?')} feed {state}"
                    + (f" ({reason})" if reason else ""))
        case "exchange_divergence" if payload.get("margin_call") is True:
            reasons = payload.get("reasons")
            why = [_MARGIN_CALL_REASONS.get(str(reason), str(reason))
                   for reason in (reasons if isinstance(reasons, list) else [])]
            body = (f"{who}: the exchange issued a margin call that riskmon's figures do not"
                    f" bear out ({'; '.join(why) or '?'}), margin ratio {ratio}: check the"
                    " account on the exchange")
        case "exchange_divergence":
            fields = payload.get("fields")
            shown = []
            for field in fields if isinstance(fields, list) else []:
                if isinstance(field, Mapping):
                    shown.append(f"{field.get('field')} ours {_number(field.get('ours'))}"
                                 f" vs exchange {_number(field.get('theirs'))}")
            body = (f"{who}: figures differ from the exchange's: "
                    + ("; ".join(shown) or "?"))
        case "account_mode":
            body = (f"{who}: account mode {payload.get('mode')}:"
                    f" {payload.get('reason') or 'see riskmon'}")
        case "execution_sent":
            orders = payload.get("orders")
            shown = []
            for order in orders if isinstance(orders, list) else []:
                if isinstance(order, Mapping):
                    shown.append(f"{order.get('side')} {_number(order.get('order_size'))}"
                                 f" {order.get('inst_id')} (sCode {order.get('s_code')})")
            body = f"{who}: stop-loss orders sent: {'; '.join(shown) or '?'}"
        case "execution_filled":
            body = (f"{who}: {payload.get('side')} {_number(payload.get('filled'))}"
                    f" {payload.get('inst_id')} filled at {_price(payload.get('avg_price'))}")
        case "execution_failed":
            retry = ("will retry" if payload.get("will_retry")
                     else "NOT retried: act now")
            code = f" (sCode {payload['s_code']}: {payload.get('s_msg')})" if payload.get(
                "s_code") else ""
            body = (f"{who}: closing {payload.get('side')} {payload.get('inst_id')} failed:"
                    f" {payload.get('reason')}{code}; {_number(payload.get('remaining'))}"
                    f" contracts left, {retry}")
        case _:
            body = f"{who}: {alert.kind}, margin ratio {ratio}"
    icon = (SUMMARY_ICON if alert.level == "normal" and alert.kind in _ATTENTION_KINDS
            else LEVEL_ICON[alert.level])
    return f"{icon} {body} [{utc_time(alert.ts)}]"


def summary_counts(alerts: Sequence[Alert]) -> dict[str, Any]:
    """Counts by kind and account, the worst level and the time span of a burst."""
    by_kind = Counter(alert.kind for alert in alerts)
    by_account = Counter(alert.account for alert in alerts)
    worst = max((alert.level for alert in alerts), key=LEVEL_RANK.__getitem__)
    return {
        "count": len(alerts),
        "by_kind": dict(by_kind.most_common()),
        "by_account": dict(by_account.most_common()),
        "worst_level": worst,
        "first_id": alerts[0].id,
        "last_id": alerts[-1].id,
        "from_ts": min(alert.ts for alert in alerts),
        "to_ts": max(alert.ts for alert in alerts),
    }


def summary_text(alerts: Sequence[Alert]) -> str:
    """A burst collapsed into one message: how many, of which kinds and accounts, the
    worst level among them, and the latest alert in full."""
    counts = summary_counts(alerts)
    kinds = ", ".join(f"{kind} {n}" for kind, n in counts["by_kind"].items())
    accounts = ", ".join(f"{name} {n}" for name, n in counts["by_account"].items())
    return (f"{SUMMARY_ICON} {counts['count']} alerts from {utc_time(counts['from_ts'])}"
            f" to {utc_time(counts['to_ts'])}, collapsed by the rate limit\n"
            f"worst level: {level_words(counts['worst_level'])}\n"
            f"by kind: {kinds}\n"
            f"by account: {accounts}\n"
            f"latest: {alert_text(alerts[-1])}")


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def _price(value: Any) -> str:
    return f"{value:.10g}" if isinstance(value, int | float) else "n/a"


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "n/a"
