"""Every formula of SPEC section 1 against numbers worked out by hand in the comments."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from monitor.core.events import Order
from monitor.core.formulas import (
    borrowing_margin,
    collateral_value,
    exposure_figures,
    hedge_initial_margin,
    margin_ratio,
    one_way_initial_margin,
    order_value,
    position_value,
    potential_loss,
    unrealized_pnl,
)
from monitor.core.instruments import (
    BorrowTier,
    CollateralTier,
    CollateralTiers,
    Tier,
    TierBasis,
    validate_tiers,
)
from tests.builders import BTC_INVERSE, BTC_SWAP, ETH_SWAP

approx = pytest.approx


def limit(side: str, size: float, price: float | None, filled: float = 0.0,
          reduce_only: bool = False) -> Order:
    return Order("o", "X", "buy" if side == "buy" else "sell", price, size, filled,
                 reduce_only, None)


class TestLinear:
    # BTC-USDT-SWAP: ct_val 0.01 BTC, ct_mult 1, so k = 0.01.
    def test_long_value_and_pnl(self) -> None:
        # PV = 10 * 0.01 * 42000 = 4200; UPL = 10 * 0.01 * (42000 - 40000) = 200.
        assert position_value(False, 0.01, 10, 42_000) == approx(4200)
        assert unrealized_pnl(False, 0.01, 10, 40_000, 42_000) == approx(200)

    def test_short_value_and_pnl(self) -> None:
        # Short 10: PV is still 4200; UPL = -10 * 0.01 * 2000 = -200.
        assert position_value(False, 0.01, -10, 42_000) == approx(4200)
        assert unrealized_pnl(False, 0.01, -10, 40_000, 42_000) == approx(-200)

    def test_order_value(self) -> None:
        # 5 contracts at 41000: 5 * 0.01 * 41000 = 2050.
        assert order_value(False, 0.01, 5, 41_000) == approx(2050)

    def test_potential_loss_buy_above_mark(self) -> None:
        # Buying 5 at 42500 with the mark at 42000 loses 5 * 0.01 * 500 = 25 at once.
        assert potential_loss(False, 0.01, True, 5, 42_500, 42_000) == approx(25)
        # A buy below the mark costs nothing up front.
        assert potential_loss(False, 0.01, True, 5, 41_000, 42_000) == 0.0

    def test_potential_loss_sell_below_mark(self) -> None:
        # Selling 3 at 41000 with the mark at 42000: 3 * 0.01 * 1000 = 30.
        assert potential_loss(False, 0.01, False, 3, 41_000, 42_000) == approx(30)
        assert potential_loss(False, 0.01, False, 3, 43_000, 42_000) == 0.0


class TestInverse:
    # BTC-USD-SWAP: ct_val 100 USD, so k = 100; figures in BTC.
    def test_long_value_and_pnl(self) -> None:
        # PV = 5 * 100 / 50000 = 0.01 BTC.
        # UPL = 5 * 100 * (1/40000 - 1/50000) = 500 * 0.000005 = 0.0025 BTC.
        assert position_value(True, 100, 5, 50_000) == approx(0.01)
        assert unrealized_pnl(True, 100, 5, 40_000, 50_000) == approx(0.0025)

    def test_short_pnl(self) -> None:
        assert unrealized_pnl(True, 100, -5, 40_000, 50_000) == approx(-0.0025)

    def test_order_value(self) -> None:
        # 10 contracts at 40000: 10 * 100 / 40000 = 0.025 BTC.
        assert order_value(True, 100, 10, 40_000) == approx(0.025)

    def test_potential_loss(self) -> None:
        # Buy 10 at 51000, mark 50000: 1000 * (1/50000 - 1/51000) = 1000 * 1000/2.55e9.
        assert potential_loss(True, 100, True, 10, 51_000, 50_000) == approx(1000 / 2.55e6)
        # Sell 10 at 49000, mark 50000: 1000 * (1/49000 - 1/50000) = 1000 * 1000/2.45e9.
        assert potential_loss(True, 100, False, 10, 49_000, 50_000) == approx(1000 / 2.45e6)
        assert potential_loss(True, 100, True, 10, 49_000, 50_000) == 0.0


# Tiers by position value with deductions: 0.5 % to 50,000; 1 % to 250,000 less 250; 2 %
# beyond less 2,750. Each deduction keeps MM continuous at the bounds (250 at 50,000, 2,250
# at 250,000).
VALUE_TIERED = replace(ETH_SWAP, tier_basis="value", tiers=(
    Tier(50_000, 0.005), Tier(250_000, 0.01, 250.0), Tier(math.inf, 0.02, 2_750.0)))


class TestTiers:
    def test_first_tier_that_fits(self) -> None:
        # Tiers: up to 5000 contracts 0.4%, beyond 0.6%.
        assert BTC_SWAP.tier_index(5000, 0.0) == 0
        assert BTC_SWAP.tier_index(-5000, 0.0) == 0
        assert BTC_SWAP.tier_index(5001, 0.0) == 1
        assert BTC_SWAP.maintenance_margin(5001, 1_000.0) == approx(6.0)

    def test_tiers_by_value_take_their_deduction(self) -> None:
        assert VALUE_TIERED.maintenance_margin(1, 40_000) == approx(200)
        assert VALUE_TIERED.maintenance_margin(1, 100_000) == approx(1_000 - 250)
        assert VALUE_TIERED.maintenance_margin(-1, 1_000_000) == approx(20_000 - 2_750)
        # The size in contracts does not pick the tier; the value does.
        assert VALUE_TIERED.tier_index(1e9, 10.0) == 0

    def test_tiers_by_value_are_continuous_at_their_bounds(self) -> None:
        for bound in (50_000.0, 250_000.0):
            below = VALUE_TIERED.maintenance_margin(1, bound)
            above = VALUE_TIERED.maintenance_margin(1, bound * (1 + 1e-12))
            assert above == approx(below, rel=1e-9)

    def test_value_bands_hold_the_tier(self) -> None:
        assert VALUE_TIERED.value_band(0) == (-math.inf, 50_000)
        assert VALUE_TIERED.value_band(1) == (50_000, 250_000)
        assert VALUE_TIERED.value_band(2) == (250_000, math.inf)
        assert BTC_SWAP.value_band(1) == (-math.inf, math.inf)

    @pytest.mark.parametrize(("tiers", "basis", "problem"), [
        ((Tier(10, 0.01, 1.0),), "contracts", "take no deduction"),
        ((Tier(10, 0.01), Tier(20, 0.02, 5.0)), "value", "negative"),
        ((Tier(10, 0.01, -1.0),), "value", "non-negative"),
        ((Tier(20, 0.01), Tier(10, 0.02)), "value", "ascending"),
    ])
    def test_unusable_tiers_are_refused(self, tiers: tuple[Tier, ...], basis: TierBasis,
                                        problem: str) -> None:
        found = validate_tiers(tiers, basis)
        assert found is not None and problem in found
        assert validate_tiers(VALUE_TIERED.tiers, "value") is None

    def test_maintenance_margin_uses_the_tier(self) -> None:
        # 6000 contracts at 42000: PV = 6000 * 0.01 * 42000 = 2,520,000; MM = 0.6% = 15,120.
        _, _, maint, _, _ = exposure_figures(BTC_SWAP, 6000, 42_000, 10, [], 42_000, "net",
                                             0, 0, True)
        assert maint == approx(15_120)

    def test_closing_fee_is_kept_apart_from_the_maintenance_margin(self) -> None:
        # 10 contracts, PV 4200, rate 0.4%: MM = 16.8; CF = 4200 * 0.05% = 2.1 (SPEC 1.2).
        _, _, maint, fee, _ = exposure_figures(BTC_SWAP, 10, 42_000, 10, [], 42_000, "net",
                                               0.0005, 0, True)
        assert maint == approx(16.8)
        assert fee == approx(2.1)


class TestInitialMargin:
    def test_long_takes_the_larger_side(self) -> None:
        # Long PV 4200, B 2050, S 8600, L 10: max(6250, 4400) / 10 = 625.
        assert one_way_initial_margin(10, 4200, 2050, 8600, 10, 0) == approx(625)
        # With a big enough sell side the sell exposure wins: S 9000 -> max(6250, ...)...
        # S 12000: max(4200 + 2050, 12000 - 4200) = 7800 -> 780.
        assert one_way_initial_margin(10, 4200, 2050, 12_000, 10, 0) == approx(780)

    def test_short_takes_the_larger_side(self) -> None:
        # Short PV 4200, B 9000, S 1000, L 10: max(9000 - 4200, 4200 + 1000) / 10 = 520.
        assert one_way_initial_margin(-10, 4200, 9000, 1000, 10, 0) == approx(520)
        # B 10000: max(5800, 5200) / 10 = 580.
        assert one_way_initial_margin(-10, 4200, 10_000, 1000, 10, 0) == approx(580)

    def test_potential_loss_is_added(self) -> None:
        assert one_way_initial_margin(0, 0, 1000, 0, 5, 7.5) == approx(207.5)

    def test_position_with_orders(self) -> None:
        # Long 10 at 40000, mark 42000, L 10: PV 4200.
        # Buy 10 filled 5 at 42500 (r = 5): B = 5 * 0.01 * 42500 = 2125, PL = 25.
        # Sell 20 at 43000: S = 8600, PL 0.
        # IM = max(4200 + 2125, 8600 - 4200) / 10 + 25 = 632.5 + 25 = 657.5.
        orders = [limit("buy", 10, 42_500, filled=5), limit("sell", 20, 43_000)]
        value, upl, maint, _fee, init = exposure_figures(BTC_SWAP, 10, 40_000, 10, orders,
                                                         42_000, "net", 0, 0, True)
        assert [value, upl, maint] == approx([4200, 200, 16.8])
        assert init == approx(657.5)

    def test_reduce_only_orders_can_be_left_out(self) -> None:
        # Long 10, PV 4200, L 10; a reduce-only sell of 30 at 43000 (S = 12900).
        orders = [limit("sell", 30, 43_000, reduce_only=True)]
        counted = exposure_figures(BTC_SWAP, 10, 40_000, 10, orders, 42_000, "net",
                                   0, 0, True)[4]
        ignored = exposure_figures(BTC_SWAP, 10, 40_000, 10, orders, 42_000, "net",
                                   0, 0, False)[4]
        # Counted: max(4200, 12900 - 4200) / 10 = 870; ignored: 4200 / 10 = 420.
        assert counted == approx(870)
        assert ignored == approx(420)

    def test_market_order_uses_slipped_mark(self) -> None:
        # Market buy 2 on ETH (k = 0.1), mark 2000, slippage 1%: px 2020.
        # B = 2 * 0.1 * 2020 = 404; PL = 2 * 0.1 * 20 = 4; L 5: IM = 404/5 + 4 = 84.8.
        orders = [limit("buy", 2, None)]
        init = exposure_figures(ETH_SWAP, 0, 0, 5, orders, 2000, "net", 0, 0.01, True)[4]
        assert init == approx(84.8)
        # Market sell: px 1980, S = 396, PL = 2 * 0.1 * 20 = 4; flat: max(0, 396)/5 + 4.
        orders = [limit("sell", 2, None)]
        init = exposure_figures(ETH_SWAP, 0, 0, 5, orders, 2000, "net", 0, 0.01, True)[4]
        assert init == approx(396 / 5 + 4)

    def test_inverse_position_with_orders(self) -> None:
        # Short 50 BTC-USD-SWAP at 50000, mark 40000 (k = 100): PV = 5000/40000 = 0.125.
        # UPL = -50 * 100 * (1/50000 - 1/40000) = -5000 * (-0.000005) = 0.025 BTC.
        # Buy 20 at 38000: B = 2000/38000; sell 10 at 42000: S = 1000/42000. L 20.
        # IM = max(B - PV, PV + S)/20 = (0.125 + 1000/42000)/20; no potential loss.
        orders = [limit("buy", 20, 38_000), limit("sell", 10, 42_000)]
        value, upl, maint, _fee, init = exposure_figures(BTC_INVERSE, -50, 50_000, 20, orders,
                                                   40_000, "net", 0, 0, True)
        assert value == approx(0.125)
        assert upl == approx(0.025)
        assert maint == approx(0.125 * 0.005)
        assert init == approx((0.125 + 1000 / 42_000) / 20)

    def test_without_a_mark_the_position_is_valued_at_entry(self) -> None:
        # No mark yet: PV at the entry price 40000 = 4000, UPL 0, MM 16.
        value, upl, maint, _fee, init = exposure_figures(BTC_SWAP, 10, 40_000, 10, [], None,
                                                         "net", 0, 0, True)
        assert [value, upl, maint, init] == approx([4000, 0, 16, 400])


class TestHedgeMode:
    """SPEC 1.2: per side, IM = (PV + that side's opening orders) / L + their PL."""

    def test_long_side_counts_only_buys(self) -> None:
        # Long 10 BTC-USDT-SWAP at 40000, mark 42000, L 10: PV = 4200.
        # Buy 5 at 42500 opens more long: value 2125, PL 5 * 0.01 * 500 = 25.
        # Sell 20 at 43000 closes the long: no IM, no PL.
        # IM = (4200 + 2125) / 10 + 25 = 657.5.
        orders = [limit("buy", 5, 42_500), limit("sell", 20, 43_000)]
        init = exposure_figures(BTC_SWAP, 10, 40_000, 10, orders, 42_000, "long",
                                0, 0, True)[4]
        assert init == approx(657.5)

    def test_short_side_counts_only_sells(self) -> None:
        # Short 10 at 44000, mark 42000: PV 4200. Sell 3 at 41000 opens more short:
        # value 1230, PL 3 * 0.01 * 1000 = 30. The buy of 50 closes: nothing.
        # IM = (4200 + 1230) / 10 + 30 = 573.
        orders = [limit("sell", 3, 41_000), limit("buy", 50, 40_000)]
        init = exposure_figures(BTC_SWAP, -10, 44_000, 10, orders, 42_000, "short",
                                0, 0, True)[4]
        assert init == approx(573)

    def test_no_netting_across_sides(self) -> None:
        # One-way: long 10 (PV 4200) with a sell order of 8400 nets to max(4200, 4200)/10.
        # Hedge long side: the sell closes, IM = 4200 / 10 = 420 either way; but a buy on
        # the long side is never offset by the short side's sells.
        orders = [limit("sell", 20, 42_000)]
        net = exposure_figures(BTC_SWAP, 10, 40_000, 10, orders, 42_000, "net", 0, 0, True)[4]
        long = exposure_figures(BTC_SWAP, 10, 40_000, 10, orders, 42_000, "long",
                                0, 0, True)[4]
        assert net == approx(420)
        assert long == approx(420)
        buys = [limit("buy", 10, 42_000)]
        long_buys = exposure_figures(BTC_SWAP, 10, 40_000, 10, buys, 42_000, "long",
                                     0, 0, True)[4]
        # (4200 + 4200) / 10 = 840: the opening buys add in full.
        assert long_buys == approx(840)
        assert hedge_initial_margin(4200, 4200, 10, 0) == approx(840)


class TestMarginRatio:
    def test_divides_by_maintenance_margin_plus_closing_fee(self) -> None:
        # OKX: mgnRatio = adjEq / (mmr + PV * 0.0005). AE 1000, MM 16, CF 4200 * 0.0005 = 2.1.
        assert margin_ratio(1000, 16, 2.1) == approx(1000 / 18.1)
        # At a 0.4 % tier the fee is an eighth of MM: the ratio is 1/1.125 of AE / MM.
        assert margin_ratio(1000, 0.004, 0.0005) == approx(1000 / 0.004 / 1.125)

    def test_undefined_without_a_denominator(self) -> None:
        assert margin_ratio(1000, 0, 0) is None
        assert margin_ratio(-5, 0, 0) is None


class TestCollateral:
    """SPEC 1.4: the part of eq_c inside each band counts at that band's factor."""

    TIERS = CollateralTiers((CollateralTier(10, 1.0), CollateralTier(20, 0.9),
                             CollateralTier(math.inf, 0.5)))

    def test_flat_factor(self) -> None:
        # 2 BTC at 30000, factor 0.9: 54000.
        assert collateral_value(2, 30_000, CollateralTiers.flat(0.9)) == approx(54_000)

    def test_debts_count_in_full(self) -> None:
        assert collateral_value(-2, 30_000, self.TIERS) == approx(-60_000)

    def test_inside_the_first_band(self) -> None:
        assert collateral_value(10, 100, self.TIERS) == approx(1000)

    def test_across_band_edges(self) -> None:
        # 25 units at 100: 10 at 1.0 + 10 at 0.9 + 5 at 0.5 = 10 + 9 + 2.5 = 21.5 -> 2150.
        assert collateral_value(25, 100, self.TIERS) == approx(2150)
        # Exactly at an edge: 20 units = 10 + 9 = 19 -> 1900.
        assert collateral_value(20, 100, self.TIERS) == approx(1900)

    def test_bands_in_usd(self) -> None:
        # Bands of USD value: 0-1000 at 1.0, 1000-2000 at 0.9, beyond at 0.5.
        usd = CollateralTiers((CollateralTier(1000, 1.0), CollateralTier(2000, 0.9),
                               CollateralTier(math.inf, 0.5)), in_usd=True)
        # 25 units at 100 = 2500 USD: 1000 + 900 + 250 = 2150 (the same as above).
        assert collateral_value(25, 100, usd) == approx(2150)
        # 25 units at 40 = 1000 USD: all in the first band.
        assert collateral_value(25, 40, usd) == approx(1000)

    def test_beyond_the_last_band_counts_nothing(self) -> None:
        short = CollateralTiers((CollateralTier(10, 0.8),))
        assert collateral_value(15, 100, short) == approx(800)


class TestBorrowingMargin:
    """SPEC 1.4: MM_c = liab * mmr(tier(liab)), IM_c = liab * imr(tier(liab))."""

    TIERS = (BorrowTier(1000, 0.02, 0.2), BorrowTier(5000, 0.05, 0.25),
             BorrowTier(math.inf, 0.1, 0.5))

    def test_first_tier(self) -> None:
        # 800 borrowed: MM 16, IM 160.
        assert borrowing_margin(800, self.TIERS) == approx((16, 160))

    def test_tier_edges(self) -> None:
        # 1000 is still tier 1 (max >= amount); 1000.5 is tier 2.
        assert borrowing_margin(1000, self.TIERS) == approx((20, 200))
        assert borrowing_margin(1000.5, self.TIERS) == approx((50.025, 250.125))
        # The whole liability takes its tier's rate (OKX position tiers are not marginal).
        assert borrowing_margin(6000, self.TIERS) == approx((600, 3000))

    def test_nothing_borrowed_or_no_tiers(self) -> None:
        assert borrowing_margin(0, self.TIERS) == (0.0, 0.0)
        assert borrowing_margin(100, ()) == (0.0, 0.0)
