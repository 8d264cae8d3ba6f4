"""Addresses as integers: targets in every accepted shape, their canonical text, codes, durations, dates,
and the query side (labels in front of a zone origin -> address or prefix).

Expected values come from the stdlib `ipaddress` and `datetime`, never from the module under test.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsbl_server.addresses import (
    Target,
    format_target,
    parse_code,
    parse_duration,
    parse_target,
    parse_when,
    query_address,
    v4_prefix,
    v6_prefix,
)
from dnsbl_server.errors import DnsblError, TargetError

V4_TOP = 2**32 - 1
V6_TOP = 2**128 - 1
MAPPED = ipaddress.ip_network("::ffff:0:0/96")


def net(text: str, excluded: bool = False) -> Target:
    """The Target a network or single address should parse to, computed with ipaddress."""
    network = ipaddress.ip_network(text)
    return Target(network.version, int(network[0]), int(network[-1]), excluded)


def span(first: str, last: str) -> Target:
    a, b = ipaddress.ip_address(first), ipaddress.ip_address(last)
    return Target(a.version, int(a), int(b))


# --- parse_target: accepted forms ------------------------------------------------------------

ACCEPTED = [
    # single addresses
    ("192.0.2.7", net("192.0.2.7/32"), "192.0.2.7"),
    ("0.0.0.0", net("0.0.0.0/32"), "0.0.0.0"),
    ("255.255.255.255", net("255.255.255.255/32"), "255.255.255.255"),
    ("  192.0.2.7 ", net("192.0.2.7/32"), "192.0.2.7"),
    # CIDR
    ("192.0.2.0/24", net("192.0.2.0/24"), "192.0.2.0/24"),
    ("10.0.0.0/8", net("10.0.0.0/8"), "10.0.0.0/8"),
    ("0.0.0.0/0", net("0.0.0.0/0"), "0.0.0.0/0"),
    ("192.0.2.7/32", net("192.0.2.7/32"), "192.0.2.7"),
    ("192.0.2.6/31", net("192.0.2.6/31"), "192.0.2.6/31"),
    # rbldnsd prefix forms
    ("10", net("10.0.0.0/8"), "10.0.0.0/8"),
    ("10.20", net("10.20.0.0/16"), "10.20.0.0/16"),
    ("10.20.30", net("10.20.30.0/24"), "10.20.30.0/24"),
    ("127/24", net("127.0.0.0/24"), "127.0.0.0/24"),
    ("10.16/12", net("10.16.0.0/12"), "10.16.0.0/12"),
    ("127.16-31", span("127.16.0.0", "127.31.255.255"), "127.16.0.0/12"),
    ("127.16-17", span("127.16.0.0", "127.17.255.255"), "127.16.0.0/15"),
    ("127.16-20", span("127.16.0.0", "127.20.255.255"), "127.16.0.0-127.20.255.255"),
    ("10.0.0.1-5", span("10.0.0.1", "10.0.0.5"), "10.0.0.1-10.0.0.5"),
    ("10.0.0-3", span("10.0.0.0", "10.0.3.255"), "10.0.0.0/22"),
    # full ranges; a range that is a CIDR is written as the CIDR
    ("10.0.0.5-10.0.0.9", span("10.0.0.5", "10.0.0.9"), "10.0.0.5-10.0.0.9"),
    ("10.0.0.0-10.0.0.255", net("10.0.0.0/24"), "10.0.0.0/24"),
    ("10.0.0.0-10.0.1.255", net("10.0.0.0/23"), "10.0.0.0/23"),
    ("10.0.0.1-10.0.0.2", span("10.0.0.1", "10.0.0.2"), "10.0.0.1-10.0.0.2"),
    ("10.0.0.7-10.0.0.7", net("10.0.0.7/32"), "10.0.0.7"),
    # IPv6: lowercase and compressed
    ("2001:DB8::1", net("2001:db8::1/128"), "2001:db8::1"),
    ("2001:0db8:0000:0000:0000:0000:0000:0001", net("2001:db8::1/128"), "2001:db8::1"),
    ("2001:DB8::/32", net("2001:db8::/32"), "2001:db8::/32"),
    ("2001:db8::/128", net("2001:db8::/128"), "2001:db8::"),
    ("::/0", net("::/0"), "::/0"),
    ("2001:db8::-2001:db8::ff", net("2001:db8::/120"), "2001:db8::/120"),
    ("2001:db8::1-2001:db8::3", span("2001:db8::1", "2001:db8::3"), "2001:db8::1-2001:db8::3"),
    # IPv4-mapped IPv6 is IPv4
    ("::ffff:192.0.2.7", net("192.0.2.7/32"), "192.0.2.7"),
    ("::FFFF:C000:0207", net("192.0.2.7/32"), "192.0.2.7"),
    ("::ffff:192.0.2.0/120", net("192.0.2.0/24"), "192.0.2.0/24"),
    ("::ffff:0:0/96", net("0.0.0.0/0"), "0.0.0.0/0"),
    ("::ffff:10.0.0.1-::ffff:10.0.0.5", span("10.0.0.1", "10.0.0.5"), "10.0.0.1-10.0.0.5"),
    # ... but a range only partly inside ::ffff:0:0/96 stays IPv6
    (
        "::fffe:ffff:ffff-::ffff:0:5",
        span("::fffe:ffff:ffff", "::ffff:0:5"),
        f"::fffe:ffff:ffff-{ipaddress.IPv6Address('::ffff:0:5')}",  # the stdlib's spelling varies by version
    ),
]


@pytest.mark.parametrize(("text", "expected", "canonical"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_parse_target_accepts(text: str, expected: Target, canonical: str) -> None:
    assert parse_target(text) == expected
    bang = parse_target("!" + text)
    assert bang == Target(expected.family, expected.lo, expected.hi, excluded=True)
    assert format_target(parse_target(text)) == canonical
    assert str(bang) == "!" + canonical


def test_exclusion_forms() -> None:
    assert parse_target("!192.0.2.0/24") == net("192.0.2.0/24", excluded=True)
    assert parse_target("! 192.0.2.7") == net("192.0.2.7/32", excluded=True)
    assert parse_target(" !10.20") == net("10.20.0.0/16", excluded=True)
    assert parse_target("!::ffff:192.0.2.7") == net("192.0.2.7/32", excluded=True)
    assert not parse_target("192.0.2.7").excluded


def test_size() -> None:
    assert parse_target("10.20").size == 65536
    assert parse_target("192.0.2.7").size == 1
    assert parse_target("2001:db8::/64").size == 2**64


# --- parse_target: rejections ----------------------------------------------------------------

REJECTED = [
    "192.0.2.5/24",  # host bits set
    "2001:db8::1/64",  # host bits set
    "256.0.0.1",
    "192.0.2.256",
    "10.300",
    "1.2.3.4.5",
    "10.0.0.9-10.0.0.5",  # lo > hi
    "10.0.0.9-5",  # lo > hi, rbldnsd short form
    "2001:db8::9-2001:db8::1",
    "garbage",
    "",
    "   ",
    "!",
    "1..2",
    "1.2.3.",
    ".1.2.3",
    "1.2.3.4/33",
    "1.2.3.4/",
    "1.2.3.4/x",
    "1.2.3.4/-1",
    "2001:db8::/129",
    "1.2.3.4-",
    "-1.2.3.4",
    "1.2.3.4-1.2",  # ends of different lengths
    "1.2.3.4-5.6",
    "0x0a.0.0.1",
    "1.2.3.4 5",
    "1234.0.0.1",
    "2001:db8::g",
    "2001:db8:::1",
    "١٢٣.0.0.1",  # non-ASCII digits
    "!!192.0.2.7",
]


@pytest.mark.parametrize("text", REJECTED)
def test_parse_target_rejects_naming_the_value(text: str) -> None:
    with pytest.raises(TargetError) as caught:
        parse_target(text)
    assert repr(text) in str(caught.value)
    assert isinstance(caught.value, DnsblError)


def test_host_bits_are_masked_only_when_loose() -> None:
    with pytest.raises(TargetError, match="192.0.2.5/24"):
        parse_target("192.0.2.5/24")
    assert parse_target("192.0.2.5/24", loose=True) == net("192.0.2.0/24")
    assert parse_target("!192.0.2.5/24", loose=True) == net("192.0.2.0/24", excluded=True)
    assert parse_target("2001:db8::1/64", loose=True) == net("2001:db8::/64")
    assert parse_target("10.20.30/8", loose=True) == net("10.0.0.0/8")
    assert parse_target("192.0.2.0/24", loose=True) == net("192.0.2.0/24")


def test_octet_256_and_reversed_ranges_say_why() -> None:
    with pytest.raises(TargetError, match="over 255"):
        parse_target("10.0.0.256")
    with pytest.raises(TargetError, match="after its end"):
        parse_target("10.0.0.9-10.0.0.5")


# --- canonical text: format_target round trip -------------------------------------------------


@st.composite
def targets(draw: st.DrawFn) -> Target:
    """A random range of either family, biased to CIDR blocks and single addresses."""
    family = draw(st.sampled_from([4, 6]))
    bits = 32 if family == 4 else 128
    shape = draw(st.sampled_from(["address", "cidr", "range"]))
    if shape == "cidr":
        prefix = draw(st.integers(0, bits))
        base = draw(st.integers(0, 2**bits - 1)) >> (bits - prefix) << (bits - prefix) if prefix else 0
        lo, hi = base, base + 2 ** (bits - prefix) - 1
    else:
        lo = draw(st.integers(0, 2**bits - 1))
        hi = lo if shape == "address" else draw(st.integers(lo, 2**bits - 1))
    if family == 6 and int(MAPPED[0]) <= lo and hi <= int(MAPPED[-1]):
        family, lo, hi = 4, lo - int(MAPPED[0]), hi - int(MAPPED[0])  # the canonical form of a mapped range
    return Target(family, lo, hi, draw(st.booleans()))


@settings(max_examples=400, deadline=None)
@given(targets())
def test_format_then_parse_is_identity(target: Target) -> None:
    text = format_target(target)
    assert parse_target(text) == target
    assert format_target(parse_target(text)) == text
    assert text.startswith("!") == target.excluded
    assert text == text.lower()


@settings(max_examples=200, deadline=None)
@given(targets())
def test_canonical_text_agrees_with_ipaddress(target: Target) -> None:
    body = format_target(target).lstrip("!")
    first = ipaddress.ip_address(target.lo if target.family == 4 else ipaddress.IPv6Address(target.lo))
    last = ipaddress.ip_address(target.hi if target.family == 4 else ipaddress.IPv6Address(target.hi))
    blocks = list(ipaddress.summarize_address_range(first, last))
    if target.lo == target.hi:
        assert body == str(first)
    elif len(blocks) == 1:
        assert body == str(blocks[0])
    else:
        assert body == f"{first}-{last}"


@settings(max_examples=100, deadline=None)
@given(st.integers(0, V4_TOP), st.integers(0, 32))
def test_mapped_cidr_is_the_ipv4_cidr(address: int, prefix: int) -> None:
    v4 = ipaddress.ip_network((address, prefix), strict=False)
    mapped = f"::ffff:{v4.network_address}/{96 + prefix}"
    assert parse_target(mapped) == net(str(v4))


# --- codes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2", "127.0.0.2"),
        ("10", "127.0.0.10"),
        ("255", "127.0.0.255"),
        (" 3 ", "127.0.0.3"),
        ("127.0.0.2", "127.0.0.2"),
        ("127.0.0.4", "127.0.0.4"),
        ("127.1.2.3", "127.1.2.3"),
        ("127.255.255.255", "127.255.255.255"),
    ],
)
def test_parse_code_accepts(text: str, expected: str) -> None:
    assert parse_code(text) == int(ipaddress.IPv4Address(expected))


@pytest.mark.parametrize(
    "text", ["127.0.0.0", "127.0.0.1", "0", "1", "10.0.0.2", "128.0.0.2", "256", "1000", "x", "", "-2", "2.5"]
)
def test_parse_code_rejects(text: str) -> None:
    with pytest.raises(TargetError) as caught:
        parse_code(text)
    assert repr(text) in str(caught.value)


# --- durations and dates ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("5m", 5 * 60),
        ("2h", 2 * 3600),
        ("7d", 7 * 86400),
        ("1w", 7 * 86400),
        ("1w2d", 9 * 86400),
        ("1d12h30m5s", 86400 + 12 * 3600 + 30 * 60 + 5),
        ("2H", 2 * 3600),
        ("0", 0),
        (" 3d ", 3 * 86400),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "x", "5x", "d", "-5m", "1.5h", "5 m", "m5"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(TargetError):
        parse_duration(text)


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", NOW + 90),
        ("7d", NOW + 7 * 86400),
        ("1w2d", NOW + 9 * 86400),
        ("1W2D", NOW + 9 * 86400),
        ("1w2", NOW + 7 * 86400 + 2),
        ("120", NOW + 120),
        ("2030-01-02", datetime(2030, 1, 2, tzinfo=UTC).timestamp()),
        ("2030-01-02T03:04:05", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()),
        ("2030-01-02T03:04:05Z", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()),
        ("2030-01-02 03:04:05", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()),
        ("2030-01-02T05:04:05+02:00", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()),
    ],
)
def test_parse_when(text: str, expected: float) -> None:
    assert parse_when(text, now=NOW) == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 999), st.sampled_from("smhdwSMHDW")), min_size=1, max_size=4))
def test_parse_when_takes_every_duration(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{unit}" for n, unit in parts)
    seconds = sum(n * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[u.lower()] for n, u in parts)
    assert parse_duration(text) == seconds
    assert parse_when(text, now=NOW) == NOW + seconds


@pytest.mark.parametrize("text", ["", "tomorrow", "2030-13-01", "2030-01-02T25:00", "7 days", "5x"])
def test_parse_when_rejects(text: str) -> None:
    with pytest.raises(TargetError):
        parse_when(text, now=NOW)


# --- query names ------------------------------------------------------------------------------


def nibbles(address: str) -> list[str]:
    """The 32 labels of an IPv6 address's reverse name, in query order (via the stdlib)."""
    return ipaddress.IPv6Address(address).reverse_pointer.split(".")[:32]


