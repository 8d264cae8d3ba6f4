"""The rbldnsd harness itself: it starts the real rbldnsd on the worked examples in zones/, asks it, and
`compare` tells agreeing replies from disagreeing ones. The differential tests stand on this."""

from __future__ import annotations

import os
import re
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from rbldnsd import Rbldnsd, boundary_addresses, compare, qname, rbldnsd_binary

ZONES = Path(__file__).resolve().parent.parent / "zones"
ZONE = "bl.example.org"
BAD_LINE = re.compile(r"^rbldnsd: file ", re.MULTILINE)  # `file NAME(LINE): problem`: a load warning


def values(message: dns.message.Message, rdtype: str) -> list[str]:
    return sorted(
        rdata.to_text()
        for rrset in message.answer
        if rrset.rdtype == dns.rdatatype.from_text(rdtype)
        for rdata in rrset
    )


@pytest.mark.parametrize("kind", ["ip4set", "ip4trie", "ip6trie", "ip4tset", "ip6tset"])
def test_every_example_loads_without_warnings(kind: str) -> None:
    example = ZONES / f"{kind}.example"
    assert example.read_text().startswith("# "), "an example opens with what it demonstrates"
    with Rbldnsd([(ZONE, kind, [example])]) as server:
        assert server.ask(ZONE, "SOA").rcode() == dns.rcode.NOERROR
        assert not BAD_LINE.search(server.log), server.log


def test_ip4set_listed_unlisted_and_compare() -> None:
    with Rbldnsd([(ZONE, "ip4set", [ZONES / "ip4set.example"])]) as server:
        listed = server.ask(qname(4, "192.0.2.10", ZONE), "ANY")
        assert values(listed, "A") == ["127.0.0.3"]
        assert values(listed, "TXT") == ['"Listed with code 3: 192.0.2.10"']
        unlisted = server.ask(qname(4, 0xC0000203, ZONE), "A")  # 192.0.2.3
        assert unlisted.rcode() == dns.rcode.NXDOMAIN
        assert compare(listed, server.ask(qname(4, "192.0.2.10", ZONE), "ANY")) == []
        differences = compare(listed, unlisted)
        assert [line.split(":")[0] for line in differences] == ["rcode", "A", "TXT"]


def test_ip6trie_with_a_32_nibble_name() -> None:
    with Rbldnsd([(ZONE, "ip6trie", [ZONES / "ip6trie.example"])]) as server:
        name = qname(6, "2001:db8:def7:4242::1", ZONE)
        assert len(name.removesuffix("." + ZONE).split(".")) == 32
        listed = server.ask(name, "TXT")
        assert values(listed, "TXT") == ['"This one smells funny"']
        assert values(server.ask(name, "A"), "A") == ["127.0.1.3"]
        unlisted = server.ask(qname(6, "2001:db8:42::bead", ZONE), "TXT")  # excluded
        assert unlisted.rcode() == dns.rcode.NXDOMAIN
        assert compare(listed, server.ask(name, "TXT")) == []
        assert compare(listed, unlisted) != []


def test_copies_keep_mtime_so_a_zero_serial_is_the_source_files() -> None:
    example = ZONES / "ip4set.example"  # $SOA ... 0 ...: the serial is the newest data file's mtime
    with Rbldnsd(
        [(ZONE, "ip4set", [example]), ("v6." + ZONE, "ip6trie", [ZONES / "ip6trie.example"])]
    ) as server:
        soa = server.ask(ZONE, "SOA").answer[0][0]
        assert soa.serial == int(os.stat(example).st_mtime)
        assert server.ask(qname(6, "2001:db8::1", "v6." + ZONE), "A").rcode() == dns.rcode.NOERROR


def reply(
    rcode: int = dns.rcode.NOERROR, answer: tuple[str, ...] = (), authority: tuple[str, ...] = ()
) -> dns.message.Message:
    message = dns.message.make_response(dns.message.make_query("2.0.0.127." + ZONE, "ANY"))
    message.set_rcode(rcode)
    message.answer = [rrset(line) for line in answer]
    message.authority = [rrset(line) for line in authority]
    return message


def rrset(line: str) -> dns.rrset.RRset:
    name, ttl, rdtype, data = line.split(maxsplit=3)
    return dns.rrset.from_text(name, int(ttl), "IN", rdtype, data)


SOA = f"{ZONE} 600 SOA ns1.example.org. admin.example.org. 1 2 3 4 5"
NS = f"{ZONE} 600 NS ns1.example.org."


def test_compare_ignores_ttl_order_aa_and_ns() -> None:
    a = reply(answer=("x 60 A 127.0.0.2", "x 60 A 127.0.0.3", 'x 60 TXT "a" "b"'), authority=(NS,))
    b = reply(answer=('x 3600 TXT "ab"', "x 3600 A 127.0.0.3", "x 3600 A 127.0.0.2"))
    a.flags |= dns.flags.AA
    assert compare(a, b) == []


def test_compare_sees_a_missing_soa_only_on_negative_answers() -> None:
    assert compare(reply(dns.rcode.NXDOMAIN, authority=(SOA,)), reply(dns.rcode.NXDOMAIN)) == [
        "negative answer SOA in authority: True != False"
    ]
    assert compare(reply(authority=(SOA, NS)), reply(authority=(NS,))) != []  # NODATA
    assert (
        compare(reply(answer=("x 1 A 127.0.0.2",), authority=(SOA,)), reply(answer=("x 1 A 127.0.0.2",)))
        == []
    )


def test_boundary_addresses_and_qname() -> None:
    addresses = boundary_addresses([(10, 20), (0, 0), (2**32 - 1, 2**32 - 1)], 4, extra=5, seed=7)
    assert {9, 10, 20, 21, 0, 1, 2**32 - 2, 2**32 - 1} <= set(addresses)
    assert addresses == sorted(set(addresses)) and all(0 <= a < 2**32 for a in addresses)
    assert addresses == boundary_addresses([(10, 20), (0, 0), (2**32 - 1, 2**32 - 1)], 4, extra=5, seed=7)
    assert max(boundary_addresses([(0, 1)], 6, extra=50)) > 2**32
    assert qname(4, 0xC0000201, ZONE + ".") == "1.2.0.192." + ZONE
    assert qname(6, "2001:db8::1", ZONE) == "1." + "0." * 23 + "8.b.d.0.1.0.0.2." + ZONE


def test_missing_rbldnsd_fails_with_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="apt-get install rbldnsd"):
        rbldnsd_binary(str(tmp_path))
