"""`dnsbl trap-smtpd`: the SMTP trap listener alone (README, "Trap ingester"). Thin: smtptrap.py does the
work; this parses arguments, runs until SIGTERM or SIGINT, and prints the summary."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .cli import db_option, guarded, main, open_store, pick_zone
from .config import parse_listen
from .errors import ConfigError

if TYPE_CHECKING:  # kept out of start-up: every `dnsbl` command imports this module
    from .policy import Policy
    from .smtptrap import Network, SmtpdSettings, Summary

DEFAULT_LISTEN = "127.0.0.1:2525"  # loopback and unprivileged: port 25 is for a deliberate --listen


@main.command("trap-smtpd")
@db_option
@click.option("--zone", metavar="NAME", help="Zone to list in (created if missing). Default: the only zone.")
@click.option(
    "--listen",
    multiple=True,
    default=(DEFAULT_LISTEN,),
    show_default=True,
    metavar="HOST:PORT",
    help="Address to accept SMTP on (repeatable; [::]:25 for IPv6).",
)
@click.option(
    "--trap-domain",
    "trap_domains",
    multiple=True,
    metavar="DOMAIN",
    help="Trap domain (repeatable; required).",
)
@click.option(
    "--proxy-from", multiple=True, metavar="CIDR", help="Proxy whose PROXY header (v1/v2) names the client."
)
@click.option(
    "--hostname", default="", metavar="NAME", help="Name in the greeting. Default: this host's FQDN."
)
@click.option(
    "--lookup-url",
    default="https://bl.example.org/lookup?ip=$",
    show_default=True,
    help="URL in the TXT; $ is the listed address.",
)
@click.option("-v", "--verbose", count=True, help="Debug logging.")
@guarded
def trap_smtpd(
    db: str | None,
    zone: str | None,
    listen: Sequence[str],
    trap_domains: Sequence[str],
    proxy_from: Sequence[str],
    hostname: str,
    lookup_url: str,
    verbose: int,
) -> None:
    """Be the MX of the trap domains: list the servers that send them backscatter or callouts. Runs until
    SIGTERM or SIGINT, then prints a summary."""
    from .policy import Policy
    from .smtptrap import SmtpdSettings

    settings = SmtpdSettings(
        listen=tuple(_listen(spec) for spec in listen),
        trap_domains=tuple(_domain(d) for d in trap_domains),
        proxy_from=tuple(_network(c) for c in proxy_from),
        hostname=hostname,
    )
    if not settings.trap_domains:
        raise ConfigError("give at least one --trap-domain DOMAIN")
    store = open_store(db)
    try:
        name = pick_zone(store, zone, time.time(), create=True)
    finally:
        store.close()
    _log(verbose)
    import asyncio

    summary = asyncio.run(_run(settings, Path(store.path), name, Policy(lookup_url=lookup_url)))
    click.echo(summary.line())


async def _run(settings: SmtpdSettings, db: Path, zone: str, policy: Policy) -> Summary:
    import asyncio
    import signal

    from .smtptrap import start_listener

    listener = await start_listener(settings, db, zone, policy)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await listener.close()
    return listener.summary


def _log(verbose: int) -> None:
    import logging  # here, not at the top: `dnsbl check` and friends must start fast

    level = logging.DEBUG if verbose else logging.INFO
    if verbose:  # aiosmtpd's own command log too (left at WARNING otherwise)
        logging.getLogger("mail.log").setLevel(logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _listen(spec: str) -> str:
    try:
        parse_listen(spec)
    except ConfigError as error:
        raise ConfigError(f"--listen: {error}") from None
    return spec


def _domain(text: str) -> str:
    name = text.strip().lower().rstrip(".")
    labels = name.split(".")
    if not name or "@" in name or any(not label or any(c.isspace() for c in label) for label in labels):
        raise ConfigError(f"invalid --trap-domain {text!r}: expected a domain name like trap.example.org")
    return name


def _network(text: str) -> Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ConfigError(f"invalid --proxy-from {text!r}: expected an address or CIDR") from None
