"""Instrument specifications and maintenance-margin tiers (SPEC section 1.1)."""

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


def round_up_to_lot(contracts: float, lot_size: float | None) -> float:
    """Round a size up to a whole number of lots (no rounding when the lot is unknown)."""
    if lot_size is None or lot_size <= 0:
        return contracts
    lots = math.ceil(contracts / lot_size - 1e-9)
    return round(lots * lot_size, 12)
