"""The fast path against the general path: every reply it gives is byte for byte the general path's.

Queries are written byte by byte (odd case, leading zeros, EDNS shapes, broken packets); zones are real
`Zone` values over real indexes; the general path is `Handler.__call__` (`wire.respond`: dnslib and the
resolver), the fast path `Handler.fast`. No mocks. The end-to-end test asks a real `dnsbl serve`.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
import time
from dataclasses import replace
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import pytest
from conftest import Server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnsbl_server.acl import Acl, Action
from dnsbl_server.addresses import parse_target
from dnsbl_server.datafiles import DataFiles, compose, parse_spec
from dnsbl_server.index import Entry, ZoneIndex
from dnsbl_server.resolver import Options
from dnsbl_server.server import Handler, Holder
from dnsbl_server.wire import frame
from dnsbl_server.zone import Zone, Zones, ZoneSettings

NOW = 1_000_000.0
LONG = "long " + "x" * 240 + " $"  # cut at 254 bytes once expanded
ACCENTED = "é" * 124 + " $"  # two-byte characters across the cut


def listing(target: str, code: int, reason: str, source: str = "s", expires: float | None = None) -> Entry:
    t = parse_target(target)
    return Entry((target, source), t.family, t.lo, t.hi, False, 0x7F000000 | code, reason, expires)


def exclusion(target: str) -> Entry:
    t = parse_target(target)
    return Entry(("!" + target, "s"), t.family, t.lo, t.hi, True, 0, "")


ENTRIES = [
    listing("192.0.2.1", 2, "Listed: $"),
    listing("192.0.2.1", 3, "Also $ see $$5", source="t"),  # equally specific: both answer
    listing("192.0.2.2", 2, "same"),
    listing("192.0.2.2", 2, "same", source="t"),  # one code, one text
    listing("192.0.2.3", 4, "$"),
    listing("192.0.2.3", 5, "192.0.2.3", source="t"),  # expands to the same text
    listing("198.51.100.0/24", 4, "net $"),
    exclusion("198.51.100.77"),
    listing("198.51.100.64-198.51.100.95", 5, "range $$ $"),
    listing("203.0.113.0/25", 6, ""),  # no text: TXT is NODATA
    listing("203.0.113.9", 7, LONG),
    listing("203.0.113.10", 8, ACCENTED),
    listing("10.0.0.0/8", 9, "static text"),
    listing("10.1.0.0/16", 10, "$$ only"),
    exclusion("10.1.2.0/24"),
    listing("10.1.2.3", 11, "pinned $"),
    *(listing("10.9.9.9", n, f"big {n} " + "y" * 200, source=f"s{n}") for n in range(2, 8)),  # > 1232
    *(listing("10.8.8.8", n, f"mid {n} " + "z" * 150, source=f"s{n}") for n in range(2, 5)),  # > 512
    listing("192.0.2.200", 2, "expired $", expires=NOW - 1),
    listing("192.0.2.201", 2, "expiring $", expires=NOW + 1),
    listing("2001:db8::/32", 12, "v6 $"),
    listing("2001:db8::1", 13, "v6 host $"),
    exclusion("2001:db8:0:1::/64"),
]
FILE_ENTRIES = [
    listing("192.0.2.0/24", 20, "file $"),
    listing("10.1.2.3", 21, "file pinned"),
    listing("2001:db8::/48", 22, ""),
]
OTHER_NS = ZoneSettings(
    ttl=300, minimum=900, ns=("a.ns.example.net", "b.ns.example.net"), rname="dns-admin.example.net"
)

BL = Zone("bl.example", ZoneIndex.build(ENTRIES), serial=7)
FILES = Zone("files.example", ZoneIndex.build(()), 9, OTHER_NS, False, (ZoneIndex.build(FILE_ENTRIES),))
MIXED = Zone("mixed.example", ZoneIndex.build([exclusion("192.0.2.7"), *ENTRIES[:3]]), 11, files=FILES.files)
ACL = replace(BL, name="acl.example", acl=Acl.build([(parse_target("10.0.0.0/8"), Action.REFUSE)]))
NUMBERED = replace(BL, name="numbered.example", settings=ZoneSettings(ns=("1.numbered.example",)))
PARENT, SUB = replace(BL, name="parent.example"), replace(BL, name="sub.parent.example")
ZONES = Zones.of([BL, FILES, MIXED, ACL, NUMBERED, PARENT, SUB])
GLOBAL_ACL = Zones.of([BL, FILES], acl=Acl.build([(parse_target("10.0.0.0/8"), Action.IGNORE)]))
TAKEN = ("bl.example", "files.example", "mixed.example", "sub.parent.example")  # the zones it answers for

LISTED = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "198.51.100.9", "198.51.100.77", "198.51.100.70"]
LISTED += ["203.0.113.5", "203.0.113.9", "203.0.113.10", "10.2.3.4", "10.1.5.5", "10.1.2.4", "10.1.2.3"]
LISTED += ["10.9.9.9", "10.8.8.8", "192.0.2.200", "192.0.2.201", "127.0.0.2", "127.0.0.1", "192.0.2.7"]
LISTED += [
    "2001:db8::1",
    "2001:db8::5",
    "2001:db8:0:1::5",
    "2001:db8:1::1",
    "::ffff:192.0.2.1",
    "::ffff:7f00:2",
]


def handler(zones: Zones = ZONES, udp_cap: int = 1232, auth_ns: bool = False) -> Handler:
    return Handler(Holder(zones), Options(auth_ns=auth_ns), udp_cap, clock=lambda: NOW)


# --- writing queries ------------------------------------------------------------------------------


def address_labels(
    address: str, zeros: list[int] | None = None, upper: list[bool] | None = None
) -> list[bytes]:
    """The labels of an address's reverse name; `zeros` pads IPv4 octets, `upper` cases IPv6 nibbles."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        octets = [str(o) for o in reversed(ip.packed)]
        pads = zeros or [0] * 4
        return [o.zfill(min(3, len(o) + pad)).encode() for o, pad in zip(octets, pads, strict=True)]
    nibbles = list(reversed(ip.exploded.replace(":", "")))
    cases = upper or [False] * 32
    return [(n.upper() if up else n).encode() for n, up in zip(nibbles, cases, strict=True)]


