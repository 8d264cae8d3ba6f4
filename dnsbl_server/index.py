"""The in-memory lookup index of one zone: immutable, built aside, swapped in by one assignment.

Owns the matching rule (README, "Which entries answer"):
- among the unexpired entries covering an address, the most specific (smallest range) answer;
- several equally specific listings all answer (their codes and texts);
- an exclusion at least as specific as the most specific listing wins: not listed.

Shape: per family, the entries are flattened into non-overlapping segments (sorted starts, found with
bisect), each holding the entries that cover it, smallest first. A change made since the segments were
built lives in a small overlay (`ZoneIndex.changed`), consulted beside them, so a one-entry change does not
rebuild the segments (the overlay has segments of its own, cheap to rebuild while it is small);
`fold()` rebuilds the whole when the overlay grows. Time is a parameter: expired entries are
skipped at lookup, so an entry stops answering at its expiry before anything purges it.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

Key = tuple[str, str]  # (canonical target, source): an entry's identity within its zone


@dataclass(frozen=True, slots=True)
class Entry:
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


@dataclass(frozen=True, slots=True)
class Segments:
    """Non-overlapping [starts[i], ends[i]] with the entries covering each, smallest first."""

    starts: list[int]
    ends: list[int]
    covers: list[tuple[Entry, ...]]

    @classmethod
    def build(cls, entries: Iterable[Entry]) -> Segments:
        ordered = sorted(entries, key=lambda e: e.lo)
        bounds = sorted({e.lo for e in ordered} | {e.hi + 1 for e in ordered})
        starts: list[int] = []
        ends: list[int] = []
        covers: list[tuple[Entry, ...]] = []
        active: list[tuple[int, int, Entry]] = []  # heap by hi
        nxt = 0
        for i, bound in enumerate(bounds[:-1]):
            while nxt < len(ordered) and ordered[nxt].lo == bound:
                heapq.heappush(active, (ordered[nxt].hi, nxt, ordered[nxt]))
                nxt += 1
            while active and active[0][0] < bound:
                heapq.heappop(active)
            if active:
                starts.append(bound)
                ends.append(bounds[i + 1] - 1)
                covers.append(tuple(sorted((a[2] for a in active), key=lambda e: e.size)))
        return cls(starts, ends, covers)

    def covering(self, address: int) -> tuple[Entry, ...]:
        i = bisect_right(self.starts, address) - 1
        if i >= 0 and self.ends[i] >= address:
            return self.covers[i]
        return ()

    def starts_within(self, lo: int, hi: int) -> Iterator[int]:
        """Segment starts inside [lo, hi]: answers can only change at these points."""
        for i in range(bisect_left(self.starts, lo), len(self.starts)):
            if self.starts[i] > hi:
                return
            yield self.starts[i]

    def ends_within(self, lo: int, hi: int) -> Iterator[int]:
        """Points just past a segment's end inside [lo, hi]: another index's entries may answer there."""
        for i in range(bisect_left(self.ends, lo - 1), len(self.ends)):
            if self.ends[i] + 1 > hi:
                return
            yield self.ends[i] + 1


EMPTY_CHANGES: Mapping[Key, Entry | None] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ZoneIndex:
    """All entries of one zone: segments per family plus an overlay of later changes."""

    segments: Mapping[int, Segments]
    changed: Mapping[Key, Entry | None] = field(
        default_factory=lambda: EMPTY_CHANGES
    )  # key -> new entry, or None if removed
    overlay: Mapping[int, Segments] = field(default_factory=dict)  # the changed entries, indexed

    @classmethod
    def build(cls, entries: Iterable[Entry]) -> ZoneIndex:
        by_family: dict[int, list[Entry]] = {4: [], 6: []}
        for entry in entries:
            by_family[entry.family].append(entry)
        return cls({f: Segments.build(es) for f, es in by_family.items()})

    def candidates(self, family: int, address: int) -> tuple[Entry, ...]:
        base = self.segments[family].covering(address)
        if not self.changed:
            return base
        kept = tuple(e for e in base if e.key not in self.changed)
        return kept + self.overlay[family].covering(address)

    def lookup(self, family: int, address: int, now: float) -> tuple[Entry, ...]:
        return decide(self.candidates(family, address), now)

    def excludes(self, family: int, address: int, now: float) -> bool:
        """Does a live exclusion cover the address? (In a zone with data files too, an exclusion in
        the SQLite list un-lists the address everywhere in the zone.)"""
        return any(e.excluded and e.live(now) for e in self.candidates(family, address))

    def any_listed(self, family: int, lo: int, hi: int, now: float) -> bool:
        """Is any address in [lo, hi] listed? (an empty non-terminal answers NODATA, not NXDOMAIN)"""
        points = {lo}
        points.update(self.segments[family].starts_within(lo, hi))
        if self.changed:  # base and overlay answers combine: where either one's segment ends counts too
            overlay = self.overlay[family]
            points.update(overlay.starts_within(lo, hi))
            points.update(overlay.ends_within(lo, hi))
            points.update(self.segments[family].ends_within(lo, hi))
        return any(self.lookup(family, p, now) for p in sorted(points))

    def with_changes(self, changes: Mapping[Key, Entry | None]) -> ZoneIndex:
        """A new index with `changes` applied on top (the old one is untouched)."""
        merged = dict(self.changed)
        merged.update(changes)
        live = [e for e in merged.values() if e is not None]
        overlay = {f: Segments.build(e for e in live if e.family == f) for f in (4, 6)}
        return ZoneIndex(self.segments, MappingProxyType(merged), overlay)

    def entries(self) -> Iterator[Entry]:
        seen: set[Key] = set()
        for segs in self.segments.values():
            for cover in segs.covers:
                for e in cover:
                    if e.key not in seen and e.key not in self.changed:
                        seen.add(e.key)
                        yield e
        yield from (e for e in self.changed.values() if e is not None)

    def fold(self) -> ZoneIndex:
        """Rebuild the segments with the overlay folded in (run off the serving loop)."""
        return ZoneIndex.build(self.entries())
