"""The venues riskmon is built with (monitor/runtime/venues.py): the composition root's registry.

A venue package adds itself here; a program or a test adds its own with
``VENUES.with_venue(venue)`` and hands that registry to :class:`monitor.app.service.Monitor`.
OKX is the default: SPEC 6's configuration names no venue.
"""

from __future__ import annotations

from adapters.binance.venue import BINANCE
from adapters.okx.venue import OKX
from monitor.runtime.venues import Registry

VENUES = Registry({OKX.name: OKX, BINANCE.name: BINANCE}, default=OKX.name)
