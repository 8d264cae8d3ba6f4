"""The database as a file on a disk: what is checked before it is used, and what a failing disk means.

Owns the checks `Store.open` makes and the one-line messages for what SQLite reports of the machine
under it (README, "Data safety"). No SQL of the list here: that is store.py's.

Rules:
- The folder of the database must be writable for the server and the commands that create: SQLite in
  WAL mode writes `NAME-wal` and `NAME-shm` beside the file. A read-only file system (a read-only mount;
  root ignores permissions but not that) and a folder the user may not write are told apart, and said
  before SQLite fails obscurely. Commands that only read are not stopped (they can read while the
  server keeps -wal and -shm there); if SQLite then cannot open the file, the message says why.
- `dnsbl serve` with a database path given (--db, DNSBL_DB, the config's db) needs its folder to exist:
  a missing one is a typo or a volume not mounted yet, and serving a new, empty list there would answer
  "not listed" for every address. Commands that write create it (an admin asked for that file); the
  default location's folder is always created.
- `quick_check` (PRAGMA quick_check: every page and record, not the index contents; 0.5-1.5 s for a
  million entries) runs when the server opens the database, before anything writes to it: a damaged
  file is reported with what SQLite found, and left as it is for the operator to restore.
- A write that fails for want of disk space says so (the disk is full, with what is free), never a
  traceback; the transaction is rolled back, so the old data stays whole (SQLite's atomic commit).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

from .errors import StoreError

# SQLite's primary result codes (https://sqlite.org/rescode.html); extended codes keep them in the low byte
SQLITE_READONLY, SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN = 8, 10, 11, 13, 14
SQLITE_NOTADB = 26
DISK_ERRORS = {SQLITE_READONLY, SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_NOTADB}
NO_ROOM = 1 << 16  # less free than this, and an I/O error is the disk being full
RESTORE_HINT = 'restore it from a backup (README, "Backup and restore")'


def primary_code(error: sqlite3.Error) -> int:
    return int(getattr(error, "sqlite_errorcode", 0) or 0) & 0xFF


def is_disk_error(error: BaseException) -> bool:
    """An error of the file or the disk under it, not of our SQL (those stay tracebacks: bugs)."""
    return isinstance(error, sqlite3.Error) and primary_code(error) in DISK_ERRORS


def explain(error: sqlite3.Error, path: Path) -> str:
    """What SQLite reported, said as what the operator should know."""
    code = primary_code(error)
    if code == SQLITE_FULL or (code == SQLITE_IOERR and _no_room(path.parent)):
        # SQLite says "disk I/O error" when it cannot grow NAME-shm on a full disk (SQLITE_IOERR_SHMSIZE)
        return f"the disk is full ({free_space(path.parent)} free in {path.parent}; SQLite: {error})"
    if code == SQLITE_READONLY:
        return f"the database cannot be written ({error}){_readonly_reason(path.parent)}"
    if code == SQLITE_CANTOPEN:  # a reader in a read-only folder with no -wal/-shm to share
        return f"{error}{_readonly_reason(path.parent)}"
    return describe(error)


def describe(error: sqlite3.Error) -> str:
    """`explain` without the file (where only the error is known)."""
    code = primary_code(error)
    if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return f"the database is damaged ({error}): {RESTORE_HINT}"
    if code == SQLITE_FULL:
        return f"the disk is full ({error})"
    return str(error)


def _no_room(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < NO_ROOM
    except OSError:
        return False


def free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown space"
    return f"{free / 1e6:.1f} MB" if free >= 1e5 else f"{free} bytes"


def _readonly_reason(folder: Path) -> str:
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return f": {folder} is on a read-only file system"
    except OSError:
        pass
    return ""


def require_folder(db: Path) -> None:
    """`dnsbl serve`: the folder of a database path given must exist (see the rules)."""
    folder = db.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise StoreError(
            f"{folder}: the database's folder {what} (database {db}): create it, or fix --db/DNSBL_DB/db; "
            "the server does not start on a new, empty list there (a volume not mounted, or a typo)"
        )


def require_writable_folder(db: Path) -> None:
    """The folder holds NAME-wal and NAME-shm, which every connection writes, readers too."""
    folder = db.parent
    if os.access(folder, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        return
    try:
        readonly = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        readonly = False
    why = "is on a read-only file system" if readonly else f"is not writable by uid {os.geteuid()}"
    raise StoreError(
        f"{db}: cannot open the database: its folder {folder} {why} "
        f"(SQLite writes {db.name}-wal and {db.name}-shm beside it, even to read)"
    )


def quick_check(conn: sqlite3.Connection, path: Path) -> None:
    """PRAGMA quick_check; StoreError naming the file and SQLite's first finding if it is damaged."""
    try:
        found = [str(row[0]) for row in conn.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as error:
        if primary_code(error) not in (SQLITE_CORRUPT, SQLITE_NOTADB):
            raise
        found = [str(error)]
    if found == ["ok"]:
        return
    raise StoreError(damaged(path, found))


def damaged(path: Path, found: list[str]) -> str:
    # quick_check returns up to 100 findings, the first prefixed with "*** in database main ***"
    lines = [line for text in found for line in text.splitlines() if line and not line.startswith("***")]
    first = lines[0] if lines else "no details"
    more = f" (and {len(lines) - 1} more finding(s))" if len(lines) > 1 else ""
    return (
        f"{path}: the database is damaged: PRAGMA quick_check: {first}{more}; nothing was changed: "
        f"{RESTORE_HINT}"
    )
