"""Small constructors for domain objects used across the tests (no mocks: real objects)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monitor.core.alerts import Alert, AlertKind, Level, alert_id
from monitor.core.engine import MarginEngine
from monitor.core.events import (
    BalanceUpdate,
    CurrencyBalance,
    Event,
    IndexPrice,
    MarkPrice,
    Order,
    OrderUpdate,
    Position,
    PositionSnapshot,
    PositionUpdate,
)
from monitor.core.instruments import CollateralTiers, Instrument, Tier
from monitor.core.settings import AccountConfig, BoundsConfig, Config, RiskConfig, StopLossRule

BTC_SWAP = Instrument(
    inst_id="BTC-USDT-SWAP",
    contract_type="linear",
    contract_value=0.01,
    contract_multiplier=1.0,
    contract_value_currency="BTC",
    settle_currency="USDT",
    tiers=(Tier(5000, 0.004), Tier(1e15, 0.006)),
    max_leverage=100,
    lot_size=1.0,
)
ETH_SWAP = Instrument(
    inst_id="ETH-USDT-SWAP",
    contract_type="linear",
    contract_value=0.1,
    contract_multiplier=1.0,
    contract_value_currency="ETH",
    settle_currency="USDT",
    tiers=(Tier(1000, 0.005), Tier(1e15, 0.01)),
    max_leverage=50,
    lot_size=1.0,
)
BTC_INVERSE = Instrument(
    inst_id="BTC-USD-SWAP",
    contract_type="inverse",
    contract_value=100.0,
    contract_multiplier=1.0,
    contract_value_currency="USD",
    settle_currency="BTC",
    tiers=(Tier(10000, 0.005), Tier(1e15, 0.01)),
    max_leverage=100,
    lot_size=1.0,
)


def make_config(
    *,
    rules: tuple[StopLossRule, ...] = (),
    risk: RiskConfig | None = None,
    interest: dict[str, float] | None = None,
    collateral: dict[str, float] | None = None,
    bounds: BoundsConfig | None = None,
) -> Config:
    base = Config()
    return Config(
        bounds=bounds or BoundsConfig(),
        risk=risk or RiskConfig(),
        collateral={c: CollateralTiers.flat(f) for c, f in collateral.items()}
        if collateral is not None else dict(base.collateral),
        interest=interest or {},
        instruments=(BTC_SWAP, ETH_SWAP, BTC_INVERSE),
        accounts={"main": AccountConfig(name="main", stop_loss=rules)},
    )


def mark(inst_id: str, price: float, ts: int) -> MarkPrice:
    return MarkPrice(inst_id=inst_id, price=price, event_ms=ts, recv_ms=ts + 1)


def index(base: str, quote: str, price: float, ts: int) -> IndexPrice:
    return IndexPrice(base=base, quote=quote, price=price, event_ms=ts, recv_ms=ts + 1)


def position(inst_id: str, contracts: float, avg: float, ts: int, leverage: float = 10.0,
             account: str = "main") -> PositionUpdate:
    return PositionUpdate(
        account=account,
        positions=(Position(inst_id, contracts, avg, leverage),),
        event_ms=ts,
        recv_ms=ts + 1,
    )


def run(engine: MarginEngine, events: Sequence[Event]) -> list[Alert]:
    """Apply ``events`` in order; every alert they caused."""
    alerts: list[Alert] = []
    for event in events:
        alerts.extend(engine.apply(event))
    return alerts


def snapshots(ts: int, account: str = "main", *, cash: Mapping[str, float] | None = None,
              positions: tuple[Position, ...] = ()) -> list[Event]:
    """A balance and a positions snapshot: what makes a fresh account's risk known (SPEC
    1.5: every account waits for both before its first evaluation). Empty by default;
    updates after them then build the account up."""
    balances = tuple(CurrencyBalance(c, amount, None, None) for c, amount in (cash or {}).items())
    return [
        BalanceUpdate(account, balances, True, None, ts, ts + 1),
        PositionSnapshot(account, positions, ts, ts + 1),
    ]


def balance(currency: str, cash: float, ts: int, *, interest: float | None = None,
            account: str = "main", snapshot: bool = False) -> BalanceUpdate:
    return BalanceUpdate(
        account=account,
        balances=(CurrencyBalance(currency, cash, None, interest),),
        snapshot=snapshot,
        exchange=None,
        event_ms=ts,
        recv_ms=ts + 1,
    )


def order(order_id: str, inst_id: str, side: str, size: float, price: float | None, ts: int,
          *, filled: float = 0.0, live: bool = True, reduce_only: bool = False,
          leverage: float | None = 10.0, account: str = "main") -> OrderUpdate:
    assert side in ("buy", "sell")
    return OrderUpdate(
        account=account,
        order=Order(
            order_id=order_id,
            inst_id=inst_id,
            side="buy" if side == "buy" else "sell",
            price=price,
            size=size,
            filled=filled,
            reduce_only=reduce_only,
            leverage=leverage,
        ),
        live=live,
        event_ms=ts,
        recv_ms=ts + 1,
    )


ALERT_BASE_TS = 1_700_000_000_000


def make_alert(
    n: int,
    *,
    account: str = "main",
    kind: AlertKind = "level_changed",
    level: Level = "warning",
    ts: int | None = None,
    margin_ratio: float | None = 1.42,
    payload: Mapping[str, Any] | None = None,
) -> Alert:
    """Alert number ``n``: distinct id, plausible figures."""
    event_ts = ALERT_BASE_TS + n * 1000 if ts is None else ts
    return Alert(
        id=alert_id(account, kind, event_ts, n, ""),
        ts=event_ts,
        emitted_ms=event_ts + 7,
        account=account,
        kind=kind,
        level=level,
        from_level="normal" if kind == "level_changed" else None,
        margin_ratio=margin_ratio,
        equity_usd=10_000.0 + n,
        maint_margin_usd=7_000.5,
        init_margin_usd=8_500.25,
        inst_id="BTC-USDT-SWAP",
        mark=37_123.4 + n,
        payload={"from": "normal", "to": level, "n": n} if payload is None else payload,
        closing_fee_usd=875.5,
    )
