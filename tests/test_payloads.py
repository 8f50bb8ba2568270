"""Every alert's payload has a shape monitor.core.payloads declares for its kind.

The bundled stories are replayed as a user replays them (``riskmon replay``), and a few
engine and executor runs add the shapes the stories never produce (isolated, currency and
portfolio pools, divergences, connection and mode alerts, the execution alerts). Each
payload, as its JSON reads, must have every required key of one of its kind's types, no key
that type does not declare, and values of the declared types; so a key the engine starts
writing without declaring it fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

import orjson
import pytest

import monitor.core.payloads
from monitor.core.alerts import ALERT_KINDS, Alert, AlertKind
from monitor.core.engine import MarginEngine
from monitor.core.events import (
    AccountConfigUpdate,
    BalanceUpdate,
    ClockTick,
    CurrencyBalance,
    ExchangeAccountFigures,
    ExchangePositionFigures,
    FeedStatus,
    InstrumentUpdate,
    MarginCall,
    MarginCallPosition,
    Position,
    PositionUpdate,
)
from monitor.core.instruments import Instrument, Tier
from monitor.core.payloads import PAYLOAD_TYPES
from monitor.core.settings import AccountConfig, RiskConfig, StopLossRule
from tests.builders import index, make_config, mark, run, snapshots
from tests.test_execution import fired_stop_loss
from tests.test_executor import Harness, hedged, until

ROOT = Path(__file__).resolve().parents[1]
STORIES = [("story.jsonl", "riskmon.toml"), ("binance_story.jsonl", "binance.toml")]
BTC = "BTC-USDT-SWAP"
INVERSE = "BTC-USD-SWAP"


# -- the check -----------------------------------------------------------------------------


def value_problems(value: Any, annotation: Any, where: str) -> list[str]:
    """Why ``value`` (as JSON reads) is not of the declared type ``annotation``; [] if it
    is. A list's items and a nested TypedDict's keys are checked too."""
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        found = [value_problems(value, member, where) for member in get_args(annotation)]
        return [] if any(not problems for problems in found) else [
            f"{where}: {value!r} is not {annotation}"]
    if origin is Literal:
        # 1 == True: a literal matches only a value of its own type.
        if any(value == option and type(value) is type(option)
               for option in get_args(annotation)):
            return []
        return [f"{where}: {value!r} is not one of {get_args(annotation)}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: {value!r} is not a list"]
        [item_type] = get_args(annotation)
        return [problem for number, item in enumerate(value)
                for problem in value_problems(item, item_type, f"{where}[{number}]")]
    if is_typeddict(annotation):
        if not isinstance(value, dict):
            return [f"{where}: {value!r} is not an object"]
        return shape_problems(value, annotation, where)
    if annotation is type(None):
        return [] if value is None else [f"{where}: {value!r} is not null"]
    if annotation is bool:
        return [] if isinstance(value, bool) else [f"{where}: {value!r} is not a bool"]
    if annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{where}: {value!r} is not an int"]
    if annotation is float:  # an int is a float too (as mypy has it)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{where}: {value!r} is not a number"]
    if annotation is str:
        return [] if isinstance(value, str) else [f"{where}: {value!r} is not a string"]
    raise AssertionError(f"{where}: the check does not know the type {annotation!r}")


def shape_problems(payload: Mapping[str, Any], shape: Any, where: str) -> list[str]:
    """Why ``payload`` does not have the keys and value types of the TypedDict ``shape``."""
    declared = get_type_hints(shape)
    required: frozenset[str] = shape.__required_keys__
    optional: frozenset[str] = shape.__optional_keys__
    assert required | optional == set(declared)
    problems = [f"{where}: no {key!r}" for key in sorted(required - set(payload))]
    problems += [f"{where}: {key!r} is not declared" for key in payload if key not in declared]
    for key, value in payload.items():
        if key in declared:
            problems += value_problems(value, declared[key], f"{where}.{key}")
    return problems


def payload_problems(kind: AlertKind, payload: Mapping[str, Any]) -> list[str]:
    """[] if ``payload`` has one of the shapes of ``kind``; else why it has none."""
    shapes = PAYLOAD_TYPES.get(kind)
    if shapes is None:
        return [f"{kind}: no payload type declared"]
    found = [shape_problems(payload, shape, shape.__name__) for shape in shapes]
    return [] if any(not problems for problems in found) else [
        problem for problems in found for problem in problems]


def as_json(alerts: Iterable[Alert]) -> list[dict[str, Any]]:
    """The alerts as other programs read them."""
    return [orjson.loads(alert.to_json()) for alert in alerts]


def assert_payloads(alerts: Sequence[Mapping[str, Any]]) -> set[str]:
    """Check every alert's payload; the names of the shapes they had."""
    assert alerts
    problems = []
    seen = set()
    for alert in alerts:
        found = payload_problems(alert["kind"], alert["payload"])
        problems += [f"{alert['kind']} {alert['id']}: {problem}" for problem in found]
        seen |= {shape.__name__ for shape in PAYLOAD_TYPES[alert["kind"]]
                 if not shape_problems(alert["payload"], shape, "")}
    assert not problems, "\n".join(problems)
    return seen


