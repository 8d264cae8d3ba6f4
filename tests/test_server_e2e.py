"""End to end: a real `dnsbl serve` process on loopback, asked by dnspython over UDP and TCP, fed by
the real `dnsbl` CLI writing to a real SQLite file."""

from __future__ import annotations

import socket
import struct
import time

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest
from conftest import poll, rcode, run_cli, values

ZONE = "bl.example.org"


def name(ip: str, zone: str = ZONE) -> str:
    return ".".join(reversed(ip.split("."))) + "." + zone


def nibbles(ip6: str, zone: str = ZONE) -> str:
    import ipaddress

    full = ipaddress.IPv6Address(ip6).exploded.replace(":", "")
    return ".".join(reversed(full)) + "." + zone


@pytest.fixture
def listed(db):  # type: ignore[no-untyped-def]
    result = run_cli(
        "add", "--zone", ZONE, "203.0.113.7", "--code", "2", "--reason", "Listed: $ see $$5", db=db
    )
    assert result.returncode == 0, result.stderr
    assert (
        run_cli(
            "add", "--zone", ZONE, "198.51.100.0/24", "--code", "3", "--reason", "net $", db=db
        ).returncode
        == 0
    )
    assert run_cli("add", "--zone", ZONE, "--exclude", "198.51.100.77", db=db).returncode == 0
    assert (
        run_cli("add", "--zone", ZONE, "2001:db8:1::/48", "--code", "4", "--reason", "v6 $", db=db).returncode
        == 0
    )
    return db


@pytest.mark.parametrize("tcp", [False, True])
def test_listed_unlisted_excluded(serve, listed, tcp):  # type: ignore[no-untyped-def]
    server = serve()
    reply = server.ask(name("203.0.113.7"), "A", tcp=tcp)
    assert rcode(reply) == "NOERROR" and values(reply, "A") == ["127.0.0.2"]
    assert reply.flags & dns.flags.AA
    reply = server.ask(name("203.0.113.7"), "TXT", tcp=tcp)
    assert values(reply, "TXT") == ['"Listed: 203.0.113.7 see $5"']
    reply = server.ask(name("198.51.100.9"), "ANY", tcp=tcp)
    assert values(reply, "A") == ["127.0.0.3"] and values(reply, "TXT") == ['"net 198.51.100.9"']
    for unlisted in ("198.51.100.77", "203.0.113.8"):
        reply = server.ask(name(unlisted), "A", tcp=tcp)
        assert rcode(reply) == "NXDOMAIN"
        soa = reply.authority[0]
        assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == 600


def test_ipv6_and_mapped_and_test_points(serve, listed):  # type: ignore[no-untyped-def]
    server = serve()
    reply = server.ask(nibbles("2001:db8:1::5"), "TXT")
    assert values(reply, "TXT") == ['"v6 2001:db8:1::5"']
    assert rcode(server.ask(nibbles("2001:db8:2::5"), "A")) == "NXDOMAIN"
    assert values(server.ask(nibbles("::ffff:203.0.113.7"), "A"), "A") == ["127.0.0.2"]
    assert values(server.ask(name("127.0.0.2"), "A"), "A") == ["127.0.0.2"]
    assert "test point" in values(server.ask(name("127.0.0.2"), "TXT"), "TXT")[0].lower()
    assert rcode(server.ask(name("127.0.0.1"), "A")) == "NXDOMAIN"
    assert values(server.ask(nibbles("::ffff:7f00:2"), "A"), "A") == ["127.0.0.2"]
    assert rcode(server.ask(nibbles("::ffff:7f00:1"), "A")) == "NXDOMAIN"