def wire_name(labels: list[bytes]) -> bytes:
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


def opt_record(
    payload: int = 1232, do: bool = False, version: int = 0, ext: int = 0, options: bytes = b""
) -> bytes:
    flags = (0x8000 if do else 0) | (version << 16) | (ext << 24)
    return b"\x00" + struct.pack("!HHIH", 41, payload, flags, len(options)) + options


def message(
    labels: list[bytes],
    qtype: int = 1,
    qclass: int = 1,
    opt: bytes | None = None,
    ident: int = 0xBEEF,
    flags: int = 0x0100,
) -> bytes:
    header = struct.pack("!HHHHHH", ident, flags, 1, 0, 0, 0 if opt is None else 1)
    return header + wire_name(labels) + struct.pack("!HH", qtype, qclass) + (opt or b"")


def zone_labels(zone: str) -> list[bytes]:
    return [label.encode() for label in zone.split(".")]


def ask_both(data: bytes, udp: bool = True, **kwargs: object) -> bytes | None:
    """The fast path's reply, after checking it against the general path's (and their counters)."""
    fast_handler, general = handler(**kwargs), handler(**kwargs)  # type: ignore[arg-type]
    fast = fast_handler.fast.answer(data, udp)
    if fast is not None:
        assert fast == general(data, udp), data.hex(" ")
        assert fast_handler.counters.zones == general.counters.zones
    return fast


# --- what it takes ---------------------------------------------------------------------------------


COMMON = [
    (address, zone, rdtype, edns)
    for address in (
        "192.0.2.1",
        "192.0.2.9",
        "198.51.100.77",
        "2001:db8::1",
        "2001:db8:2::1",
        "::ffff:192.0.2.1",
    )
    for zone in ("bl.example", "files.example")
    for rdtype in ("A", "TXT")
    for edns in (None, False, True)  # no EDNS, EDNS, EDNS with DO
]


