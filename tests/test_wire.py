"""The wire codec: per-packet policy (drop, FORMERR, NOTIMP, EDNS, size) and the TCP framer.

Queries are built and replies parsed with dnspython, a different DNS implementation from the dnslib
inside `wire`; malformed queries are written byte by byte. Replies come from the real resolver over
real zones: no mocks of our own code.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnsbl_server import wire
from dnsbl_server.addresses import parse_address
from dnsbl_server.index import Entry, ZoneIndex
from dnsbl_server.resolver import Answer, Question, resolve
from dnsbl_server.zone import Zone, Zones

NOW = 1_000_000.0
QID = 0xBEEF
CODE = 0x7F000002  # 127.0.0.2


def entry(address: str, number: int, reason: str) -> Entry:
    family, value = parse_address(address)
    return Entry((address, f"source{number}"), family, value, value, False, CODE + number, reason)


def text(number: int, size: int) -> str:
    """A distinct TXT reason of exactly `size` bytes."""
    return f"reason {number} ".ljust(size, "x")


# big.example: one address per reply size, each listed by several equally specific entries
SMALL, MEDIUM, LARGE, PAIR = "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"
ENTRIES = [
    entry(SMALL, 0, "small"),
    *(entry(MEDIUM, n, text(n, 200)) for n in range(3)),  # 512 < reply < 1232
    *(entry(LARGE, n, text(n, 200)) for n in range(8)),  # 1232 < reply < 4096
    *(entry(PAIR, n, text(n, 150)) for n in range(2)),  # 100 < reply < 512
]
ZONES = Zones.of(
    [
        Zone("bl.example", ZoneIndex.build([entry("192.0.2.1", 0, "Listed: $")])),
        Zone("big.example", ZoneIndex.build(ENTRIES), test_points=False),
    ]
)


def resolver(zones: Zones = ZONES) -> Callable[[Question], Answer]:
    return lambda question: resolve(question, zones, NOW)


def name(address: str, zone: str = "big.example") -> str:
    return ".".join(reversed(address.split("."))) + "." + zone


def query(qname: str = "1.2.0.192.bl.example", rdtype: str = "A", **kwargs: object) -> bytes:
    kwargs.setdefault("id", QID)
    return dns.message.make_query(qname, rdtype, **kwargs).to_wire()  # type: ignore[arg-type]


def ask(data: bytes, *, udp: bool = True, udp_cap: int = wire.UDP_CAP, zones: Zones = ZONES) -> bytes:
    reply = wire.respond(data, resolver(zones), udp=udp, udp_cap=udp_cap)
    assert reply is not None
    return reply


def parsed(data: bytes, **kwargs: object) -> dns.message.Message:
    return dns.message.from_wire(ask(data, **kwargs))  # type: ignore[arg-type]


def header(data: bytes) -> tuple[int, int, int, int, int, int]:
    return struct.unpack_from("!HHHHHH", data)  # type: ignore[return-value]


def raw(question: bytes, *, flags: int = 0x0100, qdcount: int = 1, arcount: int = 0) -> bytes:
    return struct.pack("!HHHHHH", QID, flags, qdcount, 0, 0, arcount) + question


def labels(*parts: bytes) -> bytes:
    return b"".join(bytes([len(p)]) + p for p in parts) + b"\x00"


A_IN = b"\x00\x01\x00\x01"
GOOD_QUESTION = labels(b"2", b"0", b"0", b"127", b"bl", b"example") + A_IN


# --- Framer -----------------------------------------------------------------------------------


MESSAGES = [b"first", b"", b"\x00\x01\x02", bytes(range(256)) * 3]
STREAM = b"".join(wire.frame(m) for m in MESSAGES)


def test_framer_whole_stream() -> None:
    framer = wire.Framer()
    assert framer.feed(STREAM) == MESSAGES
    assert framer.pending == 0


def test_framer_one_byte_at_a_time() -> None:
    framer = wire.Framer()
    out = [m for i in range(len(STREAM)) for m in framer.feed(STREAM[i : i + 1])]
    assert out == MESSAGES
    assert framer.pending == 0


def test_framer_empty_feed_and_lone_length_byte() -> None:
    framer = wire.Framer()
    assert framer.feed(b"") == []
    assert framer.feed(b"\x00") == []
    assert framer.pending == 1
    assert framer.feed(b"\x02ab") == [b"ab"]
    assert framer.pending == 0


def test_framer_partial_trailing_message_is_pending() -> None:
    framer = wire.Framer()
    partial = wire.frame(b"second message")[:7]
    assert framer.feed(wire.frame(b"first") + partial) == [b"first"]
    assert framer.pending == 7
    assert framer.feed(wire.frame(b"second message")[7:]) == [b"second message"]
    assert framer.pending == 0


def test_framer_largest_message() -> None:
    biggest = bytes(range(256)) * 255 + bytes(255)
    assert len(biggest) == wire.TCP_MAX
    framed = wire.frame(biggest)
    assert framed[:2] == b"\xff\xff"
    framer = wire.Framer()
    assert framer.feed(framed[:40000]) == []
    assert framer.pending == 40000
    assert framer.feed(framed[40000:] + wire.frame(b"")) == [biggest, b""]


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(st.binary(max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=12),
)
def test_framer_any_chunking(messages: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(wire.frame(m) for m in messages)
    points = sorted({0, len(stream), *(c for c in cuts if c <= len(stream))})
    framer = wire.Framer()
    out = [m for a, b in zip(points, points[1:], strict=False) for m in framer.feed(stream[a:b])]
    assert out == messages
    assert framer.pending == 0


# --- drop and header-only errors --------------------------------------------------------------


@pytest.mark.parametrize("size", range(12))
def test_shorter_than_a_header_is_dropped(size: int) -> None:
    assert wire.respond(query()[:size], resolver(), udp=True) is None


def test_a_response_is_dropped() -> None:
    data = bytearray(query())
    data[2] |= 0x80  # QR
    assert wire.respond(bytes(data), resolver(), udp=True) is None
    assert wire.respond(bytes(data), resolver(), udp=False) is None


def assert_header_only(reply: bytes, rcode: int, opcode: int = 0) -> None:
    ident, flags, *counts = header(reply)
    assert len(reply) == 12
    assert ident == QID
    assert flags & 0x8000  # QR
    assert (flags >> 11) & 0xF == opcode
    assert flags & 0x0100  # RD echoed
    assert flags & 0xF == rcode
    assert counts == [0, 0, 0, 0]


LONG_LABEL_NAME = labels(b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 61)  # 255 octets: the most allowed
assert len(LONG_LABEL_NAME) == 255

MALFORMED = {
    "label 0x40": b"\x40" + b"a" * 64 + b"\x00" + A_IN,
    "label 0x80": b"\x80" + b"a" * 128 + b"\x00" + A_IN,
    "label 0xbf": b"\xbf" + b"a" * 191 + b"\x00" + A_IN,
    "name of 256 octets": labels(b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 62) + A_IN,
    "name far over 255": labels(*[b"x" * 63] * 5) + A_IN,
    "pointer to itself": b"\xc0\x0c" + A_IN,
    "pointer loop": b"\x01a\xc0\x0c" + A_IN,
    "forward pointer": b"\x01a\xc0\x14" + A_IN + b"\x01b\x00",
    "truncated pointer": b"\x01a\xc0",
    "name runs off the end": b"\x01a\x05abc",
    "no type or class": labels(b"bl", b"example"),
    "half a type": labels(b"bl", b"example") + b"\x00",
    "type but no class": labels(b"bl", b"example") + b"\x00\x01",
    "no question at all": b"",
}


@pytest.mark.parametrize("question", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_question_is_formerr(question: bytes) -> None:
    assert_header_only(ask(raw(question)), dns.rcode.FORMERR)


def test_name_of_255_octets_is_not_formerr() -> None:
    reply = dns.message.from_wire(ask(raw(LONG_LABEL_NAME + A_IN)))
    assert reply.rcode() == dns.rcode.REFUSED  # well formed, in no zone
    assert len(reply.question[0].name.to_wire()) == 255


@pytest.mark.parametrize("label", [b"\xff", b"\x80abc", b"\x00", b" ", b"caf\xc3\xa9", b"\\046"])
def test_any_octets_make_a_label(label: bytes) -> None:
    # RFC 2181 section 11: a label is any binary string; only its length is restricted
    data = raw(labels(label, b"bl", b"example") + A_IN)
    reply_wire = ask(data)
    reply = dns.message.from_wire(reply_wire)
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.question[0].name.labels[0] == label
    assert reply_wire[12 : len(data)] == data[12:]


def test_a_dot_inside_a_label_does_not_split_it() -> None:
    listed = raw(labels(b"1", b"2", b"0", b"192", b"bl", b"example") + A_IN)
    assert dns.message.from_wire(ask(listed)).rcode() == dns.rcode.NOERROR
    dotted = raw(labels(b"1", b"2.0", b"192", b"bl", b"example") + A_IN)
    assert dns.message.from_wire(ask(dotted)).rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize("qdcount", [0, 2])
def test_qdcount_other_than_one_is_formerr(qdcount: int) -> None:
    assert_header_only(ask(raw(GOOD_QUESTION * qdcount, qdcount=qdcount)), dns.rcode.FORMERR)


def opt_rr(payload: int = 1232, ttl: int = 0, rdata: bytes = b"") -> bytes:
    return b"\x00" + struct.pack("!HHIH", 41, payload, ttl, len(rdata)) + rdata


def test_two_opt_records_are_formerr() -> None:
    data = raw(GOOD_QUESTION + opt_rr() + opt_rr(4096), arcount=2)
    assert_header_only(ask(data), dns.rcode.FORMERR)


def test_one_raw_opt_record_is_fine() -> None:
    reply = dns.message.from_wire(ask(raw(GOOD_QUESTION + opt_rr(), arcount=1)))
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.edns == 0


def test_pointer_into_the_header_is_followed() -> None:
    # offset 4 is the high byte of qdcount, 0: the root name, asked as a (legal) backward pointer
    reply = dns.message.from_wire(ask(raw(b"\xc0\x04" + A_IN)))
    assert reply.rcode() == dns.rcode.REFUSED
    assert reply.question[0].name.to_text() == "."


@pytest.mark.parametrize("opcode", [dns.opcode.STATUS, dns.opcode.NOTIFY])
def test_other_opcodes_are_notimp(opcode: int) -> None:
    message = dns.message.make_query("1.2.0.192.bl.example", "A", id=QID)
    message.set_opcode(opcode)
    reply = dns.message.from_wire(ask(message.to_wire()))
    assert reply.opcode() == opcode
    assert reply.rcode() == dns.rcode.NOTIMP
    assert reply.id == QID
    assert reply.flags & dns.flags.QR
    assert not reply.answer
    assert reply.question[0].name == message.question[0].name


def test_other_opcode_with_malformed_question_is_header_only_notimp() -> None:
    flags = 0x0100 | (dns.opcode.NOTIFY << 11)
    assert_header_only(ask(raw(b"\xc0\x0c" + A_IN, flags=flags)), dns.rcode.NOTIMP, dns.opcode.NOTIFY)


def test_servfail_is_header_only_and_drops_what_respond_drops() -> None:
    reply = wire.servfail(query())
    assert reply is not None
    assert_header_only(reply, dns.rcode.SERVFAIL)
    assert wire.servfail(query()[:11]) is None
    assert wire.servfail(bytes([0, 0, 0x80]) + bytes(9)) is None


# --- EDNS -------------------------------------------------------------------------------------


@pytest.mark.parametrize("do", [True, False])
def test_edns_reply_carries_our_own_opt(do: bool) -> None:
    options = [dns.edns.GenericOption(dns.edns.NSID, b""), dns.edns.CookieOption(b"clientck", b"")]
    data = query(use_edns=0, payload=4096, want_dnssec=do, options=options)
    assert b"clientck" in data
    reply_wire = ask(data)
    reply = dns.message.from_wire(reply_wire)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.edns == 0
    assert reply.payload == 1232
    assert bool(reply.ednsflags & dns.flags.DO) is do
    assert reply.options == ()
    assert b"clientck" not in reply_wire
    assert header(reply_wire)[5] == 1  # exactly one additional record: the OPT (dnspython lifts it out)
    assert not reply.additional


def test_edns_version_1_is_badvers() -> None:
    reply = parsed(query(use_edns=1, payload=4096))
    assert reply.rcode() == dns.rcode.BADVERS == 16
    assert reply.edns == 0
    assert reply.payload == 1232
    assert not reply.answer
    assert not reply.flags & dns.flags.AA


def test_no_edns_no_opt() -> None:
    reply_wire = ask(query())
    reply = dns.message.from_wire(reply_wire)
    assert reply.edns == -1
    assert header(reply_wire)[5] == 0


# --- size -------------------------------------------------------------------------------------


def sizes(address: str, rdtype: str = "TXT", **kwargs: object) -> tuple[bytes, int]:
    """The query and the length of its whole reply (over TCP)."""
    data = query(name(address), rdtype, **kwargs)
    return data, len(ask(data, udp=False))


def assert_truncated(reply_wire: bytes) -> None:
    reply = dns.message.from_wire(reply_wire)
    assert reply.flags & dns.flags.TC
    assert not reply.answer and not reply.authority
    assert len(reply.question) == 1
    assert reply.rcode() == dns.rcode.NOERROR


def assert_whole(reply_wire: bytes, full: int) -> None:
    assert len(reply_wire) == full
    reply = dns.message.from_wire(reply_wire)
    assert not reply.flags & dns.flags.TC
    assert reply.answer


def test_fixture_reply_sizes() -> None:
    assert sizes(SMALL)[1] < 100
    assert 100 < sizes(PAIR)[1] < 512
    assert 512 < sizes(MEDIUM)[1] < 1232
    assert 1232 < sizes(LARGE, use_edns=0)[1] < 4096


@pytest.mark.parametrize("address", [MEDIUM, LARGE])
def test_big_answer_to_plain_udp_is_truncated_and_whole_over_tcp(address: str) -> None:
    data, full = sizes(address)
    assert_truncated(ask(data))
    assert_whole(ask(data, udp=False), full)


def test_big_any_answer_is_truncated_over_udp() -> None:
    data, full = sizes(LARGE, "ANY")
    assert full > 512
    assert_truncated(ask(data))
    assert len(dns.message.from_wire(ask(data, udp=False)).answer) == 2  # A and TXT rrsets


def test_edns_payload_is_capped_at_udp_cap() -> None:
    medium, medium_full = sizes(MEDIUM, use_edns=0, payload=4096)
    large, large_full = sizes(LARGE, use_edns=0, payload=4096)
    assert_whole(ask(medium), medium_full)
    assert_truncated(ask(large))
    assert dns.message.from_wire(ask(large)).edns == 0  # the truncated reply keeps its OPT
    assert_whole(ask(large, udp_cap=4096), large_full)
    assert_truncated(ask(large, udp_cap=1500))


def test_edns_payload_below_512_counts_as_512() -> None:
    pair, pair_full = sizes(PAIR, use_edns=0, payload=100)
    medium, _ = sizes(MEDIUM, use_edns=0, payload=100)
    assert_whole(ask(pair), pair_full)
    assert_truncated(ask(medium))


def test_edns_payload_between_512_and_the_cap_is_the_limit() -> None:
    full = sizes(MEDIUM, use_edns=0)[1]  # the payload field does not change the reply's length
    assert_whole(ask(query(name(MEDIUM), "TXT", use_edns=0, payload=full)), full)
    assert_truncated(ask(query(name(MEDIUM), "TXT", use_edns=0, payload=full - 1)))


def two_reasons_zones(total: int) -> Zones:
    first = total // 2
    entries = [entry(SMALL, 0, text(0, first)), entry(SMALL, 1, text(1, total - first))]
    return Zones.of([Zone("big.example", ZoneIndex.build(entries), test_points=False)])


def test_exactly_512_bytes_fits_and_513_does_not() -> None:
    data = query(name(SMALL), "TXT")
    base = len(ask(data, udp=False, zones=two_reasons_zones(200))) - 200
    fits, over = two_reasons_zones(512 - base), two_reasons_zones(513 - base)
    assert_whole(ask(data, zones=fits), 512)
    assert_truncated(ask(data, zones=over))
    assert_whole(ask(data, udp=False, zones=over), 513)


# --- header and question echo -----------------------------------------------------------------


def question_wire(data: bytes) -> bytes:
    return data[12 : data.index(b"\x00", 12) + 5]


@pytest.mark.parametrize("rd", [True, False])
def test_reply_echoes_id_rd_and_question_case(rd: bool) -> None:
    asked = name(SMALL, "BiG.ExAmPlE")
    data = query(asked, "A", flags=dns.flags.RD if rd else 0, id=0x1234)
    reply_wire = ask(data)
    reply = dns.message.from_wire(reply_wire)
    assert reply.id == 0x1234
    assert bool(reply.flags & dns.flags.RD) is rd
    assert reply.flags & dns.flags.QR
    assert reply.flags & dns.flags.AA
    assert reply.opcode() == dns.opcode.QUERY
    assert question_wire(reply_wire) == question_wire(data)
    assert reply.question[0].name.to_text() == asked + "."
    assert [rrset.name.to_text() for rrset in reply.answer] == [asked + "."]
    assert [rr.to_text() for rr in reply.answer[0]] == ["127.0.0.2"]


def test_txt_answer_and_nxdomain_are_authoritative() -> None:
    listed = parsed(query("1.2.0.192.bl.example", "TXT"))
    assert listed.flags & dns.flags.AA
    assert [rr.to_text() for rr in listed.answer[0]] == ['"Listed: 192.0.2.1"']
    missing = parsed(query("9.9.9.9.bl.example"))
    assert missing.rcode() == dns.rcode.NXDOMAIN
    assert missing.flags & dns.flags.AA
    assert [rrset.rdtype for rrset in missing.authority] == [dns.rdatatype.SOA]


def test_refused_is_not_authoritative() -> None:
    reply = parsed(query("example.org"))
    assert reply.rcode() == dns.rcode.REFUSED
    assert not reply.flags & dns.flags.AA


def test_apex_answer_keeps_case_and_is_authoritative() -> None:
    reply_wire = ask(query("Bl.Example", "NS"))
    reply = dns.message.from_wire(reply_wire)
    assert reply.flags & dns.flags.AA
    assert [rrset.name.to_text() for rrset in reply.answer] == ["Bl.Example."]
    assert [rr.to_text() for rr in reply.answer[0]] == ["ns.bl.example."]


# --- fuzz -------------------------------------------------------------------------------------

ALLOWED = {
    dns.rcode.NOERROR,
    dns.rcode.FORMERR,
    dns.rcode.NOTIMP,
    dns.rcode.REFUSED,
    dns.rcode.NXDOMAIN,
    dns.rcode.BADVERS,
}
SEEDS = [
    query(),
    query("1.2.0.192.bl.example", "TXT", use_edns=0, want_dnssec=True),
    query(name(LARGE), "ANY", use_edns=0, payload=4096, options=[dns.edns.CookieOption(b"clientck", b"")]),
    query("bl.example", "SOA", use_edns=1),
    raw(GOOD_QUESTION + opt_rr(), arcount=1),
]


def check_reply(data: bytes, udp: bool) -> None:
    reply = wire.respond(data, resolver(), udp=udp)
    if len(data) < 12 or data[2] & 0x80:
        assert reply is None
        return
    assert reply is not None
    assert len(reply) >= 12
    assert reply[:2] == data[:2]
    assert reply[2] & 0x80
    assert (reply[2] >> 3) & 0xF == (data[2] >> 3) & 0xF  # opcode echoed
    if udp:
        assert len(reply) <= wire.UDP_CAP
    if (data[2] >> 3) & 0xF == dns.opcode.UPDATE:
        # dnspython reads an UPDATE's question as its zone section, which must ask for SOA; we echo
        # whatever was asked, so read the rcode from the header
        assert reply[3] & 0xF in (dns.rcode.NOTIMP, dns.rcode.FORMERR)
        return
    message = dns.message.from_wire(reply)  # dnspython reads every other reply we send
    assert message.rcode() in ALLOWED


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


EDITS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 600), st.integers(0, 255)), max_size=6)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(SEEDS), edits=EDITS, udp=st.booleans())
def test_fuzz_mutated_queries(seed: bytes, edits: list[tuple[int, int, int]], udp: bool) -> None:
    check_reply(mutate(seed, edits), udp)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600), udp=st.booleans())
def test_fuzz_random_bytes(data: bytes, udp: bool) -> None:
    check_reply(data, udp)


@settings(max_examples=200, deadline=None)
@given(
    flags=st.integers(0, 0x7FFF),
    question=st.binary(max_size=80),
    tail=st.binary(max_size=40),
    counts=st.tuples(*[st.integers(0, 3)] * 4),
)
def test_fuzz_headers_that_look_like_queries(
    flags: int, question: bytes, tail: bytes, counts: tuple[int, int, int, int]
) -> None:
    # random bytes rarely pass the header checks; these always do, and vary what follows
    data = struct.pack("!HHHHHH", QID, flags, *counts) + question + tail
    check_reply(data, udp=True)