def octets(address: str) -> list[str]:
    return ipaddress.IPv4Address(address).reverse_pointer.split(".")[:4]


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["7", "113", "0", "203"], (4, int(ipaddress.IPv4Address("203.0.113.7")))),
        (["2", "0", "0", "127"], (4, 0x7F000002)),
        (["0", "0", "0", "0"], (4, 0)),
        (["255", "255", "255", "255"], (4, V4_TOP)),
        (["007", "0", "0", "127"], (4, 0x7F000007)),  # leading zeros, as rbldnsd
        (nibbles("2001:db8::1"), (6, int(ipaddress.IPv6Address("2001:db8::1")))),
        ([n.upper() for n in nibbles("2001:db8::abcd")], (6, int(ipaddress.IPv6Address("2001:db8::abcd")))),
        (nibbles("::ffff:127.0.0.2"), (4, 0x7F000002)),  # mapped IPv6 is IPv4
        (nibbles("::ffff:203.0.113.7"), (4, int(ipaddress.IPv4Address("203.0.113.7")))),
        (nibbles("::fffe:7f00:2"), (6, int(ipaddress.IPv6Address("::fffe:7f00:2")))),
        (nibbles("::"), (6, 0)),
    ],
)
def test_query_address(labels: list[str], expected: tuple[int, int]) -> None:
    assert query_address(labels) == expected


