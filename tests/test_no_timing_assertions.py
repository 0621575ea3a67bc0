"""No test asserts how long something took: on a shared, noisy machine that fails for reasons
that have nothing to do with the code. Tests assert order and behaviour, wait for conditions
with a deadline (``tests/support/waiting.py``), and timing targets live in ``bench/``."""

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
CLOCKS = {"monotonic", "perf_counter", "time", "process_time"}
DURATION_NAMES = {"elapsed", "duration", "took", "spent"}


def is_duration(node: ast.expr) -> bool:
    """``clock() - start``, or a variable named for a duration."""
    if isinstance(node, ast.Name):
        return node.id in DURATION_NAMES
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub):
        return any(
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute | ast.Name)
            and getattr(call.func, "attr", getattr(call.func, "id", None)) in CLOCKS
            for call in ast.walk(node)
        )
    return False


def timing_assertions(source: str) -> Iterator[int]:
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assert):
            continue
        for compare in ast.walk(node.test):
            if isinstance(compare, ast.Compare) and any(
                is_duration(side) for side in (compare.left, *compare.comparators)
            ):
                yield node.lineno


def test_no_test_asserts_a_duration() -> None:
    found = [
        f"{path.relative_to(TESTS.parent)}:{line}"
        for path in sorted(TESTS.rglob("*.py"))
        for line in timing_assertions(path.read_text(encoding="utf-8"))
    ]
    assert found == []


@pytest.mark.parametrize(
    "source",
    [
        "assert time.monotonic() - started < 0.5",
        "assert elapsed < 2.0",
        "assert nothing == [] and elapsed < 4.0",
        "assert 1.0 > loop.time() - t0",
        "assert perf_counter() - t0 <= 0.1",
    ],
)
def test_the_check_finds_duration_assertions(source: str) -> None:
    assert list(timing_assertions(source)) == [1]


def test_the_check_passes_order_and_logs() -> None:
    source = (
        "assert fast.arrivals[-1] < slow.arrivals[1]\n"
        'logger.info("took %.1fs", time.monotonic() - started)\n'
    )
    assert list(timing_assertions(source)) == []
