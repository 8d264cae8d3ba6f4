"""The list in SQLite: all SQL lives here. sqlite-utils wraps the connection; the schema is in
migrations.py.

Rules:
- WAL mode, so the server reads while the CLI and the ingester write; writers take the write lock up
  front (BEGIN IMMEDIATE) and wait for it (busy timeout), so no "database is locked" reaches a user.
- Every write is one transaction: all of it lands or none. One that fails on the disk (full,
  damaged, read-only) is rolled back and said in one line (dbfile.py); the server's start runs
  PRAGMA quick_check first (`Store.open(check=True)`).
- Every change is journalled in `changes` (the server follows it to update its index) and moves the
  zone's serial forward. The serial is never lower than it was: `serial()` also counts entries that
  expired since the last write, so an expiry moves it at its own moment, before anything purges it.
- Trap hits arrive in bursts and mostly only extend an expiry: their serial change is coalesced. Within
  COALESCE_S of the last serial change a hit batch only marks the zone pending, and `serial()` moves
  the serial once when that window closes, so secondaries see at most one change per window.
- An entry is identified by (zone, canonical target, source); writing it again updates it.
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # kept out of start-up: `dnsbl check` must start fast
    import sqlite_utils

    from .imports import Row
    from .policy import Hit, Policy

from .addresses import TEST_LISTED, TEST_UNLISTED, Target, format_address, format_target
from .allowlist import Allowed, Allowlist
from .dbfile import explain, is_disk_error, quick_check, require_writable_folder
from .errors import StoreError
from .index import Entry
from .migrations import ENCLOSING_INDEX, enclosing, migrate

BUSY_TIMEOUT_S = 30.0
COALESCE_S = 5.0  # at most one serial change per this many seconds from trap hits
SERIAL_MAX = (1 << 32) - 1


class Listing(NamedTuple):
    """What a writer asks for: one target with its values."""

    target: Target
    code: int
    reason: str = ""
    expires: float | None = None


class ZoneRow(NamedTuple):
    name: str
    serial: int
    changed_at: float
    pending_since: float | None = None  # a coalesced change waiting for its serial


class Change(NamedTuple):
    seq: int
    zone: str
    target: str | None
    source: str | None
    op: str


def check_test_points(target: Target) -> None:
    """RFC 5782: 127.0.0.1 must never be listed and 127.0.0.2 always is."""
    if target.family != 4:
        return
    if not target.excluded and target.lo <= TEST_UNLISTED <= target.hi:
        raise StoreError(
            f"refusing to list {format_target(target)}: it covers 127.0.0.1, "
            "the RFC 5782 test point that must never be listed"
        )
    if target.excluded and target.lo <= TEST_LISTED <= target.hi:
        raise StoreError(
            f"refusing to exclude {format_target(target)}: it covers 127.0.0.2, "
            "the RFC 5782 test point that must always be listed"
        )


def _width(family: int) -> int:
    return 4 if family == 4 else 16


def entry_from_row(row: Sequence[object]) -> Entry:
    target, source, family, lo, hi, excluded, code, reason, expires = row
    return Entry(
        (str(target), str(source)),
        int(family),  # type: ignore[call-overload]
        int.from_bytes(lo, "big"),
        int.from_bytes(hi, "big"),  # type: ignore[arg-type]
        bool(excluded),
        int(code),
        str(reason),
        expires,  # type: ignore[call-overload,arg-type]
    )


ENTRY_COLUMNS = "target, source, family, lo, hi, excluded, code, reason, expires"


def source_clause(source: str) -> tuple[str, list[str]]:
    """`trap` matches `trap` and `trap:anything` (sources are hierarchical with `:`)."""
    return "(source = ? OR source LIKE ? ESCAPE '\\')", [source, _like_escape(source) + ":%"]


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class Store:
    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self.conn = conn
        self.path = path

    @property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils over the same connection, for reporting queries (imported on first use:
        it costs a quarter of `dnsbl check`'s start-up otherwise)."""
        import sqlite_utils

        return sqlite_utils.Database(self.conn)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, create: bool = True, check: bool = False) -> Store:
        """`check`: PRAGMA quick_check first, before anything is written (dbfile.py: the server's start)."""
        target = Path(path)
        if not create and not target.exists():
            raise StoreError(f"{target}: no such database")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if create or check:  # a reader may still read where it cannot write (-wal, -shm there)
                require_writable_folder(target)
            conn = sqlite3.connect(
                target, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"{target}: cannot open database: {error}") from None
        try:
            return cls._prepare(conn, target, check)
        except BaseException:
            conn.close()
            raise

    @classmethod
    def _prepare(cls, conn: sqlite3.Connection, target: Path, check: bool) -> Store:
        try:
            if check:
                quick_check(conn, target)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # durable in WAL mode across app crashes
            migrate(conn)
        except sqlite3.Error as error:
            raise StoreError(f"{target}: cannot open database: {explain(error, target)}") from None
        return cls(conn, str(target))

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise StoreError(f"{self.path}: cannot start a write: {self._explain(error)}") from None
        try:
            yield
        except BaseException as error:
            self._rollback()
            if isinstance(error, sqlite3.Error) and is_disk_error(error):  # full, damaged: not a bug
                raise StoreError(self._failed(error)) from None
            raise
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as error:
            self._rollback()
            raise StoreError(self._failed(error)) from None

    @contextmanager
    def reading(self) -> Iterator[None]:
        """One read transaction: every SELECT inside sees the same committed state (WAL snapshot), so a
        zone's serial is never read from a later commit than its entries and the journal rows."""
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    def _rollback(self) -> None:
        # SQLite may have rolled back already (a full disk during COMMIT can); nothing left to undo then
        if self.conn.in_transaction:
            with suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")

    def _failed(self, error: sqlite3.Error) -> str:
        return f"{self.path}: write failed, nothing of it was written: {self._explain(error)}"

    def _explain(self, error: sqlite3.Error) -> str:
        return explain(error, Path(self.path))

    # --- zones ------------------------------------------------------------------------------

    def zones(self) -> list[ZoneRow]:
        rows = self.conn.execute("SELECT name, serial, changed_at, pending_since FROM zones ORDER BY name")
        return [ZoneRow(*row) for row in rows]

    def zone_names(self) -> list[str]:
        return [z.name for z in self.zones()]

    def ensure_zone(self, name: str, now: float) -> bool:
        """Create the zone if missing; True if it was created."""
        if self._zone(name) is not None:
            return False
        with self.transaction():
            return self._create_zone(name, now)

    def _create_zone(self, name: str, now: float) -> bool:
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO zones (name, serial, changed_at, created) VALUES (?, ?, ?, ?)",
            (name, int(now) & SERIAL_MAX, now, now),
        )
        if cur.rowcount:
            self._journal(name, None, None, "reload", now)
        return bool(cur.rowcount)

    def _zone(self, name: str) -> ZoneRow | None:
        row = self.conn.execute(
            "SELECT name, serial, changed_at, pending_since FROM zones WHERE name = ?", (name,)
        ).fetchone()
        return ZoneRow(*row) if row else None

    def serial(self, zone: str, now: float) -> int:
        """The zone's serial as of `now`: the stored one, moved on by a coalesced change whose window
        has closed and by every expiry since. Never goes down as `now` goes on."""
        row = self._zone(zone)
        if row is None:
            raise StoreError(f"no zone {zone!r}")
        serial = row.serial
        if row.pending_since is not None:
            due = max(row.pending_since, row.changed_at + COALESCE_S)
            if now >= due:
                serial = max(serial + 1, int(due))
        count, latest = self.conn.execute(
            "SELECT count(*), max(expires) FROM entries WHERE zone = ? AND expires > ? AND expires <= ?",
            (zone, row.changed_at, now),
        ).fetchone()
        if not count:
            return serial & SERIAL_MAX
        return max(serial + count, int(latest)) & SERIAL_MAX

    def touch(self, zone: str, now: float) -> None:
        """Move the serial forward with no entry changed (a data file of the zone was reloaded)."""
        with self.transaction():
            self._bump(zone, now)

    def _bump(self, zone: str, now: float) -> None:
        serial = max(self.serial(zone, now) + 1, int(now)) & SERIAL_MAX
        self.conn.execute(
            "UPDATE zones SET serial = ?, changed_at = ?, pending_since = NULL WHERE name = ?",
            (serial, now, zone),
        )

    def _bump_coalesced(self, zone: str, now: float) -> None:
        """Like `_bump`, unless the serial moved less than COALESCE_S ago: then the change waits for
        `serial()` to count it when the window closes (the index follows the journal meanwhile)."""
        row = self._zone(zone)
        assert row is not None
        last = row.changed_at
        if row.pending_since is not None:
            due = max(row.pending_since, row.changed_at + COALESCE_S)
            if now < due:
                return  # a change is already waiting: this one rides along
            # the waiting change has had its serial since `due`: store it, as of then
            self.conn.execute(
                "UPDATE zones SET serial = ?, changed_at = ?, pending_since = NULL WHERE name = ?",
                (self.serial(zone, due), due, zone),
            )
            last = due
        if now - last >= COALESCE_S:
            self._bump(zone, now)
        else:
            self.conn.execute("UPDATE zones SET pending_since = ? WHERE name = ?", (now, zone))

    def _journal(self, zone: str, target: str | None, source: str | None, op: str, now: float) -> None:
        self.conn.execute(
            "INSERT INTO changes (zone, target, source, op, at) VALUES (?,?,?,?,?)",
            (zone, target, source, op, now),
        )

    def _require_zone(self, zone: str) -> None:
        if self._zone(zone) is None:
            raise StoreError(f"no zone {zone!r} (zones: {', '.join(self.zone_names()) or 'none'})")

    # --- entries ----------------------------------------------------------------------------

    def add(self, zone: str, listings: Iterable[Listing], *, source: str, now: float) -> int:
        """Insert or update entries in one transaction; return how many were written."""
        rows = list(listings)
        for listing in rows:
            check_test_points(listing.target)
        with self.transaction():
            self._require_zone(zone)
            for listing in rows:
                self._upsert(zone, listing, source, now)
            if rows:
                self._bump(zone, now)
        return len(rows)

    def _upsert(self, zone: str, listing: Listing, source: str, now: float) -> None:
        t = listing.target
        params = _upsert_params(zone, t, source, listing.code, listing.reason, listing.expires, now)
        self.conn.execute(UPSERT, params)
        self._journal(zone, format_target(t), source, "set", now)

    def remove(
        self, zone: str, targets: Iterable[Target], *, source: str | None, now: float
    ) -> list[tuple[str, str]]:
        """Delete entries whose target is exactly one of `targets`; return (target, source) removed."""
        removed: list[tuple[str, str]] = []
        with self.transaction():
            self._require_zone(zone)
            for target in targets:
                removed += self._delete(zone, format_target(target), source, now)
            if removed:
                self._bump(zone, now)
        return removed

    def _delete(self, zone: str, text: str, source: str | None, now: float) -> list[tuple[str, str]]:
        where, params = "zone = ? AND target = ?", [zone, text]
        if source is not None:
            clause, extra = source_clause(source)
            where, params = f"{where} AND {clause}", params + extra
        found = [
            (str(r[0]), str(r[1]))
            for r in self.conn.execute(f"SELECT target, source FROM entries WHERE {where}", params)
        ]
        for target, src in found:
            self.conn.execute(
                "DELETE FROM entries WHERE zone = ? AND target = ? AND source = ?", (zone, target, src)
            )
            self._journal(zone, target, src, "del", now)
        return found

    def import_staged(
        self,
        zone: str,
        chunks: Iterable[list[tuple[object, ...]]],
        *,
        replace: str | None,
        now: float,
        verify: Callable[[], None] = lambda: None,
    ) -> int:
        """Write chunks of `staged_chunks` rows in one transaction: all or nothing. The zone is created
        if missing; `replace` first deletes the entries of that source and its sub-sources; `verify`
        runs after the last row and before the commit, and raising there undoes it all. A small import
        (SMALL_IMPORT rows or fewer, no `replace`) is journalled row by row, as `add` is: the server
        applies it to its overlay. A larger one is journalled as one bulk change: the server rebuilds
        the zone, which for a big list takes every serving process seconds of CPU."""
        written = 0
        # Rows go to an unindexed staging table first, then into `entries` in one sorted statement:
        # index inserts in key order, in C, are several times cheaper than a million random ones.
        self.conn.execute("PRAGMA cache_size = -262144")
        with self.transaction():
            self._create_zone(zone, now)
            if replace is not None:
                clause, params = source_clause(replace)
                self.conn.execute(f"DELETE FROM entries WHERE zone = ? AND {clause}", [zone, *params])
            self.conn.execute(f"CREATE TEMP TABLE staging AS SELECT {STAGED} FROM entries WHERE 0")
            insert = f"INSERT INTO staging VALUES ({','.join('?' * STAGED.count(','))},?)"
            try:
                for params in chunks:
                    self.conn.executemany(insert, params)
                    written += len(params)
                verify()
                small = written <= SMALL_IMPORT
                # Rebuilding this index after the merge (a sort) is cheaper than a million random
                # inserts into it; its twin, the unique key, is filled in order by the merge itself.
                # Not for a few rows: re-sorting a big list's index for them would cost seconds.
                if not small:
                    self.conn.execute("DROP INDEX entries_enclosing")
                self.conn.execute(MERGE_STAGED, (zone, now, now))
                if not small:
                    self.conn.execute(ENCLOSING_INDEX)
                per_row = small and replace is None  # a replace deleted rows no journal line names
                if per_row:
                    self.conn.execute(JOURNAL_STAGED, (zone, now))
            finally:
                self.conn.execute("DROP TABLE temp.staging")
            if not per_row:
                self._journal(zone, None, None, "reload", now)
            self._bump(zone, now)
        return written

    def entries(self, zone: str) -> Iterator[Entry]:
        """By (family, lo): the order the index streams in without sorting a million entries itself
        (big-endian blobs of one width compare as the numbers do)."""
        rows = self.conn.execute(
            f"SELECT {ENTRY_COLUMNS} FROM entries WHERE zone = ? ORDER BY family, lo", (zone,)
        )
        return (entry_from_row(row) for row in rows)

    def entry(self, zone: str, target: str, source: str) -> Entry | None:
        row = self.conn.execute(
            f"SELECT {ENTRY_COLUMNS} FROM entries WHERE zone = ? AND target = ? AND source = ?",
            (zone, target, source),
        ).fetchone()
        return entry_from_row(row) if row else None

    def covering(self, zone: str, target: Target) -> list[Entry]:
        """Listings of the zone whose range contains all of `target` (to explain a failed remove)."""
        found = self.candidates(zone, target.family, target.lo)
        return [e for e in found if not e.excluded and e.lo <= target.lo and e.hi >= target.hi]

    def candidates(self, zone: str, family: int, address: int) -> list[Entry]:
        """Every entry of the zone covering one address, found by index (see migrations.enclosing):
        one indexed probe per prefix length (a row-value IN list would make SQLite scan the family)."""
        bits = 32 if family == 4 else 128
        found = []
        for plen in range(bits + 1):
            host = (1 << (bits - plen)) - 1
            net = (address & ~host).to_bytes(bits // 8, "big")
            found += self.conn.execute(
                f"SELECT {ENTRY_COLUMNS} FROM entries WHERE zone = ? AND family = ? AND plen = ? AND net = ?",
                (zone, family, plen, net),
            ).fetchall()
        return [entry_from_row(row) for row in found]

    def details(self, zone: str, keys: Iterable[tuple[str, str]]) -> list[dict[str, object]]:
        """Created/updated/expiry of entries, for explaining an answer."""
        out = []
        for target, source in keys:
            row = self.conn.execute(
                "SELECT target, source, code, reason, created, updated, expires, excluded FROM entries "
                "WHERE zone = ? AND target = ? AND source = ?",
                (zone, target, source),
            ).fetchone()
            if row:
                out.append(
                    dict(
                        zip(
                            (
                                "target",
                                "source",
                                "code",
                                "reason",
                                "created",
                                "updated",
                                "expires",
                                "excluded",
                            ),
                            row,
                            strict=True,
                        )
                    )
                )
        return out

    def list_entries(
        self, zones: Sequence[str], *, source: str | None, expired: bool | None, now: float
    ) -> Iterator[dict[str, object]]:
        """Entries as dicts (sqlite-utils rows), by zone then target; `expired` True/False/None (all)."""
        where, params = [f"zone IN ({','.join('?' for _ in zones)})"], list[object](zones)
        if source is not None:
            clause, extra = source_clause(source)
            where.append(clause)
            params += extra
        if expired is not None:
            where.append(
                "(expires IS NOT NULL AND expires <= ?)" if expired else "(expires IS NULL OR expires > ?)"
            )
            params.append(now)
        return self.db.query(
            "SELECT zone, target, source, code, reason, created, updated, expires FROM entries "
            f"WHERE {' AND '.join(where)} ORDER BY zone, family, lo, hi, source",
            params,
        )

    def remove_source(self, zone: str, source: str, *, older_than: float | None, now: float) -> int:
        """Bulk removal: every entry of `source` (and sub-sources), or only those not updated since."""
        clause, params = source_clause(source)
        where, args = f"zone = ? AND {clause}", [zone, *params]
        if older_than is not None:
            where += " AND updated < ?"
            args.append(older_than)
        with self.transaction():
            self._require_zone(zone)
            count = self.conn.execute(f"DELETE FROM entries WHERE {where}", args).rowcount
            if count:
                self._journal(zone, None, None, "reload", now)
                self._bump(zone, now)
        return int(count)

    def expire(self, zones: Sequence[str], now: float, *, journal_days: float = 30) -> dict[str, int]:
        """Purge expired entries (they stopped answering already) and journal rows older than
        `journal_days`; return the count purged per zone."""
        purged: dict[str, int] = {}
        with self.transaction():
            for zone in zones:
                rows = self.conn.execute(
                    "SELECT target, source FROM entries WHERE zone = ? AND expires IS NOT NULL "
                    "AND expires <= ?",
                    (zone, now),
                ).fetchall()
                for target, source in rows:
                    self.conn.execute(
                        "DELETE FROM entries WHERE zone = ? AND target = ? AND source = ?",
                        (zone, target, source),
                    )
                    self._journal(zone, target, source, "del", now)
                if rows:
                    self._bump(zone, now)
                purged[zone] = len(rows)
            self.conn.execute(
                "DELETE FROM changes WHERE at < ? AND seq < (SELECT max(seq) FROM changes)",
                (now - journal_days * 86400,),
            )
        return purged

    def stats(self, zone: str, now: float) -> dict[str, object]:
        row = self._zone(zone)
        assert row is not None
        by_source = self.db.query(
            "SELECT source, sum(excluded = 0) AS listings, sum(excluded) AS exclusions, "
            "sum(expires IS NOT NULL AND expires <= ?) AS expired, max(updated) AS last_change "
            "FROM entries WHERE zone = ? GROUP BY source ORDER BY source",
            [now, zone],
        )
        sources = list(by_source)
        return {
            "zone": zone,
            "serial": self.serial(zone, now),
            "last_change": row.changed_at,
            "entries": sum(int(s["listings"]) + int(s["exclusions"]) for s in sources),  # type: ignore[call-overload]
            "sources": sources,
        }

    def entry_counts(self, now: float) -> list[tuple[str, str, int, int]]:
        """(zone, source, live listings, live exclusions) for every zone: the metrics' figures."""
        rows = self.conn.execute(
            "SELECT zone, source, sum(excluded = 0), sum(excluded) FROM entries "
            "WHERE expires IS NULL OR expires > ? GROUP BY zone, source",
            (now,),
        )
        return [(zone, source, int(listed), int(excluded)) for zone, source, listed, excluded in rows]

    def hit_counts(self) -> list[tuple[str, str, int]]:
        """(zone, kind, hits held): trap evidence not yet pruned, for the metrics."""
        rows = self.conn.execute("SELECT zone, kind, count(*) FROM hits GROUP BY zone, kind")
        return [(zone, kind, int(n)) for zone, kind, n in rows]

    # --- trap hits ---------------------------------------------------------------------------

    def record_hits(
        self,
        zone: str,
        hits: Iterable[Hit],
        policy: Policy,
        allowlist: Allowlist,
        now: float,
        position: tuple[str, int, int] | None = None,
    ) -> Counter[str]:
        """Evidence and listings for trap hits, in one transaction, with one serial change for the whole
        batch (churn must not storm secondaries). A hit seen before (same zone, message, relay, kind)
        counts once; allowlisted relays are never listed; entries of other sources are never touched."""
        counts: Counter[str] = Counter()
        with self.transaction():
            self._create_zone(zone, now)
            for hit in hits:
                counts[self._record_hit(zone, hit, policy, allowlist, now)] += 1
            if position is not None:  # how far a source was read moves with what was read from it
                self.conn.execute(
                    "INSERT OR REPLACE INTO ingest_state (source, inode, offset) VALUES (?,?,?)", position
                )
            if counts["listed"] or counts["extended"]:
                self._bump_coalesced(zone, now)
        return counts

    def prune_hits(self, before: float, zones: Sequence[str] | None = None) -> int:
        """Forget trap evidence older than `before` (the retention period), in `zones` or all; return
        how many hits."""
        with self.transaction():
            if zones is None:
                return int(self.conn.execute("DELETE FROM hits WHERE at < ?", (before,)).rowcount)
            return sum(
                int(self.conn.execute("DELETE FROM hits WHERE zone = ? AND at < ?", (z, before)).rowcount)
                for z in zones
            )

    def _record_hit(self, zone: str, hit: Hit, policy: Policy, allowlist: Allowlist, now: float) -> str:
        if allowlist.match(hit.family, hit.ip, zone) is not None:
            return "allowlisted"
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO hits (zone, at, ip, kind, trap, message_id, source) "
            "VALUES (?,?,?,?,?,?,?)",
            (
                zone,
                hit.at,
                format_address(hit.family, hit.ip),
                hit.kind,
                hit.trap,
                hit.message_id,
                hit.source,
            ),
        )
        if not cur.rowcount:
            return "duplicate"
        target, source = policy.target(hit), policy.source(hit.kind)
        old = self.entry(zone, format_target(target), source)
        if old is not None and old.expires is not None and old.expires >= policy.expires(hit):
            return (
                "extended"  # an older hit arriving late: evidence kept, the listing already reaches further
            )
        listing = Listing(target, policy.code(hit.kind), policy.reason(hit), policy.expires(hit))
        self._upsert(zone, listing, source, now)
        return "listed" if old is None else "extended"

    def read_position(self, source: str) -> tuple[int, int] | None:
        row = self.conn.execute(
            "SELECT inode, offset FROM ingest_state WHERE source = ?", (source,)
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else None

    def hits(self, zone: str, ip: str, limit: int = 20) -> list[dict[str, object]]:
        """The latest trap evidence for one relay (the trap address left out)."""
        rows = self.conn.execute(
            "SELECT at, kind, message_id, source FROM hits WHERE zone = ? AND ip = ? "
            "ORDER BY at DESC LIMIT ?",
            (zone, ip, limit),
        )
        return [dict(zip(("at", "kind", "message_id", "source"), row, strict=True)) for row in rows]

    # --- the allowlist ----------------------------------------------------------------------

    def allow(self, zone: str, targets: Iterable[Target], reason: str, now: float) -> None:
        with self.transaction():
            for t in targets:
                width = _width(t.family)
                self.conn.execute(
                    "INSERT INTO allowlist (zone, target, family, lo, hi, reason, created) VALUES "
                    "(?,?,?,?,?,?,?) ON CONFLICT (zone, target) DO UPDATE SET reason = excluded.reason",
                    (
                        zone,
                        format_target(t),
                        t.family,
                        t.lo.to_bytes(width, "big"),
                        t.hi.to_bytes(width, "big"),
                        reason,
                        now,
                    ),
                )

    def disallow(self, zone: str, targets: Iterable[Target]) -> list[str]:
        removed = []
        with self.transaction():
            for t in targets:
                text = format_target(t)
                if self.conn.execute(
                    "DELETE FROM allowlist WHERE zone = ? AND target = ?", (zone, text)
                ).rowcount:
                    removed.append(text)
        return removed

    def allowlist(self, zone: str | None) -> list[Allowed]:
        """The admin's ranges: with `zone`, the global ones and that zone's; else all."""
        sql = "SELECT zone, target, family, lo, hi, reason FROM allowlist"
        rows = (
            self.conn.execute(sql + " WHERE zone IN ('', ?) ORDER BY zone, family, lo", (zone,))
            if zone is not None
            else self.conn.execute(sql + " ORDER BY zone, family, lo")
        )
        return [
            Allowed(Target(f, int.from_bytes(lo, "big"), int.from_bytes(hi, "big")), z, r)
            for z, _t, f, lo, hi, r in rows
        ]

    # --- the journal ------------------------------------------------------------------------

    def last_seq(self) -> int:
        row = self.conn.execute("SELECT max(seq) FROM changes").fetchone()
        return int(row[0] or 0)

    def changes_since(self, seq: int, limit: int) -> list[Change]:
        rows = self.conn.execute(
            "SELECT seq, zone, target, source, op FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [Change(*row) for row in rows]

    def data_version(self) -> int:
        """Changes when another connection commits (cheap to poll)."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])


# Per-row columns only: the zone and the times are the same for every row, bound once in the merge.
STAGED = "target, source, family, lo, hi, excluded, code, reason, expires, plen, net"
UPDATE_ON_CONFLICT = (
    "ON CONFLICT (zone, target, source) DO UPDATE SET code = excluded.code, "
    "reason = excluded.reason, updated = excluded.updated, expires = excluded.expires"
)
# `WHERE true` tells SQLite's parser the ON CONFLICT belongs to the INSERT, not to a join.
MERGE_STAGED = (
    f"INSERT INTO entries (zone, created, updated, {STAGED}) SELECT ?, ?, ?, {STAGED} FROM temp.staging "
    f"WHERE true ORDER BY target, source {UPDATE_ON_CONFLICT}"
)
# An import this small is journalled row by row ("set", as `add`); loader.BATCH (20,000) rows read at
# once would count as a bulk change anyway.
SMALL_IMPORT = 10_000
JOURNAL_STAGED = (
    "INSERT INTO changes (zone, target, source, op, at) SELECT ?, target, source, 'set', ? FROM temp.staging"
)
UPSERT = (
    f"INSERT INTO entries (zone, created, updated, {STAGED}) "
    f"VALUES (?,?,?,{','.join('?' * (STAGED.count(',') + 1))}) {UPDATE_ON_CONFLICT}"
)


def _upsert_params(
    zone: str, t: Target, source: str, code: int, reason: str, expires: float | None, now: float
) -> tuple[object, ...]:
    """(zone, created, updated, *STAGED), as UPSERT takes them."""
    return (zone, now, now, *_columns(t, source, code, reason, expires))


def _columns(t: Target, source: str, code: int, reason: str, expires: float | None) -> tuple[object, ...]:
    """An entry as the STAGED columns; an exclusion has no code, whoever wrote it."""
    width = _width(t.family)
    lo, hi = t.lo.to_bytes(width, "big"), t.hi.to_bytes(width, "big")
    plen, net = enclosing(t.family, t.lo, t.hi)
    code = 0 if t.excluded else code
    return (format_target(t), source, t.family, lo, hi, int(t.excluded), code, reason, expires, plen, net)


def staged_chunks(rows: Iterable[Row]) -> Iterator[list[tuple[object, ...]]]:
    """Rows as chunks of STAGED tuples (plain values: cheap to send between processes)."""
    for chunk in _chunks(rows, 20000):
        for row in chunk:
            check_test_points(row.target)
        yield [_columns(r.target, r.source, r.code, r.reason, r.expires) for r in chunk]


def _chunks(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
