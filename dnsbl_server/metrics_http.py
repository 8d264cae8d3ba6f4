"""The Prometheus endpoint of `dnsbl serve --metrics HOST:PORT`: a custom Collector reading the counts
(`metrics`), and a small HTTP/1.0 responder served on whatever loop the process runs.

Rules:
- One endpoint per server, in one process: with workers, the parent, whose counters are the sum of every
  worker's (`metrics.merge`); alone, the serving process. Nothing here runs on the query path: the
  collector reads plain integers when scraped.
- The parent stays single-threaded and never blocks (`workers.py`): `SelectorEndpoint` is non-blocking
  sockets on the supervisor's selector (prometheus-client's own server would start a thread);
  `AsyncEndpoint` is the same on an asyncio loop. Both answer with `reply`, which is pure.
- A request is one GET of /metrics (any other path: 404) in at most MAX_REQUEST bytes; at most
  MAX_CONNECTIONS are open at once (the oldest is closed), and each is closed once answered.
- Metric names follow Prometheus conventions: `_total` counters, `_seconds` units, `dnsbl_` prefix.
"""

from __future__ import annotations

import asyncio
import logging
import selectors
import socket
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from .config import parse_listen
from .errors import ConfigError
from .metrics import BUCKETS, NO_REPLY, Figures, Gauges, unkind
from .server import Counters

log = logging.getLogger("dnsbl.metrics")
MAX_REQUEST = 8192
MAX_CONNECTIONS = 16
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 251: "IXFR"}
_TYPES |= {33: "SRV", 43: "DS", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 252: "AXFR", 255: "ANY", 0: "none"}
_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
_RCODES |= {9: "NOTAUTH", NO_REPLY: "none"}
_TRANSFERS = ("axfr", "ixfr", "ixfr_full", "ixfr_current", "refused", "aborted")


def qtype_text(qtype: int) -> str:
    """The label of a qtype: the usual ones by name, every other one "other" (a flood of random types
    must not make a series each)."""
    return _TYPES.get(qtype, "other")


def rcode_text(rcode: int) -> str:
    return _RCODES.get(rcode, f"RCODE{rcode}")


