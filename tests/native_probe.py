"""What the riskmon this interpreter imports is made of, and how it behaves where code
compiled by mypyc is known to differ from CPython. Prints one JSON object.

Run by tests/test_native_parity.py with the pure and the compiled build, as a script and
outside the repository, so that the installed package is what gets imported:

    python tests/native_probe.py MODULE...    (the dotted names of the modules to locate)
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from adapters import wire
from adapters.okx.decode import OkxDecoder, RestPath
from monitor.app.config import load_config
from monitor.core.errors import BadInput, ConfigError
from monitor.core.events import MarkPrice

MARK_FRAME = {"arg": {"channel": "mark-price", "instId": "BTC-USDT-SWAP"},
              "data": [{"instId": "BTC-USDT-SWAP", "markPx": "60000.5", "ts": "5"}]}


def mark_price() -> dict[str, bool]:
    """The decoder's MarkPrice, built by direct stores when compiled, is MarkPrice(...)."""
    [mark] = OkxDecoder().decode_line(orjson.dumps({"recv_ts": 7, "frame": MARK_FRAME}))
    assert isinstance(mark, MarkPrice)
    expected = MarkPrice("BTC-USDT-SWAP", 60000.5, 5, 7)
    try:
        mark.price = 1.0  # type: ignore[misc]
        frozen = False
    except dataclasses.FrozenInstanceError:
        frozen = True
    return {"equal": mark == expected, "same_hash": hash(mark) == hash(expected),
            "same_repr": repr(mark) == repr(expected), "frozen": frozen}


def receive_time_checks() -> list[str]:
    """What the entry points raise for receive times of the wrong type (a compiled function
    checks the types of its arguments, and reads a bool as an int)."""
    decoder = OkxDecoder()
    entry_points: list[Callable[[Any], object]] = [
        lambda recv_ms: decoder.decode_frame(MARK_FRAME, None, recv_ms),
        lambda recv_ms: decoder.decode_rest(RestPath.INSTRUMENTS, {}, None, recv_ms),
    ]
    outcomes = []
    for recv_ms in (-1, "1700000000500", 1.5, None, True):
        for entry_point in entry_points:
            try:
                entry_point(recv_ms)
                outcomes.append("accepted")
            except BadInput:
                outcomes.append("BadInput")
            except Exception as error:
                outcomes.append(type(error).__name__)
    return outcomes


def config_error_cause() -> str:
    """The cause of a configuration error (mypyc would drop the ``from`` of ``raise``)."""
    with tempfile.TemporaryDirectory() as scratch:
        try:
            load_config(Path(scratch, "absent.toml"))
        except ConfigError as error:
            return type(error.__cause__).__name__
    return "no error"


def main(modules: list[str]) -> dict[str, Any]:
    return {
        "files": {name: importlib.import_module(name).__file__ for name in modules},
        "assign_mark_fields": wire.COMPILED,
        "mark_price": mark_price(),
        "receive_time_checks": receive_time_checks(),
        "config_error_cause": config_error_cause(),
    }


if __name__ == "__main__":
    sys.stdout.buffer.write(orjson.dumps(main(sys.argv[1:])))