@pytest.mark.parametrize(
    "labels",
    [
        [],
        ["2"],
        ["2", "0", "127"],
        ["1", "2", "0", "0", "127"],
        ["256", "0", "0", "127"],
        ["2", "0", "0", "1270"],
        ["a", "0", "0", "127"],
        ["2", "", "0", "127"],
        ["-1", "0", "0", "127"],
        ["+1", "0", "0", "127"],
        ["٢", "0", "0", "127"],
        ["0x7f", "0", "0", "1"],
        nibbles("2001:db8::1")[:31],
        nibbles("2001:db8::1") + ["0"],
        nibbles("2001:db8::1")[:31] + ["g"],
        nibbles("2001:db8::1")[:31] + ["10"],
        nibbles("2001:db8::1")[:31] + [""],
    ],
)
def test_query_address_rejects(labels: list[str]) -> None:
    assert query_address(labels) is None


@settings(max_examples=200, deadline=None)
@given(st.integers(0, V4_TOP))
def test_query_address_reads_any_ipv4_name(value: int) -> None:
    address = ipaddress.IPv4Address(value)
    assert query_address(octets(str(address))) == (4, value)
    assert query_address(nibbles(f"::ffff:{address}")) == (4, value)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, V6_TOP).filter(lambda v: ipaddress.IPv6Address(v) not in MAPPED))
