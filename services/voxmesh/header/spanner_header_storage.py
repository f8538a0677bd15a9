"""The Google header storage: Cloud Spanner (the emulator locally), schema config/spanner.ddl.

google-cloud-spanner is a blocking client: every unit of work runs in a small thread pool.
Read-write units run in ``Database.run_in_transaction`` (which retries aborted transactions);
read-only units in a multi-use snapshot, strong or at an exact timestamp, whose read timestamp
is returned as the snapshot's timestamp (the timeline cursor).

The client finds the emulator through SPANNER_EMULATOR_HOST (the local stack sets it, with
the multiplexed-session switches the emulator needs; see STACK.md).
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.api_core import exceptions as google_errors
from google.cloud import spanner
from google.cloud.spanner_v1 import KeyRange, KeySet, param_types
from google.cloud.spanner_v1.database import Database
from google.cloud.spanner_v1.pool import BurstyPool

from voxmesh.core.domain_errors import DomainError, FailedPrecondition, Unavailable
from voxmesh.core.structured_logging import get_logger
from voxmesh.header.header_storage import Key, Params, ReadTxn, Row, WriteTxn, is_commit_ts

R = TypeVar("R")

_log = get_logger(__name__)

# Concurrent Spanner calls (threads, and sessions in the pool).
_WORKERS = 16
# Read-write transactions in flight at once. The emulator runs one at a time and aborts any
# that overlaps another, so overlapping ones mostly retry (measured: 20 concurrent message
# starts took ~60 s with 16 in flight, well under 1 s with 1): against it this adapter sends
# them one by one. Real Spanner locks rows instead and takes them concurrently.
_WRITES_IN_FLIGHT = 16
_WRITES_IN_FLIGHT_EMULATOR = 1
# Delay before retrying an aborted transaction when Spanner sends no RetryInfo (the emulator
# never does; the client's own default is 2**attempt seconds). Jittered per transaction so
# that two header nodes that collided do not collide again.
_ABORT_RETRY_DELAY_S = (0.002, 0.02)
_TRANSACTION_TIMEOUT_S = 60.0


def _plain(value: Any) -> Any:
    """Spanner's DatetimeWithNanoseconds as a plain datetime (microseconds, rounded down)."""
    if isinstance(value, datetime):
        return datetime(
            value.year,
            value.month,
            value.day,
            value.hour,
            value.minute,
            value.second,
            value.microsecond,
            tzinfo=UTC,
        )
    return value


def _param_type(value: Any) -> Any:
    if isinstance(value, bool):
        return param_types.BOOL
    if isinstance(value, int):
        return param_types.INT64
    if isinstance(value, float):
        return param_types.FLOAT64
    if isinstance(value, datetime):
        return param_types.TIMESTAMP
    if isinstance(value, bytes):
        return param_types.BYTES
    return param_types.STRING


def _to_spanner(value: Any) -> Any:
    return spanner.COMMIT_TIMESTAMP if is_commit_ts(value) else value


