"""Commands that read and report: check, list, stats, expire, allowlist (README, "Admin").

Thin: the decisions are the resolver's (`check` asks it exactly as the DNS would) and the store's.
Every command that prints data has `--json`; the layouts are documented in the README and kept stable.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from .addresses import format_address, format_target, format_time, parse_address, parse_target
from .allowlist import builtin
from .checks import check_zone, query_name
from .cli import EXIT_NEGATIVE, EXIT_OK, db_option, guarded, main, open_store, pick_zone
from .errors import DnsblError
from .index import ZoneIndex
from .names import resolve_db, zone_name
from .resolver import TXT, A, Question, resolve
from .store import Store
from .zone import Zone, Zones, ZoneSettings

if TYPE_CHECKING:
    from .datafiles import DataFiles

zones_option = click.option(
    "--zone", "zones", multiple=True, metavar="NAME", help="Only this zone (repeatable)."
)


def emit_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def read_zones(store: Store, zones: Sequence[str]) -> list[str]:
    """Commands that read cover every zone unless --zone names some."""
    have = store.zone_names()
    names = [zone_name(z) for z in zones] or have
    missing = [n for n in names if n not in have]
    if missing:
        raise DnsblError(f"no zone {missing[0]!r} (zones: {', '.join(have) or 'none'})")
    return names


# --- check ------------------------------------------------------------------------------------


def print_check(result: dict[str, Any]) -> None:
    for z in result["zones"]:
        verdict = "LISTED " + " ".join(z["codes"]) if z["listed"] else "not listed"
        click.echo(f"{result['address']} {z['zone']}: {verdict}")
        for text in z["txt"]:
            click.echo(f"  TXT {text!r}")
        for e in z["entries"]:
            role = "answers" if e["answers"] else ("excludes" if e["excluded"] else "covers, less specific")
            expiry = e["expires"] or "never"
            click.echo(f"  {e['target']} ({e['source']}) {role}; created {e['created']}, expires {expiry}")
        for h in z["evidence"]:
            click.echo(f"  trap hit {h['at']}: {h['kind']}, message {h['message_id']}")
        for dataset in z.get("datasets", []):
            click.echo(f"  data file {dataset} answers")


def check_files(
    files: DataFiles, store: Store | None, zone: str, family: int, address: int, now: float
) -> dict[str, Any]:
    """What the DNS answers for one address in a zone that has data files (and maybe a SQLite list
    too), and which datasets answer: built exactly as `dnsbl serve` composes the zone."""
    from .datafiles import compose
    from .zonefile import IP_TYPES

    own = check_zone(store, zone, family, address, now) if store and zone in store.zone_names() else None
    sqlite = None
    if own is not None:
        sqlite = Zones.of([Zone(zone, ZoneIndex.build(store.candidates(zone, family, address)))])  # type: ignore[union-attr]
    view = compose(sqlite, files, lambda _name: ZoneSettings())
    name = query_name(family, address, zone)
    codes = [str(r.data) for r in resolve(Question(name, A), view, now).answer]
    texts = [str(r.data) for r in resolve(Question(name, TXT), view, now).answer]
    datasets = [
        f"{d.kind}:{','.join(d.files)}"
        for d in files.of(zone)
        if d.kind in IP_TYPES and d.index.lookup(family, address, now)
    ]
    result = own or {"zone": zone, "entries": [], "evidence": []}
    return dict(result, listed=bool(codes), codes=codes, txt=texts, datasets=datasets)


def load_files(config_path: str | None, now: float) -> tuple[DataFiles | None, str | None]:
    """The config file's data files, loaded as the server loads them, and the db it names."""
    if not config_path:
        return None, None
    from .config import from_file
    from .datafiles import DataFiles, parse_spec

    settings, config_db = from_file(config_path)
    if not settings.datasets:
        return None, config_db
    files = DataFiles([parse_spec(s) for s in settings.datasets], loose=settings.loose)
    files.load(now)
    return files, config_db


