"""``riskmon status --url``: one GET of a running daemon's ``/v1/status`` (monitor.app.status).

The standard library's HTTP client, as for OKX's REST calls: one request, no dependency.
A stream token travels as ``Authorization: Bearer``; it never appears in an error.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import orjson

from monitor.core.errors import ConfigError, FeedError

STATUS_PATH = "/v1/status"


def fetch_status(url: str, token: str | None, *, timeout_s: float = 10.0) -> dict[str, Any]:
    """The status document of the daemon at ``url`` (``http://host:port``, with or without
    the path). Raises ConfigError for a URL that is not http(s), FeedError when the daemon
    cannot be reached or refuses (the status code and its reason, never the token)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError("--url", f"{url!r} is not an http:// or https:// address")
    target = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/') or ''}"
    if not target.endswith(STATUS_PATH):
        target += STATUS_PATH
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(target, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        reason = _reason(e.read())
        raise FeedError(f"{target}: HTTP {e.code}{reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise FeedError(f"{target}: {getattr(e, 'reason', e)}") from None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FeedError(f"{target}: the answer is not JSON") from None
    if not isinstance(document, dict) or "accounts" not in document:
        raise FeedError(f"{target}: the answer is not a status document")
    return document


def _reason(body: bytes) -> str:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(answer, dict) and "msg" in answer:
        return f" ({answer['msg']})"
    return ""
