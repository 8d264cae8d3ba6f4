"""rbldnsd's acl dataset on a zone served from the SQLite list (issue 8, "Access control").

A real `dnsbl serve --db DB` with the acl given each way it can be: `ZONE:acl:FILE` and the global
`:acl:FILE` on the command line, and the same two in the config file's `datasets`. Each action is
asked from its own loopback client (Linux lets a socket send from any 127/8 address, as
tests/test_acl.py does), and the list's own answers are checked from a client no entry covers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import poll, rcode, run_cli, values
from rbldnsd import qname
from test_acl import ask_from

ZONE = "bl.example.org"
LISTED, UNLISTED = qname(4, "192.0.2.1", ZONE), qname(4, "192.0.2.99", ZONE)
ACL = (
    "127.0.0.2 :ignore\n"
    "127.0.0.3 :refuse\n"
    "127.0.0.4 :empty\n"
    "127.1.0.0/16 :refuse\n"
    "127.1.2.0/24 :pass\n"
    "127.0.0.6 :3:Resolver $ may not query this list\n"
)
FORMS = ["zone spec", "global spec", "config zone", "config global"]


@pytest.fixture
def listed_db(db: Path) -> Path:
    """A SQLite list of one zone that lists 192.0.2.1 (A 127.0.0.2, a TXT of its own)."""
    added = run_cli("add", "--zone", ZONE, "--reason", "Listed: $", "192.0.2.1", db=db)
    assert added.returncode == 0, added.stderr
    return db


def start(serve, tmp_path: Path, form: str):  # type: ignore[no-untyped-def]
    """`dnsbl serve --db DB` with the acl file given in `form`."""
    acl = tmp_path / "clients.acl"
    acl.write_text(ACL)
    spec = f"{'' if 'global' in form else ZONE}:acl:{acl}"
    if form.startswith("config"):
        config = tmp_path / "dnsbl.toml"
        config.write_text(f'zones = ["{ZONE}"]\ndatasets = ["{spec}"]\n')
        return serve("--config", str(config))
    return serve(spec)


def answer(port: int, name: str, source: str, rdtype: str = "A", *, tcp: bool = False) -> str:
    """The reply in short: 'no reply', the rcode, or NOERROR with its A (or TXT) values."""
    reply = ask_from(port, name, rdtype, source, tcp=tcp, timeout=1.0 if source == "127.0.0.2" else 3.0)
    if reply is None:
        return "no reply"
    shown = values(reply, rdtype)
    return rcode(reply) + (" " + " ".join(shown) if shown else "")


@pytest.mark.parametrize("form", FORMS)
def test_each_action_on_a_sqlite_zone(serve, listed_db: Path, tmp_path: Path, form: str) -> None:
    server = start(serve, tmp_path, form)
    port = server.port
    # a client no entry covers, and one the longest prefix passes: the list as it is
    for client in ("127.0.0.1", "127.1.2.1"):
        assert answer(port, LISTED, client) == "NOERROR 127.0.0.2", (client, server.log)
        assert answer(port, LISTED, client, "TXT") == 'NOERROR "Listed: 192.0.2.1"', client
        assert answer(port, UNLISTED, client) == "NXDOMAIN", client
    # ignore: no reply at all, over UDP and TCP
    for tcp in (False, True):
        assert answer(port, LISTED, "127.0.0.2", tcp=tcp) == "no reply", tcp
        assert answer(port, LISTED, "127.0.0.3", tcp=tcp) == "REFUSED", tcp
    # refuse: the whole zone, its apex too; a /16 refused, except the /24 passed inside it
    assert answer(port, ZONE, "127.0.0.3", "SOA") == "REFUSED"
    assert answer(port, LISTED, "127.1.3.1") == "REFUSED"
    # empty: every address NXDOMAIN, the listed one too; the apex still answers
    assert answer(port, LISTED, "127.0.0.4") == "NXDOMAIN"
    assert answer(port, UNLISTED, "127.0.0.4") == "NXDOMAIN"
    assert answer(port, ZONE, "127.0.0.4", "SOA").startswith("NOERROR")
    # always listed: every address the zone could list, with the acl's A and TXT ($: the client)
    for name in (LISTED, UNLISTED):
        assert answer(port, name, "127.0.0.6") == "NOERROR 127.0.0.3", name
        assert (
            answer(port, name, "127.0.0.6", "TXT") == 'NOERROR "Resolver 127.0.0.6 may not query this list"'
        )


def test_zone_and_global_acl_together(serve, listed_db: Path, tmp_path: Path) -> None:
    """Both at once on a SQLite zone: a global refuse is not undone by the zone's pass, and a client
    the zone's acl does not name still gets the global acl's action (rbldnsd's order: ignore, refuse,
    then the zone's own)."""
    zone_acl, global_acl = tmp_path / "zone.acl", tmp_path / "global.acl"
    zone_acl.write_text("127.0.0.3 :pass\n127.0.0.4 :empty\n")
    global_acl.write_text("127.0.0.3 :refuse\n127.0.0.5 :ignore\n")
    server = serve(f"{ZONE}:acl:{zone_acl}", f":acl:{global_acl}")
    assert answer(server.port, LISTED, "127.0.0.3") == "REFUSED"
    assert answer(server.port, LISTED, "127.0.0.4") == "NXDOMAIN"
    assert answer(server.port, LISTED, "127.0.0.5") == "no reply"
    assert answer(server.port, LISTED, "127.0.0.1") == "NOERROR 127.0.0.2"


def test_the_list_changes_under_an_acl(serve, listed_db: Path, tmp_path: Path) -> None:
    """An address added to the SQLite list while the server runs: listed for a usual client, still
    NXDOMAIN for an `empty` one; the acl rides on the zone as the list is reloaded."""
    server = start(serve, tmp_path, "zone spec")
    new = qname(4, "192.0.2.50", ZONE)
    assert run_cli("add", "--zone", ZONE, "192.0.2.50", db=listed_db).returncode == 0
    assert poll(lambda: answer(server.port, new, "127.0.0.1") == "NOERROR 127.0.0.2", timeout=15), server.log
    assert answer(server.port, new, "127.0.0.4") == "NXDOMAIN"
    assert answer(server.port, new, "127.0.0.3") == "REFUSED"
    assert answer(server.port, new, "127.0.0.6") == "NOERROR 127.0.0.3"