@pytest.mark.parametrize(("address", "zone", "rdtype", "edns"), COMMON)
def test_takes_the_common_shapes(address: str, zone: str, rdtype: str, edns: bool | None) -> None:
    qname = (
        ipaddress.ip_address(address).reverse_pointer.replace(".in-addr.arpa", "").replace(".ip6.arpa", "")
    )
    kwargs = {} if edns is None else {"use_edns": 0, "want_dnssec": edns}
    data = dns.message.make_query(f"{qname}.{zone}", rdtype, **kwargs).to_wire()  # type: ignore[arg-type]
    assert ask_both(data) is not None


@pytest.mark.parametrize("udp", [True, False])
@pytest.mark.parametrize("auth_ns", [False, True])
def test_takes_every_type_odd_case_and_a_cookie(udp: bool, auth_ns: bool) -> None:
    """Everything here but what the general path truncates (TC) for UDP."""
    cookie = dns.edns.CookieOption(b"clientck", b"")
    for address in LISTED:
        for qtype in (1, 16, 255, 28, 15, 2, 6, 0, 65535):
            labels = address_labels(address, [2, 1, 0, 2], [True] * 32) + [b"Bl", b"EXAMPLE"]
            text = ".".join(label.decode() for label in labels)
            with_cookie = dns.message.make_query(text, qtype, use_edns=0, options=[cookie]).to_wire()
            for data in (message(labels, qtype), with_cookie):
                general = handler(auth_ns=auth_ns)(data, udp)
                assert general is not None
                assert (ask_both(data, udp, auth_ns=auth_ns) is None) == bool(general[2] & 0x02)


def test_counts_as_the_general_path() -> None:
    fast, general = handler(), handler()
    for address in LISTED:
        for qtype in (1, 16, 28):
            data = message(address_labels(address) + zone_labels("files.example"), qtype)
            assert fast.fast.answer(data, True) == general(data, True)
    assert fast.counters.zones == general.counters.zones
    assert fast.counters.zones["files.example"].nxd > 0 and fast.counters.zones["files.example"].ok > 0


# --- what it leaves to the general path ------------------------------------------------------------


