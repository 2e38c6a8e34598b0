"""The ``leadscore`` command line. ``app.py`` builds the typer app and says how to add a
command; a command's module (named in ``COMMANDS``) is imported when that command runs."""

from leadscore.cli.app import app, main

__all__ = ["app", "main"]
