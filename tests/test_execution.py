"""The pure core of execution (monitor.core.execution): legs, client ids, sizing, the leg table."""

from __future__ import annotations

import re
from typing import Any

import pytest

from monitor.core.alerts import Alert
from monitor.core.engine import MarginEngine
from monitor.core.events import (
    BalanceUpdate,
    CurrencyBalance,
    MarkPrice,
    Position,
    PositionSnapshot,
)
from monitor.core.execution import (
    FINAL_STATES,
    MAX_RESENDS,
    TRANSITIONS,
    Leg,
    LegProgress,
    client_order_id,
    closable,
    execution_alert,
    legs_of,
    trigger_fields,
)
from monitor.core.instruments import Instrument, Tier
from monitor.core.payloads import ExecutionSentPayload, LegFields
from monitor.core.settings import AccountConfig, Config, RiskConfig, StopLossRule

BTC = "BTC-USDT-SWAP"
ETH = "ETH-USDT-SWAP"
T0 = 1_767_225_600_000


def instruments() -> tuple[Instrument, ...]:
    return (Instrument(BTC, "linear", 0.01, 1.0, "BTC", "USDT", (Tier(1e15, 0.004),), 100.0,
                       1.0),
            Instrument(ETH, "linear", 0.1, 1.0, "ETH", "USDT", (Tier(1e15, 0.005),), 100.0,
                       1.0))


def fired_stop_loss(action: str = "close_all", **rule: Any) -> Alert:
    """A stop_loss alert as the engine emits it: a hedge-mode account, long BTC and short
    ETH, then a mark that sinks its margin ratio below the rule's bound."""
    stop = StopLossRule("guard", "margin_ratio", 3.0, action, **rule)  # type: ignore[arg-type]
    config = Config(risk=RiskConfig(execute_triggers=True), instruments=instruments(),
                    accounts={"main": AccountConfig("main", stop_loss=(stop,), execute=True,
                                                    trade_api_key_env="K",
                                                    trade_api_secret_env="S",
                                                    trade_passphrase_env="P")})
    engine = MarginEngine(config)
    engine.apply(BalanceUpdate("main", (CurrencyBalance("USDT", 2_000.0, None, None),), True,
                               None, T0, T0))
    engine.apply(PositionSnapshot("main", (Position(BTC, 300.0, 40_000.0, 10.0, "long"),
                                           Position(ETH, -400.0, 2_000.0, 10.0, "short")),
                                  T0, T0))
    engine.apply(MarkPrice(ETH, 2_000.0, T0 + 1, T0 + 1))
    alerts = list(engine.apply(MarkPrice(BTC, 40_000.0, T0 + 2, T0 + 2)))
    alerts += engine.apply(MarkPrice(BTC, 39_000.0, T0 + 3, T0 + 3))
    return next(a for a in alerts if a.kind == "stop_loss")


def test_legs_of_an_engine_stop_loss_close_the_positions_reduce_only() -> None:
    alert = fired_stop_loss()
    assert alert.payload["dry_run"] is False  # the account executes
    legs = legs_of(alert)
    assert [(leg.inst_id, leg.side, leg.position_side, leg.margin_mode, leg.size)
            for leg in legs] == [(BTC, "sell", "long", "cross", 300.0),
                                 (ETH, "buy", "short", "cross", 400.0)]
    assert [leg.index for leg in legs] == [0, 1]
    assert {leg.alert_id for leg in legs} == {alert.id}


def test_legs_of_a_reduce_rule_are_rounded_to_lots() -> None:
    legs = legs_of(fired_stop_loss("reduce", fraction=0.25))
    assert [(leg.inst_id, leg.size) for leg in legs] == [(BTC, 75.0), (ETH, 100.0)]


def test_legs_of_skip_what_the_engine_never_writes() -> None:
    alert = fired_stop_loss()
    orders = [*alert.payload["orders"], {"inst_id": BTC, "side": "hold", "size": 1},
              {"inst_id": BTC, "side": "sell", "size": float("inf")}, "junk"]
    broken = Alert(**{**{f: getattr(alert, f) for f in alert.__dataclass_fields__},
                      "payload": {**alert.payload, "orders": orders}})
    assert len(legs_of(broken)) == 2
    not_a_trigger = Alert(**{**{f: getattr(alert, f) for f in alert.__dataclass_fields__},
                             "kind": "reminder"})
    assert legs_of(not_a_trigger) == ()


def test_client_ids_are_okx_shaped_deterministic_and_distinct() -> None:
    ids = {client_order_id(f"{T0:013d}-{n:016x}", leg, attempt)
           for n in range(50) for leg in range(3) for attempt in range(1, 4)}
    assert len(ids) == 50 * 3 * 3
    assert all(re.fullmatch(r"rm[0-9a-f]{20}\d{5}", cid) and len(cid) <= 32 for cid in ids)
    assert client_order_id("x", 1, 2) == client_order_id("x", 1, 2)
    with pytest.raises(ValueError):
        client_order_id("x", 0, 0)