def test_apex_partial_refused_and_case(serve, listed):  # type: ignore[no-untyped-def]
    server = serve()
    soa = server.ask(ZONE, "SOA")
    assert soa.answer[0].rdtype == dns.rdatatype.SOA
    assert values(server.ask(ZONE, "NS"), "NS") == [f"ns.{ZONE}."]
    partial = server.ask("113.0.203." + ZONE, "A")
    assert rcode(partial) == "NOERROR" and not partial.answer and partial.authority
    assert rcode(server.ask("114.0.203." + ZONE, "A")) == "NXDOMAIN"
    assert rcode(server.ask("7.113.0.203.example.com", "A")) == "REFUSED"
    mixed = server.ask("7.113.0.203.Bl.ExAmPle.ORG", "A")
    assert mixed.answer[0].name.to_text() == "7.113.0.203.Bl.ExAmPle.ORG."
    assert rcode(server.ask("1.7.113.0.203." + ZONE, "A")) == "NXDOMAIN"


def test_change_by_cli_served_within_a_second(serve, listed, db):  # type: ignore[no-untyped-def]
    server = serve()
    target = name("192.0.2.44")
    assert rcode(server.ask(target)) == "NXDOMAIN"
    before = server.ask(ZONE, "SOA").answer[0][0].serial
    assert run_cli("add", "--zone", ZONE, "192.0.2.44", "--code", "5", db=db).returncode == 0
    added = time.monotonic()
    assert poll(lambda: values(server.ask(target), "A") == ["127.0.0.5"], timeout=10)
    assert time.monotonic() - added < 1.5  # generous: the promise is 1 s from commit
    # polled: the SOA may come from the other worker, which can serve the commit one round later
    assert poll(lambda: server.ask(ZONE, "SOA").answer[0][0].serial > before, timeout=10)
    result = run_cli("remove", "--zone", ZONE, "192.0.2.44", db=db)
    assert result.returncode == 0
    assert poll(lambda: rcode(server.ask(target)) == "NXDOMAIN", timeout=10)


def test_expiry_stops_answering_and_moves_serial(serve, listed, db):  # type: ignore[no-untyped-def]
    server = serve()
    assert run_cli("add", "--zone", ZONE, "192.0.2.99", "--expires", "3s", db=db).returncode == 0
    assert poll(lambda: values(server.ask(name("192.0.2.99")), "A") == ["127.0.0.2"])
    serial = server.ask(ZONE, "SOA").answer[0][0].serial
    assert poll(lambda: rcode(server.ask(name("192.0.2.99"))) == "NXDOMAIN", timeout=10)
    assert poll(lambda: server.ask(ZONE, "SOA").answer[0][0].serial > serial, timeout=5)


def test_several_zones_each_its_own_list(serve, db):  # type: ignore[no-untyped-def]
    assert run_cli("add", "--zone", "bl.example.org", "192.0.2.1", db=db).returncode == 0
    assert run_cli("add", "--zone", "bl-test.example.org", "192.0.2.2", db=db).returncode == 0
    server = serve()
    assert rcode(server.ask(name("192.0.2.1", "bl.example.org"))) == "NOERROR"
    assert rcode(server.ask(name("192.0.2.2", "bl.example.org"))) == "NXDOMAIN"
    assert rcode(server.ask(name("192.0.2.2", "bl-test.example.org"))) == "NOERROR"
    assert rcode(server.ask(name("192.0.2.1", "bl-test.example.org"))) == "NXDOMAIN"


def test_empty_database_gets_demo_zone_only_once(serve, db):  # type: ignore[no-untyped-def]
    server = serve()
    assert values(server.ask(name("203.0.113.7")), "A") == ["127.0.0.2"]
    server.stop()
    assert run_cli("remove", "--zone", ZONE, "203.0.113.7", db=db).returncode == 0
    server = serve()
    assert rcode(server.ask(name("203.0.113.7"))) == "NXDOMAIN"  # not re-seeded


def test_zone_created_by_serve(serve, db):  # type: ignore[no-untyped-def]
    server = serve("--zone", "dnsbl.example.net")
    assert rcode(server.ask("dnsbl.example.net", "SOA")) == "NOERROR"
    assert rcode(server.ask(name("192.0.2.1", "dnsbl.example.net"))) == "NXDOMAIN"
    assert values(server.ask(name("127.0.0.2", "dnsbl.example.net")), "A") == ["127.0.0.2"]


