"""Instrument specifications and the tier tables of the margin model (SPEC 1.1, 1.4).

Maintenance tiers by position size (:class:`Tier`), collateral factors by amount held
(:class:`CollateralTiers`) and borrowing margin rates by amount borrowed
(:class:`BorrowTier`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

ContractType = Literal["linear", "inverse"]


@dataclass(frozen=True, slots=True)
class Tier:
    """Maintenance tier: positions up to ``max_contracts`` (absolute) use ``maintenance_rate``."""

    max_contracts: float
    maintenance_rate: float


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

    @property
    def multiplier(self) -> float:
        return self.contract_value * self.contract_multiplier

    def maintenance_rate(self, contracts: float) -> float:
        """The maintenance margin rate of the first tier whose ``max_contracts >= contracts``.

        A size beyond the last tier uses the last tier's rate: the exchange would refuse
        such a position, and the highest known rate is the conservative reading.
        """
        size = abs(contracts)
        for tier in self.tiers:
            if tier.max_contracts >= size:
                return tier.maintenance_rate
        return self.tiers[-1].maintenance_rate


def validate_tiers(tiers: tuple[Tier, ...]) -> str | None:
    """Return why ``tiers`` are unusable, or None when they are fine."""
    if not tiers:
        return "at least one maintenance tier is required"
    previous = 0.0
    for tier in tiers:
        if not (math.isfinite(tier.maintenance_rate) and 0.0 <= tier.maintenance_rate < 1.0):
            return f"maintenance rate {tier.maintenance_rate!r} is not in [0, 1)"
        if not tier.max_contracts > previous:
            return "tier max_contracts must be positive and ascending"
        previous = tier.max_contracts
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
