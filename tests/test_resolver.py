"""The pure resolver as a decision table: zones built in memory, time a parameter, answers as values.

Expected SOA values are the README's defaults (TTL 2100, refresh 7200, retry 1800, expire 604800,
minimum 600, NS `ns.<zone>`, rname `hostmaster.<zone>`), written out here rather than read from the code.
"""

from __future__ import annotations

import ipaddress

import pytest

from dnsbl_server.index import Entry, ZoneIndex
from dnsbl_server.resolver import Answer, Options, Question, Record, Soa, resolve
from dnsbl_server.zone import Zone, Zones, ZoneSettings

A, NS, SOA, MX, TXT, AAAA, ANY = 1, 2, 6, 15, 16, 28, 255
IN, CH, HS = 1, 3, 4
NOERROR, NXDOMAIN, NOTIMP, REFUSED = 0, 3, 4, 5

ZONE = "bl.example.org"
SERIAL = 42
NOW = 1_700_000_000.0
VERSION = Options(version="dnsbl-server 9.9")
DEFAULTS = ZoneSettings()


def entry(
    target: str,
    code: int = 2,
    reason: str = "",
    *,
    excluded: bool = False,
    expires: float | None = None,
    source: str = "manual",
) -> Entry:
    net = ipaddress.ip_network(target)
    if net.version == 6 and net.subnet_of(ipaddress.IPv6Network("::ffff:0:0/96")):
        raise AssertionError("write mapped targets as IPv4 in these tests")
    lo, hi = int(net[0]), int(net[-1])
    return Entry((target, source), net.version, lo, hi, excluded, 0x7F000000 | code, reason, expires)


def make_zone(
    entries: list[Entry],
    name: str = ZONE,
    *,
    serial: int = SERIAL,
    test_points: bool = True,
    settings: ZoneSettings = DEFAULTS,
) -> Zone:
    return Zone(name, ZoneIndex.build(entries), serial, settings, test_points)


def soa_of(zone: str, serial: int = SERIAL, minimum: int = 600) -> Soa:
    return Soa(f"ns.{zone}", f"hostmaster.{zone}", serial, 7200, 1800, 604800, minimum)


def nibbles(address: str) -> str:
    """The 32-nibble reverse name of an IPv6 address, in query order, from the stdlib."""
    return ipaddress.IPv6Address(address).reverse_pointer.removesuffix(".ip6.arpa")


def ask(
    name: str,
    qtype: int = A,
    zones: Zones | None = None,
    *,
    now: float = NOW,
    qclass: int = IN,
    opcode: int = 0,
    options: Options = VERSION,
) -> Answer:
    return resolve(Question(name, qtype, qclass, opcode), zones or STANDARD, now, options)


def data(answer: Answer, rtype: int) -> list[str]:
    return sorted(str(r.data) for r in answer.answer if r.rtype == rtype)


def assert_positive(answer: Answer, name: str, a: list[str], txt: list[str], ttl: int = 2100) -> None:
    assert answer.rcode == NOERROR
    assert answer.authoritative
    assert data(answer, A) == sorted(a)
    assert data(answer, TXT) == sorted(txt)
    assert len(answer.answer) == len(a) + len(txt)
    for record in answer.answer:
        assert (record.name, record.ttl, record.rclass) == (name, ttl, IN)


def assert_negative(
    answer: Answer, rcode: int, zone: str = ZONE, ttl: int = 600, serial: int = SERIAL, minimum: int = 600
) -> None:
    """NXDOMAIN or NODATA: no answer, the zone's SOA in authority with the negative TTL (RFC 2308 5)."""
    assert answer.rcode == rcode
    assert answer.authoritative
    assert answer.answer == ()
    assert len(answer.authority) == 1
    soa = answer.authority[0]
    assert (soa.name.lower(), soa.rtype, soa.ttl, soa.data) == (zone, SOA, ttl, soa_of(zone, serial, minimum))


