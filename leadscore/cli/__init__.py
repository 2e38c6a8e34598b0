"""The ``leadscore`` command line. ``app.py`` builds the typer app and says how to add a
command; importing this package registers every command module named in ``COMMANDS``."""

from importlib import import_module

from leadscore.cli.app import COMMANDS, app, main

for _name in COMMANDS:
    import_module(f"{__name__}.{_name}")

__all__ = ["app", "main"]
