"""The ``compress`` command: a thin typer shell (``app``) that parses, calls one library
function and maps errors to exit codes; ``output`` and ``render`` print what it returns."""
