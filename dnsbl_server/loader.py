"""Keeps the served `Zones` in step with the SQLite list. Runs off the serving loop, in one thread.

`load()` builds every zone from scratch; `refresh(now)` follows the change journal: a few changed
entries go into each zone's overlay (a new ZoneIndex, the old one untouched), a bulk change or a large
overlay rebuilds that zone aside. It returns a new `Zones` only when something changed, for the caller
to swap in with one assignment: a query sees the old zones or the new ones, never a mix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .index import Entry, Key, ZoneIndex
from .store import Change, Store
from .zone import Zone, Zones, ZoneSettings

FOLD_AT = 2000  # overlay entries before they are folded into the base (copied: ~0.1 s for 1M entries)
BATCH = 20000  # journal rows read per refresh; more than this means a bulk change: rebuild


@dataclass
class Loader:
    store: Store
    names: list[str] | None  # None: every zone in the database
    settings: Callable[[str], ZoneSettings]
    seq: int = 0
    version: int = -1
    zones: Zones | None = None

    def load(self, now: float) -> Zones:
        self.version = self.store.data_version()
        with self.store.reading():  # the journal position, entries and serials of one moment
            self.seq = self.store.last_seq()
            self.zones = Zones.of([self._build(name, now) for name in self._names()])
        return self.zones

    def _names(self) -> list[str]:
        have = self.store.zone_names()
        return have if self.names is None else [n for n in self.names if n in have]

    def _build(self, name: str, now: float) -> Zone:
        return build_zone(self.store, name, self.settings(name), now)

    def refresh(self, now: float) -> Zones | None:
        """Apply what changed since the last call; None when nothing did. State moves only at the
        end, so an error part-way leaves the next call to redo the same changes."""
        assert self.zones is not None, "load() first"
        version = self.store.data_version()
        # One read transaction: a write committed meanwhile must not lend its serial to zones that do
        # not hold it yet (a secondary would then never be sent that change).
        with self.store.reading():
            changes = self.store.changes_since(self.seq, BATCH) if version != self.version else []
            bulk = len(changes) >= BATCH or any(c.op == "reload" for c in changes)
            updated = None if bulk else self._updated(changes, now)
        if updated is None:
            return self.load(now)
        current = {z.name: z for z in self.zones}
        self.version = version
        self.seq = changes[-1].seq if changes else self.seq
        if all(updated[n] is current[n] for n in current):
            return None
        self.zones = Zones.of(updated.values())
        return self.zones

    def _updated(self, changes: list[Change], now: float) -> dict[str, Zone]:
        assert self.zones is not None
        current = {z.name: z for z in self.zones}
        updated = dict(current)
        for name, keys in _keys_by_zone(changes).items():
            if name in current:
                updated[name] = self._apply(current[name], keys, now)
        for name, zone in updated.items():  # expiries move serials even with no write
            serial = self.store.serial(name, now)
            if serial != zone.serial:
                updated[name] = zone.with_index(zone.index, serial)
        return updated

    def _apply(self, zone: Zone, keys: set[Key], now: float) -> Zone:
        changes: dict[Key, Entry | None] = {key: self.store.entry(zone.name, key[0], key[1]) for key in keys}
        index = zone.index.with_changes(changes)
        if len(index.changed) > FOLD_AT:
            index = index.fold()
        return zone.with_index(index, self.store.serial(zone.name, now))


def build_zone(store: Store, name: str, settings: ZoneSettings, now: float) -> Zone:
    """One zone, whole, from the store."""
    return Zone(name, ZoneIndex.build(store.entries(name)), store.serial(name, now), settings)


def _keys_by_zone(changes: list[Change]) -> dict[str, set[Key]]:
    out: dict[str, set[Key]] = {}
    for change in changes:
        if change.target is not None and change.source is not None:
            out.setdefault(change.zone, set()).add((change.target, change.source))
    return out
