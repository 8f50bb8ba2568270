"""What every venue's replay server shares (adapters/okx/replay_server.py,
adapters/binance/replay_server.py): the recording's error, the pace of its frames, and
the small HTTP and URL helpers of serving it."""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import orjson
from websockets.datastructures import Headers
from websockets.http11 import Response

from monitor.errors import RiskmonError

__all__ = ["Pace", "RecordingError", "check_readable", "json_response", "url_host"]


class RecordingError(RiskmonError):
    """The recording cannot be served: missing or unreadable (``path`` names it)."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"recording {path}: {message}")
        self.path = path
        self.message = message


@dataclass
class Pace:
    """When each frame is due: ``start + lag + (recv - first_recv) / speed``; ``speed``
    None does not pace."""

    speed: float | None
    first_recv_ms: int
    start: float
    lag: float = 0.0

    def delay(self, recv_ms: int, now: float) -> float:
        if self.speed is None:
            return 0.0
        return self.start + self.lag + (recv_ms - self.first_recv_ms) / 1000 / self.speed - now

    def rebase(self, recv_ms: int, now: float) -> None:
        """After a pause, make the frame due now at the latest, and the rest after it."""
        late = -self.delay(recv_ms, now)
        if late > 0:
            self.lag += late


def json_response(status: HTTPStatus, body: Any) -> Response:
    """A JSON HTTP answer on the websocket port (a refused handshake, plain REST)."""
    data = orjson.dumps(body)
    headers = Headers([
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Connection", "close"),
        ("Content-Length", str(len(data))),
        ("Content-Type", "application/json"),
    ])
    return Response(status.value, status.phrase, headers, data)


def check_readable(recording: Path) -> None:
    """Raise RecordingError unless ``recording`` is a regular file that can be opened."""
    if not recording.is_file():
        raise RecordingError(recording, "not found (or not a regular file)")
    try:
        with recording.open("rb"):
            pass
    except OSError as error:
        raise RecordingError(recording, f"cannot be read ({error.strerror})") from error


def url_host(host: str) -> str:
    """``host`` as it goes in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host
