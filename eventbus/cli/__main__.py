"""``python -m eventbus.cli``: the ``eventbus`` command."""

from eventbus.cli.main import main

main()
