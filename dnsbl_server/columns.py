"""Columnar storage for the lookup index (index.py): entries as rows of `array`s, not objects.

A million Python objects cost a hundred bytes and more each; a row here costs a few bytes per column.
Rows are appended in order and, once built, never change: an index is rebuilt, never edited. Columns
that are mostly empty (an expiry, a key that is not the canonical text) are `Sparse`: sorted row numbers
beside their values. Nothing here knows what an entry means; index.py does.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import MutableSequence
from typing import Generic, TypeVar

NAN = float("nan")  # "never", in a column of expiry times
GUIDE_BITS, GUIDE_MIN = 16, 4096  # `guide_of`: per /16, for IPv4 columns of at least this many rows
GUIDE_SHIFT = 32 - GUIDE_BITS
V = TypeVar("V")
Row = tuple[int, int, int, float | None, str | None]  # lo, hi, attr id, expires, key text if not canonical


def guide_of(starts: MutableSequence[int]) -> array[int] | None:
    """For a big sorted IPv4 column: where the rows starting in each /16 begin (and the end), so a
    lookup bisects the few rows of one /16, not all of them (about 20 steps for a million, each making
    an int). 256 KiB, built with the index; forked workers share it like the rest. None: small or IPv6."""
    if not isinstance(starts, array) or len(starts) < GUIDE_MIN:
        return None
    step = 1 << GUIDE_SHIFT
    # a comprehension, not one C call: a worker builds this in a thread, and the serving loop must get
    # the GIL back meanwhile (~70 ms for a million rows)
    return array("I", [bisect_left(starts, at) for at in range(0, (1 << 32) + 1, step)])


def addresses(family: int) -> MutableSequence[int]:
    """4 bytes an address for IPv4; Python ints for IPv6 (128 bits; IPv6 lists are small)."""
    return array("I") if family == 4 else []


class Sparse(Generic[V]):
    """Values for a few rows: row numbers (ascending) in one array, the values beside them."""

    __slots__ = ("rows", "values")

    def __init__(self, values: MutableSequence[V]) -> None:
        self.rows = array("I")
        self.values = values

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, row: int, value: V) -> None:
        self.rows.append(row)
        self.values.append(value)

    def get(self, row: int) -> V | None:
        if not self.rows:  # the usual case, on the lookup path
            return None
        i = bisect_left(self.rows, row)
        return self.values[i] if i < len(self.rows) and self.rows[i] == row else None

    def extend(self, other: Sparse[V], start: int, end: int, at: int) -> None:
        """Other's values for rows [start, end), renumbered to begin at row `at`."""
        first, last = bisect_left(other.rows, start), bisect_left(other.rows, end)
        self.rows.extend(row - start + at for row in other.rows[first:last])
        self.values.extend(other.values[first:last])


class Expiries:
    """One expiry per row, None for never. A list is mostly one or the other (manual entries never
    expire, trap entries all do): the few as a Sparse column (12 bytes each), the many as an array of
    doubles over every row, NaN for never (8 bytes a row, cheaper past two rows in three)."""

    __slots__ = ("count", "few", "many")

    def __init__(self) -> None:
        self.count = 0
        self.few: Sparse[float] = Sparse(array("d"))
        self.many: array[float] | None = None

    def append(self, expires: float | None) -> None:
        self.count += 1
        if self.many is not None:
            self.many.append(NAN if expires is None else expires)
        elif expires is not None:
            self.few.append(self.count - 1, expires)
            self._settle()

    def get(self, row: int) -> float | None:
        return self.few.get(row) if self.many is None else _value(self.many[row])

    def extend(self, other: Expiries, start: int, end: int) -> None:
        """Other's expiries of rows [start, end), appended."""
        if other.many is not None and self.many is None:
            self._densify()
        if self.many is None:
            self.few.extend(other.few, start, end, self.count)
        elif other.many is not None:
            self.many.extend(other.many[start:end])
        else:
            self.many.extend(array("d", [NAN]) * (end - start))
            for row, value in _within(other.few, start, end):
                self.many[self.count + row - start] = value
        self.count += end - start
        self._settle()

    def _settle(self) -> None:
        if self.many is None and len(self.few) * 3 > self.count * 2 and self.count > 64:
            self._densify()

    def _densify(self) -> None:
        many = array("d", [NAN]) * self.count
        for row, value in zip(self.few.rows, self.few.values, strict=True):
            many[row] = value
        self.many, self.few = many, Sparse(array("d"))


def _value(stored: float) -> float | None:
    return None if stored != stored else stored  # NaN: never


def _within(sparse: Sparse[V], start: int, end: int) -> zip[tuple[int, V]]:
    first, last = bisect_left(sparse.rows, start), bisect_left(sparse.rows, end)
    return zip(sparse.rows[first:last], sparse.values[first:last], strict=True)


class Table:
    """Rows of entries as columns: lo, hi, attr id (into the index's table of distinct attributes),
    expires, and the key text where it is not the canonical text of (lo, hi)."""

    __slots__ = ("attr", "expires", "family", "hi", "lo", "odd")

    def __init__(self, family: int) -> None:
        self.family = family
        self.lo = addresses(family)
        self.hi = addresses(family)
        self.attr = array("I")
        self.expires = Expiries()
        self.odd: Sparse[str] = Sparse([])

    def __len__(self) -> int:
        return len(self.attr)

    def append(self, lo: int, hi: int, attr: int, expires: float | None, odd: str | None) -> None:
        if odd is not None:
            self.odd.append(len(self.attr), odd)
        self.lo.append(lo)
        self.hi.append(hi)
        self.attr.append(attr)
        self.expires.append(expires)

    def row(self, i: int) -> Row:
        return self.lo[i], self.hi[i], self.attr[i], self.expires.get(i), self.odd.get(i)

    def extend(self, other: Table, start: int, end: int) -> None:
        """Other's rows [start, end), appended: slices of arrays, copied in C."""
        self.odd.extend(other.odd, start, end, len(self.attr))
        self.lo.extend(other.lo[start:end])
        self.hi.extend(other.hi[start:end])
        self.attr.extend(other.attr[start:end])
        self.expires.extend(other.expires, start, end)