def test_query_address_reads_any_ipv6_name(value: int) -> None:
    assert query_address(nibbles(str(ipaddress.IPv6Address(value)))) == (6, value)


@pytest.mark.parametrize(
    ("labels", "network"),
    [
        (["203"], "203.0.0.0/8"),
        (["0", "203"], "203.0.0.0/16"),
        (["113", "0", "203"], "203.0.113.0/24"),
        (["7", "113", "0", "203"], "203.0.113.7/32"),
        (["0", "127"], "127.0.0.0/16"),
    ],
)
def test_v4_prefix(labels: list[str], network: str) -> None:
    target = net(network)
    assert v4_prefix(labels) == (target.lo, target.hi)


@pytest.mark.parametrize(
    "labels", [[], ["1", "2", "3", "4", "5"], ["256"], ["x"], ["1", "a"], [""], ["1000"]]
)
def test_v4_prefix_rejects(labels: list[str]) -> None:
    assert v4_prefix(labels) is None


@settings(max_examples=200, deadline=None)
@given(st.integers(0, V6_TOP), st.integers(1, 32))
def test_v6_prefix(value: int, length: int) -> None:
    network = ipaddress.IPv6Network((value, 4 * length), strict=False)
    labels = nibbles(str(network.network_address))[32 - length :]
    assert v6_prefix(labels) == (int(network[0]), int(network[-1]))


@pytest.mark.parametrize("labels", [[], ["0"] * 33, ["g"], ["0", "10"], [""], ["0", "x"]])
def test_v6_prefix_rejects(labels: list[str]) -> None:
    assert v6_prefix(labels) is None
