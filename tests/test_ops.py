"""Operations (issue 7): the Prometheus endpoint (`--metrics`), the server id (`--server-id`: CHAOS
hostname.bind/id.server, EDNS NSID) and structured logs (`--log-format json`), against real `dnsbl serve`
processes, one worker and several (metrics.py, metrics_http.py, logs.py)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import dns.edns
import dns.message
import dns.query
import dns.rdataclass
import pytest
from conftest import Server, poll, rcode, run_cli, start, values

from dnsbl_server import metrics
from dnsbl_server.metrics_http import reply

ZONE = "bl.example.org"
METRICS = re.compile(r"metrics on (http://\S+)")
SAMPLE = re.compile(r"^(\w+)(?:\{([^}]*)\})? (\S+)$", re.M)


def name(ip: str, zone: str = ZONE) -> str:
    return ".".join(reversed(ip.split("."))) + "." + zone


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: Server) -> Samples:
    """Every sample of one scrape: (metric name, labels) -> value."""
    url = METRICS.search(server.log)
    assert url, server.log
    with urllib.request.urlopen(url.group(1), timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    out = {}
    for metric, labels, value in SAMPLE.findall(text):
        pairs = frozenset(re.findall(r'(\w+)="([^"]*)"', labels or ""))
        out[(metric, pairs)] = float(value)
    return out


def scrape_until(server: Server, check: Callable[[Samples], object]) -> Samples | None:
    """Scrape until `check` holds (the workers send their counts every second); the scrape, or None."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        samples = scrape(server)
        if check(samples):
            return samples
        time.sleep(0.1)
    return None