# --- the standard zone ------------------------------------------------------------------------

ENTRIES = [
    entry("192.0.2.0/24", 2, "Listed: $"),
    entry("192.0.2.7", excluded=True),
    entry("192.0.2.200", 7, "Until soon: $", expires=NOW + 10),
    entry("203.0.113.7", 3, "Spam from $, see https://example.org/?ip=$$ip", source="manual"),
    entry("203.0.113.7", 4, "Trap hit by $", source="trap"),
    entry("198.51.100.9", 2, "First reason", source="manual"),
    entry("198.51.100.9", 2, "Second reason", source="trap"),
    entry("198.51.100.10", 2, "Same reason", source="manual"),
    entry("198.51.100.10", 2, "Same reason", source="trap"),
    entry("198.51.100.11", 2, ""),
    entry("198.18.0.1", 2, "Expired", expires=NOW),
    entry("127.0.0.0/8", 5, "Loopback net"),
    entry("2001:db8::/64", 6, "IPv6 $"),
]
STANDARD = Zones.of([make_zone(ENTRIES)])


def q(address_name: str) -> str:
    return f"{address_name}.{ZONE}"


# (question name, type) -> (A data, TXT data) for positive answers
POSITIVE = [
    (q("1.2.0.192"), A, ["127.0.0.2"], []),
    (q("1.2.0.192"), TXT, [], ["Listed: 192.0.2.1"]),
    (q("1.2.0.192"), ANY, ["127.0.0.2"], ["Listed: 192.0.2.1"]),
    (q("255.2.0.192"), A, ["127.0.0.2"], []),
    (q("8.2.0.192"), A, ["127.0.0.2"], []),
    (q("200.2.0.192"), ANY, ["127.0.0.7"], ["Until soon: 192.0.2.200"]),
    # two equally specific entries both answer, template `$` and `$$`
    (
        q("7.113.0.203"),
        ANY,
        ["127.0.0.3", "127.0.0.4"],
        ["Spam from 203.0.113.7, see https://example.org/?ip=$ip", "Trap hit by 203.0.113.7"],
    ),
    # equal codes once, every text
    (q("9.100.51.198"), A, ["127.0.0.2"], []),
    (q("9.100.51.198"), TXT, [], ["First reason", "Second reason"]),
    (q("10.100.51.198"), ANY, ["127.0.0.2"], ["Same reason"]),
    (q("11.100.51.198"), A, ["127.0.0.2"], []),
    # the test point, even though 127.0.0.0/8 is listed with another code
    (q("2.0.0.127"), A, ["127.0.0.2"], []),
    (q("3.0.0.127"), A, ["127.0.0.5"], []),
    (q("3.0.0.127"), TXT, [], ["Loopback net"]),
    # IPv6, and IPv4-mapped IPv6 answered from the IPv4 data
    (q(nibbles("2001:db8::1")), ANY, ["127.0.0.6"], ["IPv6 2001:db8::1"]),
    (q(nibbles("2001:db8::ffff:ffff:ffff:ffff")), A, ["127.0.0.6"], []),
    (q(nibbles("::ffff:192.0.2.1")), A, ["127.0.0.2"], []),
    (q(nibbles("::ffff:203.0.113.7")), A, ["127.0.0.3", "127.0.0.4"], []),
    (q(nibbles("::ffff:7f00:2")), A, ["127.0.0.2"], []),
    (q(nibbles("::ffff:7f00:3")), A, ["127.0.0.5"], []),
]


@pytest.mark.parametrize(("name", "qtype", "a", "txt"), POSITIVE, ids=[f"{c[0]}/{c[1]}" for c in POSITIVE])
def test_listed(name: str, qtype: int, a: list[str], txt: list[str]) -> None:
    assert_positive(ask(name, qtype), name, a, txt)


