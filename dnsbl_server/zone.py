"""A served zone as the resolver sees it: settings, serial and index, frozen; and the set of zones.

Owns the per-zone defaults (README, "Defaults"): TTL 2100 s as rbldnsd's, SOA timers, NS names.
A `Zones` value is replaced whole when anything changes; the query path only reads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from .acl import Acl
from .index import ZoneIndex
from .nameindex import Combined, NameData


@dataclass(frozen=True, slots=True)
class ZoneSettings:
    ttl: int = 2100  # answer TTL (rbldnsd's default is 35 minutes)
    refresh: int = 7200
    retry: int = 1800
    expire: int = 604800
    minimum: int = 600  # SOA minimum: negative answers are cached min(SOA TTL, this) (RFC 2308)
    ns: tuple[str, ...] = ()  # empty: ns.<zone>
    mname: str = ""  # empty: the first NS
    rname: str = ""  # empty: hostmaster.<zone>

    def name_servers(self, zone: str) -> tuple[str, ...]:
        return self.ns or (f"ns.{zone}",)

    def soa_names(self, zone: str) -> tuple[str, str]:
        return self.mname or self.name_servers(zone)[0], self.rname or f"hostmaster.{zone}"

    @property
    def negative_ttl(self) -> int:
        return min(self.ttl, self.minimum)


@dataclass(frozen=True, slots=True)
class Zone:
    name: str  # lowercase, no trailing dot
    index: ZoneIndex
    serial: int = 1
    settings: ZoneSettings = field(default_factory=ZoneSettings)
    test_points: bool = True  # RFC 5782 test points, synthesised for zones with a SQLite list
    files: tuple[ZoneIndex, ...] = ()  # rbldnsd data-file datasets; their answers add up
    names: tuple[NameData, ...] = ()  # dnset and generic datasets, names relative to the zone
    combined: tuple[Combined, ...] = ()  # combined datasets: subzones with datasets of their own
    acl: Acl | None = None  # the zone's rbldnsd acl dataset: what each client gets

    def with_index(self, index: ZoneIndex, serial: int) -> Zone:
        return replace(self, index=index, serial=serial)


@dataclass(frozen=True, slots=True)
class Zones:
    by_labels: dict[tuple[str, ...], Zone]
    acl: Acl | None = None  # the global acl (spec `:acl:FILE`): every zone, and queries for none

    @classmethod
    def of(cls, zones: Iterable[Zone], acl: Acl | None = None) -> Zones:
        return cls({tuple(z.name.split(".")): z for z in zones}, acl)

    def find(self, labels: list[str]) -> tuple[Zone, list[str]] | None:
        """The zone of the longest matching suffix, and the labels in front of it (as asked)."""
        lowered = tuple(label.lower() for label in labels)
        for start in range(len(lowered)):
            zone = self.by_labels.get(lowered[start:])
            if zone is not None:
                return zone, labels[:start]
        return None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.by_labels.values())
