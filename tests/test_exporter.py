"""The [export] table of `dnsbl serve`: zone files for rsync mirrors, written on a schedule.

A real server with a 1 s interval writes DIR/ZONE.combined; real rbldnsd loads it and answers like the
server; a change reaches the file within a few intervals; an unchanged zone is not rewritten; a full
disk or a missing folder keeps the old file and is retried."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server, poll, run_cli, values
from rbldnsd import Rbldnsd, compare, qname

from dnsbl_server.exporter import STATUS, read_status

ZONE = "bl.example.org"
ENTRIES = [
    ("203.0.113.7", "2", "Spam source: $"),
    ("198.51.100.0/24", "3", "net $"),
    ("!198.51.100.77", "2", ""),
    ("192.0.2.10-192.0.2.20", "4", "range $"),
    ("2001:db8:1::/48", "5", "v6 $"),
    ("2001:db8:1:2::/64", "6", "v6 inner $"),
]
ASKED = [
    "203.0.113.7", "203.0.113.8", "198.51.100.1", "198.51.100.77", "198.51.100.255", "192.0.2.9",
    "192.0.2.10", "192.0.2.15", "192.0.2.20", "192.0.2.21", "127.0.0.2", "127.0.0.1",
    "2001:db8:1::1", "2001:db8:1:2::5", "2001:db8:2::1",
]  # fmt: skip


def fill(db: Path) -> None:
    for target, code, reason in ENTRIES:
        args = (
            ["--exclude", target[1:]]
            if target.startswith("!")
            else [target, "--code", code, "--reason", reason]
        )
        result = run_cli("add", "--zone", ZONE, *args, db=db)
        assert result.returncode == 0, result.stderr


def config(tmp_path: Path, directory: Path, *extra: str) -> Path:
    path = tmp_path / "dnsbl.toml"
    lines = ["[export]", f'directory = "{directory}"', 'interval = "1s"', *extra]
    path.write_text("\n".join(lines) + "\n")
    return path


def start(servers: list[Server], db: Path, conf: Path, workers: str) -> Server:
    server = Server(["--db", str(db), "--config", str(conf), "--workers", workers])
    servers.append(server)
    return server


def qname_of(text: str) -> str:
    address = ipaddress.ip_address(text)
    return qname(address.version, int(address), ZONE)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_export_is_served_by_rbldnsd_alike_and_follows_changes(servers, db, tmp_path, workers):  # type: ignore[no-untyped-def]
    fill(db)
    out = tmp_path / "export"
    server = start(servers, db, config(tmp_path, out), workers)
    exported = out / f"{ZONE}.combined"
    assert poll(exported.exists, timeout=15), server.log
    with Rbldnsd([(ZONE, "combined", [exported])]) as mirror:
        for address in ASKED:
            ours, theirs = server.ask(qname_of(address), "ANY"), mirror.ask(qname_of(address), "ANY")
            assert compare(ours, theirs) == [], (address, ours, theirs)
    status = read_status(out)
    assert status["zones"][ZONE]["serial"] == int(exported.read_text().split()[6])
    assert time.time() - status["last_success"] < 30

    before = exported.read_text()
    assert run_cli("add", "--zone", ZONE, "192.0.2.99", "--code", "7", db=db).returncode == 0
    assert poll(lambda: "192.0.2.99 :127.0.0.7:" in exported.read_text(), timeout=15), server.log
    # the export reads the database itself: it may be written before the server has swapped the change in
    assert poll(lambda: values(server.ask(qname_of("192.0.2.99")), "A") == ["127.0.0.7"], timeout=10)
    assert exported.read_text() != before
    with Rbldnsd([(ZONE, "combined", [exported])]) as mirror:
        for address in ("192.0.2.99", "192.0.2.98"):
            assert compare(server.ask(qname_of(address), "ANY"), mirror.ask(qname_of(address), "ANY")) == []

    # nothing changes: the file stays as it is (rsync -t copies nothing), for several intervals
    mtime, inode = exported.stat().st_mtime_ns, exported.stat().st_ino
    checked = read_status(out)["zones"][ZONE]["checked"]
    assert poll(lambda: read_status(out)["zones"][ZONE]["checked"] > checked + 2, timeout=15)
    assert (exported.stat().st_mtime_ns, exported.stat().st_ino) == (mtime, inode)
    assert sorted(p.name for p in out.iterdir()) == sorted([STATUS, exported.name])  # no temp file left


def test_only_the_zones_asked_for_and_the_format(servers, db, tmp_path):  # type: ignore[no-untyped-def]
    fill(db)
    assert run_cli("add", "--zone", "other.example.org", "192.0.2.1", db=db).returncode == 0
    out = tmp_path / "export"
    conf = config(tmp_path, out, 'format = "bind"', f'zones = ["{ZONE}"]')
    server = start(servers, db, conf, "2")
    exported = out / f"{ZONE}.bind"
    assert poll(exported.exists, timeout=15), server.log
    assert exported.read_text().startswith(f"; {ZONE}: exported by dnsbl-server, serial ")
    assert exported.read_text() == run_cli("export", "--zone", ZONE, "--format", "bind", db=db).stdout
    assert sorted(p.name for p in out.iterdir()) == sorted([STATUS, exported.name])


@pytest.fixture
def tiny_disk() -> Iterator[Path]:
    """A 64 KiB tmpfs: a real "No space left on device" (root only)."""
    folder = Path(tempfile.mkdtemp(prefix="dnsbl-full-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)
    shutil.rmtree(folder, ignore_errors=True)


def test_a_full_disk_keeps_the_old_file_and_the_next_run_retries(servers, db, tmp_path, tiny_disk):  # type: ignore[no-untyped-def]
    fill(db)
    out = tiny_disk / "export"
    server = start(servers, db, config(tmp_path, out), "1")
    exported = out / f"{ZONE}.combined"
    # the first run is over once its status is written too (after the file): only then fill the disk
    assert poll(lambda: (out / STATUS).exists(), timeout=15), server.log
    old = exported.read_text()
    filler = tiny_disk / "filler"
    with open(filler, "wb", buffering=0) as handle, contextlib.suppress(OSError):  # to the last block
        while True:
            handle.write(b"x" * 1024)
    lines = "\n".join(f"10.1.{i // 256}.{i % 256}" for i in range(2000))
    assert run_cli("import", "--zone", ZONE, "--type", "plain", "-", db=db, input=lines).returncode == 0
    error = f"export: {exported}: cannot write: No space left on device; the previous file stays"
    assert poll(lambda: error in server.log, timeout=15), server.log
    assert exported.read_text() == old
    assert sorted(p.name for p in out.iterdir()) == sorted([STATUS, exported.name])  # no temp file left
    filler.unlink()
    assert poll(lambda: "10.1.7.207 " in exported.read_text(), timeout=15), server.log
    assert read_status(out)["zones"][ZONE]["error"] is None


def test_a_missing_parent_folder_is_logged_and_retried(servers, db, tmp_path):  # type: ignore[no-untyped-def]
    fill(db)
    out = tmp_path / "mnt" / "export"  # the parent of DIR is missing: an unmounted volume, say
    server = start(servers, db, config(tmp_path, out), "2")
    assert poll(lambda: f"{out}: cannot create the export folder: No such file or directory" in server.log)
    assert not out.exists()
    (tmp_path / "mnt").mkdir()
    assert poll((out / f"{ZONE}.combined").exists, timeout=15), server.log


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ('interval = "1s"', "[export]: directory is required"),
        (
            'directory = "/tmp/x"\nformat = "csv"',
            "format must be one of combined, ip4set, ip6trie, bind, not 'csv'",
        ),
        ('directory = "/tmp/x"\ninterval = "soon"', "[export]: interval: invalid duration 'soon'"),
        ('directory = "/tmp/x"\ninterval = "0s"', "interval must be longer than 0s"),
        ('directory = "/tmp/x"\nfolder = "y"', "[export]: unknown setting(s) folder"),
    ],
)
def test_bad_export_tables_are_one_line_and_exit_2(tmp_path, db, table, error):  # type: ignore[no-untyped-def]
    conf = tmp_path / "bad.toml"
    conf.write_text(f"[export]\n{table}\n")
    result = run_cli("serve", "--listen", "127.0.0.1:0", "--config", str(conf), db=db)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and error in result.stderr, result.stderr


def test_export_needs_a_database(tmp_path):  # type: ignore[no-untyped-def]
    conf = config(tmp_path, tmp_path / "out")
    spec = f"{ZONE}:ip4set:{Path(__file__).parent.parent / 'zones' / 'ip4set.example'}"
    result = run_cli("serve", "--listen", "127.0.0.1:0", "--config", str(conf), spec)
    assert result.returncode == 2 and "[export] needs a database" in result.stderr, result.stderr


def test_the_export_folder_must_be_writable_by_the_user(servers, tmp_path):  # type: ignore[no-untyped-def]
    """With --user, a folder the user cannot write is a logged failure, retried, not a crash."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    top = Path(tempfile.mkdtemp(prefix="dnsbl-export-user-"))
    try:
        os.chmod(top, 0o755)
        data, out = top / "data", top / "export"
        data.mkdir()
        out.mkdir()
        os.chown(data, 65534, 65534)
        db = data / "list.sqlite"
        fill(db)
        for path in data.iterdir():
            os.chown(path, 65534, 65534)
        conf = config(top, out)
        server = Server(["--db", str(db), "--config", str(conf), "--user", "nobody", "--workers", "2"])
        servers.append(server)
        assert poll(lambda: "cannot write: Permission denied; the previous file stays" in server.log), (
            server.log
        )
        os.chown(out, 65534, 65534)
        assert poll((out / f"{ZONE}.combined").exists, timeout=15), server.log
        assert (out / f"{ZONE}.combined").stat().st_uid == 65534
    finally:
        shutil.rmtree(top, ignore_errors=True)