GOOD = message(address_labels("192.0.2.1") + zone_labels("bl.example"), 16)
BIG_TXT = message(address_labels("10.9.9.9") + zone_labels("bl.example"), 16)
LEFT = {
    "zone with an acl": message(address_labels("192.0.2.1") + zone_labels("acl.example")),
    "zone with a served subzone": message(address_labels("192.0.2.1") + zone_labels("parent.example")),
    "NS name like an address label": message(address_labels("192.0.2.1") + zone_labels("numbered.example")),
    "no zone": message(address_labels("192.0.2.1") + zone_labels("other.example")),
    "the apex": message(zone_labels("bl.example"), 6),
    "three labels": message(address_labels("192.0.2.1")[1:] + zone_labels("bl.example")),
    "five labels": message([b"1", *address_labels("192.0.2.1")] + zone_labels("bl.example")),
    "octet 256": message([b"256", b"2", b"0", b"192"] + zone_labels("bl.example")),
    "octet of 4 digits": message([b"0001", b"2", b"0", b"192"] + zone_labels("bl.example")),
    "a letter": message([b"1a", b"2", b"0", b"192"] + zone_labels("bl.example")),
    "31 nibbles": message(address_labels("2001:db8::1")[1:] + zone_labels("bl.example")),
    "a nibble g": message([b"g"] + address_labels("2001:db8::1")[1:] + zone_labels("bl.example")),
    "CHAOS": message(address_labels("192.0.2.1") + zone_labels("bl.example"), 16, 3),
    "class ANY": message(address_labels("192.0.2.1") + zone_labels("bl.example"), 1, 255),
    "QR set": GOOD[:2] + b"\x81" + GOOD[3:],
    "opcode NOTIFY": GOOD[:2] + b"\x21" + GOOD[3:],
    "AA set": GOOD[:2] + b"\x05" + GOOD[3:],
    "TC set": GOOD[:2] + b"\x03" + GOOD[3:],
    "qdcount 2": GOOD[:5] + b"\x02" + GOOD[6:] + GOOD[12:],
    "qdcount 0": GOOD[:5] + b"\x00" + GOOD[6:],
    "ancount 1": GOOD[:7] + b"\x01" + GOOD[8:],
    "nscount 1": GOOD[:9] + b"\x01" + GOOD[10:],
    "arcount 1, no record": GOOD[:11] + b"\x01" + GOOD[12:],
    "arcount 2": GOOD[:11] + b"\x02" + GOOD[12:] + opt_record() + opt_record(),
    "trailing garbage": GOOD + b"\x00",
    "garbage after the OPT": GOOD[:11] + b"\x01" + GOOD[12:] + opt_record() + b"\x00",
    "EDNS version 1": GOOD[:11] + b"\x01" + GOOD[12:] + opt_record(version=1),
    "OPT with a name": GOOD[:11] + b"\x01" + GOOD[12:] + b"\x01a" + opt_record()[1:],
    "OPT not type 41": GOOD[:11] + b"\x01" + GOOD[12:] + b"\x00\x00\x01" + opt_record()[3:],
    "option overrunning": GOOD[:11] + b"\x01" + GOOD[12:] + opt_record(options=b"\x00\x0a\x00\x09abcd"),
    "option cut short": GOOD[:11] + b"\x01" + GOOD[12:] + opt_record(options=b"\x00\x0a\x00"),
    "compressed zone name": GOOD[:12] + wire_name(address_labels("192.0.2.1"))[:-1] + b"\xc0\x0c" + GOOD[-4:],
    "label over 63": GOOD[:12] + b"\x01\x31\x01\x32\x01\x30\x03192\x40" + b"a" * 64 + b"\x00" + GOOD[-4:],
    "big answer over UDP (TC)": BIG_TXT,
    "big answer over the EDNS size": BIG_TXT[:11] + b"\x01" + BIG_TXT[12:] + opt_record(payload=1232),
    "mid answer over plain UDP": message(address_labels("10.8.8.8") + zone_labels("bl.example"), 16),
}


@pytest.mark.parametrize("data", LEFT.values(), ids=LEFT.keys())
def test_leaves_the_rest_to_the_general_path(data: bytes) -> None:
    assert handler().fast.answer(data, True) is None


def test_leaves_everything_under_a_global_acl() -> None:
    assert handler(GLOBAL_ACL).fast.answer(GOOD, True) is None
    assert handler().fast.answer(GOOD, True) is not None


def test_big_answers_whole_over_tcp() -> None:
    assert ask_both(BIG_TXT, udp=False) is not None


WITH_COOKIE = GOOD[:11] + b"\x01" + GOOD[12:] + opt_record(options=b"\x00\x0a\x00\x08clientck")


@pytest.mark.parametrize("size", range(len(WITH_COOKIE)))
def test_truncated_queries_are_left(size: int) -> None:
    assert handler().fast.answer(WITH_COOKIE, True) is not None
    assert handler().fast.answer(WITH_COOKIE[:size], True) is None
    assert handler().fast.answer(GOOD[:size], True) is None or size >= len(GOOD)


def test_new_zones_drop_the_caches() -> None:
    h = handler()
    before = h.fast.answer(GOOD, True)
    h.holder.zones = Zones.of([replace(BL, index=ZoneIndex.build([listing("192.0.2.1", 9, "new $")]))])
    after = h.fast.answer(GOOD, True)
    assert before is not None and after is not None and after != before
    assert after == handler(h.holder.zones)(GOOD, True)
    assert b"new 192.0.2.1" in after


# --- random questions: the fast path's reply is the general path's, or None -------------------------


