"""One REST request of a live feed's cold path (the venues' ``rest`` modules): the standard
library's HTTP client, called from a worker thread by the caller, the body decoded as JSON.

Failures raise :class:`~monitor.core.errors.FeedError` naming the method, the path (never the
query, which may carry a signature) and the HTTP status, with the venue's own error code
and message when ``error_detail`` finds them in the body; never a header.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from monitor.core.errors import FeedError

__all__ = ["fetch_json"]


def fetch_json(base_url: str, method: str, target: str, headers: Mapping[str, str], *,
               timeout_s: float, error_detail: Callable[[bytes], str]) -> Any:
    """``method base_url+target``; the decoded JSON body."""
    request = urllib.request.Request(base_url + target, headers=dict(headers), method=method)
    path = urlsplit(target).path
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            raw = response.read()
    except urllib.error.HTTPError as e:
        raise FeedError(f"{method} {path}: HTTP {e.code}{error_detail(e.read())}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise FeedError(f"{method} {path}: {reason}") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise FeedError(f"{method} {path}: response is not JSON") from None
