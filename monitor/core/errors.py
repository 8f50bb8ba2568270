"""The riskmon exception tree.

Every exception riskmon raises on purpose derives from :class:`RiskmonError`::

    RiskmonError
    ├── ConfigError        a configuration value is missing or invalid (names the key)
    ├── BadInput           one feed line or frame cannot be used (quarantined, never fatal)
    ├── SinkError          a sink could not store what it was given
    └── FeedError          a feed connection, login or REST call failed (retried with backoff)

Bad input is data, not a crash: whoever catches :class:`BadInput` records it in quarantine
with its ``reason`` and carries on with the next line.
"""

from __future__ import annotations


class RiskmonError(Exception):
    """Root of every error riskmon raises deliberately."""


class ConfigError(RiskmonError):
    """A configuration key is missing or has an invalid value."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config key {key!r}: {message}")
        self.key = key
        self.message = message


class BadInput(RiskmonError):
    """A line or frame that cannot be turned into events; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SinkError(RiskmonError):
    """A sink failed to store a record."""


class FeedError(RiskmonError):
    """A feed connection, login or REST call failed. The feed retries with backoff; the
    message says what failed and never holds a credential."""
