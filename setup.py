"""The optional compiled hot path; everything else about the package is in pyproject.toml.

The modules named in ``leadscore/accel.py`` (``COMPILED``) are compiled with Cython in
pure-Python mode from their own ``.py`` (types from the ``.pxd`` beside each) into
``<package>/_compiled/``. Without Cython or a C compiler the build goes on without them and
leadscore runs as plain Python (``leadscore run`` then says so once). ``LEADSCORE_ENGINE=python``
skips compiling altogether.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "leadscore"))
from accel import COMPILED, COMPILED_DIR, SOURCES, source_hashes  # noqa: E402  # the one list, without importing the package

sys.path.pop(0)

DIRECTIVES = {
    "language_level": 3,
    "annotation_typing": False,  # types come from the .pxd files only: the .py stays Python's
    "binding": True,  # functions keep their signatures and docstrings (inspect, typer, help)
    "embedsignature": True,
}
# No fused multiply-add or other reassociation: the same float bits as the interpreter.
CFLAGS = ["-O2", "-ffp-contract=off", "-fno-strict-aliasing"]
# Taken when the compiler does (a probe compile; gcc and clang on ELF do): calls into
# libpython through the GOT instead of a PLT stub, 5,473 call sites in engine.so. Measured
# profile-guided on 1M events: -73 instructions an event (-0.35%), +1.3M once at load (its
# symbols bound then); bench/README.md, `glue5` and `pgo6`.
OPTIONAL_CFLAGS = ["-fno-plt"]
# More flags for a measurement (bench/README.md, `pgo`): appended, so they win.
CFLAGS_ENV = "LEADSCORE_CFLAGS"
# Profile-guided build (the Makefile's `compiled` rule): "generate" builds modules that count
# what runs into PGO_DIR, "use" builds from those counts; anything else, a plain build.
PGO_ENV = "LEADSCORE_PGO"
PGO_DIR = ROOT / "build" / "pgo" / "profile"


def pgo_flags() -> tuple[list[str], list[str]]:
    """(compile, link) flags for the profile-guided step named by LEADSCORE_PGO."""
    step = os.environ.get(PGO_ENV, "").strip().lower()
    if step == "generate":
        flags = [f"-fprofile-generate={PGO_DIR}", "-fprofile-update=atomic"]
        return flags, flags
    if step == "use":
        # Code the training run never reached stays optimized as without a profile (partial
        # training), not for size; a module it never loaded has no profile, and says nothing.
        flags = [f"-fprofile-use={PGO_DIR}", "-fprofile-partial-training", "-Wno-missing-profile"]
        return flags, []
    return [], []


class OptionalBuildExt(build_ext):
    """Build the compiled modules when possible; otherwise warn and leave pure Python."""

    def get_ext_filename(self, fullname: str) -> str:
        # leadscore.engine -> leadscore/_compiled/engine.<suffix>: found first only when the
        # package chooses it (leadscore/accel.py), so the .py beside it stays importable.
        path = Path(super().get_ext_filename(fullname))
        return str(path.parent / COMPILED_DIR / path.name)

    def copy_extensions_to_source(self) -> None:
        # `--inplace` and editable installs: to the same _compiled/ path in the source tree.
        for ext in self.extensions:
            filename = self.get_ext_filename(self.get_ext_fullname(ext.name))
            built = Path(self.build_lib) / filename
            if built.is_file():
                (ROOT / filename).parent.mkdir(exist_ok=True)
                self.copy_file(str(built), str(ROOT / filename), level=self.verbose)
        self._record_sources(ROOT)

    def _record_sources(self, into: Path) -> None:
        """What the modules were built from (leadscore/accel.py loads them only if it matches)."""
        for package in dict.fromkeys(p for p, _ in COMPILED):
            target = into / package / COMPILED_DIR
            if target.is_dir():
                hashes = source_hashes(ROOT / package)
                (target / SOURCES).write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, no headers: fall back to pure Python
            self._skip(exc)
            return
        self._record_sources(Path(self.build_lib))

    def build_extension(self, ext: object) -> None:
        try:
            super().build_extension(ext)  # type: ignore[arg-type]
        except Exception as exc:
            self._skip(exc)

    def build_extensions(self) -> None:
        self._add_optional_flags()
        self._check_pgo()
        super().build_extensions()

    def _add_optional_flags(self) -> None:
        """Add the OPTIONAL_CFLAGS this compiler takes (before ``LEADSCORE_CFLAGS``: those win)."""
        with tempfile.TemporaryDirectory() as tmp:
            probe = Path(tmp) / "probe.c"
            probe.write_text("int probe(void) { return 0; }\n")
            taken = []
            for flag in OPTIONAL_CFLAGS:
                try:
                    self.compiler.compile([str(probe)], output_dir=tmp, extra_postargs=[flag])
                except Exception:
                    continue
                taken.append(flag)
        for ext in self.extensions:  # after CFLAGS, which begin every module's (shared) list
            rest = ext.extra_compile_args[len(CFLAGS) :]
            ext.extra_compile_args = [*CFLAGS, *taken, *rest]

    def _check_pgo(self) -> None:
        """Drop the profile flags (with one warning) unless this compiler is a gcc taking them."""
        flags, link = pgo_flags()
        if not flags:
            return
        with tempfile.TemporaryDirectory() as tmp:
            probe = Path(tmp) / "probe.c"
            # gcc's flags and profile format: clang takes some of them and means other things
            probe.write_text(
                "#if !defined(__GNUC__) || defined(__clang__)\n#error not gcc\n#endif\n"
                "int probe(void) { return 0; }\n"
            )
            try:
                self.compiler.compile([str(probe)], output_dir=tmp, extra_postargs=flags)
            except Exception as exc:
                print(
                    f"warning: {PGO_ENV}: this C compiler does not take {' '.join(flags)} "
                    f"({exc}); building without a profile",
                    file=sys.stderr,
                )
                for ext in self.extensions:
                    ext.extra_compile_args = [a for a in ext.extra_compile_args if a not in flags]
                    ext.extra_link_args = [a for a in ext.extra_link_args if a not in link]

    skipped = False

    def _skip(self, exc: BaseException) -> None:
        if OptionalBuildExt.skipped:  # one warning per build, not one per module
            return
        OptionalBuildExt.skipped = True
        print(
            f"warning: leadscore's compiled engine was not built ({exc}); leadscore will run "
            "as plain Python, slower. Install a C compiler and the Python headers (e.g. "
            "`apt-get install gcc python3-dev`) and reinstall to build it.",
            file=sys.stderr,
        )


def extensions() -> list[object]:
    if os.environ.get("LEADSCORE_ENGINE", "").strip().lower() == "python":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("warning: Cython is not installed; leadscore builds as plain Python", file=sys.stderr)
        return []
    from setuptools import Extension

    pgo, pgo_link = pgo_flags()
    cflags = CFLAGS + os.environ.get(CFLAGS_ENV, "").split() + pgo
    modules = [
        Extension(
            f"{package}.{module}",
            [f"{package}/{module}.py"],
            extra_compile_args=cflags,
            extra_link_args=pgo_link,
        )
        for package, module in COMPILED
    ]
    return cythonize(modules, compiler_directives=DIRECTIVES, quiet=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
