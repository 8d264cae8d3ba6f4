"""Zone transfers out (AXFR, IXFR) and NOTIFY, against a real `dnsbl serve`, asked by dnspython.

What a transfer carries is compared with `dnsbl export --format bind` (both parsed by dns.zone); an
IXFR is applied to the zone a first AXFR gave and compared with a fresh AXFR.
"""

from __future__ import annotations

import base64
import socket
import time
from pathlib import Path

import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.xfr
import dns.zone
import pytest
from conftest import Server, poll, run_cli

ZONE = "bl.test"
ROWS = [
    ("10.0.0.0/8", "127.0.0.3", "net $"),
    ("!10.1.2.3", "", ""),
    ("192.0.2.5", "127.0.0.2", "single $"),
    ("198.51.100.7-198.51.100.9", "127.0.0.2", "short range $"),
    ("2001:db8::/64", "127.0.0.5", "v6 $"),
]
ALLOW = ("--allow-transfer", "127.0.0.1/32")


def load(db: Path, zone: str = ZONE, rows: list[tuple[str, str, str]] = ROWS) -> None:
    csv = "target,code,reason,source,expires\n" + "".join(f'{t},{c},"{r}",test,\n' for t, c, r in rows)
    done = run_cli("import", "-", "--zone", zone, "--type", "csv", db=db, input=csv)
    assert done.returncode == 0, done.stderr


def axfr(server: Server, zone: str = ZONE) -> dns.zone.Zone:
    got = dns.zone.Zone(zone)
    dns.query.inbound_xfr(server.host, got, port=server.port, timeout=30, lifetime=120)
    return got


def ixfr(server: Server, held: dns.zone.Zone) -> None:
    """IXFR from `held`'s serial, applied to it (dnspython follows an AXFR-style answer as well)."""
    query, _serial = dns.xfr.make_query(held)
    dns.query.inbound_xfr(server.host, held, query, port=server.port, timeout=30, lifetime=120)


def exported(db: Path, zone: str = ZONE) -> dns.zone.Zone:
    done = run_cli("export", "--zone", zone, "--format", "bind", db=db)
    assert done.returncode == 0, done.stderr
    return dns.zone.from_text(done.stdout, origin=zone, relativize=True)


def serial(zone: dns.zone.Zone) -> int:
    return zone.get_soa().serial


def served_serial(server: Server, zone: str = ZONE) -> int:
    return server.ask(zone, "SOA").answer[0][0].serial


def raw_xfr(
    server: Server, zone: str, rdtype: str = "AXFR", serial_: int | None = None
) -> list[dns.message.Message]:
    kwargs = {"serial": serial_} if serial_ is not None else {}
    return list(dns.query.xfr(server.host, zone, rdtype=rdtype, port=server.port, timeout=10, **kwargs))


def test_axfr_of_every_zone_equals_the_bind_export(db: Path, serve) -> None:  # type: ignore[no-untyped-def]
    load(db)
    load(db, "other.test", [("203.0.113.0/25", "127.0.0.4", "other $"), ("2001:db8:1::1", "127.0.0.2", "")])
    server = serve(*ALLOW)
    for zone in (ZONE, "other.test"):
        assert axfr(server, zone) == exported(db, zone), zone
    assert poll(lambda: "AXFR of bl.test serial" in server.log, 5)


def test_ixfr_after_add_remove_and_expiry_is_the_difference(db: Path, serve) -> None:  # type: ignore[no-untyped-def]
    load(db)
    server = serve(*ALLOW)
    held = axfr(server)
    steps = [
        ("add", "--zone", ZONE, "203.0.113.9", "--reason", "new $", "--code", "127.0.0.4"),
        ("remove", "--zone", ZONE, "192.0.2.5"),
        ("add", "--zone", ZONE, "10.9.0.0/16", "--expires", "3s", "--reason", "short-lived $"),
    ]
    for step in steps:
        before = serial(held)
        done = run_cli(*step, db=db)
        assert done.returncode == 0, done.stderr
        assert poll(lambda b=before: served_serial(server) != b, 10)
        time.sleep(0.5)  # the journal is written in the refresh right after the swap
        ixfr(server, held)
        assert serial(held) == served_serial(server)
        assert held == axfr(server), step
        assert held == exported(db)
    # the 10.9/16 entry expires: a serial change like any other, journalled
    before = serial(held)
    assert poll(lambda: served_serial(server) != before, 15)
    time.sleep(0.5)
    ixfr(server, held)
    assert held == axfr(server) == exported(db)
    assert held.get_node("*.9.10") is None
    assert poll(lambda: server.log.count("IXFR from serial") >= 4, 5)
    assert "the journal does not reach back" not in server.log


