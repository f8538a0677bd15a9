"""The one schema (config/spanner.ddl), its SQLite translation, and the pieces around it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from voxmesh.common.v1 import mark_pb2, message_pb2, thread_pb2
from voxmesh.core.domain_errors import InvalidArgument
from voxmesh.header.header_records import (
    MarkKind,
    MemberRole,
    MessageKind,
    MessageState,
    ThreadKind,
)
from voxmesh.header.header_schema import SchemaError, header_schema, parse_schema
from voxmesh.header.header_storage import COMMIT_TS, WriteTxn
from voxmesh.header.header_tokens import (
    decode_cursor,
    decode_page_token,
    encode_cursor,
    encode_page_token,
)
from voxmesh.header.sqlite_header_storage import SqliteHeaderStorage
from voxmesh.stack.provisioning import spanner_ddl


def test_the_ddl_file_is_what_the_emulator_is_provisioned_with() -> None:
    statements = spanner_ddl()
    schema = parse_schema(statements)
    assert set(schema.tables) == {
        "Threads",
        "ThreadMembers",
        "Messages",
        "MessageIds",
        "Likes",
        "HiddenMessages",
        "Marks",
        "UserThreads",
        "TimelineAcks",
    }
    assert schema.table("Messages").parent == "Threads"
    assert schema.table("Likes").parent == "Messages"
    assert schema.table("Messages").primary_key == ("ThreadHash", "ThreadId", "Seq")


def test_no_key_or_index_is_led_by_a_time_ordered_value() -> None:
    """UUIDv7 ids and timestamps grow with time: leading a key with one is a write hot spot."""
    schema = header_schema()
    timestamps = schema.columns_of_type("TIMESTAMP")
    time_ordered = {"MessageId", "ThreadId"} | timestamps
    for table in schema.tables.values():
        assert table.primary_key[0] not in time_ordered, table.name
    for index in schema.indexes:
        assert index.columns[0][0] not in time_ordered, index.name
    for name in ("Messages", "ThreadMembers", "Marks", "HiddenMessages", "Likes"):
        assert schema.table(name).primary_key[:2] == ("ThreadHash", "ThreadId")
    assert schema.table("MessageIds").primary_key == ("MessageHash", "MessageId")
    commit_ts = {c.name for t in schema.tables.values() for c in t.columns if c.commit_timestamp}
    assert {"UpdatedAt", "ChangedAt", "StartedAt", "MarkedAt"} <= commit_ts


async def test_the_sqlite_schema_is_the_ddl_translated(tmp_path: Path) -> None:
    storage = SqliteHeaderStorage(tmp_path / "h.sqlite3")
    await storage.open()
    await storage.close()
    db = sqlite3.connect(tmp_path / "h.sqlite3")
    schema = header_schema()
    for table in schema.tables.values():
        info = db.execute(f"PRAGMA table_info({table.name})").fetchall()
        assert [row[1] for row in info] == list(table.column_names), table.name
        assert [bool(row[3]) for row in info] == [c.not_null for c in table.columns]
        by_pk = sorted((row[5], row[1]) for row in info if row[5])
        assert tuple(name for _, name in by_pk) == table.primary_key, table.name
        parents = db.execute(f"PRAGMA foreign_key_list({table.name})").fetchall()
        assert {row[2] for row in parents} == ({table.parent} if table.parent else set())
    indexes = {row[1] for row in db.execute("SELECT * FROM sqlite_master WHERE type = 'index'")}
    assert {i.name for i in schema.indexes} <= indexes


async def test_sqlite_keeps_the_ddl_constraints(tmp_path: Path) -> None:
    storage = SqliteHeaderStorage(tmp_path / "h.sqlite3")
    await storage.open()
    try:

        def orphan(txn: WriteTxn) -> None:  # INTERLEAVE IN PARENT: needs its thread row
            txn.insert(
                "ThreadMembers",
                {
                    "ThreadHash": 1,
                    "ThreadId": "t",
                    "UserId": "u",
                    "MemberRole": 1,
                    "JoinedAt": COMMIT_TS,
                    "AddedByUserId": "u",
                },
            )

        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            await storage.write(orphan)

        def long_title(txn: WriteTxn) -> None:  # STRING(200)
            txn.insert(
                "Threads",
                {
                    "ThreadHash": 1,
                    "ThreadId": "t",
                    "ThreadKind": 2,
                    "Title": "x" * 201,
                    "CreatedByUserId": "u",
                    "CreatedAt": COMMIT_TS,
                    "UpdatedAt": COMMIT_TS,
                    "ChangedAt": COMMIT_TS,
                    "LastSeq": 0,
                },
            )

        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            await storage.write(long_title)
    finally:
        await storage.close()


async def test_sqlite_commit_timestamps_strictly_increase(tmp_path: Path) -> None:
    storage = SqliteHeaderStorage(tmp_path / "h.sqlite3")
    await storage.open()
    try:
        stamps = [(await storage.write(lambda txn: None))[1] for _ in range(50)]
        assert stamps == sorted(set(stamps))
        _, snapshot = await storage.read(lambda txn: None)
        assert snapshot == stamps[-1]
    finally:
        await storage.close()


@pytest.mark.parametrize(
    ("statement", "error"),
    [
        ("CREATE TABLE T (A JSON) PRIMARY KEY (A)", "cannot translate column"),
        ("CREATE TABLE T (A INT64) PRIMARY KEY (B)", "unknown columns"),
        ("ALTER TABLE T ADD COLUMN B INT64", "cannot translate statement"),
        (
            "CREATE TABLE C (K INT64) PRIMARY KEY (K), INTERLEAVE IN PARENT Missing",
            "must come after its parent",
        ),
    ],
)
def test_the_translation_refuses_what_it_does_not_understand(statement: str, error: str) -> None:
    with pytest.raises(SchemaError, match=error):
        parse_schema([statement])


def test_a_column_name_means_one_type() -> None:
    with pytest.raises(SchemaError, match="column name A has two types"):
        parse_schema(
            [
                "CREATE TABLE T (A INT64) PRIMARY KEY (A)",
                "CREATE TABLE U (A TIMESTAMP) PRIMARY KEY (A)",
            ]
        )


def test_record_enums_carry_the_proto_numbers() -> None:
    pairs = [
        (ThreadKind, thread_pb2.ThreadKind, "THREAD_KIND_"),
        (MemberRole, thread_pb2.MemberRole, "MEMBER_ROLE_"),
        (MessageKind, message_pb2.MessageKind, "MESSAGE_KIND_"),
        (MessageState, message_pb2.MessageState, "MESSAGE_STATE_"),
        (MarkKind, mark_pb2.MarkKind, "MARK_KIND_"),
    ]
    for ours, proto, prefix in pairs:
        assert {m.name: m.value for m in ours} == {
            name.removeprefix(prefix): value for name, value in proto.items()
        }


def test_tokens_and_cursors_are_opaque_and_checked() -> None:
    token = encode_page_token("threads", u="bob", t="x")
    assert decode_page_token(token, "threads", u="bob")["t"] == "x"
    with pytest.raises(InvalidArgument, match="belongs to another listing"):
        decode_page_token(token, "messages")
    with pytest.raises(InvalidArgument, match="belongs to another listing"):
        decode_page_token(token, "threads", u="alice")
    with pytest.raises(InvalidArgument, match="page_token is malformed"):
        decode_page_token("x" * 5000, "threads")
    cursor = encode_cursor(decode_cursor(encode_cursor(decode_cursor(""))))
    assert decode_cursor(cursor) == decode_cursor("")
    with pytest.raises(InvalidArgument, match="cursor is malformed"):
        decode_cursor(token)  # a page token is not a cursor
