"""rbldnsd data files served as zones: specs, datasets loaded once each, reloaded when they change.

A spec is rbldnsd's positional `ZONE:TYPE:FILE[,FILE...]`; several files of one spec are one logical
file. A dataset named for several zones is loaded once; a zone named twice gets both datasets, and
their answers add up (as in rbldnsd). Each dataset keeps rbldnsd's own matching rule
(`zonefile.rbldnsd_blocks`). An `acl` dataset is not data: it rides on its zone (`Zone.acl`), or on
every zone for the global `:acl:FILE` (`Zones.acl`); one per zone and one global, as in rbldnsd.

Reload rules (README, "Data files"): files are polled for a changed size or mtime; a changed dataset
is built aside and swapped in whole. A file that cannot be read, or whose `$TIMESTAMP` is in the
future, keeps the previous data served (rbldnsd SERVFAILs there) and is logged. A bad line is skipped
with a warning `FILE:LINE: problem`, as rbldnsd does. A dataset past its `$TIMESTAMP` expiry answers
nothing until its file changes (`expire`). TTLs the files give are clamped to `--ttl` bounds on load.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from .acl import Acl, AclParsed, read_acl
from .compact import CompactIndex, Compiled, compact_of
from .errors import ConfigError, DnsblError
from .index import ZoneIndex
from .nameindex import Combined, NameData, Part
from .names import zone_name
from .namesets import NAME_TYPES, CombinedParsed, NamesParsed, Section, read_combined, read_names
from .snapshot import load_ip
from .ttl import NO_LIMITS, TtlLimits, limit_ttls
from .zone import Zone, Zones, ZoneSettings
from .zonefile import IP_TYPES, Parsed, Specials

TYPES = (*IP_TYPES, *NAME_TYPES, "combined", "acl")

log = logging.getLogger("dnsbl.datafiles")


EMPTY = ZoneIndex.build(())


class DataFileError(DnsblError):
    """A data file cannot be loaded (unreadable, or dated in the future)."""


@dataclass(frozen=True, slots=True)
class Spec:
    zone: str
    kind: str
    files: tuple[str, ...]

    @property
    def dataset(self) -> tuple[str, tuple[str, ...]]:
        return self.kind, self.files


def parse_spec(text: str) -> Spec:
    """`ZONE:TYPE:FILE[,FILE...]`, as rbldnsd takes it on its command line."""
    parts = text.split(":", 2)
    if len(parts) != 3 or not parts[2]:
        raise ConfigError(f"invalid zone spec {text!r}: use ZONE:TYPE:FILE[,FILE...]")
    zone, kind, files = parts
    if kind not in TYPES:
        raise ConfigError(
            f"invalid zone spec {text!r}: unknown dataset type {kind!r} (known here: {', '.join(TYPES)})"
        )
    if kind == "acl" and not zone.strip().rstrip("."):  # `:acl:FILE`, the global acl (as rbldnsd)
        return Spec("", kind, tuple(f for f in files.split(",") if f))
    return Spec(zone_name(zone), kind, tuple(f for f in files.split(",") if f))


@dataclass(frozen=True, slots=True)
class Dataset:
    kind: str
    files: tuple[str, ...]
    index: ZoneIndex | CompactIndex  # IP datasets: compact; the others: an empty ZoneIndex
    specials: Specials
    stamp: tuple[tuple[int, float], ...]  # (size, mtime) per file: what a reload compares
    problems: tuple[str, ...]
    names: tuple[NameData, ...] = ()  # dnset, generic
    combined: tuple[Combined, ...] = ()
    acl: Acl | None = None
    expired: bool = False  # past its $TIMESTAMP expiry: answers nothing until its file changes

    @property
    def mtime(self) -> float:
        return max(m for _, m in self.stamp)


def stamp_of(files: Iterable[str]) -> tuple[tuple[int, float], ...]:
    stats = []
    for path in files:
        try:
            info = os.stat(path)
        except OSError as error:
            raise DataFileError(f"{path}: cannot read: {error.strerror}") from None
        stats.append((info.st_size, info.st_mtime))
    return tuple(stats)


def load_dataset(
    kind: str,
    files: tuple[str, ...],
    now: float,
    *,
    loose: bool = False,
    quiet: bool = False,
    limits: TtlLimits = NO_LIMITS,
    snapshots: bool = False,
) -> Dataset:
    """One dataset, read now; with `snapshots`, an IP dataset is loaded from (or cached in) a compiled
    snapshot beside its files (`snapshot`), as the server does; `zone-check` reads the files only."""
    stamp = stamp_of(files)
    try:
        parsed = _read(kind, files, loose, snapshots)
    except (OSError, EOFError, ValueError) as error:
        raise DataFileError(f"{','.join(files)}: cannot read: {error}") from None
    stamped = parsed.specials.timestamp
    if stamped is not None and stamped > now:
        raise DataFileError(f"{','.join(files)}: $TIMESTAMP is in the future")
    limit_ttls(parsed, limits)
    for problem in () if quiet else parsed.problems:
        log.warning("%s", problem)
    problems = tuple(parsed.problems)
    if isinstance(parsed, NamesParsed):
        return Dataset(kind, files, EMPTY, parsed.specials, stamp, problems, names=(parsed.data(),))
    if isinstance(parsed, CombinedParsed):
        combined = (combine(parsed.sections),)
        return Dataset(kind, files, EMPTY, parsed.specials, stamp, problems, combined=combined)
    if isinstance(parsed, AclParsed):
        return Dataset(kind, files, EMPTY, parsed.specials, stamp, problems, acl=parsed.acl())
    return Dataset(kind, files, parsed.index, parsed.specials, stamp, problems)


def _read(
    kind: str, files: tuple[str, ...], loose: bool, snapshots: bool
) -> Compiled | NamesParsed | CombinedParsed | AclParsed:
    if kind == "acl":
        return read_acl(files, loose=loose)
    if kind in NAME_TYPES:
        return read_names(kind, files)
    if kind == "combined":
        return read_combined(files, loose=loose)
    return load_ip(kind, files, loose=loose, cache=snapshots)  # never an object per line (`compact`)


def ip_index(kind: str, parsed: Parsed) -> CompactIndex:
    return compact_of(kind, parsed.items)


def combine(sections: list[Section]) -> Combined:
    """The subzones of a combined dataset, each with the datasets of every section naming it."""
    parts: dict[tuple[str, ...], Part] = {}
    for section in sections:
        parsed = section.parsed
        if isinstance(parsed, NamesParsed):
            files, names = (), (parsed.data(),)
        else:
            files, names = (ip_index(section.kind, parsed),), ()
        for subzone in section.subzones:
            part = parts.get(subzone, Part())
            parts[subzone] = Part(part.files + files, part.names + names)
    return Combined(parts)


def expire(dataset: Dataset, now: float) -> Dataset:
    """Past its `$TIMESTAMP` expiry, a dataset answers nothing (its SOA and NS stay) until its file
    changes: stale data must list no one, and the rest of the zone goes on answering. rbldnsd answers
    SERVFAIL for the whole zone instead, which every client retries. An acl is never expired (rbldnsd)."""
    expires = dataset.specials.expires
    if dataset.expired or dataset.kind == "acl" or expires is None or now <= expires:
        return dataset
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires))
    log.warning(
        "%s:%s: data expired at %s ($TIMESTAMP); answering as if it were empty until the file changes",
        dataset.kind,
        ",".join(dataset.files),
        when,
    )
    return replace(dataset, index=EMPTY, names=(), combined=(), expired=True)


def check_acls(specs: list[Spec]) -> None:
    """rbldnsd's rule: at most one acl per zone, and one global acl."""
    seen: set[str] = set()
    for spec in dict.fromkeys(s for s in specs if s.kind == "acl"):
        if spec.zone in seen:
            where = f"zone {spec.zone}" if spec.zone else "the global acl (`:acl:FILE`)"
            raise ConfigError(f"{where}: more than one acl dataset; join the files in one spec instead")
        seen.add(spec.zone)


