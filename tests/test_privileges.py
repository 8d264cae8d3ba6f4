"""`dnsbl serve --user NAME[:GROUP]`: sockets bound as root, then every process runs as the user.

The tests run as root (CI does); a real server is started as `nobody` on a database in a folder that
user owns, and the kernel (/proc/PID/status) says who each process is."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest
from conftest import Server, poll, rcode, run_cli, values
from test_workers import children

from dnsbl_server.errors import ConfigError
from dnsbl_server.privileges import parse_user

ZONE = "bl.example.org"
NOBODY = pwd.getpwnam("nobody")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root (CI runs as root)")


@pytest.fixture
def home() -> Iterator[Path]:
    """A folder `nobody` can reach (pytest's tmp_path is root's alone), with data/ owned by nobody."""
    top = Path(tempfile.mkdtemp(prefix="dnsbl-user-"))
    os.chmod(top, 0o755)
    (top / "data").mkdir()
    os.chown(top / "data", NOBODY.pw_uid, NOBODY.pw_gid)
    yield top
    shutil.rmtree(top, ignore_errors=True)


def ids(pid: int) -> dict[str, list[int]]:
    """Uid, Gid (real, effective, saved, filesystem) and Groups of a live process, from the kernel."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            found[key] = [int(n) for n in rest.split()]
    return found


def name(ip: str) -> str:
    return ".".join(reversed(ip.split("."))) + "." + ZONE


