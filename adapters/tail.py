"""``riskmon tail``: the command-line client of the alert stream (SPEC 7, protocol in
adapters/alert_stream.py).

It subscribes, prints every alert as one JSON line (the text the server sent, which is the
alert JSON of SPEC 2) and flushes each line, so a pipe sees alerts as they come. When the
connection is lost (riskmon restarting, a network fault, the server cutting off a slow
reader) it reconnects with capped, jittered backoff and resumes ``since`` the last alert it
printed, so it prints every matching alert once, in store order, across restarts. Before
it has printed anything it resumes from the ``resume_id`` of the server's first
acknowledgement (with ``since`` unset that is where the live stream began; when no alert
was stored yet, from the earliest).

A refusal (an unknown token, an account outside the token's accounts, a bad request, a
``since`` the store does not hold) is final: :class:`TailRefused` with the server's reason.
Connection failures are not: it keeps trying until stopped, and says so on stderr.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, BinaryIO, Final, TextIO

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from adapters.alert_stream import CLOSE_CODES
from adapters.backoff import backoff_delay
from monitor.core.errors import RiskmonError
from monitor.runtime.stream import EARLIEST

DEFAULT_URL: Final = "ws://127.0.0.1:8765/v1/alerts"
TOKEN_ENV: Final = "RISKMON_STREAM_TOKEN"

# Refusals the client cannot fix by retrying.
_FINAL: Final = frozenset({"bad_request", "unauthorized", "forbidden", "unknown_since"})
_FINAL_CLOSE_CODES: Final = {CLOSE_CODES[code]: code for code in _FINAL}


class TailRefused(RiskmonError):
    """The server refused the subscription; the message is its reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True, slots=True)
class TailRequest:
    """What to subscribe to (None: everything the token may see)."""

    token: str | None = None
    accounts: Collection[str] | None = None
    kinds: Collection[str] | None = None
    min_level: str | None = None
    since: str | None = None


class _Lost(Exception):
    """The connection ended; reconnect."""


async def tail(url: str, request: TailRequest, out: BinaryIO, err: TextIO, *,
               count: int | None = None, stop: asyncio.Event | None = None,
               backoff_initial_s: float = 0.2, backoff_max_s: float = 5.0) -> int:
    """Print alerts until ``count`` were printed (returns how many) or ``stop`` is set.

    Raises :class:`TailRefused` for a final refusal and ValueError for a URL that is not
    a websocket URL.
    """
    session = _Session(request, out, count)
    rng = random.Random()
    failures = 0
    stop = stop or asyncio.Event()
    while not session.done():
        attempt = asyncio.create_task(session.follow(url))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([attempt, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not attempt.done():
            attempt.cancel()
            await asyncio.gather(attempt, return_exceptions=True)
            break
        try:
            attempt.result()
        except InvalidURI as e:
            raise ValueError(f"not a websocket URL: {url}") from e
        except (_Lost, OSError, InvalidHandshake, TimeoutError, ConnectionClosed) as e:
            if session.done():
                break
            failures = 0 if session.progressed() else failures + 1
            delay = backoff_delay(failures, backoff_initial_s, backoff_max_s, rng)
            print(f"riskmon tail: {_describe(e)}; reconnecting in {delay:.1f} s", file=err,
                  flush=True)
            try:
                await asyncio.wait_for(stop.wait(), delay)
                break
            except TimeoutError:
                continue
    return session.printed


class _Session:
    """The state that carries over reconnects: where to resume and how much was printed."""

    def __init__(self, request: TailRequest, out: BinaryIO, count: int | None) -> None:
        self.request = request
        self.out = out
        self.count = count
        self.printed = 0
        self.resume = request.since
        self._printed_at_connect = 0

    def done(self) -> bool:
        return self.count is not None and self.printed >= self.count

    def progressed(self) -> bool:
        """Whether the last connection printed something (then the backoff restarts)."""
        return self.printed > self._printed_at_connect

    async def follow(self, url: str) -> None:
        """One connection: subscribe, then print until it ends (raises _Lost & co)."""
        self._printed_at_connect = self.printed
        async with connect(url, open_timeout=10, close_timeout=2, max_size=2**22) as ws:
            await ws.send(orjson.dumps(self._subscribe_request()).decode())
            try:
                ack = _message(await ws.recv())
            except ConnectionClosed as e:
                raise _final_or_lost(e) from None
            self._check_refusal(ack)
            if ack.get("event") != "subscribed":
                raise _Lost(f"unexpected first message {str(ack)[:80]!r}")
            if self.resume is None:
                resume_id = ack.get("resume_id")
                self.resume = resume_id if isinstance(resume_id, str) else EARLIEST
            try:
                async for raw in ws:
                    message = _message(raw)
                    if "event" in message:
                        self._check_refusal(message)
                        continue  # heartbeat; a slow_subscriber error ends in a close
                    alert_id = message.get("id")
                    if not isinstance(alert_id, str):
                        raise _Lost("the server sent an alert without an id")
                    text = raw.encode() if isinstance(raw, str) else raw
                    self.out.write(text + b"\n")
                    self.out.flush()
                    self.resume = alert_id
                    self.printed += 1
                    if self.done():
                        return
            except ConnectionClosed as e:
                raise _final_or_lost(e) from None
            raise _Lost(_close_text(ws.close_code, ws.close_reason))

    def _subscribe_request(self) -> dict[str, Any]:
        request: dict[str, Any] = {"op": "subscribe"}
        fields = (("token", self.request.token),
                  ("accounts", _listed(self.request.accounts)),
                  ("kinds", _listed(self.request.kinds)),
                  ("min_level", self.request.min_level),
                  ("since", self.resume))
        request.update({name: value for name, value in fields if value is not None})
        return request

    @staticmethod
    def _check_refusal(message: dict[str, Any]) -> None:
        if message.get("event") == "error" and message.get("code") in _FINAL:
            raise TailRefused(str(message["code"]), str(message.get("msg", "")))


def _final_or_lost(closed: ConnectionClosed) -> Exception:
    frame = closed.rcvd
    if frame is not None and frame.code in _FINAL_CLOSE_CODES:
        return TailRefused(_FINAL_CLOSE_CODES[frame.code], frame.reason)
    return _Lost(_close_text(None if frame is None else frame.code,
                             None if frame is None else frame.reason))


def _message(raw: str | bytes) -> dict[str, Any]:
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _Lost("the server sent a message that is not JSON") from None
    if not isinstance(message, dict):
        raise _Lost("the server sent a message that is not a JSON object")
    return message


def _listed(values: Collection[str] | None) -> list[str] | None:
    return None if values is None else list(values)


def _close_text(code: int | None, reason: str | None) -> str:
    if code is None:
        return "connection lost"
    return f"connection closed ({code}{': ' + reason if reason else ''})"


def _describe(error: BaseException) -> str:
    if isinstance(error, _Lost):
        return str(error)
    if isinstance(error, ConnectionClosed):
        return _close_text(None if error.rcvd is None else error.rcvd.code,
                           None if error.rcvd is None else error.rcvd.reason)
    if isinstance(error, TimeoutError):
        return "connection timed out"
    return f"cannot connect ({error})"
