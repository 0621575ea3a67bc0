"""The repository stands alone: no code under src/, tests/ or bench/ reads a path outside it.

A fresh clone must build and pass with nothing beside it. Three ways code could reach out are
looked for: a string that is a filesystem path going up (``..``) or starting at the root or at
a home directory, a path computed from ``__file__`` that climbs above the repository, and a call
that starts at the home directory. Python files are read through their syntax tree (docstrings
are prose, not paths); shell scripts line by line. Markdown, the console's browser JavaScript
and data files cannot read anything and are not scanned.
"""

import ast
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

THIS_FILE = Path(__file__).resolve()  # its examples of ways out are data, not reads
ROOT = THIS_FILE.parents[1]
SCANNED = ("src", "tests", "bench")

# Top-level directories of a Unix filesystem (FHS and the usual mount points): an absolute
# path under one of them is a filesystem path. HTTP paths ("/v1/...", "/api/...", "/health")
# are not under any of them.
ROOT_DIRS = (
    "bin boot data dev etc home lib lib64 media mnt nix opt private proc root run sbin shared "
    "srv sys tmp Users usr var Volumes work workspace"
).split()
ABSOLUTE = re.compile(rf"(?<![\w.:/])/(?:{'|'.join(ROOT_DIRS)})(?:/|\b)")
UP = re.compile(r"(?:^|[/\\\s\"'`(=])\.\.(?:[/\\]|$)|^\.\.$")
HOME = re.compile(r"(?:^|[\s\"'`(=])~/")

# The kernel's view of this machine (not files beside the checkout), and the Debian Chromium
# that `make test` installs for the console's end-to-end tests.
SYSTEM = ("/proc/", "/proc", "/sys/", "/dev/null", "/usr/bin/chromium")

# Strings that look like paths outside the repository but are never opened.
# Each entry: (file, the exact string): why it is not a read.
NOT_READS = {
    ("src/kgents/metering/jsonpath.py", ".."): "JSONPath's recursive descent, refused",
    ("tests/metering/test_query_semantics.py", "../etc/passwd"): "a hostile windowTimeZone",
    ("tests/streaming/test_subjects.py", ".."): "a subject token the validator must refuse",
    ("bench/harness.py", "/lib/python3.11/"): "a marker cut from profiler frame paths",
    ("bench/harness.py", "/lib/python3"): "a marker cut from profiler frame paths",
}


