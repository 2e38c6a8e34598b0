"""``python -m leadscore.cli``: the same as the ``leadscore`` console script."""

from leadscore.cli import main

main()
