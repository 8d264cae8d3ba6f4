"""The trap ingester on its schedule: `dnsbl ingest` without --once, and `dnsbl serve` with an [ingest]
table, as real processes over real Maildirs and databases."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import poll, rcode, run_cli, values

from dnsbl_server.config import from_file
from dnsbl_server.errors import ConfigError

BOUNCES = Path(__file__).parent / "data" / "bounces"
ZONE = "bl.example.org"
# Real bounces whose relay (LABELS.tsv, first external hop) is a public address.
FIRST = ("bounce_email/bounces/tt_bounce_03.txt", "80.232.168.212")
SECOND = ("bounce_email/bounces/tt_bounce_15.txt", "82.135.221.93")
pytestmark = pytest.mark.slow


def deliver(maildir: Path, corpus_file: str) -> None:
    """As an MTA does: write in tmp/, then rename into new/."""
    (maildir / "tmp").mkdir(parents=True, exist_ok=True)
    (maildir / "new").mkdir(exist_ok=True)
    name = f"{time.time_ns()}.{os.getpid()}.trap"
    shutil.copy(BOUNCES / corpus_file, maildir / "tmp" / name)
    os.replace(maildir / "tmp" / name, maildir / "new" / name)


def config(tmp_path: Path, db: Path, body: str) -> Path:
    path = tmp_path / "dnsbl.toml"
    path.write_text(f'db = "{db}"\nzones = ["{ZONE}"]\n{body}')
    return path


def trap_sources(db: Path) -> dict[str, str]:
    if not db.exists():  # the ingester has not started yet
        return {}
    try:
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT target, source FROM entries WHERE source LIKE 'trap:%'").fetchall()
    except sqlite3.OperationalError:  # still creating the schema
        return {}
    return dict(rows)


class Ingester:
    """A scheduled `dnsbl ingest` process."""

    def __init__(self, *args: str) -> None:
        self.log_file = tempfile.NamedTemporaryFile("w+", prefix="dnsbl-ingest-", suffix=".log")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dnsbl_server", "ingest", *args],
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k != "DNSBL_DB"},
        )

    @property
    def log(self) -> str:
        return Path(self.log_file.name).read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def ingesters() -> Iterator[list[Ingester]]:
    started: list[Ingester] = []
    yield started
    for ingester in started:
        ingester.stop()
        ingester.log_file.close()


def test_scheduled_ingest_reads_new_mail_at_every_interval(
    tmp_path: Path, db: Path, ingesters: list[Ingester]
) -> None:
    maildir = tmp_path / "Maildir"
    deliver(maildir, FIRST[0])
    cfg = config(tmp_path, db, f'[ingest]\nzone = "{ZONE}"\ninterval = "1s"\nmaildirs = ["{maildir}"]\n')
    ingester = Ingester("--config", str(cfg))
    ingesters.append(ingester)
    assert poll(lambda: FIRST[1] in trap_sources(db), timeout=30), ingester.log
    deliver(maildir, SECOND[0])  # arrives while it runs: the next run takes it
    assert poll(lambda: SECOND[1] in trap_sources(db), timeout=30), ingester.log
    assert not list((maildir / "new").iterdir())
    assert ingester.stop() == 0
    assert "1 message(s) read; backscatter: bounce 1; listed 1" in ingester.log
    assert trap_sources(db) == {FIRST[1]: "trap:bounce", SECOND[1]: "trap:bounce"}


def test_serve_with_an_ingest_table_lists_trap_mail_in_dns(tmp_path: Path, db: Path, serve) -> None:  # type: ignore[no-untyped-def]
    maildir = tmp_path / "Maildir"
    (maildir / "new").mkdir(parents=True)
    cfg = config(tmp_path, db, f'[ingest]\ninterval = "1s"\nmaildirs = ["{maildir}"]\n')
    server = serve("--config", str(cfg))
    name = ".".join(reversed(FIRST[1].split("."))) + "." + ZONE
    assert rcode(server.ask(name)) == "NXDOMAIN"
    deliver(maildir, FIRST[0])
    assert poll(lambda: values(server.ask(name), "A") == ["127.0.0.2"], timeout=30), server.log
    # the TXT may come from the other worker, which can serve the commit one follow round later
    txt: list[str] = []
    assert poll(lambda: txt.extend(values(server.ask(name, "TXT"), "TXT")) or txt, timeout=10)
    assert "Backscatter (bounce) to a trap on" in txt[0]
    assert "trap ingester: listing into bl.example.org" in server.log


def test_housekeeping_purges_expired_listings_and_old_evidence(
    tmp_path: Path, db: Path, ingesters: list[Ingester]
) -> None:
    old = time.time() - 100 * 86400  # past the 28-day listing and the 90-day evidence retention
    recent = time.time() - 86400
    feed = tmp_path / "feed.jsonl"
    feed.write_text(
        json.dumps({"ts": old, "ip": "93.184.216.34", "kind": "bounce"})
        + "\n"
        + json.dumps({"ts": recent, "ip": "93.184.216.35", "kind": "callout"})
        + "\n"
    )
    assert run_cli("ingest", "--once", "--zone", ZONE, "--jsonl", str(feed), db=db).returncode == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM hits").fetchone()[0] == 2
    maildir = tmp_path / "Maildir"
    (maildir / "new").mkdir(parents=True)
    cfg = config(tmp_path, db, f'[ingest]\nzone = "{ZONE}"\nmaildirs = ["{maildir}"]\n')
    ingester = Ingester("--config", str(cfg))
    ingesters.append(ingester)

    def remaining() -> tuple[list[str], list[str]]:
        with sqlite3.connect(db) as conn:
            hits = [r[0] for r in conn.execute("SELECT ip FROM hits")]
            listed = [r[0] for r in conn.execute("SELECT target FROM entries WHERE source LIKE 'trap:%'")]
        return hits, listed

    assert poll(lambda: remaining() == (["93.184.216.35"], ["93.184.216.35"]), timeout=30), (
        remaining(),
        ingester.log,
    )
    assert "housekeeping: purged 1 expired entries, forgot 1 hits older than 90 days" in ingester.log


def test_an_unreadable_source_is_reported_and_the_others_still_run(
    tmp_path: Path, db: Path, ingesters: list[Ingester]
) -> None:
    maildir = tmp_path / "Maildir"
    deliver(maildir, FIRST[0])
    missing = tmp_path / "no-such-maildir"
    result = run_cli(
        "ingest", "--once", "--zone", ZONE, "--maildir", str(missing), "--maildir", str(maildir), db=db
    )
    assert result.returncode == 2
    assert f"{missing}: not a Maildir" in result.stderr
    assert FIRST[1] in trap_sources(db)


def test_ingest_config_errors_name_the_setting(tmp_path: Path) -> None:
    cases = {
        '[ingest]\nmaildir = ["/x"]\n': "unknown setting(s) maildir",
        '[ingest]\ninterval = "soon"\n': "interval: invalid duration",
        '[ingest]\nmaildirs = "/x"\nlisting_days = -1\n': "listing_days must be a non-negative number",
        '[ingest.smtpd]\nlisten = ["127.0.0.1:2525"]\n': "listen needs trap_domains",
        '[ingest.smtpd]\nlisten = ["nowhere"]\ntrap_domains = ["t.example"]\n': "invalid listen address",
    }
    for body, message in cases.items():
        path = tmp_path / "bad.toml"
        path.write_text(body)
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            from_file(path)


def test_ingest_without_a_source_is_an_error(db: Path) -> None:
    result = run_cli("ingest", "--zone", ZONE, db=db)
    assert result.returncode == 2
    assert "give a trap source" in result.stderr


def test_the_example_config_parses() -> None:
    settings, db = from_file(Path(__file__).parent.parent / "zones" / "dnsbl.toml")
    assert db and settings.ingest is not None and settings.ingest.has_sources
    assert settings.ingest.interval == 300 and settings.ingest.trap_domains == ("trap.example.org",)


def test_serve_runs_the_smtp_trap_listener_and_answers_its_hits(tmp_path: Path, db: Path, serve) -> None:  # type: ignore[no-untyped-def]
    cfg = config(
        tmp_path,
        db,
        '[ingest.smtpd]\nlisten = ["127.0.0.1:0"]\ntrap_domains = ["trap.example.org"]\n'
        'proxy_from = ["127.0.0.1/32"]\n',
    )
    server = serve("--config", str(cfg))
    found = poll(lambda: re.search(r"trap smtpd listening on 127\.0\.0\.1:(\d+)", server.log), timeout=20)
    assert found, server.log
    name = "77.100.51.198." + ZONE
    assert rcode(server.ask(name)) == "NXDOMAIN"
    with smtplib.SMTP() as client:  # a sender-verification callout, through the load balancer
        client.sock = socket.create_connection(("127.0.0.1", int(found.group(1))), timeout=10)
        client.sock.sendall(b"PROXY TCP4 198.51.100.77 192.0.2.1 40000 25\r\n")
        client.file = None
        assert client.getreply()[0] == 220
        client.ehlo("verifier.example")
        assert client.mail("<>")[0] == 250
        assert client.rcpt("nobody@trap.example.org")[0] == 250
        client.quit()
    assert poll(lambda: values(server.ask(name), "A") == ["127.0.0.4"], timeout=30), server.log
