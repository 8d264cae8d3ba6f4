"""rbldnsd data files, read: lines in, entries and specials out (`man rbldnsd`, "DATASET TYPES").

Owns the IP dataset syntaxes (ip4set, ip4tset, ip4trie, ip6trie, ip6tset): targets in every rbldnsd
form, `:A:TXT` values and defaults, `$`-specials ($SOA, $NS, $TTL, $TIMESTAMP, $MAXRANGE4, $0-$9,
`$=`), comments, and gzip. Pure except `read_lines`, which opens a file.

Rules:
- A bad line is reported as `FILE:LINE: problem` and skipped; the rest is read (as rbldnsd does).
- TXT templates come out ready for the resolver: `$n` and `$=` substituted here, `$` (the queried
  address) and `$$` left for query time. `None` means "no TXT" (`:6:`).
- Entries keep rbldnsd's own matching rule through `rbldnsd_blocks`: ip4set compares octet levels, so
  its ranges are cut into blocks of one level each (a /9 is 128 /16s, 1.2.3.4-1.2.3.9 six /32s); the
  tries use longest prefix, so ranges become CIDRs. Our most-specific rule then answers as rbldnsd.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from .addresses import (
    Target,
    cidr_prefix,
    format_target,
    parse_duration,
    parse_target,
)
from .errors import TargetError

IP_TYPES = ("ip4set", "ip4tset", "ip4trie", "ip6trie", "ip6tset")
DEFAULT_CODE = 0x7F000002


class LineError(Exception):
    """One line of a data file does not parse; the message says why."""


class Item(NamedTuple):
    target: Target
    code: int
    txt: str | None  # template with `$` for the address; None: no TXT
    line: int


@dataclass
class Specials:
    soa: tuple[int, str, str, int, int, int, int, int] | None = None  # ttl mname rname serial ...
    ns: tuple[int, tuple[str, ...]] | None = None
    ttl: int | None = None
    timestamp: float | None = None
    expires: float | None = None


@dataclass
class Parsed:
    items: list[Item] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    specials: Specials = field(default_factory=Specials)


# --- values -----------------------------------------------------------------------------------


def parse_a(text: str) -> int:
    """An A value as rbldnsd reads it: `2` is 127.0.0.2, `1.2` 127.0.1.2, a full address as is."""
    parts = text.strip().split(".")
    if not 1 <= len(parts) <= 4 or not all(p.isdigit() and int(p) <= 255 for p in parts):
        raise LineError(f"invalid A value {text!r}")
    values = [127, 0, 0, 0][: 4 - len(parts)] + [int(p) for p in parts]
    return (values[0] << 24) | (values[1] << 16) | (values[2] << 8) | values[3]


def split_value(text: str) -> tuple[int | None, str | None, bool]:
    """`:A:TXT`, `:A`, `:A:` or `TXT` -> (code or None for default, txt, txt given?)."""
    if not text.startswith(":"):
        return None, text, bool(text)
    a_text, sep, txt = text[1:].partition(":")
    code = parse_a(a_text) if a_text.strip() else None
    if not sep:
        return code, None, False  # `:5`: default TXT
    return code, txt.lstrip(), True  # `:6:` gives txt "" -> no TXT


@dataclass
class Scope:
    """What lines before this one set: defaults, substitution variables, limits."""

    code: int = DEFAULT_CODE
    txt: str | None = None
    variables: dict[str, str] = field(default_factory=dict)
    base: str | None = None  # `$=`
    maxrange4: int = 1 << 32
    cache: dict[tuple[str | None, bool], str | None] = field(default_factory=dict)

    def set_default(self, code: int, txt: str | None) -> None:
        self.code, self.txt = code, txt
        self.changed()

    def changed(self) -> None:
        self.cache.clear()

    def template(self, txt: str | None, given: bool) -> str | None:
        """The entry's TXT template (cached: most lines share the default one)."""
        if given:  # an entry's own text: rarely repeated, not worth keeping
            return self._template(txt, given)
        key = (txt, given)
        if key not in self.cache:
            self.cache[key] = self._template(txt, given)
        return self.cache[key]

    def _template(self, txt: str | None, given: bool) -> str | None:
        text = txt if given else self.txt
        if text and text.startswith("="):  # opts out of `$=`; the `=` goes even with no base
            return self.expand(text[1:]) or None
        if self.base is not None:  # the entry's text goes in as written: its `$`s stay `$`s
            return self.expand(self.base, text.replace("$", "$$") if text else "$") or None
        return self.expand(text) if text else None

    def expand(self, text: str | None, own: str = "") -> str:
        if text is None:
            return ""
        return re.sub(r"\$(\$|[0-9=])", lambda m: self._var(m.group(1), own), text)

    def _var(self, name: str, own: str) -> str:
        if name == "$":
            return "$$"
        if name == "=":
            return own
        if name not in self.variables:
            return "$$" + name  # undefined: the text `$5` itself
        return self.variables[name].replace("$", "$$")  # a variable's text goes in as written


