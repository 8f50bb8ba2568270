"""Build hook: compile the replay hot path with mypyc when possible (metadata: pyproject.toml).

    pip install .                              compiled when a C compiler works, else pure Python
    RISKMON_PURE_PYTHON=1 pip install .        pure Python; mypyc is not run
    RISKMON_REQUIRE_COMPILED=1 pip install .   a build that cannot compile fails instead

Why a build came out pure is printed on standard error (``pip install -v`` shows it).

Both builds hold the same modules with the same behaviour; the compiled one is faster. It keeps
every ``.py`` file and adds an extension module next to each module of :data:`COMPILED`, plus
the group's shared library (``riskmon__mypyc``); Python imports the extension module when both
are there. ``./dev bench`` builds and measures it; ``./dev test`` checks that it behaves like
the pure build (``tests/test_native_parity.py``).

Editable installs (``pip install -e .``) are always pure Python: an extension module keeps
running the code it was compiled from, whatever is edited in its ``.py`` file afterwards.

Installed, the source tree's packages ``monitor`` and ``adapters`` are ``riskmon.monitor`` and
``riskmon.adapters`` (issue 14: no generic top-level names in a user's site-packages). Every
build but an editable one stages them for that: copies of their modules under ``riskmon/`` in
:data:`STAGE`, each import of ``monitor`` or ``adapters`` rewritten to name ``riskmon.``
(:func:`rewrite_imports`), plus ``riskmon/__init__.py`` and ``riskmon/__main__.py`` (``python
-m riskmon``). The build packages, and mypyc compiles, the staged copies. An editable install
(the developer ``.venv``) keeps the source tree's names: it runs the files in place.
"""

from __future__ import annotations

import ast
import io
import os
import re
import shutil
import sys
import sysconfig
import tempfile
import tokenize
from pathlib import Path
from typing import Any, NoReturn

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel
from setuptools.errors import BaseError, CCompilerError

# The replay's hot path (pipeline, the venues' decoders, engine) and the riskmon modules
# whose classes it uses, compiled as one group so that calls and attribute access among
# them are native. Paths in the source tree; mypyc compiles their staged copies.
# monitor/app/config.py stays interpreted: mypyc ignores the ``from`` of ``raise ... from``,
# and a configuration error should keep its cause.
COMPILED = [
    "monitor/core/errors.py",
    "monitor/core/instruments.py",
    "monitor/core/events.py",
    "monitor/core/alerts.py",
    "monitor/core/formulas.py",
    "monitor/core/transitions.py",
    "monitor/core/engine.py",
    "monitor/runtime/pipeline.py",
    "adapters/wire.py",
    "adapters/okx/decode.py",
    "adapters/binance/decode.py",
]
GROUP = "riskmon"

# The source tree's top-level packages, installed as subpackages of NAMESPACE.
SOURCES = ("monitor", "adapters")
NAMESPACE = "riskmon"
# What the packages ship besides their modules (nothing reads a data file at run time).
PACKAGE_DATA = ["py.typed"]
# Where a build stages the packages under NAMESPACE (not build/riskmon: mypyc writes its C
# for the riskmon.* modules there).
STAGE = Path("build", "riskmon-namespace")
NAMESPACE_FILES = {
    "__init__.py": '"""riskmon, a streaming margin risk monitor, as installed: the source tree\'s\n'
                   'packages ``monitor`` and ``adapters`` are ``riskmon.monitor`` and\n'
                   '``riskmon.adapters`` (staged by setup.py)."""\n',
    "__main__.py": '"""``python -m riskmon`` is ``riskmon``."""\n\nimport sys\n\n'
                   'from riskmon.monitor.app.cli import main\n\nsys.exit(main())\n',
    "py.typed": "",
}
SCRIPT = "riskmon = {package}monitor.app.cli:main"

# The setup.py commands of pip's hooks that only need metadata: they must not run mypyc
# (nor put its C output in an sdist). Any other command may build, so it compiles.
METADATA_COMMANDS = {"egg_info", "dist_info", "sdist"}
EDITABLE_COMMANDS = {"develop", "editable_wheel"}


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _fail(message: str) -> NoReturn:
    raise SystemExit(f"riskmon: {message}")


def _pure(reason: str) -> dict[str, Any]:
    """The options of a pure Python build, unless a compiled build is required."""
    if _flag("RISKMON_REQUIRE_COMPILED"):
        _fail(f"RISKMON_REQUIRE_COMPILED is set, but {reason}")
    print(f"riskmon: building pure Python: {reason}", file=sys.stderr)
    return {}


# --- staging: the packages under riskmon/ ---------------------------------------------------

# A string that names a module of the packages (a dynamic import, a patch target): the
# rewrite cannot tell whether it should name riskmon., so the source must not hold one.
MODULE_STRING = re.compile(r"(?:monitor|adapters)(?:\.\w+)*\.?")
# Functions whose first argument names a module or package.
IMPORTING_CALLS = {"import_module", "__import__", "find_spec", "resolve_name", "files",
                   "read_text", "read_binary", "open_text", "open_binary", "contents"}


