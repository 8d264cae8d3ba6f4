"""The config file is documented field by field: every key config.py accepts (`config.accepted()`) has a
row in the README's "Config file" table and a line in zones/dnsbl.toml, and that example loads, with its
commented-out fields switched on too."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from dnsbl_server.config import accepted, from_file

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
EXAMPLE = ROOT / "zones" / "dnsbl.toml"
COMMENTED = re.compile(r"^# ([a-z_]+ = )", re.M)  # `# key = value`: a field shown switched off


def readme_fields() -> dict[str, list[str]]:
    """The "Config file" section's table: first cell (the field, TOML dotted: `db`, `export.interval`,
    `zone."NAME".ttl`, `[export]` for a table) -> the row's cells."""
    text = README.read_text()
    start = text.index("\n## Config file")
    section = text[start : text.index("\n## ", start + 1)]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 5:
            rows[cells[0].strip("`")] = cells
    return rows


def documented_name(table: str, key: str) -> str:
    if table == "":
        return key
    return table.replace(".NAME", '."NAME"') + "." + key


def test_every_field_has_a_readme_row() -> None:
    rows = readme_fields()
    assert rows, 'README.md has no "Config file" table (| field | type | default | meaning | flag |)'
    missing = []
    for table, keys in accepted().items():
        for key in sorted(keys):
            name = documented_name(table, key)
            as_table = f"[{name}]" in rows or (key == "zone" and '[zone."NAME"]' in rows)
            if name not in rows and not (table == "" and as_table):
                missing.append(name)
    assert missing == [], f"config fields with no row in README.md's Config file table: {missing}"


def test_readme_rows_name_real_fields_and_flags() -> None:
    """No row for a field that does not exist (renamed, removed), and every flag named exists."""
    known = {documented_name(t, k) for t, keys in accepted().items() for k in keys}
    tables = {f"[{name}]" for name in known} | {'[zone."NAME"]'}
    helps = "".join(
        subprocess.run(
            [sys.executable, "-m", "dnsbl_server", *command, "--help"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for command in (["serve"], ["ingest"], ["trap-smtpd"])
    )
    for name, cells in readme_fields().items():
        assert name in known or name in tables, f"README row for an unknown field: {name}"
        for flag in re.findall(r"--[a-z][a-z-]+", cells[4]):
            assert flag in helps, f"README row {name} names a flag no command has: {flag}"


def example(switched_on: bool) -> str:
    text = EXAMPLE.read_text()
    return COMMENTED.sub(r"\1", text) if switched_on else text


def keys_in(data: dict[str, Any]) -> dict[str, set[str]]:
    """The keys a parsed config has, by `accepted()` table name."""
    found: dict[str, set[str]] = {"": set(data)}
    for name, value in data.items():
        if name == "zone":
            found["zone.NAME"] = {key for table in value.values() for key in table}
        elif isinstance(value, dict):
            found[name] = {k for k, v in value.items() if not isinstance(v, dict)}
            for sub, subvalue in value.items():
                if isinstance(subvalue, dict):
                    found[f"{name}.{sub}"] = set(subvalue)
                    found[name].add(sub)
    return found


def test_the_example_shows_every_field() -> None:
    found = keys_in(tomllib.loads(example(switched_on=True)))
    missing = [
        documented_name(table, key)
        for table, keys in accepted().items()
        for key in sorted(keys - found.get(table, set()))
    ]
    assert missing == [], f"config fields zones/dnsbl.toml does not show: {missing}"


@pytest.mark.parametrize("switched_on", [False, True])
def test_the_example_loads(tmp_path: Path, switched_on: bool) -> None:
    path = tmp_path / "dnsbl.toml"
    path.write_text(example(switched_on))
    settings, db = from_file(path)
    assert db == "/var/lib/dnsbl-server/dnsbl.sqlite"
    assert settings.export is not None and settings.export.interval == 300
    assert settings.settings_for("bl.example.org").ttl == 900
    if switched_on:
        assert settings.user == "dnsbl" and settings.metrics and settings.allow_transfer and settings.datasets