NEGATIVE = [
    # listed, other types: NODATA
    (q("1.2.0.192"), MX, NOERROR),
    (q("1.2.0.192"), AAAA, NOERROR),
    (q("1.2.0.192"), NS, NOERROR),
    (q("1.2.0.192"), SOA, NOERROR),
    (q("11.100.51.198"), TXT, NOERROR),  # listed without a reason: no TXT to give
    (q(nibbles("2001:db8::1")), AAAA, NOERROR),
    # not listed: NXDOMAIN, whatever the type
    (q("1.1.1.1"), A, NXDOMAIN),
    (q("1.1.1.1"), TXT, NXDOMAIN),
    (q("1.1.1.1"), ANY, NXDOMAIN),
    (q("1.1.1.1"), MX, NXDOMAIN),
    (q("7.2.0.192"), A, NXDOMAIN),  # excluded
    (q("7.2.0.192"), ANY, NXDOMAIN),
    (q("1.0.18.198"), A, NXDOMAIN),  # expired at `now`
    (q("12.100.51.198"), A, NXDOMAIN),
    (q(nibbles("2001:db8:0:1::")), A, NXDOMAIN),
    (q(nibbles("::ffff:192.0.2.7")), A, NXDOMAIN),
    (q(nibbles("::c000:201")), A, NXDOMAIN),  # ::192.0.2.1 (IPv4-compatible) is not IPv4-mapped
    # the test point 127.0.0.1 is never listed, though 127.0.0.0/8 is
    (q("1.0.0.127"), A, NXDOMAIN),
    (q("1.0.0.127"), TXT, NXDOMAIN),
    (q(nibbles("::ffff:7f00:1")), A, NXDOMAIN),
    # the apex: other types NODATA
    (ZONE, A, NOERROR),
    (ZONE, TXT, NOERROR),
    (ZONE, MX, NOERROR),
    (ZONE, AAAA, NOERROR),
    # partial names (QNAME minimisation): above a listed address NODATA, above nothing NXDOMAIN
    (q("2.0.192"), A, NOERROR),
    (q("0.192"), A, NOERROR),
    (q("192"), A, NOERROR),
    (q("113.0.203"), A, NOERROR),
    (q("100.51.198"), TXT, NOERROR),
    (q("0.0.127"), A, NOERROR),
    (q("113.0.204"), A, NXDOMAIN),
    (q("0.18.198"), A, NXDOMAIN),  # only an expired entry below
    (q("1"), A, NXDOMAIN),
    (q("2.0.1"), A, NXDOMAIN),
    (q(".".join(nibbles("2001:db8::").split(".")[16:])), A, NOERROR),  # 2001:db8::/64
    (q(".".join(nibbles("2001:db8::").split(".")[24:])), A, NOERROR),  # 2001:db8::/32
    (q(".".join(nibbles("2001:db9::").split(".")[16:])), A, NXDOMAIN),
    (q(".".join(nibbles("::ffff:192.0.2.0").split(".")[2:])), A, NOERROR),  # mapped 192.0.2.0/24
    (q(".".join(nibbles("::ffff:192.0.2.0").split(".")[8:])), A, NOERROR),  # ::ffff:0:0/96
    (q(".".join(nibbles("::ffff:10.0.0.0").split(".")[2:])), A, NXDOMAIN),  # mapped 10.0.0.0/24
    (q(".".join(nibbles("::ffff:7f00:0").split(".")[2:])), A, NOERROR),  # mapped 127.0.0.0/24
    # names that are not addresses
    (q("1.2.3.4.5"), A, NXDOMAIN),
    (q("1.1.2.0.192"), A, NXDOMAIN),  # five labels, four of them a listed address
    (q("256.2.0.192"), A, NXDOMAIN),
    (q("1.2.0.256"), A, NXDOMAIN),
    (q("256"), A, NXDOMAIN),
    (q("x.2.0.192"), A, NXDOMAIN),
    (q("www"), A, NXDOMAIN),
    (q("ns"), A, NXDOMAIN),
    (q("1.2.0.192x"), A, NXDOMAIN),
    (q("0x1.2.0.192"), A, NXDOMAIN),
    (q(nibbles("2001:db8::1") + ".0"), A, NXDOMAIN),  # 33 nibbles
    (q("10." + ".".join(nibbles("2001:db8::1").split(".")[1:])), A, NXDOMAIN),  # a two-digit "nibble"
]