# --- specials ---------------------------------------------------------------------------------

SPECIAL = re.compile(r"^(?:\$|#\$|;\$|:\$)(\S+)\s*(.*)$")


def _time(text: str) -> int:
    try:
        return parse_duration(text)
    except TargetError as error:
        raise LineError(str(error)) from None


def _stamp(text: str) -> float | None:
    from datetime import UTC, datetime

    if text in ("0", "-"):
        return None
    digits = re.sub(r"[:-]", "", text)
    if not digits.isdigit() or len(digits) not in (8, 10, 12, 14):
        raise LineError(f"invalid timestamp {text!r}: use yyyy:mm:dd[:hh[:mi[:ss]]]")
    padded = digits.ljust(14, "0")
    try:
        return datetime.strptime(padded, "%Y%m%d%H%M%S").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise LineError(f"invalid timestamp {text!r}") from None


def special(name: str, rest: str, scope: Scope, specials: Specials) -> None:
    args = rest.split()
    if len(name) == 1 and name.isdigit():
        scope.variables.setdefault(name, rest)  # the first definition counts (as rbldnsd)
    elif name == "=":
        scope.base = rest if scope.base is None else scope.base
    elif name == "TTL":
        specials.ttl = _time(args[0]) if args else None
    elif name == "SOA":
        if specials.soa is None:
            specials.soa = _soa(args)
    elif name == "NS":
        if specials.ns is None:
            if not args:
                raise LineError("$NS needs a TTL and names")
            names = tuple(n.rstrip(".").lower() for n in args[1:] if not n.startswith("-"))
            specials.ns = (_time(args[0]), names[:32])
    elif name == "TIMESTAMP":
        _timestamp(args, specials)
    elif name == "MAXRANGE4":
        scope.maxrange4 = min(scope.maxrange4, _maxrange(args))
    else:
        raise LineError(f"unknown special ${name}")


def _soa(args: list[str]) -> tuple[int, str, str, int, int, int, int, int]:
    if len(args) != 8:
        raise LineError("$SOA needs: ttl origindn persondn serial refresh retry expire minttl")
    ttl, mname, rname, serial = _time(args[0]), args[1], args[2], args[3]
    if not serial.isdigit() or int(serial) >= 1 << 32:
        raise LineError(f"invalid $SOA serial {serial!r}")
    refresh, retry, expire, minimum = (_time(a) for a in args[4:])
    return ttl, mname.rstrip("."), rname.rstrip("."), int(serial), refresh, retry, expire, minimum


def _timestamp(args: list[str], specials: Specials) -> None:
    if not args:
        raise LineError("$TIMESTAMP needs a date")
    specials.timestamp = _stamp(args[0])
    if len(args) > 1:
        if args[1].startswith("+"):
            if specials.timestamp is None:  # rbldnsd refuses a relative expiry without a date to add to
                raise LineError("$TIMESTAMP +expiry needs a data timestamp to count from")
            specials.expires = specials.timestamp + _time(args[1][1:])
        else:
            specials.expires = _stamp(args[1])


def _maxrange(args: list[str]) -> int:
    if not args:
        raise LineError("$MAXRANGE4 needs a size")
    text = args[0]
    if text.startswith("/") and text[1:].isdigit() and int(text[1:]) <= 32:
        return 1 << (32 - int(text[1:]))
    if text.isdigit():
        return int(text)
    raise LineError(f"invalid $MAXRANGE4 {text!r}")


