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
@click.option("--mbox", "mboxes", multiple=True, metavar="FILE", help="mbox the trap MX appends to.")
@click.option("--jsonl", "feeds", multiple=True, metavar="PATH", help="JSON-lines hit feed (file or folder).")
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
    mboxes: Sequence[str],
    feeds: Sequence[str],
    trap_mx: Sequence[str],
    trusted: Sequence[str],
    lookup_url: str,
) -> None:
    """Read trap mail and list the servers that sent backscatter."""
    from .ingest import ingest_jsonl, ingest_maildir, ingest_mbox
    from .policy import Policy

    if not once:
        raise DnsblError("only `dnsbl ingest --once` exists so far (the schedule comes with the ingester)")
    if not (maildirs or mboxes or feeds):
        raise DnsblError("give a trap source: --maildir DIR, --mbox FILE or --jsonl PATH")
    networks = [_network(t) for t in trusted]
    check_source("trap")
    now = time.time()
    store = open_store(db)
    name = pick_zone(store, zone, now, create=True)
    policy = Policy(lookup_url=lookup_url)
    runs = [
        (
            d,
            lambda d=d: ingest_maildir(
                store, name, Path(d), policy, trusted=networks, trap_mx=trap_mx, now=now
            ),
        )
        for d in maildirs
    ]
    runs += [
        (m, lambda m=m: ingest_mbox(store, name, Path(m), policy, trusted=networks, trap_mx=trap_mx, now=now))
        for m in mboxes
    ]
    runs += [(f, lambda f=f: ingest_jsonl(store, name, Path(f), policy, now=now)) for f in feeds]
    for where, run in runs:
        try:
            summary = run()
        except OSError as error:
            raise DnsblError(f"{where}: cannot read: {error.strerror}") from None
        click.echo(f"{where}: {summary.line()}")
        for reason, count in summary.skipped.most_common():
            click.echo(f"  skipped {count}: {reason}")


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise DnsblError(f"invalid --trusted {text!r}: expected a CIDR") from None
