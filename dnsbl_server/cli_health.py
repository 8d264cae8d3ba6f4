"""`dnsbl health`: ask a running server about every zone and say, one line per zone, whether it answers
as it must (health.py has the probes and their rules).

Which zones: `--zone` (repeatable), else the config's zones and the database's (a zone with a SQLite
list: its test points), and the config's data-file zones (their SOA). Which server: `--server`, else
the config's first `listen`, else the default. Exit 0 every zone healthy, 1 any unhealthy, 2 cannot ask
(bad arguments, no zones, nothing listening).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from .cli import EXIT_ERROR, EXIT_NEGATIVE, EXIT_OK, db_option, guarded, main
from .config import Settings, from_file
from .errors import DnsblError
from .names import resolve_db, zone_name

if TYPE_CHECKING:
    from .health import Result


@main.command()
@click.option("--server", metavar="HOST:PORT", help="The server to ask (default: the config's first listen).")
@click.option("--zone", "zones", multiple=True, metavar="NAME", help="Check this zone only (repeatable).")
@db_option
@click.option("--config", "config_path", metavar="FILE", help="TOML config file.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.05),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for each reply (each probe is tried twice).",
)
@guarded
def health(
    server: str | None,
    zones: Sequence[str],
    db: str | None,
    config_path: str | None,
    timeout: float,
) -> None:
    """Ask the server each zone's RFC 5782 test points (SQLite zones) or SOA (data-file zones)."""
    from .health import CannotAsk, probes, run, server_address

    settings, config_db = from_file(config_path) if config_path else (Settings(), None)
    address = server_address(server or settings.listen[0])
    checked = _zones(settings, config_db, db, [zone_name(z) for z in zones])
    unhealthy = 0
    try:
        for zone, has_list in checked:
            results = [run(address, probe, timeout) for probe in probes(zone, has_list)]
            unhealthy += any(r.problem for r in results)
            click.echo(_line(zone, results))
    except CannotAsk as error:
        click.echo(f"dnsbl: error: {error}", err=True)
        sys.exit(EXIT_ERROR)
    sys.exit(EXIT_NEGATIVE if unhealthy else EXIT_OK)


def _zones(
    settings: Settings, config_db: str | None, db: str | None, asked: list[str]
) -> list[tuple[str, bool]]:
    """(zone, has a SQLite list), in order: the database's zones, then the data-file-only ones."""
    from .datafiles import parse_spec

    listed = _db_zones(resolve_db(db, config_db), bool(db or os.environ.get("DNSBL_DB") or config_db))
    if settings.zones:
        listed = [z for z in listed if z in settings.zones]
    files = [s.zone for s in map(parse_spec, settings.datasets) if s.zone and s.zone not in listed]
    known = [(z, True) for z in listed] + [(z, False) for z in dict.fromkeys(files)]
    if asked:
        has = dict(known)
        known = [(z, has.get(z, False)) for z in asked]  # a zone we know nothing of: its SOA
    if not known:
        raise DnsblError("no zones to check: give --zone, --db or --config")
    return known


def _db_zones(path: os.PathLike[str], named: bool) -> list[str]:
    """The database's zones; none when there is no database file (unless one was named: an error)."""
    from .store import Store

    if not os.path.exists(path):
        if named:
            raise DnsblError(f"{path}: no such database")
        return []
    store = Store.open(path, create=False)
    try:
        return store.zone_names()
    finally:
        store.close()


def _line(zone: str, results: list[Result]) -> str:
    ms = max(r.ms for r in results)
    problems = [r for r in results if r.problem]
    if not problems:
        seen = ", ".join(f"{r.probe.what} {r.seen}" for r in results)
        return f"{zone}: healthy ({seen}; {ms:.0f} ms)"
    said = "; ".join(f"{r.probe.what} {r.problem}" + (f", got {r.seen}" if r.seen else "") for r in problems)
    return f"{zone}: UNHEALTHY: {said}"