def scanned_files(root: Path) -> Iterator[Path]:
    """The Python files and shell scripts under the scanned folders."""
    for top in SCANNED:
        for path in sorted((root / top).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts or path == THIS_FILE:
                continue
            if path.suffix in (".py", ".sh") or path.read_bytes().startswith(b"#!"):
                yield path


def outside_path(text: str) -> bool:
    """Whether ``text`` names a filesystem path outside the repository (and the system's)."""
    if text.startswith(SYSTEM):
        return False
    return bool(UP.search(text) or ABSOLUTE.search(text) or HOME.search(text))


def docstrings(tree: ast.AST) -> set[int]:
    """The ids of the string nodes that are docstrings."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
        # attribute docstrings: a string statement right after an assignment
        for field in ("body", "orelse"):
            statements = getattr(node, field, None)
            if isinstance(statements, list):
                for before, after in zip(statements, statements[1:], strict=False):
                    if (
                        isinstance(before, ast.Assign | ast.AnnAssign)
                        and isinstance(after, ast.Expr)
                        and isinstance(after.value, ast.Constant)
                    ):
                        found.add(id(after.value))
    return found


def file_anchor_depth(node: ast.expr) -> int | None:
    """How many directories above the file's own directory a ``__file__``-based path
    expression climbs (``Path(__file__).parent`` is 0), or None when it is not one."""
    levels = 0
    while True:
        if isinstance(node, ast.Attribute) and node.attr == "parent":
            levels += 1
            node = node.value
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "parents"
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, int)
        ):
            levels += node.slice.value + 1
            node = node.value.value
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("resolve", "absolute")
        ):
            node = node.func.value
        elif isinstance(node, ast.Call) and _is_dirname(node.func) and node.args:
            levels += 1
            node = node.args[0]
        elif isinstance(node, ast.Call) and node.args and _is_path_of_file(node):
            return levels - 1
        elif isinstance(node, ast.Name) and node.id == "__file__":
            return levels - 1
        else:
            return None


def _is_dirname(func: ast.expr) -> bool:
    """``os.path.dirname`` or a bare ``dirname``."""
    return (isinstance(func, ast.Attribute) and func.attr == "dirname") or (
        isinstance(func, ast.Name) and func.id == "dirname"
    )


def _is_path_of_file(call: ast.Call) -> bool:
    first = call.args[0]
    return (
        isinstance(call.func, ast.Name)
        and call.func.id in ("Path", "PurePath")
        and isinstance(first, ast.Name)
        and first.id == "__file__"
    )


def python_findings(path: Path, relative: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skip = docstrings(tree)
    depth_to_root = len(relative.parts) - 1  # directories between the file and the root
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in skip and outside_path(node.value):
                if (relative.as_posix(), node.value) not in NOT_READS:
                    yield node.lineno, repr(node.value)
        elif isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
            climbed = file_anchor_depth(node)
            if climbed is not None and climbed > depth_to_root:
                yield node.lineno, f"climbs {climbed} directories above {relative.parent}/"
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("home", "expanduser")
        ):
            yield node.lineno, f"{node.func.attr}() reaches outside the repository"


def text_findings(path: Path, relative: Path) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.startswith("#!") and outside_path(line):  # the interpreter is no read
            yield number, line.strip()


def findings(root: Path) -> list[str]:
    """``file:line: what`` for each way out of ``root`` found in its scanned files."""
    found = []
    for path in scanned_files(root):
        relative = path.relative_to(root)
        scan = python_findings if path.suffix == ".py" else text_findings
        found += [f"{relative}:{line}: {what}" for line, what in scan(path, relative)]
    return found


def test_no_file_reads_outside_the_repository() -> None:
    assert findings(ROOT) == []


@pytest.mark.parametrize(
    "source",
    [
        'SPEC = Path(__file__).resolve().parents[2].parent / "shared" / "x.yaml"',
        'SPEC = Path(__file__).parent.parent.parent.parent / "contracts" / "x.yaml"',
        "SPEC = dirname(dirname(dirname(os.path.dirname(__file__))))",
        'open("../elsewhere/contracts/openmeter.yaml")',
        'Path("/work/shared/DESIGN.md").read_text()',
        'Path("..") / "shared"',
        'Path.home() / ".config"',
        'open(f"{base}/../other")',
        'subprocess.run(["cat", "~/notes"])',
        'Path("/tmp/kgents-runtime").mkdir()',
    ],
)
def test_the_scan_finds_each_way_out(tmp_path: Path, source: str) -> None:
    """Each way out, placed in a file two levels below the root (like tests/x/test_y.py)."""
    (tmp_path / "tests" / "x").mkdir(parents=True)
    (tmp_path / "tests" / "x" / "test_y.py").write_text(f"import os\n{source}\n")
    assert len(findings(tmp_path)) == 1


def test_the_scan_reads_shell_scripts(tmp_path: Path) -> None:
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "run").write_text("#!/bin/sh\nexec python ../elsewhere/tool.py\n")
    assert findings(tmp_path) == ["bench/run:2: exec python ../elsewhere/tool.py"]


def test_the_scan_passes_paths_inside_the_repository(tmp_path: Path) -> None:
    (tmp_path / "tests" / "x").mkdir(parents=True)
    (tmp_path / "tests" / "x" / "test_y.py").write_text(
        '"""Reads ../docs in its docstring only."""\n'
        'SPEC = Path(__file__).resolve().parents[2] / "contracts" / "openmeter.yaml"\n'
        'URL = "/api/v1/meters"\n'
    )
    assert findings(tmp_path) == []


def test_no_ignored_file_is_tracked() -> None:
    """What .gitignore lists (build output such as ``src/kgents.egg-info``) is not in the
    repository, so ``make run`` leaves ``git status`` clean."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--ignored", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert tracked.stdout.splitlines() == []
