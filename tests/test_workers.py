"""`dnsbl serve --workers N`: real processes on a free loopback port. Every worker answers, the counts
add up to exactly what was sent, a change reaches every worker at once, signals reach every process,
a killed worker is replaced, the trap runs once, nothing outlives the parent (workers.py, child.py)."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import time
from pathlib import Path

import dns.message
import dns.rcode
import pytest
from conftest import Server, poll, rcode, run_cli, start, values

from dnsbl_server.config import from_file
from dnsbl_server.errors import ConfigError
from dnsbl_server.querylog import _whole_lines
from dnsbl_server.store import SMALL_IMPORT
from dnsbl_server.workers import MAX_DEFAULT, default_count

ZONE = "bl.example.org"
READY = re.compile(r"worker (\d+) answering \(pid (\d+)\)")
ANSWERED = re.compile(r"queries answered since each worker started: (.*)")
pytestmark = pytest.mark.slow


def name(ip: str, zone: str = ZONE) -> str:
    return ".".join(reversed(ip.split("."))) + "." + zone


def children(pid: int) -> set[int]:
    """Live processes whose parent is `pid` (from /proc: what the kernel says, not what the log says)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def workers_ready(server: Server, count: int) -> dict[int, int]:
    """slot -> pid of the latest `count` workers the log says are answering."""
    ready = poll(lambda: len({m[0] for m in READY.findall(server.log)}) >= count and server.log, timeout=20)
    assert ready, server.log
    return {int(slot): int(pid) for slot, pid in READY.findall(server.log)}


