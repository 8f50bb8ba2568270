"""What every venue's replay server shares (adapters/okx/replay_server.py,
adapters/binance/replay_server.py): the recording's error, the pace of its frames, the
drop fault's schedule, waiting for the connections, the account an API key stands for,
and the small HTTP and URL helpers of serving it."""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import Callable, Collection
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import orjson
from websockets.datastructures import Headers
from websockets.http11 import Response

from monitor.core.errors import RiskmonError

__all__ = ["DropSchedule", "Pace", "RecordingError", "account_for_key", "check_readable",
           "json_response", "url_host", "wait_until"]


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


class DropSchedule:
    """The drop fault: after every ``after`` frames pushed, ``times`` times in all, the
    connection of the next frame is dropped."""

    def __init__(self, after: int | None, times: int) -> None:
        self.after = after
        self.left = times if after is not None else 0
        self.next_at = after or 0

    def take(self, pushed: int) -> bool:
        """Whether the frame after ``pushed`` frames is to be dropped (once each)."""
        if self.after is None or self.left == 0 or pushed != self.next_at:
            return False
        self.left -= 1
        self.next_at += self.after
        return True


async def wait_until(changed: asyncio.Event, predicate: Callable[[], bool]) -> None:
    """Wait for ``predicate`` to hold, re-checking it whenever ``changed`` is set (a
    connection came or went)."""
    while not predicate():
        changed.clear()
        await changed.wait()


def account_for_key(api_key: str, accounts: Collection[str]) -> str | None:
    """The recording's account an API key stands for: the one it names, else the only
    one."""
    if api_key in accounts:
        return api_key
    if len(accounts) == 1:
        return next(iter(accounts))
    return None
