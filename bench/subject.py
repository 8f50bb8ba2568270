"""The riskmon a bench measures: the one this interpreter has installed.

An installed build (``pip install .``, such as the compiled one in ``.venv-native``) holds
the source tree's packages as ``riskmon.monitor`` and ``riskmon.adapters`` (setup.py); the
developer's editable install (``.venv``) keeps their names, ``monitor`` and ``adapters``.
The benches that run on either import what they measure from here: from ``riskmon.`` when
the interpreter has it, which the source tree (on ``sys.path`` when a bench runs as
``python -m bench.NAME`` from the repository root) cannot shadow, else from the source
tree's names. mypy checks the benches against the source tree, the code of both builds.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import tempfile
from typing import TYPE_CHECKING

PACKAGE = "riskmon." if importlib.util.find_spec("riskmon") is not None else ""
"""What this interpreter's riskmon module names start with."""

if TYPE_CHECKING:
    # Re-exported (``as``) for the benches; mypy checks them against the source tree.
    from adapters.binance.decode import BinanceDecoder as BinanceDecoder
    from adapters.logging import configure_logging as configure_logging
    from adapters.okx.auth import Credentials as Credentials
    from adapters.okx.decode import OkxDecoder as OkxDecoder
    from adapters.okx.live import OkxFeed as OkxFeed
    from adapters.sinks import SqliteSink as SqliteSink
    from adapters.sqlite_store import SqliteStore as SqliteStore
    from adapters.sqlite_store import WalCheckpointer as WalCheckpointer
    from monitor.app.config import parse_config as parse_config
    from monitor.app.service import single_venue as single_venue
    from monitor.core.alerts import Alert as Alert
    from monitor.core.batch import Batch as Batch
    from monitor.core.engine import MarginEngine as MarginEngine
    from monitor.core.events import BalanceUpdate as BalanceUpdate
    from monitor.core.events import CurrencyBalance as CurrencyBalance
    from monitor.core.events import Position as Position
    from monitor.core.events import PositionSnapshot as PositionSnapshot
    from monitor.core.instruments import Instrument as Instrument
    from monitor.core.instruments import Tier as Tier
    from monitor.core.records import AccountCheckpoint as AccountCheckpoint
    from monitor.core.records import MarginPoint as MarginPoint
    from monitor.core.records import QuarantineRecord as QuarantineRecord
    from monitor.core.records import StoredAlert as StoredAlert
    from monitor.core.settings import Config as Config
    from monitor.core.settings import RiskConfig as RiskConfig
    from monitor.runtime.daemon import Daemon as Daemon
    from monitor.runtime.daemon import Lane as Lane
    from monitor.runtime.daemon import tune_interpreter as tune_interpreter
    from monitor.runtime.feed import FeedItem as FeedItem
    from monitor.runtime.feed import Frame as Frame
    from monitor.runtime.feed import Inbox as Inbox
    from monitor.runtime.pipeline import LineProcessor as LineProcessor
    from monitor.runtime.pipeline import SinkTask as SinkTask
else:
    # The same names, from this interpreter's riskmon (a name missing here is an
    # ImportError where a bench imports it).
    NAMES = {
        "adapters.binance.decode": ["BinanceDecoder"],
        "adapters.logging": ["configure_logging"],
        "adapters.okx.auth": ["Credentials"],
        "adapters.okx.decode": ["OkxDecoder"],
        "adapters.okx.live": ["OkxFeed"],
        "adapters.sinks": ["SqliteSink"],
        "adapters.sqlite_store": ["SqliteStore", "WalCheckpointer"],
        "monitor.app.config": ["parse_config"],
        "monitor.app.service": ["single_venue"],
        "monitor.core.alerts": ["Alert"],
        "monitor.core.batch": ["Batch"],
        "monitor.core.engine": ["MarginEngine"],
        "monitor.core.events": ["BalanceUpdate", "CurrencyBalance", "Position",
                                "PositionSnapshot"],
        "monitor.core.instruments": ["Instrument", "Tier"],
        "monitor.core.records": ["AccountCheckpoint", "MarginPoint", "QuarantineRecord",
                                 "StoredAlert"],
        "monitor.core.settings": ["Config", "RiskConfig"],
        "monitor.runtime.daemon": ["Daemon", "Lane", "tune_interpreter"],
        "monitor.runtime.feed": ["FeedItem", "Frame", "Inbox"],
        "monitor.runtime.pipeline": ["LineProcessor", "SinkTask"],
    }
    globals().update({name: getattr(importlib.import_module(PACKAGE + module), name)
                      for module, names in NAMES.items() for name in names})


def engine_file() -> str:
    """Where the engine was imported from: an extension module compiled by mypyc, or
    ``engine.py`` (pure Python)."""
    return str(importlib.import_module(PACKAGE + "monitor.core.engine").__file__)


def command_line(python: str) -> list[str]:
    """How ``python`` runs riskmon's command line: ``python -m riskmon`` when it has an
    installed build, else ``python -m monitor`` (run from a directory without the source
    tree, so that the answer is about the installation). A path to ``python`` is made
    absolute: the command may run in another directory."""
    if os.sep in python:
        python = os.path.abspath(python)
    with tempfile.TemporaryDirectory() as neutral:
        found = subprocess.run(
            [python, "-c", "import importlib.util; "
                           "print(importlib.util.find_spec('riskmon') is not None)"],
            cwd=neutral, capture_output=True, text=True, check=True, timeout=60).stdout
    return [python, "-m", "riskmon" if found.strip() == "True" else "monitor"]