def sample(samples: dict, metric: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((metric, frozenset(labels.items())), 0.0)


def queries(samples: dict) -> dict[tuple[str, str, str], float]:  # type: ignore[type-arg]
    return {
        (d["zone"], d["qtype"], d["rcode"]): v
        for (metric, labels), v in samples.items()
        if metric == "dnsbl_queries_total"
        for d in [dict(labels)]
    }


# --- the pure parts -----------------------------------------------------------------------------


def test_worker_deltas_add_up_in_the_parent() -> None:
    from dnsbl_server.server import Counters

    worker, parent, gauges = Counters(), Counters(), metrics.Gauges()
    sent: dict[metrics.Key, float] = {}
    for round_ in range(3):
        kinds = worker.kinds.setdefault(ZONE, {})
        kinds[metrics.kind(1, 0)] = kinds.get(metrics.kind(1, 0), 0) + 5
        worker.latency.observe(0.0003 * (round_ + 1))
        worker.transfers.axfr += 1
        now = metrics.snapshot(worker, metrics.Gauges(last_export=100.0 + round_))
        metrics.merge(parent, gauges, json.loads(json.dumps(metrics.delta(now, sent))))  # as on the channel
        sent = now
    assert parent.kinds == {ZONE: {metrics.kind(1, 0): 15}}
    assert metrics.unkind(metrics.kind(252, metrics.NO_REPLY)) == (252, metrics.NO_REPLY)
    assert parent.latency == worker.latency
    assert parent.transfers.axfr == 3
    assert gauges.last_export == 102.0
    assert metrics.delta(metrics.snapshot(worker), sent) == []  # nothing new: nothing sent


def test_latency_buckets() -> None:
    latency = metrics.Latency()
    for seconds in (0.00001, 0.00005, 0.0002, 5.0):
        latency.observe(seconds)
    assert latency.counts[0] == 2  # at most 50 µs: le is inclusive
    assert latency.counts[2] == 1
    assert latency.counts[-1] == 1  # above every bound: +Inf only
    assert latency.total == pytest.approx(5.00026)


def test_http_reply() -> None:
    assert reply(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", lambda: b"x 1\n").endswith(b"\r\n\r\nx 1\n")
    assert reply(b"GET /other HTTP/1.1\r\n\r\n", lambda: b"").startswith(b"HTTP/1.0 404")
    assert reply(b"POST /metrics HTTP/1.1\r\n\r\n", lambda: b"").startswith(b"HTTP/1.0 405")
    assert reply(b"junk", lambda: b"").startswith(b"HTTP/1.0 405")


# --- metrics from a real server --------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_count_exactly_what_was_asked(servers, db, workers):  # type: ignore[no-untyped-def]
    assert run_cli("add", "--zone", ZONE, "192.0.2.1", "192.0.2.2", "--source", "feed", db=db).returncode == 0
    assert run_cli("add", "--zone", ZONE, "--exclude", "192.0.2.2", "--source", "feed", db=db).returncode == 0
    assert run_cli("add", "--zone", ZONE, "198.51.100.9", db=db).returncode == 0
    server = start(servers, "--db", str(db), "--workers", str(workers), "--metrics", "127.0.0.1:0")
    sent = {
        (ZONE, "A", "NOERROR"): 40,  # listed, half of them over TCP
        (ZONE, "A", "NXDOMAIN"): 30,
        (ZONE, "TXT", "NOERROR"): 20,
        ("", "A", "REFUSED"): 10,  # a name in no served zone
    }
    for i in range(40):
        assert rcode(server.ask(name("192.0.2.1"), tcp=bool(i % 2))) == "NOERROR"
    for _ in range(30):
        assert rcode(server.ask(name("192.0.2.2"))) == "NXDOMAIN"
    for _ in range(20):
        assert rcode(server.ask(name("192.0.2.1"), "TXT")) == "NOERROR"
    for _ in range(10):
        assert rcode(server.ask("1.2.3.4.example.com")) == "REFUSED"
    assert scrape_until(server, lambda s: queries(s) == sent), (queries(scrape(server)), sent)
    time.sleep(1.5)  # every worker has sent its counts again: nothing is counted twice
    again = scrape(server)
    assert queries(again) == sent
    latency = sample(again, "dnsbl_query_latency_seconds_count")
    # one query in SAMPLE is timed, counted per worker and per transport (UDP 80, TCP 20 here)
    assert 100 // metrics.SAMPLE - 2 * workers <= latency <= 100 // metrics.SAMPLE
    assert sample(again, "dnsbl_query_latency_seconds_bucket", le="+Inf") == latency
    assert sample(again, "dnsbl_workers") == workers
    assert sample(again, "dnsbl_up") == 1
    assert abs(sample(again, "dnsbl_start_time_seconds") - time.time()) < 60
    assert sample(again, "process_start_time_seconds") > 0
    assert sample(again, "dnsbl_transfers_total", result="axfr") == 0
    figures = scrape_until(server, lambda s: sample(s, "dnsbl_figures_timestamp_seconds"))
    assert figures
    assert sample(figures, "dnsbl_entries", zone=ZONE, source="feed", state="listed") == 2
    assert sample(figures, "dnsbl_entries", zone=ZONE, source="feed", state="excluded") == 1
    assert sample(figures, "dnsbl_entries", zone=ZONE, source="manual", state="listed") == 1
    assert server.stop() == 0


def test_metrics_count_refused_transfers_from_every_worker(servers, db):  # type: ignore[no-untyped-def]
    assert run_cli("add", "--zone", ZONE, "192.0.2.1", db=db).returncode == 0
    server = start(servers, "--db", str(db), "--workers", "2", "--metrics", "127.0.0.1:0")
    for _ in range(6):  # nobody may transfer by default
        query = dns.message.make_query(ZONE, "AXFR")
        assert rcode(dns.query.tcp(query, server.host, port=server.port, timeout=5)) in ("REFUSED", "NOTAUTH")
    assert poll(lambda: sample(scrape(server), "dnsbl_transfers_total", result="refused") == 6, timeout=15)


def test_metrics_other_paths_and_bad_addresses(servers, db, tmp_path):  # type: ignore[no-untyped-def]
    server = start(servers, "--db", str(db), "--workers", "1", "--metrics", "127.0.0.1:0")
    url = METRICS.search(server.log).group(1)  # type: ignore[union-attr]
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(url.replace("/metrics", "/nothing"), timeout=5)
    assert error.value.code == 404
    error.value.close()
    for bad, message in (
        ("nonsense", "--metrics: invalid listen address 'nonsense'"),
        ("127.0.0.1:99999", "--metrics: invalid port"),
    ):
        done = run_cli("serve", "--db", str(db), "--listen", "127.0.0.1:0", "--metrics", bad)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    taken = url.split("//")[1].split("/")[0]  # the running server holds it
    done = run_cli("serve", "--db", str(db), "--listen", "127.0.0.1:0", "--workers", "2", "--metrics", taken)
    assert done.returncode == 2 and f"--metrics {taken}: cannot listen" in done.stderr, done.stderr
    config = tmp_path / "dnsbl.toml"
    config.write_text('metrics = "127.0.0.1:0"\nserver_id = "from-config"\nlog_format = "json"\n')
    from dnsbl_server.config import from_file

    settings = from_file(config)[0]
    assert (settings.metrics, settings.server_id, settings.log_format) == (
        "127.0.0.1:0",
        "from-config",
        "json",
    )
    config.write_text('log_format = "xml"\n')
    done = run_cli("serve", "--config", str(config), "--db", str(db))
    assert done.returncode == 2 and "log_format must be text or json" in done.stderr


# --- server id ------------------------------------------------------------------------------------


def chaos(server: Server, qname: str, **kwargs: object) -> dns.message.Message:
    query = dns.message.make_query(qname, "TXT", rdclass=dns.rdataclass.CH, **kwargs)  # type: ignore[arg-type]
    return dns.query.udp(query, server.host, port=server.port, timeout=5)


def nsid_query(qname: str) -> dns.message.Message:
    return dns.message.make_query(
        qname, "A", use_edns=0, options=[dns.edns.GenericOption(dns.edns.NSID, b"")]
    )


def nsid_of(message: dns.message.Message) -> bytes | None:
    found = [o for o in message.options if o.otype == dns.edns.NSID]
    return found[0].to_wire() if found else None


@pytest.mark.parametrize("workers", ["1", "2"])
def test_server_id_answers_chaos_and_nsid(servers, db, workers):  # type: ignore[no-untyped-def]
    assert run_cli("add", "--zone", ZONE, "192.0.2.1", db=db).returncode == 0
    server = start(servers, "--db", str(db), "--workers", workers, "--server-id", "anycast-ams-3")
    for qname in ("hostname.bind", "ID.SERVER"):
        answer = chaos(server, qname)
        assert rcode(answer) == "NOERROR" and values(answer, "TXT") == ['"anycast-ams-3"']
    assert rcode(chaos(server, "version.bind")) == "NOERROR"  # unchanged
    assert rcode(chaos(server, "other.bind")) == "REFUSED"
    for tcp in (False, True):
        send = dns.query.tcp if tcp else dns.query.udp
        listed = send(nsid_query(name("192.0.2.1")), server.host, port=server.port, timeout=5)
        assert nsid_of(listed) == b"anycast-ams-3" and values(listed, "A") == ["127.0.0.2"]
    unlisted = dns.query.udp(nsid_query(name("192.0.2.9")), server.host, port=server.port, timeout=5)
    assert rcode(unlisted) == "NXDOMAIN" and nsid_of(unlisted) == b"anycast-ams-3"
    plain = server.ask(name("192.0.2.1"), use_edns=0)  # no NSID asked: none given (RFC 5001 section 2.2)
    assert nsid_of(plain) is None and values(plain, "A") == ["127.0.0.2"]


def test_without_server_id_chaos_is_refused_and_no_nsid(servers, db):  # type: ignore[no-untyped-def]
    server = start(servers, "--db", str(db), "--workers", "1")
    assert rcode(chaos(server, "hostname.bind")) == "REFUSED"
    assert rcode(chaos(server, "id.server")) == "REFUSED"
    reply = dns.query.udp(nsid_query(name("203.0.113.7")), server.host, port=server.port, timeout=5)
    assert rcode(reply) == "NOERROR" and nsid_of(reply) is None
    done = run_cli("serve", "--db", str(db), "--listen", "127.0.0.1:0", "--server-id", "x" * 256)
    assert done.returncode == 2 and "--server-id: must be 1 to 255 bytes" in done.stderr


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig (dnsutils) not installed")
def test_dig_sees_the_server_id(servers, db):  # type: ignore[no-untyped-def]
    server = start(servers, "--db", str(db), "--server-id", "node-7")

    def dig(*args: str) -> str:
        command = ["dig", f"@{server.host}", "-p", str(server.port), "+time=5", "+tries=1", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout

    assert dig("+short", "CH", "TXT", "hostname.bind").strip() == '"node-7"'
    assert dig("+short", "CH", "TXT", "id.server").strip() == '"node-7"'
    assert '; NSID: 6e 6f 64 65 2d 37 ("node-7")' in dig("+nsid", name("203.0.113.7"))


# --- structured logs --------------------------------------------------------------------------------


def test_json_logs_are_one_object_per_line(servers, db):  # type: ignore[no-untyped-def]
    server = start(servers, "--db", str(db), "--workers", "2", "--log-format", "json")
    assert poll(lambda: server.log.count('"worker') >= 2, timeout=20), server.log
    server.ask(name("203.0.113.7"))
    assert server.stop() == 0
    lines = server.log.splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert len(records) >= 4
    for record in records:
        assert {"time", "level", "logger", "message", "pid"} <= set(record)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    listening = [r for r in records if r["message"].startswith("listening on 127.0.0.1:")]
    assert listening and listening[0]["logger"] == "dnsbl.daemon" and listening[0]["level"] == "INFO"
    assert listening[0]["listen"] == f"127.0.0.1:{server.port}" and listening[0]["zones"] == [ZONE]
    assert any(r["message"] == "stopped" for r in records)


def test_json_formatter_fields_and_exceptions() -> None:
    import logging

    from dnsbl_server.logs import JsonFormatter

    record = logging.LogRecord("dnsbl.x", logging.WARNING, __file__, 1, "bad %s", ("line",), None)
    record.zone = ZONE  # what `extra={"zone": ...}` does
    out = json.loads(JsonFormatter().format(record))
    assert out["message"] == "bad line" and out["zone"] == ZONE and out["level"] == "WARNING"
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        import sys

        record = logging.LogRecord("dnsbl.x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = JsonFormatter().format(record)
    assert "\n" not in text and "ValueError: boom" in json.loads(text)["exception"]


def test_text_logs_stay_the_default(servers, db):  # type: ignore[no-untyped-def]
    server = start(servers, "--db", str(db), "--workers", "1")
    assert re.search(r"^\d{4}-\d\d-\d\d \S+ dnsbl.daemon INFO listening on", server.log, re.M), server.log


def test_fast_path_hands_nsid_queries_to_the_general_path() -> None:
    from dnsbl_server.index import ZoneIndex
    from dnsbl_server.resolver import Options
    from dnsbl_server.server import Handler, Holder
    from dnsbl_server.zone import Zone, Zones

    zones = Zones.of([Zone("bl.example", ZoneIndex.build(()), serial=1)])
    handler = Handler(Holder(zones), Options(server_id="node-1"))
    plain = dns.message.make_query("2.0.0.127.bl.example", "A", use_edns=0).to_wire()
    asking = nsid_query("2.0.0.127.bl.example").to_wire()
    assert handler.fast.answer(plain, True) is not None  # the fast path's own
    assert handler.fast.answer(asking, True) is None  # the general path's
    reply = dns.message.from_wire(handler(asking, True))
    assert nsid_of(reply) == b"node-1" and values(reply, "A") == ["127.0.0.2"]
    assert handler.counters.kinds == {"bl.example": {metrics.kind(1, 0): 2}}  # both counted, once each


def test_metrics_count_notify_from_the_ops_process(servers, db):  # type: ignore[no-untyped-def]
    """With workers, NOTIFY goes out from the trap/ops process: its counts reach the parent's metrics."""
    assert run_cli("add", "--zone", ZONE, "192.0.2.1", db=db).returncode == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as secondary:
        secondary.bind(("127.0.0.1", 0))
        secondary.settimeout(15)
        target = f"127.0.0.1:{secondary.getsockname()[1]}"
        server = start(
            servers, "--db", str(db), "--workers", "2", "--notify", target, "--metrics", "127.0.0.1:0"
        )
        assert run_cli("add", "--zone", ZONE, "192.0.2.77", db=db).returncode == 0
        data, peer = secondary.recvfrom(4096)  # the NOTIFY for the new serial
        assert (data[2] >> 3) & 0xF == 4  # opcode NOTIFY
        secondary.sendto(data[:2] + bytes([data[2] | 0x80]) + data[3:], peer)  # the reply: QR set
        answered = scrape_until(server, lambda s: sample(s, "dnsbl_notify_total", result="answered") == 1)
        assert answered, scrape(server)
        assert sample(answered, "dnsbl_notify_total", result="sent") == 1
        assert sample(answered, "dnsbl_notify_total", result="failed") == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_stuck_scraper_blocks_nothing(servers, db, workers):  # type: ignore[no-untyped-def]
    server = start(servers, "--db", str(db), "--workers", workers, "--metrics", "127.0.0.1:0")
    host, port = METRICS.search(server.log).group(1).split("//")[1].split("/")[0].split(":")  # type: ignore[union-attr]
    stuck = [socket.create_connection((host, int(port)), timeout=5) for _ in range(3)]
    try:
        stuck[0].sendall(b"GET /met")  # half a request, never finished
        assert rcode(server.ask(name("203.0.113.7"))) == "NOERROR"
        assert scrape_until(server, lambda s: sample(s, "dnsbl_up") == 1)
    finally:
        for sock in stuck:
            sock.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_last_successful_ingest_and_export(servers, db, tmp_path, workers):  # type: ignore[no-untyped-def]
    maildir = tmp_path / "trap"
    for part in ("cur", "new", "tmp"):
        (maildir / part).mkdir(parents=True)
    config = tmp_path / "dnsbl.toml"
    exported = tmp_path / "mirror"
    config.write_text(
        f'db = "{db}"\nzones = ["{ZONE}"]\n[ingest]\nmaildirs = ["{maildir}"]\n'
        f'[export]\ndirectory = "{exported}"\ninterval = "1h"\n'
    )
    before = time.time()
    server = start(servers, "--config", str(config), "--workers", workers, "--metrics", "127.0.0.1:0")
    gauges = ("dnsbl_last_ingest_timestamp_seconds", "dnsbl_last_export_timestamp_seconds")
    done = scrape_until(server, lambda s: all(sample(s, gauge) for gauge in gauges))
    assert done, server.log
    for gauge in gauges:  # the first runs, at start
        assert before <= sample(done, gauge) <= time.time()
