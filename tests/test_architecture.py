"""The dependency arrows (STYLE.md): ``adapters`` import ``monitor``, never the reverse;
inside ``monitor``, the application (``monitor/app``) imports the runtime
(``monitor/runtime``), which imports the pure core (``monitor/core``), never back.

Only the composition roots (``monitor/app/cli.py`` and ``monitor/app/service.py``) may
reach into ``adapters``, and only through the venue registry (``adapters/venues.py``) for
anything of an exchange; adapters import the core and the runtime, never the
application. The pure core reads no clock and does no I/O, so it imports no event loop,
clock, logger or randomness. Nothing under ``monitor/`` names an exchange, and one venue's
package never imports another's nor the composition root. Imports are read with
:mod:`ast`, including imports nested inside functions.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.venues import VENUES

ROOT = Path(__file__).parents[1]
MONITOR = ROOT / "monitor"
ADAPTERS = ROOT / "adapters"

# Exchanges a file under monitor/ must not name: every registered venue and the venue
# packages under adapters/, and the other large derivatives venues, so that a third
# venue's name does not slip in before its package exists.
OTHER_EXCHANGES = ("binance", "bybit", "deribit", "bitmex", "kraken", "bitget", "gate.io",
                   "hyperliquid", "coinbase")

# The composition roots (the command line, and the embedding API it runs the daemon
# with), and the ``python -m monitor`` entry point that only calls the first.
COMPOSITION_ROOT = {"monitor/app/cli.py", "monitor/__main__.py", "monitor/app/service.py"}

LAYERS = ("core", "runtime", "app")
"""``monitor``'s packages, each importing only those before it and itself."""
PURE_CORE = sorted(path.relative_to(ROOT).as_posix()
                   for path in (MONITOR / "core").glob("*.py"))
CORE_FORBIDDEN = ("asyncio", "time", "datetime", "logging", "structlog", "random")

PURE_DECODER = "adapters/okx/decode.py"
# Every venue's decoder and the field readers they share stay sans-I/O.
PURE_DECODERS = sorted({"adapters/wire.py", PURE_DECODER,
                        *(path.relative_to(ROOT).as_posix()
                          for path in ROOT.glob("adapters/*/decode.py"))})
DECODER_FORBIDDEN = ("asyncio", "time", "logging", "structlog")


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line, dotted name)`` for every module the file imports.

    ``from package import name`` yields both ``package`` and ``package.name`` (the name may
    be a submodule); relative imports are resolved against the file's package.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = list(path.relative_to(ROOT).parent.parts)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module:
                yield node.lineno, module
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{module}.{alias.name}" if module else alias.name


def is_within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(path: Path, forbidden: tuple[str, ...]) -> list[str]:
    """One ``file:line imports module`` entry per offending import (its shortest name)."""
    reported: dict[int, list[str]] = {}
    for line, module in sorted(set(imported_modules(path))):
        if not any(is_within(module, name) for name in forbidden):
            continue
        if any(is_within(module, seen) for seen in reported.get(line, [])):
            continue
        reported.setdefault(line, []).append(module)
    return [
        f"{relative(path)}:{line} imports {module}"
        for line, modules in sorted(reported.items())
        for module in modules
    ]


def monitor_files() -> list[Path]:
    return sorted(MONITOR.rglob("*.py"))


def test_discovery_finds_the_monitor_package() -> None:
    found = {relative(path) for path in monitor_files()}

    assert not COMPOSITION_ROOT - found, f"missing: {COMPOSITION_ROOT - found}"
    assert not set(PURE_CORE) - found, f"pure core modules missing: {set(PURE_CORE) - found}"
    assert (ROOT / PURE_DECODER).is_file(), f"{PURE_DECODER} is missing"


def test_the_import_reader_sees_the_composition_root_use_adapters() -> None:
    # Guards against a reader that finds nothing and so passes every check below.
    assert violations(MONITOR / "app" / "cli.py", ("adapters",))


def test_monitor_never_imports_adapters_outside_the_composition_root() -> None:
    found = [
        problem
        for path in monitor_files()
        if relative(path) not in COMPOSITION_ROOT
        for problem in violations(path, ("adapters",))
    ]

    assert not found, ("monitor must not import adapters (only the composition roots "
                       "may):\n" + "\n".join(found))


