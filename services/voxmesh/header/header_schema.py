"""The header store's schema, read from config/spanner.ddl, and its mechanical SQLite translation.

config/spanner.ddl is the one schema source. The embedded (SQLite) store does not keep a
schema of its own: it parses the Spanner DDL into table and index specs and renders them as
SQLite statements, so the two cannot drift. Only the subset the DDL file uses is understood;
anything else is refused with the offending statement, rather than translated wrongly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from voxmesh.stack.provisioning import spanner_ddl

# Spanner type -> SQLite storage class. TIMESTAMP is stored as microseconds since the epoch.
_SQLITE_TYPES = {
    "STRING": "TEXT",
    "INT64": "INTEGER",
    "BOOL": "INTEGER",
    "FLOAT64": "REAL",
    "BYTES": "BLOB",
    "TIMESTAMP": "INTEGER",
}

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_CREATE_TABLE = re.compile(
    rf"CREATE\s+TABLE\s+(?P<name>{_IDENT})\s*\((?P<body>.*)\)\s*"
    rf"PRIMARY\s+KEY\s*\((?P<pk>[^)]*)\)\s*"
    rf"(?:,\s*INTERLEAVE\s+IN\s+PARENT\s+(?P<parent>{_IDENT})"
    rf"(?:\s+ON\s+DELETE\s+(?P<on_delete>CASCADE|NO\s+ACTION))?)?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_COLUMN = re.compile(
    rf"(?P<name>{_IDENT})\s+(?P<type>[A-Z0-9]+)(?:\s*\((?P<size>\d+|MAX)\))?"
    rf"(?P<not_null>\s+NOT\s+NULL)?"
    rf"(?:\s+OPTIONS\s*\(\s*allow_commit_timestamp\s*=\s*(?P<commit_ts>true|false)\s*\))?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_CREATE_INDEX = re.compile(
    rf"CREATE\s+(?P<unique>UNIQUE\s+)?(?P<null_filtered>NULL_FILTERED\s+)?INDEX\s+"
    rf"(?P<name>{_IDENT})\s+ON\s+(?P<table>{_IDENT})\s*\((?P<columns>[^)]*)\)"
    rf"(?:\s*STORING\s*\([^)]*\))?"
    rf"(?:\s*,\s*INTERLEAVE\s+IN\s+{_IDENT})?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_INDEX_COLUMN = re.compile(rf"({_IDENT})(?:\s+(ASC|DESC))?$", re.IGNORECASE)


class SchemaError(ValueError):
    """config/spanner.ddl uses something the SQLite translation does not understand."""


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    spanner_type: str  # STRING, INT64, BOOL, FLOAT64, BYTES or TIMESTAMP
    not_null: bool
    commit_timestamp: bool
    max_length: int | None  # STRING(n) / BYTES(n); None for MAX and other types


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[ColumnSpec, ...]
    primary_key: tuple[str, ...]
    parent: str | None
    parent_key: tuple[str, ...]  # the parent's primary key (a prefix of this one)
    on_delete_cascade: bool

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


@dataclass(frozen=True)
class IndexSpec:
    name: str
    table: str
    columns: tuple[tuple[str, bool], ...]  # (column, descending)
    unique: bool


@dataclass(frozen=True)
class Schema:
    tables: dict[str, TableSpec]
    indexes: tuple[IndexSpec, ...]

    def table(self, name: str) -> TableSpec:
        try:
            return self.tables[name]
        except KeyError:
            raise SchemaError(f"no table {name!r} in the schema") from None

    def columns_of_type(self, spanner_type: str) -> frozenset[str]:
        return frozenset(
            c.name
            for t in self.tables.values()
            for c in t.columns
            if c.spanner_type == spanner_type
        )

    def sqlite_statements(self) -> list[str]:
        """CREATE statements for SQLite (idempotent: IF NOT EXISTS), parents before children."""
        return [
            *(_sqlite_table(t) for t in self.tables.values()),
            *map(_sqlite_index, self.indexes),
        ]


def _split_top_level(body: str) -> list[str]:
    """Split a column list on the commas that are not inside parentheses."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(body):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    return [p.strip() for p in parts if p.strip()]


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def parse_schema(statements: list[str]) -> Schema:
    tables: dict[str, TableSpec] = {}
    indexes: list[IndexSpec] = []
    for statement in statements:
        one_line = " ".join(statement.split())
        if table := _CREATE_TABLE.match(statement):
            columns = []
            for definition in _split_top_level(table["body"]):
                column = _COLUMN.match(definition)
                if column is None or column["type"].upper() not in _SQLITE_TYPES:
                    raise SchemaError(f"cannot translate column {definition!r} of: {one_line}")
                columns.append(
                    ColumnSpec(
                        name=column["name"],
                        spanner_type=column["type"].upper(),
                        not_null=column["not_null"] is not None,
                        commit_timestamp=(column["commit_ts"] or "").lower() == "true",
                        max_length=int(size)
                        if (size := column["size"]) and size.isdigit()
                        else None,
                    )
                )
            primary_key = _names(table["pk"])
            unknown = set(primary_key) - {c.name for c in columns}
            if unknown:
                raise SchemaError(
                    f"primary key names unknown columns {sorted(unknown)}: {one_line}"
                )
            parent_key: tuple[str, ...] = ()
            if table["parent"] is not None:
                parent = tables.get(table["parent"])
                if parent is None or primary_key[: len(parent.primary_key)] != parent.primary_key:
                    raise SchemaError(
                        f"{table['name']} must come after its parent {table['parent']} and "
                        f"start with its primary key: {one_line}"
                    )
                parent_key = parent.primary_key
            tables[table["name"]] = TableSpec(
                name=table["name"],
                columns=tuple(columns),
                primary_key=primary_key,
                parent=table["parent"],
                parent_key=parent_key,
                on_delete_cascade=(table["on_delete"] or "").upper() == "CASCADE",
            )
        elif index := _CREATE_INDEX.match(statement):
            columns_desc = []
            for part in _names(index["columns"]):
                column_match = _INDEX_COLUMN.match(part)
                if column_match is None:
                    raise SchemaError(f"cannot translate index column {part!r}: {one_line}")
                columns_desc.append((column_match[1], (column_match[2] or "").upper() == "DESC"))
            indexes.append(
                IndexSpec(
                    name=index["name"],
                    table=index["table"],
                    columns=tuple(columns_desc),
                    unique=index["unique"] is not None,
                )
            )
        else:
            raise SchemaError(f"cannot translate statement: {one_line}")
    types: dict[str, str] = {}
    for spec in tables.values():
        for col in spec.columns:
            if types.setdefault(col.name, col.spanner_type) != col.spanner_type:
                raise SchemaError(
                    f"column name {col.name} has two types ({types[col.name]} and "
                    f"{col.spanner_type}): the embedded store converts values by column name"
                )
    return Schema(tables=tables, indexes=tuple(indexes))