@st.composite
def questions(draw: st.DrawFn) -> bytes:
    address = draw(
        st.one_of(
            st.sampled_from(LISTED),
            st.integers(0, 2**32 - 1).map(lambda v: str(ipaddress.IPv4Address(v))),
            st.integers(0, 2**128 - 1).map(lambda v: str(ipaddress.IPv6Address(v))),
        )
    )
    labels = address_labels(
        address,
        draw(st.lists(st.integers(0, 2), min_size=4, max_size=4)),
        draw(st.lists(st.booleans(), min_size=32, max_size=32)),
    )
    zone = draw(
        st.sampled_from([*TAKEN, "acl.example", "parent.example", "numbered.example", "other.example"])
    )
    cases = draw(st.lists(st.booleans(), min_size=len(zone), max_size=len(zone)))
    zone = "".join(c.upper() if up else c for c, up in zip(zone, cases, strict=True))
    labels = draw(st.sampled_from([labels, labels, labels, labels[1:], labels[:-1], [b"x", *labels]]))
    qtype = draw(st.one_of(st.sampled_from([1, 16, 255, 28, 2, 6, 15, 0, 41, 252]), st.integers(0, 65535)))
    qclass = draw(st.sampled_from([1, 1, 1, 3, 255, 254, 0]))
    flags = draw(st.sampled_from([0x0000, 0x0100, 0x0110, 0x0120, 0x0130, 0x01FF])) | (
        draw(st.integers(0, 1)) << 15
    )
    opt = draw(
        st.one_of(
            st.none(),
            st.builds(
                opt_record,
                st.integers(0, 65535),
                st.booleans(),
                st.sampled_from([0, 0, 0, 1, 255]),
                st.sampled_from([0, 0, 1, 255]),
                st.sampled_from(
                    [b"", b"", b"\x00\x0a\x00\x08clientck", b"\x00\x03\x00\x00", b"\x00\x0a\x00\x09x"]
                ),
            ),
        )
    )
    return message(labels + zone_labels(zone), qtype, qclass, opt, draw(st.integers(0, 65535)), flags)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=questions(), udp=st.booleans(), udp_cap=st.sampled_from([512, 1232, 4096]), auth_ns=st.booleans())
def test_random_questions_answer_alike(data: bytes, udp: bool, udp_cap: int, auth_ns: bool) -> None:
    ask_both(data, udp, udp_cap=udp_cap, auth_ns=auth_ns)


EDITS = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=4
)


def mutate(seed: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    data = bytearray(seed)
    for kind, position, value in edits:
        where = position % (len(data) + 1)
        if kind == 0:
            data[where : where + 1] = bytes([value])
        elif kind == 1:
            data.insert(where, value)
        elif kind == 2:
            del data[where : where + 1]
        else:
            del data[where:]
    return bytes(data)


SEEDS = [
    GOOD,
    GOOD[:11] + b"\x01" + GOOD[12:] + opt_record(do=True),
    message(address_labels("2001:db8::1") + zone_labels("files.example"), 255),
]


@settings(max_examples=800, deadline=None)
@given(seed=st.sampled_from(SEEDS), edits=EDITS, udp=st.booleans())
def test_mutated_queries_answer_alike_or_are_left(
    seed: bytes, edits: list[tuple[int, int, int]], udp: bool
) -> None:
    ask_both(mutate(seed, edits), udp)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=120))
def test_random_bytes_are_left(data: bytes) -> None:
    assert ask_both(data) is None


# --- big zones: answers prebuilt by the id of what answers (`listing_id`), IPv4 by its /16 guide ----


def big_entries(rng: random.Random) -> list[Entry]:
    """Over GUIDE_MIN entries in a few /8s (so /16s hold many): lone addresses with a few values,
    overlapping nets and ranges, exclusions, expiries, IPv6."""
    values = [(2, "Listed: $"), (3, "static"), (4, ""), (5, LONG), (6, "$$ and $ and $")]
    entries = []
    for n in range(6000):
        address = f"{rng.choice((10, 172, 192))}.{rng.randrange(4)}.{rng.randrange(256)}.{rng.randrange(256)}"
        code, reason = rng.choice(values)
        expires = rng.choice((None, None, None, NOW - 1, NOW + 1))
        entries.append(listing(address, code, reason, source=f"s{n % 3}", expires=expires))
    for n in range(300):
        net = f"{rng.choice((10, 172))}.{rng.randrange(4)}.{rng.randrange(256)}.0/{rng.choice((24, 28))}"
        entries.append(exclusion(net) if n % 4 == 0 else listing(net, 7 + n % 2, "net $", source="n"))
    entries += [listing(f"2001:db8:{n:x}::/48", 9, "v6 $", source="v6") for n in range(50)]
    return list({e.key: e for e in entries}.values())  # one entry a key, as the store keeps them


