"""The web console: static ES modules, CSS and an SVG icon, served by the API at ``/``.

No third-party front-end code: the page is plain HTML, ES modules and CSS in ``static/``,
shipped as package data so an installed wheel serves the same files as a checkout.
"""

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
INDEX_FILE = STATIC_DIR / "index.html"