class DataFiles:
    """Every dataset of every spec; `refresh` reloads what changed on disk."""

    def __init__(self, specs: Iterable[Spec], *, loose: bool = False, limits: TtlLimits = NO_LIMITS) -> None:
        self.specs = list(specs)
        check_acls(self.specs)
        self.loose = loose
        self.limits = limits  # --ttl MIN:MAX, applied to the TTLs the files give
        self.datasets: dict[tuple[str, tuple[str, ...]], Dataset] = {}

    def load(self, now: float) -> None:
        """The first load: a dataset that cannot be read stops the start (there is nothing to serve)."""
        for spec in self.specs:
            if spec.dataset not in self.datasets:
                self.datasets[spec.dataset] = self._load(spec.kind, spec.files, now)

    def refresh(self, now: float) -> list[str]:
        """Reload datasets whose files changed; return the zones that changed."""
        changed: set[tuple[str, tuple[str, ...]]] = set()
        for key, dataset in list(self.datasets.items()):
            try:
                if stamp_of(dataset.files) == dataset.stamp:
                    continue
                self.datasets[key] = self._load(dataset.kind, dataset.files, now)
                changed.add(key)
                log.info("reloaded %s:%s", dataset.kind, ",".join(dataset.files))
            except DataFileError as error:
                log.warning("%s; still serving the previous data", error)
        return self._zones_of(changed)

    def _load(self, kind: str, files: tuple[str, ...], now: float) -> Dataset:
        loaded = load_dataset(kind, files, now, loose=self.loose, limits=self.limits, snapshots=True)
        return expire(loaded, now)

    def expire(self, now: float) -> list[str]:
        """Empty the datasets whose `$TIMESTAMP` expiry has passed; return the zones that changed."""
        changed = set()
        for key, dataset in list(self.datasets.items()):
            after = expire(dataset, now)
            if after is not dataset:
                self.datasets[key] = after
                changed.add(key)
        return self._zones_of(changed)

    def _zones_of(self, datasets: set[tuple[str, tuple[str, ...]]]) -> list[str]:
        return sorted({s.zone for s in self.specs if s.dataset in datasets})

    def zones(self) -> list[str]:
        return list(dict.fromkeys(s.zone for s in self.specs if s.zone))

    def global_acl(self) -> Acl | None:
        return next((self.datasets[s.dataset].acl for s in self.specs if not s.zone), None)

    def of(self, zone: str) -> list[Dataset]:
        return [self.datasets[s.dataset] for s in self.specs if s.zone == zone]