def leg(side: str = "sell", size: float = 10.0, position_side: str = "net") -> Leg:
    return Leg("a", 0, "main", BTC, side, position_side, "cross", size)  # type: ignore[arg-type]


def test_closable_never_exceeds_the_live_position_of_its_side() -> None:
    assert closable(leg(), 10.0, {(BTC, "cross", "net"): 25.0}) == 10.0
    assert closable(leg(), 10.0, {(BTC, "cross", "net"): 4.0}) == 4.0      # shrank
    assert closable(leg(), 10.0, {}) == 0.0                                  # gone
    assert closable(leg(), 10.0, {(BTC, "cross", "net"): -5.0}) == 0.0       # flipped short
    assert closable(leg("buy"), 10.0, {(BTC, "cross", "net"): -5.0}) == 5.0
    assert closable(leg(position_side="long"), 10.0, {(BTC, "cross", "net"): 30.0}) == 0.0
    assert closable(leg(), 3.0, {(BTC, "cross", "net"): 30.0}) == 3.0        # the remainder


def progress(state: str = "pending", attempt: int = 0) -> LegProgress:
    item = LegProgress(leg(), "stop_loss", T0)
    if attempt:
        for _ in range(attempt):
            item.next_attempt(10.0)
    item.state = state  # type: ignore[assignment]
    return item


def test_the_table_has_no_exit_from_a_final_state() -> None:
    assert not [key for key in TRANSITIONS if key[0] in FINAL_STATES]
    with pytest.raises(ValueError, match="no transition"):
        progress("filled").step("send", 3)


def test_rejections_retry_with_a_new_id_until_the_bound() -> None:
    item = progress("pending")
    ids = []
    for expected in ("pending", "pending", "failed"):
        ids.append(item.next_attempt(10.0))
        item.step("send", 3)
        assert item.step("rejected", 3) == expected
    assert len(set(ids)) == 3 and item.attempt == 3


def test_a_partial_fill_retries_the_remainder_only() -> None:
    item = progress("accepted", attempt=1)
    item.note_fill(4.0, 40_100.0)
    assert item.step("ended", 3) == "pending"
    assert (item.filled, item.remaining, item.reuse_id) == (4.0, 6.0, False)
    item.next_attempt(item.remaining)
    item.step("send", 3)
    item.step("accepted", 3)
    item.note_fill(6.0, 40_050.0)
    assert item.step("filled", 3) == "filled"
    assert item.total_filled == 10.0 and item.average_price == 40_050.0


def test_an_absent_order_is_sent_again_with_the_same_id_a_bounded_number_of_times() -> None:
    item = progress("sending", attempt=1)
    first = item.client_id
    item.step("lost", 3)
    for _ in range(MAX_RESENDS):
        assert item.step("absent", 3) == "pending" and item.reuse_id
        item.step("send", 3)
        item.step("lost", 3)
    assert item.step("absent", 3) == "failed"
    assert item.client_id == first and item.attempt == 1


def test_a_rate_limit_resends_the_same_id_without_using_up_resends() -> None:
    item = progress("sending", attempt=1)
    for _ in range(MAX_RESENDS + 2):
        assert item.step("throttled", 3) == "pending"
        item.step("send", 3)
    assert item.resends == 0 and item.attempt == 1


def test_execution_alerts_keep_the_trigger_time_and_have_stable_ids() -> None:
    trigger = fired_stop_loss()
    sent: ExecutionSentPayload = {**trigger_fields(trigger), "orders": [], "dry_run": False}
    one = execution_alert("execution_sent", trigger, "sent/x", T0 + 99, sent)
    again = execution_alert("execution_sent", trigger, "sent/x", T0 + 5_000, sent)
    other = execution_alert("execution_sent", trigger, "sent/y", T0 + 99, sent)
    assert one.id == again.id != other.id
    assert (one.ts, one.level, one.margin_ratio) == (trigger.ts, trigger.level,
                                                     trigger.margin_ratio)
    assert one.payload["trigger_id"] == trigger.id and one.emitted_ms == T0 + 99


def test_execution_alerts_read_as_a_person_needs_them() -> None:
    from adapters.notify.text import alert_text

    trigger = fired_stop_loss()
    leg: LegFields = {"leg": 0, "inst_id": BTC, "side": "sell", "pos_side": "long",
                      "margin_mode": "cross", "size": 300.0,
                      "client_id": client_order_id(trigger.id, 0, 3), "attempt": 3}
    failed = execution_alert("execution_failed", trigger, "0/3/0/failed", T0, {
        **trigger_fields(trigger), **leg, "reason": "rejected", "s_code": "51008",
        "s_msg": "Insufficient margin", "will_retry": False, "filled": 0.0,
        "remaining": 300.0, "max_attempts": 3})
    text = alert_text(failed)
    assert "51008" in text and "300 contracts left" in text and "act now" in text
    filled = execution_alert("execution_filled", trigger, "0/filled", T0, {
        **trigger_fields(trigger), **leg, "order_id": "1", "filled": 300.0,
        "avg_price": 39_000.0, "exchange_ts": T0})
    assert "sell 300 BTC-USDT-SWAP filled at 39000" in alert_text(filled)