# -- the declarations ------------------------------------------------------------------------


def test_every_kind_has_its_payload_types() -> None:
    assert set(PAYLOAD_TYPES) == set(ALERT_KINDS)
    declared = {shape for shapes in PAYLOAD_TYPES.values() for shape in shapes}
    union = set(get_args(monitor.core.payloads.AlertPayload))
    assert declared == union


def test_the_module_docstring_lists_the_same_table() -> None:
    doc = monitor.core.payloads.__doc__
    assert doc is not None
    listed: dict[str, list[str]] = {}
    kind = ""
    for line in doc.split("Per kind, the payload types::")[1].split("\n\n")[1].splitlines():
        match = re.match(r" {4}(\w+)?\s+(\w+Payload)", line)
        if match:
            kind = match[1] or kind
            listed.setdefault(kind, []).append(match[2])
    assert listed == {kind: [shape.__name__ for shape in shapes]
                      for kind, shapes in PAYLOAD_TYPES.items()}


def test_the_check_refuses_an_undeclared_key_a_missing_one_and_a_wrong_type() -> None:
    good = {"from": "normal", "to": "warning", "threshold": 1.5}
    assert payload_problems("level_changed", good) == []
    assert payload_problems("level_changed", {**good, "pool": "USDT"}) == []
    assert payload_problems("level_changed", {**good, "extra": 1}) == [
        "LevelChangedPayload: 'extra' is not declared"]
    assert payload_problems("level_changed", {"from": "normal", "to": "warning"}) == [
        "LevelChangedPayload: no 'threshold'"]
    assert payload_problems("level_changed", {**good, "to": "panic"}) == [
        "LevelChangedPayload.to: 'panic' is not one of ('normal', 'warning', "
        "'withdrawal_lock', 'deleverage', 'liquidation')"]
    assert payload_problems("stop_loss", {
        "rule": "r", "metric": "margin_ratio", "value": None, "below": 1.0,
        "action": "close_all", "orders": [{"inst_id": BTC}], "dry_run": True}) == [
        f"StopLossPayload.orders[0]: no {key!r}"
        for key in ("margin_mode", "ord_type", "pos_side", "reduce_only", "side", "size")]


# -- the payloads riskmon writes -------------------------------------------------------------


