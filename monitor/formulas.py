"""The margin formulas of SPEC section 1, as plain functions of plain numbers.

Every figure here is in the instrument's settlement currency. The engine keeps these
per-instrument contributions and adds them into account sums; a from-scratch recomputation
calls the very same functions, so the two can only differ in their bookkeeping.
"""

from __future__ import annotations

from collections.abc import Iterable

from monitor.events import Order
from monitor.instruments import Instrument


def position_value(inverse: bool, multiplier: float, contracts: float, mark: float) -> float:
    """``PV``: linear ``|q| k mark``; inverse ``|q| k / mark`` (SPEC 1.2)."""
    if inverse:
        return abs(contracts) * multiplier / mark
    return abs(contracts) * multiplier * mark


def unrealized_pnl(
    inverse: bool, multiplier: float, contracts: float, avg_price: float, mark: float
) -> float:
    """``UPL``: linear ``q k (mark - a)``; inverse ``q k (1/a - 1/mark)`` (SPEC 1.2)."""
    if inverse:
        return contracts * multiplier * (1.0 / avg_price - 1.0 / mark)
    return contracts * multiplier * (mark - avg_price)


def order_value(inverse: bool, multiplier: float, remaining: float, price: float) -> float:
    """Order value: linear ``r k px``; inverse ``r k / px`` (SPEC 1.3)."""
    if inverse:
        return remaining * multiplier / price
    return remaining * multiplier * price


def potential_loss(
    inverse: bool, multiplier: float, buy: bool, remaining: float, price: float, mark: float
) -> float:
    """The "opening cost" of a pending order (seed 003).

    A buy above the mark, or a sell below it, would open at a loss against the mark; that
    loss is charged up front. Inverse contracts measure it in coin: ``1/mark - 1/px``.
    """
    if inverse:
        gap = (1.0 / mark - 1.0 / price) if buy else (1.0 / price - 1.0 / mark)
    else:
        gap = (price - mark) if buy else (mark - price)
    return remaining * multiplier * gap if gap > 0.0 else 0.0


def one_way_initial_margin(
    contracts: float,
    value: float,
    buy_value: float,
    sell_value: float,
    leverage: float,
    loss: float,
) -> float:
    """Initial margin of one instrument in one-way mode (seed 003).

    Long (or flat): ``max(PV + B, S - PV) / L + PL``; short: ``max(B - PV, PV + S) / L + PL``.
    Only the side with the greater exposure is charged, since orders on the other side
    would first reduce the position.
    """
    if contracts >= 0:
        exposure = max(value + buy_value, sell_value - value)
    else:
        exposure = max(buy_value - value, value + sell_value)
    return exposure / leverage + loss


def exposure_figures(
    instrument: Instrument,
    contracts: float,
    avg_price: float,
    leverage: float,
    orders: Iterable[Order],
    mark: float | None,
    fee_rate: float,
    slippage: float,
    count_reduce_only: bool,
) -> tuple[float, float, float, float]:
    """``(PV, UPL, MM, IM)`` of one account's position and live orders on one instrument.

    Without a mark yet, the position is valued at its entry price (no UPL) and pending
    orders at their limit price without potential loss, so a fresh position is never
    counted as free of margin; the engine flags such an instrument as stale meanwhile.
    Market orders are valued at ``mark * (1 ± slippage)`` (seed 003: "an estimated fill
    price"); without a mark they cannot be valued and count zero.
    """
    inverse = instrument.contract_type == "inverse"
    k = instrument.multiplier
    if contracts != 0.0:
        price = mark if mark is not None else avg_price
        value = position_value(inverse, k, contracts, price)
        upl = unrealized_pnl(inverse, k, contracts, avg_price, price)
        maint = value * (instrument.maintenance_rate(contracts) + fee_rate)
    else:
        value = upl = maint = 0.0
    buy_value = sell_value = loss = 0.0
    for order in orders:
        if order.reduce_only and not count_reduce_only:
            continue
        remaining = order.remaining
        if remaining <= 0.0:
            continue
        buy = order.side == "buy"
        price_or_none = order.price
        if price_or_none is None:
            if mark is None:
                continue
            price_or_none = mark * (1.0 + slippage) if buy else mark * (1.0 - slippage)
        if buy:
            buy_value += order_value(inverse, k, remaining, price_or_none)
        else:
            sell_value += order_value(inverse, k, remaining, price_or_none)
        if mark is not None:
            loss += potential_loss(inverse, k, buy, remaining, price_or_none, mark)
    init = one_way_initial_margin(contracts, value, buy_value, sell_value, leverage, loss)
    return value, upl, maint, init