def _sqlite_table(spec: TableSpec) -> str:
    lines = [
        f"  {c.name} {_SQLITE_TYPES[c.spanner_type]}{' NOT NULL' if c.not_null else ''}"
        + (f" CHECK (length({c.name}) <= {c.max_length})" if c.max_length is not None else "")
        for c in spec.columns
    ]
    lines.append(f"  PRIMARY KEY ({', '.join(spec.primary_key)})")
    if spec.parent is not None:
        # INTERLEAVE IN PARENT: a child row needs its parent row, like a foreign key.
        rule = " ON DELETE CASCADE" if spec.on_delete_cascade else ""
        keys = ", ".join(spec.parent_key)
        lines.append(f"  FOREIGN KEY ({keys}) REFERENCES {spec.parent} ({keys}){rule}")
    body = ",\n".join(lines)
    # WITHOUT ROWID: rows clustered by the primary key, as in Spanner.
    return f"CREATE TABLE IF NOT EXISTS {spec.name} (\n{body}\n) WITHOUT ROWID"


def _sqlite_index(spec: IndexSpec) -> str:
    columns = ", ".join(f"{name}{' DESC' if desc else ''}" for name, desc in spec.columns)
    unique = "UNIQUE " if spec.unique else ""
    return f"CREATE {unique}INDEX IF NOT EXISTS {spec.name} ON {spec.table} ({columns})"


def load_schema(path: Path | None = None) -> Schema:
    """The schema of config/spanner.ddl (or of ``path``)."""
    return parse_schema(spanner_ddl(path))


@cache
def header_schema() -> Schema:
    """The schema the header store runs on, parsed once per process."""
    return load_schema()