@pytest.mark.parametrize(("recording", "config"), STORIES)
def test_the_bundled_stories_write_declared_payloads(recording: str, config: str,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "alerts.jsonl"
    subprocess.run([sys.executable, "-m", "monitor", "replay", ROOT / "examples" / recording,
                    "--config", ROOT / "examples" / config, "--alerts-out", out],
                   check=True, capture_output=True, timeout=120, cwd=ROOT)
    alerts = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert {"level_changed", "deleverage_plan", "stop_loss", "reminder"} <= {
        alert["kind"] for alert in alerts}
    assert_payloads(alerts)


def isolated_pool_alerts() -> list[Alert]:
    """An isolated long walks to liquidation, is reminded of, and its figures and
    liquidation price differ from the exchange's."""
    engine = MarginEngine(make_config(risk=RiskConfig(repeat_interval_s=60)))
    isolated = Position(BTC, 10, 40_000, 10, "net", "isolated", 400.0)
    alerts = run(engine, [*snapshots(1, cash={"USDT": 1000}, positions=(isolated,)),
                          mark(BTC, 40_000, 1), mark(BTC, 36_200, 2), mark(BTC, 36_150, 3),
                          mark(BTC, 36_100, 4)])
    alerts += run(engine, [mark(BTC, 36_100, t) for t in range(1_000, 62_000, 1000)])
    alerts += run(engine, [mark(BTC, 40_000, 62_500)])

    def push(figures: ExchangePositionFigures, ts: int) -> PositionUpdate:
        return PositionUpdate("main", (Position(BTC, 10, 40_000, 10, "net", "isolated",
                                                400.0, figures),), ts, ts)

    alerts += run(engine, [push(ExchangePositionFigures(400 / 18 * 1.5, 16.0, 400.0), 63_000),
                           push(ExchangePositionFigures(None, None, None, 1_000.0), 63_500)])
    return alerts


def currency_pool_alerts() -> list[Alert]:
    """Single-currency margin: the BTC pool moves, the USDT pool diverges."""
    engine = MarginEngine(make_config())
    alerts = run(engine, [
        AccountConfigUpdate("main", "single_currency", "2", False, 1, 1),
        index("BTC", "USDT", 40_000, 1),
        *snapshots(1, cash={"USDT": 1000, "BTC": 0.02}, positions=(
            Position(BTC, 10, 40_000, 10), Position(INVERSE, -50, 50_000, 20))),
        mark(BTC, 40_000, 1), mark(INVERSE, 40_000, 1), mark(INVERSE, 62_000, 2)])
    theirs = ExchangeAccountFigures(1000 / 18 * 1.3, 1000.0, 400.0, 16.0)
    alerts += run(engine, [BalanceUpdate("main", (
        CurrencyBalance("USDT", 1000, None, None, theirs),), False, None, 3, 3)])
    return alerts


def portfolio_alerts() -> list[Alert]:
    """An account followed on the exchange's figures into deleverage (a plan without
    orders), its stop-loss on them, and an account mode riskmon cannot follow."""
    rule = StopLossRule("floor", "margin_ratio", 1.0, "close_all")
    engine = MarginEngine(replace(make_config(), accounts={
        "main": AccountConfig("main", stop_loss=(rule,)), "other": AccountConfig("other")}))
    alerts = run(engine, [AccountConfigUpdate("main", "portfolio", "4", False, 1, 1),
                          *snapshots(1)])
    for ratio, ts in ((1.3, 2), (0.95, 3)):
        figures = ExchangeAccountFigures(ratio, 13_000.0, 20_000.0, 10_000.0)
        alerts += run(engine, [BalanceUpdate("main", (
            CurrencyBalance("USDT", 13_000, None, None),), False, figures, ts, ts)])
    alerts += run(engine, [AccountConfigUpdate("other", "unsupported", "1", False, 4, 4),
                           *snapshots(4, "other", cash={"USDT": 5})])
    return alerts


def feed_alerts() -> list[Alert]:
    """Connections, a stale mark and its return, an unknown instrument until its spec, a
    reminder while the risk is unknown, stop-losses that close one position or reduce."""
    # 100 USDT, long 10 BTC-USDT-SWAP (0.1 BTC) at 40000: MR = (100 + UPL) / (MM + CF).
    rules = (StopLossRule("close-btc", "margin_ratio", 3.0, "close", inst_id=BTC),
             StopLossRule("halve", "margin_ratio", 2.0, "reduce", fraction=0.5))
    engine = MarginEngine(make_config(rules=rules, risk=RiskConfig(repeat_interval_s=60)))
    sol = "SOL-USDT-SWAP"
    alerts = run(engine, [
        FeedStatus(None, "disconnected", "closed", 5, 5),
        FeedStatus("main", "connected", "login ok", 6, 6),
        *snapshots(1_000, cash={"USDT": 100}, positions=(Position(BTC, 10, 40_000, 10),)),
        mark(BTC, 40_000, 1_000),
        mark(BTC, 39_500, 2_000),  # 50 / 17.78 = 2.81: close-btc
        mark(BTC, 39_300, 3_000),  # 30 / 17.69 = 1.70: halve
        ClockTick(14_000, 14_000), mark(BTC, 39_300, 15_000),  # stale, back
        PositionUpdate("main", (Position(sol, 1, 100, 10),), 16_000, 16_000),
        *[mark(BTC, 39_300, t) for t in range(16_000, 29_000, 1000)],  # no SOL spec
        InstrumentUpdate(Instrument(sol, "linear", 1.0, 1.0, "SOL", "USDT",
                                    (Tier(1e15, 0.01),)), 29_000, 29_000),
        mark(sol, 100, 29_000)])
    # Deleverage, then the BTC mark falls silent: its reminder lacks that mark.
    alerts += run(engine, [mark(BTC, 39_170, 30_000), ClockTick(95_000, 95_000)])
    return alerts


def margin_call_alerts() -> list[Alert]:
    """The exchange margin-calls a position riskmon holds at a lower maintenance margin
    and one it does not hold."""
    engine = MarginEngine(make_config())
    alerts = run(engine, [*snapshots(1, cash={"USDT": 1000},
                                     positions=(Position(BTC, 10, 40_000, 10),)),
                          mark(BTC, 40_000, 1)])
    alerts += run(engine, [MarginCall("main", (
        MarginCallPosition(BTC, "net", "cross", 10, 40_000, 30.0),
        MarginCallPosition("ETH-USDT-SWAP", "net", "cross", 5, None, None)), 2, 2)])
    return alerts


async def execution_alerts(tmp_path: Path) -> list[Alert]:
    """A stop-loss carried out: one leg rejected once, then both filled."""
    harness = Harness(tmp_path, hedged())
    try:
        executor, _ = await harness.open(script={BTC: ["reject"]})
        try:
            await harness.trigger(executor, fired_stop_loss())
            await until(lambda: harness.kinds().count("execution_filled") == 2)
        finally:
            await executor.stop()
    finally:
        await harness.close()
    return harness.alerts


async def test_every_payload_shape_riskmon_writes_is_declared(tmp_path: Path) -> None:
    alerts = (isolated_pool_alerts() + currency_pool_alerts() + portfolio_alerts()
              + feed_alerts() + margin_call_alerts() + await execution_alerts(tmp_path))
    seen = assert_payloads(as_json(alerts))
    declared = {shape.__name__ for shapes in PAYLOAD_TYPES.values() for shape in shapes}
    assert seen == declared, f"never produced here: {sorted(declared - seen)}"
    payloads = [alert.payload for alert in alerts]
    # The optional keys, each written at least once.
    assert any("risk_unknown" in p for p in payloads)
    assert any("reason" in p and "orders" in p for p in payloads)  # a plan without orders
    assert {key for p in payloads if "rule" in p for key in p} >= {
        "target_inst_id", "fraction", "source"}
