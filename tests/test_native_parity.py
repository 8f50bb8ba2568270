"""The build compiled by mypyc (setup.py) behaves exactly like the pure Python one.

``./dev test`` installs the compiled build into ``.venv-native`` and runs this module with
``RISKMON_NATIVE_PYTHON`` naming that interpreter. Each test replays one recording with both
interpreters in a subprocess (``python -m riskmon replay`` for the installed build, whose
packages are ``riskmon.monitor`` and ``riskmon.adapters``; ``python -m monitor replay`` for
the developer's editable install) and compares what came out byte for byte: the alert
lines, the ``--state-out`` document, and the quarantine and margin history stored by
``--db``. Without the variable the module is skipped, except in CI (``CI=true``), where a
missing compiled build is an error. The installed build is also checked for the names it
puts into site-packages: ``riskmon`` and its mypyc library only (issue 14).

The subprocesses run outside the repository, without PYTHONPATH, so that the source tree
cannot shadow the installed, compiled package; a probe checks what each one imports.
"""

from __future__ import annotations

import ast
import itertools
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[1]
STORY = ROOT / "examples" / "story.jsonl"
STORY_CONFIG = ROOT / "examples" / "riskmon.toml"
NATIVE_PYTHON_VARIABLE = "RISKMON_NATIVE_PYTHON"

PROBE = Path(__file__).with_name("native_probe.py")


@pytest.fixture(scope="module")
def native_python() -> str:
    path = os.environ.get(NATIVE_PYTHON_VARIABLE)
    if path:
        return path
    message = (f"{NATIVE_PYTHON_VARIABLE} is not set: ./dev test sets it to the interpreter "
               "of the compiled build (.venv-native)")
    if os.environ.get("CI", "") not in ("", "0", "false"):
        pytest.fail(message)
    pytest.skip(message)


def setup_constant(name: str) -> Any:
    """The value of one of setup.py's constants (a literal)."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == name):
            return ast.literal_eval(node.value)
    raise AssertionError(f"setup.py has no {name}")


def compiled_modules() -> list[str]:
    """The modules setup.py compiles (its ``COMPILED`` list), as the source tree names them."""
    paths: list[str] = setup_constant("COMPILED")
    return [path.removesuffix(".py").replace("/", ".") for path in paths]


INSTALLED = "riskmon."
"""What the installed build's module names start with (``riskmon.monitor.core.engine``)."""


def run(python: str, *args: str | Path, cwd: Path) -> bytes:
    """Run ``python`` in ``cwd`` without PYTHONPATH; its standard output."""
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    result = subprocess.run([python, *map(str, args)], cwd=cwd, env=environment,
                            capture_output=True, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"{python}: exit {result.returncode}: "
                             f"{result.stderr.decode(errors='replace')[-2000:]}")
    return result.stdout


def replay(python: str, package: str, recording: Path, workdir: Path) -> dict[str, Any]:
    """Everything a replay of ``recording`` by ``python -m package`` produced."""
    workdir.mkdir()
    run(python, "-m", package, "--log-format", "json", "replay", recording,
        "--config", STORY_CONFIG, "--alerts-out", workdir / "alerts.jsonl",
        "--state-out", workdir / "state.json", "--db", workdir / "riskmon.db", cwd=workdir)
    with sqlite3.connect(workdir / "riskmon.db") as connection:
        quarantine = connection.execute(
            "SELECT source, reason, raw FROM quarantine ORDER BY id").fetchall()
        history = connection.execute(
            "SELECT * FROM margin_history ORDER BY account, ts").fetchall()
    return {
        "alerts": (workdir / "alerts.jsonl").read_bytes(),
        "state": (workdir / "state.json").read_bytes(),
        "quarantine": quarantine,
        "history": history,
    }


def assert_same_replay(native_python: str, recording: Path, tmp_path: Path) -> dict[str, Any]:
    pure = replay(sys.executable, "monitor", recording, tmp_path / "pure")
    native = replay(native_python, "riskmon", recording, tmp_path / "native")
    assert native["alerts"] == pure["alerts"]
    assert native["state"] == pure["state"]
    assert native["quarantine"] == pure["quarantine"]
    assert native["history"] == pure["history"]
    return pure


