"""The ``kgents`` command line (typer)."""