def test_main_module_reaches_adapters_only_through_the_cli() -> None:
    path = MONITOR / "__main__.py"
    project_imports = {
        module
        for _, module in imported_modules(path)
        if is_within(module, "monitor") or is_within(module, "adapters")
    }

    assert project_imports <= {"monitor.app.cli", "monitor.app.cli.main"}, (
        f"{relative(path)} imports {sorted(project_imports)}; it should only call monitor.app.cli"
    )


def test_monitor_is_its_three_layers() -> None:
    top = {path.name for path in MONITOR.iterdir() if path.name != "__pycache__"}
    assert top == {"__init__.py", "__main__.py", "py.typed", *LAYERS}
    assert len(PURE_CORE) >= 10  # the glob found the core


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_only_the_layers_below_it(layer: str) -> None:
    allowed = LAYERS[: LAYERS.index(layer) + 1]
    above = tuple(f"monitor.{name}" for name in LAYERS if name not in allowed)
    found = [problem for path in sorted((MONITOR / layer).rglob("*.py"))
             for problem in violations(path, above)]

    assert not found, (f"monitor/{layer} may import {', '.join(allowed)} only:\n"
                       + "\n".join(found))


def test_the_layer_reader_sees_imports_between_layers() -> None:
    # Guards against a reader that finds nothing: these imports are there, and allowed.
    assert violations(MONITOR / "runtime" / "venues.py", ("monitor.core",))
    assert violations(MONITOR / "app" / "service.py", ("monitor.runtime",))


@pytest.mark.parametrize("module", PURE_CORE)
def test_pure_core_reads_no_clock_and_does_no_io(module: str) -> None:
    found = violations(ROOT / module, CORE_FORBIDDEN)

    assert not found, "the pure core must not import a clock, logger or event loop:\n" + (
        "\n".join(found)
    )


@pytest.mark.parametrize("module", PURE_DECODERS)
def test_the_decoders_are_pure(module: str) -> None:
    found = violations(ROOT / module, DECODER_FORBIDDEN)

    assert not found, "the decoders must stay sans-I/O:\n" + "\n".join(found)


def venue_packages() -> list[Path]:
    """The venue packages: ``adapters/NAME/`` with a ``venue.py``."""
    return sorted(path.parent for path in ADAPTERS.glob("*/venue.py"))


def exchange_names() -> set[str]:
    return ({name.lower() for name in VENUES.venues}
            | {path.name.lower() for path in venue_packages()} | set(OTHER_EXCHANGES))


def test_every_registered_venue_has_a_package_and_the_reader_sees_it() -> None:
    assert {path.name for path in venue_packages()} >= set(VENUES.venues)
    # The name check below reads text: guard against a pattern that matches nothing.
    assert name_mentions("a feed of OKX and binance", exchange_names())


def name_mentions(text: str, names: set[str]) -> list[str]:
    pattern = re.compile(r"(?<![a-z0-9])(" + "|".join(map(re.escape, sorted(names)))
                         + r")(?![a-z0-9])", re.IGNORECASE)
    return [match.group(0) for match in pattern.finditer(text)]


def test_nothing_under_monitor_names_an_exchange() -> None:
    names = exchange_names()
    found = [
        f"{relative(path)}:{number}: {line.strip()}"
        for path in sorted(MONITOR.rglob("*"))
        if path.is_file() and path.suffix in {".py", ".pyi", ".toml", ".json", ".md", ".txt"}
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if name_mentions(line, names)
    ]

    assert not found, ("monitor/ is exchange-free (issue 14): say it in the venue's package "
                       "under adapters/ instead:\n" + "\n".join(found))


def test_the_composition_root_reaches_venues_only_through_the_registry() -> None:
    packages = [f"adapters.{path.name}" for path in venue_packages()]
    found = [
        problem
        for name in sorted(COMPOSITION_ROOT)
        for problem in violations(ROOT / name, tuple(packages))
    ]

    assert not found, ("pick venues from adapters/venues.py, never import one:\n"
                       + "\n".join(found))


def test_adapters_import_monitor_only_and_never_the_application() -> None:
    found = [
        problem
        for path in sorted(ADAPTERS.rglob("*.py"))
        for problem in violations(path, ("monitor.app",))
    ]

    assert not found, "adapters must not import the application:\n" + "\n".join(found)


@pytest.mark.parametrize("package", venue_packages(), ids=lambda path: path.name)
def test_a_venue_package_never_imports_another_venue(package: Path) -> None:
    others = tuple(f"adapters.{path.name}" for path in venue_packages() if path != package)
    found = [problem for path in sorted(package.rglob("*.py"))
             for problem in violations(path, others)]

    assert not found, "venues are independent of each other:\n" + "\n".join(found)