def file_settings(datasets: list[Dataset], base: ZoneSettings) -> tuple[ZoneSettings, int | None]:
    """A files-only zone's SOA, NS and TTL from the first dataset giving each ($SOA, $NS, $TTL), and
    its serial ($SOA serial; 0 means the newest file's mtime). None: no $SOA, our default serial."""
    values: dict[str, object] = {}
    serial = None
    soa = next((d.specials.soa for d in datasets if d.specials.soa), None)
    if soa is not None:
        ttl, mname, rname, number, refresh, retry, expire, minimum = soa
        values.update(mname=mname, rname=rname, refresh=refresh, retry=retry, expire=expire, minimum=minimum)
        serial = number or int(max(d.mtime for d in datasets))
    ns = next((d.specials.ns for d in datasets if d.specials.ns), None)
    if ns is not None:
        values["ns"] = ns[1]
    ttl_value = next((d.specials.ttl for d in datasets if d.specials.ttl is not None), None)
    if ttl_value is not None:
        values["ttl"] = ttl_value
    return replace(base, **values), serial  # type: ignore[arg-type]


def compose(sqlite: Zones | None, files: DataFiles, settings_for: Callable[[str], ZoneSettings]) -> Zones:
    """The served zones: SQLite zones with their data files beside, and files-only zones (no test
    points, SOA and NS from the files)."""
    out = {z.name: z for z in sqlite} if sqlite is not None else {}
    for name in files.zones():
        datasets = files.of(name)
        indexes = tuple(d.index for d in datasets if d.kind in IP_TYPES)
        names = tuple(n for d in datasets for n in d.names)
        combined = tuple(c for d in datasets for c in d.combined)
        acl = next((d.acl for d in datasets if d.acl is not None), None)  # applies to the SQLite list too
        if name in out:
            out[name] = replace(out[name], files=indexes, names=names, combined=combined, acl=acl)
            continue
        # an acl's $TTL is the TTL of its own answers, not the zone's; a zone with only an acl is empty
        settings, serial = file_settings([d for d in datasets if d.kind != "acl"], settings_for(name))
        serial = serial or int(max(d.mtime for d in datasets))
        out[name] = Zone(name, EMPTY, serial, settings, False, indexes, names, combined, acl)
    return Zones.of(out.values(), files.global_acl())
