"""What a regular (non-editable) build installs: one top-level package, ``riskmon`` (issue 14).

setup.py stages the source tree's ``monitor`` and ``adapters`` as ``riskmon.monitor`` and
``riskmon.adapters``, rewriting their imports. These tests build the pure wheel from a copy
of the project (so that the repository's own ``build/`` is left alone) with this
environment's setuptools, and run the staging step alone (``setup.py egg_info``) on copies
holding modules made to test the rewrite. The compiled build is checked installed, by
tests/test_native_parity.py.
"""

from __future__ import annotations

import ast
import configparser
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("monitor", "adapters")
PROJECT_FILES = ("pyproject.toml", "setup.py", "README.md")
STAGED = Path("build", "riskmon-namespace", "riskmon")


def copy_project(target: Path) -> Path:
    """The files a build reads (as deploy/Containerfile copies them), copied to ``target``."""
    target.mkdir()
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, target / name)
    for package in SOURCES:
        shutil.copytree(ROOT / package, target / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"))
    return target


def pure_environment() -> dict[str, str]:
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("PYTHONPATH", "RISKMON_REQUIRE_COMPILED")}
    return {**environment, "RISKMON_PURE_PYTHON": "1"}


def source_modules() -> dict[str, Path]:
    """The source tree's modules, by the path they have in a wheel."""
    return {f"riskmon/{path.relative_to(ROOT).as_posix()}": path
            for package in SOURCES for path in sorted((ROOT / package).rglob("*.py"))
            if "__pycache__" not in path.parts}


def imported_packages(tree: ast.AST) -> set[str]:
    """The top-level packages the module's absolute imports name."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.partition(".")[0])
    return names


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    scratch = tmp_path_factory.mktemp("wheel")
    project = copy_project(scratch / "project")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(scratch / "dist"), str(project)],
                   env=pure_environment(), cwd=scratch, check=True, capture_output=True,
                   timeout=300)
    [built] = (scratch / "dist").glob("riskmon-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_holds_only_riskmon(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    outside = [name for name in names
               if not re.match(r"riskmon/|riskmon-[^/]+\.dist-info/", name)]
    assert not outside
    modules = source_modules()
    staged = {name for name in names if name.endswith(".py")}
    assert staged == {*modules, "riskmon/__init__.py", "riskmon/__main__.py"}
    assert {"riskmon/py.typed", "riskmon/monitor/py.typed", "riskmon/adapters/py.typed"} <= set(
        names)
    # Pure: nothing compiled.
    assert not [name for name in names if name.endswith((".so", ".pyd"))]


def test_the_console_script_runs_the_installed_command_line(wheel: zipfile.ZipFile) -> None:
    [entry_points] = [name for name in wheel.namelist() if name.endswith(".dist-info/"
                                                                         "entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    assert dict(parser["console_scripts"]) == {"riskmon": "riskmon.monitor.app.cli:main"}
    main = ast.parse(wheel.read("riskmon/__main__.py"))
    assert imported_packages(main) == {"sys", "riskmon"}


def test_the_staged_modules_are_the_sources_with_riskmon_imports(
        wheel: zipfile.ZipFile) -> None:
    for name, source_path in source_modules().items():
        staged = wheel.read(name).decode("utf-8")
        tree = ast.parse(staged, filename=name)  # it parses
        assert not imported_packages(tree) & set(SOURCES), name
        # Line for line the source, but for ``riskmon.`` before the imported packages.
        source_lines = source_path.read_text(encoding="utf-8").split("\n")
        staged_lines = staged.split("\n")
        assert len(staged_lines) == len(source_lines), name
        for source_line, staged_line in zip(source_lines, staged_lines, strict=True):
            if staged_line != source_line:
                unprefixed = re.sub(r"\briskmon\.(?=(?:monitor|adapters)\b)", "", staged_line)
                assert unprefixed == source_line, (name, staged_line)
                assert re.match(r"\s*(from|import)\b", staged_line), (name, staged_line)


def stage(project: Path) -> subprocess.CompletedProcess[bytes]:
    """Run setup.py's staging (a metadata command stages, and compiles nothing)."""
    return subprocess.run([sys.executable, "setup.py", "--quiet", "egg_info"], cwd=project,
                          env=pure_environment(), capture_output=True, timeout=120)


# Imports of every form the rewrite handles, and what they must become, character for
# character (the ``é`` puts ast's byte offsets and the text's columns apart).
TRICKY_SOURCE = '''"""Not `from monitor import x` in a docstring."""
import os, monitor.core.engine as engine
from monitor.core import (
    events,  # from adapters import wire
)
from \\
    adapters.wire import COMPILED
label = "é"; from monitor.core.errors import BadInput
import monitoring_of_things as other
from . import trick_sibling


def nested() -> None:
    from adapters import okx
    import adapters.okx.decode as decode
    name = "monitor"
'''
TRICKY_STAGED = '''"""Not `from monitor import x` in a docstring."""
import os, riskmon.monitor.core.engine as engine
from riskmon.monitor.core import (
    events,  # from adapters import wire
)
from \\
    riskmon.adapters.wire import COMPILED
label = "é"; from riskmon.monitor.core.errors import BadInput
import monitoring_of_things as other
from . import trick_sibling


def nested() -> None:
    from riskmon.adapters import okx
    import riskmon.adapters.okx.decode as decode
    name = "monitor"
'''


def test_staging_rewrites_only_the_module_names(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    (project / "monitor" / "trick.py").write_text(TRICKY_SOURCE, encoding="utf-8")
    result = stage(project)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    staged = (project / STAGED / "monitor" / "trick.py").read_text(encoding="utf-8")
    assert staged == TRICKY_STAGED
    # Package data and the namespace's own files are there; nothing else is.
    assert (project / STAGED / "monitor" / "py.typed").is_file()
    assert (project / STAGED / "__main__.py").is_file()
    assert sorted(path.name for path in (project / STAGED).iterdir()) == [
        "__init__.py", "__main__.py", "adapters", "monitor", "py.typed"]


@pytest.mark.parametrize("module", [
    # binds ``monitor``, which the installed package does not have
    "import monitor.core.engine\n",
    "import adapters\n",
    # reaches out of the package (the file is monitor/bad.py)
    "from .. import anything\n",
    # strings naming modules: a rewrite cannot tell whether to prefix them
    'import importlib\nengine = importlib.import_module("monitor.core.engine")\n',
    'import importlib\nadapters_package = importlib.import_module("adapters")\n',
    'TARGET = "adapters.okx.decode.OkxDecoder"\n',
    'def where(name: str) -> str:\n    return f"monitor.{name}"\n',
])
def test_staging_refuses_what_it_cannot_rewrite(tmp_path: Path, module: str) -> None:
    project = copy_project(tmp_path / "project")
    (project / "monitor" / "bad.py").write_text(module, encoding="utf-8")
    assert stage(project).returncode != 0
    assert not (project / STAGED / "monitor" / "bad.py").exists()