def test_ixfr_answers_condensed_soa_alone_and_whole_zone(db: Path, serve) -> None:  # type: ignore[no-untyped-def]
    load(db)
    server = serve(*ALLOW)
    first = served_serial(server)
    # a client already current: the SOA alone (RFC 1995 section 2)
    messages = raw_xfr(server, ZONE, "IXFR", first)
    answer = [rr for m in messages for rrset in m.answer for rr in rrset]
    assert len(answer) == 1 and answer[0].serial == first
    # a serial the journal does not reach (from before the server started): the whole zone
    messages = raw_xfr(server, ZONE, "IXFR", first - 1000)
    names = {rrset.name.to_text() for m in messages for rrset in m.answer}
    assert "5.2.0.192" in names and "*.10" in names
    assert poll(lambda: "the journal does not reach back: the whole zone" in server.log, 5)
    # two changes: one condensed difference, first SOA the new one, second the client's
    for target in ("203.0.113.1", "203.0.113.2"):
        run_cli("add", "--zone", ZONE, target, db=db)
    assert poll(lambda: served_serial(server) != first, 10)
    time.sleep(1)  # both changes served and journalled
    last = served_serial(server)
    messages = poll(lambda: (m := raw_xfr(server, ZONE, "IXFR", first)) and len(m[0].answer) > 1 and m, 10)
    rrs = [(rrset.name.to_text(), rrset.rdtype, rr) for m in messages for rrset in m.answer for rr in rrset]
    soas = [rr.serial for _n, t, rr in rrs if t == 6]
    assert soas == [last, first, last, last]
    added = {n for n, t, _rr in rrs if t == 1}
    assert added == {"1.113.0.203", "2.113.0.203"}


def test_refused_clients_and_non_zones(db: Path, serve) -> None:  # type: ignore[no-untyped-def]
    load(db)
    for args in [(), ("--allow-transfer", "192.0.2.0/24")]:
        server = serve(*args)
        for rdtype in ("AXFR", "IXFR"):
            query = dns.message.make_query(ZONE, rdtype)
            if rdtype == "IXFR":
                query = dns.message.make_query(ZONE, "IXFR")
                query.authority.append(dns.rrset.from_text(ZONE + ".", 0, "IN", "SOA", ". . 1 0 0 0 0"))
            reply = dns.query.tcp(query, server.host, port=server.port, timeout=5)
            assert reply.rcode() == dns.rcode.REFUSED, (args, rdtype)
        assert "AXFR of bl.test refused to 127.0.0.1: not in --allow-transfer" in server.log
        assert server.ask("2.0.0.127." + ZONE).rcode() == dns.rcode.NOERROR  # still serving
    allowed = serve(*ALLOW)
    reply = dns.query.tcp(
        dns.message.make_query("nothere.test", "AXFR"), allowed.host, port=allowed.port, timeout=5
    )
    assert reply.rcode() == dns.rcode.NOTAUTH
    reply = dns.query.tcp(
        dns.message.make_query("5.2.0.192." + ZONE, "AXFR"), allowed.host, port=allowed.port, timeout=5
    )
    assert reply.rcode() == dns.rcode.NOTAUTH
    # AXFR over UDP: REFUSED; an allowed IXFR over UDP: the SOA alone
    reply = dns.query.udp(dns.message.make_query(ZONE, "AXFR"), allowed.host, port=allowed.port, timeout=5)
    assert reply.rcode() == dns.rcode.REFUSED