# --- targets per dataset type -----------------------------------------------------------------


def _v6_prefix_form(text: str) -> str:
    """ip6trie lets trailing zero groups go: `2001:21ab:def7:4242` is 2001:21ab:def7:4242::/64."""
    body, slash, bits = text.partition("/")
    if "::" in body or body.count(":") >= 7:
        return text
    groups = body.split(":")
    full = body + "::" if len(groups) < 8 else body
    return f"{full}/{bits}" if slash else f"{full}/{16 * len(groups)}"


def parse_key(text: str, kind: str, loose: bool) -> Target:
    v6 = kind.startswith("ip6")
    if v6 and ":" not in text.lstrip("!"):
        raise LineError(f"not an IPv6 address: {text!r}")
    if not v6 and ":" in text:
        raise LineError(f"not an IPv4 address: {text!r}")
    body = _v6_prefix_form(text) if v6 else text
    try:
        target = parse_target(body, loose=loose)
    except TargetError as error:
        raise LineError(str(error)) from None
    if kind in ("ip4tset",) and target.lo != target.hi:
        raise LineError(f"{kind} takes single addresses only: {text!r}")
    if kind == "ip4trie" and "-" in text:
        raise LineError(f"ip4trie takes CIDR ranges only, not {text!r}")
    return target


_KEY = re.compile(r"^(\S+?)(?=\s|[#;]|$)(.*)$")


def split_line(line: str, v6: bool) -> tuple[str, str]:
    """The target and the rest; for IPv4 a value may follow with no space (`1.2.3.4:2:txt`)."""
    match = _KEY.match(line)
    assert match is not None
    key, rest = match.group(1), match.group(2)
    if not v6 and ":" in key:
        key, _, tail = key.partition(":")
        rest = ":" + tail + rest
    return key, rest.strip()


# --- the reader -------------------------------------------------------------------------------


class Reader:
    """Reads one dataset's files in order: the state (defaults, variables) runs across lines."""

    def __init__(self, kind: str, *, loose: bool = False) -> None:
        if kind not in IP_TYPES:
            raise LineError(f"unknown dataset type {kind!r} (known: {', '.join(IP_TYPES)})")
        self.kind, self.loose = kind, loose
        self.parsed = Parsed()
        self.scope = Scope()
        self.defaults_seen = False

    def read(self, lines: Iterable[str], path: str) -> Parsed:
        self.parsed.items.extend(self.iter(lines, path))
        return self.parsed

    def iter(self, lines: Iterable[str], path: str) -> Iterator[Item]:
        """Items as they are read; problems go to `self.parsed.problems` as `FILE:LINE: problem`."""
        self.start_file()
        bare = _BARE_QUAD.match if self.kind.startswith("ip4") else _never
        for number, raw in enumerate(lines, 1):
            quad = bare(raw)
            if quad:  # most lines of a big list: an address alone, with the default value
                item = self.bare_address(quad, number)
                if item is not None:
                    yield item
                    continue
            item = self.parse(raw, number, path)
            if item is not None:
                yield item

    def start_file(self) -> None:
        self.scope.set_default(DEFAULT_CODE, None)  # `:A:TXT` defaults end with the file

    def parse(self, raw: str, number: int, path: str) -> Item | None:
        """One line's item, if it is an entry; a problem goes to `self.parsed.problems`."""
        try:
            return self.line(raw.rstrip("\r\n"), number)
        except LineError as error:
            self.parsed.problems.append(f"{path}:{number}: {error}")
            return None

    def bare_address(self, quad: re.Match[str], number: int) -> Item | None:
        a, b, c, d = map(int, quad.groups())
        if a > 255 or b > 255 or c > 255 or d > 255:
            return None  # let the general path say what is wrong
        value = (a << 24) | (b << 16) | (c << 8) | d
        return Item(Target(4, value, value), self.scope.code, self.scope.template(None, False), number)

    def line(self, raw: str, number: int) -> Item | None:
        text = raw.strip()
        if not text or text[0] in "#;:$":
            return self.not_an_entry(text, number)
        return self.entry(text, number)

    def not_an_entry(self, text: str, number: int) -> Item | None:
        match = SPECIAL.match(text)
        if match:
            special(match.group(1), match.group(2).strip(), self.scope, self.parsed.specials)
            self.scope.changed()
            return None
        if not text or text[0] in "#;":
            return None
        if text.startswith(":") and not self._v6_address_first(text):
            if self.kind.endswith("tset") and self.defaults_seen:
                return None  # the trivial sets keep their first default line only
            code, txt, given = split_value(text)
            self.scope.set_default(code if code is not None else DEFAULT_CODE, txt if given else None)
            self.defaults_seen = True
            return None
        return self.entry(text, number)

    def _v6_address_first(self, text: str) -> bool:
        """In IPv6 datasets `::1` is an address, not a `:A:TXT` default line."""
        return self.kind.startswith("ip6") and re.match(r"^::[0-9a-fA-F.:/]*(\s|$)", text) is not None

    def entry(self, text: str, number: int) -> Item | None:
        quad = _QUAD.match(text) if self.kind.startswith("ip4") else None
        a, b, c, d = map(int, quad.groups()) if quad else (256, 0, 0, 0)
        if a < 256 and b < 256 and c < 256 and d < 256:  # the common line, parsed quickly
            value = (a << 24) | (b << 16) | (c << 8) | d
            target, rest = Target(4, value, value), text[quad.end() :].strip()
            rest = ":" + rest[1:].lstrip() if rest.startswith(":") else rest
        else:
            key, rest = split_line(text, self.kind.startswith("ip6"))
            target = parse_key(key, self.kind, self.loose)
        if target.family == 4 and target.size > self.scope.maxrange4:
            raise LineError(
                f"{format_target(target)} is larger than $MAXRANGE4 ({self.scope.maxrange4} addresses)"
            )
        if target.excluded:
            return Item(target, 0, None, number)
        if rest[:1] in ("#", ";"):
            rest = ""
        code, txt, given = split_value(rest) if rest else (None, None, False)
        return Item(
            target, self.scope.code if code is None else code, self.scope.template(txt, given), number
        )