def test_native_build_is_compiled_and_behaves(native_python: str, tmp_path: Path) -> None:
    modules = compiled_modules()
    native = orjson.loads(run(native_python, PROBE, *(INSTALLED + name for name in modules),
                              cwd=tmp_path))
    pure = orjson.loads(run(sys.executable, PROBE, *modules, cwd=tmp_path))

    assert (native.pop("package"), pure.pop("package")) == (INSTALLED, "")
    assert list(native["files"]) == [INSTALLED + name for name in modules]
    assert all(path.endswith((".so", ".pyd")) for path in native["files"].values()), native["files"]
    assert all(path.endswith(".py") for path in pure["files"].values()), pure["files"]
    # Compiled, the decoder stores a new MarkPrice's fields directly (which the frozen
    # dataclass would refuse interpreted), and what it builds is MarkPrice(...).
    assert native.pop("assign_mark_fields") is True
    assert pure.pop("assign_mark_fields") is False
    assert pure["mark_price"] == {"equal": True, "same_hash": True, "same_repr": True,
                                  "frozen": True}
    # The decoder's entry points check the receive time themselves, in both builds; and a
    # configuration error keeps its cause (monitor.app.config is not compiled: see setup.py).
    assert set(pure["receive_time_checks"]) == {"BadInput"}
    assert pure["config_error_cause"] == "FileNotFoundError"
    del native["files"], pure["files"]
    assert native == pure


# Run by the installed build's interpreter: which of the given modules import, and where each
# file of the riskmon distribution (its RECORD) is installed.
LAYOUT_PROBE = """
import importlib, json, sys, sysconfig
from importlib import metadata
from pathlib import Path

imports = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
        imports[name] = True
    except ModuleNotFoundError:
        imports[name] = False
distribution = metadata.distribution("riskmon")
print(json.dumps({
    "imports": imports,
    "version": distribution.version,
    "files": [str(file.locate().resolve()) for file in metadata.files("riskmon") or []],
    "purelib": str(Path(sysconfig.get_path("purelib")).resolve()),
    "platlib": str(Path(sysconfig.get_path("platlib")).resolve()),
    "scripts": str(Path(sysconfig.get_path("scripts")).resolve()),
    "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX"),
}))
"""


def test_native_build_installs_only_riskmon_names(native_python: str, tmp_path: Path) -> None:
    # Issue 14: no generic top-level names in site-packages; the source tree's packages are
    # riskmon.monitor and riskmon.adapters there. Run in an empty directory, so that nothing
    # but the installation can be imported.
    neutral = tmp_path / "neutral"
    neutral.mkdir()
    layout = orjson.loads(run(native_python, "-c", LAYOUT_PROBE, "monitor", "adapters",
                              "riskmon", "riskmon.monitor", "riskmon.adapters", cwd=neutral))
    assert layout["imports"] == {"monitor": False, "adapters": False, "riskmon": True,
                                 "riskmon.monitor": True, "riskmon.adapters": True}

    site_packages = {Path(layout["purelib"]), Path(layout["platlib"])}
    top_level: set[str] = set()
    elsewhere: set[Path] = set()
    for file in map(Path, layout["files"]):
        inside = [file.relative_to(site) for site in site_packages if file.is_relative_to(site)]
        if inside:
            top_level.add(inside[0].parts[0])
        else:
            elsewhere.add(file)
    library = f"{setup_constant('GROUP')}__mypyc{layout['ext_suffix']}"
    assert top_level == {"riskmon", library, f"riskmon-{layout['version']}.dist-info"}
    assert elsewhere == {Path(layout["scripts"], "riskmon")}
    # The console script and ``python -m riskmon`` run the installed command line.
    scripts = Path(layout["scripts"])
    version = f"riskmon {layout['version']}"
    assert run(str(scripts / "riskmon"), "--version", cwd=neutral).decode().strip() == version
    assert run(native_python, "-m", "riskmon", "--version", cwd=neutral).decode().strip() == version


