"""`tamer sql`: read-only queries against the tamer database.

Three locks, each enough alone for the common case: the statement must be one SELECT, WITH, EXPLAIN,
VALUES or reading PRAGMA; the connection is opened read-only (`mode=ro`) with `PRAGMA query_only=ON`;
and an SQLite authorizer denies every action but reading (so `WITH ... DELETE`, ATTACH and
PRAGMA writes fail even when they slip past the first word).
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

from tamer.errors import EXIT_CONFIG, StateError, TamerError
from tamer.state.db import connect_reader

READ_STATEMENTS = ("SELECT", "WITH", "EXPLAIN", "PRAGMA", "VALUES")
# Pragmas that only read; those in the first set take a table or index name as their argument.
PRAGMAS_WITH_NAME = {
    "table_info",
    "table_xinfo",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
}
PRAGMAS_WITHOUT_ARGUMENT = {
    "database_list",
    "table_list",
    "compile_options",
    "function_list",
    "pragma_list",
    "collation_list",
    "module_list",
    "user_version",
    "schema_version",
    "application_id",
    "page_count",
    "page_size",
    "freelist_count",
    "journal_mode",
    "encoding",
    "data_version",
}
_READ_ACTIONS = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    getattr(sqlite3, "SQLITE_RECURSIVE", 33),
}
_SCHEMA_COLUMNS = {"type", "name", "tbl_name", "rootpage", "sql"}
_LEADING_COMMENTS = re.compile(r"^(\s+|--[^\n]*(\n|$)|/\*.*?\*/)*", re.DOTALL)


class QueryError(TamerError):
    """A query `tamer sql` refuses or SQLite rejects."""

    exit_code = EXIT_CONFIG
    kind = "query_error"


def _refusal(word: str) -> QueryError:
    return QueryError(
        "tamer sql only reads: it runs one SELECT, WITH, EXPLAIN, VALUES or reading PRAGMA statement, "
        f"and refuses {word}; write with sqlite-utils or sqlite3 on a copy of the database instead"
    )


def first_word(query: str) -> str:
    """The statement's first keyword, upper-case, after leading comments."""
    rest = _LEADING_COMMENTS.sub("", query, count=1)
    match = re.match(r"[A-Za-z]+", rest)
    return match.group(0).upper() if match else ""


def _authorizer(action: int, first: str | None, second: str | None, database: str | None, trigger: str | None) -> int:
    if action in _READ_ACTIONS:
        return sqlite3.SQLITE_OK
    if (
        action == sqlite3.SQLITE_UPDATE
        and first == "sqlite_master"
        and trigger is None
        and database == "main"
        and second in _SCHEMA_COLUMNS
    ):
        # SQLite asks this while it prepares a pragma table function (pragma_table_info); the
        # read-only connection could not write the schema anyway.
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA:
        name = (first or "").lower()
        if name in PRAGMAS_WITH_NAME or (name in PRAGMAS_WITHOUT_ARGUMENT and second is None):
            return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def connect_read_only(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise StateError(f"no tamer database at {path}; start a run first (tamer run squad) or pass --home")
    conn = connect_reader(path)
    conn.execute("PRAGMA query_only = ON")
    conn.set_authorizer(_authorizer)
    return conn


def run_query(path: Path, query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of a read-only `query` on the database at `path`; a QueryError when refused."""
    word = first_word(query)
    if word not in READ_STATEMENTS:
        raise _refusal(word or "an empty statement")
    conn = connect_read_only(path)
    try:
        cursor = conn.execute(query)
        rows = cursor.fetchall()
    except sqlite3.ProgrammingError as error:  # more than one statement
        raise QueryError(f"{error} Run one statement per `tamer sql`.") from None
    except sqlite3.DatabaseError as error:
        if "not authorized" in str(error) or "readonly" in str(error) or "read-only" in str(error):
            raise _refusal(f"this statement ({error})") from None
        raise QueryError(f"SQLite rejected the query: {error}") from None
    finally:
        conn.close()
    return [column[0] for column in cursor.description or []], rows
