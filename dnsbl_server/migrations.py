"""The database schema, as numbered steps. `PRAGMA user_version` records how many have run.

Rule: never edit a step that has shipped; add a new one. Each step runs in one transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from .errors import StoreError

Step = str | Callable[[sqlite3.Connection], None]


def enclosing(family: int, lo: int, hi: int) -> tuple[int, bytes]:
    """The smallest CIDR holding [lo, hi], as (prefix length, network bytes): an entry covers an
    address only if this CIDR does, so lookups by (plen, net) find every candidate with an index."""
    bits = 32 if family == 4 else 128
    plen = bits - (lo ^ hi).bit_length()
    net = lo & ~((1 << (bits - plen)) - 1)
    return plen, net.to_bytes(bits // 8, "big")


ENCLOSING_INDEX = "CREATE INDEX entries_enclosing ON entries (zone, family, plen, net)"


def _add_enclosing(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE entries ADD COLUMN plen INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE entries ADD COLUMN net BLOB NOT NULL DEFAULT x''")
    rows = conn.execute("SELECT id, family, lo, hi FROM entries").fetchall()
    for rowid, family, lo, hi in rows:
        plen, net = enclosing(family, int.from_bytes(lo, "big"), int.from_bytes(hi, "big"))
        conn.execute("UPDATE entries SET plen = ?, net = ? WHERE id = ?", (plen, net, rowid))
    conn.execute(ENCLOSING_INDEX)


STEPS: tuple[Step, ...] = (
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
    # 2: find the entries covering an address without a scan (`dnsbl check`)
    _add_enclosing,
    # 3: ranges that automatic sources never list; the journal pruned by age
    """
    CREATE TABLE allowlist (
        id INTEGER PRIMARY KEY,
        zone TEXT NOT NULL DEFAULT '',  -- '' is every zone
        target TEXT NOT NULL,
        family INTEGER NOT NULL,
        lo BLOB NOT NULL,
        hi BLOB NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        UNIQUE (zone, target)
    );
    CREATE INDEX changes_at ON changes (at);
    DROP INDEX entries_source;  -- zone-scoped scans suffice for source queries, and it slowed imports
    """,
    # 4: trap evidence: every hit, once per (zone, message, relay, kind)
    """
    CREATE TABLE hits (
        id INTEGER PRIMARY KEY,
        zone TEXT NOT NULL,
        at REAL NOT NULL,
        ip TEXT NOT NULL,
        kind TEXT NOT NULL,
        trap TEXT NOT NULL DEFAULT '',  -- never shown publicly: it would burn the trap
        message_id TEXT NOT NULL,
        source TEXT NOT NULL,
        UNIQUE (zone, message_id, ip, kind)
    );
    CREATE INDEX hits_ip ON hits (zone, ip, at);
    """,
    # 5: how far the ingester read each append-only source (mbox, JSON-lines), moved with its hits
    """
    CREATE TABLE ingest_state (
        source TEXT PRIMARY KEY,
        inode INTEGER NOT NULL,
        offset INTEGER NOT NULL
    );
    """,
    # 6: serial changes held back to coalesce trap-hit churn (store.COALESCE_S), and evidence pruned by age
    """
    ALTER TABLE zones ADD COLUMN pending_since REAL;
    CREATE INDEX hits_at ON hits (at);
    """,
    # 7: the IXFR journal (journal.py): each serial change of a zone as the records it deleted and added
    """
    CREATE TABLE xfr_versions (
        zone TEXT NOT NULL,
        serial_from INTEGER NOT NULL,
        serial_to INTEGER NOT NULL,
        at REAL NOT NULL,
        size INTEGER NOT NULL,          -- journal records of this version
        PRIMARY KEY (zone, serial_from)
    );
    CREATE INDEX xfr_versions_at ON xfr_versions (zone, at);
    CREATE TABLE xfr_journal (
        zone TEXT NOT NULL,
        serial_from INTEGER NOT NULL,
        serial_to INTEGER NOT NULL,
        seq INTEGER NOT NULL,           -- order within the version
        op TEXT NOT NULL,               -- '-' deleted, '+' added
        name TEXT NOT NULL,             -- owner relative to the zone, as zonedump writes it
        rtype TEXT NOT NULL,
        ttl INTEGER NOT NULL,
        rdata TEXT NOT NULL,
        PRIMARY KEY (zone, serial_from, seq)
    ) WITHOUT ROWID;
    """,
    # 8: delisting requests from the web page (requests_store.py; README, "Web page")
    """
    CREATE TABLE delist_requests (
        id INTEGER PRIMARY KEY,
        created REAL NOT NULL,
        address TEXT NOT NULL,          -- the listed address, canonical text
        client TEXT NOT NULL,           -- the requester's own IP address, for flood limits and the record
        email TEXT NOT NULL,
        reason TEXT NOT NULL,           -- as typed (pages escape it)
        zones TEXT NOT NULL,            -- the zones listing the address when asked, comma-separated
        status TEXT NOT NULL DEFAULT 'pending',  -- pending, approved, denied (delisting.TRANSITIONS)
        decided REAL,
        note TEXT NOT NULL DEFAULT ''   -- the admin's words with the decision
    );
    CREATE INDEX delist_requests_client ON delist_requests (client, created);
    CREATE INDEX delist_requests_created ON delist_requests (created);
    CREATE INDEX delist_requests_address ON delist_requests (address, status);
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
            _run(conn, STEPS[number])
            conn.execute(f"PRAGMA user_version = {number + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(STEPS)


def _run(conn: sqlite3.Connection, step: Step) -> None:
    if callable(step):
        step(conn)
        return
    for statement in step.split(";"):
        if statement.strip():
            conn.execute(statement)