@main.command()
@db_option
@zones_option
@click.option(
    "--config", "config_path", metavar="FILE", help="Also the zones of this config, data files included."
)
@click.option("--json", "as_json", is_flag=True, help="JSON output (layout in the README).")
@click.argument("addresses", nargs=-1, required=True)
@guarded
def check(
    db: str | None, zones: Sequence[str], config_path: str | None, as_json: bool, addresses: Sequence[str]
) -> None:
    """Is ADDRESS listed? What the DNS answers, per zone, and why. Exit 0 if any is listed, 1 if none."""
    now = time.time()
    parsed = [(text, *parse_address(text)) for text in addresses]
    files, config_db = load_files(config_path, now)
    store = _check_store(db, config_db, files)
    file_zones = files.zones() if files else []
    have = list(dict.fromkeys([*(store.zone_names() if store else []), *file_zones]))
    names = [zone_name(z) for z in zones] or have
    missing = [n for n in names if n not in have]
    if missing:
        raise DnsblError(f"no zone {missing[0]!r} (zones: {', '.join(have) or 'none'})")
    results = []
    for text, family, address in parsed:
        per_zone = [
            check_files(files, store, z, family, address, now)
            if files and z in file_zones
            else check_zone(store, z, family, address, now)  # type: ignore[arg-type]
            for z in names
        ]
        results.append(
            {
                "address": format_address(family, address),
                "query": text,
                "listed": any(z["listed"] for z in per_zone),
                "zones": per_zone,
            }
        )
    if as_json:
        emit_json(results)
    else:
        for result in results:
            print_check(result)
    sys.exit(EXIT_OK if any(r["listed"] for r in results) else EXIT_NEGATIVE)


def _check_store(db: str | None, config_db: str | None, files: DataFiles | None) -> Store | None:
    """The database to check; a config of data files only needs none (as `dnsbl serve` needs none)."""
    path = resolve_db(db, config_db)
    if files is not None and not (db or config_db) and not path.exists():
        return None
    return open_store(str(path), create=False)


# --- list -------------------------------------------------------------------------------------


def entry_row(row: dict[str, Any], now: float) -> dict[str, Any]:
    excluded = str(row["target"]).startswith("!")
    return {
        "zone": row["zone"],
        "target": row["target"],
        "code": None if excluded else format_address(4, row["code"]),
        "reason": row["reason"],
        "source": row["source"],
        "created": format_time(row["created"]),
        "updated": format_time(row["updated"]),
        "expires": format_time(row["expires"]) or None,
        "expired": row["expires"] is not None and row["expires"] <= now,
    }


