"""A zone as DNS records: what a secondary serves, and what `dnsbl export --format bind` writes.

Owns turning a zone's address data into owner names, as `rbldnsd -d` does: an address range becomes
wildcards at octet (IPv6: nibble) boundaries, with `$` in its TXT replaced by the start of each wildcard
block; an address the resolver answers "not listed" inside a wildcard becomes `CNAME excluded`, as
rbldnsd writes an exclusion.

Rules:
- Answers are the resolver's own (`listings_for`): the SQLite list, the data-file IP datasets, the RFC
  5782 test points. What a zone file cannot carry is left out: partial names (QNAME minimisation),
  IPv4-mapped IPv6 names (answered from IPv4 data by the server), name datasets, acls.
- Blocks: the label right under the zone (IPv4 first octet, IPv6 first nibble) keys a block; IPv4 and
  IPv6 share that label space ('2' is 2.0.0.0/8 and 2000::/4). A block's records depend only on the
  zone's data inside it (no wildcard at the apex: a /0 is 256 `*.N`), so a change touches only the
  blocks of its range (`blocks_of`): what an IXFR diff needs.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from functools import cache
from typing import NamedTuple

from .addresses import TEST_LISTED, TEST_UNLISTED, format_address
from .compact import CompactIndex, Ranges
from .index import Entry, ZoneIndex
from .resolver import expand, listings_for
from .segments import Segments
from .zone import Zone

V4, V6 = 4, 6
BITS = {V4: 32, V6: 128}
STEP = {V4: 8, V6: 4}  # bits per label
BLOCKS = tuple(str(i) for i in range(256)) + tuple("abcdef")  # every block key, in records() order

Atom = tuple[int, str, str | None]  # (code, TXT template, the exact TXT of a single-address listing)
Answer = tuple[Atom, ...]  # sorted; () is "not listed"


class RR(NamedTuple):
    name: str  # owner relative to the zone origin: '@' for the apex, '*.2.1.10', '3.2.1.10', ...
    rtype: str  # 'SOA' | 'NS' | 'A' | 'TXT' | 'CNAME'
    ttl: int
    rdata: str  # zone-file presentation (TXT quoted), e.g. '127.0.0.2', '"listed 10.1.2.0"'


def apex(zone: Zone) -> list[RR]:
    """SOA first, then the NS records; names absolute (trailing dot)."""
    s = zone.settings
    mname, rname = s.soa_names(zone.name)
    soa = f"{mname}. {rname}. {zone.serial} {s.refresh} {s.retry} {s.expire} {s.minimum}"
    return [RR("@", "SOA", s.ttl, soa), *(RR("@", "NS", s.ttl, f"{ns}.") for ns in s.name_servers(zone.name))]


# --- blocks -----------------------------------------------------------------------------------


def _label(family: int, value: int) -> str:
    return str(value) if family == V4 else format(value, "x")


def _top(family: int) -> int:
    """How many low bits a block leaves: a block is one value of the first label."""
    return BITS[family] - STEP[family]


def blocks_of(family: int, lo: int, hi: int) -> set[str]:
    """The block keys a change of [lo, hi] touches."""
    shift = _top(family)
    return {_label(family, v) for v in range(lo >> shift, (hi >> shift) + 1)}


def _spans(key: str) -> list[tuple[int, int, int]]:
    """(family, lo, hi) of both families' blocks under one key."""
    out = []
    if key.isdigit():
        out.append((V4, int(key) << _top(V4), ((int(key) + 1) << _top(V4)) - 1))
    if len(key) == 1:
        v = int(key, 16)
        out.append((V6, v << _top(V6), ((v + 1) << _top(V6)) - 1))
    return out


# --- answers ----------------------------------------------------------------------------------


class Piece(NamedTuple):
    lo: int
    hi: int
    answer: Answer


def _atom(entry: Entry, family: int, address: int) -> Atom:
    """A single-address listing keeps its own TXT (`$` is that address), so it is never folded into a
    wildcard that would write another address there."""
    exact = entry.lo == entry.hi and "$" in entry.reason
    return entry.code, entry.reason, expand(entry.reason, format_address(family, address)) if exact else None


def _answer(zone: Zone, family: int, address: int, now: float) -> Answer:
    atoms = {_atom(e, family, address) for e in listings_for(zone, family, address, now)}
    return tuple(sorted(atoms, key=_order))


def _order(atom: Atom) -> tuple[int, str, str]:
    """Atoms sorted with no exact TXT ('') first: None and a text do not compare."""
    return atom[0], atom[1], atom[2] or ""


