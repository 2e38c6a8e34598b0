"""Which engine runs: the compiled hot path (Cython, built from the same .py files) or Python.

The hot-path modules (``COMPILED``) are plain Python. ``setup.py`` can compile them with
Cython in pure-Python mode (types come from the ``.pxd`` beside each ``.py``) into a
``_compiled/`` directory inside their package. A package puts that directory first on its
``__path__`` (``leadscore/__init__.py``, ``flows/__init__.py``) when the compiled modules are
wanted, present and built from the current sources, so ``import leadscore.engine`` loads the
extension; otherwise the ``.py`` loads, as it always did. Outputs are the same either way
(``tests/test_compiled.py`` checks them byte for byte).

``LEADSCORE_ENGINE`` chooses:

- ``auto`` (default): compiled when built and current, else Python, and ``leadscore run``
  says so once (:func:`notice`);
- ``python``: always Python, silently (what tests use to compare the two);
- ``compiled``: compiled or an ImportError that says how to build it (``make test`` and CI
  use it, so a build that silently fell back cannot pass for a compiled one).

The choice is made once per process, for every compiled module together: one compiled module
may depend on another's C types.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

# (package, module) pairs compiled by setup.py; each has a .pxd beside its .py.
COMPILED = (
    ("leadscore", "events"),
    ("leadscore", "typed"),
    ("leadscore", "matchers"),
    ("leadscore", "rules"),
    ("leadscore", "engine"),
    ("leadscore", "records"),
    ("flows", "shards"),
    ("flows", "parse"),
    ("flows", "redis_flow"),
    ("leadscore", "readmodel"),
    ("state", "codec"),
    ("state", "resp"),
)
COMPILED_DIR = "_compiled"
SOURCES = "sources.json"  # beside the built modules: the sha256 of the sources they came from
ENV = "LEADSCORE_ENGINE"
MODES = ("auto", "python", "compiled")
BUILD_HINT = (
    "build it with `make` (or `pip install .` with a C compiler and the Python headers, "
    "e.g. `apt-get install gcc python3-dev`)"
)

_ROOT = Path(__file__).resolve().parent.parent
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by Python code, not a C type
_decision: tuple[bool, str] | None = None


def mode() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ImportError(f"{ENV}={value!r} is not one of {', '.join(MODES)}")
    return value


def _extension(package_dir: Path, module: str) -> Path | None:
    for suffix in EXTENSION_SUFFIXES:
        candidate = package_dir / COMPILED_DIR / f"{module}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def source_hashes(package_dir: Path) -> dict[str, str]:
    """sha256 of each compiled module's .py and .pxd in ``package_dir`` (what a build records)."""
    hashes = {}
    for package, module in COMPILED:
        if package != package_dir.name:
            continue
        for name in (f"{module}.py", f"{module}.pxd"):
            source = package_dir / name
            if source.is_file():
                hashes[name] = hashlib.sha256(source.read_bytes()).hexdigest()
    return hashes


def _check() -> tuple[bool, str]:
    """(usable, why not): every compiled module present and built from the sources beside it.

    Contents, not times, decide: a checkout or rebase rewrites files without changing them.
    """
    for package in dict.fromkeys(p for p, _ in COMPILED):
        package_dir = _ROOT / package
        if any(_extension(package_dir, m) is None for p, m in COMPILED if p == package):
            return False, "not built"
        try:
            built = json.loads((package_dir / COMPILED_DIR / SOURCES).read_text())
        except (OSError, ValueError):
            return False, "not built"
        for name, digest in source_hashes(package_dir).items():
            if built.get(name) != digest:
                return False, f"out of date ({package}/{name} changed since it was built)"
    return True, ""


def decide() -> tuple[bool, str]:
    """Whether the compiled modules load in this process, and why not (once per process)."""
    global _decision
    if _decision is None:
        wanted = mode()
        if wanted == "python":
            _decision = (False, f"{ENV}=python")
        else:
            usable, why = _check()
            if not usable and wanted == "compiled":
                raise ImportError(f"{ENV}=compiled but the compiled engine is {why}: {BUILD_HINT}")
            _decision = (usable, why)
    return _decision


def compiled_path(package_file: str) -> list[str]:
    """What a package puts first on its ``__path__``: its compiled directory, or nothing."""
    package_dir = Path(package_file).resolve().parent
    if not decide()[0] or not any(package_dir.name == p for p, _ in COMPILED):
        return []
    return [str(package_dir / COMPILED_DIR)]


def is_compiled() -> bool:
    """Whether the hot path running in this process is the compiled one (imports it)."""
    import importlib

    return all(
        Path(importlib.import_module(f"{p}.{m}").__file__ or "").suffix in (".so", ".pyd")
        for p, m in COMPILED
    )


_noticed = False


def notice() -> str | None:
    """The one line to print at startup when scoring runs interpreted by default, else None.

    Once per process, and never when ``LEADSCORE_ENGINE=python`` asked for Python.
    """
    global _noticed
    if _noticed or mode() != "auto":
        return None
    usable, why = decide()
    if usable:
        return None
    _noticed = True
    return (
        f"leadscore: the compiled engine is {why}, so scoring runs as plain Python (about "
        f"2x slower); {BUILD_HINT}, or set {ENV}=python to silence this"
    )


def is_c_type(cls: type) -> bool:
    """Whether ``cls`` is a C type (its module runs compiled) rather than a Python class."""
    return not cls.__flags__ & _HEAPTYPE


def restore_slots(namespace: dict[str, Any], *classes: type) -> None:
    """Give dataclasses of a compiled module their ``slots=True`` back when they run as Python.

    Compiled, these classes are C types (declared in the module's .pxd), and Cython refuses
    ``slots=True`` on those, so the .py writes plain ``@dataclass``. Interpreted, this rebinds
    each name in ``namespace`` (the module's globals) to the same dataclass with slots, as it
    was before there was a compiled engine: no ``__dict__`` per effect or rule.
    """
    for cls in classes:
        if cls.__flags__ & _HEAPTYPE:
            namespace[cls.__name__] = dataclass(slots=True)(cls)
