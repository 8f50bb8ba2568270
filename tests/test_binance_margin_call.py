"""Binance's ``MARGIN_CALL`` held against riskmon's own view (SPEC 1.9).

Binance pushes ``MARGIN_CALL`` when it judges an account's risk too high, with each named
position's maintenance margin (``mm``) at its mark (``mp``). riskmon computes the margin
state itself, so the warning is a check: where riskmon does not hold a named position, its
maintenance margin at Binance's mark is beyond the tolerance, its level is ``normal``, or
it does not know the account's risk, one ``exchange_divergence`` says so; where it agrees,
nothing is emitted (its own level alerts have spoken).

Sources:

- hummingbot/hummingbot, ``test/hummingbot/connector/derivative/binance_perpetual/
  test_binance_perpetual_derivative.py`` (``test_margin_call_event``), commit
  2bfaccc48dd49e71a5b6d9b3011808e127dd00cd: a ``MARGIN_CALL`` of one cross ETHUSDT long
  (Binance's documented example, developers.binance.com "Event: Margin Call"; its
  ``self.symbol`` is written ETHUSDT here, as in Binance's page).
- The account and position of tests/test_binance_fidelity.py (ccxt/ccxt, commit
  b5ba50d7, a real multi-assets account long 0.009 BTCUSDT): the margin calls on BTCUSDT
  below carry that capture's own ``maintMargin`` (2.43009666) at its ``markPrice``
  (67502.68519858), in the event's documented shape. Binance would not margin-call that
  account (riskmon's ratio of it is 10.8): which is the point of the ``level_normal`` case.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from adapters.binance.decode import BinanceDecoder, RestPath
from monitor.core.alerts import Alert
from monitor.core.engine import MarginEngine
from monitor.core.errors import BadInput
from monitor.core.events import Event, MarginCall, MarginCallPosition
from tests.test_binance_fidelity import (
    BTC_BRACKETS,
    BTC_EXCHANGE_INFO,
    POSITION_RISK,
    RECV,
    binance_config,
    close,
    engine_at,
    line,
    rest,
)

CAPTURED_MARK = 67502.68519858
CAPTURED_MM = 2.43009666

# hummingbot 2bfaccc4, test_margin_call_event (Binance's documented example).
DOCUMENTED_POSITION = {"s": "ETHUSDT", "ps": "LONG", "pa": "1.327", "mt": "CROSSED", "iw": "0",
                       "mp": "187.17127", "up": "-1.166074", "mm": "1.614445"}
DOCUMENTED: dict[str, Any] = {"e": "MARGIN_CALL", "E": 1587727187525, "cw": "3.16812045",
                              "p": [DOCUMENTED_POSITION]}


def margin_call_frame(mm: float = CAPTURED_MM, symbol: str = "BTCUSDT", side: str = "BOTH",
                      ts: int = RECV + 2) -> bytes:
    """A ``MARGIN_CALL`` naming one cross position (the documented shape)."""
    return line({"account": "main", "frame": {
        "e": "MARGIN_CALL", "E": ts, "cw": "3.72964781", "p": [{
            "s": symbol, "ps": side, "pa": "0.009", "mt": "CROSSED", "iw": "0",
            "mp": f"{CAPTURED_MARK:.8f}", "up": "0.51106678", "mm": f"{mm:.8f}"}]}})


def feed(engine: MarginEngine, raw: bytes, decoder: BinanceDecoder | None = None) -> list[Alert]:
    decoder = decoder or BinanceDecoder()
    return [alert for event in decoder.decode_line(raw) for alert in engine.apply(event)]


def divergences(alerts: list[Alert]) -> list[Alert]:
    return [alert for alert in alerts if alert.kind == "exchange_divergence"]


# -- decoding -----------------------------------------------------------------------------


def test_the_documented_margin_call_decodes_to_its_positions() -> None:
    decoder = BinanceDecoder()
    events = decoder.decode_message(orjson.dumps(DOCUMENTED).decode(), "main", 1_587_727_187_600)
    assert events == [MarginCall("main", (MarginCallPosition(
        "ETHUSDT", "long", "cross", 1.327, 187.17127, 1.614445),), 1587727187525,
        1_587_727_187_600)]


def test_a_position_without_margin_type_has_the_one_last_reported() -> None:
    decoder = BinanceDecoder()
    decoder.decode_line(line({"account": "main", "frame": {
        "e": "ACCOUNT_UPDATE", "E": RECV, "T": RECV, "a": {"m": "ORDER", "B": [], "P": [{
            "s": "ETHUSDT", "pa": "1.327", "ep": "180", "up": "0", "mt": "isolated",
            "iw": "5", "ps": "LONG"}]}}}))
    call = {**DOCUMENTED, "p": [{k: v for k, v in DOCUMENTED_POSITION.items() if k != "mt"}]}
    [event] = decoder.decode_message(orjson.dumps(call).decode(), "main", RECV)
    assert isinstance(event, MarginCall)
    assert event.positions[0].margin_mode == "isolated"
    [event] = decoder.decode_message(orjson.dumps(call).decode(), "other", RECV)
    assert isinstance(event, MarginCall)
    assert event.positions[0].margin_mode == "cross"  # nothing reported for this account


@pytest.mark.parametrize(("change", "problem"), [
    ({"p": []}, "names no position"),
    ({"p": [{**DOCUMENTED_POSITION, "pa": "many"}]}, "pa"),
    ({"p": [{**DOCUMENTED_POSITION, "mm": "-1"}]}, "mm"),
    ({"p": [{**DOCUMENTED_POSITION, "ps": "UP"}]}, "ps"),
    ({"E": "soon"}, "E"),
])
def test_a_malformed_margin_call_is_bad_input(change: dict[str, Any], problem: str) -> None:
    frame = {**DOCUMENTED, **change}
    with pytest.raises(BadInput, match=problem):
        BinanceDecoder().decode_message(orjson.dumps(frame).decode(), "main", RECV)


def test_a_margin_call_needs_its_account() -> None:
    with pytest.raises(BadInput):
        BinanceDecoder().decode_message(orjson.dumps(DOCUMENTED).decode(), None, RECV)


# -- against riskmon's view -------------------------------------------------------------------


def test_a_margin_call_riskmon_agrees_with_is_silent() -> None:
    # A warning level above the account's ratio (10.8): riskmon is in warning too.
    engine = engine_at(CAPTURED_MARK, POSITION_RISK, warning=12.0)
    assert engine.level("main") == "warning"
    assert divergences(feed(engine, margin_call_frame())) == []


def test_a_margin_call_on_an_account_riskmon_finds_normal_is_a_divergence() -> None:
    engine = engine_at(CAPTURED_MARK, POSITION_RISK)
    assert engine.level("main") == "normal"
    [alert] = divergences(feed(engine, margin_call_frame()))
    payload = alert.payload
    assert payload["margin_call"] is True
    assert payload["reasons"] == ["level_normal"]
    assert payload["fields"] == []  # the maintenance margins agree
    [row] = payload["positions"]
    assert (row["inst_id"], row["side"], row["margin_mode"]) == ("BTCUSDT", "net", "cross")
    assert row["held"] == pytest.approx(0.009)
    # Ours at Binance's mark, against the capture's own maintMargin there.
    assert close(row["ours"], CAPTURED_MM)
    assert row["theirs"] == pytest.approx(CAPTURED_MM)
    assert row["level"] == "normal"
    assert alert.margin_ratio == pytest.approx(engine.figures("main").margin_ratio)
    assert alert.inst_id == "BTCUSDT"
    # The same disagreement again: the episode has been reported.
    assert divergences(feed(engine, margin_call_frame(ts=RECV + 3))) == []


def test_a_maintenance_margin_beyond_the_tolerance_is_named() -> None:
    engine = engine_at(CAPTURED_MARK, POSITION_RISK, warning=12.0)
    [alert] = divergences(feed(engine, margin_call_frame(mm=CAPTURED_MM * 1.3)))
    assert alert.payload["reasons"] == ["maint_margin"]
    [field] = alert.payload["fields"]
    assert field["field"] == "maint_margin"
    assert close(field["ours"], CAPTURED_MM)
    assert field["theirs"] == pytest.approx(CAPTURED_MM * 1.3)
    assert field["relative_difference"] == pytest.approx(0.3 / 1.3, rel=1e-3)


def test_a_position_riskmon_does_not_hold_is_named() -> None:
    engine = engine_at(CAPTURED_MARK, POSITION_RISK, warning=12.0)
    [alert] = divergences(feed(engine, margin_call_frame(side="SHORT")))
    assert alert.payload["reasons"] == ["position_unknown"]
    [row] = alert.payload["positions"]
    assert (row["side"], row["held"], row["ours"], row["level"]) == ("short", None, None, None)


def test_an_episode_ends_with_a_margin_call_riskmon_agrees_with() -> None:
    engine = engine_at(CAPTURED_MARK, POSITION_RISK, warning=12.0)
    wrong = CAPTURED_MM * 2
    counts = [len(divergences(feed(engine, margin_call_frame(mm=mm, ts=RECV + 2 + i))))
              for i, mm in enumerate((wrong, wrong, CAPTURED_MM, wrong))]
    assert counts == [1, 0, 0, 1]


def test_a_margin_call_on_an_account_of_unknown_risk_is_a_divergence() -> None:
    # Instruments and positions, no balance snapshot: riskmon does not know the risk.
    decoder = BinanceDecoder()
    engine = MarginEngine(binance_config())
    events: list[Event] = [event for raw in (
        rest(RestPath.EXCHANGE_INFO, BTC_EXCHANGE_INFO, None),
        rest(RestPath.LEVERAGE_BRACKET, [{"symbol": "BTCUSDT", "brackets": BTC_BRACKETS}],
             None),
        rest(RestPath.POSITION_RISK, POSITION_RISK)) for event in decoder.decode_line(raw)]
    for event in events:
        engine.apply(event)
    assert not engine.risk_known("main")
    [alert] = divergences(feed(engine, margin_call_frame(), decoder))
    assert alert.payload["reasons"] == ["risk_unknown"]
    assert alert.payload["positions"][0]["level"] == "normal"  # not evaluated yet