def _points(zone: Zone, family: int, lo: int, hi: int) -> list[int]:
    """Where answers may change inside [lo, hi], ascending, `lo` first."""
    points = {lo}
    if family == V4 and zone.test_points:
        points.update(p for p in (TEST_UNLISTED, TEST_LISTED, TEST_LISTED + 1) if lo <= p <= hi)
    for index in (zone.index, *zone.files):
        points.update(_bounds_within(index, family, lo, hi))
    return sorted(points)


def _bounds_within(index: ZoneIndex | CompactIndex, family: int, lo: int, hi: int) -> Iterator[int]:
    """Segment starts, and the points just past segment ends, inside [lo, hi] (overlay included)."""
    layers: list[Segments | Ranges] = [index.segments[family]]
    if isinstance(index, ZoneIndex) and index.changed:
        layers.append(index.overlay[family])
    for segments in layers:
        starts, ends = segments.starts, segments.ends
        yield from starts[bisect_left(starts, lo) : bisect_right(starts, hi)]
        yield from (e + 1 for e in ends[bisect_left(ends, lo - 1) : bisect_right(ends, hi - 1)])


def pieces(zone: Zone, now: float, family: int, lo: int, hi: int) -> list[Piece]:
    """[lo, hi] cut into disjoint pieces with their answers, "not listed" included, adjacent equal merged."""
    out: list[Piece] = []
    points = _points(zone, family, lo, hi)
    for start, end in zip(points, [*points[1:], hi + 1], strict=True):
        answer = _answer(zone, family, start, now)
        if out and out[-1].answer == answer:
            out[-1] = Piece(out[-1].lo, end - 1, answer)
        else:
            out.append(Piece(start, end - 1, answer))
    return out


# --- records ----------------------------------------------------------------------------------


_PLAIN = re.compile(r"[ !#-\[\]-~]*")  # printable ASCII but `"` and `\`


