"""`dnsbl health` against real servers: healthy zones (SQLite test points, a data-file zone's SOA),
zones made unhealthy for real (not served: REFUSED; an acl that lists the asking host: 127.0.0.1
listed; an acl that ignores it: no reply), and nothing listening at all (health.py, cli_health.py)."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from conftest import Server, run_cli, start

from dnsbl_server.health import Probe, judge, probes

HEALTHY = re.compile(r"^(\S+): healthy \((.*); \d+ ms\)$")


def health(server: Server | str, *args: str, db: Path | None = None):  # type: ignore[no-untyped-def]
    address = server if isinstance(server, str) else f"{server.host}:{server.port}"
    return run_cli("health", "--server", address, *args, db=db)


def test_probes_and_verdicts() -> None:
    from dnslib import QTYPE, RCODE, RR, A, DNSRecord

    listed, unlisted = probes("bl.test", True)
    assert (listed.name, unlisted.name) == ("2.0.0.127.bl.test", "1.0.0.127.bl.test")
    assert probes("files.test", False) == [Probe("files.test", "files.test", "SOA", "soa")]
    reply = DNSRecord.question(listed.name).reply()
    reply.add_answer(RR(listed.name, QTYPE.A, rdata=A("127.0.0.2")))
    assert judge(listed, reply) == (None, "NOERROR 127.0.0.2")
    assert judge(unlisted, reply)[0] == "must not be listed (RFC 5782)"
    refused = DNSRecord.question(listed.name).reply()
    refused.header.rcode = RCODE.REFUSED
    assert judge(listed, refused) == ("must be listed (RFC 5782)", "REFUSED")
    assert judge(probes("files.test", False)[0], refused)[0] == "no SOA"


def test_every_zone_healthy(servers, db, tmp_path):  # type: ignore[no-untyped-def]
    for zone in ("bl.test", "other.test"):
        assert run_cli("add", "--zone", zone, "192.0.2.1", db=db).returncode == 0
    data = tmp_path / "feed.ip4set"
    data.write_text("192.0.2.0/24 :2:from a file\n")
    config = tmp_path / "dnsbl.toml"
    config.write_text(f'db = "{db}"\ndatasets = ["files.test:ip4set:{data}"]\nworkers = 2\n')
    server = start(servers, "--config", str(config))
    done = health(server, "--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [HEALTHY.match(line).group(1) for line in lines] == ["bl.test", "other.test", "files.test"]  # type: ignore[union-attr]
    assert "127.0.0.2 NOERROR 127.0.0.2, 127.0.0.1 NXDOMAIN" in lines[0]
    assert re.search(r"SOA NOERROR serial \d+", lines[2])
    one = health(server, "--db", str(db), "--zone", "OTHER.test.")
    assert one.returncode == 0 and one.stdout.startswith("other.test: healthy"), one.stdout


def test_a_zone_not_served_is_unhealthy(servers, db):  # type: ignore[no-untyped-def]
    for zone in ("bl.test", "gone.test"):
        assert run_cli("add", "--zone", zone, "192.0.2.1", db=db).returncode == 0
    server = start(servers, "--db", str(db), "--zone", "bl.test", "--workers", "1")  # gone.test: REFUSED
    done = health(server, db=db)
    assert done.returncode == 1, done.stdout + done.stderr
    healthy, broken = done.stdout.splitlines()
    assert healthy.startswith("bl.test: healthy")
    assert broken == (
        "gone.test: UNHEALTHY: 127.0.0.2 must be listed (RFC 5782), got REFUSED; "
        "127.0.0.1 must not be listed (RFC 5782), got REFUSED"
    )


def test_wrong_answers_and_silence_are_unhealthy(servers, db, tmp_path):  # type: ignore[no-untyped-def]
    for zone in ("listing.test", "silent.test", "fine.test"):
        assert run_cli("add", "--zone", zone, "192.0.2.1", db=db).returncode == 0
    listing = tmp_path / "listing.acl"
    listing.write_text("127.0.0.1 :2:Resolver $ is blocked\n")  # the host health asks from: "listed"
    silent = tmp_path / "silent.acl"
    silent.write_text("127.0.0.1 :ignore\n")
    server = start(
        servers, "--db", str(db), f"listing.test:acl:{listing}", f"silent.test:acl:{silent}", "--workers", "1"
    )
    done = health(server, "--timeout", "0.3", db=db)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert lines["fine.test"].startswith("healthy")
    wrong = "UNHEALTHY: 127.0.0.1 must not be listed (RFC 5782), got NOERROR 127.0.0.2"
    assert lines["listing.test"] == wrong
    silence = "no reply within 0.3s (asked twice)"
    assert lines["silent.test"] == f"UNHEALTHY: 127.0.0.2 {silence}; 127.0.0.1 {silence}"


def test_cannot_ask(db, tmp_path):  # type: ignore[no-untyped-def]
    assert run_cli("add", "--zone", "bl.test", "192.0.2.1", db=db).returncode == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = health(f"127.0.0.1:{port}", db=db)
    assert done.returncode == 2 and done.stderr == f"dnsbl: error: nothing answers on 127.0.0.1:{port}\n"
    bad = health("127.0.0.1:x", db=db)
    assert bad.returncode == 2 and "--server: invalid port" in bad.stderr
    empty = health("127.0.0.1:53", "--db", str(tmp_path / "none.sqlite"))
    assert empty.returncode == 2 and "no such database" in empty.stderr
    no_zones = run_cli("health", "--server", "127.0.0.1:53", env={"XDG_DATA_HOME": str(tmp_path)})
    assert no_zones.returncode == 2 and "no zones to check" in no_zones.stderr
