"""``python -m compress``: the CLI, also for launchers (``accelerate launch -m compress apply``)."""

from compress.cli import main

main()