def _quote(text: str) -> str:
    """A zone-file character string (RFC 1035 5.1): `"` and `\\` escaped, bytes outside printable
    ASCII as `\\DDD`."""
    if _PLAIN.fullmatch(text):  # most texts: nothing to escape
        return f'"{text}"'
    out = []
    for byte in text.encode():
        char = chr(byte)
        out.append("\\" + char if char in '"\\' else char if 32 <= byte < 127 else f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def answer_rrs(name: str, answer: Answer, family: int, start: int, ttl: int) -> Iterator[RR]:
    """A and TXT of one name; TXT `$` is `start` (a wildcard's block start), as rbldnsd -d writes it."""
    for code in sorted({code for code, _, _ in answer}):
        yield RR(name, "A", ttl, _dotted(code))
    templated = any(exact is None and "$" in reason for _, reason, exact in answer)
    address = format_address(family, start) if templated else ""
    for text in dict.fromkeys(exact or expand(reason, address) for _, reason, exact in answer if reason):
        yield RR(name, "TXT", ttl, _quote(text))


@cache
def _dotted(code: int) -> str:
    return format_address(4, code)


# --- the wildcard tree (RFC 1034 4.3.2, RFC 4592) ----------------------------------------------
#
# A node is a name under the zone; it names a block of each family whose labels it can be (IPv4: up to
# 4 decimal octets; IPv6: up to 32 hex nibbles; a name of digits only is both). `*.NODE` answers every
# name under NODE whose closest encloser is NODE: the children that do not exist. So a node chooses the
# answer most of its children give as its wildcard's, and only the children that answer otherwise exist:
# each with its own wildcard, as an existing name stops the wildcard above from matching below it.


class Span(NamedTuple):
    family: int
    lo: int
    hi: int
    labels: int  # how many labels name it: a full address has 4 (IPv4) or 32 (IPv6)

    @property
    def exact(self) -> bool:
        return self.labels * STEP[self.family] == BITS[self.family]

    def child(self, i: int) -> Span:
        shift = BITS[self.family] - STEP[self.family] * (self.labels + 1)
        lo = self.lo + (i << shift)
        return Span(self.family, lo, lo + (1 << shift) - 1, self.labels + 1)


MIXED = None  # a child whose addresses do not all answer alike
State = Answer | None


class Group(NamedTuple):
    first: int  # child indices first..last, each named by the same label in every span of `spans`
    last: int
    state: State
    spans: tuple[Span, ...]

    def children(self) -> Iterator[tuple[str, list[Span]]]:
        for i in range(self.first, self.last + 1):
            yield _label(self.spans[-1].family, i), [s.child(i) for s in self.spans]


class Block:
    """One block key's pieces, per family, for the tree's questions."""

    def __init__(self, by_family: dict[int, list[Piece]]) -> None:
        self.pieces = by_family
        self.starts = {family: [p.lo for p in ps] for family, ps in by_family.items()}

    def uniform(self, span: Span) -> State:
        pieces = self.pieces[span.family]
        piece = pieces[bisect_right(self.starts[span.family], span.lo) - 1]
        return piece.answer if piece.hi >= span.hi else MIXED

    def states(self, span: Span) -> list[tuple[int, int, State]]:
        """The children of `span` as (first, last, state) runs: the pieces that cover whole children."""
        family, lo, hi, labels = span
        shift = BITS[family] - STEP[family] * (labels + 1)
        pieces, out, todo, round_up = self.pieces[family], [], 0, (1 << shift) - 1
        for i in range(bisect_right(self.starts[family], lo) - 1, len(pieces)):
            piece_lo, piece_hi, answer = pieces[i]
            if piece_lo > hi:
                break
            first = (max(piece_lo, lo) - lo + round_up) >> shift
            last = ((min(piece_hi, hi) - lo + 1) >> shift) - 1
            if first <= last:
                if first > todo:
                    out.append((todo, first - 1, MIXED))
                out.append((first, last, answer))
                todo = last + 1
        last_child = (1 << STEP[family]) - 1
        return out + ([(todo, last_child, MIXED)] if todo <= last_child else [])

    def groups(self, spans: list[Span]) -> list[Group]:
        """The children of a node; labels 0-9 of a name of digits are children in both families."""
        if len(spans) == 1:
            return [Group(a, b, st, (spans[0],)) for a, b, st in self.states(spans[0])]
        if not spans:
            return []
        (v4, s4), (v6, s6) = ((s, self.states(s)) for s in spans)
        shared = [Group(i, i, _both(_at(s4, i), _at(s6, i)), (v4, v6)) for i in range(10)]
        return shared + _from(s4, v4, 10) + _from(s6, v6, 10)


def _at(states: list[tuple[int, int, State]], i: int) -> State:
    return next(st for a, b, st in states if a <= i <= b)


def _both(a: State, b: State) -> State:
    return a if a == b else MIXED


def _from(states: list[tuple[int, int, State]], span: Span, start: int) -> list[Group]:
    return [Group(max(a, start), b, st, (span,)) for a, b, st in states if b >= start]


def _wildcard(groups: list[Group]) -> Answer:
    """The answer most children give (not listed on a tie: it needs no record)."""
    counts: dict[Answer, int] = {(): 0}
    for g in groups:
        if g.state is not MIXED:
            counts[g.state] = counts.get(g.state, 0) + g.last - g.first + 1
    return max(counts, key=lambda answer: (counts[answer], answer == ()))


def _node(block: Block, path: list[str], spans: list[Span], above: Answer, ttl: int) -> Iterator[RR]:
    """The records of a node that must exist (some address under it answers otherwise than `above`)."""
    name = ".".join(reversed(path))
    inner = [s for s in spans if not s.exact]
    groups = block.groups(inner)
    wild = _wildcard(groups)
    emitted = False
    for s in spans:
        if s.exact and (answer := block.uniform(s)):
            emitted = True
            yield from answer_rrs(name, answer, s.family, s.lo, ttl)
    if wild and inner:
        emitted = True
        yield from answer_rrs("*." + name, wild, inner[0].family, inner[0].lo, ttl)
    for group in groups:
        if group.state == wild:
            continue
        for label, children in group.children():
            emitted = True
            if group.state is not MIXED and len(children) == 1:  # the common leaf, without a node's work
                yield from _alike(f"{label}.{name}", children[0], group.state, ttl)
            else:
                yield from _node(block, [*path, label], children, wild, ttl)
    if not emitted:  # it exists only to stop the wildcard above: rbldnsd's exclusion
        yield RR("*." + name if inner else name, "CNAME", ttl, "excluded")


def _alike(name: str, span: Span, answer: Answer, ttl: int) -> Iterator[RR]:
    """A node of one family whose addresses all answer alike (what `_node` writes for it)."""
    owner = name if span.exact else "*." + name
    if answer:
        yield from answer_rrs(owner, answer, span.family, span.lo, ttl)
    else:
        yield RR(owner, "CNAME", ttl, "excluded")


def _block(zone: Zone, now: float, key: str) -> Iterator[RR]:
    spans = [Span(family, lo, hi, 1) for family, lo, hi in _spans(key)]
    block = Block({s.family: pieces(zone, now, s.family, s.lo, s.hi) for s in spans})
    states = {block.uniform(s) for s in spans}
    if states != {()}:  # the apex has no wildcard: a block not listed at all has no names
        yield from _node(block, [key], spans, (), zone.settings.ttl)


def records(zone: Zone, now: float, blocks: Iterable[str] | None = None) -> Iterator[RR]:
    """Every non-apex record of the zone, or those of `blocks` only; block by block in BLOCKS order."""
    wanted = set(BLOCKS if blocks is None else blocks)
    for key in BLOCKS:
        if key in wanted:
            yield from _block(zone, now, key)
