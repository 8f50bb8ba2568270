"""Instrument specifications and the tier tables of the margin model (SPEC 1.1, 1.4).

Maintenance tiers by position size (:class:`Tier`), collateral factors by amount held
(:class:`CollateralTiers`) and borrowing margin rates by amount borrowed
(:class:`BorrowTier`).

Maintenance tiers come in two kinds, by :attr:`Instrument.tier_basis` (venues differ):

- ``"contracts"`` (SPEC 1.2): the tier is picked by the position's size in contracts and
  the whole position value is margined at its rate, ``MM = PV * rate``.
- ``"value"``: the tier is picked by the position value (in the settle currency) and each
  tier carries a ``deduction``, ``MM = PV * rate - deduction``. With the deduction of
  each tier the sum of the lower tiers' margin at their own rates (the usual bracket
  table), MM is continuous in PV: every slice of the value is margined at its tier's rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

ContractType = Literal["linear", "inverse"]
TierBasis = Literal["contracts", "value"]


@dataclass(frozen=True, slots=True)
class Tier:
    """Maintenance tier: positions up to ``max_size`` use ``maintenance_rate``, less
    ``deduction`` (0 for tiers by contracts). ``max_size`` is in contracts (absolute) or in
    position value, by the instrument's ``tier_basis``."""

    max_size: float
    maintenance_rate: float
    deduction: float = 0.0


@dataclass(frozen=True, slots=True)
class Instrument:
    """A derivatives contract as the margin model sees it.

    ``multiplier`` is the spec's ``k = ct_val * ct_mult``: the amount of ``ct_val_ccy`` (linear)
    or of quote currency (inverse) one contract stands for.
    """

    inst_id: str
    contract_type: ContractType
    contract_value: float
    contract_multiplier: float
    contract_value_currency: str
    settle_currency: str
    tiers: tuple[Tier, ...]
    max_leverage: float | None = None
    lot_size: float | None = None
    tier_basis: TierBasis = "contracts"

    @property
    def multiplier(self) -> float:
        return self.contract_value * self.contract_multiplier

    def tier_index(self, contracts: float, value: float) -> int:
        """The index of the first tier whose ``max_size`` reaches the position's size
        (``contracts`` or ``value`` by :attr:`tier_basis`).

        A size beyond the last tier uses the last tier: the exchange would refuse such a
        position, and the highest known rate is the conservative reading.
        """
        size = abs(contracts) if self.tier_basis == "contracts" else abs(value)
        tiers = self.tiers
        for index, tier in enumerate(tiers):
            if tier.max_size >= size:
                return index
        return len(tiers) - 1

    def maintenance_margin(self, contracts: float, value: float) -> float:
        """``MM`` of a position of ``contracts`` worth ``value`` (the module docstring)."""
        tier = self.tiers[self.tier_index(contracts, value)]
        return value * tier.maintenance_rate - tier.deduction

    def value_band(self, index: int) -> tuple[float, float]:
        """The position values ``(low, high]`` within which tier ``index`` holds while the
        size in contracts stays: every value for tiers by contracts."""
        if self.tier_basis == "contracts":
            return -math.inf, math.inf
        low = self.tiers[index - 1].max_size if index > 0 else -math.inf
        high = self.tiers[index].max_size if index < len(self.tiers) - 1 else math.inf
        return low, high


