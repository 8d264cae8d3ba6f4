"""The trap ingester's first slice: a Maildir of real trap mail in, listings and evidence out."""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest
from conftest import poll, run_cli, values

from dnsbl_server.policy import Hit, Policy
from dnsbl_server.traps import classify, parse_message

CORPUS = Path(__file__).parent / "data" / "bounces" / "sisimai-set-of-emails"
ZONE = "bl.example.org"
DAY = 86400


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    box = tmp_path / "Maildir"
    (box / "new").mkdir(parents=True)
    for source in sorted(CORPUS.glob("*.eml")):
        shutil.copy(source, box / "new" / source.name)
    return box


def entries(db: Path) -> dict[tuple[str, str], tuple[int, float]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT target, source, code, expires FROM entries WHERE source LIKE 'trap:%'")
        return {(t, s): (c & 0xFF, e) for t, s, c, e in rows}


def test_maildir_run_lists_relays_by_kind_and_moves_messages(maildir: Path, db: Path) -> None:
    kinds = {p.name: classify(parse_message(p.read_bytes())) for p in (maildir / "new").iterdir()}
    result = run_cli("ingest", "--once", "--zone", ZONE, "--maildir", str(maildir), db=db)
    assert result.returncode == 0, result.stderr
    assert f"{len(kinds)} message(s) read" in result.stdout
    assert not list((maildir / "new").iterdir())
    assert sorted(p.name.split(":")[0] for p in (maildir / "cur").iterdir()) == sorted(kinds)
    listed = entries(db)
    assert listed, result.stdout
    policy = Policy()
    for (_target, source), (code, expires) in listed.items():
        kind = source.split(":")[1]
        assert code == policy.codes[kind] and expires is not None
    found_kinds = {str(k) for k in kinds.values() if k is not None}
    assert {s.split(":")[1] for _, s in listed} <= found_kinds | {"autoreply"}


def test_rerun_and_redelivery_count_once(maildir: Path, db: Path) -> None:
    assert run_cli("ingest", "--once", "--zone", ZONE, "--maildir", str(maildir), db=db).returncode == 0
    before = entries(db)
    with sqlite3.connect(db) as conn:
        hits = conn.execute("SELECT count(*) FROM hits").fetchone()[0]
    again = run_cli("ingest", "--once", "--zone", ZONE, "--maildir", str(maildir), db=db)
    assert "0 message(s) read" in again.stdout
    for done in list((maildir / "cur").iterdir())[:5]:  # the same messages delivered again
        os.replace(done, maildir / "new" / done.name.split(":")[0])
    redo = run_cli("ingest", "--once", "--zone", ZONE, "--maildir", str(maildir), db=db)
    assert redo.returncode == 0 and "5 message(s) read" in redo.stdout
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM hits").fetchone()[0] == hits
    assert entries(db).keys() == before.keys()


def test_allowlist_and_admin_entries_are_respected(maildir: Path, db: Path, tmp_path: Path) -> None:
    probe = tmp_path / "probe.sqlite"
    assert run_cli("ingest", "--once", "--zone", ZONE, "--maildir", str(maildir), db=probe).returncode == 0
    relays = sorted({t for t, _ in entries(probe)})
    for done in (maildir / "cur").iterdir():
        os.replace(done, maildir / "new" / done.name.split(":")[0])
    kept_off, admin = relays[0], relays[1]
    assert run_cli("add", "--zone", ZONE, admin, "--code", "9", "--reason", "by hand", db=db).returncode == 0
    assert run_cli("allowlist", "add", kept_off, db=db).returncode == 0
    assert run_cli("ingest", "--once", "--zone", ZONE, "--maildir", str(maildir), db=db).returncode == 0
    assert kept_off not in {t for t, _ in entries(db)}
    with sqlite3.connect(db) as conn:
        manual = conn.execute("SELECT code, reason, expires FROM entries WHERE source = 'manual'").fetchall()
    assert manual == [(0x7F000009, "by hand", None)]


def test_listing_is_served_with_the_backscatter_reason(maildir: Path, db: Path, serve) -> None:  # type: ignore[no-untyped-def]
    assert run_cli("add", "--zone", ZONE, "192.0.2.200", db=db).returncode == 0
    server = serve()
    assert run_cli("ingest", "--once", "--zone", ZONE, "--maildir", str(maildir), db=db).returncode == 0
    target, source = sorted(entries(db))[0]
    name = ".".join(reversed(target.split("."))) + "." + ZONE
    texts: list[str] = []  # the TXT of the answer that showed it served: the one checked below
    assert poll(lambda: texts.extend(values(server.ask(name, "TXT"), "TXT")) or texts, timeout=10)
    text = texts[0]
    assert f"Backscatter ({source.split(':')[1]})" in text and target in text


def test_a_locked_maildir_is_refused(maildir: Path, db: Path) -> None:
    with open(maildir / ".dnsbl-ingest.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = run_cli("ingest", "--once", "--zone", ZONE, "--maildir", str(maildir), db=db)
    assert result.returncode == 2 and "another ingester" in result.stderr
    assert len(list((maildir / "new").iterdir())) == len(list(CORPUS.glob("*.eml")))


def test_policy_codes_sources_and_expiry() -> None:
    policy = Policy(v6_prefix=64)
    hit = Hit(1_800_000_000.0, 4, 0xC0000201, "challenge", "<id>")
    assert policy.source("challenge") == "trap:autoreply" and policy.code("challenge") == 0x7F000003
    assert policy.code("callout") == 0x7F000004 and policy.code("bounce") == 0x7F000002
    assert policy.expires(hit) == hit.at + 28 * DAY
    v6 = policy.target(Hit(0.0, 6, 0x20010DB8 << 96 | 0x1234, "bounce", "<id>"))
    assert (v6.lo, v6.hi) == (0x20010DB8 << 96, (0x20010DB8 << 96) | ((1 << 64) - 1))
    assert "Backscatter (challenge) to a trap on 2027-01-15" in policy.reason(hit)


def test_check_shows_the_evidence_without_the_trap(maildir: Path, db: Path) -> None:
    import json

    assert run_cli("ingest", "--once", "--zone", ZONE, "--maildir", str(maildir), db=db).returncode == 0
    target, source = sorted(entries(db))[0]
    result = run_cli("check", "--json", target, db=db)
    assert result.returncode == 0
    [zone] = json.loads(result.stdout)[0]["zones"]
    kinds = {h["kind"].replace("challenge", "autoreply") for h in zone["evidence"]}
    assert zone["evidence"] and kinds >= {source.split(":")[1]}
    with sqlite3.connect(db) as conn:
        traps = {t for (t,) in conn.execute("SELECT trap FROM hits WHERE ip = ?", (target,)) if t}
    assert all(trap not in result.stdout for trap in traps)


def test_jsonl_feed_reads_on_from_where_it_stopped(tmp_path: Path, db: Path) -> None:
    feed = tmp_path / "hits.jsonl"
    feed.write_text(
        '{"ts": "2026-11-03T10:22:31Z", "ip": "198.51.100.7", "kind": "bounce", "trap": "t@trap.example"}\n'
        '{"ts": 1793000000, "ip": "2001:db8::7", "kind": "callout"}\n'
        "not json\n"
        '{"ip": "198.51.100.8"}\n'
        '{"ts": 1793000000, "ip": "::ffff:198.51.100.9", "kind": "challenge"}\n'
    )
    first = run_cli("ingest", "--once", "--zone", ZONE, "--jsonl", str(feed), db=db)
    assert first.returncode == 0, first.stderr
    assert "hits.jsonl:+3: not JSON" in first.stdout and "hits.jsonl:+4: needs" in first.stdout
    listed = entries(db)
    assert listed[("198.51.100.7", "trap:bounce")][0] == 2
    assert listed[("2001:db8::7", "trap:callout")][0] == 4
    assert (
        listed[("198.51.100.9", "trap:autoreply")][0] == 3
    )  # mapped IPv6 is IPv4; challenge counts as autoreply
    stamped = datetime.fromisoformat("2026-11-03T10:22:31+00:00").timestamp()
    assert listed[("198.51.100.7", "trap:bounce")][1] == pytest.approx(stamped + 28 * DAY)
    with open(feed, "a") as handle:
        handle.write(
            '{"ts": 1794000000, "ip": "198.51.100.7", "kind": "bounce"}\n{"ip": "198.51.100.10", "ki'
        )
    second = run_cli("ingest", "--once", "--zone", ZONE, "--jsonl", str(feed), db=db)
    assert "1 message(s) read" in second.stdout  # old lines not re-read; the half-written one waits
    assert entries(db)[("198.51.100.7", "trap:bounce")][1] == pytest.approx(1794000000.0 + 28 * DAY)


def test_mbox_messages_appended_are_read_once(tmp_path: Path, db: Path) -> None:
    mbox = tmp_path / "trap.mbox"
    samples = sorted(CORPUS.glob("lhost-*.eml"))[:6]
    first, later = samples[:4], samples[4:]

    def append(paths: list[Path]) -> None:
        with open(mbox, "ab") as handle:
            for path in paths:
                body = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\nFrom ", b"\n>From ")
                handle.write(b"From MAILER-DAEMON Sat Nov 28 00:00:00 2026\n" + body.rstrip(b"\n") + b"\n\n")

    append(first)
    run1 = run_cli("ingest", "--once", "--zone", ZONE, "--mbox", str(mbox), db=db)
    assert run1.returncode == 0 and "4 message(s) read" in run1.stdout, run1.stdout + run1.stderr
    run2 = run_cli("ingest", "--once", "--zone", ZONE, "--mbox", str(mbox), db=db)
    assert "0 message(s) read" in run2.stdout
    append(later)
    run3 = run_cli("ingest", "--once", "--zone", ZONE, "--mbox", str(mbox), db=db)
    assert "2 message(s) read" in run3.stdout


def test_header_values_are_stored_printable() -> None:
    from dnsbl_server.ingest import printable

    assert printable("<a\x00b\x1b[31m@x>\r\n\tmore") == "<a\ufffdb\ufffd[31m@x> more"
    assert printable(None) == "" and len(printable("x" * 2000)) == 500
