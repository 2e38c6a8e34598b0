"""`leadscore check` on channels: load errors fail, deployment gaps warn."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RULES = """version: 1
channels:
  sales: {webhook: "http://crm.internal/h", secret_env: LS_TEST_SALES_SECRET}
triggers: [{id: t, at_least: 1, actions: [{notify: sales}]}]
"""


def check(path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LS_TEST_")}
    return subprocess.run(
        [sys.executable, "-m", "leadscore.cli", "check", str(path), *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def test_check_warns_about_what_deliver_would_refuse(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    done = check(path)
    assert done.returncode == 0, done.stderr
    assert "warning: channels.sales: $LS_TEST_SALES_SECRET is not set" in done.stderr
    assert "--allow-http crm.internal" in done.stderr
    quiet = check(path, "--allow-http", "crm.internal", LS_TEST_SALES_SECRET="s3cret")
    assert quiet.returncode == 0 and "warning" not in quiet.stderr
    assert "s3cret" not in quiet.stdout + quiet.stderr


def test_check_fails_on_an_unknown_channel(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES.replace("{notify: sales}", "{notify: slaes}"))
    done = check(path)
    assert done.returncode == 1
    assert (
        "field 'actions[0].notify': unknown channel 'slaes'; did you mean 'sales'? "
        "channels are ['sales']" in done.stderr
    )
