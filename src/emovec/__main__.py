"""``python -m emovec``: the same as the ``emovec`` command."""

from emovec.cli import main

main()
