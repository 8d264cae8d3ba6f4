"""The admin commands as operators and scripts use them: real `dnsbl` processes on real SQLite files,
and a real `dnsbl serve` asked by dnspython where the answer on the wire is the point.

Exit codes (README): 0 success or a positive answer, 1 a negative one, 2 an error named in one line.
Expected values are built from the inputs written here (codes, templates with `$` expanded), never
copied from a run.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import os
import shlex
import sqlite3
import stat
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import dns.rdatatype
import pytest
from conftest import poll, rcode, run_cli, values

ZONE = "bl.example.org"
OTHER = "other.example"
NET, NET_REASON = "192.0.2.0/24", "net $"  # with !192.0.2.7 excluded (ZONE)
# listed twice, by two sources (ZONE):
TWICE, TRAP_REASON, HAND_REASON = "198.51.100.1", "trap: $ bounced", "by hand: $, fee $$5"
V6, V6_REASON = "2001:db8::/64", "v6 $"  # (ZONE)
OTHER_REASON = "other zone lists $"  # 192.0.2.7 (OTHER); 203.0.113.0/24 there has no reason


# --- helpers ----------------------------------------------------------------------------------


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def code(n: int) -> str:
    return f"127.0.0.{n}"


def fill(template: str, address: str) -> str:
    """The README's TXT rule: `$` is the queried address, `$$` a dollar sign."""
    return "$".join(part.replace("$", address) for part in template.split("$$"))


def rows(db: Path) -> list[tuple[str, ...]]:
    """(zone, target, source, code, reason) of the entries, sorted; the code as dotted text, and
    "-" for an exclusion (which has none)."""
    if not db.exists():
        return []
    with closing(sqlite3.connect(db)) as conn:
        found = conn.execute("SELECT zone, target, source, code, reason FROM entries").fetchall()
    return sorted(
        (z, t, s, "-" if t.startswith("!") else str(ipaddress.IPv4Address(c)), r) for z, t, s, c, r in found
    )


def count(db: Path) -> int:
    if not db.exists():
        return 0
    with closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT count(*) FROM entries").fetchone()[0])


def check_json(db: Path, *args: str) -> tuple[int, dict[str, dict[str, Any]]]:
    """Exit code and {address: {zone: result}} of `dnsbl check --json`."""
    result = run_cli("check", "--json", *args, db=db)
    assert result.returncode in (0, 1), result.stderr
    data = json.loads(result.stdout)
    return result.returncode, {a["address"]: {z["zone"]: z for z in a["zones"]} for a in data}


def entry(zone_result: dict[str, Any], target: str, source: str = "manual") -> dict[str, Any]:
    found = [e for e in zone_result["entries"] if e["target"] == target and e["source"] == source]
    assert len(found) == 1, zone_result["entries"]
    return found[0]


def assert_one_line_error(result: subprocess.CompletedProcess[str], named: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr[-2000:])
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dnsbl: error: "), result.stderr
    assert named in lines[0]


def qname(address: str, zone: str) -> str:
    ip = ipaddress.ip_address(address)
    labels = str(ip).split(".") if ip.version == 4 else list(ip.exploded.replace(":", ""))
    return ".".join(reversed(labels)) + "." + zone + "."


def txt_strings(message: Any) -> list[str]:
    return sorted(
        b"".join(rr.strings).decode()
        for rrset in message.answer
        if rrset.rdtype == dns.rdatatype.TXT
        for rr in rrset
    )


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


# --- a shared list, read by the `check` tests -------------------------------------------------