def burst(server: Server, names: list[str], sockets: int = 16) -> dict[int, bytes]:
    """Every query sent at once, round robin over `sockets` source ports; the replies by query id."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(sockets)]
    try:
        for ident, qname in enumerate(names):
            query = dns.message.make_query(qname, "A")
            query.id = ident
            socks[ident % sockets].sendto(query.to_wire(), (server.host, server.port))
        return _replies(socks, len(names))
    finally:
        for sock in socks:
            sock.close()


def _replies(socks: list[socket.socket], expected: int) -> dict[int, bytes]:
    replies: dict[int, bytes] = {}
    deadline = time.monotonic() + 10
    while len(replies) < expected and time.monotonic() < deadline:
        readable, _, _ = select.select(socks, [], [], 0.5)
        for sock in readable:
            reply = sock.recv(4096)
            replies[int.from_bytes(reply[:2], "big")] = reply
    return replies


def rcodes(replies: dict[int, bytes]) -> list[str]:
    return [dns.rcode.to_text(reply[3] & 0xF) for _, reply in sorted(replies.items())]


def answered_per_worker(server: Server) -> list[int]:
    """SIGUSR1, then what the parent logs each worker answered."""
    before = len(ANSWERED.findall(server.log))
    server.proc.send_signal(signal.SIGUSR1)
    assert poll(lambda: len(ANSWERED.findall(server.log)) > before), server.log
    line = ANSWERED.findall(server.log)[-1]
    return [int(n) for n in re.findall(r"\(pid \d+\) (\d+)", line)]


# --- unit: defaults and settings -------------------------------------------------------------------


def test_default_is_one_worker_per_usable_cpu_at_most_four() -> None:
    assert default_count() == max(1, min(len(os.sched_getaffinity(0)), MAX_DEFAULT))  # Linux


def test_workers_config_key(tmp_path: Path) -> None:
    path = tmp_path / "dnsbl.toml"
    path.write_text("workers = 3\n")
    assert from_file(path)[0].workers == 3
    for bad in ("-1", '"two"', "true"):
        path.write_text(f"workers = {bad}\n")
        with pytest.raises(ConfigError, match="workers must be a number of processes"):
            from_file(path)


def test_query_log_chunks_are_whole_lines_under_the_limit() -> None:
    lines = [f"{'x' * (i % 37)} line {i}\n" for i in range(500)] + ["y" * 5000 + "\n", "z\n"]
    chunks = list(_whole_lines(lines, 4096))
    assert b"".join(chunks).decode() == "".join(lines)
    assert all(chunk.endswith(b"\n") for chunk in chunks)
    assert all(len(chunk) <= 4096 for chunk in chunks if chunk.count(b"\n") > 1)  # only a long line is over


# --- real processes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 3])
def test_every_worker_answers_and_the_counts_add_up(servers, db, tmp_path, count):  # type: ignore[no-untyped-def]
    stats = tmp_path / "stats"
    server = start(servers, "--db", str(db), "--workers", str(count), "--stats-file", str(stats))
    pids = workers_ready(server, count)
    assert children(server.proc.pid) == set(pids.values())
    names = [name("203.0.113.7"), name("203.0.113.8")] * 300
    replies = burst(server, names)
    assert len(replies) == len(names)
    assert rcodes(replies) == ["NOERROR", "NXDOMAIN"] * 300
    per_worker = answered_per_worker(server)
    assert len(per_worker) == count and sum(per_worker) == len(names)
    assert sum(1 for n in per_worker if n) > 1, per_worker  # the load is spread
    tally = f"600:300:300:{_bytes(names)}:{sum(len(r) for r in replies.values())}"
    written = stats.read_text().splitlines()[-1]  # by SIGUSR1, once every worker had sent its counts
    assert written.split()[1:] == [f"{ZONE}:{tally}", f"*:{tally}"]
    assert server.stop() == 0


def _bytes(names: list[str]) -> int:
    return sum(len(dns.message.make_query(n, "A").to_wire()) for n in names)


def test_a_change_reaches_every_worker_at_once(servers, db):  # type: ignore[no-untyped-def]
    server = start(servers, "--db", str(db), "--workers", "3")
    workers_ready(server, 3)
    target = name("192.0.2.44")
    assert rcode(server.ask(target)) == "NXDOMAIN"
    assert run_cli("add", "--zone", ZONE, "192.0.2.44", "--code", "5", db=db).returncode == 0
    added = time.monotonic()
    assert poll(lambda: values(server.ask(target), "A") == ["127.0.0.5"], timeout=10, interval=0.01)
    # every worker, each on many source ports: all of them serve it within the promise (1 s from the
    # commit; generous here), and never the old answer again. Workers read the journal in one round but
    # not at one instant, so a commit landing mid-round reaches the last of them one round (0.25 s) later.
    assert poll(lambda: rcodes(burst(server, [target] * 200)) == ["NOERROR"] * 200, timeout=10, interval=0.01)
    assert time.monotonic() - added < 1.5
    assert rcodes(burst(server, [target] * 200)) == ["NOERROR"] * 200


def test_sigterm_stops_every_process(servers, db):  # type: ignore[no-untyped-def]
    server = start(servers, "--db", str(db), "--workers", "2")
    pids = set(workers_ready(server, 2).values())
    assert children(server.proc.pid) == pids
    assert server.stop() == 0
    assert poll(lambda: not any(alive(pid) for pid in pids), timeout=5)
    assert "stopped" in server.log


def test_a_killed_worker_is_replaced_and_nothing_is_lost(servers, db):  # type: ignore[no-untyped-def]
    server = start(servers, "--db", str(db), "--workers", "2")
    pids = workers_ready(server, 2)
    os.kill(pids[0], signal.SIGKILL)
    replies = burst(server, [name("203.0.113.7")] * 100)  # while it is replaced: the shared socket
    assert len(replies) == 100
    assert poll(
        lambda: f"worker 0 (pid {pids[0]}) was killed by signal SIGKILL; starting another" in server.log
    )
    assert poll(lambda: len(READY.findall(server.log)) == 3), server.log
    replaced = workers_ready(server, 2)
    assert replaced[0] != pids[0] and replaced[1] == pids[1]
    assert poll(lambda: children(server.proc.pid) == set(replaced.values()))
    assert values(server.ask(name("203.0.113.7")), "A") == ["127.0.0.2"]


def test_sighup_reloads_data_files_once_for_every_worker(servers, tmp_path):  # type: ignore[no-untyped-def]
    data = tmp_path / "feed.ip4set"
    data.write_text("192.0.2.1\n")
    server = start(servers, "--workers", "2", "--check-interval", "0", f"x.example:ip4set:{data}")
    old = set(workers_ready(server, 2).values())
    assert values(server.ask(name("192.0.2.1", "x.example")), "A") == ["127.0.0.2"]
    data.write_text("192.0.2.2\n")
    os.utime(data, (time.time() + 5, time.time() + 5))  # a new mtime even within the same second
    server.proc.send_signal(signal.SIGHUP)
    assert poll(lambda: rcode(server.ask(name("192.0.2.2", "x.example"))) == "NOERROR")
    assert poll(lambda: children(server.proc.pid).isdisjoint(old) and len(children(server.proc.pid)) == 2)
    replies = burst(server, [name("192.0.2.2", "x.example"), name("192.0.2.1", "x.example")] * 50)
    assert rcodes(replies) == ["NOERROR", "NXDOMAIN"] * 50
    assert server.log.count("reloaded ip4set:") == 1  # the parent's alone: one reload, one serial bump


def test_query_log_gets_whole_lines_from_every_worker(servers, db, tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "queries.log"
    server = start(servers, "--db", str(db), "--workers", "2", "--query-log", str(path))
    workers_ready(server, 2)
    names = [name(f"192.0.2.{i}") for i in range(200)] * 3
    assert len(burst(server, names)) == len(names)
    per_worker = answered_per_worker(server)
    assert server.stop() == 0
    lines = path.read_text().splitlines()
    assert len(lines) == len(names) and sum(per_worker) == len(names)
    assert sorted(line.split()[2] for line in lines) == sorted(n for n in names)
    assert all(re.fullmatch(r"\d+ 127\.0\.0\.1 \S+ A IN: NXDOMAIN/0/\d+", line) for line in lines)


def test_the_trap_runs_in_one_process(servers, db, tmp_path):  # type: ignore[no-untyped-def]
    config = tmp_path / "dnsbl.toml"
    config.write_text(
        f'db = "{db}"\nzones = ["{ZONE}"]\n'
        '[ingest.smtpd]\nlisten = ["127.0.0.1:0"]\ntrap_domains = ["trap.example.org"]\n'
    )
    server = start(servers, "--config", str(config), "--workers", "2")
    workers = workers_ready(server, 2)
    assert poll(lambda: "trap 0 answering" in server.log), server.log
    assert server.log.count("trap smtpd listening on") == 1
    assert server.log.count("trap ingester: listing into") == 1
    assert len(children(server.proc.pid)) == 3  # two workers and the trap
    # batch work yields the CPU to the answers: the trap process runs niced, the workers do not
    trap = re.search(r"trap 0 answering \(pid (\d+)\)", server.log)
    assert trap is not None
    assert niceness(int(trap[1])) == 10
    assert {niceness(pid) for pid in workers.values()} == {niceness(server.proc.pid)} == {0}
    assert server.stop() == 0


def niceness(pid: int) -> int:
    """The nice value the kernel holds for `pid` (/proc/PID/stat, field 19)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_children_die_with_the_parent(servers, db):  # type: ignore[no-untyped-def]
    server = start(servers, "--db", str(db), "--workers", "2")
    pids = set(workers_ready(server, 2).values())
    server.proc.kill()
    server.proc.wait()
    assert poll(lambda: not any(alive(pid) for pid in pids), timeout=5)


