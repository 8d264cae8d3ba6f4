"""The database schema, as numbered steps. `PRAGMA user_version` records how many have run.

Rule: never edit a step that has shipped; add a new one. Each step runs in one transaction.
"""

from __future__ import annotations

import sqlite3

from .errors import StoreError

STEPS: tuple[str, ...] = (
    # 1: zones, entries, and the change journal the server follows (and IXFR will read)
    """
    CREATE TABLE zones (
        name TEXT PRIMARY KEY,
        serial INTEGER NOT NULL,
        changed_at REAL NOT NULL,      -- when serial last moved by a write
        created REAL NOT NULL
    );
    CREATE TABLE entries (
        id INTEGER PRIMARY KEY,
        zone TEXT NOT NULL REFERENCES zones(name),
        target TEXT NOT NULL,          -- canonical text, `!` in front for an exclusion
        source TEXT NOT NULL,
        family INTEGER NOT NULL,       -- 4 or 6
        lo BLOB NOT NULL,              -- big-endian range bounds, 4 or 16 bytes
        hi BLOB NOT NULL,
        excluded INTEGER NOT NULL,
        code INTEGER NOT NULL,         -- A record as a 32-bit integer
        reason TEXT NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        expires REAL,                  -- NULL: never
        UNIQUE (zone, target, source)
    );
    CREATE INDEX entries_expires ON entries (zone, expires) WHERE expires IS NOT NULL;
    CREATE INDEX entries_source ON entries (source);
    CREATE TABLE changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        zone TEXT NOT NULL,
        target TEXT,                   -- NULL with op 'reload': re-read the whole zone
        source TEXT,
        op TEXT NOT NULL,              -- 'set', 'del' or 'reload'
        at REAL NOT NULL
    );
    """,
)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to date; return the version. Refuses a database newer than this code."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(STEPS):
        raise StoreError(f"database schema version {version} is newer than this dnsbl-server knows")
    for number in range(version, len(STEPS)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in STEPS[number].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(STEPS)
