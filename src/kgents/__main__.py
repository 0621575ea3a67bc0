"""``python -m kgents`` runs the command line."""

from kgents.cli.main import app

app()
