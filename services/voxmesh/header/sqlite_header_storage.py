"""The embedded header storage: one SQLite file, schema translated from config/spanner.ddl.

One connection, used by one worker thread, so units of work run one at a time; write units
start with BEGIN IMMEDIATE, which also serialises them against any other process or adapter
on the same file (busy_timeout waits for the lock). WAL journal: readers in other connections
are not blocked, and a committed transaction survives a crash of the process.

Commit timestamps: each write transaction takes max(now, last + 1 µs) from a one-row clock
table while it holds the write lock, so commit timestamps strictly increase in commit order,
as Spanner's do; a read snapshot's timestamp is the last one committed. That is what makes the
timeline cursor gap-free here too.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from voxmesh.core.domain_errors import Unavailable
from voxmesh.header.header_schema import Schema, header_schema
from voxmesh.header.header_storage import (
    Key,
    Params,
    ReadTxn,
    Row,
    WriteTxn,
    from_micros,
    is_commit_ts,
    to_micros,
)

R = TypeVar("R")

_CLOCK_TABLE = "HeaderStoreCommitClock"  # adapter-private; not part of the shared schema
_BUSY_TIMEOUT_MS = 10_000


class SqliteTxn:
    """ReadTxn and WriteTxn over the adapter's connection (inside its BEGIN ... COMMIT)."""

    def __init__(self, connection: sqlite3.Connection, schema: Schema, commit_micros: int) -> None:
        self._db = connection
        self._schema = schema
        self._commit_micros = commit_micros
        self._timestamps = schema.columns_of_type("TIMESTAMP")
        self._bools = schema.columns_of_type("BOOL")

    # -- values --------------------------------------------------------------------------

    def _to_db(self, value: Any) -> Any:
        if is_commit_ts(value):
            if self._commit_micros < 0:
                raise RuntimeError("COMMIT_TS used outside a write transaction")
            return self._commit_micros
        if isinstance(value, datetime):
            return to_micros(value)
        return value

    def _rows(self, cursor: sqlite3.Cursor) -> list[Row]:
        names = [d[0] for d in cursor.description or ()]
        converters = [
            (lambda v: None if v is None else from_micros(v))
            if name in self._timestamps
            else (lambda v: None if v is None else bool(v))
            if name in self._bools
            else None
            for name in names
        ]
        rows = []
        for raw in cursor.fetchall():
            rows.append(
                {
                    name: (convert(value) if convert else value)
                    for name, convert, value in zip(names, converters, raw, strict=True)
                }
            )
        return rows

    # -- reads ---------------------------------------------------------------------------

    def query(self, sql: str, params: Params | None = None) -> list[Row]:
        bound = {k: self._to_db(v) for k, v in (params or {}).items()}
        return self._rows(self._db.execute(sql, bound))

    def read(self, table: str, columns: Sequence[str], keys: Sequence[Key]) -> list[Row]:
        return self.read_prefixes(table, columns, [k for k in keys if k])

    def read_prefixes(
        self, table: str, columns: Sequence[str], prefixes: Sequence[Key]
    ) -> list[Row]:
        spec = self._schema.table(table)
        rows: dict[tuple[Any, ...], Row] = {}
        order = ", ".join(spec.primary_key)
        for prefix in prefixes:
            key_columns = spec.primary_key[: len(prefix)]
            where = " AND ".join(f"{c} = ?" for c in key_columns)
            cursor = self._db.execute(
                f"SELECT {', '.join(dict.fromkeys([*spec.primary_key, *columns]))} "
                f"FROM {table} WHERE {where} ORDER BY {order}",
                [self._to_db(v) for v in prefix],
            )
            for row in self._rows(cursor):
                rows[tuple(row[c] for c in spec.primary_key)] = {c: row[c] for c in columns}
        return [rows[k] for k in sorted(rows)]

    # -- writes --------------------------------------------------------------------------

    def insert(self, table: str, row: Mapping[str, Any]) -> None:
        names = list(row)
        self._db.execute(
            f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",
            [self._to_db(row[n]) for n in names],
        )

    def update(self, table: str, row: Mapping[str, Any]) -> None:
        spec = self._schema.table(table)
        values = [n for n in row if n not in spec.primary_key]
        cursor = self._db.execute(
            f"UPDATE {table} SET {', '.join(f'{n} = ?' for n in values)} "
            f"WHERE {' AND '.join(f'{k} = ?' for k in spec.primary_key)}",
            [self._to_db(row[n]) for n in values] + [self._to_db(row[k]) for k in spec.primary_key],
        )
        if cursor.rowcount != 1:
            raise sqlite3.IntegrityError(f"update of a missing {table} row")

    def delete(self, table: str, key: Key) -> None:
        spec = self._schema.table(table)
        self._db.execute(
            f"DELETE FROM {table} WHERE {' AND '.join(f'{k} = ?' for k in spec.primary_key)}",
            [self._to_db(v) for v in key],
        )


class SqliteHeaderStorage:
    """HeaderStorage on one SQLite file (created with the schema on open)."""

    def __init__(self, path: Path, schema: Schema | None = None) -> None:
        self._path = path
        self._schema = schema or header_schema()
        self._db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="header-sqlite")
        await self._run(self._open)

    def _open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, timeout=10.0
        )
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # with WAL: durable across process crashes
        db.execute("PRAGMA foreign_keys = ON")  # INTERLEAVE IN PARENT, translated
        db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in self._schema.sqlite_statements():
                db.execute(statement)
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {_CLOCK_TABLE} "
                f"(Id INTEGER PRIMARY KEY CHECK (Id = 0), LastCommitMicros INTEGER NOT NULL)"
            )
            db.execute(f"INSERT OR IGNORE INTO {_CLOCK_TABLE} VALUES (0, 0)")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            db.close()
            raise
        self._db = db

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._run(self._close)
        self._executor.shutdown(wait=True)
        self._executor = None

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def _run(self, call: Callable[[], R]) -> R:
        if self._executor is None:
            raise Unavailable("the header store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise Unavailable("the header store is not open")
        return self._db

    def _last_commit(self, db: sqlite3.Connection) -> int:
        row = db.execute(f"SELECT LastCommitMicros FROM {_CLOCK_TABLE} WHERE Id = 0").fetchone()
        return int(row[0])

    async def read(
        self, work: Callable[[ReadTxn], R], at: datetime | None = None
    ) -> tuple[R, datetime]:
        # SQLite keeps no history: ``at`` cannot be honoured, the latest data is read.
        def unit() -> tuple[R, datetime]:
            db = self._connection()
            db.execute("BEGIN")
            try:
                snapshot = self._last_commit(db)
                result = work(SqliteTxn(db, self._schema, -1))
            finally:
                db.execute("ROLLBACK")
            return result, from_micros(snapshot)

        return await self._run(_busy_is_unavailable(unit))

    async def write(self, work: Callable[[WriteTxn], R]) -> tuple[R, datetime]:
        def unit() -> tuple[R, datetime]:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                now = to_micros(datetime.now(UTC))
                commit = max(now, self._last_commit(db) + 1)
                db.execute(
                    f"UPDATE {_CLOCK_TABLE} SET LastCommitMicros = ? WHERE Id = 0", (commit,)
                )
                result = work(SqliteTxn(db, self._schema, commit))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return result, from_micros(commit)

        return await self._run(_busy_is_unavailable(unit))


def _busy_is_unavailable(unit: Callable[[], R]) -> Callable[[], R]:
    def run() -> R:
        try:
            return unit()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise Unavailable(f"the embedded header store is busy: {exc}") from exc
            raise

    return run
