"""The `dnsbl` command: a thin click client of the library.

Exit codes, for every command (README, "Exit codes"): 0 success or a positive answer; 1 a negative
answer (not listed, nothing matched, unhealthy, problems found); 2 an error (bad arguments,
unreadable files, I/O). A DnsblError becomes one line on stderr and exit 2; a traceback is a bug.
"""

from __future__ import annotations

import importlib
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from functools import wraps
from typing import TYPE_CHECKING, Any, NoReturn

import click

from . import __version__
from .addresses import TXT_LIMIT, Target, format_target, parse_code, parse_duration, parse_target, parse_when
from .errors import DnsblError
from .names import resolve_db, zone_name
from .store import Listing, Store

if TYPE_CHECKING:  # `serve`'s alone, imported there: `dnsbl add` does not wait for the server's modules
    from .config import Settings

EXIT_OK, EXIT_NEGATIVE, EXIT_ERROR = 0, 1, 2


def fail(message: str) -> NoReturn:
    click.echo(f"dnsbl: error: {message}", err=True)
    sys.exit(EXIT_ERROR)


def guarded(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our own errors, and SQLite's reports of a failing disk or file, into one line and exit 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DnsblError as error:
            fail(str(error))
        except sqlite3.Error as error:  # a read outside the store's transactions met a damaged page
            from .dbfile import describe, is_disk_error

            if not is_disk_error(error):
                raise
            where = kwargs.get("db") or os.environ.get("DNSBL_DB")  # the file, when we know it
            fail(f"{where}: {describe(error)}" if where else describe(error))

    return wrapper


db_option = click.option(
    "--db",
    "db",
    metavar="PATH",
    envvar="DNSBL_DB",
    show_envvar=True,
    help="SQLite database (default: see README)",
)


class Commands(click.Group):
    """The commands of other modules are imported when asked for (they register themselves on `main`):
    `dnsbl add` in a script's loop does not wait for the imports of the web site, the trap or the data
    files. `--help` imports them all."""

    MODULES = {  # command -> the module that defines it (tests/test_cli.py checks this table)
        "check": "cli_admin",
        "list": "cli_admin",
        "stats": "cli_admin",
        "expire": "cli_admin",
        "allowlist": "cli_admin",
        "import": "cli_files",
        "export": "cli_files",
        "zone-check": "cli_files",
        "backup": "cli_backup",
        "health": "cli_health",
        "ingest": "cli_trap",
        "trap-smtpd": "cli_smtpd",
        "web": "cli_web",
        "requests": "cli_web",
    }

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = self.MODULES.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            importlib.import_module(f".{module}", __package__)
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        for module in sorted(set(self.MODULES.values())):
            importlib.import_module(f".{module}", __package__)
        return super().list_commands(ctx)


@click.group(cls=Commands)
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
@click.option(
    "--ttl",
    metavar="DEF[:MIN[:MAX]]",
    help="Answer TTL, and bounds on the TTLs data files give (rbldnsd -t; default 35m, no bounds).",
)
@click.option("--hide-version", is_flag=True, default=None, help="Refuse CHAOS version.bind.")
@click.option(
    "--check-interval",
    metavar="TIME",
    help="How often data files are checked for changes (rbldnsd -c; default 1m; 0: only on SIGHUP).",
)
@click.option("--loose", is_flag=True, default=None, help="Accept CIDRs with host bits set (rbldnsd -e).")
@click.option(
    "--stats-file",
    metavar="[+]FILE",
    help="Append per-zone query counters every check interval and at exit (rbldnsd -s; +FILE: deltas).",
)
@click.option(
    "--query-log",
    metavar="[+]FILE|-",
    help="Log one line per query (rbldnsd -l; +FILE unbuffered, - standard output); reopened on SIGHUP.",
)
@click.option(
    "--auth-ns/--no-auth-ns",
    default=None,
    help="NS records in the authority section of positive answers (rbldnsd -A / -a). Default: no.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    metavar="N",
    help="Processes answering on the same sockets (default: one per usable CPU, at most 4; 1: no fork).",
)
@click.option(
    "--allow-transfer",
    multiple=True,
    metavar="CIDR",
    help="Clients that may AXFR/IXFR every zone (repeatable; default: nobody). Needs a database.",
)
@click.option(
    "--notify",
    multiple=True,
    metavar="HOST:PORT",
    help="Secondary to send NOTIFY to when a zone's serial moves (repeatable).",
)
@click.option(
    "--tsig-key",
    metavar="NAME:ALGORITHM:BASE64",
    help="Transfers must be signed with this TSIG key (RFC 8945); answers are signed with it.",
)
@click.option(
    "--user",
    metavar="NAME[:GROUP]",
    help="Run as this user once the sockets are bound (rbldnsd -u; needs root). Default: stay as started.",
)
@click.option("--metrics", metavar="HOST:PORT", help="Serve Prometheus metrics on http://HOST:PORT/metrics.")
@click.option(
    "--server-id",
    metavar="TEXT",
    help="Answer CHAOS hostname.bind/id.server and EDNS NSID with TEXT (default: REFUSED, no NSID).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="json: one JSON object per line (default: text).",
)
@click.option(
    "--tcp-max-connections",
    type=click.IntRange(min=1),
    metavar="N",
    help="TCP connections per worker; beyond it the oldest idle one is closed (default 256).",
)
@click.option(
    "--tcp-max-per-client",
    type=click.IntRange(min=1),
    metavar="N",
    help="TCP connections per client address (IPv6: /64) per worker; more are closed at once (default 16).",
)
@click.option(
    "--tcp-idle-timeout", metavar="TIME", help="Close a TCP connection silent this long (default 30s)."
)
@click.option(
    "--tcp-read-timeout",
    metavar="TIME",
    help="Close a TCP connection whose message is not whole within TIME (default 10s).",
)
@click.option(
    "--rrl-responses-per-second",
    type=click.IntRange(min=1),
    metavar="N",
    help="UDP: the same answer to one client /24 (IPv6 /56) per second, per worker (default 20).",
)
@click.option(
    "--rrl-nxdomains-per-second",
    type=click.IntRange(min=1),
    metavar="N",
    help="UDP: NXDOMAIN answers of one zone to one client network per second, per worker (default 1000).",
)
@click.option(
    "--rrl-all-per-second",
    type=click.IntRange(min=1),
    metavar="N",
    help="UDP: all answers to one client network per second, per worker (default 1000).",
)
@click.option(
    "--rrl-slip",
    type=click.IntRange(min=0),
    metavar="N",
    help="Every Nth rate-limited answer goes out truncated, to be asked over TCP; 0: none (default 2).",
)
@click.option(
    "--rrl-exempt",
    multiple=True,
    metavar="CIDR",
    help="Clients never rate limited (repeatable; replaces the default, loopback).",
)
@click.option("--no-rrl", is_flag=True, default=False, help="No response rate limiting.")
@click.option("-v", "--verbose", count=True, help="Debug logging.")
@click.argument("specs", nargs=-1, metavar="[ZONE:TYPE:FILE[,FILE...]]...")
@guarded
def serve(
    db: str | None,
    zones: Sequence[str],
    listen: Sequence[str],
    config_path: str | None,
    ttl: str | None,
    hide_version: bool | None,
    check_interval: str | None,
    loose: bool | None,
    stats_file: str | None,
    query_log: str | None,
    auth_ns: bool | None,
    workers: int | None,
    allow_transfer: Sequence[str],
    notify: Sequence[str],
    tsig_key: str | None,
    user: str | None,
    metrics: str | None,
    server_id: str | None,
    log_format: str | None,
    tcp_max_connections: int | None,
    tcp_max_per_client: int | None,
    tcp_idle_timeout: str | None,
    tcp_read_timeout: str | None,
    rrl_responses_per_second: int | None,
    rrl_nxdomains_per_second: int | None,
    rrl_all_per_second: int | None,
    rrl_slip: int | None,
    rrl_exempt: Sequence[str],
    no_rrl: bool,
    verbose: int,
    specs: Sequence[str],
) -> None:
    """Answer DNSBL queries for the zones in the database and in rbldnsd data files (SPECS)."""
    from dataclasses import replace

    from .config import Settings, from_file
    from .daemon import serve_forever
    from .datafiles import parse_spec

    settings, config_db = from_file(config_path) if config_path else (Settings(), None)
    datasets = (*settings.datasets, *specs)
    for spec in datasets:
        parse_spec(spec)
    # Only specs, and nothing that names a database: serve just the files, as rbldnsd would.
    names_db = bool(db or os.environ.get("DNSBL_DB") or zones or config_db or settings.zones)
    overrides: dict[str, Any] = {
        "db": resolve_db(db, config_db),
        "datasets": datasets,
        "use_db": names_db or not datasets,
    }
    if check_interval is not None:
        overrides["check_interval"] = float(parse_duration(check_interval))
    if loose is not None:
        overrides["loose"] = loose
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
        overrides.update(ttl_overrides(settings, ttl))
    for key, value in (
        ("stats_file", stats_file),
        ("query_log", query_log),
        ("auth_ns", auth_ns),
        ("workers", workers),
        ("metrics", metrics),
        ("server_id", server_id),
        ("log_format", log_format),
    ):
        if value is not None:
            overrides[key] = value
    if allow_transfer:
        overrides["allow_transfer"] = tuple(allow_transfer)
    if notify:
        overrides["notify"] = tuple(notify)
    if tsig_key is not None:
        overrides["tsig_key"] = tsig_key
    if user is not None:
        overrides["user"] = user
    overrides["tcp"] = tcp_overrides(
        settings, tcp_max_connections, tcp_max_per_client, tcp_idle_timeout, tcp_read_timeout
    )
    rrl_flags = {
        "responses_per_second": rrl_responses_per_second,
        "nxdomains_per_second": rrl_nxdomains_per_second,
        "all_per_second": rrl_all_per_second,
        "slip": rrl_slip,
        "exempt": tuple(rrl_exempt) or None,
    }
    overrides["rrl"] = None if no_rrl else rrl_overrides(settings, rrl_flags)
    final = replace(settings, **overrides)
    if final.user is not None:
        from .privileges import parse_user

        parse_user(final.user)  # an unknown user or group stops here, before anything starts
    if final.export is not None and not final.use_db:
        raise DnsblError("[export] needs a database: it writes the zones of the SQLite list")
    check_ttls(final)
    check_transfers(final)
    check_ops(final)
    check_db_folder(final)
    import logging  # here, not at the top: `dnsbl check` and friends must start fast

    from .logs import setup

    setup(logging.DEBUG if verbose else logging.INFO, final.log_format)
    sys.exit(serve_forever(final))


def check_db_folder(settings: Settings) -> None:
    """A database path given must be in a folder that exists (dbfile.py: the default's is created)."""
    from .config import default_db
    from .dbfile import require_folder

    if settings.use_db and settings.db != default_db():
        require_folder(settings.db)


def check_ops(settings: Settings) -> None:
    """--metrics is HOST:PORT; --server-id fits a TXT string (and an NSID option)."""
    from .config import parse_listen
    from .errors import ConfigError

    if settings.metrics is not None:
        try:
            parse_listen(settings.metrics)
        except ConfigError as error:
            raise ConfigError(f"--metrics: {error}") from None
    if settings.server_id is not None and not 0 < len(settings.server_id.encode()) <= 255:
        raise ConfigError("--server-id: must be 1 to 255 bytes (a TXT string)")


def tcp_overrides(
    settings: Settings,
    max_connections: int | None,
    max_per_client: int | None,
    idle: str | None,
    read: str | None,
) -> Any:
    """The --tcp-* options over the config file's [tcp] table."""
    from dataclasses import replace

    changes: dict[str, Any] = {"max_connections": max_connections, "max_per_client": max_per_client}
    for key, text in (("idle_timeout", idle), ("read_timeout", read)):
        changes[key] = None if text is None else float(parse_duration(text))
    return replace(settings.tcp, **{key: value for key, value in changes.items() if value is not None})


def rrl_overrides(settings: Settings, flags: dict[str, Any]) -> Any:
    """The --rrl-* options over the config file's [rrl] table (turned on again if it was off)."""
    from dataclasses import replace

    from .rrl import RrlSettings

    changes = {key: value for key, value in flags.items() if value is not None}
    if not changes:
        return settings.rrl
    return replace(settings.rrl or RrlSettings(), **changes)


def ttl_overrides(settings: Settings, text: str) -> dict[str, Any]:
    """--ttl DEF[:MIN[:MAX]]: DEF is every zone's TTL; MIN and MAX bound what data files give. A part
    left out keeps the config file's value (`--ttl ::1h` only caps)."""
    from dataclasses import replace

    from .ttl import parse_ttl

    spec = parse_ttl(text)
    out: dict[str, Any] = {"ttl_limits": spec.limits(settings.ttl_limits)}
    if spec.default is not None:
        out["zone_defaults"] = replace(settings.zone_defaults, ttl=spec.default)
        out["zone_settings"] = {n: replace(s, ttl=spec.default) for n, s in settings.zone_settings.items()}
    return out


def check_transfers(settings: Settings) -> None:
    """--allow-transfer CIDRs and --notify targets parse, and there is a database to transfer from."""
    from .errors import ConfigError
    from .notify import parse_targets
    from .xfr import parse_networks

    parse_networks(settings.allow_transfer)
    parse_targets(settings.notify)
    if settings.tsig_key:
        from .xfrtsig import parse_key

        parse_key(settings.tsig_key)
    if (settings.allow_transfer or settings.notify) and not settings.use_db:
        raise ConfigError(
            "--allow-transfer and --notify need a database: files-only zones are not transferred"
        )


def check_ttls(settings: Settings) -> None:
    """Every default TTL must lie within the --ttl bounds, as rbldnsd refuses "inconsistent" ones."""
    defaults = {f"[zone.{n}] ttl": s.ttl for n, s in settings.zone_settings.items()}
    settings.ttl_limits.check({"the TTL (--ttl or config ttl)": settings.zone_defaults.ttl, **defaults})


# --- add / remove -----------------------------------------------------------------------------


def open_store(db: str | None, *, create: bool = True) -> Store:
    """Commands that write create the database on first use; commands that only read refuse a
    missing one (a typo in --db must not read as "not listed")."""
    return Store.open(resolve_db(db), create=create)


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
@click.option(
    "--older-than",
    metavar="AGE",
    help="With --source and no TARGET: only entries not updated for AGE (30d, 2w).",
)
@click.argument("targets", nargs=-1)
@guarded
def remove(
    db: str | None,
    zone: str | None,
    source: str | None,
    exclude: bool,
    older_than: str | None,
    targets: Sequence[str],
) -> None:
    """Remove entries whose target is exactly TARGET, or (no TARGET) all of --source.
    Exit 1 if nothing matched."""
    now = time.time()
    if not targets:
        remove_source(db, zone, source, older_than, now)
    if older_than:
        raise DnsblError("--older-than goes with --source and no TARGET")
    parsed = parse_targets(targets, exclude)
    store = open_store(db, create=False)
    name = pick_zone(store, zone, now, create=False)
    removed = store.remove(name, parsed, source=source, now=now)
    for target, src in removed:
        click.echo(f"removed {target} ({src}) from {name}")
    for target in parsed:
        if not any(r[0] == format_target(target) for r in removed):
            explain_not_removed(store, name, target)
    sys.exit(EXIT_OK if removed else EXIT_NEGATIVE)


def remove_source(
    db: str | None, zone: str | None, source: str | None, older_than: str | None, now: float
) -> NoReturn:
    if source is None:
        raise DnsblError("give TARGETs to remove, or --source NAME to remove a source's entries")
    cutoff = now - parse_duration(older_than) if older_than else None
    store = open_store(db, create=False)
    name = pick_zone(store, zone, now, create=False)
    count = store.remove_source(name, source, older_than=cutoff, now=now)
    age = f" not updated for {older_than}" if older_than else ""
    click.echo(f"removed {count} entr{'y' if count == 1 else 'ies'} of source {source}{age} from {name}")
    sys.exit(EXIT_OK if count else EXIT_NEGATIVE)


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
