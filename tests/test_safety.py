"""Data safety (README, "Data safety"): a damaged database stops the start, `dnsbl backup` and the
documented restore, a full disk during an import, a read-only or missing database folder.

Real files, real mounts (the tests run as root: a chmod would not stop root, a read-only mount does),
real `dnsbl serve` processes asked over DNS. kill -9 at random moments is in tests/test_crash.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server, poll, rcode, run_cli, values

ZONE = "bl.example.org"
pytestmark = pytest.mark.slow


def qname(address: str) -> str:
    return ".".join(reversed(address.split("."))) + "." + ZONE


def addresses(count: int, block: int = 0) -> list[str]:
    """`count` (< 2**20) distinct addresses in 10.0.0.0/8, block `block` of 2**20 (admin entries: the
    allowlist binds only automatic sources)."""
    first = (10 << 24) | (block << 20)
    return [str(ipaddress.IPv4Address(first + n)) for n in range(count)]


def write_plain(path: Path, items: list[str]) -> Path:
    path.write_text("".join(f"{a}\n" for a in items))
    return path


def filled(db: Path, count: int) -> list[str]:
    """A database holding `count` entries of ZONE (source `base`, code 127.0.0.5)."""
    items = addresses(count)
    data = write_plain(db.parent / "base.txt", items)
    done = run_cli("import", "--zone", ZONE, "--source", "base", "--code", "5", str(data), db=db)
    assert done.returncode == 0, done.stderr
    return items


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """Exit 2 and exactly one line on stderr, no traceback: the line."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    return done.stderr.strip()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def serve_once(db: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`dnsbl serve` expected to stop at start (a test that sees it start has failed)."""
    return run_cli("serve", "--listen", "127.0.0.1:0", "--db", str(db), *extra)


@contextlib.contextmanager
def mounted(*commands: list[str], target: Path) -> Iterator[Path]:
    """Run mount commands (skip the test if mounting is not permitted here); unmount in the end."""
    try:
        for command in commands:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30)
            if done.returncode:
                pytest.skip(f"cannot mount here ({done.stderr.strip()}): this test needs root and mount")
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


def tmpfs(path: Path, size: str = "8m") -> contextlib.AbstractContextManager[Path]:
    path.mkdir()
    return mounted(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], target=path)


def read_only_view(folder: Path, view: Path) -> contextlib.AbstractContextManager[Path]:
    """`view` shows `folder` read-only: a bind mount, remounted read-only."""
    view.mkdir()
    return mounted(
        ["mount", "--bind", str(folder), str(view)],
        ["mount", "-o", "remount,bind,ro", str(view)],
        target=view,
    )


# --- PRAGMA quick_check at start -------------------------------------------------------------------


