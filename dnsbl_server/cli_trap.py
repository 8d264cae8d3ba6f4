"""`dnsbl ingest`: trap mail into listings (README, "Trap ingester"). Thin: ingest.py reads the sources,
schedule.py runs them on a schedule."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from .cli import check_source, db_option, guarded, main, open_store, pick_zone
from .config import IngestSettings, from_file
from .errors import DnsblError
from .names import resolve_db, zone_name


@main.command()
@db_option
@click.option("--config", "config_path", metavar="FILE", help="TOML config file (its [ingest] table).")
@click.option("--zone", metavar="NAME", help="Zone to list in (created if missing). Default: the only zone.")
@click.option("--once", is_flag=True, help="Read every source once, then exit (for cron).")
@click.option("--maildir", "maildirs", multiple=True, metavar="DIR", help="Maildir the trap MX delivers to.")
@click.option("--mbox", "mboxes", multiple=True, metavar="FILE", help="mbox the trap MX appends to.")
@click.option("--jsonl", "feeds", multiple=True, metavar="PATH", help="JSON-lines hit feed (file or folder).")
@click.option("--trap-mx", multiple=True, metavar="NAME", help="Host whose Received `by` marks the trap MX.")
@click.option("--trusted", multiple=True, metavar="CIDR", help="Own relays and forwarders to step over.")
@click.option("--lookup-url", metavar="URL", help="URL in the TXT; $ is the listed address.")
@click.option("--interval", metavar="TIME", help="Scheduled mode: time between runs (default 5m).")
@click.option("-v", "--verbose", count=True, help="Debug logging (scheduled mode).")
@guarded
def ingest(
    db: str | None,
    config_path: str | None,
    zone: str | None,
    once: bool,
    maildirs: Sequence[str],
    mboxes: Sequence[str],
    feeds: Sequence[str],
    trap_mx: Sequence[str],
    trusted: Sequence[str],
    lookup_url: str | None,
    interval: str | None,
    verbose: int,
) -> None:
    """Read trap mail and list the servers that sent backscatter: once (--once), or on a schedule
    with the config file's SMTP trap listener, until stopped."""
    settings, config_db = from_file(config_path) if config_path else (None, None)
    trap = (settings.ingest if settings else None) or IngestSettings()
    flags: dict[str, Any] = {
        "maildirs": trap.maildirs + tuple(maildirs),
        "mboxes": trap.mboxes + tuple(mboxes),
        "jsonl": trap.jsonl + tuple(feeds),
        "trap_mx": trap.trap_mx + tuple(trap_mx),
        "trusted": trap.trusted + tuple(trusted),
    }
    if zone:
        flags["zone"] = zone_name(zone)
    if lookup_url:
        flags["lookup_url"] = lookup_url
    if interval:
        from .addresses import parse_duration

        flags["interval"] = float(parse_duration(interval))
    trap = replace(trap, **flags)
    if not trap.has_sources:
        raise DnsblError("give a trap source: --maildir DIR, --mbox FILE, --jsonl PATH, or a config [ingest]")
    db_path = resolve_db(db, config_db)
    if once:
        _once(trap, str(db_path))
    else:
        _scheduled(trap, db_path, verbose)


def _once(trap: IngestSettings, db: str) -> None:
    from .ingest import run_sources
    from .schedule import Ingester

    check_source("trap")
    now = time.time()
    store = open_store(db)
    name = pick_zone(store, trap.zone, now, create=True)
    ingester = Ingester(trap, Path(db), name)
    failed = False
    for where, result in run_sources(store, name, ingester.sources, ingester.policy, now=now):
        if isinstance(result, DnsblError):
            click.echo(f"dnsbl: error: {result}", err=True)
            failed = True
            continue
        click.echo(f"{where}: {result.line()}")
        for reason, count in result.skipped.most_common():
            click.echo(f"  skipped {count}: {reason}")
    if failed:
        raise SystemExit(2)


def _scheduled(trap: IngestSettings, db: Path, verbose: int) -> None:
    import asyncio
    import logging

    from .schedule import open_trap

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    asyncio.run(_run_until_stopped(open_trap(trap, db, time.time())))


async def _run_until_stopped(trap: Any) -> None:
    import asyncio
    import logging
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await trap.start()
    logging.getLogger("dnsbl.ingest").info(
        "ingesting into %s every %gs; stop with SIGTERM", trap.ingester.zone, trap.ingester.settings.interval
    )
    await stop.wait()
    await trap.stop()
