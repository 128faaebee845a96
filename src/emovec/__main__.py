"""``python -m emovec``: the same as the ``emovec`` command."""

from emovec.apps.cli import main

main()
