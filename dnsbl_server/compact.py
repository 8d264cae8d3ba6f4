"""The frozen, compact index of one rbldnsd IP dataset (ip4set, ip4tset, ip4trie, ip6trie, ip6tset).

What `Zone.files` holds for a data file: the same `lookup` and `any_listed` as `index.ZoneIndex`, the
same answer for every address (tests/test_compact.py checks it against ZoneIndex), at a fraction of the
memory: a million-line ip4set is ~12 MB of columns instead of an `Entry` per line.

Rules:
- Static: data files have no per-entry expiry, so `now` is ignored (a dataset past its `$TIMESTAMP`
  expiry is swapped for an empty index whole, `datafiles.expire`).
- Per family: sorted, disjoint ranges of LISTED addresses only, as columns (IPv4 `array('I')`, IPv6 lists
  of ints; v6 data is small), each with a result id. The answer of every range is decided once, at
  build, by `index.decide`'s rule: the most specific listings answer, all of them when equally specific;
  an exclusion at least as specific wins, and an address no range covers is not listed. Adjacent ranges
  with the same answer are merged.
- A result id below `len(codes)` is the value (`code`, `text`) of that id alone (most answers); above,
  `multi` holds the value ids of an answer of several listings. `Entry` objects are made per lookup, so
  memory does not grow with the entries' count (only with their distinct values).
- Built from columns (lo, hi, value id; `EXCLUDED` for an exclusion), never an object per entry: input in
  order and without overlaps (a big list of addresses) is taken as is; otherwise it is sorted, and only
  the clusters of overlapping entries are swept one elementary segment at a time (`_sweep`).
"""

from __future__ import annotations

import contextlib
import heapq
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, compress, count, islice, repeat
from operator import and_, eq, gt, le, lt, ne
from pathlib import Path
from socket import AF_INET, inet_pton

from .columns import GUIDE_SHIFT, guide_of
from .index import Entry, ZoneIndex
from .zonefile import Item, Reader, Specials, rbldnsd_blocks, read_lines

EXCLUDED = -1  # the value id of an exclusion
Column = array | list  # type: ignore[type-arg]  # IPv4: array('I'); IPv6: list of ints
V4_TYPE, ID_TYPE = "I", "i"
BIG = 100_000  # entries: a build this big leaves garbage worth handing back to the OS


def column(family: int, items: Iterable[int] = ()) -> Column:
    return array(V4_TYPE, items) if family == 4 else list(items)


# --- the index --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ranges:
    """One family's listed ranges: [starts[i], ends[i]] answers result `rids[i]`. `starts` is named as
    `index.Segments.starts`: the resolver asks whether a dataset has data of a family by it."""

    starts: Column
    ends: Column
    rids: array  # type: ignore[type-arg]

    def find(self, address: int) -> int:
        """The index of the range holding `address`, or -1."""
        i = bisect_right(self.starts, address) - 1
        return i if i >= 0 and address <= self.ends[i] else -1

    def overlaps(self, lo: int, hi: int) -> bool:
        # the last range starting at or before `hi` ends latest of those (they are disjoint and sorted)
        i = bisect_right(self.starts, hi) - 1
        return i >= 0 and self.ends[i] >= lo

    def __len__(self) -> int:
        return len(self.starts)


def no_ranges(family: int) -> Ranges:
    return Ranges(column(family), column(family), array(ID_TYPE))


@dataclass(frozen=True, slots=True)
class CompactIndex:
    kind: str
    segments: dict[int, Ranges]  # per family (4 and 6)
    codes: array  # type: ignore[type-arg]  # per value id: the A record
    texts: tuple[str, ...]  # per value id: the TXT template ("" for none)
    multi: tuple[tuple[int, ...], ...] = ()  # result id len(codes) + i: these value ids answer together
    count: int = 0  # the entries read (rbldnsd blocks, exclusions included): what `zone-check` counts
    # IPv4's ranges by /16 (`columns.guide_of`), for `listing_id`
    guide: array | None = field(init=False, default=None, compare=False)  # type: ignore[type-arg]

    def __post_init__(self) -> None:
        object.__setattr__(self, "guide", guide_of(self.segments[4].starts))

    def listing_id(self, family: int, address: int, now: float) -> int:
        """The result id answering `address`, or -1: not listed. One id names one answer, so the fast
        path keys its prebuilt replies by it and makes no `Entry` (as `lookup` does). IPv4 searches
        only the ranges starting in the address's /16 (`guide`), and the last one before them."""
        ranges, guide = self.segments[family], self.guide
        if family == 4 and guide is not None:  # within the address's /16 (`columns.guide_of`)
            high = address >> GUIDE_SHIFT
            i = bisect_right(ranges.starts, address, guide[high], guide[high + 1]) - 1
        else:
            i = bisect_right(ranges.starts, address) - 1
        return ranges.rids[i] if i >= 0 and address <= ranges.ends[i] else -1

    def lookup(self, family: int, address: int, now: float) -> tuple[Entry, ...]:
        ranges = self.segments[family]
        i = ranges.find(address)
        if i < 0:
            return ()
        rid = ranges.rids[i]
        ids = (rid,) if rid < len(self.codes) else self.multi[rid - len(self.codes)]
        return tuple(self._entry(family, ranges.starts[i], ranges.ends[i], v) for v in ids)

    def any_listed(self, family: int, lo: int, hi: int, now: float) -> bool:
        """Is any address in [lo, hi] listed? (an empty non-terminal answers NODATA, not NXDOMAIN)"""
        return self.segments[family].overlaps(lo, hi)

    def _entry(self, family: int, lo: int, hi: int, value: int) -> Entry:
        # the range is the merged range that answers, not the line's own target (not kept)
        return Entry(("", self.kind), family, lo, hi, False, self.codes[value], self.texts[value])


