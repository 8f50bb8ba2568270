"""Shared test settings.

Hypothesis profiles: ``default`` (the test suite, CI) and ``deep`` for a longer search,
chosen with ``HYPOTHESIS_PROFILE=deep ./dev test tests/test_engine_properties.py``.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("default", max_examples=300, deadline=None)
settings.register_profile("deep", max_examples=5_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
