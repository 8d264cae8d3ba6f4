"""The web page's SQL: the `delist_requests` table (schema in migrations.py, step 8), and the read-only
reports the operator page and the lookup page draw from the `entries` and `hits` tables.

A small module owning one table, beside store.py (which owns every other table and every write to the
list itself: approving a request goes through `Store.remove`/`Store.add`/`Store.allow`, so the change is
journalled and the serial moves as for any admin write).

Rules:
- a request row is written only after every rule in delisting.py passed: nothing is stored for a refused
  request (malformed, flooding, not listed);
- the trap address of a hit is never returned by anything here: `evidence` leaves the column out, and
  cuts it out of the message id too (an auto-reply may quote it); a hit's source loses its path (the
  trap's mail spool is the operator's business).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, NamedTuple

from .addresses import parse_address, parse_target
from .delisting import PENDING, Draft, Recent, approval_plan, exclusion, next_status
from .errors import StoreError
from .store import Listing, Store

DAY = 86400.0
HOUR = 3600.0
COLUMNS = ("id", "created", "address", "client", "email", "reason", "zones", "status", "decided", "note")


class Request(NamedTuple):
    id: int
    created: float
    address: str
    client: str
    email: str
    reason: str
    zones: str
    status: str
    decided: float | None
    note: str


class Requests:
    """Delisting requests in the list's database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.conn = store.conn

    def recent(self, client: str, address: str, now: float) -> Recent:
        one = self.conn.execute
        since = now - HOUR
        return Recent(
            one(
                "SELECT count(*) FROM delist_requests WHERE client = ? AND created >= ?", (client, since)
            ).fetchone()[0],
            one("SELECT count(*) FROM delist_requests WHERE created >= ?", (since,)).fetchone()[0],
            one(
                "SELECT count(*) FROM delist_requests WHERE address = ? AND status = ?", (address, PENDING)
            ).fetchone()[0],
        )

    def add(self, draft: Draft, client: str, zones: list[str], now: float) -> int:
        with self.store.transaction():
            cur = self.conn.execute(
                "INSERT INTO delist_requests (created, address, client, email, reason, zones) "
                "VALUES (?,?,?,?,?,?)",
                (now, draft.address_text, client, draft.email, draft.reason, ",".join(zones)),
            )
        return int(cur.lastrowid or 0)

    def find(self, status: str | None = None, limit: int = 1000) -> list[Request]:
        where, params = ("WHERE status = ?", [status]) if status else ("", [])
        rows = self.conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM delist_requests {where} ORDER BY id DESC LIMIT ?",
            [*params, limit],
        )
        return [Request(*row) for row in rows]

    def get(self, request_id: int) -> Request:
        row = self.conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM delist_requests WHERE id = ?", (request_id,)
        ).fetchone()
        if row is None:
            raise StoreError(f"no delisting request #{request_id}")
        return Request(*row)

    def decide(self, request_id: int, action: str, note: str, now: float) -> str:
        """Move a request on (delisting.TRANSITIONS); the status it now has."""
        with self.store.transaction():
            current = self.get(request_id)
            status = next_status(current.status, action)
            self.conn.execute(
                "UPDATE delist_requests SET status = ?, decided = ?, note = ? WHERE id = ?",
                (status, now, note, request_id),
            )
        return status

    def approve(
        self, request_id: int, *, allowlist: bool, note: str, now: float
    ) -> list[tuple[str, str, str]]:
        """Delist the request's address in the zones it was listed in (delisting.approval_plan), allowlist
        it if asked, then mark the request approved; what was done as (zone, action, target) rows.
        Each step is one store transaction and idempotent, so a run cut short is simply run again."""
        current = self.get(request_id)
        next_status(current.status, "approve")  # refuse a decided request before touching the list
        family, address = parse_address(current.address)
        done: list[tuple[str, str, str]] = []
        zones = [z for z in current.zones.split(",") if z in self.store.zone_names()]
        for zone in zones:
            done += self._delist(zone, family, address, note, now)
        if allowlist:
            reason = f"delisting request #{request_id}" + (f": {note}" if note else "")
            for zone in zones:
                self.store.allow(zone, [parse_target(current.address)], reason, now)
                done.append((zone, "allowlisted", current.address))
        self.decide(request_id, "approve", note, now)
        return done

    def _delist(
        self, zone: str, family: int, address: int, note: str, now: float
    ) -> list[tuple[str, str, str]]:
        plan = approval_plan(self.store.candidates(zone, family, address), family, address, now)
        done = []
        for target, source in plan.remove:
            self.store.remove(zone, [parse_target(target)], source=source, now=now)
            done.append((zone, f"removed ({source})", target))
        if plan.exclude:
            listing = Listing(exclusion(family, address), 0x7F000002, note, None)
            self.store.add(zone, [listing], source="delisting", now=now)
            done.append((zone, "excluded", str(listing.target)))
        return done