def _top(module: str) -> str:
    return module.partition(".")[0]


def rewrite_imports(path: Path, source: str) -> str:
    """``source`` (the module at ``path``, a path in the source tree) with every import of
    ``monitor`` or ``adapters`` naming ``riskmon.monitor`` or ``riskmon.adapters``: only
    those module names change, every other character stays. Fails on what it cannot
    rewrite so (a relative import out of the packages, ``import monitor`` binding
    ``monitor``, a string naming one of their modules)."""
    where = path.as_posix()
    if "\r" in source:
        _fail(f"{where}: only \\n line endings are staged")
    tree = ast.parse(source, filename=where)
    lines = source.split("\n")
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    token_at = {token.start: number for number, token in enumerate(tokens)}
    package = path.parent.parts  # ("monitor", "core") for monitor/core/engine.py
    inserts: list[tuple[int, int]] = []  # (line, column in characters) to insert at

    def column(line: int, offset: int) -> int:
        """The character column of ``offset`` (UTF-8 bytes, as ast counts) on ``line``."""
        return len(lines[line - 1].encode("utf-8")[:offset].decode("utf-8"))

    def problem(node: ast.AST, message: str) -> NoReturn:
        _fail(f"{where}:{getattr(node, 'lineno', '?')}: {message}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _top(alias.name) not in SOURCES:
                    continue
                if alias.asname is None:
                    problem(node, f"`import {alias.name}` binds `{_top(alias.name)}`, which "
                                  f"the installed package does not have: write `from ... "
                                  f"import ...` or `import ... as ...`")
                line, col = alias.lineno, column(alias.lineno, alias.col_offset)
                text = lines[line - 1]
                name = _top(alias.name)
                after = text[col + len(name):col + len(name) + 1]
                if not text.startswith(name, col) or after.isidentifier() or after.isdigit():
                    problem(node, f"cannot locate `{alias.name}` in the import")
                inserts.append((line, col))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level > len(package):
                    problem(node, "a relative import reaching outside the package")
                continue
            if node.module is None or _top(node.module) not in SOURCES:
                continue
            start = token_at.get((node.lineno, column(node.lineno, node.col_offset)))
            if start is None or tokens[start].string != "from":
                problem(node, "cannot locate the import's `from`")
            following = (token for token in tokens[start + 1:]
                         if token.type not in (tokenize.NL, tokenize.COMMENT))
            name = next(following, None)
            if name is None or name.type != tokenize.NAME or name.string != _top(node.module):
                problem(node, f"cannot locate `{node.module}` in the import")
            inserts.append(name.start)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if MODULE_STRING.fullmatch(node.value) and "." in node.value:
                problem(node, f"the string {node.value!r} names a module of the packages: "
                              f"import the module instead")
        elif isinstance(node, ast.Call) and node.args:
            function = node.func
            called = (function.id if isinstance(function, ast.Name)
                      else function.attr if isinstance(function, ast.Attribute) else "")
            first = node.args[0]
            if (called in IMPORTING_CALLS and isinstance(first, ast.Constant)
                    and isinstance(first.value, str) and _top(first.value) in SOURCES):
                problem(node, f"{called}({first.value!r}): import the module instead")

    for line, col in sorted(set(inserts), reverse=True):
        text = lines[line - 1]
        lines[line - 1] = f"{text[:col]}{NAMESPACE}.{text[col:]}"
    rewritten = "\n".join(lines)

    # The check: the rewritten module is the original but for the imports' module names.
    if ast.dump(ast.parse(rewritten)) != ast.dump(_renamed(ast.parse(source))):
        _fail(f"{where}: the rewritten imports do not parse as intended")
    return rewritten


def _renamed(tree: ast.Module) -> ast.Module:
    """``tree`` with the module names of its imports of the packages under riskmon."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _top(alias.name) in SOURCES:
                    alias.name = f"{NAMESPACE}.{alias.name}"
        elif (isinstance(node, ast.ImportFrom) and not node.level and node.module
              and _top(node.module) in SOURCES):
            node.module = f"{NAMESPACE}.{node.module}"
    return tree


def stage() -> Path:
    """Stage the packages under riskmon/ in :data:`STAGE` (afresh); its path."""
    shutil.rmtree(STAGE, ignore_errors=True)
    root = STAGE / NAMESPACE
    for top in SOURCES:
        if not Path(top, "__init__.py").is_file():
            _fail(f"{top}/__init__.py is missing (run setup.py from the project directory)")
        for path in sorted(Path(top).rglob("*")):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            if path.suffix == ".py":
                source = path.read_bytes().decode("utf-8")
                content = rewrite_imports(path, source).encode("utf-8")
            elif path.name in PACKAGE_DATA:
                content = path.read_bytes()
            else:
                continue  # not part of the package (a compiled module of an in-place build)
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    for name, text in NAMESPACE_FILES.items():
        (root / name).write_text(text, encoding="utf-8")
    return STAGE


def _source_layout() -> dict[str, Any]:
    """The packages as the source tree names them: an editable install, an sdist."""
    return {
        "packages": find_packages(include=[f"{top}{suffix}" for top in SOURCES
                                           for suffix in ("", ".*")]),
        "package_data": {top: PACKAGE_DATA for top in SOURCES},
    }


def _installed_layout() -> dict[str, Any]:
    """The packages under riskmon, from their staged copies."""
    where = stage()
    packages = find_packages(str(where))
    if sorted({_top(package) for package in packages}) != [NAMESPACE]:
        _fail(f"staged packages outside {NAMESPACE}: {packages}")
    return {
        "packages": packages,
        "package_dir": {"": where.as_posix()},
        "package_data": {package: PACKAGE_DATA for package in
                         (NAMESPACE, *(f"{NAMESPACE}.{top}" for top in SOURCES))},
    }


def _scripts(package: str) -> dict[str, Any]:
    return {"entry_points": {"console_scripts": [SCRIPT.format(package=package)]}}


class FreshBuildPy(build_py):
    """``build_py`` into an emptied build directory: the wheel gets all of it (install_lib
    copies the whole tree), including what an earlier build left, such as the top-level
    ``monitor`` of a build before the namespace or a module no longer compiled."""

    def run(self) -> None:
        shutil.rmtree(self.build_lib, ignore_errors=True)
        super().run()


class EditableWheel(editable_wheel):
    """``editable_wheel`` that writes the install's metadata itself. A frontend may hand
    ``build_editable`` the metadata it prepared (PEP 517), which setuptools then reuses; but
    setuptools prepares an editable install's metadata with setup.py ``dist_info``, as for
    a regular build (nothing in the command says editable), so its console script would
    name ``riskmon.monitor``, which an editable install does not have. (pip 26 does not hand
    it on; calling setuptools' hooks so does.)"""

    def finalize_options(self) -> None:
        super().finalize_options()
        self.dist_info_dir = None


# --- compiling -------------------------------------------------------------------------------


def _compiler_problem() -> str | None:
    """Why this interpreter cannot build a C extension (no compiler, no headers), or None."""
    # distutils as setuptools provides it (imported above), as build_ext and mypyc use it.
    from distutils.ccompiler import new_compiler
    from distutils.sysconfig import customize_compiler

    compiler: Any = new_compiler()
    customize_compiler(compiler)
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch, "probe.c")
        source.write_text("#include <Python.h>\nint riskmon_probe(void) { return 0; }\n")
        try:
            objects = compiler.compile([str(source)], output_dir=scratch,
                                       include_dirs=[sysconfig.get_paths()["include"]])
            compiler.link_shared_object(objects, str(Path(scratch, "probe.so")))
        except (BaseError, CCompilerError, OSError) as error:
            return f"no working C compiler ({error})"
    return None


class BuildCompiled(build_ext):
    """``build_ext`` for the mypyc group: every module compiled, or none of them."""

    def run(self) -> None:
        try:
            super().run()
        except (BaseError, CCompilerError, OSError) as error:
            # Part of a group does not import: leave the .py files alone in the build.
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            self.extensions = []
            _pure(f"compiling the modules failed ({error})")


def _compiled(staged: Path) -> dict[str, Any]:
    """The extension modules of :data:`COMPILED` (their staged copies), or none."""
    if _flag("RISKMON_PURE_PYTHON"):
        return _pure("RISKMON_PURE_PYTHON is set")
    problem = _compiler_problem()
    if problem is not None:
        return _pure(problem)
    try:
        from mypyc.build import mypycify
    except ImportError as error:
        return _pure(f"mypyc is not installed ({error})")
    paths = [(staged / NAMESPACE / path).as_posix() for path in COMPILED]
    try:
        # No mypy cache: a build has no use for one, and must not write into .mypy_cache.
        extensions = mypycify(["--cache-dir", os.devnull, *paths], opt_level="3",
                              group_name=GROUP)
    except (Exception, SystemExit) as error:  # SystemExit: mypyc's type errors, printed above
        return _pure(f"mypyc failed ({error!r})")
    return {"ext_modules": extensions, "cmdclass": {"build_ext": BuildCompiled}}


def _options() -> dict[str, Any]:
    # Command names are identifiers; the values of their options (paths) are not.
    commands = {argument for argument in sys.argv[1:] if argument.isidentifier()}
    if commands & EDITABLE_COMMANDS:
        _pure("editable install")
        return {**_source_layout(), **_scripts(""),
                "cmdclass": {"editable_wheel": EditableWheel}}
    if "sdist" in commands:
        # The sources as they are: a build from the sdist stages them.
        return {**_source_layout(), **_scripts(f"{NAMESPACE}.")}
    options = {**_installed_layout(), **_scripts(f"{NAMESPACE}.")}
    if commands <= METADATA_COMMANDS:
        return options
    compiled = _compiled(Path(options["package_dir"][""]))
    cmdclass = {"build_py": FreshBuildPy, **compiled.pop("cmdclass", {})}
    return {**options, **compiled, "cmdclass": cmdclass}


setup(**_options())