def damage(db: Path, offset: int, size: int) -> None:
    with open(db, "r+b") as handle:
        handle.seek(offset)
        handle.write(os.urandom(size))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_damaged_page_stops_the_start_naming_the_file_and_writes_nothing(db: Path, workers: str) -> None:
    filled(db, 20000)
    pages = db.stat().st_size // 4096
    assert pages > 100  # many rows: the damage is in the middle of the tables, not in the header
    damage(db, (pages // 2) * 4096 + 100, 2000)
    before = digest(db)
    line = one_error_line(serve_once(db, "--workers", workers))
    assert line.startswith(f"dnsbl: error: {db}: the database is damaged: PRAGMA quick_check: "), line
    assert "restore it from a backup" in line
    assert digest(db) == before  # nothing written: the file is left for the operator to restore


def test_a_damaged_header_stops_the_start(db: Path) -> None:
    filled(db, 2000)
    damage(db, 0, 100)
    line = one_error_line(serve_once(db, "--workers", "1"))
    assert f"{db}: " in line and "the database is damaged" in line and "not a database" in line, line


def test_commands_meeting_damaged_pages_say_so_in_one_line(db: Path) -> None:
    """Only `serve` runs quick_check; other commands report the damage where SQLite meets it."""
    filled(db, 20000)
    pages = db.stat().st_size // 4096
    for page in range(pages // 2, pages, 7):  # the second half of the tables: list and import read it
        damage(db, page * 4096, 4096)
    for command in (("list",), ("stats",), ("import", "--zone", ZONE, "--source", "base", "--replace")):
        args = (*command, str(db.parent / "base.txt")) if command[0] == "import" else command
        line = one_error_line(run_cli(*args, db=db))
        assert f"{db}: " in line and "the database is damaged" in line and "from a backup" in line, line


# --- dnsbl backup, and the restore -----------------------------------------------------------------


class Writer(threading.Thread):
    """`dnsbl add` one address after another until stopped; `done` are those that exited 0, in order."""

    def __init__(self, db: Path, items: list[str]) -> None:
        super().__init__(daemon=True)
        self.db, self.items, self.done = db, items, list[str]()
        self.stop = threading.Event()

    def run(self) -> None:
        for address in self.items:
            if self.stop.is_set():
                return
            added = run_cli("add", "--zone", ZONE, "--source", "writer", "--code", "7", address, db=self.db)
            assert added.returncode == 0, added.stderr
            self.done.append(address)


def entries_of(path: Path, source: str) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {r[0] for r in conn.execute("SELECT target FROM entries WHERE source = ?", (source,))}


def test_backup_while_the_server_and_a_writer_run_then_restore(db: Path, tmp_path: Path) -> None:
    base = filled(db, 20000)
    server = Server(["--db", str(db), "--workers", "2"])
    writer = Writer(db, addresses(200, block=1))
    backups = tmp_path / "backups"
    backups.mkdir()
    try:
        writer.start()
        assert poll(lambda: len(writer.done) >= 3, timeout=60)
        first = run_cli("backup", str(backups / "list.sqlite"), db=db)
        assert poll(lambda: len(writer.done) >= 6, timeout=60)
        second = run_cli("backup", str(backups / "list.sqlite"), db=db)  # over the previous one
        writer.stop.set()
        writer.join(60)
        for done in (first, second):
            assert done.returncode == 0, done.stderr
            assert done.stdout.startswith(f"backup written to {backups / 'list.sqlite'}: "), done.stdout
            assert "1 zone, " in done.stdout and "integrity check ok" in done.stdout, done.stdout
        saved = backups / "list.sqlite"
        assert sorted(p.name for p in backups.iterdir()) == ["list.sqlite"]  # no temp file, no -wal
        with contextlib.closing(sqlite3.connect(saved)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # self-contained
        # one committed state: every base entry, and the writer's adds up to some moment, in order
        in_backup = entries_of(saved, "writer")
        assert entries_of(saved, "base") == set(base)
        assert in_backup == set(writer.done[: len(in_backup)]), (in_backup, writer.done)
        assert 6 <= len(in_backup) < len(writer.done) or len(in_backup) == len(writer.done)
        assert server.proc.poll() is None  # the server answered on through it all
        assert poll(lambda: values(server.ask(qname(writer.done[-1])), "A") == ["127.0.0.7"], timeout=10)
    finally:
        writer.stop.set()
        server.close()
    # the restore, as the README says: server stopped, copy the file, remove -wal and -shm, start
    shutil.copyfile(saved, db)
    for tail in ("-wal", "-shm"):
        Path(f"{db}{tail}").unlink(missing_ok=True)
    restored = Server(["--db", str(db), "--workers", "1"])
    try:
        for address in (base[0], base[-1], base[12345]):
            assert values(restored.ask(qname(address)), "A") == ["127.0.0.5"], address
        for address in writer.done:
            answer = restored.ask(qname(address))
            if address in in_backup:
                assert values(answer, "A") == ["127.0.0.7"], address
            else:
                assert rcode(answer) == "NXDOMAIN", address  # written after the backup: not in it
        assert "damaged" not in restored.log
    finally:
        restored.close()


def test_backup_refuses_the_live_database_whatever_the_spelling(db: Path, tmp_path: Path) -> None:
    filled(db, 100)
    link = tmp_path / "link.sqlite"
    link.symlink_to(db)
    before = digest(db)
    relative = os.path.relpath(db, tmp_path)
    for spelled in (str(db), str(link), f"{db}-wal", str(db.parent / ".." / "data" / db.name)):
        line = one_error_line(run_cli("backup", spelled, db=db))
        assert "that is the live database" in line, line
    rel = subprocess.run(  # a relative path, from another folder
        [sys.executable, "-m", "dnsbl_server", "backup", relative],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ, DNSBL_DB=str(db)),
        timeout=60,
    )
    assert "that is the live database" in one_error_line(rel)
    assert digest(db) == before


def test_backup_errors_are_one_line(db: Path, tmp_path: Path) -> None:
    filled(db, 100)
    missing = tmp_path / "no" / "such" / "backup.sqlite"
    assert f"no such folder {missing.parent}" in one_error_line(run_cli("backup", str(missing), db=db))
    line = one_error_line(run_cli("backup", str(tmp_path), db=db))
    assert "is a folder" in line, line
    line = one_error_line(run_cli("backup", str(tmp_path / "b.sqlite"), db=tmp_path / "nothing.sqlite"))
    assert "no such database" in line, line
    target = tmp_path / "target"
    target.mkdir()
    with read_only_view(target, tmp_path / "target-ro") as view:
        line = one_error_line(run_cli("backup", str(view / "b.sqlite"), db=db))
        assert "read-only file system" in line, line
    assert list(target.iterdir()) == []


# --- a read-only or missing folder ----------------------------------------------------------------


def test_a_read_only_database_folder_stops_the_start(db: Path, tmp_path: Path) -> None:
    filled(db, 100)
    with read_only_view(db.parent, tmp_path / "ro") as view:
        seen = view / db.name
        for command in (("serve", "--listen", "127.0.0.1:0", "--workers", "1"), ("add", "10.9.9.9")):
            line = one_error_line(run_cli(*command, db=seen))
            assert (
                f"{seen}: cannot open the database: its folder {view} is on a read-only file system" in line
            )
            assert f"{db.name}-wal" in line, line
        for command in (("stats",), ("remove", "10.0.0.1")):  # no pre-check: SQLite's failure, explained
            line = one_error_line(run_cli(*command, db=seen))
            assert f"{seen}: " in line and f"{view} is on a read-only file system" in line, line


def test_a_missing_folder_stops_serve_but_add_creates_it(tmp_path: Path) -> None:
    db = tmp_path / "not" / "mounted" / "list.sqlite"
    line = one_error_line(serve_once(db, "--workers", "1"))
    assert f"{db.parent}: the database's folder does not exist (database {db})" in line, line
    assert not db.parent.exists()  # nothing created
    added = run_cli("add", "--zone", ZONE, "10.1.2.3", db=db)  # an admin's explicit write: created
    assert added.returncode == 0, added.stderr
    server = Server(["--db", str(db), "--workers", "1"])
    try:
        assert values(server.ask(qname("10.1.2.3")), "A") == ["127.0.0.2"]
    finally:
        server.close()


def test_the_default_location_creates_its_folder_for_serve(tmp_path: Path) -> None:
    home = tmp_path / "xdg"
    server = Server(["--workers", "1"], env={"XDG_DATA_HOME": str(home), "DNSBL_DB": ""})
    try:
        assert values(server.ask("7.113.0.203." + ZONE), "A") == ["127.0.0.2"]  # the demo zone
        assert (home / "dnsbl-server" / "dnsbl.sqlite").exists()
    finally:
        server.close()


# --- a full disk ----------------------------------------------------------------------------------


def test_a_full_disk_during_an_import_fails_clearly_and_keeps_the_old_data(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small") as disk:
        db = disk / "list.sqlite"
        base = addresses(2000)
        data = write_plain(tmp_path / "base.txt", base)
        done = run_cli("import", "--zone", ZONE, "--source", "base", "--code", "5", str(data), db=db)
        assert done.returncode == 0, done.stderr
        big_items = addresses(250000, block=2)  # far more than 8 MB
        big = write_plain(tmp_path / "big.txt", big_items)
        server = Server(["--db", str(db), "--workers", "1"])
        try:
            line = one_error_line(run_cli("import", "--zone", ZONE, "--source", "big", str(big), db=db))
            assert f"{db}: write failed, nothing of it was written: the disk is full" in line, line
            assert server.proc.poll() is None
            for address in (base[0], base[999], base[-1]):
                assert values(server.ask(qname(address)), "A") == ["127.0.0.5"], address
            for address in (big_items[0], big_items[-1]):
                assert rcode(server.ask(qname(address))) == "NXDOMAIN"  # nothing of the import
            stats = run_cli("stats", "--json", db=db)
            assert '"entries": 2000' in stats.stdout, stats.stdout + stats.stderr
            # the list still takes small changes, served as usual
            added = run_cli("add", "--zone", ZONE, "10.3.0.1", "--code", "6", db=db)
            assert added.returncode == 0, added.stderr
            assert poll(lambda: values(server.ask(qname("10.3.0.1")), "A") == ["127.0.0.6"])
        finally:
            server.close()
        with contextlib.closing(sqlite3.connect(db)) as conn:
            assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]


def fill_disk(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 65536)
            handle.flush()
    return filler


def test_add_on_a_full_disk_fails_clearly_then_works_once_there_is_room(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", size="4m") as disk:
        db = disk / "list.sqlite"
        assert run_cli("add", "--zone", ZONE, "10.0.0.1", db=db).returncode == 0
        filler = fill_disk(disk)
        line = one_error_line(run_cli("add", "--zone", ZONE, "10.0.0.2", db=db))
        assert f"{db}:" in line and "the disk is full" in line, line
        filler.unlink()
        assert run_cli("add", "--zone", ZONE, "10.0.0.3", db=db).returncode == 0
        listed = run_cli("list", "--format", "csv", db=db).stdout
        assert "10.0.0.1," in listed and "10.0.0.3," in listed and "10.0.0.2," not in listed, listed
