"""`dnsbl backup`: a consistent copy of the live database, taken while the server and writers run.

Owns how a backup is made (README, "Backup and restore"). Restoring is a documented procedure, not code:
stop the server, copy the backup over the database, remove the old `-wal` and `-shm`, start.

Rules:
- SQLite's online backup API (`sqlite3.Connection.backup`) in one step: the whole copy is read inside
  one read transaction, so it is one committed state of the list. In WAL mode readers do not block
  writers: `dnsbl add`, imports and the ingester go on meanwhile (a stepwise backup would restart on
  every write, and could never finish under a busy ingester).
- The copy is written to a temp file beside FILE, switched to a rollback journal (one self-contained
  file, no -wal to carry along), passes `PRAGMA integrity_check`, is synced, and only then renamed
  over FILE: FILE is the previous backup or a whole new one, never half of one.
- FILE must not be the live database (nor its -wal, -shm or -journal): refused, whatever the spelling.
- Errors are one line naming the file: no such folder, a read-only one, a full disk.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import tempfile
import time
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path

from .dbfile import explain
from .errors import StoreError
from .store import Store


@dataclass(frozen=True)
class Backup:
    path: Path
    size: int  # bytes
    zones: int
    entries: int
    seconds: float


def backup(db: Path, dest: Path) -> Backup:
    """Copy `db` to `dest` (see the rules); StoreError with one line if it cannot."""
    start = time.monotonic()
    _refuse_live(db, dest)
    store = Store.open(db, create=False)
    try:
        temp = _temp_beside(dest)
        try:
            zones, entries = _copy(store, temp, dest)
            os.chmod(temp, stat.S_IMODE(os.stat(db).st_mode))  # as private as the database itself
            _sync(temp)
            os.replace(temp, dest)
            _sync(dest.parent)  # the rename itself survives a crash
        except BaseException:
            _remove(temp)
            raise
    except OSError as error:
        raise StoreError(f"{dest}: cannot write the backup: {_reason(error, dest.parent)}") from None
    finally:
        store.close()
    return Backup(dest, dest.stat().st_size, zones, entries, time.monotonic() - start)


def _refuse_live(db: Path, dest: Path) -> None:
    live = {db.resolve(), *(Path(f"{db.resolve()}{tail}") for tail in ("-wal", "-shm", "-journal"))}
    same = dest.resolve() in live or (dest.exists() and db.exists() and os.path.samefile(dest, db))
    if same:
        raise StoreError(f"{dest}: that is the live database (or its journal): give another file name")
    if dest.is_dir():
        raise StoreError(f"{dest}: is a folder: give the backup's file name, e.g. {dest / db.name}")


def _temp_beside(dest: Path) -> Path:
    try:
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".backup-tmp", dir=dest.parent)
    except OSError as error:
        raise StoreError(f"{dest}: cannot write the backup: {_reason(error, dest.parent)}") from None
    os.close(fd)
    return Path(name)


def _copy(store: Store, temp: Path, dest: Path) -> tuple[int, int]:
    """The online backup into `temp`, made one self-contained file and checked; (zones, entries)."""
    with closing(sqlite3.connect(temp, isolation_level=None)) as copy:
        try:
            store.conn.backup(copy)  # pages=-1: everything in one step, one read transaction
            copy.execute("PRAGMA journal_mode = DELETE")  # no -wal beside the backup
            found = [str(row[0]) for row in copy.execute("PRAGMA integrity_check")]
            if found != ["ok"]:
                raise StoreError(f"{dest}: the backup fails its integrity check ({found[0]}): not kept")
            zones = int(copy.execute("SELECT count(*) FROM zones").fetchone()[0])
            entries = int(copy.execute("SELECT count(*) FROM entries").fetchone()[0])
        except sqlite3.Error as error:
            raise StoreError(f"{dest}: cannot write the backup: {explain(error, temp)}") from None
    return zones, entries


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(temp: Path) -> None:
    for path in (temp, Path(f"{temp}-journal"), Path(f"{temp}-wal"), Path(f"{temp}-shm")):
        with suppress(FileNotFoundError):
            path.unlink()


def _reason(error: OSError, folder: Path) -> str:
    if isinstance(error, FileNotFoundError) and not folder.is_dir():
        return f"no such folder {folder}"
    if error.errno == errno.EROFS:
        return f"{folder} is on a read-only file system"
    if error.errno == errno.ENOSPC:
        return f"the disk holding {folder} is full"
    return error.strerror or str(error)
