"""``python -m compress``: the CLI, also for launchers (``accelerate launch -m compress apply``)."""

from compress.cli.app import main

main()