def validate_tiers(tiers: tuple[Tier, ...], basis: TierBasis = "contracts") -> str | None:
    """Return why ``tiers`` are unusable, or None when they are fine.

    Tiers by value must not make MM negative: at each tier's lowest value,
    ``value * rate - deduction`` is at least 0 (within rounding of the venue's figures).
    """
    if not tiers:
        return "at least one maintenance tier is required"
    previous = 0.0
    for tier in tiers:
        if not (math.isfinite(tier.maintenance_rate) and 0.0 <= tier.maintenance_rate < 1.0):
            return f"maintenance rate {tier.maintenance_rate!r} is not in [0, 1)"
        if not tier.max_size > previous:
            return "tier bounds must be positive and ascending"
        if not (math.isfinite(tier.deduction) and tier.deduction >= 0.0):
            return f"tier deduction {tier.deduction!r} is not a non-negative number"
        if basis == "contracts" and tier.deduction != 0.0:
            return "tiers by contracts take no deduction"
        if previous * tier.maintenance_rate - tier.deduction < -1e-6 * max(tier.deduction, 1.0):
            return f"tier deduction {tier.deduction!r} makes the maintenance margin negative"
        previous = tier.max_size
    return None


@dataclass(frozen=True, slots=True)
class CollateralTier:
    """One band of a tiered collateral factor: the part of a currency's equity up to
    ``max_amount`` (above the previous band's bound) counts at ``factor``."""

    max_amount: float
    factor: float


@dataclass(frozen=True, slots=True)
class CollateralTiers:
    """A currency's collateral factor, tiered by amount (SPEC 1.4).

    ``bands`` ascend by ``max_amount``; equity beyond the last band counts at factor 0
    (the exchange's last band is unbounded, so this only bites a configuration that
    stops short). ``in_usd``: the bounds are USD values rather than amounts of the
    currency. A flat factor is one unbounded band.
    """

    bands: tuple[CollateralTier, ...]
    in_usd: bool = False

    @classmethod
    def flat(cls, factor: float) -> CollateralTiers:
        return cls((CollateralTier(math.inf, factor),))

    @property
    def flat_factor(self) -> float | None:
        """The factor when there is a single unbounded band, else None."""
        if len(self.bands) == 1 and self.bands[0].max_amount == math.inf:
            return self.bands[0].factor
        return None

    @property
    def worthless(self) -> bool:
        """Every band counts at 0: holdings of the currency are no collateral at all."""
        return all(band.factor == 0.0 for band in self.bands)


def validate_collateral(bands: tuple[CollateralTier, ...]) -> str | None:
    """Return why collateral ``bands`` are unusable, or None when they are fine."""
    if not bands:
        return "at least one band is required"
    previous = 0.0
    for band in bands:
        if not (math.isfinite(band.factor) and 0.0 <= band.factor <= 1.0):
            return f"factor {band.factor!r} is not in [0, 1]"
        if not band.max_amount > previous:
            return "band max_amount must be positive and ascending"
        previous = band.max_amount
    return None


@dataclass(frozen=True, slots=True)
class BorrowTier:
    """Borrowing margin rates for a liability up to ``max_amount`` of the currency
    (SPEC 1.4)."""

    max_amount: float
    maintenance_rate: float
    initial_rate: float


def borrow_tier(tiers: tuple[BorrowTier, ...], amount: float) -> BorrowTier | None:
    """The first tier whose ``max_amount >= amount`` (the last one beyond them all: the
    highest known rates are the conservative reading); None without tiers."""
    for tier in tiers:
        if tier.max_amount >= amount:
            return tier
    return tiers[-1] if tiers else None


def validate_borrow_tiers(tiers: tuple[BorrowTier, ...]) -> str | None:
    """Return why borrowing ``tiers`` are unusable, or None when they are fine."""
    if not tiers:
        return "at least one tier is required"
    previous = 0.0
    for tier in tiers:
        for name, rate in (("mmr", tier.maintenance_rate), ("imr", tier.initial_rate)):
            if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
                return f"{name} {rate!r} is not in [0, 1]"
        if not tier.max_amount > previous:
            return "tier max_amount must be positive and ascending"
        previous = tier.max_amount
    return None


def round_up_to_lot(contracts: float, lot_size: float | None) -> float:
    """Round a size up to a whole number of lots (no rounding when the lot is unknown)."""
    if lot_size is None or lot_size <= 0:
        return contracts
    lots = math.ceil(contracts / lot_size - 1e-9)
    return round(lots * lot_size, 12)
