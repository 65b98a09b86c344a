"""The API's SQLite file: source records and run state, so nothing is lost when the API restarts."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (
    id TEXT PRIMARY KEY,
    info TEXT NOT NULL,             -- the source's JSON record, as stored beside it in the object store
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    source_id TEXT NOT NULL,
    recipe TEXT NOT NULL,
    overrides TEXT NOT NULL,        -- JSON object
    backend TEXT NOT NULL,          -- 'local' (a subprocess here) or 'kfp'
    state TEXT NOT NULL,            -- 'running', 'succeeded' or 'failed'
    created TEXT NOT NULL,
    finished TEXT,
    run_dir TEXT,
    pid INTEGER,
    pid_start TEXT,                 -- the process's start time, so a reused pid is not mistaken for it
    exit_code INTEGER,
    kfp_run_id TEXT,
    error TEXT,
    status TEXT,                    -- the last status.json (or KFP state) seen, JSON
    removed TEXT                    -- when retention removed the run's folder (UTC, ISO 8601)
);
CREATE INDEX IF NOT EXISTS runs_state ON runs (state);
"""
# Columns added since the first schema, added to a database an earlier version created.
ADDED_COLUMNS = {"runs": {"removed": "TEXT"}}


class Database:
    """Opens a short-lived connection per operation: requests are served from several threads, and
    SQLite's own locking (WAL, busy timeout) keeps them consistent."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
            for table, columns in ADDED_COLUMNS.items():
                present = {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}
                for name, kind in columns.items():
                    if name not in present:
                        with contextlib.suppress(sqlite3.OperationalError):  # another process added it
                            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            with conn:  # commits on success, rolls back on an exception
                yield conn
        finally:
            conn.close()