@main.command("list")
@db_option
@zones_option
@click.option("--source", metavar="NAME", help="Only this source (and its sub-sources).")
@click.option("--expired", is_flag=True, help="Only expired entries not purged yet.")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True
)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@guarded
def list_(
    db: str | None, zones: Sequence[str], source: str | None, expired: bool, fmt: str, as_json: bool
) -> None:
    """List entries (live ones; --expired for those past their expiry). Exit 1 if none."""
    now = time.time()
    store = open_store(db, create=False)
    names = read_zones(store, zones)
    fmt = "json" if as_json else fmt
    if fmt == "csv" and len(names) > 1:
        raise DnsblError(f"CSV has no zone column: give --zone (zones: {', '.join(names)})")
    raw = list(store.list_entries(names, source=source, expired=expired or False, now=now))
    rows = [entry_row(r, now) for r in raw]
    if fmt == "json":
        emit_json(rows)
    elif fmt == "csv":
        from .export import write_csv

        for line in write_csv((r["target"], r["source"], r["code"], r["reason"], r["expires"]) for r in raw):
            click.echo(line)
    else:
        print_table(rows)
    sys.exit(EXIT_OK if rows else EXIT_NEGATIVE)


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = ("zone", "target", "code", "source", "expires", "reason")
    cells = [[str(r[c] if r[c] is not None else "-") for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    for row in [list(columns), *cells]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


# --- stats, expire ----------------------------------------------------------------------------


@main.command()
@db_option
@zones_option
@click.option("--json", "as_json", is_flag=True, help="JSON output (layout in the README).")
@guarded
def stats(db: str | None, zones: Sequence[str], as_json: bool) -> None:
    """Entries per zone and source, last change, serial."""
    now = time.time()
    store = open_store(db, create=False)
    data = [store.stats(name, now) for name in read_zones(store, zones)]
    for zone in data:
        zone["last_change"] = format_time(zone["last_change"])  # type: ignore[arg-type]
        for source in zone["sources"]:  # type: ignore[attr-defined]
            source["last_change"] = format_time(source["last_change"])
    if as_json:
        emit_json(data)
        return
    for zone in data:
        click.echo(
            f"{zone['zone']}: {zone['entries']} entries, serial {zone['serial']}, "
            f"last change {zone['last_change']}"
        )
        for s in zone["sources"]:  # type: ignore[attr-defined]
            click.echo(
                f"  {s['source']}: {s['listings']} listed, {s['exclusions']} excluded, "
                f"{s['expired']} expired, last change {s['last_change']}"
            )


@main.command()
@db_option
@zones_option
@click.option(
    "--evidence-days",
    type=click.FloatRange(min=0),
    default=90,
    show_default=True,
    help="Also forget trap hits (evidence) older than this many days.",
)
@click.option("--json", "as_json", is_flag=True, help="JSON output: {zone: count} of entries purged.")
@guarded
def expire(db: str | None, zones: Sequence[str], evidence_days: float, as_json: bool) -> None:
    """Purge expired entries (the server already ignores them), old journal rows and old trap evidence."""
    now = time.time()
    store = open_store(db, create=False)
    names = read_zones(store, zones)
    purged = store.expire(names, now)
    forgotten = store.prune_hits(now - evidence_days * 86400, names)
    if as_json:
        emit_json(purged)
        return
    for zone, count in purged.items():
        click.echo(f"{zone}: {count} expired entr{'y' if count == 1 else 'ies'} purged")
    click.echo(f"{forgotten} trap hit(s) older than {evidence_days:g} days forgotten")


# --- allowlist --------------------------------------------------------------------------------


@main.group()
def allowlist() -> None:
    """Ranges that automatic sources (the trap) never list."""


@allowlist.command("add")
@db_option
@click.option("--zone", metavar="NAME", help="Only for this zone (default: every zone).")
@click.option("--reason", default="", metavar="TEXT")
@click.argument("targets", nargs=-1, required=True)
@guarded
def allowlist_add(db: str | None, zone: str | None, reason: str, targets: Sequence[str]) -> None:
    parsed = [parse_target(t) for t in targets]
    if any(t.excluded for t in parsed):
        raise DnsblError("an allowlist range cannot be an exclusion (drop the !)")
    store = open_store(db)
    name = pick_zone(store, zone, time.time(), create=False) if zone else ""
    store.allow(name, parsed, reason, time.time())
    click.echo(f"{len(parsed)} range(s) allowlisted for {name or 'every zone'}")


@allowlist.command("remove")
@db_option
@click.option("--zone", metavar="NAME", help="The zone the range was added for (default: every zone).")
@click.argument("targets", nargs=-1, required=True)
@guarded
def allowlist_remove(db: str | None, zone: str | None, targets: Sequence[str]) -> None:
    parsed = [parse_target(t) for t in targets]
    removed = open_store(db, create=False).disallow(zone_name(zone) if zone else "", parsed)
    for text in removed:
        click.echo(f"removed {text} from the allowlist")
    builtin_texts = {a.text for a in builtin()}
    for t in parsed:
        if format_target(t) in builtin_texts:
            click.echo(f"{format_target(t)} is built in and cannot be removed", err=True)
    sys.exit(EXIT_OK if removed else EXIT_NEGATIVE)


@allowlist.command("list")
@db_option
@click.option("--zone", metavar="NAME", help="Ranges that apply to this zone.")
@click.option("--json", "as_json", is_flag=True)
@guarded
def allowlist_list(db: str | None, zone: str | None, as_json: bool) -> None:
    stored = open_store(db, create=False).allowlist(zone_name(zone) if zone else None)
    rows = [
        {"target": a.text, "zone": a.zone or None, "reason": a.reason, "builtin": built}
        for built, group in ((True, builtin()), (False, stored))
        for a in group
    ]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        where = r["zone"] or "every zone"
        click.echo(f"{r['target']:<20} {where:<24} {'built in' if r['builtin'] else r['reason']}")
