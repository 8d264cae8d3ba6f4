"""Addresses in every shape we accept, as integers.

Owns: parsing targets (address, CIDR, range, rbldnsd prefix forms, exclusions) into a canonical `Target`,
formatting them back, list codes (127.0.0.N), durations and dates, and the query side: turning the
labels in front of a zone origin into an address (4 reversed octets, 32 reversed nibbles) or a
partial prefix. Pure functions, no I/O.

Rules:
- An address is (family, int). IPv4-mapped IPv6 (::ffff:a.b.c.d) is IPv4, on both sides.
- A target's canonical text is a single address, else a CIDR if the range is one, else `lo-hi`;
  IPv6 is lowercase and compressed.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime
from typing import NamedTuple

from .errors import TargetError

V4_MAX = (1 << 32) - 1
V6_MAX = (1 << 128) - 1
MAPPED_BASE = 0xFFFF << 32  # ::ffff:0:0/96
TOP = {4: V4_MAX, 6: V6_MAX}
BITS = {4: 32, 6: 128}


class Target(NamedTuple):
    """An inclusive address range of one family; `excluded` means "never listed"."""

    family: int
    lo: int
    hi: int
    excluded: bool = False

    @property
    def size(self) -> int:
        return self.hi - self.lo + 1

    def __str__(self) -> str:
        return format_target(self)


# --- formatting -------------------------------------------------------------------------------


def format_address(family: int, value: int) -> str:
    if family == 4:  # by hand: ipaddress is several times slower, and imports format millions
        return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"
    return str(ipaddress.IPv6Address(value))


def cidr_prefix(family: int, lo: int, hi: int) -> int | None:
    """The prefix length if [lo, hi] is exactly one CIDR block, else None."""
    size = hi - lo + 1
    if size & (size - 1) or lo & (size - 1):
        return None
    return BITS[family] - (size.bit_length() - 1)


def format_target(target: Target) -> str:
    bang = "!" if target.excluded else ""
    lo = format_address(target.family, target.lo)
    if target.lo == target.hi:
        return bang + lo
    prefix = cidr_prefix(target.family, target.lo, target.hi)
    if prefix is not None:
        return f"{bang}{lo}/{prefix}"
    return f"{bang}{lo}-{format_address(target.family, target.hi)}"


# --- parsing targets --------------------------------------------------------------------------


def parse_target(text: str, *, loose: bool = False) -> Target:
    """Parse what an admin or a data file writes; raise TargetError naming the value."""
    raw = text.strip()
    excluded = raw.startswith("!")
    body = raw[1:].strip() if excluded else raw
    if not body:
        raise TargetError(f"empty target {text!r}")
    try:
        family, lo, hi = (_parse_v6 if ":" in body else _parse_v4)(body, loose)
    except TargetError as error:
        raise TargetError(f"invalid target {text!r}: {error}") from None
    if lo > hi:
        raise TargetError(f"invalid target {text!r}: range start is after its end")
    return Target(family, lo, hi, excluded)


def _octets(text: str) -> list[int]:
    parts = text.split(".")
    if len(parts) > 4 or not all(p.isdigit() and p.isascii() and len(p) <= 3 for p in parts):
        raise TargetError("not an IPv4 address or prefix")
    values = [int(p) for p in parts]
    if any(v > 255 for v in values):
        raise TargetError("octet over 255")
    return values


def _prefix_value(values: list[int]) -> int:
    padded = values + [0] * (4 - len(values))
    return (padded[0] << 24) | (padded[1] << 16) | (padded[2] << 8) | padded[3]


def _parse_v4(body: str, loose: bool) -> tuple[int, int, int]:
    if "/" in body:
        return _parse_v4_cidr(body, loose)
    if "-" in body:
        return _parse_v4_range(body)
    values = _octets(body)
    lo = _prefix_value(values)
    return 4, lo, lo | (V4_MAX >> (8 * len(values)))


def _parse_v4_cidr(body: str, loose: bool) -> tuple[int, int, int]:
    addr, _, bits_text = body.partition("/")
    if not (bits_text.isdigit() and int(bits_text) <= 32):
        raise TargetError(f"bad prefix length /{bits_text}")
    return _cidr(4, _prefix_value(_octets(addr)), int(bits_text), loose)


def _parse_v4_range(body: str) -> tuple[int, int, int]:
    left, _, right = body.partition("-")
    lo_values = _octets(left)
    right_values = _octets(right)
    if len(right_values) == 1 and len(lo_values) > 1:
        # rbldnsd's `127.16-31`: the number after the dash replaces the last octet given
        right_values = lo_values[:-1] + right_values
    elif len(right_values) != len(lo_values) and len(right_values) != 4:
        raise TargetError("range ends have different lengths")
    lo = _prefix_value(lo_values)
    hi = _prefix_value(right_values) | (V4_MAX >> (8 * len(right_values)))
    return 4, lo, hi


def _cidr(family: int, base: int, bits: int, loose: bool) -> tuple[int, int, int]:
    host = TOP[family] >> bits if bits < BITS[family] else 0
    if base & host:
        if not loose:
            raise TargetError("not a network: host bits are set (--loose masks them)")
        base &= ~host
    return family, base, base | host


def _v6(text: str) -> int:
    try:
        return int(ipaddress.IPv6Address(text))
    except ValueError:
        raise TargetError("not an IPv6 address") from None


def _parse_v6(body: str, loose: bool) -> tuple[int, int, int]:
    if "/" in body:
        addr, _, bits_text = body.partition("/")
        if not (bits_text.isdigit() and int(bits_text) <= 128):
            raise TargetError(f"bad prefix length /{bits_text}")
        family, lo, hi = _cidr(6, _v6(addr), int(bits_text), loose)
    elif "-" in body:
        left, _, right = body.partition("-")
        family, lo, hi = 6, _v6(left), _v6(right)
    else:
        family, lo, hi = 6, _v6(body), _v6(body)
    return _unmap(family, lo, hi)


def _unmap(family: int, lo: int, hi: int) -> tuple[int, int, int]:
    """A range inside ::ffff:0:0/96 is the IPv4 range it maps."""
    if lo >= MAPPED_BASE and hi <= MAPPED_BASE | V4_MAX:
        return 4, lo - MAPPED_BASE, hi - MAPPED_BASE
    return family, lo, hi


def parse_address(text: str) -> tuple[int, int]:
    """A single address (for `check` and the like)."""
    target = parse_target(text)
    if target.lo != target.hi or target.excluded or "/" in text:
        raise TargetError(f"invalid address {text!r}: expected a single IPv4 or IPv6 address")
    if target.family == 4 and text.count(".") != 3 and ":" not in text:
        raise TargetError(f"invalid address {text!r}: expected four octets")
    return target.family, target.lo


# --- codes, durations, dates ------------------------------------------------------------------

LOOPBACK_NET = 127 << 24
TEST_LISTED = 0x7F000002  # 127.0.0.2: always listed (RFC 5782)
TEST_UNLISTED = 0x7F000001  # 127.0.0.1: never listed
TXT_LIMIT = 254  # bytes of an expanded TXT rbldnsd serves at most (tried: 255 comes out as 254)


def parse_code(text: str) -> int:
    """`N` is 127.0.0.N; a dotted code must be in 127.0.0.0/8 but not 127.0.0.0 or 127.0.0.1."""
    value = text.strip()
    try:
        code = LOOPBACK_NET | int(value) if value.isdigit() else int(ipaddress.IPv4Address(value))
    except ValueError:
        raise TargetError(f"invalid code {text!r}: expected N or 127.0.0.N") from None
    if value.isdigit() and int(value) > 255:
        raise TargetError(f"invalid code {text!r}: N must be 2..255")
    if code >> 24 != 127 or code in (LOOPBACK_NET, LOOPBACK_NET | 1):
        raise TargetError(f"invalid code {text!r}: must be in 127.0.0.0/8, not 127.0.0.0 or 127.0.0.1")
    return code


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+)([smhdw]?)")


def parse_duration(text: str) -> int:
    """rbldnsd's units: s, m (minutes), h, d, w; a bare number is seconds; `1w2d` adds up."""
    value = text.strip().lower()
    pos, total = 0, 0
    while pos < len(value):
        match = _DURATION.match(value, pos)
        if not match:
            raise TargetError(f"invalid duration {text!r}: use a number with s, m, h, d or w")
        total += int(match.group(1)) * UNITS[match.group(2) or "s"]
        pos = match.end()
    if not value:
        raise TargetError("empty duration")
    return total


