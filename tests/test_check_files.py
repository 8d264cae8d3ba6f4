"""`dnsbl check --config FILE` reads the config's zones, data files included, and says what the server
answers (issue: "`check` reads the zones of the config file, data files included")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli, values

ZONES = Path(__file__).parent.parent / "zones"
ZONE = "bl.example.org"
ADDRESSES = [
    "192.0.2.1",
    "192.0.2.2",
    "192.0.2.3",
    "192.0.2.200",
    "198.51.100.7",
    "10.20.3.4",
    "203.0.113.99",
]


def name(address: str) -> str:
    return ".".join(reversed(address.split("."))) + "." + ZONE


def write_config(tmp_path: Path, db: Path | None) -> Path:
    path = tmp_path / "dnsbl.toml"
    db_line = f'db = "{db}"\n' if db else ""
    path.write_text(f'{db_line}datasets = ["{ZONE}:ip4set:{ZONES / "ip4set.example"}"]\n')
    return path


def checked(config: Path, *addresses: str, env: dict[str, str] | None = None) -> list[dict[str, object]]:
    result = run_cli("check", "--config", str(config), "--json", *addresses, env=env)
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_check_answers_what_the_server_answers_for_data_files(tmp_path: Path, db: Path, serve) -> None:  # type: ignore[no-untyped-def]
    assert run_cli("add", "--zone", ZONE, "--exclude", "198.51.100.7", db=db).returncode == 0
    config = write_config(tmp_path, db)
    server = serve("--config", str(config))
    for result in checked(config, *ADDRESSES):
        (zone,) = result["zones"]  # type: ignore[misc]
        answer = server.ask(name(str(result["address"])))
        assert zone["codes"] == values(answer, "A"), result
        txt = [t.strip('"') for t in values(server.ask(name(str(result["address"])), "TXT"), "TXT")]
        assert sorted(zone["txt"]) == txt, result
    excluded = checked(config, "198.51.100.7")[0]["zones"][0]  # type: ignore[index]
    assert not excluded["listed"] and excluded["entries"][0]["excluded"]  # the SQLite exclusion wins
    listed = checked(config, "192.0.2.1")[0]["zones"][0]  # type: ignore[index]
    assert listed["datasets"] == [f"ip4set:{ZONES / 'ip4set.example'}"]


def test_check_a_files_only_config_needs_no_database(tmp_path: Path) -> None:
    config = write_config(tmp_path, None)
    env = {"XDG_DATA_HOME": str(tmp_path / "nothing-here")}
    result = run_cli("check", "--config", str(config), "192.0.2.1", env=env)
    assert result.returncode == 0, result.stderr
    assert "192.0.2.1 bl.example.org: LISTED 127.0.0.2" in result.stdout
    assert not (tmp_path / "nothing-here").exists()  # and made none
    unlisted = run_cli("check", "--config", str(config), "203.0.113.99", env=env)
    assert unlisted.returncode == 1 and "not listed" in unlisted.stdout
