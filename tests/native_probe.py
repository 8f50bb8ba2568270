"""What the riskmon this interpreter imports is made of, and how it behaves where code
compiled by mypyc is known to differ from CPython. Prints one JSON object.

Run by tests/test_native_parity.py with the pure and the compiled build, as a script and
outside the repository, so that the installed package is what gets imported:

    python tests/native_probe.py MODULE...    (the dotted names of the modules to locate)

An installed build's packages are ``riskmon.monitor`` and ``riskmon.adapters`` (setup.py);
the developer's editable install keeps the source tree's ``monitor`` and ``adapters``. The
probe uses whichever this interpreter has, and says which (``package``).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

PACKAGE = "riskmon." if importlib.util.find_spec("riskmon") is not None else ""
if TYPE_CHECKING:
    # mypy checks the probe against the source tree, the code of both builds.
    from adapters import wire
    from adapters.okx import decode as okx_decode
    from monitor.app import config
    from monitor.core import errors, events
else:
    wire = importlib.import_module(f"{PACKAGE}adapters.wire")
    okx_decode = importlib.import_module(f"{PACKAGE}adapters.okx.decode")
    config = importlib.import_module(f"{PACKAGE}monitor.app.config")
    errors = importlib.import_module(f"{PACKAGE}monitor.core.errors")
    events = importlib.import_module(f"{PACKAGE}monitor.core.events")

MARK_FRAME = {"arg": {"channel": "mark-price", "instId": "BTC-USDT-SWAP"},
              "data": [{"instId": "BTC-USDT-SWAP", "markPx": "60000.5", "ts": "5"}]}


def mark_price() -> dict[str, bool]:
    """The decoder's MarkPrice, built by direct stores when compiled, is MarkPrice(...)."""
    line = orjson.dumps({"recv_ts": 7, "frame": MARK_FRAME})
    [mark] = okx_decode.OkxDecoder().decode_line(line)
    assert isinstance(mark, events.MarkPrice)
    expected = events.MarkPrice("BTC-USDT-SWAP", 60000.5, 5, 7)
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
    decoder = okx_decode.OkxDecoder()
    entry_points: list[Callable[[Any], object]] = [
        lambda recv_ms: decoder.decode_frame(MARK_FRAME, None, recv_ms),
        lambda recv_ms: decoder.decode_rest(okx_decode.RestPath.INSTRUMENTS, {}, None,
                                            recv_ms),
    ]
    outcomes = []
    for recv_ms in (-1, "1700000000500", 1.5, None, True):
        for entry_point in entry_points:
            try:
                entry_point(recv_ms)
                outcomes.append("accepted")
            except errors.BadInput:
                outcomes.append("BadInput")
            except Exception as error:
                outcomes.append(type(error).__name__)
    return outcomes


def config_error_cause() -> str:
    """The cause of a configuration error (mypyc would drop the ``from`` of ``raise``)."""
    with tempfile.TemporaryDirectory() as scratch:
        try:
            config.load_config(Path(scratch, "absent.toml"))
        except errors.ConfigError as error:
            return type(error.__cause__).__name__
    return "no error"


def main(modules: list[str]) -> dict[str, Any]:
    return {
        "package": PACKAGE,
        "files": {name: importlib.import_module(name).__file__ for name in modules},
        "assign_mark_fields": wire.COMPILED,
        "mark_price": mark_price(),
        "receive_time_checks": receive_time_checks(),
        "config_error_cause": config_error_cause(),
    }


if __name__ == "__main__":
    sys.stdout.buffer.write(orjson.dumps(main(sys.argv[1:])))
