"""rbldnsd's options and their equivalents here (README, "rbldnsd options"): the stats file (-s), the
query log (-l), TTL bounds (-t def:min:max), NS in authority (-a/-A), and `$TIMESTAMP` (expiry, future
dates). Where rbldnsd's output is the spec, the same queries go to a real rbldnsd and the outputs are
compared; pure parts are tables."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from conftest import Server, poll, rcode, run_cli, values
from rbldnsd import Rbldnsd, rbldnsd_binary

from dnsbl_server.config import from_file
from dnsbl_server.datafiles import DataFiles, parse_spec
from dnsbl_server.errors import ConfigError
from dnsbl_server.querylog import log_line, name_text
from dnsbl_server.resolver import NS, Options, Question, resolve
from dnsbl_server.statsfile import StatsFile, Tally, stats_line
from dnsbl_server.ttl import TtlLimits, TtlSpec, parse_ttl

A_ZONE, B_ZONE = "a.example", "b.example"
A_FILE = """$SOA 1h ns1.example.org hm.example.org 5 2h 30m 1w 10m
$NS 1d ns1.example.org
:2:Listed $
192.0.2.1
192.0.2.2
"""
B_FILE = ":3:B $\n198.51.100.1\n"


@pytest.fixture
def ours() -> Iterator[object]:
    """Start `dnsbl serve` on data files only (no database), as rbldnsd would be started."""
    started: list[Server] = []

    def start(*args: str) -> Server:
        server = Server(list(args), {k: v for k, v in os.environ.items() if k != "DNSBL_DB"})
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def out_dir() -> Iterator[Path]:
    """A folder rbldnsd can write its stats and query log into (it runs as user rbldns when we are
    root, and cannot enter pytest's mode-700 tmp_path)."""
    folder = Path(tempfile.mkdtemp(prefix="rbldnsd-out-"))
    os.chmod(folder, 0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    files = {A_ZONE: tmp_path / "a.ip4set", B_ZONE: tmp_path / "b.ip4set"}
    files[A_ZONE].write_text(A_FILE)
    files[B_ZONE].write_text(B_FILE)
    return files


def specs(files: dict[str, Path]) -> list[str]:
    return [f"{zone}:ip4set:{path}" for zone, path in files.items()]


def ref_specs(files: dict[str, Path]) -> list[tuple[str, str, list[Path]]]:
    return [(zone, "ip4set", [path]) for zone, path in files.items()]


def exchange(port: int, query: bytes, *, reply: bool = True) -> bytes:
    """One UDP query, and the reply's exact bytes (b"" when none is expected)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(query, ("127.0.0.1", port))
        return sock.recv(65535) if reply else b""


def wire(name: str, rdtype: str = "A", rdclass: str = "IN", opcode: int = 0) -> bytes:
    message = dns.message.make_query(name, rdtype, rdclass)
    message.id = 4321
    message.set_opcode(opcode)
    return message.to_wire()


def stop_and_read(proc: subprocess.Popen[bytes] | subprocess.Popen[str], path: Path) -> list[str]:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    return path.read_text().splitlines()


# --- stats file (-s) -------------------------------------------------------------------------------

# (query, the zone it counts under or None) -- every answer here agrees with rbldnsd's rcode
STATS_QUERIES = [
    (wire("1.2.0.192.a.example"), A_ZONE),  # listed: ok
    (wire("1.2.0.192.a.example", "TXT"), A_ZONE),
    (wire("9.2.0.192.a.example"), A_ZONE),  # not listed: nxd
    (wire("1.2.0.192.a.example", "MX"), A_ZONE),  # NODATA: ok too
    (wire("a.example", "SOA"), A_ZONE),
    (wire("1.100.51.198.b.example"), B_ZONE),
    (wire("2.100.51.198.b.example"), B_ZONE),
    (wire("x.other.example"), None),  # REFUSED: only in the total
    (wire("version.bind", "TXT", "CH"), None),
]
SHORT_PACKET = b"\x12\x34\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"  # no question: rbldnsd drops it


def parse_stats(line: str) -> tuple[int, dict[str, list[int]]]:
    stamp, *tuples = line.split()
    fields = {}
    for item in tuples:
        zone, *numbers = item.split(":")
        assert len(numbers) == 5, line
        fields[zone] = [int(n) for n in numbers]
    return int(stamp), fields


def send_stats_queries(port: int, *, ours: bool) -> dict[str, list[int]]:
    """The stats queries; per zone (and `*`): total, ok, nxd, bytes in, bytes out as the client saw them."""
    seen: dict[str, list[int]] = {}

    def ask(query: bytes, zone: str | None) -> None:
        answer = exchange(port, query)
        rc = answer[3] & 0xF
        for key in (zone, "*") if zone else ("*",):
            counts = seen.setdefault(key, [0, 0, 0, 0, 0])
            counts[0] += 1
            counts[1] += rc == 0
            counts[2] += rc == 3
            counts[3] += len(query)
            counts[4] += len(answer)

    for query, zone in STATS_QUERIES:
        ask(query, zone)
    exchange(port, SHORT_PACKET, reply=ours)  # we answer FORMERR; rbldnsd drops it; both count it
    seen["*"][0] += 1
    seen["*"][3] += len(SHORT_PACKET)
    # rbldnsd sends nothing back for it: one more answered query shows it has read the packet before
    # the counters are read (one socket, read in order), else a quick stop could miss it
    ask(*STATS_QUERIES[0])
    return seen


def test_stats_file_counts_queries_per_zone_as_rbldnsd(ours, data, out_dir):  # type: ignore[no-untyped-def]
    our_stats = out_dir / "ours.stats"
    server = ours("--stats-file", str(our_stats), "--check-interval", "1", *specs(data))
    seen = send_stats_queries(server.port, ours=True)
    assert poll(lambda: len(our_stats.read_text().splitlines()) >= 2, timeout=5)  # every check interval
    lines = stop_and_read(server.proc, our_stats)
    stamp, final = parse_stats(lines[-2])
    assert lines[0].isdigit() and lines[-1].isdigit()  # bare timestamps: counters start from zero
    assert list(final) == [A_ZONE, B_ZONE, "*"]  # served order, the total last
    for zone in (A_ZONE, B_ZONE):
        assert final[zone] == seen[zone], zone  # every byte we sent and received, per zone
    assert final["*"][:4] == seen["*"][:4]
    assert final["*"][4] == seen["*"][4] + 12  # the FORMERR reply to the short packet
    assert abs(stamp - time.time()) < 30

    ref_stats = out_dir / "ref.stats"
    with Rbldnsd(ref_specs(data), ["-s", str(ref_stats)]) as ref:
        assert ref.proc is not None
        ref.proc.send_signal(signal.SIGUSR2)  # zero its counters: its start-up probes are not ours
        # the start mark, then the reset's line and mark: the reset is done before our first query
        assert poll(lambda: ref_stats.exists() and len(ref_stats.read_text().splitlines()) >= 3)
        send_stats_queries(ref.port, ours=False)
        theirs = parse_stats(stop_and_read(ref.proc, ref_stats)[-2])[1]
    assert list(theirs) == list(final)
    for zone in final:  # rbldnsd's replies are other sizes (no OPT, NS glue): bytes out differ
        assert final[zone][:4] == theirs[zone][:4], zone


def test_stats_file_relative_and_pure_lines(tmp_path):  # type: ignore[no-untyped-def]
    tallies = {"bl.example": Tally(ok=3, nxd=1, err=1, bytes_in=100, bytes_out=200), "*": Tally(ok=4)}
    assert stats_line(1234.9, tallies) == "1234 bl.example:5:3:1:100:200 *:4:4:0:0:0\n"
    path = tmp_path / "stats"
    relative = StatsFile(f"+{path}")
    relative.mark(1000)
    relative.write(1001, tallies)
    relative.write(
        1002, {"bl.example": Tally(ok=5, nxd=1, err=1, bytes_in=150, bytes_out=260), "*": Tally(ok=6)}
    )
    assert path.read_text().splitlines() == [
        "1000",
        "1001 bl.example:5:3:1:100:200 *:4:4:0:0:0",
        "1002 bl.example:2:2:0:50:60 *:2:2:0:0:0",  # deltas since the line before (rbldnsd's -s +FILE)
    ]


def test_sigusr1_logs_counters_and_sigusr2_resets_them(ours, data, tmp_path):  # type: ignore[no-untyped-def]
    stats = tmp_path / "stats"
    server = ours("--stats-file", str(stats), "--check-interval", "0", *specs(data))
    for query, _ in STATS_QUERIES[:3]:
        exchange(server.port, query)
    server.proc.send_signal(signal.SIGUSR1)
    logged = poll(lambda: "stats for" in server.log and "zone b.example" in server.log and server.log)
    assert "zone a.example: tot=3 ok=2 nxd=1 err=0 in=" in logged
    assert "zone b.example: tot=0 ok=0 nxd=0 err=0 in=0 out=0" in logged
    assert len(stats.read_text().splitlines()) == 2  # the start mark, and the line SIGUSR1 writes
    server.proc.send_signal(signal.SIGUSR2)
    assert poll(lambda: len(stats.read_text().splitlines()) == 4)  # a line, then a bare timestamp
    exchange(server.port, STATS_QUERIES[2][0])
    lines = stop_and_read(server.proc, stats)
    assert parse_stats(lines[-2])[1][A_ZONE][:3] == [1, 0, 1]  # only what came after the reset


# --- query log (-l) ----------------------------------------------------------------------------------

LOG_QUERIES = [
    wire("1.2.0.192.a.example"),
    wire("1.2.0.192.a.example", "TXT"),
    wire("1.2.0.192.a.example", "ANY"),
    wire("1.2.0.192.A.Example"),  # case as asked
    wire("9.2.0.192.a.example"),
    wire("1.2.0.192.a.example", "MX"),
    wire("1.2.0.192.a.example", "TYPE65"),  # a type rbldnsd has no name for: type65
    wire("1.2.0.192.a.example", "A", "ANY"),
    wire("1.2.0.192.a.example", "A", "HS"),
    wire('a\\032b\\.c\\\\d\\"e\\;f\\@g\\$h(.a.example'),  # escapes, as dns_dntop writes them
    wire("a\\255b\\000.a.example"),
    wire("a.example", "NS"),
    wire("x.other.example"),
    wire("."),
    wire("version.bind", "TXT", "CH"),
    wire("1.2.0.192.a.example", opcode=dns.opcode.NOTIFY),
]


def log_fields(line: str) -> tuple[int, list[str]]:
    """(time, [peer, qname, type, class:, rcode, answers]); the reply size is not compared."""
    stamp, peer, qname, qtype, qclass, outcome = line.split(" ")
    result, answers, _size = outcome.split("/")
    return int(stamp), [peer, qname, qtype, qclass, result, answers]


def test_query_log_lines_are_rbldnsds(ours, data, out_dir):  # type: ignore[no-untyped-def]
    our_log = out_dir / "ours.log"
    server = ours("--query-log", f"+{our_log}", *specs(data))
    started = time.time()
    sizes = [len(exchange(server.port, query)) for query in LOG_QUERIES]
    lines = stop_and_read(server.proc, our_log)
    assert [int(line.rsplit("/", 1)[1]) for line in lines] == sizes  # the reply size, exactly
    assert all(started - 1 <= log_fields(line)[0] <= time.time() + 1 for line in lines)

    ref_log = out_dir / "ref.log"
    with Rbldnsd(ref_specs(data), ["-l", f"+{ref_log}"]) as ref:
        probes = len(ref_log.read_text().splitlines())  # the harness's start-up SOA queries
        for query in LOG_QUERIES:
            exchange(ref.port, query)
        assert poll(lambda: len(ref_log.read_text().splitlines()) == probes + len(LOG_QUERIES))
        theirs = ref_log.read_text().splitlines()[probes:]
    assert [log_fields(line)[1] for line in lines] == [log_fields(line)[1] for line in theirs]


def test_query_log_is_reopened_on_sighup(ours, data, tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "queries.log"
    server = ours("--query-log", str(path), *specs(data))  # buffered, flushed every second
    exchange(server.port, wire("1.2.0.192.a.example"))
    assert poll(lambda: path.exists() and "1.2.0.192.a.example A IN: NOERROR/1/" in path.read_text())
    os.rename(path, tmp_path / "queries.log.1")  # what logrotate does
    server.proc.send_signal(signal.SIGHUP)
    assert poll(lambda: path.exists())
    exchange(server.port, wire("9.2.0.192.a.example"))
    assert poll(lambda: "9.2.0.192.a.example A IN: NXDOMAIN/0/" in path.read_text())
    assert "9.2.0.192" not in (tmp_path / "queries.log.1").read_text()


def test_query_log_that_cannot_be_opened_stops_the_start(data, tmp_path):  # type: ignore[no-untyped-def]
    result = run_cli(
        "serve", "--listen", "127.0.0.1:0", "--query-log", str(tmp_path / "no" / "dir"), *specs(data)
    )
    assert result.returncode == 2 and "query log" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("labels", "text"),
    [
        ([], "."),
        ([b"Mixed", b"Case"], "Mixed.Case"),
        ([b'a b.c"d;e\\f@g$h(i'], 'a\\032b\\.c\\"d\\;e\\\\f\\@g\\$h(i'),
        ([b"\x00\x7f\xff"], "\\000\\127\\255"),
    ],
)
def test_names_are_written_as_rbldnsd_writes_them(labels, text):  # type: ignore[no-untyped-def]
    assert name_text(labels) == text


def test_log_line_needs_a_readable_question():  # type: ignore[no-untyped-def]
    reply = b"\x10\xe1\x81\x80" + b"\x00\x01\x00\x02\x00\x00\x00\x00"
    assert (
        log_line(7.9, "::1", wire("x.example", "TYPE999"), reply)
        == "7 ::1 x.example type999 IN: NOERROR/2/12\n"
    )
    assert log_line(7.9, "::1", SHORT_PACKET, reply) is None  # no question (qdcount 0)
    assert (
        log_line(7.9, "::1", SHORT_PACKET[:4] + b"\x00\x01" + SHORT_PACKET[6:] + b"\xc0\x0c", reply) is None
    )


# --- TTL bounds (-t def:min:max) -----------------------------------------------------------------------

TTL_FILES = {
    "d.example": ("ip4set", "$TTL 1\n192.0.2.1\n"),  # below the minimum
    "c.example": ("ip4set", "$TTL 5000\n192.0.2.1\n"),  # above the maximum
    "z.example": ("ip4set", "$TTL 0\n192.0.2.1\n"),  # 0: the default
    "n.example": ("ip4set", "192.0.2.1\n"),  # none: the default
    "g.example": (
        "generic",
        "www 5 A 127.0.0.5\nbig 99999 A 127.0.0.6\nzero 0 A 127.0.0.7\nnone A 127.0.0.8\n",
    ),
    "h.example": ("generic", "$TTL 50\nnone A 127.0.0.8\nzero 0 A 127.0.0.7\n"),
}
TTL_NAMES = [f"1.2.0.192.{z}" for z in ("d.example", "c.example", "z.example", "n.example")] + [
    "www.g.example",
    "big.g.example",
    "zero.g.example",
    "none.g.example",
    "none.h.example",
    "zero.h.example",
]


def a_ttls(ask, names: list[str]) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {name: ask(name, "A").answer[0].ttl for name in names}


@pytest.mark.parametrize("ttl", ["100:20:300", "100", "1m::2m"])
def test_ttl_bounds_clamp_as_rbldnsd(ttl, ours, tmp_path):  # type: ignore[no-untyped-def]
    spec_list = []
    for zone, (kind, text) in TTL_FILES.items():
        path = tmp_path / f"{zone}.{kind}"
        path.write_text(text)
        spec_list.append((zone, kind, [path]))
    server = ours("--ttl", ttl, *(f"{z}:{k}:{p[0]}" for z, k, p in spec_list))
    mine = a_ttls(server.ask, TTL_NAMES)
    with Rbldnsd(spec_list, ["-t", ttl]) as ref:
        assert mine == a_ttls(ref.ask, TTL_NAMES)
    if ttl == "100:20:300":  # spelled out: what the comparison pins
        assert [mine[n] for n in TTL_NAMES] == [20, 300, 100, 100, 20, 300, 100, 100, 50, 50]


def test_inconsistent_ttl_is_refused_as_by_rbldnsd(data):  # type: ignore[no-untyped-def]
    for bad in ("::120", "30:40", "1:2:3:4", "5x"):
        result = run_cli("serve", "--listen", "127.0.0.1:0", "--ttl", bad, *specs(data))
        assert result.returncode == 2 and "TTL" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    theirs = subprocess.run(
        [rbldnsd_binary(), "-n", "-b", "127.0.0.1/1", "-t", "::120", f"{A_ZONE}:ip4set:{data[A_ZONE]}"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert theirs.returncode != 0 and "inconsistent" in theirs.stderr + theirs.stdout


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("300", TtlSpec(300)),
        ("35m:1m:1d", TtlSpec(2100, 60, 86400)),
        ("::2m", TtlSpec(None, None, 120)),
        (":60", TtlSpec(None, 60)),
        (900, TtlSpec(900)),
    ],
)
def test_parse_ttl(text, spec):  # type: ignore[no-untyped-def]
    assert parse_ttl(text) == spec


def test_ttl_limits_clamp_and_keep_what_is_left_out():  # type: ignore[no-untyped-def]
    limits = TtlLimits(20, 300)
    assert [limits.clamp(t) for t in (None, 0, 1, 20, 100, 300, 5000)] == [None, None, 20, 20, 100, 300, 300]
    assert parse_ttl("::600").limits(limits) == TtlLimits(20, 600)  # the minimum kept
    with pytest.raises(ConfigError):
        TtlLimits(0, 120).check({"default": 2100})


# --- NS in authority (-a / -A) ---------------------------------------------------------------------------


def authority_ns(message: dns.message.Message) -> list[str]:
    return sorted(
        r.to_text() for rrset in message.authority if rrset.rdtype == dns.rdatatype.NS for r in rrset
    )


def test_auth_ns_as_rbldnsd_default_and_no_auth_ns_as_its_a(ours, data):  # type: ignore[no-untyped-def]
    names = [("1.2.0.192.a.example", "A"), ("1.2.0.192.a.example", "TXT"), ("a.example", "NS")]
    full, minimal = ours("--auth-ns", *specs(data)), ours(*specs(data))
    with Rbldnsd(ref_specs(data)) as ref, Rbldnsd(ref_specs(data), ["-a"]) as lazy:
        for name, rdtype in names:
            assert authority_ns(full.ask(name, rdtype)) == authority_ns(ref.ask(name, rdtype)) != []
            assert authority_ns(minimal.ask(name, rdtype)) == authority_ns(lazy.ask(name, rdtype)) == []
    negative = full.ask("9.2.0.192.a.example")  # negative answers carry the SOA only, as rbldnsd's
    assert rcode(negative) == "NXDOMAIN" and authority_ns(negative) == []


def test_auth_ns_in_the_resolver():  # type: ignore[no-untyped-def]
    from dnsbl_server.index import ZoneIndex
    from dnsbl_server.zone import Zone, Zones, ZoneSettings

    zone = Zone("bl.example", ZoneIndex.build(()), settings=ZoneSettings(ns=("ns1.example", "ns2.example")))
    zones = Zones.of([zone])
    listed = Question("2.0.0.127.bl.example", 1)  # the RFC 5782 test point
    with_ns = resolve(listed, zones, 0, Options(auth_ns=True))
    assert [(r.rtype, r.data) for r in with_ns.authority] == [(NS, "ns1.example"), (NS, "ns2.example")]
    assert resolve(listed, zones, 0, Options()).authority == ()
    assert (
        resolve(Question("1.0.0.127.bl.example", 1), zones, 0, Options(auth_ns=True)).authority[0].rtype != NS
    )


# --- $TIMESTAMP: expiry and future dates -------------------------------------------------------------------


def stamp(moment: float) -> str:
    return time.strftime("%Y:%m:%d:%H:%M:%S", time.gmtime(moment))


def test_expired_data_stops_listing_and_the_zone_goes_on(ours, tmp_path):  # type: ignore[no-untyped-def]
    """Past `expires`, the dataset lists no one; the zone's other data and SOA still answer; a fresh file
    brings it back. rbldnsd SERVFAILs the whole zone instead (checked: that is what we do not copy)."""
    now = time.time()
    stale, other = tmp_path / "feed.ip4set", tmp_path / "own.ip4set"
    soa = "$SOA 1h ns1.example.org hm.example.org 5 2h 30m 1w 10m"
    stale.write_text(f"{soa}\n$TIMESTAMP {stamp(now - 3600)} {stamp(now + 5)}\n192.0.2.1\n")
    other.write_text("192.0.2.9\n")
    zone_specs = [("x.example", "ip4set", [stale]), ("x.example", "ip4set", [other])]
    server = ours("--check-interval", "0", *(f"{z}:{k}:{p[0]}" for z, k, p in zone_specs))
    assert values(server.ask("1.2.0.192.x.example"), "A") == ["127.0.0.2"]
    with Rbldnsd(zone_specs, ["-c", "1"]) as ref:
        assert poll(lambda: rcode(server.ask("1.2.0.192.x.example")) == "NXDOMAIN", timeout=10)
        assert values(server.ask("9.2.0.192.x.example"), "A") == ["127.0.0.2"]  # the other dataset
        assert rcode(server.ask("x.example", "SOA")) == "NOERROR"
        assert "data expired at" in server.log
        assert poll(lambda: rcode(ref.ask("9.2.0.192.x.example")) == "SERVFAIL", timeout=10)
    fresh = tmp_path / "fresh"
    fresh.write_text(f"$TIMESTAMP {stamp(time.time() - 60)}\n192.0.2.1\n")
    os.replace(fresh, stale)
    server.proc.send_signal(signal.SIGHUP)
    assert poll(lambda: rcode(server.ask("1.2.0.192.x.example")) == "NOERROR", timeout=10)


def test_expiry_is_a_function_of_now(tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "feed.ip4set"
    path.write_text("$TIMESTAMP 2026:01:01 2026:02:01\n192.0.2.1\n")
    jan, feb = 1767225600.0, 1769904000.0  # 2026-01-01, 2026-02-01 UTC
    files = DataFiles([parse_spec(f"x.example:ip4set:{path}")])
    files.load(jan + 10)
    (dataset,) = files.datasets.values()
    assert dataset.index.lookup(4, 0xC0000201, jan) and not dataset.expired
    assert files.expire(feb) == []  # exactly at `expires` it still answers (rbldnsd: expires < now)
    assert files.expire(feb + 1) == ["x.example"]
    (dataset,) = files.datasets.values()
    assert dataset.expired and not dataset.index.lookup(4, 0xC0000201, feb)
    assert files.expire(feb + 2) == []  # said once
    late = DataFiles([parse_spec(f"x.example:ip4set:{path}")])
    late.load(feb + 10)  # already expired when loaded: starts, serving nothing from it
    assert next(iter(late.datasets.values())).expired


def test_relative_expiry_needs_a_timestamp(tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "feed.ip4set"
    path.write_text("$TIMESTAMP 0 +1d\n192.0.2.1\n")
    files = DataFiles([parse_spec(f"x.example:ip4set:{path}")])
    files.load(time.time())
    (dataset,) = files.datasets.values()
    assert dataset.specials.expires is None and not dataset.expired  # the line is a warning, as rbldnsd
    assert any("$TIMESTAMP" in p for p in dataset.problems)


def test_future_timestamp_keeps_the_previous_data(tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "feed.ip4set"
    path.write_text("192.0.2.1\n")
    now = time.time()
    files = DataFiles([parse_spec(f"x.example:ip4set:{path}")])
    files.load(now)
    new = tmp_path / "new"
    new.write_text(f"$TIMESTAMP {stamp(now + 3600)}\n192.0.2.99\n")
    os.replace(new, path)
    assert files.refresh(now + 1) == []  # not loaded: the previous data stays (rbldnsd: SERVFAIL)
    (dataset,) = files.datasets.values()
    assert dataset.index.lookup(4, 0xC0000201, now) and not dataset.index.lookup(4, 0xC0000263, now)
    assert files.refresh(now + 3601) == ["x.example"]  # its time has come: loaded at the next check


def test_future_timestamp_at_start_is_an_error(tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "feed.ip4set"
    path.write_text(f"$TIMESTAMP {stamp(time.time() + 3600)}\n192.0.2.1\n")
    result = run_cli("serve", "--listen", "127.0.0.1:0", f"x.example:ip4set:{path}")
    assert result.returncode == 2 and "in the future" in result.stderr  # rbldnsd aborts too


# --- the config file ------------------------------------------------------------------------------------


def test_config_keys(tmp_path):  # type: ignore[no-untyped-def]
    config = tmp_path / "dnsbl.toml"
    config.write_text(
        'ttl = "10m:1m:1h"\nstats_file = "/var/log/dnsbl/stats"\nquery_log = "+/var/log/dnsbl/queries"\n'
        'auth_ns = true\n[zone."bl.example.org"]\nminimum = 60\n'
    )
    settings, _ = from_file(config)
    assert settings.zone_defaults.ttl == 600 and settings.settings_for("bl.example.org").ttl == 600
    assert settings.ttl_limits == TtlLimits(60, 3600)
    assert (settings.stats_file, settings.query_log, settings.auth_ns) == (
        "/var/log/dnsbl/stats",
        "+/var/log/dnsbl/queries",
        True,
    )
    config.write_text("stats_file = 3\n")
    with pytest.raises(ConfigError, match="stats_file"):
        from_file(config)


def test_config_query_log_is_used(data, tmp_path, ours):  # type: ignore[no-untyped-def]
    log_path = tmp_path / "q.log"
    config = tmp_path / "dnsbl.toml"
    config.write_text(f'query_log = "+{log_path}"\nttl = "100:20:300"\n')
    server = ours("--config", str(config), *specs(data))
    assert server.ask("1.100.51.198.b.example").answer[0].ttl == 100  # b.ip4set gives no $TTL
    assert poll(
        lambda: log_path.exists() and "1.100.51.198.b.example A IN: NOERROR/1/" in log_path.read_text()
    )