def test_parse_user_names_numbers_and_groups() -> None:
    nogroup = grp.getgrgid(NOBODY.pw_gid).gr_name
    assert parse_user("nobody") == parse_user(str(NOBODY.pw_uid))
    assert (parse_user("nobody").uid, parse_user("nobody").gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    assert str(parse_user("nobody")) == f"nobody:{nogroup}"
    assert parse_user("nobody:root").gid == 0
    assert parse_user("nobody:0").group == "root"
    for bad, what in (
        ("nosuchuser", "unknown user"),
        ("nobody:nosuchgroup", "unknown group"),
        (":x", "give"),
    ):
        with pytest.raises(ConfigError, match=what):
            parse_user(bad)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_every_process_runs_as_the_user_and_answers(servers, home, workers):  # type: ignore[no-untyped-def]
    db = home / "data" / "list.sqlite"
    assert run_cli("add", "--zone", ZONE, "192.0.2.7", "--code", "3", db=db).returncode == 0  # as root
    for path in home.joinpath("data").iterdir():
        os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    server = Server(["--db", str(db), "--user", "nobody", "--workers", workers])
    servers.append(server)
    assert values(server.ask(name("192.0.2.7")), "A") == ["127.0.0.3"]
    processes = {server.proc.pid} | children(server.proc.pid)
    assert len(processes) == (1 if workers == "1" else 3), processes
    for pid in processes:
        assert ids(pid) == {
            "Uid": [NOBODY.pw_uid] * 4,
            "Gid": [NOBODY.pw_gid] * 4,
            "Groups": [NOBODY.pw_gid],
        }, pid
    assert "running as user nobody" in server.log
    # root's CLI writes to the database the server (as nobody) follows
    assert run_cli("add", "--zone", ZONE, "192.0.2.8", "--code", "4", db=db).returncode == 0
    assert poll(lambda: values(server.ask(name("192.0.2.8")), "A") == ["127.0.0.4"], timeout=10)
    assert rcode(server.ask(name("192.0.2.9"))) == "NXDOMAIN"


def test_unknown_user_or_group_is_one_line_and_exit_2(home) -> None:  # type: ignore[no-untyped-def]
    for user, what in (("nosuchuser", "unknown user 'nosuchuser'"), ("nobody:nosuchgroup", "unknown group")):
        result = run_cli(
            "serve", "--listen", "127.0.0.1:0", "--db", str(home / "data" / "x.sqlite"), "--user", user
        )
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and what in result.stderr, result.stderr
    assert not (home / "data" / "x.sqlite").exists()  # stopped before anything was opened


def test_a_database_the_user_cannot_write_stops_the_start(home) -> None:  # type: ignore[no-untyped-def]
    db = home / "data" / "list.sqlite"
    assert run_cli("add", "--zone", ZONE, "192.0.2.7", db=db).returncode == 0  # root's file
    result = run_cli(
        "serve", "--listen", "127.0.0.1:0", "--db", str(db), "--user", "nobody", "--workers", "1"
    )
    assert result.returncode == 2
    assert f"dnsbl: error: {db}: not writable by user nobody (owner root): chown nobody {db}" in result.stderr
    os.chown(db, NOBODY.pw_uid, NOBODY.pw_gid)
    os.chown(home / "data", 0, 0)  # the folder: SQLite makes -wal and -shm there
    result = run_cli(
        "serve", "--listen", "127.0.0.1:0", "--db", str(db), "--user", "nobody", "--workers", "1"
    )
    assert result.returncode == 2
    assert "folder of the database not writable by user nobody (owner root)" in result.stderr, result.stderr


def test_only_root_may_change_user() -> None:
    """In a process that is really nobody (Python loaded as root, then setuid: nobody cannot read this
    machine's interpreter), asking for another user is refused; asking for itself is nothing to do."""
    script = """
import os
from dnsbl_server.errors import ConfigError
from dnsbl_server.privileges import drop, parse_user
root, nobody = parse_user("root"), parse_user("nobody")
os.setgroups([nobody.gid]); os.setgid(nobody.gid); os.setuid(nobody.uid)
drop(nobody)
try:
    drop(root)
except ConfigError as error:
    print(error)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "--user root: only root can change to another user (running as uid 65534)\n"


def _port_53_free() -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", 53))
            except OSError:
                return False
    return True


def test_port_53_bound_as_root_then_served_as_nobody(servers, home):  # type: ignore[no-untyped-def]
    if not _port_53_free():
        pytest.skip("127.0.0.1:53 is taken on this machine")
    db = home / "data" / "list.sqlite"
    server = Server(["--db", str(db), "--listen", "127.0.0.1:53", "--user", "nobody", "--workers", "2"])
    servers.append(server)
    query = dns.message.make_query(name("203.0.113.7"), "A")  # the demo zone's listing
    reply = dns.query.udp(query, "127.0.0.1", port=53, timeout=5)
    assert values(reply, "A") == ["127.0.0.2"]
    for pid in {server.proc.pid} | children(server.proc.pid):
        assert ids(pid)["Uid"] == [NOBODY.pw_uid] * 4


def test_the_trap_and_transfers_work_as_the_user(servers, home):  # type: ignore[no-untyped-def]
    """What the trap/ops process imports only when first needed (the scheduler, the zone dump for a
    transfer) is there after the drop, even from a Python installation the user cannot read."""
    db = home / "data" / "list.sqlite"
    assert run_cli("add", "--zone", ZONE, "192.0.2.7", db=db).returncode == 0
    maildir = home / "data" / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    bounce = Path(__file__).parent / "data" / "bounces" / "bounce_email" / "bounces" / "tt_bounce_03.txt"
    shutil.copy(bounce, maildir / "new" / "1.trap")  # its relay (LABELS.tsv): 80.232.168.212
    for path in [*home.joinpath("data").rglob("*")]:
        os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    conf = home / "dnsbl.toml"
    conf.write_text(f'[ingest]\nzone = "{ZONE}"\ninterval = "1s"\nmaildirs = ["{maildir}"]\n')
    server = Server(
        ["--db", str(db), "--config", str(conf), "--user", "nobody", "--workers", "2",
         "--allow-transfer", "127.0.0.1/32"]
    )  # fmt: skip
    servers.append(server)
    listed = poll(lambda: values(server.ask(name("80.232.168.212")), "A") == ["127.0.0.2"], timeout=30)
    assert listed, server.log
    owners: set[str] = set()

    def transferred() -> bool:  # polled: the AXFR's worker may serve the trap's listing a round later
        axfr = dns.query.xfr(server.host, ZONE, port=server.port, timeout=10)
        owners.clear()
        owners.update(str(rr.name) for message in axfr for rr in message.answer)
        return {"7.2.0.192", "212.168.232.80"} <= owners  # (relative to the zone) the add and the trap's

    assert poll(transferred, timeout=10), owners
    assert "Traceback" not in server.log, server.log