def _big_zone(db: Path, count: int) -> None:
    """`count` single addresses, every fourth one (no range merges them): `count` names."""
    rows = [(f"11.{i >> 14}.{i >> 6 & 255}.{(i & 63) * 4}", "127.0.0.2", "") for i in range(count)]
    load(db, ZONE, rows)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_client_leaving_mid_axfr_disturbs_nothing(db: Path, serve, workers: str) -> None:  # type: ignore[no-untyped-def]
    _big_zone(db, 200_000)
    server = serve(*ALLOW, "--workers", workers)
    query = dns.message.make_query(ZONE, "AXFR").to_wire()
    stalled = []
    for _ in range(3):  # three secondaries that stop reading after the first bytes, then hang up
        sock = socket.create_connection((server.host, server.port), timeout=60)
        sock.sendall(len(query).to_bytes(2, "big") + query)
        assert len(sock.recv(65536)) > 1000  # the transfer started
        stalled.append(sock)
    for address in ("2.0.0.127", "0.0.0.11", "4.0.0.11"):  # answered while they stall
        assert server.ask(f"{address}.{ZONE}").rcode() == dns.rcode.NOERROR
    for sock in stalled:
        sock.close()
    assert server.ask("2.0.0.127." + ZONE).rcode() == dns.rcode.NOERROR
    assert poll(lambda: server.log.count("the client went away") == 3, 30), server.log[-2000:]
    messages, records, elapsed = _raw_axfr(server, query)
    print(f"AXFR of {records} records in {messages} messages, --workers {workers}: {elapsed:.1f} s")
    assert records == 200_000 + 5  # SOA, NS, the two test point records, SOA
    assert server.ask("2.0.0.127." + ZONE).rcode() == dns.rcode.NOERROR
    assert server.proc.poll() is None


def _raw_axfr(server: Server, query: bytes) -> tuple[int, int, float]:
    """A whole AXFR read as bytes (dnspython would take most of the time parsing 200k records): the
    messages and records (ANCOUNT) up to the message that ends with the zone's SOA."""
    soa = server.ask(ZONE, "SOA").answer[0][0]
    tail = b"".join(
        t.to_bytes(4, "big") for t in (soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum)
    )
    started = time.monotonic()
    messages = records = 0
    with socket.create_connection((server.host, server.port), timeout=60) as sock:
        sock.sendall(len(query).to_bytes(2, "big") + query)
        reader = sock.makefile("rb")
        while True:
            size = int.from_bytes(reader.read(2), "big")
            message = reader.read(size)
            assert size and len(message) == size, "the transfer ended early"
            messages += 1
            records += int.from_bytes(message[6:8], "big")
            if message.endswith(tail) and records > 1:  # the closing SOA (the first one opens)
                last = dns.message.from_wire(message)
                assert last.answer[-1].rdtype == dns.rdatatype.SOA
                return messages, records, time.monotonic() - started


def test_axfr_with_workers_equals_the_export(db: Path, serve) -> None:  # type: ignore[no-untyped-def]
    load(db)
    server = serve(*ALLOW, "--workers", "2")
    held = axfr(server)
    assert held == exported(db)
    before = serial(held)
    run_cli("add", "--zone", ZONE, "203.0.113.77", db=db)
    assert poll(lambda: served_serial(server) != before, 10)
    # the journal is written by the trap/ops process; each worker answers the IXFR from it
    assert poll(lambda: _ixfr_current(server, held), 10)
    assert held == exported(db)


def _ixfr_current(server: Server, held: dns.zone.Zone) -> bool:
    ixfr(server, held)
    return serial(held) == served_serial(server)


# --- NOTIFY ---------------------------------------------------------------------------------------


def _notify_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    return sock


def _received(sock: socket.socket, seconds: float, answer: bool) -> list[dns.message.Message]:
    got = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data, peer = sock.recvfrom(4096)
        except TimeoutError:
            continue
        message = dns.message.from_wire(data)
        got.append(message)
        if answer:
            sock.sendto(dns.message.make_response(message).to_wire(), peer)
    return got


def test_notify_after_add_is_coalesced_and_answered(db: Path, serve) -> None:  # type: ignore[no-untyped-def]
    load(db)
    with _notify_socket() as sock:
        server = serve(*ALLOW, "--notify", f"127.0.0.1:{sock.getsockname()[1]}")
        assert _received(sock, 1.5, True) == []  # no change, no NOTIFY
        for target in ("203.0.113.1", "203.0.113.2", "203.0.113.3"):
            run_cli("add", "--zone", ZONE, target, db=db)
        got = _received(sock, 6, True)
        assert 1 <= len(got) <= 2, [m.answer for m in got]  # three changes, coalesced
        assert all(
            m.opcode() == dns.opcode.NOTIFY and m.question[0].name.to_text() == ZONE + "." for m in got
        )
        assert got[-1].answer[0][0].serial == served_serial(server)
        assert poll(lambda: "answered" in server.log, 5)