def test_story_replays_the_same(native_python: str, tmp_path: Path) -> None:
    outputs = assert_same_replay(native_python, STORY, tmp_path)
    assert len(outputs["alerts"].splitlines()) == 10 and len(outputs["quarantine"]) == 2


GOOD_LINES = STORY.read_bytes().splitlines()[:400]
MARK_FRAME = b'{"arg": {"channel": "mark-price", "instId": "BTC-USDT-SWAP"}, "data": [%s]}'
MARK_ROW = b'{"instType": "SWAP", "instId": "BTC-USDT-SWAP", "markPx": %s, "ts": %s}'


def bad_mark(price: bytes = b'"60000"', ts: bytes = b'"1767225700000"',
             recv: bytes = b"1767225700001") -> bytes:
    row = MARK_ROW % (price, ts)
    return b'{"recv_ts": %s, "frame": %s}' % (recv, MARK_FRAME % row)


BAD_LINES = [
    # Not a usable line.
    b"this is not json",
    b'{"recv_ts": 1767225600000, "frame": {"arg": {"channel": "mark-pri',
    b"[1, 2, 3]",
    b"\x00\xff\xfe garbage bytes",
    b'{"recv_ts": 1767225700001}',
    b'{"recv_ts": 1767225700001, "rest": "/api/v5/trade/orders-pending"}',
    # Receive times of every wrong type (compiled code checks argument types itself).
    bad_mark(recv=b'"1767225700001"'),
    bad_mark(recv=b"1767225700001.5"),
    bad_mark(recv=b"true"),
    bad_mark(recv=b"null"),
    bad_mark(recv=b"-1"),
    # Mark prices.
    bad_mark(price=b'"inf"'),
    bad_mark(price=b'"NaN"'),
    bad_mark(price=b'"-5"'),
    bad_mark(price=b'"0"'),
    bad_mark(price=b'""'),
    bad_mark(price=b'"1e999"'),
    bad_mark(price=b"[1]"),
    bad_mark(price=b"true"),
    bad_mark(price=b"null"),
    # Spellings float() takes but OKX never writes (compiled, the decoder scans the code
    # points; interpreted, it strips the canonical characters).
    bad_mark(price=b'" 60000"'),
    bad_mark(price=b'"60000\\n"'),
    bad_mark(price=b'"6_0000"'),
    bad_mark(price=b'"+60000"'),
    bad_mark(price=b'"6e4"'),
    bad_mark(price=b'"6E4"'),
    bad_mark(price=b'"60000.5/"'),
    bad_mark(price=b'"\\u0666\\u0660\\u0660"'),
    bad_mark(price=b'"60000.5\\u00a0"'),
    bad_mark(ts=b'"-1"'),
    bad_mark(ts=b'"1.5"'),
    bad_mark(ts=b"1.5"),
    bad_mark(ts=b'"soon"'),
    bad_mark(ts=b"null"),
    b'{"recv_ts": 1, "frame": {"arg": {"channel": "mark-price"}, "data": {"instId": "X"}}}',
    b'{"recv_ts": 1, "frame": {"arg": {"channel": "mark-price"}, "data": ["row"]}}',
    b'{"recv_ts": 1, "frame": {"arg": {"channel": "mark-price"}, "data": [{"instId": ""}]}}',
    # Private channels and REST.
    b'{"recv_ts": 1, "account": "main", "frame": {"arg": {"channel": "orders"}, "data": [{'
    b'"instType": "SWAP", "instId": "BTC-USDT-SWAP", "ordId": "1", "side": "hold", "px": "1",'
    b' "sz": "1", "accFillSz": "0", "ordType": "limit", "state": "live", "reduceOnly": "false",'
    b' "lever": "10", "uTime": "1767225700000"}]}}',
    b'{"recv_ts": 1, "account": "main", "frame": {"arg": {"channel": "positions"},'
    b' "eventType": "event_update", "data": [{"instType": "SWAP", "instId": "BTC-USDT-SWAP",'
    b' "posSide": "long", "pos": "1", "avgPx": "60000", "uTime": "1767225700000"}]}}',
    b'{"recv_ts": 1, "account": "main", "frame": {"arg": {"channel": "account"},'
    b' "eventType": "event_update", "data": [{"uTime": "1767225700000", "details": [{"ccy":'
    b' "USDT", "cashBal": "NaN"}]}]}}',
    b'{"recv_ts": 1, "frame": {"arg": {"channel": "orders"}, "data": []}}',
    b'{"recv_ts": 1, "account": "main", "rest": "/api/v5/trade/orders-pending",'
    b' "body": {"code": "50011", "msg": "Too Many Requests", "data": []}}',
    b'{"recv_ts": 1, "account": 5, "frame": {"arg": {"channel": "account"}, "data": []}}',
]


