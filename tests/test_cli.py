"""The `dnsbl` command as scripts use it: exit codes, messages that name the bad value, nothing
written on error, the database path resolution."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from conftest import run_cli

ZONE = "bl.example.org"


def count_entries(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM entries").fetchone()[0])


def test_add_creates_database_directory_and_zone(db: Path) -> None:
    result = run_cli("add", "--zone", ZONE, "192.0.2.1", "10.20", "2001:DB8::/32", db=db)
    assert result.returncode == 0, result.stderr
    assert "3 entries written to bl.example.org" in result.stdout
    with sqlite3.connect(db) as conn:
        targets = sorted(r[0] for r in conn.execute("SELECT target FROM entries"))
    assert targets == ["10.20.0.0/16", "192.0.2.1", "2001:db8::/32"]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["192.0.2.5/24"], "192.0.2.5/24"),
        (["1.2.3.256"], "1.2.3.256"),
        (["192.0.2.1", "--code", "127.0.0.1"], "127.0.0.1"),
        (["192.0.2.1", "--code", "10.0.0.2"], "10.0.0.2"),
        (["192.0.2.1", "--code", "999"], "999"),
        (["192.0.2.1", "--expires", "soon"], "soon"),
        (["192.0.2.1", "--expires", "2026-13-45"], "2026-13-45"),
        (["192.0.2.1", "--source", "has space"], "has space"),
        (["192.0.2.1", "not-an-address"], "not-an-address"),
        (["127.0.0.1"], "127.0.0.1"),
        (["--exclude", "127.0.0.2"], "127.0.0.2"),
    ],
)
def test_bad_arguments_name_the_value_and_write_nothing(db: Path, args: list[str], named: str) -> None:
    assert run_cli("add", "--zone", ZONE, "198.51.100.1", db=db).returncode == 0
    result = run_cli("add", "--zone", ZONE, *args, db=db)
    assert result.returncode == 2
    assert named in result.stderr and "Traceback" not in result.stderr
    assert count_entries(db) == 1


def test_bad_zone_name(db: Path) -> None:
    result = run_cli("add", "--zone", "bad zone!", "192.0.2.1", db=db)
    assert result.returncode == 2 and "bad zone!" in result.stderr


def test_zone_defaults_to_the_only_one_else_lists_them(db: Path) -> None:
    assert run_cli("add", "192.0.2.1", db=db).returncode == 2  # no zone yet
    assert run_cli("add", "--zone", "a.example", "192.0.2.1", db=db).returncode == 0
    assert run_cli("add", "192.0.2.2", db=db).returncode == 0
    assert run_cli("add", "--zone", "b.example", "192.0.2.1", db=db).returncode == 0
    result = run_cli("add", "192.0.2.3", db=db)
    assert result.returncode == 2 and "a.example" in result.stderr and "b.example" in result.stderr


def test_remove_exit_codes_and_covering_hint(db: Path) -> None:
    assert run_cli("add", "--zone", ZONE, "192.0.2.0/24", "198.51.100.7", db=db).returncode == 0
    missing = run_cli("remove", "192.0.2.9", db=db)
    assert missing.returncode == 1
    assert "192.0.2.0/24" in missing.stderr and "--exclude" in missing.stderr
    assert run_cli("remove", "198.51.100.7", db=db).returncode == 0
    assert run_cli("remove", "198.51.100.7", db=db).returncode == 1
    assert count_entries(db) == 1


def test_exclusion_with_bang_or_flag_is_the_same_entry(db: Path) -> None:
    assert run_cli("add", "--zone", ZONE, "!192.0.2.7", db=db).returncode == 0
    assert run_cli("add", "--zone", ZONE, "--exclude", "192.0.2.7", db=db).returncode == 0
    assert count_entries(db) == 1
    assert run_cli("remove", "--exclude", "192.0.2.7", db=db).returncode == 0


def test_db_resolution_flag_env_default(tmp_path: Path) -> None:
    env_db = tmp_path / "env.sqlite"
    flag_db = tmp_path / "flag.sqlite"
    home = tmp_path / "xdg"
    assert run_cli("add", "--zone", ZONE, "192.0.2.1", db=env_db).returncode == 0
    assert run_cli("add", "--db", str(flag_db), "--zone", ZONE, "192.0.2.1", db=env_db).returncode == 0
    assert count_entries(env_db) == 1 and count_entries(flag_db) == 1
    result = run_cli("add", "--zone", ZONE, "192.0.2.1", env={"XDG_DATA_HOME": str(home)})
    assert result.returncode == 0
    assert count_entries(home / "dnsbl-server" / "dnsbl.sqlite") == 1


def test_long_reason_warns(db: Path) -> None:
    result = run_cli("add", "--zone", ZONE, "192.0.2.1", "--reason", "y" * 250 + " $", db=db)
    assert result.returncode == 0 and "254" in result.stderr


def test_unreadable_config_is_an_error(db: Path, tmp_path: Path) -> None:
    result = run_cli("serve", "--config", str(tmp_path / "missing.toml"), db=db)
    assert result.returncode == 2 and "missing.toml" in result.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("listen = ['nope']\n")
    result = run_cli("serve", "--config", str(bad), db=db)
    assert result.returncode == 2 and "nope" in result.stderr


def test_every_command_is_where_the_lazy_table_says() -> None:
    """`Commands.MODULES` names the module that registers each command; `--help` lists them all."""
    import subprocess
    import sys

    listing = subprocess.run(
        [
            sys.executable,
            "-c",
            "from dnsbl_server.cli import main, Commands\n"
            "import click\n"
            "names = main.list_commands(click.Context(main))\n"
            "for name in names:\n"
            "    print(name, main.commands[name].callback.__module__, Commands.MODULES.get(name, 'cli'))\n",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    rows = [line.split() for line in listing if line]
    assert {"add", "serve", "check", "import", "web", "trap-smtpd", "backup", "health"} <= {
        r[0] for r in rows
    }
    for name, defined_in, table in rows:
        assert defined_in == f"dnsbl_server.{table}", name


def test_an_admin_write_does_not_import_the_server(db: Path) -> None:
    """`dnsbl add` in a script's loop starts without the server, web, trap or data-file modules."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from dnsbl_server.cli import main\n"
        f"try:\n    main(['add', '--db', {str(db)!r}, '--zone', {ZONE!r}, '--reason', 'r $', '192.0.2.9'])\n"
        "except SystemExit:\n    pass\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('dnsbl_server'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(done.stdout.split("\n")[-2].split())
    assert "1 entry written" in done.stdout
    assert "dnsbl_server.store" in loaded
    heavy = {
        "config",
        "daemon",
        "server",
        "resolver",
        "cli_web",
        "cli_files",
        "cli_trap",
        "datafiles",
        "zone",
    }
    assert not loaded & {f"dnsbl_server.{m}" for m in heavy}
