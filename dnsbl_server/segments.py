"""One family's entries as sorted, non-overlapping segments over columns (columns.py): how they are
built from rows sorted by lo, and how an overlay of changes is folded in. Rows only: what an entry
means, and its `Entry` object, are index.py's.

- An entry that overlaps no other (most of a trap-fed list) is its own segment: an `items` row, nothing
  more. A run of entries that overlap one another goes to `shared` and is cut into segments at once;
  such a segment's `items` row has the SHARED bit in its attr and lists its entries in CSR form.
- A fold rebuilds only what the changes touch (runs, and lone entries an added one meets) and copies
  every other lone entry a slice of arrays at a time: a million-entry base folds in about 0.1 s.
- Rows keep the attr ids they came with; a new attr is added to the table the caller passes.
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, MutableSequence
from dataclasses import dataclass

from .columns import Row, Table

Attr = tuple[int, str, str, bool]  # (code, reason, source, excluded): shared by many entries
SHARED = 1 << 31  # an item's attr with this bit set: several entries cover it, CSR row in the low bits


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Segments:
    """One family's entries as sorted, non-overlapping segments [starts[i], ends[i]].

    `items` holds the segments: a row with a plain attr id is an entry that overlaps nothing (the
    segment is the entry); a row whose attr has the SHARED bit is a piece of a run of overlapping
    entries, which live in `shared`: item row r's entries are shared rows ids[ptr[r]:ptr[r + 1]]."""

    items: Table
    shared: Table
    ptr: array[int]
    ids: array[int]
    joint: array[int]  # the items that are pieces of runs, ascending
    attrs: tuple[Attr, ...]  # an attr id indexes this

    @property
    def starts(self) -> MutableSequence[int]:
        return self.items.lo

    @property
    def ends(self) -> MutableSequence[int]:
        return self.items.hi

    def refs(self, address: int) -> list[tuple[Table, int]]:
        """The rows (of `items` or `shared`) of the entries covering an address."""
        i = bisect_right(self.items.lo, address) - 1
        if i < 0 or self.items.hi[i] < address:
            return []
        attr = self.items.attr[i]
        return [(self.items, i)] if not attr & SHARED else [(self.shared, j) for j in self.run(attr)]

    def run(self, attr: int) -> array[int]:
        """The `shared` rows covering an item whose attr has the SHARED bit."""
        row = attr & ~SHARED
        return self.ids[self.ptr[row] : self.ptr[row + 1]]

    def starts_within(self, lo: int, hi: int) -> Iterator[int]:
        """Segment starts inside [lo, hi]: answers can only change at these points."""
        starts = self.items.lo
        for i in range(bisect_left(starts, lo), len(starts)):
            if starts[i] > hi:
                return
            yield starts[i]

    def ends_within(self, lo: int, hi: int) -> Iterator[int]:
        """Points just past a segment's end inside [lo, hi]: another index's entries may answer there."""
        ends = self.items.hi
        for i in range(bisect_left(ends, lo - 1), len(ends)):
            if ends[i] + 1 > hi:
                return
            yield ends[i] + 1

    def lone(self) -> Iterator[int]:
        """The item rows that are entries."""
        return (i for i, attr in enumerate(self.items.attr) if not attr & SHARED)

    def rows(self) -> list[Row]:
        shared = [self.shared.row(j) for j in range(len(self.shared))]
        return [self.items.row(i) for i in self.lone()] + shared


