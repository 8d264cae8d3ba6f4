"""`dnsbl web` (the lookup and delisting site) and `dnsbl requests list|approve|deny` (README, "Web page").

Thin: the site is web/ (Flask and waitress are imported only when `dnsbl web` runs); a request's rules are
delisting.py's, its rows and what approving does are requests_store.py's.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import click

from .addresses import format_time
from .cli import EXIT_NEGATIVE, EXIT_OK, db_option, guarded, main, open_store
from .config import Settings, from_file
from .errors import DnsblError
from .names import resolve_db

if TYPE_CHECKING:  # imported by the commands themselves: every other `dnsbl` command starts without them
    from .requests_store import Request, Requests


def _requests(db: str | None) -> Requests:
    from .requests_store import Requests

    return Requests(open_store(db, create=False))


@main.command()
@db_option
@click.option(
    "--listen", metavar="HOST:PORT", help="Where to serve HTTP (default: [web] listen, 127.0.0.1:8080)."
)
@click.option("--config", "config_path", metavar="FILE", help="TOML config file: its [web] table and db.")
@guarded
def web(db: str | None, listen: str | None, config_path: str | None) -> None:
    """Serve the lookup, delisting-request and operator web pages (stops on SIGTERM/SIGINT)."""
    settings, config_db = from_file(config_path) if config_path else (Settings(), None)
    path = resolve_db(db, config_db)
    open_store(str(path), create=False).close()  # a typo in --db must not serve an empty list
    try:
        from .web.serve import run
    except ImportError as error:
        raise DnsblError(
            f"dnsbl web needs Flask and waitress ({error}): pip install flask waitress"
        ) from None
    try:
        run(str(path), settings.web, listen or settings.web.listen)
    except OSError as error:
        raise DnsblError(f"cannot listen on {listen or settings.web.listen}: {error.strerror}") from None


@main.group()
def requests() -> None:
    """Delisting requests sent from the web page: list them, approve or deny them."""


def _row(r: Request) -> dict[str, object]:
    return {
        "id": r.id,
        "created": format_time(r.created),
        "address": r.address,
        "client": r.client,
        "email": r.email,
        "reason": r.reason,
        "zones": [z for z in r.zones.split(",") if z],
        "status": r.status,
        "decided": format_time(r.decided) or None,
        "note": r.note,
    }


@requests.command("list")
@db_option
@click.option(
    "--status",
    type=click.Choice(["pending", "approved", "denied", "all"]),
    default="pending",
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True, help="JSON output: a list of request objects.")
@guarded
def requests_list(db: str | None, status: str, as_json: bool) -> None:
    """Requests, newest first. Exit 1 if there are none."""
    from .cli_admin import emit_json

    rows = _requests(db).find(None if status == "all" else status)
    if as_json:
        emit_json([_row(r) for r in rows])
    for r in [] if as_json else rows:
        click.echo(f"#{r.id} {format_time(r.created)} {r.status} {r.address} ({r.zones})")
        click.echo(f"  from {r.client} <{r.email}>")
        for line in r.reason.splitlines():
            click.echo(f"  | {_printable(line)}")
        if r.note:
            click.echo(f"  note: {_printable(r.note)}")
    sys.exit(EXIT_OK if rows else EXIT_NEGATIVE)


def _printable(text: str) -> str:
    """A requester's words reach an admin's terminal: no escape sequences."""
    return "".join(c if c.isprintable() else "\ufffd" for c in text)


@requests.command("approve")
@db_option
@click.option("--allowlist", is_flag=True, help="Also allowlist the address: traps never list it again.")
@click.option("--note", default="", metavar="TEXT", help="Kept with the decision.")
@click.argument("request_id", type=int)
@guarded
def requests_approve(db: str | None, allowlist: bool, note: str, request_id: int) -> None:
    """Delist the request's address (its own and trap entries removed; an exclusion where a larger entry
    still covers it) and mark the request approved."""
    done = _requests(db).approve(request_id, allowlist=allowlist, note=note, now=time.time())
    for zone, action, target in done:
        click.echo(f"{zone}: {action} {target}")
    click.echo(f"request #{request_id} approved" + ("" if done else " (the address was no longer listed)"))


@requests.command("deny")
@db_option
@click.option("--note", default="", metavar="TEXT", help="Kept with the decision (why).")
@click.argument("request_id", type=int)
@guarded
def requests_deny(db: str | None, note: str, request_id: int) -> None:
    """Mark the request denied; the listing stays."""
    _requests(db).decide(request_id, "deny", note, time.time())
    click.echo(f"request #{request_id} denied")