class DnsblCollector(Collector):
    """Every dnsbl_ metric, read from the counters when scraped."""

    def __init__(
        self,
        counters: Counters,
        figures: Figures,
        gauges: Gauges,
        started: float,
        workers: Callable[[], int],
    ) -> None:
        self.counters = counters
        self.figures = figures
        self.gauges = gauges
        self.started = started
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        yield from self._queries()
        yield self._latency()
        yield from self._store()
        yield from self._transfers()
        yield from self._rrl()
        yield from self._process()

    def _queries(self) -> Iterator[Metric]:
        queries = CounterMetricFamily(
            "dnsbl_queries", "DNS queries answered, by zone (empty: none served), type and rcode",
            labels=("zone", "qtype", "rcode"),
        )  # fmt: skip
        for zone, kinds in sorted(self.counters.kinds.items()):
            labelled: dict[tuple[str, str, str], int] = {}
            for key, count in kinds.items():
                qtype, rcode = unkind(key)
                labels = (zone, qtype_text(qtype), rcode_text(rcode))
                labelled[labels] = labelled.get(labels, 0) + count
            for labels, count in sorted(labelled.items()):
                queries.add_metric(labels, count)
        yield queries

    def _latency(self) -> Metric:
        latency = self.counters.latency
        cumulative, buckets = 0, []
        for bound, count in zip((*BUCKETS, float("inf")), latency.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        return HistogramMetricFamily(
            "dnsbl_query_latency_seconds",
            "Time a worker takes to answer a query, from reading it to its reply ready to send "
            "(one query in 16 sampled)",
            buckets=buckets,
            sum_value=latency.total,
        )

    def _store(self) -> Iterator[Metric]:
        current = self.figures.current
        entries = GaugeMetricFamily(
            "dnsbl_entries", "Live entries in the database, by zone, source and state (listed, excluded)",
            labels=("zone", "source", "state"),
        )  # fmt: skip
        for key, count in sorted(current.entries.items()):
            entries.add_metric(key, count)
        yield entries
        hits = GaugeMetricFamily(
            "dnsbl_trap_hits", "Trap evidence held (pruned after evidence_days), by zone and kind",
            labels=("zone", "kind"),
        )  # fmt: skip
        for key, count in sorted(current.hits.items()):
            hits.add_metric(key, count)
        yield hits
        yield GaugeMetricFamily(
            "dnsbl_figures_timestamp_seconds", "When the entries and hits were last counted",
            value=current.at,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "dnsbl_last_ingest_timestamp_seconds",
            "End of the last trap ingest run in which every source succeeded (0: none yet)",
            value=self.gauges.last_ingest,
        )
        yield GaugeMetricFamily(
            "dnsbl_last_export_timestamp_seconds",
            "End of the last [export] run in which every zone was written (0: none yet)",
            value=self.gauges.last_export,
        )

    def _transfers(self) -> Iterator[Metric]:
        counts = self.counters.transfers
        transfers = CounterMetricFamily(
            "dnsbl_transfers", "Zone transfer requests, by outcome", labels=("result",)
        )
        for name in _TRANSFERS:
            transfers.add_metric((name,), getattr(counts, name))
        yield transfers
        yield CounterMetricFamily(
            "dnsbl_transfer_records", "Records sent in zone transfers", value=counts.records
        )
        notify = CounterMetricFamily("dnsbl_notify", "NOTIFY messages, by result", labels=("result",))
        for name in ("sent", "answered", "failed"):
            notify.add_metric((name,), getattr(counts, f"notify_{name}"))
        yield notify

    def _rrl(self) -> Iterator[Metric]:
        counts = self.counters
        yield CounterMetricFamily(
            "dnsbl_rrl_dropped", "UDP answers not sent: over a rate limit", value=counts.rrl_dropped
        )
        yield CounterMetricFamily(
            "dnsbl_rrl_slipped", "UDP answers sent truncated (TC) for a retry over TCP: over a rate limit",
            value=counts.rrl_slipped,
        )  # fmt: skip

    def _process(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("dnsbl_up", "1 while the server answers", value=1)
        yield GaugeMetricFamily(
            "dnsbl_start_time_seconds", "When the server started (Unix time)", value=self.started
        )
        yield GaugeMetricFamily("dnsbl_workers", "Worker processes answering", value=self.workers())
        info = GaugeMetricFamily("dnsbl_build_info", "The server's version", labels=("version",))
        info.add_metric((__version__,), 1)
        yield info


def registry(collector: DnsblCollector) -> CollectorRegistry:
    """Our collector and the serving process's own (process_*: CPU, memory, start time of this process)."""
    out = CollectorRegistry(auto_describe=False)
    out.register(collector)
    ProcessCollector(registry=out)
    return out


def reply(request: bytes, scrape: Callable[[], bytes]) -> bytes:
    """The HTTP/1.0 response to a whole request head."""
    line = request.split(b"\r\n", 1)[0].split()
    if len(line) < 2 or line[0] not in (b"GET", b"HEAD"):
        return _response(405, b"only GET\n", "text/plain")
    if line[1].split(b"?", 1)[0] not in (b"/metrics", b"/"):
        return _response(404, b"try /metrics\n", "text/plain")
    body = scrape()
    return _response(200, b"" if line[0] == b"HEAD" else body, CONTENT_TYPE, len(body))


def _response(status: int, body: bytes, kind: str, length: int | None = None) -> bytes:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[status]
    head = f"HTTP/1.0 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {length or len(body)}\r\n"
    return head.encode() + b"Connection: close\r\n\r\n" + body


def bind(spec: str) -> tuple[socket.socket, str]:
    """The endpoint's listening socket (port 0: any free port) and its address as logged."""
    try:
        host, port = parse_listen(spec)
    except ConfigError as error:
        raise ConfigError(f"--metrics: {error}") from None
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(64)
    except OSError as error:
        raise ConfigError(f"--metrics {spec}: cannot listen: {error.strerror or error}") from None
    sock.setblocking(False)
    bound = sock.getsockname()[1]
    return sock, f"http://[{host}]:{bound}/metrics" if ":" in host else f"http://{host}:{bound}/metrics"


class SelectorEndpoint:
    """The endpoint on a selector loop (the workers' parent): accept, read a head, write, close."""

    def __init__(self, sock: socket.socket, scrape: Callable[[], bytes]) -> None:
        self.sock = sock
        self.scrape = scrape
        self.selector: selectors.BaseSelector | None = None
        self.open: dict[socket.socket, bytearray] = {}  # connection -> what it sent so far

    def attach(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector
        selector.register(self.sock, selectors.EVENT_READ, self._accept)

    def fds(self) -> list[int]:
        return [self.sock.fileno(), *(conn.fileno() for conn in self.open)]

    def _accept(self) -> None:
        assert self.selector is not None
        try:
            conn, _ = self.sock.accept()
        except OSError:  # gone before we got to it
            return
        conn.setblocking(False)
        if len(self.open) >= MAX_CONNECTIONS:
            self._close(next(iter(self.open)))
        self.open[conn] = bytearray()
        self.selector.register(conn, selectors.EVENT_READ, lambda: self._read(conn))

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(MAX_REQUEST)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        buffer = self.open[conn]
        buffer += data
        if b"\r\n\r\n" in buffer or len(buffer) >= MAX_REQUEST or not data:  # a whole head, or the end
            self._answer(conn, bytes(buffer))

    def _answer(self, conn: socket.socket, request: bytes) -> None:
        assert self.selector is not None
        if not request:
            self._close(conn)
            return
        pending = memoryview(reply(request, self.scrape))
        self.selector.modify(conn, selectors.EVENT_WRITE, lambda: self._write(conn, pending))
        self._write(conn, pending)

    def _write(self, conn: socket.socket, pending: memoryview) -> None:
        assert self.selector is not None
        try:
            sent = conn.send(pending)
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        rest = pending[sent:]
        if not rest:
            self._close(conn)
        else:
            self.selector.modify(conn, selectors.EVENT_WRITE, lambda: self._write(conn, rest))

    def _close(self, conn: socket.socket) -> None:
        assert self.selector is not None
        if self.open.pop(conn, None) is not None:
            self.selector.unregister(conn)
            conn.close()


class _HttpProtocol(asyncio.Protocol):
    def __init__(self, scrape: Callable[[], bytes]) -> None:
        self.scrape = scrape
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if (b"\r\n\r\n" in self.buffer or len(self.buffer) >= MAX_REQUEST) and self.transport is not None:
            self.transport.write(reply(bytes(self.buffer), self.scrape))
            self.transport.close()


async def serve_async(sock: socket.socket, scrape: Callable[[], bytes]) -> asyncio.Server:
    """The endpoint on the running asyncio loop (one process, no workers)."""
    return await asyncio.get_running_loop().create_server(lambda: _HttpProtocol(scrape), sock=sock)


def open_endpoint(
    spec: str, counters: Counters, figures: Figures, gauges: Gauges, workers: Callable[[], int]
) -> tuple[socket.socket, Callable[[], bytes]]:
    """The endpoint's socket, bound (ConfigError if it cannot be), and its scrape; the address logged."""
    sock, shown = bind(spec)
    log.info("metrics on %s", shown, extra={"metrics_url": shown})
    return sock, scraper(DnsblCollector(counters, figures, gauges, time.time(), workers))


def scraper(collector: DnsblCollector) -> Callable[[], bytes]:
    """The text of one scrape, timed at debug level."""
    reg = registry(collector)

    def scrape() -> bytes:
        started = time.perf_counter()
        body = generate_latest(reg)
        log.debug("metrics scraped in %.1f ms", (time.perf_counter() - started) * 1000)
        return body

    return scrape