class Builder:
    """Streams one family's rows, sorted by lo, into Segments. The open run is one row held aside
    (`lone`) until the next row shows whether it overlaps; rows that do go to `shared`. When a row
    starts past everything so far the run is closed: a lone row becomes its own segment in `items`, a
    longer run is cut into segments at once."""

    def __init__(self, family: int) -> None:
        self.items, self.shared = Table(family), Table(family)
        self.ptr, self.ids, self.joint = array("I", [0]), array("I"), array("I")
        self.lone: Row | None = None
        self.run = 0  # first `shared` row of the open run, when it is in `shared`
        self.last = -1  # lo of the previous row: input must not go back
        self.reach = -1  # the highest hi so far

    def add(self, lo: int, hi: int, attr: int, expires: float | None, odd: str | None) -> bool:
        """False, and nothing added, when the row comes before the previous one."""
        if lo < self.last:
            return False
        if lo > self.reach:
            self._close()
            self.lone = (lo, hi, attr, expires, odd)
        else:
            if self.lone is not None:
                self.shared.append(*self.lone)
                self.lone = None
            self.shared.append(lo, hi, attr, expires, odd)
        self.last = lo
        if hi > self.reach:
            self.reach = hi
        return True

    def copy(self, items: Table, start: int, end: int) -> None:
        """Lone item rows [start, end) of another index, as they are: the caller knows they come next
        and overlap nothing."""
        if start < end:
            self._close()
            self.items.extend(items, start, end)
            self.last, self.reach = items.lo[end - 1], items.hi[end - 1]

    def finish(self, attrs: tuple[Attr, ...]) -> Segments:
        self._close()
        return Segments(self.items, self.shared, self.ptr, self.ids, self.joint, attrs)

    def _close(self) -> None:
        if self.lone is not None:
            self.items.append(*self.lone)
            self.lone = None
        end = len(self.shared.attr)
        if end > self.run:
            self._cut(self.run, end)
            self.run = end

    def _cut(self, first: int, end: int) -> None:
        """Sweep shared rows [first, end) (sorted by lo, overlapping in a chain) into segments: one
        ends where the next row starts or where the first covering row ends."""
        lo, hi = self.shared.lo, self.shared.hi
        active: list[tuple[int, int]] = []  # (hi, row), a heap by hi
        nxt, pos = first, lo[first]
        while nxt < end or active:
            if not active:
                pos = lo[nxt]
            while nxt < end and lo[nxt] == pos:
                heapq.heappush(active, (hi[nxt], nxt))
                nxt += 1
            stop = active[0][0] if nxt == end else min(active[0][0], lo[nxt] - 1)
            self.joint.append(len(self.items))
            self.items.append(pos, stop, SHARED | (len(self.ptr) - 1), None, None)
            self.ids.extend(row for _, row in active)
            self.ptr.append(len(self.ids))
            pos = stop + 1
            while active and active[0][0] < pos:
                heapq.heappop(active)


# --- folding: the overlay into the base, copying what it does not touch -------------------------


@dataclass(frozen=True, slots=True)
class Hidden:
    """Base rows a changed key hides: rows of `items`, rows of `shared`."""

    items: set[int]
    shared: set[int]


def fold(base: Segments, overlay: Segments, hidden: Hidden, attrs: dict[Attr, int]) -> Builder:
    """The base with `hidden` rows left out and the overlay's rows added. Runs of overlapping entries
    and lone entries an added one touches are rebuilt; every other lone entry is copied, a slice at a
    time, so a fold costs little more than copying the arrays."""
    remap = [attrs.setdefault(attr, len(attrs)) for attr in overlay.attrs]
    added = [(lo, hi, remap[attr], expires, odd) for lo, hi, attr, expires, odd in overlay.rows()]
    touched = _touched(base, added).difference(base.joint)
    rebuild = [base.items.row(i) for i in touched - hidden.items]
    rebuild += [base.shared.row(j) for j in range(len(base.shared)) if j not in hidden.shared]
    rebuild += added
    rebuild.sort(key=_row_lo)
    out = Builder(base.items.family)
    _splice(out, base.items, touched.union(hidden.items, base.joint), rebuild)
    return out


def _row_lo(row: Row) -> int:
    return row[0]


def _touched(base: Segments, rows: list[Row]) -> set[int]:
    """The items whose range meets one of `rows`."""
    out: set[int] = set()
    for lo, hi, *_ in rows:
        first = max(bisect_right(base.starts, lo) - 1, 0)
        if first < len(base.ends) and base.ends[first] < lo:
            first += 1
        out.update(range(first, bisect_right(base.starts, hi)))
    return out


def _splice(out: Builder, items: Table, skip: set[int], rebuild: list[Row]) -> None:
    """Items not in `skip` (copied) and `rebuild` rows (built), merged in address order: they never
    overlap, so each rebuild row goes before the first item starting after it."""
    k = 0
    for start, end in _spans(sorted(skip), len(items)):
        while start < end:
            while k < len(rebuild) and rebuild[k][0] < items.lo[start]:
                _feed(out, rebuild[k])
                k += 1
            stop = end if k == len(rebuild) else bisect_left(items.lo, rebuild[k][0], start, end)
            out.copy(items, start, stop)
            start = stop
    for row in rebuild[k:]:
        _feed(out, row)


def _feed(out: Builder, row: Row) -> None:
    if not out.add(*row):
        raise AssertionError(f"fold: row {row} out of order")  # a bug: never for valid segments


def _spans(skip: list[int], count: int) -> Iterator[tuple[int, int]]:
    """[start, end) ranges of 0..count-1 between the sorted `skip` numbers."""
    start = 0
    for i in skip:
        if start < i:
            yield start, i
        start = i + 1
    if start < count:
        yield start, count
