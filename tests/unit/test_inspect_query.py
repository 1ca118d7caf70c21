"""`tamer sql`'s guard: reads run, and every way of writing is refused with a one-line error, leaving the database as it was."""

from __future__ import annotations

import hashlib

import pytest

from tamer.inspect.query import QueryError, first_word, run_query
from tamer.state.db import Database

WRITES = [
    "DELETE FROM runs",
    "UPDATE runs SET status = 'failed'",
    "INSERT INTO runs (id) VALUES ('x')",
    "DROP TABLE steps",
    "CREATE TABLE notes (text TEXT)",
    "ATTACH DATABASE '/tmp/other.db' AS other",
    "WITH doomed AS (SELECT id FROM runs) DELETE FROM runs WHERE id IN (SELECT id FROM doomed)",
    "SELECT 1; DELETE FROM runs",
    "PRAGMA user_version = 7",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA query_only = OFF",
    "REPLACE INTO runs (id) VALUES ('x')",
    "VACUUM",
]


@pytest.fixture
def path(tmp_path):
    database = Database(tmp_path / "tamer.db")
    database.insert_run({"id": "squad-1", "recipe": "squad", "status": "done", "created_at": 1.0})
    database.close()
    return tmp_path / "tamer.db"


def _fingerprint(path) -> str:
    return hashlib.sha256(
        b"".join(p.read_bytes() for p in sorted(path.parent.glob("tamer.db*")) if p.suffix != ".db-shm")
    ).hexdigest()


@pytest.mark.parametrize("statement", WRITES)
def test_writes_are_refused_and_change_nothing(path, statement):
    """Writes, ATTACH, pragma writes and stacked statements raise a one-line QueryError (exit code 2); the file is untouched."""
    before = _fingerprint(path)
    with pytest.raises(QueryError) as caught:
        run_query(path, statement)
    assert caught.value.exit_code == 2
    assert "\n" not in str(caught.value)
    assert _fingerprint(path) == before
    assert run_query(path, "SELECT id, status FROM runs")[1] == [("squad-1", "done")]


@pytest.mark.parametrize(
    "statement, expected",
    [
        ("SELECT count(*) AS n FROM runs", (["n"], [(1,)])),
        ("-- a comment\n/* another */ select id from runs", (["id"], [("squad-1",)])),
        ("WITH r AS (SELECT id FROM runs) SELECT id FROM r", (["id"], [("squad-1",)])),
        ("VALUES (1)", (["column1"], [(1,)])),
    ],
)
def test_reads_return_columns_and_rows(path, statement, expected):
    """SELECT, WITH and VALUES statements (after comments) return their column names and rows."""
    assert run_query(path, statement) == expected


def test_schema_can_be_read(path):
    """Reading pragmas, their table functions and EXPLAIN work, so the schema can be explored."""
    assert "status" in [row[1] for row in run_query(path, "PRAGMA table_info(runs)")[1]]
    assert ("status",) in run_query(path, "SELECT name FROM pragma_table_info('runs')")[1]
    assert run_query(path, "EXPLAIN QUERY PLAN SELECT * FROM steps WHERE run_id = 'x'")[1]


def test_bad_sql_is_a_one_line_query_error(path):
    """A query SQLite rejects (an unknown table) is a QueryError quoting SQLite's reason."""
    with pytest.raises(QueryError, match="no such table: missing_table"):
        run_query(path, "SELECT * FROM missing_table")


def test_first_word_skips_comments():
    """The statement kind is read after leading comments and whitespace, case-insensitively."""
    assert first_word("  /* x */ -- y\n delete from runs") == "DELETE"
    assert first_word("") == ""
