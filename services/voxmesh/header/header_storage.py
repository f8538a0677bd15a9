"""The header store's storage port: transactions over the tables of config/spanner.ddl.

The domain rules (thread_rules, message_rules, timeline_rules) are written once, as plain
functions of a transaction, and run unchanged on both adapters:

- ``spanner_header_storage.SpannerHeaderStorage``: Cloud Spanner (or its emulator);
- ``sqlite_header_storage.SqliteHeaderStorage``: one embedded SQLite file.

A unit of work runs in the adapter's worker thread inside one transaction; a DomainError it
raises rolls the transaction back and reaches the caller unchanged. Adapters may run a
read-write unit more than once (Spanner retries aborted transactions), so units touch nothing
but the transaction.

Rules that keep the two adapters equivalent:

- Writes are mutations, applied at commit on Spanner: a unit reads everything first and does
  not read back what it wrote.
- SQL is the subset both dialects share: named ``@params``, ``=``/``<``/``>``/``BETWEEN``,
  ``ORDER BY``, ``LIMIT``, ``NOT EXISTS``, ``LEFT JOIN``. Select plain column names (results
  are converted by column name).
- Timestamps are timezone-aware ``datetime`` values (microsecond precision). A row value of
  ``COMMIT_TS`` is replaced by the transaction's commit timestamp, which ``write`` returns;
  ``stamp_commit_ts`` does the same for records built inside the unit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar, cast

Row = dict[str, Any]
Key = tuple[Any, ...]
Params = Mapping[str, Any]
R = TypeVar("R")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class _PendingCommitTimestamp(datetime):
    """The type of COMMIT_TS: a datetime so records can hold it until the commit is known."""


# Stands for "the commit timestamp of this transaction" in rows written and records returned.
COMMIT_TS: datetime = _PendingCommitTimestamp(1, 1, 1, tzinfo=UTC)


def is_commit_ts(value: object) -> bool:
    return isinstance(value, _PendingCommitTimestamp)


def to_micros(value: datetime) -> int:
    """Microseconds since the epoch, rounded down (nanoseconds are dropped)."""
    return (value - EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


def stamp_commit_ts(value: R, commit_ts: datetime) -> R:
    """``value`` with every COMMIT_TS inside it (dataclasses, lists, tuples) set to commit_ts."""
    if is_commit_ts(value):
        return cast(R, commit_ts)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: stamp_commit_ts(getattr(value, f.name), commit_ts)
            for f in dataclasses.fields(value)
        }
        return cast(R, dataclasses.replace(value, **changes))
    if isinstance(value, list):
        return cast(R, [stamp_commit_ts(v, commit_ts) for v in value])
    if isinstance(value, tuple):
        return cast(R, tuple(stamp_commit_ts(v, commit_ts) for v in value))
    return value


class ReadTxn(Protocol):
    """Reads within one consistent snapshot (or one read-write transaction)."""

    def query(self, sql: str, params: Params | None = None) -> list[Row]:
        """Rows of a SELECT in the shared SQL subset, as dicts keyed by column name."""
        ...

    def read(self, table: str, columns: Sequence[str], keys: Sequence[Key]) -> list[Row]:
        """The rows with these full primary keys (missing ones left out), in key order."""
        ...

    def read_prefixes(
        self, table: str, columns: Sequence[str], prefixes: Sequence[Key]
    ) -> list[Row]:
        """Every row whose primary key starts with one of ``prefixes``, in key order."""
        ...


class WriteTxn(ReadTxn, Protocol):
    """A read-write transaction. Mutations take effect at commit (see the module doc)."""

    def insert(self, table: str, row: Mapping[str, Any]) -> None:
        """Insert a new row (all NOT NULL columns given); it must not exist."""
        ...

    def update(self, table: str, row: Mapping[str, Any]) -> None:
        """Set the given columns of an existing row (``row`` includes its primary key)."""
        ...

    def delete(self, table: str, key: Key) -> None:
        """Delete a row, and its interleaved children, if it exists."""
        ...


class HeaderStorage(Protocol):
    """Where the header store keeps threads, members, headers, marks, likes and cursors."""

    async def open(self) -> None:
        """Connect (and, for the embedded store, create the schema). Called once at start."""
        ...

    async def close(self) -> None: ...

    async def read(
        self, work: Callable[[ReadTxn], R], at: datetime | None = None
    ) -> tuple[R, datetime]:
        """Run ``work`` in a read-only snapshot: a strong one, or at ``at`` where the store
        keeps history (the embedded store reads the latest data). Returns the result and the
        snapshot's read timestamp: every commit at or before it is visible, and every later
        commit gets a later timestamp."""
        ...

    async def write(self, work: Callable[[WriteTxn], R]) -> tuple[R, datetime]:
        """Run ``work`` in a read-write transaction; returns its result and commit timestamp."""
        ...
