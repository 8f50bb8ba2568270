"""Structured logging with structlog, and the log sink for alerts and quarantine (SPEC section 4).

Output is one JSON object per line (rendered with orjson) unless the stream is a terminal,
where structlog's console renderer is used. Every line carries ``timestamp`` (ISO 8601, UTC),
``level`` (the log severity) and ``event``.

Secrets are never logged: :func:`redact_secrets` runs on every event, before rendering, and
replaces the value of any key that looks like a credential with ``"***"``. Tracebacks are
rendered without local variables, which could hold credentials too.
"""

from __future__ import annotations

import json as stdlib_json
import re
import sys
from collections.abc import Mapping
from typing import Any, Final, TextIO

import orjson
import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from monitor.core.alerts import Alert
from monitor.core.records import QuarantineRecord, QuarantineSummary

REDACTED: Final = "***"
LOG_RAW_LIMIT: Final = 256
"""Characters of a quarantined input shown in its log line (the database keeps 4 KiB)."""

_LEVELS: Final = ("debug", "info", "warning", "error", "critical")

# Words that make a key secret on their own, and words that make a following "key" secret
# (api_key, apiKey, OK-ACCESS-KEY, private_key) while a bare "key" stays readable.
_SECRET_WORDS: Final = frozenset(
    {
        "secret",
        "secrets",
        "passphrase",
        "password",
        "passwd",
        "token",
        "tokens",
        "sign",
        "signature",
        "apikey",
        "credential",
        "credentials",
        "authorization",
    }
)
_KEY_QUALIFIERS: Final = frozenset({"api", "access", "secret", "private"})
_CAMEL_BOUNDARY: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_ALNUM: Final = re.compile(r"[^a-z0-9]+")

# Alerts that need a human even when the account level is normal.
_WARNING_KINDS: Final = frozenset(
    {"stop_loss", "feed_stale", "feed_disconnected", "exchange_divergence", "deleverage_plan",
     "account_mode", "execution_failed"}
)


def is_secret_key(key: str) -> bool:
    """Whether a key names a credential, case-insensitively.

    The key is split into words at camelCase boundaries and non-alphanumerics; it is secret
    if a word is one of secret, passphrase, password, token, sign, signature, apikey,
    credential(s) or authorization, or if ``key`` follows api, access, secret or private.
    So ``api_key``, ``apiKey``, ``OK-ACCESS-SIGN`` and ``api_secret_env`` are secret;
    ``signal``, ``design`` and ``key`` are not.
    """
    words = _NON_ALNUM.split(_CAMEL_BOUNDARY.sub("_", key).lower())
    for index, word in enumerate(words):
        if word in _SECRET_WORDS:
            return True
        if word == "key" and index > 0 and words[index - 1] in _KEY_QUALIFIERS:
            return True
    return False


def _redact(value: Any) -> Any:
    """``value`` with secret keys redacted at any depth of nested mappings and lists."""
    if isinstance(value, Mapping):
        return {
            key: REDACTED if isinstance(key, str) and is_secret_key(key) else _redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(item) for item in value]
    return value


def redact_secrets(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: replace the values of credential-like keys with ``"***"``.

    Applies to top-level keys and to keys inside nested mappings and lists (a logged frame or
    config section), using :func:`is_secret_key`. It cannot see secrets inside free text
    such as the event name, so never put one there.
    """
    return {
        key: REDACTED if is_secret_key(key) else _redact(value) for key, value in event_dict.items()
    }


def _orjson_dumps(value: Any, **kwargs: Any) -> str:
    """JSONRenderer serializer: orjson, decoded to the ``str`` a text stream needs.

    Falls back to the standard library for what orjson refuses (integers beyond 64 bits,
    for one), so a log call never fails on an odd value.
    """
    default = kwargs.get("default")
    try:
        return orjson.dumps(value, default=default, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        return stdlib_json.dumps(value, default=default or repr)


def configure_logging(
    *, json: bool | None = None, stream: TextIO | None = None, level: str = "info"
) -> None:
    """Configure structlog for the whole process.

    ``stream`` defaults to standard error, keeping standard output free for alert JSON
    lines. ``json=None`` renders JSON lines unless ``stream`` is a terminal, where it uses
    the console renderer; ``json=True`` or ``False`` forces either. Events below ``level``
    (debug, info, warning, error, critical) are dropped.

    Loggers are not cached, so a later call (in tests, say) takes effect for loggers
    obtained earlier with :func:`get_logger`.
    """
    min_level = level.lower()
    if min_level not in _LEVELS:
        raise ValueError(f"log level must be one of {', '.join(_LEVELS)}, not {level!r}")
    output = sys.stderr if stream is None else stream
    use_json = not output.isatty() if json is None else json
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if use_json:
        processors += [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            redact_secrets,
            structlog.processors.JSONRenderer(serializer=_orjson_dumps),
        ]
    else:
        processors += [
            redact_secrets,
            # plain_traceback: the rich formatter would print local variables.
            structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=structlog.WriteLoggerFactory(file=output),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "riskmon") -> FilteringBoundLogger:
    """A logger whose events carry ``logger_name=name``.

    The logger is bound lazily, so one obtained at import time follows the configuration
    made later by :func:`configure_logging`.
    """
    logger: FilteringBoundLogger = structlog.get_logger(logger_name=name)
    return logger


def log_alert(logger: FilteringBoundLogger, alert: Alert) -> None:
    """Log ``alert`` as one event ``"alert"`` with every alert field as a key.

    The fields are those of the alert JSON (SPEC section 2), ``payload`` as a nested object,
    except that the alert's level is ``alert_level``: ``level`` is the log severity, warning
    for an alert that needs attention (level above normal, or a feed, stop-loss, deleverage
    or divergence alert) and info otherwise.
    """
    fields = alert.to_dict()
    fields["alert_level"] = fields.pop("level")
    if alert.level != "normal" or alert.kind in _WARNING_KINDS:
        logger.warning("alert", **fields)
    else:
        logger.info("alert", **fields)


def log_quarantine(logger: FilteringBoundLogger, record: QuarantineRecord) -> None:
    """Log a quarantined line or frame as one warning event ``"quarantine"``, with the
    first :data:`LOG_RAW_LIMIT` characters of the input as ``raw``."""
    logger.warning(
        "quarantine",
        source=record.source,
        recv_ts=record.recv_ms,
        reason=record.reason,
        raw=record.raw[:LOG_RAW_LIMIT],
    )


def log_quarantine_summary(logger: FilteringBoundLogger, summary: QuarantineSummary) -> None:
    """Log the bad inputs of a window as one warning event ``"quarantine_summary"``:
    ``counts`` by reason class, ``suppressed`` (those without a line of their own),
    ``total`` since the run started and ``window_s``."""
    logger.warning(
        "quarantine_summary",
        counts=dict(summary.counts),
        suppressed=summary.suppressed,
        total=summary.total,
        window_s=summary.window_s,
    )