def test_edns_and_truncation_over_udp_then_tcp(serve, db):  # type: ignore[no-untyped-def]
    reason = "x" * 200
    for code in range(2, 12):
        assert (
            run_cli(
                "add",
                "--zone",
                ZONE,
                "192.0.2.10",
                "--source",
                f"s{code}",
                "--code",
                str(code),
                "--reason",
                f"{code} {reason}",
                db=db,
            ).returncode
            == 0
        )
    server = serve()
    plain = server.ask(name("192.0.2.10"), "TXT")
    assert plain.flags & dns.flags.TC and not plain.answer
    edns = server.ask(name("192.0.2.10"), "A", use_edns=0, payload=4096, want_dnssec=True)
    assert edns.edns == 0 and edns.payload == 1232 and edns.ednsflags & dns.flags.DO
    assert len(values(edns, "A")) == 10
    whole = server.ask(name("192.0.2.10"), "TXT", tcp=True)
    assert len(values(whole, "TXT")) == 10


def test_tcp_many_queries_one_connection_and_chunked(serve, listed):  # type: ignore[no-untyped-def]
    server = serve()
    queries = [dns.message.make_query(name(ip), "A") for ip in ("203.0.113.7", "203.0.113.8", "198.51.100.1")]
    stream = b"".join(len(w).to_bytes(2, "big") + w for w in (q.to_wire() for q in queries))
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        for i in range(len(stream)):  # one byte at a time
            sock.sendall(stream[i : i + 1])
        replies = [dns.query.receive_tcp(sock, expiration=time.time() + 5)[0] for _ in queries]
    assert [r.id for r in replies] == [q.id for q in queries]
    assert [rcode(r) for r in replies] == ["NOERROR", "NXDOMAIN", "NOERROR"]


def test_bad_packets_never_kill_the_server(serve, listed):  # type: ignore[no-untyped-def]
    server = serve()
    good = dns.message.make_query(name("203.0.113.7"), "A").to_wire()
    header = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0)
    bad = [
        b"",
        b"\x00",
        good[:11],
        good[:20],
        header + b"\xc0\x0c\x00\x01\x00\x01",
        header + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",
        bytes([good[0], good[1], good[2] | 0x80]) + good[3:],  # QR set
        struct.pack("!HHHHHH", 8, 0x0100, 0, 0, 0, 0),
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        for packet in bad:
            sock.sendto(packet, (server.host, server.port))
            try:
                reply = sock.recv(4096)
            except TimeoutError:
                continue
            assert reply[2] & 0x80 and reply[3] & 0xF in (1, 4)  # a response: FORMERR or NOTIMP
    assert values(server.ask(name("203.0.113.7")), "A") == ["127.0.0.2"]
    assert server.proc.poll() is None


def test_sigterm_stops_cleanly(serve, listed):  # type: ignore[no-untyped-def]
    server = serve()
    assert server.stop() == 0


def test_dig_as_a_second_client(serve, listed):  # type: ignore[no-untyped-def]
    import shutil
    import subprocess

    dig = shutil.which("dig")
    assert dig, "dig is needed (apt-get install dnsutils; .ci/run does it)"
    server = serve()

    def run(*args: str) -> str:
        out = subprocess.run(
            [dig, "@" + server.host, "-p", str(server.port), "+time=3", "+tries=1", *args],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout

    assert run("+short", name("203.0.113.7"), "A").split() == ["127.0.0.2"]
    assert run("+short", "+tcp", name("203.0.113.7"), "TXT").strip() == '"Listed: 203.0.113.7 see $5"'
    assert "status: NXDOMAIN" in run(name("203.0.113.8"), "A")
    assert "status: NOERROR" in run("113.0.203." + ZONE, "A")


def test_listens_on_ipv6_loopback_too(serve, listed):  # type: ignore[no-untyped-def]
    import re

    server = serve("--listen", "[::1]:0")
    match = re.search(r"listening on \[::1\]:(\d+) ", server.log)
    assert match, server.log
    query = dns.message.make_query(name("203.0.113.7"), "A")
    for send in (dns.query.udp, dns.query.tcp):
        reply = send(query, "::1", port=int(match.group(1)), timeout=5)
        assert values(reply, "A") == ["127.0.0.2"]
