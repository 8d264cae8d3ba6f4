"""Response rate limiting in a real `dnsbl serve`: UDP from 127.0.0.x (loopback is exempt by default, so
these servers exempt another network), asked with raw sockets so that every reply, or its absence, is
seen. A flood of one name is limited (most dropped, every 2nd limited one truncated), many different
names at a high rate are all answered, a truncated answer asked again over TCP is answered, and the
counts reach the metrics."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
from conftest import Server, poll, run_cli
from rbldnsd import free_port

ZONE = "bl.example.org"
NET = "10.20.0.0/16"  # listed: 10.20.x.y are many different listed names


def query(name: str, qid: int) -> bytes:
    message = dns.message.make_query(name, "A", use_edns=False)
    message.id = qid
    return message.to_wire()


def listed(n: int) -> str:
    return f"{n % 250 + 1}.{n // 250}.20.10.{ZONE}"


def exchange(
    server: Server, source: str, queries: list[bytes], batch: int = 50, per_second: float = 0
) -> dict[int, bytes]:
    """Send `queries` from `source` in batches (so no socket buffer overflows), as fast as replies come
    or at most `per_second`; the replies by query id (a dropped one is missing)."""
    replies: dict[int, bytes] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        began = time.monotonic()
        for start in range(0, len(queries), batch):
            if per_second:
                time.sleep(max(0.0, began + start / per_second - time.monotonic()))
            sent = queries[start : start + batch]
            for data in sent:
                sock.sendto(data, (server.host, server.port))
            sock.settimeout(0.5)  # a dropped answer never comes: wait a little for the rest
            try:
                for _ in sent:
                    reply = sock.recv(65535)
                    replies[int.from_bytes(reply[:2], "big")] = reply
            except TimeoutError:
                pass
    return replies


def kinds(replies: dict[int, bytes]) -> tuple[int, int]:
    """(full answers, truncated ones)."""
    messages = [dns.message.from_wire(reply) for reply in replies.values()]
    truncated = [m for m in messages if m.flags & dns.flags.TC]
    for message in truncated:
        assert not message.answer and message.rcode() == dns.rcode.NOERROR
    for message in messages:
        if not message.flags & dns.flags.TC:
            assert [rr.to_text() for rrset in message.answer for rr in rrset] == ["127.0.0.2"]
    return len(messages) - len(truncated), len(truncated)


@pytest.fixture
def listed_db(db: Path) -> Path:
    assert run_cli("add", "--zone", ZONE, NET, db=db).returncode == 0
    return db


LIMITED = ("--rrl-responses-per-second", "5", "--rrl-slip", "2", "--rrl-exempt", "192.0.2.0/24")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_flood_of_one_name_is_limited(serve: Callable[..., Server], listed_db: Path, workers: str) -> None:
    server = serve("--workers", workers, *LIMITED)
    flood = [query(listed(1), qid) for qid in range(100)]
    started = time.monotonic()
    replies = exchange(server, "127.0.0.5", flood)
    seconds = time.monotonic() - started
    full, cut = kinds(replies)
    allowed = 5 * int(workers) * (int(seconds) + 2)  # 5 a second per worker, seconds begun
    assert 5 <= full <= allowed, (full, seconds)
    limited = 100 - full
    assert abs(cut - limited / 2) <= 2 * int(workers) + 1, (full, cut)  # every 2nd limited one
    assert len(replies) < 100  # the rest were dropped
    # the same client, other names: answered
    others = exchange(server, "127.0.0.6", [query(listed(n), 1000 + n) for n in range(2, 12)])
    assert kinds(others) == (10, 0)


def test_many_different_names_at_a_high_rate_are_all_answered(
    serve: Callable[..., Server], listed_db: Path
) -> None:
    """100 times responses_per_second, under the default ceiling (all_per_second 1000)."""
    server = serve("--workers", "1", *LIMITED)
    names = [query(listed(n), n) for n in range(1500)]
    started = time.monotonic()
    replies = exchange(server, "127.0.0.7", names, per_second=500)
    rate = len(names) / (time.monotonic() - started)
    assert kinds(replies) == (1500, 0), f"{rate:.0f} queries/s"


def test_a_truncated_answer_asked_again_over_tcp_is_answered(
    serve: Callable[..., Server], listed_db: Path
) -> None:
    server = serve("--workers", "1", *LIMITED)
    replies = exchange(server, "127.0.0.8", [query(listed(3), qid) for qid in range(40)])
    cut = [qid for qid, reply in replies.items() if dns.message.from_wire(reply).flags & dns.flags.TC]
    assert cut
    again = dns.message.make_query(listed(3), "A", use_edns=False)
    for _ in range(20):  # TCP is never limited
        answer = dns.query.tcp(again, server.host, port=server.port, timeout=5, source="127.0.0.8")
        assert [rr.to_text() for rrset in answer.answer for rr in rrset] == ["127.0.0.2"]


def test_loopback_is_exempt_by_default_and_no_rrl_turns_it_off(
    serve: Callable[..., Server], listed_db: Path
) -> None:
    default = serve("--workers", "1", "--rrl-responses-per-second", "5")
    assert kinds(exchange(default, "127.0.0.9", [query(listed(4), qid) for qid in range(60)])) == (60, 0)
    off = serve("--workers", "1", "--no-rrl", "--rrl-exempt", "192.0.2.0/24")
    assert kinds(exchange(off, "127.0.0.9", [query(listed(4), qid) for qid in range(60)])) == (60, 0)


@pytest.mark.parametrize("workers", ["1", "2"])  # with 2, the workers' counts reach the parent's metrics
def test_the_config_file_table_and_the_counts_in_the_metrics(
    serve: Callable[..., Server], listed_db: Path, tmp_path: Path, workers: str
) -> None:
    config = tmp_path / "dnsbl.toml"
    config.write_text('[rrl]\nresponses_per_second = 3\nslip = 1\nexempt = ["192.0.2.0/24"]\n')
    port = free_port()
    server = serve("--workers", workers, "--config", str(config), "--metrics", f"127.0.0.1:{port}")
    full, cut = kinds(exchange(server, "127.0.0.10", [query(listed(5), qid) for qid in range(30)]))
    assert full + cut == 30 and 3 <= full <= 9 * int(workers)  # slip 1: every limited answer truncated

    def scraped() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    text = poll(lambda: (lambda t: t if f"dnsbl_rrl_slipped_total {float(cut)}" in t else "")(scraped()))
    assert f"dnsbl_rrl_slipped_total {float(cut)}" in text and "dnsbl_rrl_dropped_total 0.0" in text


def test_bad_rrl_settings_are_one_line_errors(db: Path, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[rrl]\nslip = -1\n")
    result = run_cli("serve", "--config", str(config), db=db)
    assert result.returncode == 2 and "[rrl]: rrl slip must be a whole number" in result.stderr
    result = run_cli("serve", "--rrl-exempt", "10.0.0.0/40", db=db)
    assert result.returncode == 2 and "'10.0.0.0/40' is not a network" in result.stderr
