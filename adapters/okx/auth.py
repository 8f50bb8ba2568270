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
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from monitor.config import AccountConfig
from monitor.errors import ConfigError

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
    env = os.environ if environ is None else environ
    path = f"accounts.{account.name}"
    file = getattr(account, f"{prefix}credentials_file")
    if file is not None:
        return _from_file(Path(file), f"{path}.{prefix}credentials_file")
    values: list[str] = []
    for key in (f"{prefix}api_key_env", f"{prefix}api_secret_env", f"{prefix}passphrase_env"):
        variable = getattr(account, key)
        if variable is None:
            raise ConfigError(f"{path}.{key}", missing)
        value = env.get(variable, "")
        if not value:
            raise ConfigError(f"{path}.{key}", f"environment variable {variable} is not set")
        values.append(value)
    return Credentials(*values)


def _from_file(file: Path, key: str) -> Credentials:
    """A TOML file with ``api_key``, ``api_secret`` and ``passphrase``, mode 0600."""
    try:
        mode = file.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(key, f"{file} must be readable by its owner only (chmod 600)")
        with file.open("rb") as handle:
            table = tomllib.load(handle)
    except OSError as e:
        raise ConfigError(key, f"cannot read {file}: {e.strerror}") from None
    except tomllib.TOMLDecodeError:
        # The parser's message may quote the file's text: say only where.
        raise ConfigError(key, f"{file} is not valid TOML") from None
    values: list[str] = []
    for name in _FILE_KEYS:
        value = table.get(name)
        if not isinstance(value, str) or not value:
            raise ConfigError(key, f"{file} needs a non-empty string {name!r}")
        values.append(value)
    unknown = sorted(set(table) - set(_FILE_KEYS))
    if unknown:
        raise ConfigError(key, f"{file} has unknown keys {unknown}")
    return Credentials(*values)