def parse_when(text: str, *, now: float) -> float:
    """An expiry: a duration from now (`7d`) or an ISO 8601 date/time (UTC unless it says)."""
    if re.fullmatch(r"(?:\d+[smhdw])*\d+[smhdw]?", text.strip().lower()):  # what parse_duration reads
        return now + parse_duration(text)
    return parse_date(text, "use a duration (90s, 2h, 7d) or a date")


def parse_date(text: str, hint: str = "use ISO 8601, e.g. 2026-12-01T00:00:00Z") -> float:
    """An ISO 8601 date or date/time, UTC unless it says otherwise."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise TargetError(f"invalid time {text!r}: {hint}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def format_time(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- query names ------------------------------------------------------------------------------

HEX = {c: i for i, c in enumerate("0123456789abcdef")}
HEX.update({c.upper(): i for c, i in list(HEX.items()) if c.isalpha()})


def octet_label(label: str) -> int | None:
    """One reversed-IPv4 label: decimal, at most 3 digits, at most 255 (leading zeros as rbldnsd)."""
    if not (0 < len(label) <= 3 and label.isdigit() and label.isascii()):
        return None
    value = int(label)
    return value if value <= 255 else None


def v4_prefix(labels: list[str]) -> tuple[int, int] | None:
    """Labels in query order (`7.113.0.203`, at most 4) -> the address range they name."""
    if not 1 <= len(labels) <= 4:
        return None
    value = 0
    for label in reversed(labels):
        octet = octet_label(label)
        if octet is None:
            return None
        value = (value << 8) | octet
    shift = 8 * (4 - len(labels))
    return value << shift, (value << shift) | ((1 << shift) - 1)


def v6_prefix(labels: list[str]) -> tuple[int, int] | None:
    """Nibble labels in query order (at most 32) -> the IPv6 range they name."""
    if not 1 <= len(labels) <= 32:
        return None
    value = 0
    for label in reversed(labels):
        nibble = HEX.get(label) if len(label) == 1 else None
        if nibble is None:
            return None
        value = (value << 4) | nibble
    shift = 4 * (32 - len(labels))
    return value << shift, (value << shift) | ((1 << shift) - 1)


def query_address(labels: list[str]) -> tuple[int, int] | None:
    """A full address name -> (family, address); mapped IPv6 names answer from IPv4 data."""
    if len(labels) == 4:
        span = v4_prefix(labels)
        return (4, span[0]) if span else None
    if len(labels) == 32:
        span = v6_prefix(labels)
        if span is None:
            return None
        family, lo, _ = _unmap(6, span[0], span[0])
        return family, lo
    return None