def test_notify_without_reply_is_retried_then_given_up(db: Path, serve) -> None:  # type: ignore[no-untyped-def]
    load(db)
    with _notify_socket() as sock:
        server = serve(*ALLOW, "--notify", f"127.0.0.1:{sock.getsockname()[1]}")
        run_cli("add", "--zone", ZONE, "203.0.113.1", db=db)
        # sent after 1 s, then retried after waits of 2, 4 and 8 s; given up 16 s after the last
        got = _received(sock, 34, False)
        assert len(got) == 4, len(got)
        assert len({m.id for m in got}) == 4
        assert {m.answer[0][0].serial for m in got} == {served_serial(server)}
        assert poll(lambda: "no reply after 4 attempts" in server.log, 5), server.log


# --- TSIG (RFC 8945) ------------------------------------------------------------------------------

SECRET = "c2VjcmV0LXRyYW5zZmVyLWtleS0zMi1ieXRlcy1sb25n"
KEY = dns.tsig.Key("xfr.test.", base64.b64decode(SECRET), "hmac-sha256")


def _signed_axfr(server: Server, key: dns.tsig.Key) -> list[dns.message.Message]:
    """dnspython verifies every message of the answer (it raises on a missing or bad signature)."""
    return list(
        dns.query.xfr(
            server.host,
            ZONE,
            port=server.port,
            timeout=10,
            lifetime=60,
            keyring={key.name: key},
            keyname=key.name,
            keyalgorithm=key.algorithm,
        )
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_tsig_required_signs_every_message(db: Path, serve, workers: str) -> None:  # type: ignore[no-untyped-def]
    _big_zone(db, 3000)  # several messages
    server = serve(*ALLOW, "--tsig-key", f"xfr.test:hmac-sha256:{SECRET}", "--workers", workers)
    messages = _signed_axfr(server, KEY)
    assert len(messages) > 3
    assert all(m.had_tsig for m in messages)
    held = dns.zone.Zone(ZONE)
    query, _ = dns.xfr.make_query(held, serial=None, keyring={KEY.name: KEY}, keyname=KEY.name)
    dns.query.inbound_xfr(server.host, held, query, port=server.port, timeout=10)
    assert held == exported(db)
    # unsigned: REFUSED; unknown key: NOTAUTH/BADKEY; wrong secret: NOTAUTH/BADSIG; all logged
    unsigned = dns.query.tcp(dns.message.make_query(ZONE, "AXFR"), server.host, port=server.port, timeout=5)
    assert unsigned.rcode() == dns.rcode.REFUSED
    for key, error in [
        (dns.tsig.Key("other.test.", KEY.secret, "hmac-sha256"), dns.tsig.PeerBadKey),
        (dns.tsig.Key("xfr.test.", b"not the secret", "hmac-sha256"), dns.tsig.PeerBadSignature),
        (dns.tsig.Key("xfr.test.", KEY.secret, "hmac-sha512"), dns.tsig.PeerBadKey),
    ]:
        with pytest.raises(error):
            _signed_axfr(server, key)
    assert poll(lambda: server.log.count("refused to 127.0.0.1") >= 4, 5)
    log = server.log
    assert "not signed with the TSIG key" in log and "bad TSIG signature" in log and "unknown TSIG key" in log
    assert server.ask("2.0.0.127." + ZONE).rcode() == dns.rcode.NOERROR


def test_a_bad_tsig_key_stops_the_start(db: Path) -> None:
    load(db)
    for spec, said in [
        ("xfr.test:hmac-sha256:not base64!", "not base64"),
        ("xfr:nope-md9:c2VjcmV0", "unknown algorithm"),
        ("justaname", "NAME:ALGORITHM:BASE64"),
    ]:
        done = run_cli(
            "serve", "--listen", "127.0.0.1:0", "--allow-transfer", "127.0.0.1", "--tsig-key", spec, db=db
        )
        assert done.returncode == 2 and said in done.stderr, done.stderr
