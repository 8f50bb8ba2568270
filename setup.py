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
"""

from __future__ import annotations

import os
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import BaseError, CCompilerError

# The replay's hot path (pipeline, the venues' decoders, engine) and the riskmon modules
# whose classes it uses, compiled as one group so that calls and attribute access among
# them are native.
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


def _options() -> dict[str, Any]:
    # Command names are identifiers; the values of their options (paths) are not.
    commands = {argument for argument in sys.argv[1:] if argument.isidentifier()}
    if commands & EDITABLE_COMMANDS:
        return _pure("editable install")
    if commands <= METADATA_COMMANDS:
        return {}
    if _flag("RISKMON_PURE_PYTHON"):
        return _pure("RISKMON_PURE_PYTHON is set")
    problem = _compiler_problem()
    if problem is not None:
        return _pure(problem)
    try:
        from mypyc.build import mypycify
    except ImportError as error:
        return _pure(f"mypyc is not installed ({error})")
    try:
        # No mypy cache: a build has no use for one, and must not write into .mypy_cache.
        extensions = mypycify(["--cache-dir", os.devnull, *COMPILED], opt_level="3",
                              group_name=GROUP)
    except (Exception, SystemExit) as error:  # SystemExit: mypyc's type errors, printed above
        return _pure(f"mypyc failed ({error!r})")
    return {"ext_modules": extensions, "cmdclass": {"build_ext": BuildCompiled}}


setup(**_options())