_BARE_QUAD = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\s*$")


def _never(_line: str) -> None:
    return None


_QUAD = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?=[\s:#;]|$)")


def read_lines(path: str | Path) -> Iterator[str]:
    """A data file's lines, gunzipped if it is gzip (by its magic number, as rbldnsd does)."""
    with open(path, "rb") as probe:
        gz = probe.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:  # type: ignore[operator]
        yield from handle


def read_dataset(kind: str, paths: Iterable[str | Path], *, loose: bool = False) -> Parsed:
    """Read the files of one dataset (several files are one logical file, `man rbldnsd`)."""
    reader = Reader(kind, loose=loose)
    for path in paths:
        reader.read(read_lines(path), str(path))
    return reader.parsed


# --- rbldnsd's matching rule as blocks ---------------------------------------------------------


def cidr_blocks(lo: int, hi: int, bits: int) -> Iterator[tuple[int, int]]:
    """The fewest CIDR blocks covering [lo, hi]."""
    while lo <= hi:
        size = lo & -lo if lo else 1 << bits
        while size > hi - lo + 1:
            size >>= 1
        yield lo, lo + size - 1
        lo += size


def octet_blocks(lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """[lo, hi] as ip4set stores it: /8, /16, /24 and /32 blocks, each of one octet level."""
    for start, end in cidr_blocks(lo, hi, 32):
        prefix = cidr_prefix(4, start, end)
        assert prefix is not None
        level = -(-prefix // 8) * 8  # the octet level the block is stored at: round the prefix up
        step = 1 << (32 - level) if level else 1 << 32
        for block in range(start, end + 1, step):
            yield block, block + step - 1


def rbldnsd_blocks(item: Item, kind: str) -> Iterator[Target]:
    """The item's target cut so that most-specific-wins answers as rbldnsd's `kind` does."""
    t = item.target
    if t.lo == t.hi:
        yield t
        return
    if kind in ("ip4set", "ip4tset"):
        pieces: Iterable[tuple[int, int]] = octet_blocks(t.lo, t.hi)
    else:
        pieces = cidr_blocks(t.lo, t.hi, 32 if t.family == 4 else 128)
    for lo, hi in pieces:
        yield Target(t.family, lo, hi, t.excluded)
