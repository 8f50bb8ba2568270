"""An account's API key, read as the configuration names it: environment variables or a
file only its owner can read (mode 0600); never from the configuration itself, so a
config file can be committed and shared. Shared by every venue's ``auth`` module, each
asking for the fields its keys have (OKX: key, secret, passphrase; Binance: key, secret).

Errors are :class:`ConfigError` naming the configuration key and the variable or file,
never a value read.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path

from monitor.core.errors import ConfigError
from monitor.core.settings import AccountConfig

__all__ = ["read_key"]


def read_key(account: AccountConfig, fields: tuple[str, ...], *, trade: bool, missing: str,
             environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The values of ``fields`` (``api_key``, ``api_secret``, ``passphrase``) of the
    account's read-only key, or of its trade key with ``trade``: from its
    ``[trade_]credentials_file`` (TOML with exactly those keys), else from the variables
    its ``[trade_]FIELD_env`` keys name. ``missing`` ends the message of a key not
    configured."""
    env = os.environ if environ is None else environ
    prefix = "trade_" if trade else ""
    path = f"accounts.{account.name}"
    file = getattr(account, f"{prefix}credentials_file")
    if file is not None:
        return _from_file(Path(file), f"{path}.{prefix}credentials_file", fields)
    values: dict[str, str] = {}
    for field in fields:
        key = f"{prefix}{field}_env"
        variable = getattr(account, key)
        if variable is None:
            raise ConfigError(f"{path}.{key}", missing)
        value = env.get(variable, "")
        if not value:
            raise ConfigError(f"{path}.{key}", f"environment variable {variable} is not set")
        values[field] = value
    return values


def _from_file(file: Path, key: str, fields: tuple[str, ...]) -> dict[str, str]:
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
    values: dict[str, str] = {}
    for name in fields:
        value = table.get(name)
        if not isinstance(value, str) or not value:
            raise ConfigError(key, f"{file} needs a non-empty string {name!r}")
        values[name] = value
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(key, f"{file} has unknown keys {unknown}")
    return values
