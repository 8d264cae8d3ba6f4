"""`dnsbl backup FILE`: a checked copy of the live database (backup.py has the rules; README, "Backup
and restore", the restore)."""

from __future__ import annotations

from pathlib import Path

import click

from .cli import db_option, guarded, main
from .names import resolve_db


@main.command("backup")
@db_option
@click.argument("file", metavar="FILE")
@guarded
def backup_command(db: str | None, file: str) -> None:
    """Copy the database to FILE while the server and writers run (SQLite online backup), checked
    with PRAGMA integrity_check, written to a temp file and renamed. Restore: see the README."""
    from .backup import backup

    done = backup(resolve_db(db), Path(file))
    zones = f"{done.zones} zone{'' if done.zones == 1 else 's'}"
    click.echo(
        f"backup written to {done.path}: {done.size / 1e6:.1f} MB, {zones}, {done.entries} entries, "
        f"integrity check ok ({done.seconds:.1f} s)"
    )
