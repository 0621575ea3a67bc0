"""Layers only call downward: walk every module's imports and fail on an upward reach.

api/, cli/                      (top: HTTP and command line)
client/                         (beside the top: speaks HTTP only, imports no server part)
observability/                  (beside the top: metrics and logs, wired in by api/ and cli/)
platform.py                     (composition root)
tenancy/, sessions/, metering/  (services: no web, NATS or database driver imports)
store/, streaming/, llm/, sinks/  (adapters: never import api/, cli/ or platform)
flux/                           (pure code)
config, errors, records, clock, ids, data_dir, redaction   (leaves)
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "kgents"
LEAVES = {"config", "errors", "records", "clock", "ids", "data_dir", "redaction"}
SERVICES = {"tenancy", "sessions", "metering"}
ADAPTERS = {"store", "streaming", "llm", "sinks"}
TOP = {"api", "cli", "platform", "workers"}
# Used by the top only: nothing below may import them.
CLIENT = {"client"}
OBSERVABILITY = {"observability"}
BESIDE_TOP = CLIENT | OBSERVABILITY
# The provider interface lives beside its adapters (STYLE.md) but is a port services may use.
INTERFACES = {"kgents.llm.base"}
DRIVERS = {
    "fastapi",
    "starlette",
    "nats",
    "sqlalchemy",
    "asyncpg",
    "aiosqlite",
    "uvicorn",
    "alembic",
    "prometheus_client",
    "sqlite3",
}
# Driver errors are translated in store/ (STYLE.md): the faces never see a database library.
DATABASE_LIBRARIES = {"sqlalchemy", "asyncpg", "aiosqlite", "sqlite3", "alembic"}

FORBIDDEN: dict[str, set[str]] = {
    **{leaf: SERVICES | ADAPTERS | TOP | BESIDE_TOP | {"flux"} for leaf in LEAVES},
    "flux": SERVICES | ADAPTERS | TOP | BESIDE_TOP | LEAVES,
    **dict.fromkeys(SERVICES, ADAPTERS | TOP | BESIDE_TOP | DRIVERS),
    **dict.fromkeys(ADAPTERS, TOP | BESIDE_TOP),
    "client": SERVICES | ADAPTERS | TOP | OBSERVABILITY | DRIVERS | {"flux"},
    "observability": ADAPTERS | TOP | CLIENT,
    "api": DATABASE_LIBRARIES,
    "cli": DATABASE_LIBRARIES,
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def layer_of(name: str) -> str | None:
    """The layer an imported module belongs to (first package under kgents, or a driver)."""
    parts = name.split(".")
    if parts[0] == "kgents" and len(parts) > 1:
        return parts[1]
    return parts[0] if parts[0] in DRIVERS else None


def modules() -> list[Path]:
    return sorted(path for path in SRC.rglob("*.py") if "migrations" not in path.parts)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_module_only_imports_downward(path: Path) -> None:
    relative = path.relative_to(SRC)
    own_layer = relative.parts[0].removesuffix(".py")
    forbidden = FORBIDDEN.get(own_layer, set())
    reaching_up = sorted(
        name
        for name in imported_modules(path)
        if name not in INTERFACES
        and (layer := layer_of(name)) is not None
        and layer in forbidden
        and layer != own_layer
    )
    assert not reaching_up, f"{relative} imports {reaching_up} from a layer above it"
