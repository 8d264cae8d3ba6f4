"""kill -9 at random moments (README, "Data safety"): of the server while `dnsbl add`s commit, and of
`dnsbl import` of a big file. Never a committed change lost (an `add` that exited 0 is in the database
and served after a restart), never half an import (the zone has all of it or none of it). kill -9 of
the ingester: tests/test_ingest_crash.py.

Bounded in time: each test kills for at most about a minute on a busy 2-core machine.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import Server, poll, run_cli, values
from test_safety import ZONE, addresses, qname, write_plain

pytestmark = pytest.mark.slow


def dnsbl(*args: str, db: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, DNSBL_DB=str(db))
    command = [sys.executable, "-m", "dnsbl_server", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class Adder(threading.Thread):
    """`dnsbl add` of one address after another; one in four is itself killed at a random moment (no
    promise about it, but it must damage nothing). `committed`: those that exited 0."""

    def __init__(self, db: Path) -> None:
        super().__init__(daemon=True)
        self.db, self.committed, self.errors = db, list[str](), list[str]()
        self.stop = threading.Event()
        self.rng = random.Random(81)

    def run(self) -> None:
        for n, address in enumerate(addresses(100000, block=1)):
            if self.stop.is_set():
                return
            proc = dnsbl("add", "--zone", ZONE, "--source", "writer", "--code", "7", address, db=self.db)
            if n % 4 == 3:
                time.sleep(self.rng.uniform(0.0, 0.4))
                proc.kill()
            _, err = proc.communicate(timeout=60)
            if proc.returncode == 0:
                self.committed.append(address)
            elif proc.returncode != -signal.SIGKILL:
                self.errors.append(err.decode())


def stored(db: Path, source: str) -> set[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return {r[0] for r in conn.execute("SELECT target FROM entries WHERE source = ?", (source,))}


def kill_9(server: Server) -> None:
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=10)
    server.close()


def test_kill_9_of_the_server_while_adds_commit_loses_none(db: Path) -> None:
    assert run_cli("add", "--zone", ZONE, "10.255.0.1", db=db).returncode == 0
    adder, rng = Adder(db), random.Random(8)
    server = Server(["--db", str(db), "--workers", "2"])
    kills, deadline = 0, time.monotonic() + 25  # bounded: the suite stays under 10 min
    adder.start()
    try:
        while kills < 15 and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.05, 1.0))
            kill_9(server)
            kills += 1
            seen = list(adder.committed)
            server = Server(["--db", str(db), "--workers", "2"])  # quick_check passes, or it exits 2
            if seen:  # the last add acknowledged before the kill is answered by the new server
                assert values(server.ask(qname(seen[-1])), "A") == ["127.0.0.7"], seen[-1]
        adder.stop.set()
        adder.join(60)
        print(f"{kills} kills of the server, {len(adder.committed)} adds committed")  # pytest -s: figures
        assert kills >= 8, kills
        assert not adder.errors, adder.errors[:3]
        committed = list(adder.committed)
        assert len(committed) >= 10, len(committed)
        assert set(committed) <= stored(db, "writer")  # in the database...

        def missing() -> list[str]:  # asked of whichever worker takes the query: each follows on its own
            return [a for a in committed if values(server.ask(qname(a)), "A") != ["127.0.0.7"]]

        assert poll(lambda: not missing(), timeout=10), missing()  # ...and served
    finally:
        adder.stop.set()
        server.close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def feed_codes(db: Path) -> dict[int, int]:
    """code -> entries of source `feed`."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT code, count(*) FROM entries WHERE source = 'feed' GROUP BY code")
        return {int(code) & 0xFF: int(count) for code, count in rows}  # 127.0.0.N stored whole: N


def served(server: Server, names: tuple[str, ...]) -> set[str]:
    return {value for address in names for value in values(server.ask(qname(address)), "A")}


def import_feed(db: Path, data: Path, code: int) -> subprocess.Popen[bytes]:
    return dnsbl(
        "import", "--zone", ZONE, "--source", "feed", "--replace", "--code", str(code), str(data), db=db
    )


def test_kill_9_of_an_import_leaves_all_of_it_or_none(db: Path, tmp_path: Path) -> None:
    """A feed re-imported with --replace, each time with another code, killed at random moments: the
    source holds one whole import, the last one that finished, and the server answers just that."""
    items = addresses(20000, block=3)
    data = write_plain(tmp_path / "feed.txt", items)
    first = import_feed(db, data, 10)
    first.communicate(timeout=120)
    assert first.returncode == 0
    server = Server(["--db", str(db), "--workers", "1"])
    try:
        started = time.monotonic()
        timed = import_feed(db, data, 11)
        timed.communicate(timeout=120)
        assert timed.returncode == 0
        took = time.monotonic() - started  # one import, the server rebuilding meanwhile: kill within it
        rng, landed, runs, killed_midway, completed = random.Random(9), 11, 0, 0, 0
        deadline = time.monotonic() + 30  # bounded: the suite stays under 10 min
        for code in range(12, 60):
            if time.monotonic() > deadline:
                break
            runs += 1
            proc = import_feed(db, data, code)
            time.sleep(rng.uniform(0.1, took * 1.5))
            proc.kill()
            proc.communicate(timeout=30)  # its parser child ends too (it holds stderr until then)
            finished = proc.returncode == 0
            codes = feed_codes(db)
            if finished or code in codes:
                landed, completed = code, completed + 1
            killed_midway += not finished
            assert codes == {landed: len(items)}, (codes, landed)  # one whole import, the last one
            want = {f"127.0.0.{landed}"}
            assert poll(lambda want=want: served(server, (items[0], items[-1])) == want), landed
        print(f"{runs} imports: {killed_midway} killed before they exited, {completed} committed")
        assert killed_midway >= 3 and completed >= 2, (killed_midway, completed)  # both outcomes seen
    finally:
        server.close()


def test_kill_9_of_the_ingester_loses_no_committed_hit_while_the_server_serves(tmp_path: Path) -> None:
    """tests/test_ingest_crash.py kills the ingester alone and reads the database; here a server runs
    meanwhile: every message moved to cur/ (its batch committed) is answered at once, kill or not."""
    from test_ingest_crash import fill, run

    maildir, db = tmp_path / "Maildir", tmp_path / "list.sqlite"
    relays = fill(maildir)
    server = Server(["--db", str(db), "--zone", ZONE, "--workers", "1"])
    rng = random.Random(5)
    try:
        for _ in range(5):
            run(db, maildir, kill_after=rng.uniform(0.5, 2.5))
            done = [relay_of(path.name) for path in (maildir / "cur").iterdir()]
            sample = rng.sample(done, min(len(done), 40))
            assert poll(lambda sample=sample: all(listed(server, r) for r in sample), timeout=10)
        run(db, maildir, kill_after=None)
        assert poll(lambda: listed(server, "80.232.5.250"), timeout=10)  # the last message's relay
        assert all(listed(server, relay) for relay in relays)
    finally:
        server.close()


def relay_of(name: str) -> str:
    """The relay `test_ingest_crash.fill` wrote into message number N (file N.trap)."""
    n = int(name.split(".")[0])
    return f"80.232.{n // 250}.{n % 250 + 1}"


def listed(server: Server, address: str) -> bool:
    return values(server.ask(qname(address)), "A") == ["127.0.0.2"]
