"""``python -m emovec.apps.cli``: the same as the ``emovec`` command."""

from emovec.apps.cli import main

main()
