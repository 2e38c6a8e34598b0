"""`leadscore run` imports what it uses, and every command stays reachable.

A command's module is imported only when that command runs (``leadscore/cli/app.py``,
``_Commands``). Before, every process read all fifteen command modules and what they import
at the top (``leadscore.explain``, rich's progress bars, ...) and typer read every command's
parameters: ~370 million instructions of a `leadscore run`'s ~2.2 billion of start-up
(bench/README.md, `pgo6`), paid again by every run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from typer.main import get_command_name

from leadscore.cli import app
from leadscore.cli.app import COMMANDS

ROOT = Path(__file__).resolve().parent.parent

# What `leadscore run --events ... --no-progress` has no use for.
NOT_FOR_RUN = (
    *(f"leadscore.cli.{module}" for module in COMMANDS if module != "run"),
    "leadscore.explain",
    "leadscore.calibration",
    "leadscore.publish",
    "leadscore.service",
    "rich.progress",
    "starlette",
    "uvicorn",
    "httpx",
    "plotly",
    "sklearn",
    "jinja2",
    "matplotlib",
    "redis",
)

_RUN_AND_LIST = """
import json, sys
from leadscore.cli import app
sys.argv = ["leadscore", *sys.argv[1:]]
try:
    app()
except SystemExit as end:
    assert not end.code, end.code
print(json.dumps(sorted(sys.modules)))
"""


def _leadscore(tmp_path: Path, *args: str) -> tuple[str, set[str]]:
    """What a `leadscore` process with these arguments printed, and the modules it loaded."""
    done = subprocess.run(
        [sys.executable, "-c", _RUN_AND_LIST, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
    )
    printed, _, modules = done.stdout.rstrip("\n").rpartition("\n")
    return printed, set(json.loads(modules))


def test_run_on_files_imports_no_other_command_and_nothing_heavy(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(
        '{"contact":"c-1","action":"page.hit","ts":"2026-06-01T00:00:00Z","id":"e-1",'
        '"props":{"url":"https://x.example/pricing"}}\n'
    )
    rules = str(ROOT / "examples" / "rules.yaml")
    _, loaded = _leadscore(
        tmp_path, "run", "--rules", rules, "--events", str(events), "--out", "out",
        "--no-progress",
    )  # fmt: skip
    assert (tmp_path / "out" / "contacts.jsonl").read_text().count("\n") == 1  # it did run
    assert {"leadscore.cli.run", "flows.runner", "bytewax.dataflow"} <= loaded
    heavy = sorted(m for m in loaded if m in NOT_FOR_RUN or m.split(".")[0] in NOT_FOR_RUN)
    assert heavy == []


def test_help_lists_every_command_in_the_declared_order(tmp_path: Path) -> None:
    printed, loaded = _leadscore(tmp_path, "--help")
    assert {f"leadscore.cli.{module}" for module in COMMANDS} <= loaded
    listed = re.findall(r"^\W*([a-z]+)\s{2,}\S", printed.split("Commands")[1], re.MULTILINE)
    assert listed == [name for names in COMMANDS.values() for name in names]


def test_every_command_module_registers_the_commands_declared_for_it() -> None:
    """A module's commands missing from COMMANDS would be unreachable by name."""
    from importlib import import_module

    for module, names in COMMANDS.items():
        before = len(app.registered_commands)
        import_module(f"leadscore.cli.{module}")
        added = app.registered_commands[before:]
        registered = {c.name or get_command_name(c.callback.__name__) for c in added}  # type: ignore[union-attr]
        if added:  # a module imported earlier in this process registered at that time
            assert registered == set(names), module
    every = {c.name or get_command_name(c.callback.__name__) for c in app.registered_commands}  # type: ignore[union-attr]
    assert every == {name for names in COMMANDS.values() for name in names}
