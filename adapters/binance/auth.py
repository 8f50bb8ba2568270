"""Binance API keys and request signing.

Keys are read as for every venue (adapters/secrets.py): environment variables named in the
configuration (``api_key_env``, ``api_secret_env``; ``trade_*`` for the trade key) or a
0600 TOML file with ``api_key`` and ``api_secret``. A Binance key has no passphrase: a
``passphrase_env`` on a Binance account is refused, so a key meant for another venue is
not used half-read. :class:`Credentials` never shows its values.

Signing, from the docs ("General Info > SIGNED (TRADE, USER_DATA) Endpoint security"):
the request's parameters, ``timestamp`` (ms) and ``recvWindow`` among them, form the total
parameter string, query string first; ``signature`` is the hex HMAC-SHA256 of that string
with the secret, sent as the last parameter; the key goes in the ``X-MBX-APIKEY`` header.
``USER_STREAM`` endpoints (the listen key) take the header only.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from adapters.secrets import read_key
from monitor.core.errors import ConfigError
from monitor.core.settings import AccountConfig

__all__ = ["API_KEY_HEADER", "Credentials", "load_credentials", "load_trade_credentials",
           "sign", "signed_query"]

API_KEY_HEADER = "X-MBX-APIKEY"
_FIELDS = ("api_key", "api_secret")


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    """A Binance API key and its secret. Never printed: see ``__repr__``."""

    api_key: str
    secret: str

    def __repr__(self) -> str:
        return "Credentials(<redacted>)"

    __str__ = __repr__


def sign(secret: str, payload: str) -> str:
    """``hex(HMAC-SHA256(secret, payload))``."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def signed_query(credentials: Credentials, params: Mapping[str, str], timestamp_ms: int,
                 recv_window_ms: int) -> str:
    """The query string of a signed request: ``params``, ``timestamp``, ``recvWindow``,
    then ``signature``."""
    query = urlencode({**params, "timestamp": str(timestamp_ms),
                       "recvWindow": str(recv_window_ms)})
    return f"{query}&signature={sign(credentials.secret, query)}"


def load_credentials(account: AccountConfig,
                     environ: Mapping[str, str] | None = None) -> Credentials:
    """The read-only key the feed uses (ConfigError naming the missing key)."""
    _no_passphrase(account, account.passphrase_env, "passphrase_env")
    values = read_key(account, _FIELDS, trade=False, missing="required for a live feed (or "
                      "set credentials_file)", environ=environ)
    return Credentials(values["api_key"], values["api_secret"])


def load_trade_credentials(account: AccountConfig,
                           environ: Mapping[str, str] | None = None) -> Credentials:
    """The trade key execution uses, never the feed."""
    _no_passphrase(account, account.trade_passphrase_env, "trade_passphrase_env")
    values = read_key(account, _FIELDS, trade=True, missing="required to execute triggers "
                      "(or set trade_credentials_file)", environ=environ)
    return Credentials(values["api_key"], values["api_secret"])


def _no_passphrase(account: AccountConfig, variable: str | None, key: str) -> None:
    if variable is not None:
        raise ConfigError(f"accounts.{account.name}.{key}",
                          "a Binance key has no passphrase: leave it out")
