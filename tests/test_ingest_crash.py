"""kill -9 of the ingester at random moments: no message lost, none counted twice (issue: "a run killed
at any point (kill -9) loses no message and counts none twice")."""

from __future__ import annotations

import contextlib
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

TEMPLATE = Path(__file__).parent / "data" / "bounces" / "bounce_email" / "bounces" / "tt_bounce_03.txt"
RELAY = b"80.232.168.212"  # the relay that LABELS.tsv gives for the template
MESSAGES = 1500
pytestmark = pytest.mark.slow


def fill(maildir: Path) -> set[str]:
    """MESSAGES distinct bounces, each from its own relay, each with its own Message-ID."""
    data = TEMPLATE.read_bytes()
    relays = set()
    (maildir / "cur").mkdir(parents=True)
    (maildir / "new").mkdir()
    for n in range(MESSAGES):
        relay = f"80.232.{n // 250}.{n % 250 + 1}"
        relays.add(relay)
        message = data.replace(RELAY, relay.encode()).replace(
            b"<receipt-110354846@apollo.lv>", f"<receipt-{n}@apollo.lv>".encode()
        )
        (maildir / "new" / f"{n:05d}.trap").write_bytes(message)
    return relays


def run(db: Path, maildir: Path, kill_after: float | None) -> int | None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dnsbl_server",
            "ingest",
            "--once",
            "--db",
            str(db),
            "--zone",
            "bl.example.org",
            "--maildir",
            str(maildir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE if kill_after is None else subprocess.DEVNULL,
    )
    if kill_after is None:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        return 0
    time.sleep(kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return None


def test_kill_9_at_random_moments_loses_nothing_and_counts_nothing_twice(tmp_path: Path) -> None:
    maildir, db = tmp_path / "Maildir", tmp_path / "list.sqlite"
    relays = fill(maildir)
    rng = random.Random(4)
    kills = 0
    while kills < 8 and list((maildir / "new").iterdir()):
        run(db, maildir, kill_after=rng.uniform(0.3, 2.0))  # start-up alone takes a few tenths
        kills += 1
    assert kills >= 2  # it was killed mid-run more than once
    run(db, maildir, kill_after=None)  # and one that finishes
    assert not list((maildir / "new").iterdir())
    assert len(list((maildir / "cur").iterdir())) == MESSAGES  # nothing lost on the way
    with contextlib.closing(sqlite3.connect(db)) as conn:
        hits = conn.execute("SELECT ip, count(*) FROM hits GROUP BY ip").fetchall()
        listed = {r[0] for r in conn.execute("SELECT target FROM entries WHERE source = 'trap:bounce'")}
    assert {ip for ip, _ in hits} == relays  # every message counted...
    assert {count for _, count in hits} == {1}  # ...once
    assert listed == relays