def test_bad_lines_are_quarantined_the_same(native_python: str, tmp_path: Path) -> None:
    lines: list[bytes] = []
    for number, line in enumerate(GOOD_LINES):
        lines.append(line)
        if number % 10 == 0:
            lines.append(BAD_LINES[(number // 10) % len(BAD_LINES)])
        if number % 97 == 0:
            lines.append(b"")
    lines.extend(BAD_LINES)
    recording = tmp_path / "mixed.jsonl"
    recording.write_bytes(b"\n".join(lines) + b"\n")

    outputs = assert_same_replay(native_python, recording, tmp_path)
    # Every bad line is in quarantine (the decoder rejected each of them, for some reason).
    assert len(outputs["quarantine"]) == len(lines) - len(GOOD_LINES) - lines.count(b"")


def test_generated_mark_prices_replay_the_same(native_python: str, tmp_path: Path) -> None:
    # The story's account and positions, then 5,000 mark prices of both instruments that
    # slide through every level and back, written in each form the decoder accepts.
    rng = random.Random(5)
    # (everything before the story's first mark price: REST answers and snapshots).
    lines = list(itertools.takewhile(lambda line: b'"mark-price"' not in line,
                                     STORY.read_bytes().splitlines()))
    fraction = 1.0
    start_ms = 1_767_225_600_000
    for number in range(5_000):
        ts = start_ms + number * 200
        target = 1.0 - 0.12 * (1 - abs(number - 2_500) / 2_500)  # 1.0 to 0.88 and back
        fraction += (target - fraction) * 0.05 + rng.uniform(-0.001, 0.001)
        inst_id, entry = ("BTC-USDT-SWAP", 60_000) if number % 2 else ("ETH-USDT-SWAP", 3_000)
        price: Any = round(entry * fraction, 2)  # mostly a JSON number, which is accepted
        if number % 3 == 0:
            price = f"{price:.2f}"  # as OKX sends it
        elif number % 9 == 1:
            price = int(price)
        if 3_000 <= number < 3_100 and inst_id == "BTC-USDT-SWAP":
            continue  # a quiet BTC feed: stale, then recovered
        lines.append(orjson.dumps({"recv_ts": ts + 3, "frame": {
            "arg": {"channel": "mark-price", "instId": inst_id},
            "data": [{"instType": "SWAP", "instId": inst_id, "markPx": price,
                      "ts": str(ts)}]}}))
        if number % 50 == 0:
            lines.append(orjson.dumps({"recv_ts": ts + 4, "frame": {
                "arg": {"channel": "index-tickers", "instId": "BTC-USDT"},
                "data": [{"instId": "BTC-USDT", "idxPx": f"{60_000 * fraction:.2f}",
                          "ts": str(ts)}]}}))
    recording = tmp_path / "marks.jsonl"
    recording.write_bytes(b"\n".join(lines) + b"\n")

    outputs = assert_same_replay(native_python, recording, tmp_path)
    kinds = {orjson.loads(line)["kind"] for line in outputs["alerts"].splitlines()}
    assert {"level_changed", "stop_loss", "feed_stale", "feed_recovered"} <= kinds
