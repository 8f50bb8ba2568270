"""The margin formulas of SPEC section 1, as plain functions of plain numbers.

Every figure here is in the instrument's settlement currency. The engine keeps these
per-instrument contributions and adds them into account sums; a from-scratch recomputation
calls the very same functions, so the two can only differ in their bookkeeping.
"""

from __future__ import annotations

from collections.abc import Iterable

from monitor.core.events import Order, PositionSide
from monitor.core.instruments import BorrowTier, CollateralTiers, Instrument, borrow_tier


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


def hedge_initial_margin(value: float, opening_value: float, leverage: float,
                         loss: float) -> float:
    """Initial margin of one side of a hedge-mode instrument (SPEC 1.2).

    ``(PV + value of that side's opening orders) / L + PL of those orders``: the one-way
    netting of seed 003 does not apply ("two-way mode remains unaffected"), and orders
    that close the side add nothing.
    """
    return (value + opening_value) / leverage + loss


def exposure_figures(
    instrument: Instrument,
    contracts: float,
    avg_price: float,
    leverage: float,
    orders: Iterable[Order],
    mark: float | None,
    side: PositionSide,
    closing_fee_rate: float,
    slippage: float,
    count_reduce_only: bool,
) -> tuple[float, float, float, float, float]:
    """``(PV, UPL, MM, CF, IM)`` of one position and its live orders (SPEC 1.2, 1.3).

    ``side`` is the position's: ``net`` (one-way mode: every order on the instrument, the
    netting formula of seed 003) or ``long`` / ``short`` (hedge mode: the orders of that
    side, of which only the opening ones carry margin). ``CF = PV * closing_fee_rate`` is
    kept apart from ``MM``: it enters the margin ratio's denominator only.

    Without a mark yet, the position is valued at its entry price (no UPL) and pending
    orders at their limit price without potential loss; the engine reports such an
    account's risk as unknown meanwhile. Market orders are valued at
    ``mark * (1 ± slippage)`` (seed 003: "an estimated fill price"); without a mark they
    cannot be valued and count zero.
    """
    inverse = instrument.contract_type == "inverse"
    k = instrument.multiplier
    if contracts != 0.0:
        price = mark if mark is not None else avg_price
        value = position_value(inverse, k, contracts, price)
        upl = unrealized_pnl(inverse, k, contracts, avg_price, price)
        maint = instrument.maintenance_margin(contracts, value)
        fee = value * closing_fee_rate
    else:
        value = upl = maint = fee = 0.0
    # Hedge mode: a long side opens with buys, a short side with sells.
    opening = "" if side == "net" else ("buy" if side == "long" else "sell")
    buy_value = sell_value = loss = 0.0
    for order in orders:
        if order.reduce_only and not count_reduce_only:
            continue
        if opening and order.side != opening:
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
    if opening:
        init = hedge_initial_margin(value, buy_value + sell_value, leverage, loss)
    else:
        init = one_way_initial_margin(contracts, value, buy_value, sell_value, leverage, loss)
    return value, upl, maint, fee, init


def margin_ratio(equity: float, maint_margin: float, closing_fee: float) -> float | None:
    """``MR = equity / (MM + CF)`` (SPEC 1.5), None when the denominator is 0.

    The exchange's reported margin ratio divides by the maintenance margin plus the fee
    of closing every position at the mark; its reported MM is the maintenance margin
    alone (tests/test_fidelity.py).
    """
    denominator = maint_margin + closing_fee
    return equity / denominator if denominator > 0.0 else None


def collateral_value(equity: float, price: float, collateral: CollateralTiers) -> float:
    """``value(eq_c)`` in USD (SPEC 1.4, seed 000): debts in full, assets after haircut.

    The part of a positive equity inside each band counts at that band's factor; bands
    are bounded in amounts of the currency, or in USD when ``collateral.in_usd``.
    """
    if equity <= 0.0:
        return equity * price
    flat = collateral.flat_factor
    if flat is not None:
        return equity * price * flat
    amount = equity * price if collateral.in_usd else equity
    value = 0.0
    low = 0.0
    for band in collateral.bands:
        if amount <= low:
            break
        value += (min(amount, band.max_amount) - low) * band.factor
        low = band.max_amount
    return value if collateral.in_usd else value * price


def borrowing_margin(liability: float, tiers: tuple[BorrowTier, ...]) -> tuple[float, float]:
    """``(MM_c, IM_c)`` of a liability, in the borrowed currency (SPEC 1.4):
    ``liab * mmr(tier(liab))`` and ``liab * imr(tier(liab))``."""
    if liability <= 0.0:
        return 0.0, 0.0
    tier = borrow_tier(tiers, liability)
    if tier is None:
        return 0.0, 0.0
    return liability * tier.maintenance_rate, liability * tier.initial_rate