def big_addresses(entries: list[Entry], rng: random.Random) -> list[str]:
    """Some entries' edges, and random addresses in and out of the lists' /8s."""
    some = rng.sample([e for e in entries if e.family == 4], 600)
    points = {v for e in some for v in (e.lo - 1, e.lo, e.hi, e.hi + 1)}
    points |= {rng.randrange(10 << 24, 11 << 24) for _ in range(500)}
    points |= {rng.randrange(2**32) for _ in range(200)} | {0, 2**32 - 1, 0x7F000001, 0x7F000002}
    v6 = [str(ipaddress.IPv6Address(e.lo + n)) for e in entries if e.family == 6 for n in (0, 5)]
    return [str(ipaddress.IPv4Address(v)) for v in sorted(p for p in points if 0 <= p < 2**32)] + v6


def big_zones(tmp_path: Path) -> tuple[Zones, list[str]]:
    """The same entries as a SQLite-list zone (a ZoneIndex, test points on) and as rbldnsd data files
    (compact indexes: ip4set and ip6trie), and the addresses to ask."""
    rng = random.Random(5)
    entries = big_entries(rng)
    v4_file, v6_file = tmp_path / "big.ip4set", tmp_path / "big.ip6trie"
    v4_lines = [
        f"{'!' if e.excluded else ''}{e.key[0].lstrip('!')} :{e.code & 0xFF}:{e.reason}" for e in entries
    ]
    v4_file.write_text("\n".join(line for line, e in zip(v4_lines, entries, strict=True) if e.family == 4))
    v6_file.write_text("".join(f"{e.key[0]} :{e.code & 0xFF}:{e.reason}\n" for e in entries if e.family == 6))
    specs = [f"files.big:ip4set:{v4_file}", f"files.big:ip6trie:{v6_file}", f"two.big:ip4set:{v4_file}"]
    specs.append(f"two.big:ip4set:{v4_file},{v4_file}")  # two IPv4 datasets: no single id
    files = DataFiles([parse_spec(spec) for spec in specs])
    files.load(NOW)
    index = ZoneIndex.build(entries)
    some = rng.sample([e for e in entries if e.family == 4], 300)
    changes: dict[tuple[str, str], Entry | None] = {e.key: None for e in some[:100]}  # removed
    changes |= {e.key: e._replace(code=e.code + 1, reason="changed $") for e in some[100:200]}
    for e in some[200:]:  # added: an address next to one, a net around one, an exclusion
        for new in (listing(str(ipaddress.IPv4Address(e.lo + 1)), 12, "new $", source="new"),):
            changes[new.key] = new
        net = ipaddress.IPv4Network((e.lo & ~0xFF, 24))
        changes[(str(net), "new")] = listing(str(net), 13, "new net", source="new")
    changes[("!" + str(ipaddress.IPv4Address(some[0].lo)), "s")] = exclusion(
        str(ipaddress.IPv4Address(some[0].lo))
    )
    sqlite = Zone("sqlite.big", index)
    churned = Zone("churned.big", index.with_changes(changes))
    zones = compose(Zones.of([sqlite, churned]), files, lambda name: ZoneSettings())
    return zones, big_addresses(entries + [e for e in changes.values() if e is not None], rng)


