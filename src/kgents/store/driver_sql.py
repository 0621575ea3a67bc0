"""Statements compiled once and sent at driver level, for the write hot paths (the usage outbox,
the meter store's ingest, a turn's start and end).

At batches of hundreds of rows, SQLAlchemy's per-row statement processing (bind processors
looked up per row, ``insertmanyvalues`` batching, ORM state) costs more than the database's
own work. These helpers keep SQLAlchemy's column types in charge of the values (so rows read
back through Core and the ORM exactly as if SQLAlchemy had written them) and send plain
parameter tuples.
"""

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, cast

from sqlalchemy import Table, bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError

from kgents.store.unavailable import driver_error

ROWS_PER_INSERT = 1000
"""Rows per multi-row INSERT: at most 8 columns gives 8,000 parameters, under both backends'
limits (SQLite 32,766, PostgreSQL 32,767)."""


def bind_processor(type_: Any, dialect: Dialect) -> Callable[[Any], Any]:
    """What SQLAlchemy does to a value of column type ``type_`` before handing it over."""
    processor = type_.dialect_impl(dialect).bind_processor(dialect)
    return processor if processor is not None else (lambda value: value)


def result_processor(type_: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    """What SQLAlchemy does to a value of column type ``type_`` that the driver returned."""
    processor = type_.dialect_impl(dialect).result_processor(dialect, None)
    return cast(Callable[[Any], Any] | None, processor)


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


class DriverStatement:
    """A Core statement compiled once for one dialect and sent at driver level (``send``).

    Its parameters are the statement's ``bindparam`` names, given positionally in ``fields``
    order and converted by their column types' bind processors; values fixed in the statement
    (``count + 1``) are bound once here. Rows come back converted by the result columns' types
    (aware UTC datetimes, booleans), as Core would return them."""

    def __init__(self, statement: Any, dialect: Dialect, fields: Sequence[str]) -> None:
        text = statement.compile(dialect=dialect)
        binds = {name: bind for bind, name in text.bind_names.items()}
        given = [name for name in text.positiontup or () if binds[name].required]
        if given != list(fields):
            raise RuntimeError(f"unexpected parameter order {given} != {list(fields)}")
        self.sql = str(text.string)
        # Per position: the index of its value in ``fields`` and the processor, or a constant.
        self._slots: list[tuple[int | None, Callable[[Any], Any], Any]] = []
        for name in text.positiontup or ():
            bind = binds[name]
            process = bind_processor(bind.type, dialect)
            if bind.required:
                self._slots.append((fields.index(name), process, None))
            else:
                self._slots.append((None, process, process(bind.effective_value)))
        self._results = [
            result_processor(column.type, dialect) for column in statement.exported_columns
        ]

    def params(self, *values: Any) -> tuple[Any, ...]:
        return tuple(
            constant if index is None else process(values[index])
            for index, process, constant in self._slots
        )

    def rows(self, connection: Connection, *values: Any) -> list[tuple[Any, ...]]:
        """Execute with ``values`` (in ``fields`` order); the result rows, converted."""
        processors = self._results
        return [
            tuple(
                value if process is None else process(value)
                for process, value in zip(processors, row, strict=True)
            )
            for row in send(connection, self.sql, self.params(*values))
        ]

    def execute(self, connection: Connection, *values: Any) -> None:
        """Execute with ``values`` (in ``fields`` order), ignoring any rows."""
        send(connection, self.sql, self.params(*values))


def send(connection: Connection, sql: str, params: tuple[Any, ...]) -> Sequence[Sequence[Any]]:
    """Execute ``sql`` in ``connection``'s transaction; the rows it returns.

    On a ``sqlite3`` connection (the SQLite writer's thread) the statement goes straight to
    the driver: SQLAlchemy's execution context and result around each one cost more CPU than
    SQLite's own work, on a thread that holds the event loop's GIL meanwhile. A driver error
    is raised as the engine would raise it (``unavailable.driver_error``)."""
    driver = connection.connection.dbapi_connection
    if isinstance(driver, sqlite3.Connection):
        try:
            return driver.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise driver_error(DBAPIError.instance(sql, params, exc, sqlite3.Error)) from exc
    result = connection.exec_driver_sql(sql, params)
    return result.fetchall() if result.returns_rows else ()


class RowInsert:
    """``INSERT`` of one row of ``table`` (and ``suffix``), its values given by column name."""

    def __init__(
        self, table: Table, dialect: Dialect, suffix: Callable[[Any], Any] | None = None
    ) -> None:
        insert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
        self._columns = [column.name for column in table.columns]
        fields = [f"new_{name}" for name in self._columns]
        statement = insert(table).values(
            {name: bindparam(field) for name, field in zip(self._columns, fields, strict=True)}
        )
        if suffix is not None:
            statement = suffix(statement)
        self._statement = DriverStatement(statement, dialect, fields)

    def rows(self, connection: Connection, **row: Any) -> list[tuple[Any, ...]]:
        """Insert ``row``; what the statement returns."""
        return self._statement.rows(connection, *(row[name] for name in self._columns))

    def execute(self, connection: Connection, **row: Any) -> None:
        self._statement.execute(connection, *(row[name] for name in self._columns))
