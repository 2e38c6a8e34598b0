"""Run the `leadscore` command as a user would, including on a real terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

_SCRIPT = Path(sys.executable).parent / "leadscore"
LEADSCORE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "leadscore.cli"]


def run_with_terminal_stderr(
    args: list[str], timeout: float
) -> tuple[subprocess.CompletedProcess[bytes], bytes]:
    """Run `leadscore ARGS` with stderr on a pseudo-terminal, where progress bars appear.

    Returns the finished process (stdout captured) and everything written to the terminal.
    """
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [*LEADSCORE, *args],
            stdout=subprocess.PIPE,
            stderr=follower,
            timeout=timeout,
            check=False,
        )
        os.close(follower)
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO once the terminal has no writer left
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(leader)
    return done, seen
