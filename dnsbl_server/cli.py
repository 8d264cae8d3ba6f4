"""The `dnsbl` command: a thin click client of the library.

Exit codes, for every command (README, "Exit codes"): 0 success or a positive answer; 1 a negative
answer (not listed, nothing matched, unhealthy, problems found); 2 an error (bad arguments,
unreadable files, I/O). A DnsblError becomes one line on stderr and exit 2; a traceback is a bug.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import wraps
from typing import Any, NoReturn

import click

from . import __version__
from .addresses import Target, format_target, parse_code, parse_target, parse_when
from .config import Settings, from_file, resolve_db, zone_name
from .errors import DnsblError
from .imports import Batch
from .resolver import TXT_LIMIT
from .store import Listing, Store

EXIT_OK, EXIT_NEGATIVE, EXIT_ERROR = 0, 1, 2


def fail(message: str) -> NoReturn:
    click.echo(f"dnsbl: error: {message}", err=True)
    sys.exit(EXIT_ERROR)


def guarded(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our own errors into one line and exit 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DnsblError as error:
            fail(str(error))

    return wrapper


db_option = click.option(
    "--db",
    "db",
    metavar="PATH",
    envvar="DNSBL_DB",
    show_envvar=True,
    help="SQLite database (default: see README)",
)


@click.group()
@click.version_option(__version__, prog_name="dnsbl-server")
def main() -> None:
    """dnsbl-server: a DNS blocklist server."""


# --- serve ------------------------------------------------------------------------------------


@main.command()
@db_option
@click.option(
    "--zone",
    "zones",
    multiple=True,
    metavar="NAME",
    help="Serve this zone (repeatable; created if missing). Default: every zone in the database.",
)
@click.option(
    "--listen",
    multiple=True,
    metavar="HOST:PORT",
    help="Address to answer on, UDP and TCP (repeatable; [::1]:5300 for IPv6).",
)
@click.option("--config", "config_path", metavar="FILE", help="TOML config file.")
@click.option("--ttl", type=click.IntRange(0, 2**31 - 1), help="Answer TTL in seconds.")
@click.option("--hide-version", is_flag=True, default=None, help="Refuse CHAOS version.bind.")
@click.option("-v", "--verbose", count=True, help="Debug logging.")
@guarded
def serve(
    db: str | None,
    zones: Sequence[str],
    listen: Sequence[str],
    config_path: str | None,
    ttl: int | None,
    hide_version: bool | None,
    verbose: int,
) -> None:
    """Answer DNSBL queries for the zones in the database."""
    from dataclasses import replace

    from .daemon import serve as run

    settings, config_db = from_file(config_path) if config_path else (Settings(), None)
    overrides: dict[str, Any] = {"db": resolve_db(db, config_db)}
    if zones:
        overrides["zones"] = tuple(zone_name(z) for z in zones)
    if listen:
        from .config import parse_listen

        for spec in listen:
            parse_listen(spec)
        overrides["listen"] = tuple(listen)
    if hide_version is not None:
        overrides["hide_version"] = hide_version
    if ttl is not None:
        defaults = replace(settings.zone_defaults, ttl=ttl)
        overrides["zone_defaults"] = defaults
        overrides["zone_settings"] = {n: replace(s, ttl=ttl) for n, s in settings.zone_settings.items()}
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(run(replace(settings, **overrides)))


# --- add / remove -----------------------------------------------------------------------------


def open_store(db: str | None) -> Store:
    return Store.open(resolve_db(db))


def pick_zone(store: Store, zone: str | None, now: float, *, create: bool) -> str:
    """A command that changes one zone: the one named (created if `create`), else the only one."""
    if zone is not None:
        name = zone_name(zone)
        if create:
            store.ensure_zone(name, now)
        elif name not in store.zone_names():
            raise DnsblError(f"no zone {name!r} (zones: {', '.join(store.zone_names()) or 'none'})")
        return name
    names = store.zone_names()
    if len(names) == 1:
        return names[0]
    if not names:
        raise DnsblError("the database has no zone yet: give --zone NAME")
    raise DnsblError(f"several zones, give --zone: {', '.join(names)}")


def parse_targets(texts: Sequence[str], exclude: bool) -> list[Target]:
    targets = [parse_target(t) for t in texts]
    if exclude:
        targets = [Target(t.family, t.lo, t.hi, True) for t in targets]
    return targets


def warn_long_reason(reason: str) -> None:
    longest = reason.replace("$$", "$").replace("$", "x" * 39)  # the longest IPv6 text
    if len(longest.encode()) > TXT_LIMIT:
        click.echo(
            f"dnsbl: warning: the reason can expand to more than {TXT_LIMIT} bytes; "
            "answers cut it there, as rbldnsd does",
            err=True,
        )


@main.command()
@db_option
@click.option("--zone", metavar="NAME", help="Zone to change (created if missing). Default: the only zone.")
@click.option("--code", default="2", show_default=True, metavar="127.0.0.N|N", help="A record value.")
@click.option("--reason", default="", metavar="TEXT", help="TXT template: $ is the queried address.")
@click.option("--expires", metavar="WHEN", help="90s, 2h, 7d, 1w or an ISO 8601 date (UTC).")
@click.option("--source", default="manual", show_default=True, metavar="NAME")
@click.option("--exclude", is_flag=True, help="Add exclusions (never listed), like !TARGET.")
@click.argument("targets", nargs=-1, required=True)
@guarded
def add(
    db: str | None,
    zone: str | None,
    code: str,
    reason: str,
    expires: str | None,
    source: str,
    exclude: bool,
    targets: Sequence[str],
) -> None:
    """Add or update TARGETs: addresses, CIDRs, start-end ranges, or !TARGET exclusions."""
    now = time.time()
    listings = [
        Listing(t, parse_code(code), reason, parse_when(expires, now=now) if expires else None)
        for t in parse_targets(targets, exclude)
    ]
    check_source(source)
    store = open_store(db)
    name = pick_zone(store, zone, now, create=True)
    warn_long_reason(reason)
    count = store.add(name, listings, source=source, now=now)
    click.echo(f"{count} entr{'y' if count == 1 else 'ies'} written to {name}")


def check_source(source: str) -> None:
    if not source or len(source) > 64 or any(c.isspace() for c in source):
        raise DnsblError(f"invalid source {source!r}: a short name without spaces, like trap:bounce")


@main.command()
@db_option
@click.option("--zone", metavar="NAME", help="Zone to change. Default: the only zone.")
@click.option("--source", metavar="NAME", help="Only entries of this source (and its sub-sources).")
@click.option("--exclude", is_flag=True, help="TARGETs are exclusions, like !TARGET.")
@click.argument("targets", nargs=-1, required=True)
@guarded
def remove(
    db: str | None, zone: str | None, source: str | None, exclude: bool, targets: Sequence[str]
) -> None:
    """Remove entries whose target is exactly TARGET (exit 1 if nothing matched)."""
    now = time.time()
    parsed = parse_targets(targets, exclude)
    store = open_store(db)
    name = pick_zone(store, zone, now, create=False)
    removed = store.remove(name, parsed, source=source, now=now)
    for target, src in removed:
        click.echo(f"removed {target} ({src}) from {name}")
    for target in parsed:
        if not any(r[0] == format_target(target) for r in removed):
            explain_not_removed(store, name, target)
    sys.exit(EXIT_OK if removed else EXIT_NEGATIVE)


def explain_not_removed(store: Store, zone: str, target: Target) -> None:
    covering = store.covering(zone, target)
    if covering:
        names = ", ".join(f"{e.key[0]} ({e.key[1]})" for e in covering)
        click.echo(
            f"{format_target(target)}: no such entry; it is covered by {names}. To stop "
            f"listing it, add an exclusion: dnsbl add --zone {zone} --exclude "
            f"{format_target(target)}",
            err=True,
        )
    else:
        click.echo(f"{format_target(target)}: no such entry in {zone}", err=True)


# --- import / export --------------------------------------------------------------------------


def read_input(path: str) -> Iterator[str]:
    """Lines of FILE (gzip or not) or of stdin (`-`), with a progress bar on a terminal."""
    if path == "-":
        yield from click.get_text_stream("stdin")
        return
    from .zonefile import read_lines

    try:
        size = os.path.getsize(path)
        lines = read_lines(path)
        if not sys.stderr.isatty():
            yield from lines
            return
        with click.progressbar(length=size, label=f"reading {path}", file=sys.stderr) as bar:
            for line in lines:
                bar.update(len(line))
                yield line
    except OSError as error:
        raise DnsblError(f"{path}: cannot read: {error.strerror}") from None


def parse_input(
    path: str,
    kind: str,
    source: str,
    code: int,
    reason: str,
    expires: float | None,
    loose: bool,
    csv_source: str | None,
) -> Batch:
    from .imports import csv_rows, plain_rows, rbldnsd_rows

    name = "<stdin>" if path == "-" else path
    lines = read_input(path)
    if kind == "csv":
        return csv_rows(lines, name, csv_source, loose=loose)
    if kind == "plain":
        return plain_rows(lines, name, source, code, reason, expires, loose=loose)
    return rbldnsd_rows(kind, lines, name, source, expires, loose=loose)


def report_problems(problems: list[str], limit: int = 20) -> None:
    for problem in problems[:limit]:
        click.echo(problem, err=True)
    if len(problems) > limit:
        click.echo(f"... and {len(problems) - limit} more", err=True)


@main.command("import")
@db_option
@click.option("--zone", metavar="NAME", help="Zone to fill (created if missing). Default: the only zone.")
@click.option(
    "--type",
    "kind",
    metavar="TYPE",
    help="ip4set, ip4tset, ip4trie, ip6trie, ip6tset, plain or csv. Default: from the extension.",
)
@click.option("--source", metavar="NAME", help="Source of the entries (default: import; wins over CSV's).")
@click.option("--replace", is_flag=True, help="Swap the source's entries for the file's (for feeds).")
@click.option("--skip-bad", is_flag=True, help="Import the good lines, report the bad ones.")
@click.option("--loose", is_flag=True, help="Accept CIDRs with host bits set (rbldnsd -e).")
@click.option("--code", default="2", show_default=True, metavar="127.0.0.N|N", help="A value (plain).")
@click.option("--reason", default="", metavar="TEXT", help="TXT template (plain).")
@click.option("--expires", metavar="WHEN", help="Expiry for every imported entry (not CSV).")
@click.argument("path", metavar="FILE|-")
@guarded
def import_(
    db: str | None,
    zone: str | None,
    kind: str | None,
    source: str | None,
    replace: bool,
    skip_bad: bool,
    loose: bool,
    code: str,
    reason: str,
    expires: str | None,
    path: str,
) -> None:
    """Import entries from an rbldnsd data file, a plain list, or CSV, in one transaction."""
    from .imports import type_for

    now = time.time()
    kind = type_for(path, kind)
    if source is not None:
        check_source(source)
    if replace and kind == "csv" and source is None:
        raise DnsblError("--replace with CSV needs --source: which source's entries to swap")
    when = parse_when(expires, now=now) if expires else None
    batch = parse_input(path, kind, source or "import", parse_code(code), reason, when, loose, source)
    report_problems(batch.problems)
    if batch.problems and not skip_bad:
        raise DnsblError(
            f"{len(batch.problems)} bad line(s) in {path}: nothing imported (--skip-bad imports the rest)"
        )
    store = open_store(db)
    name = pick_zone(store, zone, now, create=True)
    count = store.import_rows(name, batch.rows, replace=(source or "import") if replace else None, now=now)
    skipped = f", {len(batch.problems)} bad line(s) skipped" if batch.problems else ""
    click.echo(f"imported {count} entr{'y' if count == 1 else 'ies'} into {name} from {path}{skipped}")


def atomic_write(path: str | None, lines: Iterable[str]) -> None:
    """Write to a temp file beside `path` and rename it over, so readers never see half a file."""
    if path is None or path == "-":
        out = click.get_text_stream("stdout")
        for line in lines:
            out.write(line + "\n")
        return
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=".dnsbl-export-", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            for line in lines:
                handle.write(line + "\n")
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


@main.command("export")
@db_option
@click.option("--zone", metavar="NAME", help="Zone to export. Default: the only zone.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["combined", "ip4set", "ip6trie", "bind", "csv"]),
    default="combined",
    show_default=True,
)
@click.option("-o", "--output", metavar="FILE", help="Write here (temp file + rename); default stdout.")
@click.option("--config", "config_path", metavar="FILE", help="TOML config (zone SOA, NS, TTL).")
@guarded
def export(db: str | None, zone: str | None, fmt: str, output: str | None, config_path: str | None) -> None:
    """Write a zone as rbldnsd data, a BIND zone file, or CSV."""
    from .export import WRITERS, write_csv
    from .loader import build_zone

    now = time.time()
    settings, _ = from_file(config_path) if config_path else (Settings(), None)
    store = open_store(db)
    name = pick_zone(store, zone, now, create=False)
    if fmt == "csv":
        rows = ((e.key[0], e.key[1], e.code, e.reason, e.expires) for e in store.entries(name))
        atomic_write(output, write_csv(sorted(rows)))
        return
    built = build_zone(store, name, settings.settings_for(name), now)
    atomic_write(output, WRITERS[fmt](built, now))