# --- reports: the lookup page's evidence and the operator page's plots ------------------------


def evidence(store: Store, zone: str, ip: str, limit: int = 20) -> list[dict[str, Any]]:
    """The latest trap hits from one relay, newest first, as `dnsbl check --json` lays them out, fit
    to publish: no trap address, not even inside a message id, and no spool paths."""
    rows = store.conn.execute(
        "SELECT at, kind, message_id, source, trap FROM hits WHERE zone = ? AND ip = ? "
        "ORDER BY at DESC LIMIT ?",
        (zone, ip, limit),
    )
    return [
        {"at": at, "kind": kind, "message_id": _redact(mid, trap), "source": source.split(":", 1)[0]}
        for at, kind, mid, source, trap in rows
    ]


def _redact(text: str, trap: str) -> str:
    if not trap:
        return text
    local = trap.split("@", 1)[0]
    for secret in (trap, local if len(local) >= 4 else ""):
        if secret:
            text = re.sub(re.escape(secret), "[trap]", text, flags=re.I)
    return text


class HitSummary(NamedTuple):
    first: float | None
    last: float | None
    by_kind: dict[str, int]


def hit_summary(store: Store, zone: str, ip: str) -> HitSummary:
    """Every hit still held for one relay: first, last, and how many of each kind."""
    rows = store.conn.execute(
        "SELECT kind, count(*), min(at), max(at) FROM hits WHERE zone = ? AND ip = ? GROUP BY kind",
        (zone, ip),
    ).fetchall()
    if not rows:
        return HitSummary(None, None, {})
    return HitSummary(min(r[2] for r in rows), max(r[3] for r in rows), {r[0]: int(r[1]) for r in rows})


def listings_per_day(store: Store, days: int, now: float) -> list[tuple[float, int]]:
    """(day start, listings alive at the end of that day) for the last `days` days, from the entries
    held now: when each was created and when it expires. Entries removed or purged since are not
    counted (the list keeps no history of them), so older days read low."""
    start = (now // DAY - days + 1) * DAY
    q = store.conn.execute
    before = q(
        "SELECT count(*) FROM entries WHERE excluded = 0 AND created < ? "
        "AND (expires IS NULL OR expires >= ?)",
        (start, start),
    ).fetchone()[0]
    born = dict(q(_PER_DAY.format(col="created"), (start,)).fetchall())
    gone = dict(q(_PER_DAY.format(col="expires"), (start,)).fetchall())
    out, alive = [], int(before)
    for i in range(days):
        day = start + i * DAY
        alive += born.get(day, 0) - gone.get(day, 0)
        out.append((day, alive))
    return out


_PER_DAY = (
    "SELECT (CAST({col} / 86400 AS INTEGER)) * 86400.0 AS day, count(*) FROM entries "
    "WHERE excluded = 0 AND {col} >= ? GROUP BY day"
)


def hits_per_day(store: Store, days: int, now: float) -> tuple[list[float], dict[str, list[int]]]:
    """Day starts, and per kind the hits of each day, for the last `days` days."""
    start = (now // DAY - days + 1) * DAY
    rows = store.conn.execute(
        "SELECT (CAST(at / 86400 AS INTEGER)) * 86400.0 AS day, kind, count(*) FROM hits "
        "WHERE at >= ? GROUP BY day, kind",
        (start,),
    ).fetchall()
    starts = [start + i * DAY for i in range(days)]
    counts: dict[str, Counter[float]] = {}
    for day, kind, n in rows:
        counts.setdefault(kind, Counter())[day] = int(n)
    return starts, {kind: [c[d] for d in starts] for kind, c in sorted(counts.items())}


def top_sources(store: Store, days: int, now: float, limit: int = 10) -> list[tuple[str, int]]:
    """The relays with the most trap hits in the last `days` days."""
    rows = store.conn.execute(
        "SELECT ip, count(*) AS n FROM hits WHERE at >= ? GROUP BY ip ORDER BY n DESC, ip LIMIT ?",
        (now - days * DAY, limit),
    )
    return [(str(ip), int(n)) for ip, n in rows]