def test_one_worker_is_one_process(servers, db):  # type: ignore[no-untyped-def]
    server = start(servers, "--db", str(db), "--workers", "1")
    assert values(server.ask(name("203.0.113.7")), "A") == ["127.0.0.2"]
    assert not children(server.proc.pid) and "answering (pid" not in server.log


def test_a_child_that_cannot_start_stops_the_server(db, tmp_path):  # type: ignore[no-untyped-def]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = tmp_path / "dnsbl.toml"
        config.write_text(
            f'db = "{db}"\nzones = ["{ZONE}"]\n[ingest.smtpd]\n'
            f'listen = ["127.0.0.1:{taken.getsockname()[1]}"]\ntrap_domains = ["trap.example.org"]\n'
        )
        result = run_cli("serve", "--listen", "127.0.0.1:0", "--config", str(config), "--workers", "2")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("address already in use") == 3 and "Traceback" not in result.stderr
    assert "trap 0 exited with code 1 before it was ready, 3 times in a row; stopping" in result.stderr


def test_a_bulk_import_forks_fresh_workers_from_the_parents_rebuild(servers, db, tmp_path):  # type: ignore[no-untyped-def]
    server = start(servers, "--db", str(db), "--workers", "2")
    old = set(workers_ready(server, 2).values())
    feed = tmp_path / "feed.ip4set"
    # bigger than SMALL_IMPORT: a bulk change, which every process would otherwise rebuild on its own
    feed.write_text("".join(f"10.1.{i // 256}.{i % 256}\n" for i in range(SMALL_IMPORT + 1000)))
    assert run_cli("import", "--zone", ZONE, str(feed), "--source", "feed", db=db).returncode == 0
    assert poll(lambda: children(server.proc.pid).isdisjoint(old) and len(children(server.proc.pid)) == 2)
    replies = burst(server, [name(f"10.1.{i // 256}.{i % 256}") for i in range(0, 2000, 10)])
    assert rcodes(replies) == ["NOERROR"] * 200
