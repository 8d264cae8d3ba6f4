"""Name-keyed datasets as a zone carries them: dnset, generic, and combined's subzones; immutable.

Owns rbldnsd's matching rules for names (`man rbldnsd`, "dnset", "generic", "combined"):
- dnset: an exact entry for the name decides; else the most specific wildcard above it (`*.name` covers
  subdomains only, `.name` the name too). An exclusion among the entries that decide wins: not listed
  (no fallback to a wider wildcard). All entries of the deciding name answer. `$` in a TXT template is
  the deciding entry's name, lowercase (for a wildcard, the name under the `*.`), as rbldnsd puts it.
- generic: records of exactly the name (`()` is the apex); no wildcards.
- combined: a name is answered from the datasets of the most closely matching subzone only; the
  subzone's own name always exists (NODATA rather than NXDOMAIN).
Labels are lowercase tuples, leftmost first, relative to the zone (or subzone).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from .index import ZoneIndex

Labels = tuple[str, ...]


class Value(NamedTuple):
    code: int  # A as a 32-bit integer
    txt: str | None  # template: `$` is the entry's name, `$$` a dollar; None: no TXT


class GenericRecord(NamedTuple):
    rtype: int  # 1 A, 15 MX, 16 TXT
    ttl: int | None  # None: the zone's TTL
    data: object  # A: dotted str; TXT: str; MX: (preference, host)


@dataclass(frozen=True, slots=True)
class NameSet:
    """A dnset: exact and wildcard entries; None marks an excluded name."""

    exact: Mapping[Labels, tuple[Value, ...] | None]
    wild: Mapping[Labels, tuple[Value, ...] | None]

    @classmethod
    def build(cls, entries: Iterable[tuple[Labels, bool, Value | None]]) -> NameSet:
        """From (labels, wildcard?, value or None for an exclusion)."""
        exact: dict[Labels, list[Value | None]] = {}
        wildcards: dict[Labels, list[Value | None]] = {}
        for labels, wild, value in entries:
            (wildcards if wild else exact).setdefault(labels, []).append(value)
        return cls(_decided(exact), _decided(wildcards))

    def match(self, labels: Labels) -> tuple[str, tuple[Value, ...]] | None:
        """The deciding entry's name and values, or None: not listed."""
        if not labels:
            return None
        if labels in self.exact:
            values = self.exact[labels]
            return None if values is None else (".".join(labels), values)
        for start in range(1, len(labels)):
            parent = labels[start:]
            if parent in self.wild:
                values = self.wild[parent]
                return None if values is None else (".".join(parent), values)
        return None


def _decided(table: dict[Labels, list[Value | None]]) -> dict[Labels, tuple[Value, ...] | None]:
    """Per name: None if any entry excludes it (rbldnsd sorts exclusions first), else its values."""
    out: dict[Labels, tuple[Value, ...] | None] = {}
    for labels, values in table.items():
        kept = [v for v in values if v is not None]
        out[labels] = None if len(kept) < len(values) else tuple(dict.fromkeys(kept))
    return out


@dataclass(frozen=True, slots=True)
class RecordSet:
    """A generic dataset: records per exact name."""

    records: Mapping[Labels, tuple[GenericRecord, ...]]

    def match(self, labels: Labels) -> tuple[GenericRecord, ...] | None:
        return self.records.get(labels)


NameData = NameSet | RecordSet


@dataclass(frozen=True, slots=True)
class Part:
    """What one subzone of a combined dataset answers from."""

    files: tuple[ZoneIndex, ...] = ()
    names: tuple[NameData, ...] = ()


@dataclass(frozen=True, slots=True)
class Combined:
    subzones: Mapping[Labels, Part]

    def find(self, labels: Labels) -> tuple[Labels, Part] | None:
        """The most closely matching subzone's part, and the labels in front of it."""
        for start in range(len(labels) + 1):
            part = self.subzones.get(labels[start:])
            if part is not None:
                return labels[:start], part
        return None
