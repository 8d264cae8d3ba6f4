"""The in-memory lookup index of one zone: immutable, built aside, swapped in by one assignment.

Owns the matching rule (README, "Which entries answer"):
- among the unexpired entries covering an address, the most specific (smallest range) answer;
- several equally specific listings all answer (their codes and texts);
- an exclusion at least as specific as the most specific listing wins: not listed.

Shape: per family, the entries are flattened into non-overlapping segments (sorted starts, found with
bisect), each covered by one or more entries (segments.py). The base is columnar (columns.py), for a
million entries in tens of megabytes rather than hundreds: an entry is an address pair in `array`s, an
id into a small table of distinct (code, reason, source, excluded), and an expiry. `Entry` objects are
made only at lookup, for the few entries covering the address; `decide` stays the one rule.

A change made since the base was built lives in a small overlay (`ZoneIndex.changed`), consulted beside
it: a changed key hides the base entry with that key (compared on the candidates of a lookup, so no map
of a million keys is kept), and the overlay has segments of its own, cheap to rebuild while it is small.
`fold()` merges the overlay into a new base, finding the rows it hides by parsing their keys and copying
what it does not touch. Time is a parameter: expired entries are skipped at lookup, so an entry stops
answering at its expiry before anything purges it.

Rules: an entry's key is (canonical target text, source), unique in its zone; a key that is not the
canonical text of its range (tests, data files) is kept beside the columns, so every entry comes back
equal to what was put in. Building streams entries sorted by (family, lo) without holding them (the
store sends them in that order); unsorted input is sorted first, which costs memory.
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain
from types import MappingProxyType
from typing import NamedTuple

from .addresses import Target, format_address, format_target, parse_target
from .columns import GUIDE_SHIFT, Table, guide_of
from .errors import TargetError
from .segments import SHARED, Attr, Builder, Hidden, Segments, fold

Key = tuple[str, str]  # (canonical target, source): an entry's identity within its zone
LOOK = -2  # `listing_id`: one id cannot say what answers; `lookup` decides


class Entry(NamedTuple):
    """One listing or exclusion. A named tuple, not a frozen dataclass: lookups make one per covering
    entry, and a tuple is made four times faster."""

    key: Key
    family: int
    lo: int
    hi: int
    excluded: bool
    code: int  # the A record as a 32-bit integer (127.0.0.N)
    reason: str  # TXT template: `$` is the queried address
    expires: float | None = None

    @property
    def size(self) -> int:
        return self.hi - self.lo + 1

    def live(self, now: float) -> bool:
        return self.expires is None or now < self.expires


def decide(candidates: Iterable[Entry], now: float) -> tuple[Entry, ...]:
    """The listings that answer, given every entry covering one address; () means not listed."""
    best_listing: int | None = None
    best_exclusion: int | None = None
    for entry in candidates:
        if not entry.live(now):
            continue
        if entry.excluded:
            if best_exclusion is None or entry.size < best_exclusion:
                best_exclusion = entry.size
        elif best_listing is None or entry.size < best_listing:
            best_listing = entry.size
    if best_listing is None or (best_exclusion is not None and best_exclusion <= best_listing):
        return ()
    return tuple(e for e in candidates if not e.excluded and e.size == best_listing and e.live(now))


def target_text(family: int, lo: int, hi: int, excluded: bool) -> str:
    """The canonical text of a range, as the store keys it (one IPv4 address by hand: it is the
    common case, and this runs for every entry built)."""
    if family == 4 and lo == hi:
        return "!" + format_address(4, lo) if excluded else format_address(4, lo)
    return format_target(Target(family, lo, hi, excluded))


# --- entries out of rows -----------------------------------------------------------------------


def _entry(segments: Segments, table: Table, row: int) -> Entry:
    code, reason, source, excluded = segments.attrs[table.attr[row]]
    lo, hi = table.lo[row], table.hi[row]
    text = table.odd.get(row)
    if text is None:
        text = target_text(table.family, lo, hi, excluded)
    return Entry((text, source), table.family, lo, hi, excluded, code, reason, table.expires.get(row))


def _covering(segments: Segments, address: int) -> tuple[Entry, ...]:
    """The entries covering an address (`Segments.refs`, without its list: this is the query path)."""
    items = segments.items
    i = bisect_right(items.lo, address) - 1
    if i < 0 or items.hi[i] < address:
        return ()
    attr = items.attr[i]
    if not attr & SHARED:
        return (_entry(segments, items, i),)
    return tuple(_entry(segments, segments.shared, j) for j in segments.run(attr))


def _entries(segments: Segments) -> Iterator[Entry]:
    """Every entry once, by lo (lone entries and runs never interleave in address)."""
    lone = (_entry(segments, segments.items, i) for i in segments.lone())
    shared = (_entry(segments, segments.shared, j) for j in range(len(segments.shared)))
    return heapq.merge(lone, shared, key=_lo)


def _lo(entry: Entry) -> int:
    return entry.lo


# --- which base rows a changed key hides (for a fold) ------------------------------------------


def _hidden(base: Segments, changed: Mapping[Key, Entry | None], family: int) -> Hidden:
    """Found by parsing each changed key's target and looking at the rows covering its start, so no
    map of every key is built (the store's keys are canonical: a text that is not cannot be there)."""
    if base.items.odd or base.shared.odd:  # keys that are not target texts (tests, data files): compare all
        return Hidden(
            {i for i in base.lone() if _entry(base, base.items, i).key in changed},
            {j for j in range(len(base.shared)) if _entry(base, base.shared, j).key in changed},
        )
    hidden = Hidden(set(), set())
    for text, source in changed:
        target = _parse_key(text, family)
        if target is None:
            continue
        wanted = (target.lo, target.hi, source, target.excluded)
        for table, row in base.refs(target.lo):
            if _identity(base, table, row) == wanted:
                (hidden.items if table is base.items else hidden.shared).add(row)
    return hidden


def _identity(base: Segments, table: Table, row: int) -> tuple[int, int, str, bool]:
    """What a key says of an entry: (lo, hi, source, excluded)."""
    _, _, source, excluded = base.attrs[table.attr[row]]
    return table.lo[row], table.hi[row], source, excluded


def _parse_key(text: str, family: int) -> Target | None:
    try:
        target = parse_target(text)
    except TargetError:
        return None
    return target if target.family == family and target_text(*target) == text else None


# --- the zone's index -------------------------------------------------------------------------


EMPTY_CHANGES: Mapping[Key, Entry | None] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ZoneIndex:
    """All entries of one zone: segments per family plus an overlay of later changes."""

    segments: Mapping[int, Segments]
    changed: Mapping[Key, Entry | None] = field(
        default_factory=lambda: EMPTY_CHANGES
    )  # key -> new entry, or None if removed
    overlay: Mapping[int, Segments] = field(default_factory=dict)  # the changed entries, indexed
    guide: array[int] | None = field(default=None, compare=False)  # the base's IPv4 rows by /16
    # per family, the base rows a changed key hides: found once per change, not per query
    hidden: Mapping[int, Hidden] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.guide is None and not self.changed:  # `with_changes` hands the base's on (~70 ms)
            object.__setattr__(self, "guide", guide_of(self.segments[4].items.lo))

    @classmethod
    def build(cls, entries: Iterable[Entry]) -> ZoneIndex:
        """Stream entries into the columns; entries out of (family, lo) order are sorted first."""
        attrs: dict[Attr, int] = {}
        builders = {4: Builder(4), 6: Builder(6)}
        rest = iter(entries)
        for e in rest:
            attr = attrs.setdefault((e.code, e.reason, e.key[1], e.excluded), len(attrs))
            text = e.key[0]
            odd = None if text == target_text(e.family, e.lo, e.hi, e.excluded) else text
            if not builders[e.family].add(e.lo, e.hi, attr, e.expires, odd):
                done = cls._finish(builders, attrs)
                return cls.build(sorted(chain(done.entries(), [e], rest), key=_order))
        return cls._finish(builders, attrs)

    @classmethod
    def _finish(cls, builders: dict[int, Builder], attrs: dict[Attr, int]) -> ZoneIndex:
        table = tuple(attrs)  # a dict keeps insertion order: position is the id
        return cls({family: builder.finish(table) for family, builder in builders.items()})

    def candidates(self, family: int, address: int) -> tuple[Entry, ...]:
        base = _covering(self.segments[family], address)
        if not self.changed:
            return base
        kept = tuple(e for e in base if e.key not in self.changed)
        return kept + _covering(self.overlay[family], address)

    def lookup(self, family: int, address: int, now: float) -> tuple[Entry, ...]:
        found = self.candidates(family, address)
        if len(found) == 1:  # most addresses of a trap list: `decide` on one entry, without its loops
            return found if found[0].live(now) and not found[0].excluded else ()
        return decide(found, now)

    def listing_id(self, family: int, address: int, now: float) -> int:
        """What answers an address, as one number when a single entry decides it: the attr id of the
        one live listing covering it (equal ids: equal code and reason), -1 when nothing listed covers
        it, LOOK when `lookup` must decide (overlapping entries; a changed entry covering it). The fast
        path keys its prebuilt replies by it and makes no `Entry`; `decide` stays the rule."""
        segments, guide = self.segments[family], self.guide
        items = segments.items
        if family == 4 and guide is not None:  # within the address's /16 (`columns.guide_of`)
            high = address >> GUIDE_SHIFT
            i = bisect_right(items.lo, address, guide[high], guide[high + 1]) - 1
        else:
            i = bisect_right(items.lo, address) - 1
        found = i >= 0 and items.hi[i] >= address
        if self.changed and self._changed_at(family, address, i if found else -1):
            return LOOK
        if not found:
            return -1
        attr = items.attr[i]
        if attr & SHARED:
            return LOOK
        if segments.attrs[attr][3]:  # a lone exclusion covers it: not listed
            return -1
        expires = items.expires.get(i)
        return attr if expires is None or now < expires else -1

    def _changed_at(self, family: int, address: int, row: int) -> bool:
        """Does a change touch this address: an overlay entry covers it, or the base's lone entry at
        `row` (-1: none) has a changed key (it is hidden)?"""
        overlay = self.overlay[family].items
        j = bisect_right(overlay.lo, address) - 1
        if j >= 0 and overlay.hi[j] >= address:
            return True
        if row < 0:
            return False
        if self.segments[family].items.attr[row] & SHARED:
            return True  # LOOK anyway
        return row in self.hidden[family].items

    def excludes(self, family: int, address: int, now: float) -> bool:
        """Does a live exclusion cover the address? (In a zone with data files too, an exclusion in
        the SQLite list un-lists the address everywhere in the zone.)"""
        return any(e.excluded and e.live(now) for e in self.candidates(family, address))

    def any_listed(self, family: int, lo: int, hi: int, now: float) -> bool:
        """Is any address in [lo, hi] listed? (an empty non-terminal answers NODATA, not NXDOMAIN)
        Answers can only change where a segment starts, or, with an overlay, where one ends."""
        base = self.segments[family]
        points: Iterable[int] = chain([lo], base.starts_within(lo, hi))
        if self.changed:  # base and overlay answers combine: where either one's segment ends counts too
            overlay = self.overlay[family]
            points = chain(
                points, overlay.starts_within(lo, hi), overlay.ends_within(lo, hi), base.ends_within(lo, hi)
            )
        return any(self.lookup(family, p, now) for p in points)

    def bounds(self, family: int) -> Iterator[int]:
        """Every point where an answer may change (segment starts, and just past segment ends), of the
        base and the overlay, ascending and once each: for flattening a zone without a set of them."""
        layers = [self.segments[family], *([self.overlay[family]] if self.changed else [])]
        points = heapq.merge(*(s.starts for s in layers), *((end + 1 for end in s.ends) for s in layers))
        previous = None
        for point in points:
            if point != previous:
                yield point
            previous = point

    def with_changes(self, changes: Mapping[Key, Entry | None]) -> ZoneIndex:
        """A new index with `changes` applied on top (the old one is untouched)."""
        merged = dict(self.changed)
        merged.update(changes)
        live = sorted((e for e in merged.values() if e is not None), key=_order)
        overlay = ZoneIndex.build(live).segments
        hidden = {family: self._hiding(family, changes) for family in self.segments}
        return ZoneIndex(self.segments, MappingProxyType(merged), overlay, self.guide, hidden)

    def _hiding(self, family: int, changes: Mapping[Key, Entry | None]) -> Hidden:
        """The base rows hidden once `changes` are applied too: a key hides the same rows whatever
        else changed (the base stays), so only the new keys are looked up."""
        new = _hidden(self.segments[family], changes, family)
        old = self.hidden.get(family)
        return Hidden(old.items | new.items, old.shared | new.shared) if old is not None else new

    def entries(self) -> Iterator[Entry]:
        """Every entry once, sorted by (family, lo): what `build` streams without sorting."""
        for family in (4, 6):
            base = _entries(self.segments[family])
            if not self.changed:
                yield from base
                continue
            kept = (e for e in base if e.key not in self.changed)
            yield from heapq.merge(kept, _entries(self.overlay[family]), key=_lo)

    def fold(self) -> ZoneIndex:
        """The segments rebuilt with the overlay folded in (run off the serving loop). Base rows keep
        their attr ids, so untouched stretches are copied as they are."""
        if not self.changed:
            return self
        attrs = {attr: i for i, attr in enumerate(self.segments[4].attrs)}
        assert self.segments[6].attrs is self.segments[4].attrs  # built together, by `build`
        builders = {
            family: fold(base, self.overlay[family], self.hidden[family], attrs)
            for family, base in self.segments.items()
        }
        return ZoneIndex._finish(builders, attrs)


def _order(entry: Entry) -> tuple[int, int]:
    return entry.family, entry.lo
