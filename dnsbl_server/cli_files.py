"""`dnsbl import` and `dnsbl export`: lists in and out as files (README, "Import and export").

Thin: parsing lives in imports.py and zonefile.py, flattening and formats in export.py.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import click

from .addresses import parse_code, parse_when
from .cli import check_source, db_option, guarded, main, open_store, pick_zone
from .config import Settings, from_file
from .errors import DnsblError
from .names import zone_name

if TYPE_CHECKING:
    from .imports import Batch


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
    except (OSError, EOFError, zlib.error) as error:  # gzip: EOFError if cut short, zlib.error if damaged
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise DnsblError(f"{path}: cannot read: {reason or 'the gzip data ends early'}") from None


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


def parsed_in_child(args: tuple[Any, ...]) -> tuple[Iterator[list[tuple[object, ...]]], list[str]]:
    """Read and parse the file in a child process while this one writes SQLite: the two halves of an
    import take about as long as each other, and the GIL would run them one after the other. Chunks
    of staged rows come through a pipe; the problems when the file is done (the list is complete
    once the chunks are exhausted)."""
    import multiprocessing

    from .store import staged_chunks

    if args[0] == "-":  # a child process gets /dev/null for stdin: read it here
        batch = parse_input(*args)
        return staged_chunks(batch.rows), batch.problems
    receive, send = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(
        target=_produce, args=(send, args, receive), daemon=True
    )
    child.start()
    send.close()
    problems: list[str] = []

    def chunks() -> Iterator[list[tuple[object, ...]]]:
        try:
            while True:
                kind, payload = receive.recv()
                if kind == "rows":
                    yield payload
                elif kind == "error":
                    raise DnsblError(payload)
                else:
                    problems.extend(payload)
                    return
        except EOFError:
            raise DnsblError(f"{args[0]}: the reader process died") from None
        finally:
            receive.close()
            child.join(5)

    return chunks(), problems


def _produce(send: Any, args: tuple[Any, ...], receive: Any) -> None:
    from .store import staged_chunks

    # The forked copy of the read end must go: with it open, a parent killed (kill -9) would leave this
    # process blocked on a full pipe forever; without it, its next send fails and it ends.
    receive.close()
    try:
        batch = parse_input(*args)
        for chunk in staged_chunks(batch.rows):
            send.send(("rows", chunk))
        send.send(("done", batch.problems))
    except DnsblError as error:
        send.send(("error", str(error)))
    except BrokenPipeError:
        pass  # the importing process is gone (killed): nothing to say, nobody to say it to
    finally:
        send.close()


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
    store = open_store(db)
    name = zone_name(zone) if zone else pick_zone(store, None, now, create=False)
    args = (path, kind, source or "import", parse_code(code), reason, when, loose, source)
    chunks, problems = parsed_in_child(args)

    def verify() -> None:  # every line has been read: stop here, before the commit, if any was bad
        report_problems(problems)
        if problems and not skip_bad:
            raise DnsblError(
                f"{len(problems)} bad line(s) in {path}: nothing imported (--skip-bad imports the rest)"
            )

    replaced = (source or "import") if replace else None
    count = store.import_staged(name, chunks, replace=replaced, now=now, verify=verify)
    skipped = f", {len(problems)} bad line(s) skipped" if problems else ""
    click.echo(f"imported {count} entr{'y' if count == 1 else 'ies'} into {name} from {path}{skipped}")


def atomic_write(path: str | None, lines: Iterable[str]) -> None:
    """Write to a temp file beside `path` and rename it over, so readers never see half a file."""
    if path is None or path == "-":
        out = click.get_text_stream("stdout")
        for line in lines:
            out.write(line + "\n")
        return
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, temp = tempfile.mkstemp(prefix=".dnsbl-export-", dir=directory)
    except OSError as error:
        raise DnsblError(f"{path}: cannot write: {error.strerror}") from None
    try:
        with os.fdopen(fd, "w") as handle:
            for line in lines:
                handle.write(line + "\n")
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException as error:
        os.unlink(temp)
        if isinstance(error, OSError):
            raise DnsblError(f"{path}: cannot write: {error.strerror}") from None
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
    store = open_store(db, create=False)
    name = pick_zone(store, zone, now, create=False)
    if fmt == "csv":
        rows = ((e.key[0], e.key[1], e.code, e.reason, e.expires) for e in store.entries(name))
        atomic_write(output, write_csv(sorted(rows)))
        return
    built = build_zone(store, name, settings.settings_for(name), now)
    atomic_write(output, WRITERS[fmt](built, now))


@main.command("zone-check")
@click.option("--loose", is_flag=True, help="Accept CIDRs with host bits set (rbldnsd -e).")
@click.argument("specs", nargs=-1, required=True, metavar="ZONE:TYPE:FILE[,FILE...]...")
@guarded
def zone_check(loose: bool, specs: Sequence[str]) -> None:
    """Validate data files without serving them: every problem as FILE:LINE: problem; exit 1 if any."""
    from .compact import count_entries
    from .datafiles import load_dataset, parse_spec

    problems: list[str] = []
    now = time.time()
    for spec in dict.fromkeys(parse_spec(s) for s in specs):
        dataset = load_dataset(spec.kind, spec.files, now, loose=loose, quiet=True)
        problems += dataset.problems
        entries = count_entries(dataset.index)
        click.echo(
            f"{spec.zone}:{spec.kind}:{','.join(spec.files)}: {entries} entries, "
            f"{len(dataset.problems)} problem(s)"
        )
    for problem in problems:
        click.echo(problem)
    sys.exit(1 if problems else 0)
