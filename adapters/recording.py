"""Writing a recording (SPEC 3.2) of what a live feed delivered: ``riskmon record``.

One JSON line per frame or REST response, in the order the feed delivered them:
``{"recv_ts", "account" (private only), "frame"}`` or ``{"recv_ts", "account", "rest",
"body"}``. A message that was not JSON is recorded as a string ``frame``, so a replay
quarantines it just as the live daemon did. Connection changes are not part of the format.

Lines are written to a buffered file from the feed's reader tasks (the feed delivers a
frame as text: it is parsed here, then serialised into the line, a memory copy) and reach
the disk when the buffer fills and at :meth:`RecordingWriter.close`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from monitor.runtime.feed import FeedItem, Frame, RestBody


class RecordingWriter:
    """Appends feed items to a recording file."""

    def __init__(self, path: Path) -> None:
        self._handle = path.open("ab")
        self.lines = 0

    def write(self, item: FeedItem) -> None:
        line: dict[str, Any] = {"recv_ts": item.recv_ms}
        if item.account is not None:
            line["account"] = item.account
        if isinstance(item, Frame):
            line["frame"] = _parsed(item.text)
        elif isinstance(item, RestBody):
            line["rest"] = item.path
            line["body"] = item.body
        else:
            return
        self._handle.write(orjson.dumps(line) + b"\n")
        self.lines += 1

    def close(self) -> None:
        self._handle.close()


def _parsed(text: str) -> Any:
    """The frame a message's text holds, or the text itself when it is not JSON.

    The feed delivers frames unparsed (monitor.runtime.feed); parsing here keeps the recording's
    frames JSON values rather than strings of JSON.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