def count_entries(index: CompactIndex | ZoneIndex) -> int:
    """How many entries a dataset's index was built from (`zone-check`)."""
    return index.count if isinstance(index, CompactIndex) else sum(1 for _ in index.entries())


# --- building ---------------------------------------------------------------------------------


class Columns:
    """One family's entries as read: [lo[i], hi[i]] with value id vid[i] (EXCLUDED: an exclusion)."""

    def __init__(self, family: int) -> None:
        self.family = family
        self.lo, self.hi, self.vid = column(family), column(family), array(ID_TYPE)


class Builder:
    """Entries in (`value`, then `add`, or the columns directly), a `CompactIndex` out (`build`)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.values: dict[tuple[int, str], int] = {}  # (code, text) -> value id
        self.columns = {4: Columns(4), 6: Columns(6)}

    def value(self, code: int, text: str | None) -> int:
        return self.values.setdefault((code, text or ""), len(self.values))

    def add(self, family: int, lo: int, hi: int, vid: int) -> None:
        cols = self.columns[family]
        cols.lo.append(lo)
        cols.hi.append(hi)
        cols.vid.append(vid)

    def build(self) -> CompactIndex:
        table = Results(len(self.values))
        entries = sum(len(c.lo) for c in self.columns.values())
        segments = {family: family_ranges(cols, table) for family, cols in self.columns.items()}
        codes = array(V4_TYPE, (code for code, _ in self.values))
        texts = tuple(text for _, text in self.values)
        return CompactIndex(self.kind, segments, codes, texts, tuple(table.multi), entries)


class Results:
    """Result ids: a value id answers alone as itself; several answering together get ids after them."""

    def __init__(self, values: int) -> None:
        self.values = values
        self.ids: dict[tuple[int, ...], int] = {}

    def id(self, vids: tuple[int, ...]) -> int:
        if len(vids) == 1:
            return vids[0]
        return self.ids.setdefault(vids, self.values + len(self.ids))

    @property
    def multi(self) -> list[tuple[int, ...]]:
        return list(self.ids)  # insertion order is id order


def family_ranges(cols: Columns, table: Results) -> Ranges:
    """The listed ranges of one family's entries (the columns may be reordered, then dropped)."""
    lo, hi, vid = cols.lo, cols.hi, cols.vid
    if not lo:
        return no_ranges(cols.family)
    if all(map(gt, islice(lo, 1, None), hi)):  # in order, nothing overlaps: each entry is a range
        if EXCLUDED not in vid:
            return merged(Ranges(lo, hi, vid))
        return merged(isolated(lo, hi, vid, 0, len(lo), empty_like(lo, vid)))
    lo, hi, vid = sorted_columns(lo, hi, vid)
    return merged(assemble(lo, hi, vid, table))


def sorted_columns(lo: Column, hi: Column, vid: array) -> tuple[Column, Column, array]:  # type: ignore[type-arg]
    """The columns in order of lo. A file in order still has entries out of place: its lines after a
    range that holds them (`10.0.0.0/20` is sixteen /24 blocks in ip4set, then `10.0.1.5`). Those few
    (below the running maximum) are taken out, sorted and spliced back in; a full sort of every entry
    is for input in no order."""
    if all(map(le, lo, islice(lo, 1, None))):
        return lo, hi, vid
    most = len(lo) // 8  # more out of place than this: not a file in order
    moved = list(islice(compress(count(), map(lt, lo, accumulate(lo, max))), most + 1))
    if len(moved) > most:
        return sort_columns(lo, hi, vid)
    rest = without(lo, moved), without(hi, moved), without(vid, moved)
    few = sort_columns(*(like(col, map(col.__getitem__, moved)) for col in (lo, hi, vid)))
    at = [bisect_right(rest[0], address) for address in few[0]]
    return splice(rest[0], at, few[0]), splice(rest[1], at, few[1]), splice(rest[2], at, few[2])


