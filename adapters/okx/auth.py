"""OKX v5 credentials and request signing (SPEC 3.1).

Credentials come from environment variables named in the configuration, or from a file
only its owner can read (mode 0600); never from the configuration itself, so a config file
can be committed and shared. A :class:`Credentials` object never shows its values: its
``repr`` is redacted, errors name the variable or file, never what it holds.

Signing, from the OKX v5 docs ("Overview > WebSocket > Login" and "REST Authentication"):

- websocket ``login``: ``sign = base64(HMAC-SHA256(secret, timestamp + "GET" +
  "/users/self/verify"))`` with ``timestamp`` in Unix seconds, as a string;
- REST: ``OK-ACCESS-SIGN = base64(HMAC-SHA256(secret, timestamp + METHOD + requestPath +
  body))`` with ``timestamp`` the ISO 8601 UTC time with milliseconds (the same value goes
  in ``OK-ACCESS-TIMESTAMP``) and ``requestPath`` including the query string.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from adapters.secrets import read_key
from monitor.core.settings import AccountConfig

__all__ = ["Credentials", "load_credentials", "load_trade_credentials", "login_request",
           "rest_headers", "sign"]

_VERIFY_PATH = "/users/self/verify"
_FILE_KEYS = ("api_key", "api_secret", "passphrase")


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    """An OKX API key, its secret and passphrase. Never printed: see ``__repr__``."""

    api_key: str
    secret: str
    passphrase: str

    def __repr__(self) -> str:
        return "Credentials(<redacted>)"

    __str__ = __repr__


def sign(secret: str, message: str) -> str:
    """``base64(HMAC-SHA256(secret, message))``, the signature OKX uses everywhere."""
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def login_request(credentials: Credentials, timestamp_s: int) -> dict[str, Any]:
    """The websocket ``login`` operation for ``credentials`` at ``timestamp_s`` (Unix s)."""
    timestamp = str(timestamp_s)
    return {
        "op": "login",
        "args": [{
            "apiKey": credentials.api_key,
            "passphrase": credentials.passphrase,
            "timestamp": timestamp,
            "sign": sign(credentials.secret, timestamp + "GET" + _VERIFY_PATH),
        }],
    }


def rest_headers(credentials: Credentials, method: str, request_path: str, body: str,
                 now: datetime) -> dict[str, str]:
    """Headers of a signed REST request; ``request_path`` includes the query string."""
    timestamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{now.microsecond // 1000:03d}Z")
    return {
        "OK-ACCESS-KEY": credentials.api_key,
        "OK-ACCESS-SIGN": sign(credentials.secret, timestamp + method.upper() + request_path
                               + body),
        "OK-ACCESS-TIMESTAMP": timestamp,
        "OK-ACCESS-PASSPHRASE": credentials.passphrase,
    }


def load_credentials(account: AccountConfig,
                     environ: Mapping[str, str] | None = None) -> Credentials:
    """The account's credentials, from its ``credentials_file`` or its ``*_env`` variables.

    Raises :class:`ConfigError` naming the key (and the variable or file) when something is
    missing, empty, or the file is readable by others; the message never holds a value.
    """
    return _load(account, "", "required for a live feed (or set credentials_file)", environ)


def load_trade_credentials(account: AccountConfig,
                           environ: Mapping[str, str] | None = None) -> Credentials:
    """The account's trade key (``trade_credentials_file`` or ``trade_*_env``), which
    execution uses and the feed never does; errors as :func:`load_credentials`."""
    return _load(account, "trade_", "required to execute triggers (or set "
                 "trade_credentials_file)", environ)


def _load(account: AccountConfig, prefix: str, missing: str,
          environ: Mapping[str, str] | None) -> Credentials:
    values = read_key(account, _FILE_KEYS, trade=prefix == "trade_", missing=missing,
                      environ=environ)
    return Credentials(values["api_key"], values["api_secret"], values["passphrase"])