@pytest.mark.parametrize(("name", "qtype", "rcode"), NEGATIVE, ids=[f"{c[0]}/{c[1]}" for c in NEGATIVE])
def test_negative(name: str, qtype: int, rcode: int) -> None:
    assert_negative(ask(name, qtype), rcode)


# --- the apex ---------------------------------------------------------------------------------


def test_apex_soa_ns_any() -> None:
    soa = Record(ZONE, SOA, 2100, soa_of(ZONE))
    ns = Record(ZONE, NS, 2100, f"ns.{ZONE}")
    assert ask(ZONE, SOA) == Answer(NOERROR, (soa,))
    assert ask(ZONE, NS) == Answer(NOERROR, (ns,))
    answer = ask(ZONE, ANY)
    assert answer.rcode == NOERROR and sorted(answer.answer, key=repr) == sorted([soa, ns], key=repr)


def test_apex_with_configured_servers() -> None:
    zone = make_zone([], settings=ZoneSettings(ns=("a.ns.example.net", "b.ns.example.net")))
    answer = ask(ZONE, NS, Zones.of([zone]))
    assert data(answer, NS) == ["a.ns.example.net", "b.ns.example.net"]
    soa = ask(ZONE, SOA, Zones.of([zone])).answer[0].data
    assert isinstance(soa, Soa) and (soa.mname, soa.rname) == ("a.ns.example.net", f"hostmaster.{ZONE}")


# --- negative TTL -----------------------------------------------------------------------------


@pytest.mark.parametrize(("ttl", "minimum", "negative"), [(2100, 600, 600), (300, 600, 300), (600, 600, 600)])
def test_negative_ttl_is_min_of_ttl_and_minimum(ttl: int, minimum: int, negative: int) -> None:
    zones = Zones.of([make_zone(ENTRIES, settings=ZoneSettings(ttl=ttl, minimum=minimum))])
    assert_negative(ask(q("1.1.1.1"), A, zones), NXDOMAIN, ttl=negative, minimum=minimum)
    assert_negative(ask(q("1.2.0.192"), MX, zones), NOERROR, ttl=negative, minimum=minimum)
    assert_negative(ask(ZONE, A, zones), NOERROR, ttl=negative, minimum=minimum)
    assert_positive(ask(q("1.2.0.192"), A, zones), q("1.2.0.192"), ["127.0.0.2"], [], ttl=ttl)


# --- case -------------------------------------------------------------------------------------


def test_names_are_case_insensitive_and_the_case_is_echoed() -> None:
    name = "1.2.0.192.BL.Example.ORG"
    assert_positive(ask(name, ANY), name, ["127.0.0.2"], ["Listed: 192.0.2.1"])
    name = nibbles("2001:db8::abcd").upper() + ".Bl.Example.Org"
    assert_positive(ask(name, A), name, ["127.0.0.6"], [])
    apex = "BL.EXAMPLE.ORG"
    assert [r.name for r in ask(apex, ANY).answer] == [apex, apex]
    assert_negative(ask("1.1.1.1.bL.eXample.org", A), NXDOMAIN)
    assert_negative(ask("2.0.192.BL.EXAMPLE.ORG", A), NOERROR)


# --- outside the zones, opcodes, classes ------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "example.org",
        "org",
        "",
        "1.2.0.192.example.org",
        "1.2.0.192.xbl.example.org",
        "bl.example.com",
        "1.2.0.192.bl.example.org.evil",
        "1.2.0.192.bl",
    ],
)
def test_outside_every_zone_is_refused(name: str) -> None:
    for qtype in (A, TXT, SOA, ANY):
        answer = ask(name, qtype)
        assert (answer.rcode, answer.answer, answer.authority) == (REFUSED, (), ())