def test_big_zones_answer_alike_by_id(tmp_path: Path) -> None:
    zones, addresses = big_zones(tmp_path)
    fast_handler, general = handler(zones), handler(zones)
    fast_handler.fast.answer(GOOD, True)  # loads the zones' pieces
    by_name = {state.zone.name: state for state in fast_handler.fast._by_suffix.values()}
    assert {name: state.ids[4] is not None for name, state in by_name.items()} == {
        "sqlite.big": True,
        "churned.big": True,
        "files.big": True,
        "two.big": False,
    }
    assert zones.by_labels["files", "big"].files[0].guide is not None  # the /16 guide is on the path
    assert zones.by_labels["sqlite", "big"].index.guide is not None
    assert zones.by_labels["churned", "big"].index.guide is zones.by_labels["sqlite", "big"].index.guide
    answered = 0
    for n, address in enumerate(addresses):
        for zone in ("sqlite.big", "churned.big", "files.big", "two.big"):
            data = message(address_labels(address) + zone_labels(zone), (1, 16, 255, 28)[n % 4], ident=n)
            fast = fast_handler.fast.answer(data, True)
            if fast is not None:
                answered += 1
                assert fast == general(data, True), (zone, address)
    assert answered > 3.5 * len(addresses)  # nearly all: only what the general path truncates is left
    assert fast_handler.fast._by_suffix  # still loaded: no error made it give up


@pytest.mark.parametrize("kind", ["sqlite", "churned", "files"])
def test_equal_ids_mean_equal_answers(tmp_path: Path, kind: str) -> None:
    """`listing_id` against `lookup`, the rule: -1 exactly when nothing answers; one id, one answer."""
    zones, addresses = big_zones(tmp_path)
    zone = zones.by_labels[kind, "big"]
    index = zone.files[0] if kind == "files" else zone.index
    seen: dict[int, set[tuple[int, str]]] = {}
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if ip.version != 4:
            continue
        found, listings = index.listing_id(4, int(ip), NOW), index.lookup(4, int(ip), NOW)
        if found == -1:
            assert listings == (), address
        elif found >= 0:
            assert listings, address
            seen.setdefault(found, set()).add(tuple(sorted((e.code, e.reason) for e in listings)))
    assert len(seen) > 3 and all(len(answers) == 1 for answers in seen.values())


# --- a real server ---------------------------------------------------------------------------------


def udp_exchange(server: Server, data: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(data, (server.host, server.port))
        return sock.recv(65535)


def tcp_exchange(server: Server, queries: list[bytes]) -> list[bytes]:
    """All queries down one connection, the replies read back in order."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(b"".join(frame(q) for q in queries))
        buffer, replies = b"", []
        while len(replies) < len(queries):
            buffer += sock.recv(65535)
            while len(buffer) >= 2 and len(buffer) >= 2 + int.from_bytes(buffer[:2], "big"):
                size = int.from_bytes(buffer[:2], "big")
                replies.append(buffer[2 : 2 + size])
                buffer = buffer[2 + size :]
        return replies


def test_a_real_server_answers_as_the_general_path(tmp_path: Path) -> None:
    data_file = tmp_path / "bl.ip4set"
    data_file.write_text(
        ":2:Listed: $\n192.0.2.0/24\n!192.0.2.77\n198.51.100.7 :3:Other $ $$\n10.0.0.0/8 :4\n"
    )
    spec = f"bl.example:ip4set:{data_file}"
    files = DataFiles([parse_spec(spec)])
    files.load(time.time())
    general = Handler(Holder(compose(None, files, lambda name: ZoneSettings())), Options())
    queries = [
        message(address_labels(address, [pad, 0, 0, 0]) + [b"bl", b"Example"], qtype, opt=opt, ident=n)
        for n, (address, pad, qtype, opt) in enumerate(
            (address, pad, qtype, opt)
            for address in (
                "192.0.2.1",
                "192.0.2.77",
                "198.51.100.7",
                "10.1.2.3",
                "203.0.113.1",
                "::ffff:192.0.2.1",
            )
            for pad in (0, 2)
            for qtype in (1, 16, 255, 28)
            for opt in (None, opt_record(4096, do=True))
        )
    ]
    server = Server(["--check-interval", "0", spec])
    try:
        for query in queries:
            assert udp_exchange(server, query) == general(query, True), query.hex(" ")
        assert tcp_exchange(server, queries) == [general(q, False) for q in queries]
    finally:
        server.close()