def splice(col: Column, at: list[int], items: Column) -> Column:
    """`col` with items[j] inserted before col[at[j]] (`at` ascending)."""
    out, done = like(col, ()), 0
    for i, item in zip(at, items, strict=True):
        out.extend(col[done:i])
        out.append(item)
        done = i
    out.extend(col[done:])
    return out


def sort_columns(lo: Column, hi: Column, vid: array) -> tuple[Column, Column, array]:  # type: ignore[type-arg]
    """The columns in order of lo, whatever their order (equal lo: in input order)."""
    order = sort_order(lo)
    return (
        like(lo, map(lo.__getitem__, order)),
        like(hi, map(hi.__getitem__, order)),
        array(ID_TYPE, map(vid.__getitem__, order)),
    )


def sort_order(lo: Column) -> Sequence[int]:
    """Indexes of `lo` in ascending order. For IPv4, one int per entry packs address and index (a key
    function would hold two objects per entry at the peak of a big cold build)."""
    if not isinstance(lo, array):
        return sorted(range(len(lo)), key=lo.__getitem__)
    keys = sorted(map(int.__or__, map(int.__lshift__, lo, repeat(32)), count()))
    return array(V4_TYPE, map(int.__and__, keys, repeat(0xFFFFFFFF)))


def like(col: Column, items: Iterable[int]) -> Column:
    return array(col.typecode, items) if isinstance(col, array) else list(items)


def empty_like(lo: Column, vid: array) -> Ranges:  # type: ignore[type-arg]
    return Ranges(like(lo, ()), like(lo, ()), array(vid.typecode))


def assemble(lo: Column, hi: Column, vid: array, table: Results) -> Ranges:  # type: ignore[type-arg]
    """Sorted entries -> ranges: runs of entries overlapping nothing go through as they are (at C speed);
    each cluster of overlapping entries is swept."""
    out, done = empty_like(lo, vid), 0
    for start, end in clusters(overlapping(lo, hi)):
        isolated(lo, hi, vid, done, start, out)
        for seg_lo, seg_hi, rid in _sweep(
            zip(lo[start:end], hi[start:end], vid[start:end], strict=True), table
        ):
            out.starts.append(seg_lo)
            out.ends.append(seg_hi)
            out.rids.append(rid)
        done = end
    return isolated(lo, hi, vid, done, len(lo), out)


def overlapping(lo: Column, hi: Column) -> list[int]:
    """Indexes i of sorted entries that overlap an entry before them (lo[i] <= max(hi[:i]))."""
    return list(compress(count(1), map(le, islice(lo, 1, None), accumulate(hi, max))))


def clusters(joins: list[int]) -> Iterator[tuple[int, int]]:
    """[start, end) index spans of entries that overlap each other; `joins` from `overlapping`."""
    i = 0
    while i < len(joins):
        start = end = joins[i]
        while i < len(joins) and joins[i] == end:
            end, i = end + 1, i + 1
        yield start - 1, end


def isolated(lo: Column, hi: Column, vid: array, start: int, end: int, out: Ranges) -> Ranges:  # type: ignore[type-arg]
    """Entries [start, end) overlap no other: a listing is a range answering its own value; an
    exclusion covers nothing listed, so it goes."""
    ids = vid[start:end]
    if EXCLUDED not in ids:
        out.starts.extend(lo[start:end])
        out.ends.extend(hi[start:end])
        out.rids.extend(ids)
        return out
    keep = list(map(ne, ids, repeat(EXCLUDED)))
    out.starts.extend(compress(lo[start:end], keep))
    out.ends.extend(compress(hi[start:end], keep))
    out.rids.extend(compress(ids, keep))
    return out


def _sweep(entries: Iterable[tuple[int, int, int]], table: Results) -> Iterator[tuple[int, int, int]]:
    """(lo, hi, result id) of each elementary segment of overlapping entries (sorted by lo) that is
    listed: the entries covering it decide, as `index.decide` does."""
    ordered = list(entries)
    bounds = sorted({lo for lo, _, _ in ordered} | {hi + 1 for _, hi, _ in ordered})
    active: list[tuple[int, int, int, int]] = []  # heap by hi: (hi, n, size, vid)
    nxt = 0
    for bound, after in zip(bounds, bounds[1:], strict=False):
        while nxt < len(ordered) and ordered[nxt][0] == bound:
            lo, hi, vid = ordered[nxt]
            heapq.heappush(active, (hi, nxt, hi - lo + 1, vid))
            nxt += 1
        while active and active[0][0] < bound:
            heapq.heappop(active)
        rid = decided(active, table)
        if rid is not None:
            yield bound, after - 1, rid