@pytest.mark.parametrize("opcode", [1, 2, 4, 5, 15])
def test_opcode_other_than_query_is_notimp(opcode: int) -> None:
    for name in (q("1.2.0.192"), ZONE, "example.com"):
        answer = ask(name, A, opcode=opcode)
        assert (answer.rcode, answer.answer, answer.authority) == (NOTIMP, (), ())


def test_chaos_version() -> None:
    for name in ("version.bind", "VERSION.Bind", "version.server"):
        answer = ask(name, TXT, qclass=CH)
        assert answer.rcode == NOERROR
        assert [(r.name, r.rtype, r.rclass, r.data) for r in answer.answer] == [
            (name, TXT, CH, "dnsbl-server 9.9")
        ]


def test_chaos_version_hidden_and_other_chaos_names_are_refused() -> None:
    assert ask("version.bind", TXT, qclass=CH, options=Options(version=None)).rcode == REFUSED
    assert ask("version.bind", TXT, qclass=CH, options=Options()).rcode == REFUSED
    assert ask("hostname.bind", TXT, qclass=CH).rcode == REFUSED
    assert ask(q("1.2.0.192"), A, qclass=CH).rcode == REFUSED
    assert ask(q("1.2.0.192"), A, qclass=HS).rcode == REFUSED


# --- several zones ----------------------------------------------------------------------------


def test_several_zones_each_with_its_own_list() -> None:
    zones = Zones.of(
        [
            make_zone([entry("192.0.2.1", 2, "bl")], serial=10),
            make_zone([entry("198.51.100.1", 3, "wl")], "wl.example.org", serial=20),
            make_zone([entry("192.0.2.2", 4, "sub")], "sub.bl.example.org", serial=30, test_points=False),
        ]
    )
    assert_positive(ask(q("1.2.0.192"), ANY, zones), q("1.2.0.192"), ["127.0.0.2"], ["bl"])
    assert_negative(ask(q("1.100.51.198"), A, zones), NXDOMAIN, serial=10)
    name = "1.100.51.198.wl.example.org"
    assert_positive(ask(name, ANY, zones), name, ["127.0.0.3"], ["wl"])
    assert_negative(ask("1.2.0.192.wl.example.org", A, zones), NXDOMAIN, "wl.example.org", serial=20)
    # the longest zone wins: sub.bl.example.org is not a partial name of bl.example.org
    name = "2.2.0.192.sub.bl.example.org"
    assert_positive(ask(name, A, zones), name, ["127.0.0.4"], [])
    assert_negative(ask("1.2.0.192.sub.bl.example.org", A, zones), NXDOMAIN, "sub.bl.example.org", serial=30)
    assert_negative(ask("2.0.0.127.sub.bl.example.org", A, zones), NXDOMAIN, "sub.bl.example.org", serial=30)
    assert ask("sub.bl.example.org", SOA, zones).answer[0].data == soa_of("sub.bl.example.org", 30)
    assert ask("example.org", SOA, zones).rcode == REFUSED


# --- test points ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "index",
    [[], [entry("127.0.0.0/8", 5)], [entry("127.0.0.1", 9)], [entry("127.0.0.2", excluded=True)]],
    ids=["empty", "127/8 listed", "127.0.0.1 listed", "127.0.0.2 excluded"],
)
def test_test_points(index: list[Entry]) -> None:
    zones = Zones.of([make_zone(index)])
    for name in (q("2.0.0.127"), q(nibbles("::ffff:7f00:2"))):
        answer = ask(name, ANY, zones)
        assert answer.rcode == NOERROR
        assert data(answer, A) == ["127.0.0.2"]
        [text] = data(answer, TXT)
        assert "test point" in str(text).lower() and ZONE in str(text)
    for name in (q("1.0.0.127"), q(nibbles("::ffff:7f00:1"))):
        assert_negative(ask(name, A, zones), NXDOMAIN)
    assert_negative(ask(q("0.0.127"), A, zones), NOERROR)
    assert_negative(ask(q("127"), A, zones), NOERROR)


