"""The IXFR journal (RFC 1995): what changed in each zone's records from one serial to the next, kept in
SQLite beside the list, and the one writer that keeps it.

Owns the tables `xfr_versions` (one row per serial change: from, to, when, how many records) and
`xfr_journal` (the records deleted '-' and added '+' by that change), made by migration step 7; the
SQL that reads and writes them lives here, beside the transfer code that is their only user.

Rules:
- One `Keeper` writes, in one process (the trap/ops process with workers, the refresh thread with
  one): it holds the zone as it was when its serial last moved, and when the serial moves again it
  diffs `zonedump.records()` of only the blocks that changed in between: the blocks of the `changes`
  rows the loader applied since (seq cursor) and of the entries that expired since. Records of one
  block depend only on that block's data (zonedump's contract), so the diff is exact.
- A serial change the journal cannot describe leaves a gap (no version row from the old serial), and
  IXFR from before it falls back to a whole-zone answer (RFC 1995 section 4): a bulk change (a
  `reload` row), a zone with rbldnsd data files (their reloads are not journalled), a restart (the
  journal starts from the serial served then).
- Pruned by age (MAX_AGE_S) and by size (MAX_ROWS per zone), oldest versions first.
- Readers (`chain`) follow serial_from -> serial_to from the client's serial to the one they serve,
  and condense the versions into one difference: deleting what a later version re-adds cancels out.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field

from .addresses import parse_target
from .errors import DnsblError
from .zone import Zone, Zones

log = logging.getLogger("dnsbl.journal")
MAX_AGE_S = 7 * 86400  # a secondary further behind than a week gets the whole zone
MAX_ROWS = 2_000_000  # journal records per zone, at most
MAX_CHAIN = 100_000  # versions followed for one IXFR

Record = tuple[str, str, int, str]  # zonedump.RR as plain values: name, rtype, ttl, rdata


@dataclass
class Diff:
    deleted: list[Record] = field(default_factory=list)
    added: list[Record] = field(default_factory=list)


# --- reading (the transfer server, any process, its own connection) ------------------------------


def chain(conn: sqlite3.Connection, zone: str, start: int, end: int) -> Diff | None:
    """The condensed difference from serial `start` to `end`, or None when the journal does not reach
    (a gap, pruned, or `end` not written yet)."""
    serials, serial = [], start
    while serial != end:
        row = conn.execute(
            "SELECT serial_to FROM xfr_versions WHERE zone = ? AND serial_from = ?", (zone, serial)
        ).fetchone()
        if row is None or len(serials) >= MAX_CHAIN:
            return None
        serials.append(serial)
        serial = int(row[0])
    return _condense(_rows(conn, zone, s) for s in serials)


def _rows(conn: sqlite3.Connection, zone: str, serial_from: int) -> Iterable[tuple[str, Record]]:
    rows = conn.execute(
        "SELECT op, name, rtype, ttl, rdata FROM xfr_journal WHERE zone = ? AND serial_from = ? ORDER BY seq",
        (zone, serial_from),
    )
    return ((op, (name, rtype, int(ttl), rdata)) for op, name, rtype, ttl, rdata in rows)


def _condense(versions: Iterable[Iterable[tuple[str, Record]]]) -> Diff:
    deleted: dict[Record, None] = {}
    added: dict[Record, None] = {}
    for version in versions:
        for op, record in version:
            if op == "-":
                if added.pop(record, 0) is not None:  # added by an earlier version: never was
                    deleted[record] = None
            elif deleted.pop(record, 0) is not None:  # deleted earlier: it was there all along
                added[record] = None
    return Diff(list(deleted), list(added))


# --- writing (the Keeper's process only) ---------------------------------------------------------


def write(conn: sqlite3.Connection, zone: str, serials: tuple[int, int], diff: Diff, now: float) -> None:
    """One version, in one transaction, then pruning."""
    old, new = serials
    rows = [(zone, old, new, i, "-", *r) for i, r in enumerate(diff.deleted)]
    rows += [(zone, old, new, len(rows) + i, "+", *r) for i, r in enumerate(diff.added)]
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM xfr_journal WHERE zone = ? AND serial_from = ?", (zone, old))
        conn.execute(
            "INSERT OR REPLACE INTO xfr_versions (zone, serial_from, serial_to, at, size) VALUES (?,?,?,?,?)",
            (zone, old, new, now, len(rows)),
        )
        conn.executemany("INSERT INTO xfr_journal VALUES (?,?,?,?,?,?,?,?,?)", rows)
        _prune(conn, zone, now)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _prune(conn: sqlite3.Connection, zone: str, now: float) -> None:
    old = conn.execute(
        "SELECT serial_from FROM xfr_versions WHERE zone = ? AND at < ?", (zone, now - MAX_AGE_S)
    ).fetchall()
    total = 0
    newest_first = conn.execute(
        "SELECT serial_from, size FROM xfr_versions WHERE zone = ? ORDER BY at DESC", (zone,)
    ).fetchall()
    for serial_from, size in newest_first:
        total += size
        if total > MAX_ROWS:
            old.append((serial_from,))
    for (serial_from,) in old:
        conn.execute("DELETE FROM xfr_versions WHERE zone = ? AND serial_from = ?", (zone, serial_from))
        conn.execute("DELETE FROM xfr_journal WHERE zone = ? AND serial_from = ?", (zone, serial_from))


def _touched(
    conn: sqlite3.Connection, zone: str, seqs: tuple[int, int], times: tuple[float, float]
) -> set[str] | None:
    """The blocks of every change row in (seqs] and every entry expiring in (times]; None after a bulk
    change, which no block list describes."""
    from . import zonedump

    blocks: set[str] = set()
    rows = conn.execute(
        "SELECT target, op FROM changes WHERE zone = ? AND seq > ? AND seq <= ?", (zone, *seqs)
    )
    for target, op in rows:
        if op == "reload" or target is None:
            return None
        try:
            parsed = parse_target(target)
        except DnsblError:  # not ours to judge here; the loader refused it already
            continue
        blocks |= zonedump.blocks_of(parsed.family, parsed.lo, parsed.hi)
    expired = conn.execute(
        "SELECT family, lo, hi FROM entries WHERE zone = ? AND expires > ? AND expires <= ?", (zone, *times)
    )
    for family, lo, hi in expired:
        blocks |= zonedump.blocks_of(int(family), int.from_bytes(lo, "big"), int.from_bytes(hi, "big"))
    return blocks


def diff_blocks(old: Zone, old_at: float, new: Zone, now: float, blocks: set[str]) -> Diff:
    from . import zonedump

    if not blocks:
        return Diff()
    before = dict.fromkeys(tuple(r) for r in zonedump.records(old, old_at, blocks))
    after = dict.fromkeys(tuple(r) for r in zonedump.records(new, now, blocks))
    return Diff([r for r in before if r not in after], [r for r in after if r not in before])  # type: ignore[misc]


@dataclass
class _Held:
    zone: Zone  # as it was when its serial last moved
    at: float
    seq: int  # the change journal applied to it


class Keeper:
    """Sees every serial change of every zone (call `step` after each refresh) and journals it (when
    `write`: with no --allow-transfer nobody reads the journal, and only the moves are wanted)."""

    def __init__(self, conn: sqlite3.Connection, *, write: bool = True) -> None:
        self.conn = conn
        self.write = write
        self.held: dict[str, _Held] = {}

    def step(self, zones: Zones, seq: int, now: float) -> list[Zone]:
        """`zones` as served after the change journal up to `seq` was applied; returns the zones whose
        serial moved (to be NOTIFYed)."""
        moved = []
        for zone in zones:
            held = self.held.get(zone.name)
            if held is not None and held.zone.serial == zone.serial:
                continue
            if held is not None:
                moved.append(zone)
                if self.write:
                    self._journal(held, zone, seq, now)
            self.held[zone.name] = _Held(zone, now, seq)
        return moved

    def _journal(self, held: _Held, zone: Zone, seq: int, now: float) -> None:
        serials = (held.zone.serial, zone.serial)
        if zone.files or zone.names or zone.combined:
            log.debug("%s: serial %d -> %d not journalled (data files)", zone.name, *serials)
            return
        try:
            blocks = _touched(self.conn, zone.name, (held.seq, seq), (held.at, now))
            if blocks is None:
                log.info(
                    "%s: serial %d -> %d is a bulk change: IXFR from before it sends the whole zone",
                    zone.name,
                    *serials,
                )
                return
            diff = diff_blocks(held.zone, held.at, zone, now, blocks)
            write(self.conn, zone.name, serials, diff, now)
        except sqlite3.Error as error:  # a gap: IXFR across it sends the whole zone
            log.warning("%s: serial %d -> %d not journalled: %s", zone.name, *serials, error)
            return
        log.info(
            "%s: serial %d -> %d journalled: %d records deleted, %d added",
            zone.name,
            *serials,
            len(diff.deleted),
            len(diff.added),
        )