def decided(active: list[tuple[int, int, int, int]], table: Results) -> int | None:
    """`index.decide` on (hi, n, size, vid) of the entries covering a segment: the result id, or None."""
    listing = min((size for _, _, size, vid in active if vid != EXCLUDED), default=None)
    exclusion = min((size for _, _, size, vid in active if vid == EXCLUDED), default=None)
    if listing is None or (exclusion is not None and exclusion <= listing):
        return None
    return table.id(tuple(sorted({vid for _, _, size, vid in active if size == listing and vid != EXCLUDED})))


def merged(ranges: Ranges) -> Ranges:
    """Adjacent ranges with the same answer as one."""
    starts, ends, rids = ranges.starts, ranges.ends, ranges.rids
    joins = list(compress(count(1), joined(starts, ends, rids)))  # range i continues range i - 1
    if not joins:
        return ranges
    return Ranges(without(starts, joins), without(ends, [i - 1 for i in joins]), without(rids, joins))


def without(col: Column, drop: list[int]) -> Column:
    """`col` without the items at the (sorted) indexes `drop`, copied a slice at a time."""
    out, done = like(col, ()), 0
    for i in drop:
        out.extend(col[done:i])
        done = i + 1
    out.extend(col[done:])
    return out


def joined(starts: Column, ends: Column, rids: array) -> Iterator[bool]:  # type: ignore[type-arg]
    """For each range after the first: does it continue the one before (adjacent, same answer)?"""
    adjacent = map(eq, islice(starts, 1, None), map((1).__add__, ends))
    return map(and_, adjacent, map(eq, islice(rids, 1, None), rids))


# --- reading data files straight into columns -------------------------------------------------


@dataclass
class Compiled:
    """An IP dataset read into its compact index: what `datafiles` keeps of it (and a snapshot holds)."""

    index: CompactIndex
    specials: Specials
    problems: list[str]


def read_compact(kind: str, paths: Iterable[str | Path], *, loose: bool = False) -> Compiled:
    """Read the files of one IP dataset (one logical file, as `zonefile.read_dataset`) into its index."""
    reader, builder = Reader(kind, loose=loose), Builder(kind)
    for path in paths:
        feed(reader, builder, read_lines(path), str(path))
    index = builder.build()
    del builder  # its columns: most of the garbage `give_back_memory` hands back
    if index.count >= BIG:
        give_back_memory()
    return Compiled(index, reader.parsed.specials, reader.parsed.problems)


def give_back_memory() -> None:
    """Return the freed memory of a big build to the OS. glibc keeps freed heap pages mapped: after a
    cold build of a million unsorted lines that is ~30 MB of a 60 MB process (malloc_trim gives it
    back). Nothing happens without glibc."""
    import ctypes  # only after a big parse: keep it off the usual start-up path

    with contextlib.suppress(OSError, AttributeError):  # AttributeError: a libc without malloc_trim
        ctypes.CDLL(None).malloc_trim(0)


def compact_of(kind: str, items: Iterable[Item]) -> CompactIndex:
    """The index of items already read (the IP sections of a `combined` dataset)."""
    builder = Builder(kind)
    for item in items:
        add_item(builder, item)
    return builder.build()


def feed(reader: Reader, builder: Builder, lines: Iterable[str], path: str) -> None:
    """One file's lines into the columns. An IPv4 address alone on its line (most lines of a big list) is
    taken by inet_pton, strict dotted-quad, ~10x faster than the reader's regex; any other line goes
    through the reader, which owns the syntax and the problems."""
    reader.start_file()
    cols = builder.columns[4]
    add_lo, add_hi, add_vid = cols.lo.append, cols.hi.append, cols.vid.append
    quick, bare = reader.kind.startswith("ip4"), None  # bare: the value id of an address alone
    for number, raw in enumerate(lines, 1):
        if quick:
            try:
                address = int.from_bytes(inet_pton(AF_INET, raw.rstrip()), "big")
            except (OSError, ValueError):  # not a plain address (ValueError: a NUL in the line)
                pass
            else:
                if bare is None:  # as `Reader.bare_address` values it
                    bare = builder.value(reader.scope.code, reader.scope.template(None, False))
                add_lo(address)
                add_hi(address)
                add_vid(bare)
                continue
        bare = None  # any other line may change the defaults
        item = reader.parse(raw, number, path)
        if item is not None:
            add_item(builder, item)


def add_item(builder: Builder, item: Item) -> None:
    """An item's blocks, cut as rbldnsd matches them (`zonefile.rbldnsd_blocks`)."""
    for block in rbldnsd_blocks(item, builder.kind):
        vid = EXCLUDED if block.excluded else builder.value(item.code, item.txt)
        builder.add(block.family, block.lo, block.hi, vid)