def test_no_test_points_without_them() -> None:
    zones = Zones.of([make_zone([entry("127.0.0.1", 9)], test_points=False)])
    assert_negative(ask(q("2.0.0.127"), A, zones), NXDOMAIN)
    assert_negative(ask(q("3.0.0.127"), A, zones), NXDOMAIN)
    assert_positive(ask(q("1.0.0.127"), A, zones), q("1.0.0.127"), ["127.0.0.9"], [])


# --- TXT templates ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "text"),
    [
        ("plain", "plain"),
        ("$", "192.0.2.1"),
        ("$$", "$"),
        ("$$$", "$192.0.2.1"),
        ("$$$$", "$$"),
        ("$ and $", "192.0.2.1 and 192.0.2.1"),
        ("cost: $$5 for $", "cost: $5 for 192.0.2.1"),
        ("http://x/?q=$", "http://x/?q=192.0.2.1"),
    ],
)
def test_txt_template(template: str, text: str) -> None:
    zones = Zones.of([make_zone([entry("192.0.2.0/24", 2, template)])])
    assert data(ask(q("1.2.0.192"), TXT, zones), TXT) == [text]


@pytest.mark.parametrize(
    ("template", "full"),
    [
        ("x" * 300, "x" * 300),
        ("y" * 250 + " $", "y" * 250 + " 192.0.2.1"),
        ("é" * 200, "é" * 200),  # two bytes each: no half character at the cut
        ("€" * 100, "€" * 100),  # three bytes each
    ],
)
def test_txt_is_cut_at_254_bytes_as_rbldnsd_serves(template: str, full: str) -> None:
    zones = Zones.of([make_zone([entry("192.0.2.0/24", 2, template)])])
    [text] = data(ask(q("1.2.0.192"), TXT, zones), TXT)
    size = len(text.encode())
    assert full.startswith(text)
    assert 252 <= size <= 254  # cut at 254, less only to keep a character whole
    assert len(full[len(text) : len(text) + 1].encode()) > 254 - size  # the next character did not fit


def test_txt_of_exactly_254_bytes_is_kept() -> None:
    zones = Zones.of([make_zone([entry("192.0.2.0/24", 2, "z" * 254)])])
    assert data(ask(q("1.2.0.192"), TXT, zones), TXT) == ["z" * 254]
    zones = Zones.of([make_zone([entry("192.0.2.0/24", 2, "z" * 255)])])
    assert data(ask(q("1.2.0.192"), TXT, zones), TXT) == ["z" * 254]


# --- time -------------------------------------------------------------------------------------


def test_expired_entry_stops_answering_at_its_expiry() -> None:
    name = q("200.2.0.192")  # 192.0.2.200 until NOW + 10, then the /24 answers
    assert data(ask(name, A, now=NOW + 9.999), A) == ["127.0.0.7"]
    assert data(ask(name, A, now=NOW + 10), A) == ["127.0.0.2"]
    assert data(ask(name, A, now=NOW + 1e6), A) == ["127.0.0.2"]
    alone = Zones.of([make_zone([entry("192.0.2.200", 7, expires=NOW + 10)])])
    assert data(ask(name, A, alone, now=NOW), A) == ["127.0.0.7"]
    assert_negative(ask(name, A, alone, now=NOW + 10), NXDOMAIN)
    assert_negative(ask(q("2.0.192"), A, alone, now=NOW), NOERROR)
    assert_negative(ask(q("2.0.192"), A, alone, now=NOW + 10), NXDOMAIN)
