"""`dnsbl ingest`: trap mail into listings (README, "Trap ingester"). Thin: ingest.py does the work."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from pathlib import Path

import click

from .cli import check_source, db_option, guarded, main, open_store, pick_zone
from .errors import DnsblError


@main.command()
@db_option
@click.option("--zone", metavar="NAME", help="Zone to list in (created if missing). Default: the only zone.")
@click.option(
    "--once",
    is_flag=True,
    help="One run, then exit (for cron). Required for now: the scheduled "
    "mode arrives with the rest of the ingester.",
)
@click.option("--maildir", "maildirs", multiple=True, metavar="DIR", help="Maildir the trap MX delivers to.")
@click.option("--trap-mx", multiple=True, metavar="NAME", help="Host whose Received `by` marks the trap MX.")
@click.option("--trusted", multiple=True, metavar="CIDR", help="Own relays and forwarders to step over.")
@click.option(
    "--lookup-url",
    default="https://bl.example.org/lookup?ip=$",
    show_default=True,
    help="URL in the TXT; $ is the listed address.",
)
@guarded
def ingest(
    db: str | None,
    zone: str | None,
    once: bool,
    maildirs: Sequence[str],
    trap_mx: Sequence[str],
    trusted: Sequence[str],
    lookup_url: str,
) -> None:
    """Read trap mail and list the servers that sent backscatter."""
    from .ingest import ingest_maildir
    from .policy import Policy

    if not once:
        raise DnsblError("only `dnsbl ingest --once` exists so far (the schedule comes with the ingester)")
    if not maildirs:
        raise DnsblError("give a trap source: --maildir DIR")
    networks = [_network(t) for t in trusted]
    check_source("trap")
    now = time.time()
    store = open_store(db)
    name = pick_zone(store, zone, now, create=True)
    policy = Policy(lookup_url=lookup_url)
    for directory in maildirs:
        summary = ingest_maildir(
            store, name, Path(directory), policy, trusted=networks, trap_mx=trap_mx, now=now
        )
        click.echo(f"{directory}: {summary.line()}")
        for reason, count in summary.skipped.most_common():
            click.echo(f"  skipped {count}: {reason}")


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise DnsblError(f"invalid --trusted {text!r}: expected a CIDR") from None