class SpannerTxn:
    """ReadTxn and WriteTxn over a Spanner snapshot or transaction."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def query(self, sql: str, params: Params | None = None) -> list[Row]:
        params = dict(params or {})
        result = self._inner.execute_sql(
            sql, params=params, param_types={k: _param_type(v) for k, v in params.items()}
        )
        rows = list(result)
        if not rows:
            return []
        names = [field.name for field in result.fields]
        return [{n: _plain(v) for n, v in zip(names, row, strict=True)} for row in rows]

    def _read(self, table: str, columns: Sequence[str], keyset: KeySet) -> list[Row]:
        result = self._inner.read(table, list(columns), keyset)
        return [{n: _plain(v) for n, v in zip(columns, row, strict=True)} for row in list(result)]

    def read(self, table: str, columns: Sequence[str], keys: Sequence[Key]) -> list[Row]:
        if not keys:
            return []
        return self._read(table, columns, KeySet(keys=[list(k) for k in keys]))

    def read_prefixes(
        self, table: str, columns: Sequence[str], prefixes: Sequence[Key]
    ) -> list[Row]:
        if not prefixes:
            return []
        ranges = [KeyRange(start_closed=list(p), end_closed=list(p)) for p in prefixes]
        return self._read(table, columns, KeySet(ranges=ranges))

    def _mutate(self, method: str, table: str, row: Mapping[str, Any]) -> None:
        names = list(row)
        getattr(self._inner, method)(table, names, [[_to_spanner(row[n]) for n in names]])

    def insert(self, table: str, row: Mapping[str, Any]) -> None:
        self._mutate("insert", table, row)

    def update(self, table: str, row: Mapping[str, Any]) -> None:
        self._mutate("update", table, row)

    def delete(self, table: str, key: Key) -> None:
        self._inner.delete(table, KeySet(keys=[list(key)]))


def _translate(exc: google_errors.GoogleAPICallError) -> DomainError | None:
    if isinstance(
        exc,
        google_errors.ServiceUnavailable
        | google_errors.DeadlineExceeded
        | google_errors.Aborted
        | google_errors.ResourceExhausted,
    ):
        return Unavailable(f"Cloud Spanner is unavailable, retry: {exc.message}")
    if isinstance(exc, google_errors.FailedPrecondition):
        return FailedPrecondition(f"Cloud Spanner refused the read: {exc.message}")
    return None


class SpannerHeaderStorage:
    """HeaderStorage on a Cloud Spanner database that has the schema of config/spanner.ddl."""

    def __init__(self, project: str, instance: str, database: str) -> None:
        self._names = (project, instance, database)
        self._database: Database | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._connect_lock = threading.Lock()
        self._write_slots: asyncio.Semaphore | None = None

    async def open(self) -> None:
        # No network here (sessions are created on first use), and a client that cannot be
        # built yet (no emulator host, no credentials) is retried on first use: the service
        # starts, and its calls answer UNAVAILABLE until Spanner is reachable.
        self._executor = ThreadPoolExecutor(
            max_workers=_WORKERS, thread_name_prefix="header-spanner"
        )
        emulator = bool(os.environ.get("SPANNER_EMULATOR_HOST"))
        self._write_slots = asyncio.Semaphore(
            _WRITES_IN_FLIGHT_EMULATOR if emulator else _WRITES_IN_FLIGHT
        )
        try:
            await self._run(lambda database: None)
        except Unavailable as exc:
            _log.warning("spanner_not_ready", error=str(exc))

    def _connect(self) -> Database:
        with self._connect_lock:
            if self._database is None:
                project, instance, database = self._names
                try:
                    client = spanner.Client(project=project)
                except Exception as exc:  # google.auth errors: no credentials, no emulator
                    raise Unavailable(f"cannot reach Cloud Spanner: {exc}") from exc
                self._database = client.instance(instance).database(
                    database, pool=BurstyPool(target_size=_WORKERS)
                )
            return self._database

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown)
        self._database = None

    async def _run(self, call: Callable[[Database], R]) -> R:
        executor = self._executor
        if executor is None:
            raise Unavailable("the header store is not open")

        def guarded() -> R:
            try:
                return call(self._connect())
            except google_errors.GoogleAPICallError as exc:
                translated = _translate(exc)
                if translated is None:
                    raise
                raise translated from exc

        return await asyncio.get_running_loop().run_in_executor(executor, guarded)

    async def read(
        self, work: Callable[[ReadTxn], R], at: datetime | None = None
    ) -> tuple[R, datetime]:
        def unit(database: Database) -> tuple[R, datetime]:
            options: dict[str, Any] = {"multi_use": True}
            if at is not None:
                options["read_timestamp"] = at
            with database.snapshot(**options) as snapshot:
                try:
                    result = work(SpannerTxn(snapshot))
                except google_errors.FailedPrecondition as exc:
                    if at is None:
                        raise
                    raise FailedPrecondition(
                        f"the listing's snapshot ({at.isoformat()}) can no longer be read: page "
                        f"tokens last about an hour, start the listing again"
                    ) from exc
                # The strong snapshot's read timestamp: the library keeps what Spanner returned
                # when the snapshot began (google-cloud-spanner 3.71 has no public accessor).
                read_ts = at or getattr(snapshot, "_transaction_read_timestamp", None)
            if read_ts is None:
                raise RuntimeError("Spanner returned no read timestamp for the snapshot")
            return result, _plain(read_ts)

        return await self._run(unit)

    async def write(self, work: Callable[[WriteTxn], R]) -> tuple[R, datetime]:
        def unit(database: Database) -> tuple[R, datetime]:
            attempts: list[Any] = []

            def in_transaction(transaction: Any) -> R:
                attempts.append(transaction)
                return work(SpannerTxn(transaction))

            result = database.run_in_transaction(
                in_transaction,
                default_retry_delay=random.uniform(*_ABORT_RETRY_DELAY_S),
                timeout_secs=_TRANSACTION_TIMEOUT_S,
            )
            committed = attempts[-1].committed if attempts else None
            if committed is None:
                raise RuntimeError("Spanner returned no commit timestamp")
            return result, _plain(committed)

        if self._write_slots is None:
            raise Unavailable("the header store is not open")
        async with self._write_slots:
            return await self._run(unit)
