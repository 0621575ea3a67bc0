"""Statements compiled once and sent at driver level, for the write hot paths (the usage outbox
and the meter store's ingest).

At batches of hundreds of rows, SQLAlchemy's per-row statement processing (bind processors
looked up per row, ``insertmanyvalues`` batching, ORM state) costs more than the database's
own work. These helpers keep SQLAlchemy's column types in charge of the values (so rows read
back through Core and the ORM exactly as if SQLAlchemy had written them) and send plain
parameter tuples.
"""

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Dialect

ROWS_PER_INSERT = 1000
"""Rows per multi-row INSERT: at most 8 columns gives 8,000 parameters, under both backends'
limits (SQLite 32,766, PostgreSQL 32,767)."""


def bind_processor(type_: Any, dialect: Dialect) -> Callable[[Any], Any]:
    """What SQLAlchemy does to a value of column type ``type_`` before handing it over."""
    processor = type_.dialect_impl(dialect).bind_processor(dialect)
    return processor if processor is not None else (lambda value: value)


def compiled(statement: Any, dialect: Dialect, fields: Sequence[str]) -> str:
    """SQL text of a statement whose positional parameters are ``fields``, in that order."""
    text = statement.compile(dialect=dialect)
    if list(text.positiontup or ()) != list(fields):
        raise RuntimeError(f"unexpected parameter order {text.positiontup} != {fields}")
    return str(text.string)


class MultiRowInsert:
    """``INSERT INTO <table> (<every column>) VALUES (...), (...) <suffix>``, one text per row
    count (cached); parameters are the rows' values flattened in table column order."""

    def __init__(self, table: Table, dialect: Dialect, *, suffix: str = "") -> None:
        self._table = table.name
        self._columns = [column.name for column in table.columns]
        self._numbered = dialect.paramstyle in ("numeric", "numeric_dollar")
        self._suffix = suffix
        self._texts: dict[int, str] = {}

    @property
    def width(self) -> int:
        return len(self._columns)

    def sql(self, rows: int) -> str:
        text = self._texts.get(rows)
        if text is None:
            width = self.width
            if self._numbered:
                groups = (
                    "(" + ", ".join(f"${row * width + col + 1}" for col in range(width)) + ")"
                    for row in range(rows)
                )
            else:
                groups = ("(" + ", ".join("?" * width) + ")" for _ in range(rows))
            # Only the table's own names and placeholders go into the text; values are
            # parameters.
            head = f"INSERT INTO {self._table} ({', '.join(self._columns)}) VALUES "  # noqa: S608
            text = self._texts[rows] = head + ", ".join(groups) + self._suffix
        return text
