"""``riskmon executor pause|resume|status``: the kill switch of a running daemon.

One websocket to the daemon's ``/v1/executor`` (adapters/http_server.py) carrying the
control token as ``Authorization: Bearer``; one ``{"op": ...}`` message and its answer,
the executor's status after it. The token never appears in an error.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, WebSocketException

from monitor.core.errors import ConfigError, FeedError

EXECUTOR_PATH = "/v1/executor"


async def control_executor(url: str, token: str, op: str, *,
                           timeout_s: float = 10.0) -> dict[str, Any]:
    """Send ``op`` (pause, resume or status) to the daemon at ``url`` (``http://host:port``
    or ``ws://host:port``); its answer. ConfigError for a bad URL; FeedError when the
    daemon cannot be reached or refuses (the HTTP status, never the token)."""
    parts = urlsplit(url)
    schemes = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    if parts.scheme not in schemes or not parts.netloc:
        raise ConfigError("--url", f"{url!r} is not an http(s):// or ws(s):// address")
    target = f"{schemes[parts.scheme]}://{parts.netloc}{EXECUTOR_PATH}"
    try:
        async with connect(target, additional_headers={"Authorization": f"Bearer {token}"},
                           open_timeout=timeout_s, close_timeout=1.0,
                           compression=None) as websocket:
            await websocket.send(orjson.dumps({"op": op}).decode())
            answer = orjson.loads(await websocket.recv())
    except InvalidStatus as e:
        code = e.response.status_code
        hint = (" (no executor: is execution on?)" if code == 404
                else " (wrong or missing control token)" if code == 401 else "")
        raise FeedError(f"{target}: HTTP {code}{hint}") from None
    except (OSError, TimeoutError, WebSocketException) as e:
        raise FeedError(f"{target}: {type(e).__name__}: {e}") from None
    if not isinstance(answer, dict) or "error" in answer:
        raise FeedError(f"{target}: refused: {answer!r}")
    return answer