def fill_list(db: Path) -> None:
    ok(run_cli("add", "--zone", ZONE, NET, "--reason", NET_REASON, db=db))
    ok(run_cli("add", "--zone", ZONE, "--exclude", "192.0.2.7", db=db))
    ok(
        run_cli(
            "add",
            "--zone",
            ZONE,
            TWICE,
            "--code",
            "4",
            "--reason",
            TRAP_REASON,
            "--source",
            "trap:bounce",
            db=db,
        )
    )
    ok(run_cli("add", "--zone", ZONE, TWICE, "--code", "5", "--reason", HAND_REASON, db=db))
    ok(run_cli("add", "--zone", ZONE, V6, "--code", "3", "--reason", V6_REASON, db=db))
    ok(run_cli("add", "--zone", OTHER, "192.0.2.7", "--code", "6", "--reason", OTHER_REASON, db=db))
    ok(run_cli("add", "--zone", OTHER, "203.0.113.0/24", "--code", "7", db=db))


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only for the tests that use it (each asserts what it needs of the contents)."""
    db = tmp_path_factory.mktemp("shared") / "list.sqlite"
    fill_list(db)
    return db


# --- exit codes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["check", "192.0.2.300"], "192.0.2.300"),
        (["check", "192.0.2.1", "not-an-address"], "not-an-address"),
        (["check", "192.0.2.0/24"], "192.0.2.0/24"),
        (["check", "192.0.2"], "192.0.2"),
        (["check", "--zone", "nope.example", "192.0.2.1"], "nope.example"),
        (["list", "--zone", "nope.example"], "nope.example"),
        (["stats", "--zone", "nope.example"], "nope.example"),
        (["remove", "--zone", "nope.example", "192.0.2.1"], "nope.example"),
        (["export", "--zone", "nope.example"], "nope.example"),
        (["remove", "--zone", ZONE, "--source", "manual", "--older-than", "30x"], "30x"),
        (["remove", "--zone", ZONE, "--source", "manual", "--older-than", "soon"], "soon"),
        (["import", "--zone", ZONE, "{dir}/missing.ip4set"], "missing.ip4set"),
        (["import", "--zone", ZONE, "{dir}"], "{dir}"),
        (["import", "--zone", ZONE, "--type", "ip5set", "-"], "ip5set"),
    ],
)
def test_errors_exit_2_with_one_line_naming_the_value(
    shared: Path, tmp_path: Path, args: list[str], named: str
) -> None:
    before = rows(shared)
    result = run_cli(*(a.replace("{dir}", str(tmp_path)) for a in args), db=shared, input="")
    assert_one_line_error(result, named.replace("{dir}", str(tmp_path)))
    assert rows(shared) == before


@pytest.mark.parametrize(
    "args",
    [
        ["check", "198.51.100.99", "2001:db8:1::1", "127.0.0.1"],
        ["remove", "--zone", ZONE, "198.51.100.99"],
        ["remove", "--zone", ZONE, "--source", "nobody"],
        ["remove", "--zone", ZONE, "--source", "manual", "--older-than", "1d"],  # all written just now
        ["list", "--source", "nobody"],
        ["list", "--expired"],
        ["allowlist", "remove", "192.0.2.0/24"],
    ],
)
def test_negative_answers_exit_1(shared: Path, args: list[str]) -> None:
    before = rows(shared)
    result = run_cli(*args, db=shared)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "error" not in result.stderr and "Traceback" not in result.stderr
    assert rows(shared) == before


# --- check ------------------------------------------------------------------------------------


def test_check_listed_and_unlisted_in_every_zone(shared: Path) -> None:
    addresses = ["192.0.2.9", "203.0.113.5", "198.51.100.99", "2001:db8::5", "2001:db8:1::1"]
    status, got = check_json(shared, *addresses)
    assert status == 0
    assert {a: sorted(z) for a, z in got.items()} == {a: sorted([ZONE, OTHER]) for a in addresses}
    expected = {  # (address, zone): (codes, texts)
        ("192.0.2.9", ZONE): ([code(2)], [fill(NET_REASON, "192.0.2.9")]),
        ("192.0.2.9", OTHER): ([], []),
        ("203.0.113.5", ZONE): ([], []),
        ("203.0.113.5", OTHER): ([code(7)], []),
        ("2001:db8::5", ZONE): ([code(3)], [fill(V6_REASON, "2001:db8::5")]),
        ("2001:db8::5", OTHER): ([], []),
        ("198.51.100.99", ZONE): ([], []),
        ("2001:db8:1::1", ZONE): ([], []),
    }
    for (address, zone), (codes, texts) in expected.items():
        result = got[address][zone]
        assert (result["listed"], result["codes"], result["txt"]) == (bool(codes), codes, texts), address


def test_check_one_zone_with_zone(shared: Path) -> None:
    status, got = check_json(shared, "--zone", OTHER, "192.0.2.7", "192.0.2.9")
    assert status == 0
    assert list(got["192.0.2.7"]) == [OTHER] and list(got["192.0.2.9"]) == [OTHER]
    assert got["192.0.2.7"][OTHER]["codes"] == [code(6)]
    assert got["192.0.2.7"][OTHER]["txt"] == [fill(OTHER_REASON, "192.0.2.7")]
    assert run_cli("check", "--zone", OTHER, "192.0.2.9", db=shared).returncode == 1


def test_check_ipv4_mapped_ipv6_is_the_ipv4_address(shared: Path) -> None:
    result = ok(run_cli("check", "--json", "--zone", ZONE, "::ffff:192.0.2.9", db=shared))
    [answer] = json.loads(result.stdout)
    assert answer["query"] == "::ffff:192.0.2.9" and answer["address"] == "192.0.2.9"
    assert answer["zones"][0]["codes"] == [code(2)]
    assert answer["zones"][0]["txt"] == [fill(NET_REASON, "192.0.2.9")]


def test_check_rfc5782_test_points(shared: Path) -> None:
    status, got = check_json(shared, "127.0.0.2", "127.0.0.1")
    assert status == 0
    for zone in (ZONE, OTHER):
        assert got["127.0.0.2"][zone]["listed"] and got["127.0.0.2"][zone]["codes"] == [code(2)]
        [text] = got["127.0.0.2"][zone]["txt"]
        assert "test point" in text.lower()
        assert not got["127.0.0.1"][zone]["listed"] and got["127.0.0.1"][zone]["codes"] == []
    assert run_cli("check", "127.0.0.1", db=shared).returncode == 1


def test_check_exclusion_more_specific_than_the_cidr(shared: Path) -> None:
    status, got = check_json(shared, "--zone", ZONE, "192.0.2.7", "192.0.2.8")
    assert status == 0  # 192.0.2.8 is listed
    excluded = got["192.0.2.7"][ZONE]
    assert not excluded["listed"] and excluded["codes"] == [] and excluded["txt"] == []
    exclusion = entry(excluded, "!192.0.2.7")
    assert exclusion["excluded"] is True and exclusion["code"] is None
    cidr = entry(excluded, NET)
    assert cidr["answers"] is False and cidr["excluded"] is False and cidr["code"] == code(2)
    assert len(excluded["entries"]) == 2
    listed = got["192.0.2.8"][ZONE]
    assert listed["codes"] == [code(2)] and entry(listed, NET)["answers"] is True
    assert [e["target"] for e in listed["entries"]] == [NET]
    text = run_cli("check", "--zone", ZONE, "192.0.2.7", db=shared)
    assert text.returncode == 1 and "not listed" in text.stdout and "!192.0.2.7" in text.stdout


def test_check_two_sources_both_answer(shared: Path) -> None:
    status, got = check_json(shared, "--zone", ZONE, TWICE)
    assert status == 0
    result = got[TWICE][ZONE]
    assert sorted(result["codes"]) == [code(4), code(5)]
    assert sorted(result["txt"]) == sorted([fill(TRAP_REASON, TWICE), fill(HAND_REASON, TWICE)])
    assert entry(result, TWICE, "trap:bounce")["answers"] is True
    assert entry(result, TWICE, "manual")["answers"] is True


def test_check_agrees_with_the_running_server(shared: Path, db: Path, serve: Any) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(shared)) as source, closing(sqlite3.connect(db)) as copy:
        source.backup(copy)
    addresses = [
        "192.0.2.9",
        "192.0.2.7",
        "192.0.2.8",
        TWICE,
        "198.51.100.99",
        "203.0.113.5",
        "2001:db8::5",
        "2001:db8:1::1",
        "::ffff:192.0.2.9",
        "::ffff:192.0.2.7",
        "127.0.0.2",
        "127.0.0.1",
    ]
    result = ok(run_cli("check", "--json", *addresses, db=db))
    server = serve()
    listed = 0
    for answer in json.loads(result.stdout):
        for zone in answer["zones"]:
            name = qname(answer["query"], zone["zone"])
            a, txt = server.ask(name, "A"), server.ask(name, "TXT")
            assert rcode(a) == ("NOERROR" if zone["listed"] else "NXDOMAIN"), name
            assert values(a, "A") == sorted(zone["codes"]), name
            assert txt_strings(txt) == sorted(zone["txt"]), name
            listed += zone["listed"]
    assert 0 < listed < 2 * len(addresses)


# --- list -------------------------------------------------------------------------------------


@pytest.fixture
def sources(db: Path) -> Path:
    for zone, target, source in [
        (ZONE, "192.0.2.1", "trap:bounce"),
        (ZONE, "192.0.2.2", "trapdoor"),
        (ZONE, "192.0.2.3", "trap"),
        (OTHER, "2001:db8::1", "trap"),
    ]:
        ok(run_cli("add", "--zone", zone, target, "--source", source, "--reason", f"{source} $", db=db))
    ok(run_cli("add", "--zone", ZONE, "192.0.2.4", "198.51.100.0/24", "--code", "3", db=db))
    return db


def test_list_source_is_hierarchical(sources: Path) -> None:
    listed = json.loads(ok(run_cli("list", "--source", "trap", "--json", db=sources)).stdout)
    assert sorted((r["zone"], r["target"], r["source"]) for r in listed) == sorted(
        [(ZONE, "192.0.2.1", "trap:bounce"), (ZONE, "192.0.2.3", "trap"), (OTHER, "2001:db8::1", "trap")]
    )
    assert all(r["reason"] == f"{r['source']} $" and r["code"] == code(2) for r in listed)
    trapdoor = json.loads(ok(run_cli("list", "--source", "trapdoor", "--json", db=sources)).stdout)
    assert [(r["target"], r["source"]) for r in trapdoor] == [("192.0.2.2", "trapdoor")]


def test_list_table_csv_json(sources: Path) -> None:
    every = rows(sources)
    table = ok(run_cli("list", db=sources)).stdout.splitlines()
    assert table[0].split() == ["zone", "target", "code", "source", "expires", "reason"]
    assert sorted(tuple(line.split()[:4]) for line in table[1:]) == sorted(
        (z, t, c, s) for z, t, s, c, _ in every
    )
    listed = json.loads(ok(run_cli("list", "--format", "json", db=sources)).stdout)
    assert sorted((r["zone"], r["target"], r["source"], r["code"], r["reason"]) for r in listed) == every
    assert all(r["expires"] is None and r["expired"] is False for r in listed)
    several = run_cli("list", "--format", "csv", db=sources)
    assert_one_line_error(several, "--zone")
    assert ZONE in several.stderr and OTHER in several.stderr
    csv_lines = ok(run_cli("list", "--format", "csv", "--zone", ZONE, db=sources)).stdout.splitlines()
    assert csv_lines[0] == "target,code,reason,source,expires"
    assert sorted(csv_lines[1:]) == sorted(f"{t},{c},{r},{s}," for z, t, s, c, r in every if z == ZONE)


def test_list_expired(db: Path) -> None:
    ok(run_cli("add", "--zone", ZONE, "192.0.2.1", "--expires", "1s", db=db))
    ok(run_cli("add", "--zone", ZONE, "192.0.2.2", db=db))
    expired = poll(lambda: run_cli("list", "--expired", "--json", db=db).returncode == 0, timeout=15)
    assert expired
    gone = json.loads(ok(run_cli("list", "--expired", "--json", db=db)).stdout)
    assert [(r["target"], r["expired"]) for r in gone] == [("192.0.2.1", True)]
    assert gone[0]["expires"] is not None
    live = json.loads(ok(run_cli("list", "--json", db=db)).stdout)
    assert [(r["target"], r["expired"]) for r in live] == [("192.0.2.2", False)]
    assert count(db) == 2  # expired is not purged
    [stats] = json.loads(ok(run_cli("stats", "--json", db=db)).stdout)
    assert [(s["source"], s["listings"], s["expired"]) for s in stats["sources"]] == [("manual", 2, 1)]


# --- remove -----------------------------------------------------------------------------------


def test_remove_source_leaves_other_sources(db: Path) -> None:
    ok(run_cli("add", "--zone", ZONE, "192.0.2.1", "192.0.2.2", "2001:db8::1", "--source", "feed", db=db))
    ok(run_cli("add", "--zone", ZONE, "192.0.2.3", "--source", "feed:sub", db=db))
    ok(run_cli("add", "--zone", ZONE, "192.0.2.4", "--source", "feedback", db=db))
    ok(run_cli("add", "--zone", ZONE, "192.0.2.1", db=db))
    ok(run_cli("add", "--zone", OTHER, "192.0.2.1", "--source", "feed", db=db))
    removed = ok(run_cli("remove", "--zone", ZONE, "--source", "feed", db=db))
    assert "removed 4 entries" in removed.stdout
    assert [(z, t, s) for z, t, s, _, _ in rows(db)] == sorted(
        [(ZONE, "192.0.2.1", "manual"), (ZONE, "192.0.2.4", "feedback"), (OTHER, "192.0.2.1", "feed")]
    )
    assert run_cli("remove", "--zone", ZONE, "--source", "feed", db=db).returncode == 1


def test_remove_source_older_than(db: Path) -> None:
    ok(run_cli("add", "--zone", ZONE, "192.0.2.10", "192.0.2.11", "--source", "feed", db=db))
    ok(run_cli("add", "--zone", ZONE, "192.0.2.12", db=db))
    with closing(sqlite3.connect(db)) as conn, conn:  # as if not seen by the feed for 40 days
        conn.execute(
            "UPDATE entries SET updated = updated - 40 * 86400 WHERE target IN (?, ?)",
            ("192.0.2.10", "192.0.2.12"),
        )
    removed = ok(run_cli("remove", "--zone", ZONE, "--source", "feed", "--older-than", "30d", db=db))
    assert "removed 1 entry" in removed.stdout
    assert [(t, s) for _, t, s, _, _ in rows(db)] == [("192.0.2.11", "feed"), ("192.0.2.12", "manual")]
    again = run_cli("remove", "--zone", ZONE, "--source", "feed", "--older-than", "30d", db=db)
    assert again.returncode == 1


def test_remove_address_covered_by_a_cidr(db: Path) -> None:
    ok(run_cli("add", "--zone", ZONE, "203.0.113.0/24", "--source", "trap:bounce", db=db))
    result = run_cli("remove", "203.0.113.9", db=db)
    assert result.returncode == 1
    assert "203.0.113.0/24" in result.stderr and "--exclude" in result.stderr
    assert "203.0.113.9" in result.stderr
    assert "Traceback" not in result.stderr
    assert count(db) == 1
    assert run_cli("remove", "--source", "manual", "203.0.113.0/24", db=db).returncode == 1
    ok(run_cli("remove", "--source", "trap", "203.0.113.0/24", db=db))
    assert count(db) == 0


# --- import -----------------------------------------------------------------------------------


def test_import_ip4set_defaults_and_values(db: Path, tmp_path: Path) -> None:
    data = write_lines(
        tmp_path / "list.ip4set",
        "# a comment",
        ":4:default for $",
        "192.0.2.1",
        "192.0.2.2 :3:own text for $",
        "192.0.2.3 :5",
        "192.0.2.4 :6:",
        "10.20",
        "!192.0.2.5",
    )
    result = ok(run_cli("import", "--zone", ZONE, str(data), db=db))
    assert "imported 6 entries" in result.stdout
    default = "default for $"
    assert rows(db) == sorted(
        [
            (ZONE, "!192.0.2.5", "import", "-", ""),
            (ZONE, "10.20.0.0/16", "import", code(4), default),
            (ZONE, "192.0.2.1", "import", code(4), default),
            (ZONE, "192.0.2.2", "import", code(3), "own text for $"),
            (ZONE, "192.0.2.3", "import", code(5), default),
            (ZONE, "192.0.2.4", "import", code(6), ""),
        ]
    )
    status, got = check_json(db, "192.0.2.2", "192.0.2.4", "10.20.30.40")
    assert status == 0
    assert got["192.0.2.2"][ZONE]["txt"] == [fill("own text for $", "192.0.2.2")]
    assert got["192.0.2.4"][ZONE]["codes"] == [code(6)] and got["192.0.2.4"][ZONE]["txt"] == []
    assert got["10.20.30.40"][ZONE]["txt"] == [fill(default, "10.20.30.40")]


def test_import_bad_line_imports_nothing_unless_skip_bad(db: Path, tmp_path: Path) -> None:
    data = write_lines(tmp_path / "bad.ip4set", "192.0.2.1", "192.0.2.2 :3:x", "192.0.2.300", "192.0.2.4")
    result = run_cli("import", "--zone", ZONE, str(data), db=db)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{data}:3:" in result.stderr and "192.0.2.300" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("dnsbl: error: ")
    assert count(db) == 0
    skipped = ok(run_cli("import", "--zone", ZONE, "--skip-bad", str(data), db=db))
    assert f"{data}:3:" in skipped.stderr and "1 bad line" in skipped.stdout
    assert [t for _, t, _, _, _ in rows(db)] == ["192.0.2.1", "192.0.2.2", "192.0.2.4"]


def test_import_type_from_extension_or_flag(db: Path, tmp_path: Path) -> None:
    trie = write_lines(tmp_path / "six.ip6trie", ":3:v6 $", "2001:db8:1::/48", "2001:db8:2::1 :4:one")
    ok(run_cli("import", "--zone", ZONE, "--source", "trie", str(trie), db=db))
    plain = write_lines(tmp_path / "list.txt", "192.0.2.1  # a comment", "2001:db8:3::/64", "; nothing")
    ok(
        run_cli(
            "import",
            "--zone",
            ZONE,
            "--source",
            "plain",
            "--code",
            "9",
            "--reason",
            "plain $",
            str(plain),
            db=db,
        )
    )
    mixed = write_lines(tmp_path / "mixed.data", "2001:db8:4::1", "192.0.2.2")
    as_ip4set = run_cli("import", "--zone", ZONE, "--source", "mixed", str(mixed), db=db)
    assert as_ip4set.returncode == 2 and f"{mixed}:1:" in as_ip4set.stderr
    ok(run_cli("import", "--zone", ZONE, "--source", "mixed", "--type", "plain", str(mixed), db=db))
    assert rows(db) == sorted(
        [
            (ZONE, "2001:db8:1::/48", "trie", code(3), "v6 $"),
            (ZONE, "2001:db8:2::1", "trie", code(4), "one"),
            (ZONE, "192.0.2.1", "plain", code(9), "plain $"),
            (ZONE, "2001:db8:3::/64", "plain", code(9), "plain $"),
            (ZONE, "2001:db8:4::1", "mixed", code(2), ""),
            (ZONE, "192.0.2.2", "mixed", code(2), ""),
        ]
    )


def test_import_stdin_and_gzip(db: Path, tmp_path: Path) -> None:
    ok(
        run_cli(
            "import",
            "--zone",
            ZONE,
            "--source",
            "stdin",
            "-",
            db=db,
            input="192.0.2.1\n192.0.2.2 :3:piped $\n",
        )
    )
    packed = tmp_path / "feed.ip4set.gz"
    packed.write_bytes(gzip.compress(b":5:zipped $\n198.51.100.1\n198.51.100.0/24 :6\n"))
    ok(run_cli("import", "--zone", ZONE, "--source", "gz", str(packed), db=db))
    no_suffix = tmp_path / "feed.ip4set"  # gzip is told by its magic number
    no_suffix.write_bytes(gzip.compress(b"203.0.113.1 :7:\n"))
    ok(run_cli("import", "--zone", ZONE, "--source", "magic", str(no_suffix), db=db))
    assert rows(db) == sorted(
        [
            (ZONE, "192.0.2.1", "stdin", code(2), ""),
            (ZONE, "192.0.2.2", "stdin", code(3), "piped $"),
            (ZONE, "198.51.100.1", "gz", code(5), "zipped $"),
            (ZONE, "198.51.100.0/24", "gz", code(6), "zipped $"),
            (ZONE, "203.0.113.1", "magic", code(7), ""),
        ]
    )


def broken_gzip(kind: str) -> bytes:
    packed = gzip.compress("".join(f"198.51.100.{i}\n" for i in range(256)).encode() * 20)
    if kind == "truncated":
        return packed[: len(packed) // 2]
    damaged = bytearray(packed)
    damaged[20:60] = b"\xff" * 40  # inside the deflate stream, after the 10-byte header
    return bytes(damaged)


@pytest.mark.parametrize("kind", ["truncated", "corrupt"])
def test_import_broken_gzip_is_an_error(db: Path, tmp_path: Path, kind: str) -> None:
    ok(run_cli("add", "--zone", ZONE, "192.0.2.1", db=db))
    data = tmp_path / f"{kind}.ip4set.gz"
    data.write_bytes(broken_gzip(kind))
    result = run_cli("import", str(data), db=db)
    assert_one_line_error(result, str(data))
    assert count(db) == 1


def test_import_replace_swaps_one_source(db: Path, tmp_path: Path) -> None:
    ok(run_cli("add", "--zone", ZONE, "192.0.2.1", db=db))
    ok(run_cli("add", "--zone", ZONE, "192.0.2.9", "--source", "feedback", db=db))
    first = write_lines(
        tmp_path / "first.ip4set", "192.0.2.1", "192.0.2.2", "192.0.2.3 :3:a", "192.0.2.3 :4:b"
    )
    ok(run_cli("import", "--source", "feed", str(first), db=db))
    assert [s for _, t, s, _, _ in rows(db) if t == "192.0.2.3"] == ["feed", "feed:2"]
    bad = write_lines(tmp_path / "bad.ip4set", "192.0.2.3 :5:c", "192.0.2.400")
    before = rows(db)
    assert run_cli("import", "--replace", "--source", "feed", str(bad), db=db).returncode == 2
    assert rows(db) == before  # the swap is all or nothing
    second = write_lines(tmp_path / "second.ip4set", "192.0.2.3 :5:c", "192.0.2.4")
    ok(run_cli("import", "--replace", "--source", "feed", str(second), db=db))
    assert rows(db) == sorted(
        [
            (ZONE, "192.0.2.1", "manual", code(2), ""),
            (ZONE, "192.0.2.9", "feedback", code(2), ""),
            (ZONE, "192.0.2.3", "feed", code(5), "c"),
            (ZONE, "192.0.2.4", "feed", code(2), ""),
        ]
    )


def test_import_default_source_and_repeated_address(db: Path, tmp_path: Path) -> None:
    data = write_lines(tmp_path / "twice.ip4set", "192.0.2.1 :3:first $", "192.0.2.1 :4:second $")
    ok(run_cli("import", "--zone", ZONE, str(data), db=db))
    assert {s.split(":")[0] for _, _, s, _, _ in rows(db)} == {"import"}
    status, got = check_json(db, "192.0.2.1")
    assert status == 0
    assert sorted(got["192.0.2.1"][ZONE]["codes"]) == [code(3), code(4)]
    texts = sorted(got["192.0.2.1"][ZONE]["txt"])
    assert texts == sorted(fill(t, "192.0.2.1") for t in ("first $", "second $"))


def test_csv_round_trip(db: Path, tmp_path: Path) -> None:
    ok(run_cli("add", "--zone", ZONE, "192.0.2.0/24", "2001:db8::/48", "--reason", 'a "quoted", $', db=db))
    ok(
        run_cli(
            "add",
            "--zone",
            ZONE,
            "198.51.100.10-198.51.100.20",
            "--code",
            "127.0.0.9",
            "--expires",
            "2031-05-06T07:08:09Z",
            "--source",
            "trap:bounce",
            db=db,
        )
    )
    ok(run_cli("add", "--zone", ZONE, "--exclude", "192.0.2.7", db=db))
    ok(run_cli("add", "--zone", ZONE, "192.0.2.7", "--source", "trap", "--reason", "", db=db))
    exported = tmp_path / "list.csv"
    ok(run_cli("export", "--format", "csv", "-o", str(exported), db=db))
    lines = exported.read_text().splitlines()
    assert len(lines) == 1 + count(db)
    assert "198.51.100.10-198.51.100.20,127.0.0.9,,trap:bounce,2031-05-06T07:08:09Z" in lines
    other = tmp_path / "other.sqlite"
    ok(run_cli("import", "--zone", ZONE, str(exported), db=other))
    again = ok(run_cli("export", "--format", "csv", db=other)).stdout
    assert again == exported.read_text()


def test_csv_source_flag_wins_and_replace_needs_it(db: Path, tmp_path: Path) -> None:
    data = write_lines(
        tmp_path / "rows.csv", "target,code,reason,source,expires", "192.0.2.1,3,x $,a,", "192.0.2.2,,,b,"
    )
    refused = run_cli("import", "--zone", ZONE, "--replace", str(data), db=db)
    assert_one_line_error(refused, "--source")
    ok(run_cli("import", "--zone", ZONE, str(data), db=db))
    ok(run_cli("import", "--zone", ZONE, "--source", "feed", str(data), db=db))
    assert rows(db) == sorted(
        [
            (ZONE, "192.0.2.1", "a", code(3), "x $"),
            (ZONE, "192.0.2.2", "b", code(2), ""),
            (ZONE, "192.0.2.1", "feed", code(3), "x $"),
            (ZONE, "192.0.2.2", "feed", code(2), ""),
        ]
    )


def test_csv_bad_row_names_file_and_line(db: Path, tmp_path: Path) -> None:
    data = write_lines(
        tmp_path / "rows.csv",
        "target,code,reason,source,expires",
        "192.0.2.1,2,x,a,",
        "192.0.2.2,127.0.0.1,x,a,",
        "192.0.2.3,3,x,a,",
    )
    result = run_cli("import", "--zone", ZONE, str(data), db=db)
    assert result.returncode == 2 and f"{data}:3:" in result.stderr and "127.0.0.1" in result.stderr
    assert count(db) == 0


# --- export -----------------------------------------------------------------------------------


@pytest.fixture
def both(db: Path) -> Path:
    ok(run_cli("add", "--zone", ZONE, "192.0.2.0/24", "--reason", "net $", db=db))
    ok(run_cli("add", "--zone", ZONE, "198.51.100.7", "--code", "5", "--reason", "one $", db=db))
    ok(run_cli("add", "--zone", ZONE, "2001:db8::/64", "--code", "3", db=db))
    return db


def test_export_output_is_written_atomically(both: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "zone.data"
    target.write_text("old contents\n")
    old_inode = target.stat().st_ino
    ok(run_cli("export", "-o", str(target), db=both))
    assert target.stat().st_ino != old_inode  # a new file renamed over the old, not rewritten in place
    assert target.read_text() == ok(run_cli("export", db=both)).stdout
    assert os.listdir(out_dir) == ["zone.data"]
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode & 0o444 == 0o444, oct(mode)
    before = target.read_text()
    refused = run_cli("export", "--format", "ip6trie", "-o", str(target), db=both)
    assert_one_line_error(refused, "combined")
    assert target.read_text() == before and os.listdir(out_dir) == ["zone.data"]
    assert not list(tmp_path.rglob(".dnsbl-export-*"))


@pytest.mark.parametrize("where", ["missing/zone.data", "."])
def test_export_to_an_unwritable_path_is_an_error(both: Path, tmp_path: Path, where: str) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    path = out_dir / where  # a folder that is not there, or a folder itself
    result = run_cli("export", "-o", str(path), db=both)
    assert_one_line_error(result, str(path))
    assert os.listdir(out_dir) == [] and not list(tmp_path.rglob(".dnsbl-export-*"))


def test_export_refuses_the_other_family(both: Path) -> None:
    assert_one_line_error(run_cli("export", "--format", "ip6trie", db=both), "combined")
    refused = run_cli("export", "--format", "ip4set", db=both)
    assert_one_line_error(refused, "IPv6")
    ok(run_cli("remove", "2001:db8::/64", db=both))
    ip4set = ok(run_cli("export", "--format", "ip4set", db=both)).stdout.splitlines()
    assert "192.0.2.0/24 :127.0.0.2:net $" in ip4set and "198.51.100.7 :127.0.0.5:one $" in ip4set


def test_export_ip6trie_of_an_ipv6_zone(db: Path) -> None:
    ok(run_cli("add", "--zone", "six.example", "2001:db8::/64", "--code", "3", "--reason", "v6 $", db=db))
    lines = ok(run_cli("export", "--format", "ip6trie", db=db)).stdout.splitlines()
    assert "2001:db8::/64 :127.0.0.3:v6 $" in lines


def test_export_bind(both: Path) -> None:
    serial = json.loads(ok(run_cli("stats", "--json", db=both)).stdout)[0]["serial"]
    lines = ok(run_cli("export", "--format", "bind", db=both)).stdout.splitlines()
    soa = [line for line in lines if " SOA " in line]
    assert len(soa) == 1 and soa[0].startswith("@ SOA ") and f" {serial} " in soa[0]
    assert f"$ORIGIN {ZONE}." in lines
    assert "*.2.0.192 A 127.0.0.2" in lines
    assert "7.100.51.198 A 127.0.0.5" in lines
    assert f'7.100.51.198 TXT "{fill("one $", "198.51.100.7")}"' in lines
    assert "*.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2 A 127.0.0.3" in lines
    assert not any(line.startswith(("192.", "*.192.")) for line in lines)


def test_export_combined(both: Path) -> None:
    lines = ok(run_cli("export", db=both)).stdout.splitlines()
    datasets = [line.split()[1].split(":")[0] for line in lines if line.startswith("$DATASET ")]
    assert datasets == ["ip4set", "ip6trie"]
    v4_at, v6_at = (
        next(i for i, line in enumerate(lines) if line.startswith(f"$DATASET {d}")) for d in datasets
    )
    assert any(line.startswith("127.0.0.2 :127.0.0.2:") for line in lines[v4_at:v6_at])
    assert "192.0.2.0/24 :127.0.0.2:net $" in lines[v4_at:v6_at]
    assert "2001:db8::/64 :127.0.0.3:" in lines[v6_at:]


# --- allowlist --------------------------------------------------------------------------------


def test_allowlist(db: Path) -> None:
    ok(run_cli("add", "--zone", ZONE, "198.51.100.1", db=db))
    ok(run_cli("add", "--zone", OTHER, "198.51.100.1", db=db))
    builtins = json.loads(ok(run_cli("allowlist", "list", "--json", db=db)).stdout)
    assert all(r["builtin"] and r["zone"] is None for r in builtins)
    texts = {r["target"] for r in builtins}
    assert {"10.0.0.0/8", "fc00::/7", "100.64.0.0/10"} <= texts and "192.0.2.0/24" not in texts
    ok(run_cli("allowlist", "add", "192.0.2.0/24", "--reason", "docs", db=db))
    ok(run_cli("allowlist", "add", "--zone", OTHER, "2001:db8::/32", "--reason", "other only", db=db))

    def admin(*args: str) -> list[tuple[str, str | None, str]]:
        listed = json.loads(ok(run_cli("allowlist", "list", "--json", *args, db=db)).stdout)
        return sorted((r["target"], r["zone"], r["reason"]) for r in listed if not r["builtin"])

    assert admin() == [("192.0.2.0/24", None, "docs"), ("2001:db8::/32", OTHER, "other only")]
    assert admin("--zone", OTHER) == [("192.0.2.0/24", None, "docs"), ("2001:db8::/32", OTHER, "other only")]
    assert admin("--zone", ZONE) == [("192.0.2.0/24", None, "docs")]
    assert run_cli("allowlist", "remove", "2001:db8::/32", db=db).returncode == 1  # not an every-zone range
    ok(run_cli("allowlist", "remove", "--zone", OTHER, "2001:db8::/32", db=db))
    ok(run_cli("allowlist", "remove", "192.0.2.0/24", db=db))
    assert admin() == []
    builtin = run_cli("allowlist", "remove", "10.0.0.0/8", db=db)
    assert builtin.returncode == 1 and "built in" in builtin.stderr
    after = json.loads(ok(run_cli("allowlist", "list", "--json", db=db)).stdout)
    assert "10.0.0.0/8" in {r["target"] for r in after}


# --- expire and stats -------------------------------------------------------------------------


def test_expired_entries_stop_answering_before_the_purge(db: Path, serve: Any) -> None:
    ok(run_cli("add", "--zone", ZONE, "192.0.2.1", "--reason", "stays $", db=db))
    server = serve()
    ok(run_cli("add", "--zone", ZONE, "192.0.2.2", "--expires", "3s", db=db))
    name = qname("192.0.2.2", ZONE)
    assert poll(lambda: rcode(server.ask(name)) == "NOERROR")
    serial = server.ask(ZONE, "SOA").answer[0][0].serial
    assert poll(lambda: rcode(server.ask(name)) == "NXDOMAIN", timeout=15)
    assert count(db) == 2  # nobody purged it: the server stopped answering on its own
    assert poll(lambda: server.ask(ZONE, "SOA").answer[0][0].serial > serial)
    purged = ok(run_cli("expire", "--json", db=db))
    assert json.loads(purged.stdout) == {ZONE: 1}
    assert [t for _, t, _, _, _ in rows(db)] == ["192.0.2.1"]
    assert json.loads(ok(run_cli("expire", "--json", db=db)).stdout) == {ZONE: 0}
    stays = server.ask(qname("192.0.2.1", ZONE), "TXT")
    assert txt_strings(stays) == [fill("stays $", "192.0.2.1")]


def test_stats_counts_per_source_and_serial_moves(db: Path) -> None:
    ok(run_cli("add", "--zone", ZONE, "192.0.2.1", "192.0.2.0/28", db=db))
    ok(run_cli("add", "--zone", ZONE, "--exclude", "192.0.2.5", db=db))
    ok(
        run_cli(
            "add",
            "--zone",
            ZONE,
            "198.51.100.1",
            "2001:db8::1",
            "198.51.100.2",
            "--source",
            "trap:bounce",
            db=db,
        )
    )
    [before] = json.loads(ok(run_cli("stats", "--json", db=db)).stdout)
    assert before["zone"] == ZONE and before["entries"] == 6
    assert sorted((s["source"], s["listings"], s["exclusions"], s["expired"]) for s in before["sources"]) == [
        ("manual", 2, 1, 0),
        ("trap:bounce", 3, 0, 0),
    ]
    ok(run_cli("remove", "--source", "trap", "198.51.100.2", db=db))
    [after] = json.loads(ok(run_cli("stats", "--json", db=db)).stdout)
    assert after["serial"] > before["serial"] and after["entries"] == 5
    assert ("trap:bounce", 2) in {(s["source"], s["listings"]) for s in after["sources"]}


# --- several writers --------------------------------------------------------------------------


def test_concurrent_writers_lose_nothing(db: Path, serve: Any) -> None:
    server = serve("--zone", ZONE)  # creates the zone: no demo data
    per_writer = 40
    writers = {"w1": "198.51.100", "w2": "203.0.113"}
    command = shlex.join([sys.executable, "-m", "dnsbl_server", "add", "--zone", ZONE])
    env = dict(os.environ, DNSBL_DB=str(db))
    loops = [
        subprocess.Popen(
            [
                "bash",
                "-c",
                f"for i in $(seq 1 {per_writer}); do {command} --source {source} {prefix}.$i "
                f'|| echo "add {prefix}.$i failed: $?" >&2; done',
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for source, prefix in writers.items()
    ]
    outputs = [loop.communicate(timeout=120) for loop in loops]
    for loop, (out, err) in zip(loops, outputs, strict=True):
        assert loop.returncode == 0
        assert "locked" not in err.lower() and err == "", err
        assert out.count(f"1 entry written to {ZONE}") == per_writer
    expected = sorted(
        (ZONE, f"{prefix}.{i}", source, code(2), "")
        for source, prefix in writers.items()
        for i in range(1, per_writer + 1)
    )
    assert rows(db) == expected  # every one landed, none twice
    names = [qname(target, ZONE) for _, target, _, _, _ in expected]
    assert poll(lambda: all(rcode(server.ask(name)) == "NOERROR" for name in names))
    assert "locked" not in server.log.lower()
