"""`dnsbl health`: is the server answering each zone as it must? The probes, the verdicts, and a small
DNS client (UDP, then TCP when the reply is truncated), with our own codec (`wire`, dnslib).

Rules:
- A zone with a SQLite list is asked its RFC 5782 test points (section 5): 127.0.0.2 must be listed (an
  A in 127.0.0.0/8) and 127.0.0.1 must not (NXDOMAIN). A data-file-only zone has no test points: its
  SOA is asked, and must come back (NOERROR, an SOA in the answer). Any other answer is unhealthy, and so
  is a probe that gets no reply within the timeout (after one retry).
- "Cannot ask" is different from unhealthy: nothing listens on the address at all (the port refused
  us: ECONNREFUSED, which loopback and most hosts report). That raises CannotAsk.
- A reply must be ours: a response (QR) with our ID and our question; anything else is waited past.
"""

from __future__ import annotations

import random
import socket
import time
from dataclasses import dataclass

from dnslib import QTYPE, RCODE, DNSRecord

from . import wire
from .errors import DnsblError

LISTED, UNLISTED = "127.0.0.2", "127.0.0.1"


class CannotAsk(DnsblError):
    """Nothing answers on the server's address."""


@dataclass(frozen=True)
class Probe:
    zone: str
    name: str
    qtype: str  # "A" or "SOA"
    expect: str  # "listed", "unlisted", or "soa"

    @property
    def what(self) -> str:
        if self.expect == "soa":
            return "SOA"
        return LISTED if self.expect == "listed" else UNLISTED


@dataclass(frozen=True)
class Result:
    probe: Probe
    problem: str | None  # None: as it must be
    seen: str  # what came back, in a few words
    ms: float


def probes(zone: str, has_list: bool) -> list[Probe]:
    if not has_list:
        return [Probe(zone, zone, "SOA", "soa")]
    return [
        Probe(zone, f"2.0.0.127.{zone}", "A", "listed"),
        Probe(zone, f"1.0.0.127.{zone}", "A", "unlisted"),
    ]


def judge(probe: Probe, reply: DNSRecord) -> tuple[str | None, str]:
    """(the problem or None, what the reply said)."""
    rcode = RCODE.get(reply.header.rcode)
    answers = [rr for rr in reply.rr if rr.rtype == getattr(QTYPE, probe.qtype)]
    shown = [f"serial {rr.rdata.times[0]}" if probe.expect == "soa" else str(rr.rdata) for rr in answers]
    seen = " ".join([rcode, *shown])
    if probe.expect == "soa":
        ok = reply.header.rcode == 0 and bool(answers)
        return (None if ok else "no SOA", seen)
    if probe.expect == "listed":
        listed = reply.header.rcode == 0 and any(str(rr.rdata).startswith("127.") for rr in answers)
        return (None if listed else "must be listed (RFC 5782)", seen)
    return (None if reply.header.rcode == 3 else "must not be listed (RFC 5782)", seen)


def run(server: tuple[str, int], probe: Probe, timeout: float) -> Result:
    """One probe, asked and judged; CannotAsk when nothing listens."""
    started = time.monotonic()
    query = DNSRecord.question(probe.name, probe.qtype)
    query.header.id = random.randrange(1 << 16)
    try:
        reply = ask(server, query, timeout)
    except TimeoutError:
        return Result(probe, f"no reply within {timeout:g}s (asked twice)", "", _ms(started))
    problem, seen = judge(probe, reply)
    return Result(probe, problem, seen, _ms(started))


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000


def ask(server: tuple[str, int], query: DNSRecord, timeout: float) -> DNSRecord:
    """The reply over UDP (one retry), or over TCP when it comes truncated."""
    data = bytes(query.pack())
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    for _attempt in range(2):
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(server)
                sock.send(data)
                reply = _ours(sock, query, time.monotonic() + timeout)
            except ConnectionRefusedError:
                raise CannotAsk(f"nothing answers on {_shown(server)}") from None
            except TimeoutError:
                continue
        if not reply.header.tc:
            return reply
        return _tcp(server, family, data, query, timeout)
    raise TimeoutError


def _ours(sock: socket.socket, query: DNSRecord, deadline: float) -> DNSRecord:
    while True:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        data = sock.recv(wire.TCP_MAX)
        reply = _parse(data)
        if reply is not None and _matches(reply, query):
            return reply


def _tcp(server: tuple[str, int], family: int, data: bytes, query: DNSRecord, timeout: float) -> DNSRecord:
    try:
        with socket.create_connection(server, timeout=timeout) as sock:
            sock.sendall(wire.frame(data))
            framer = wire.Framer()
            while True:
                chunk = sock.recv(wire.TCP_MAX)
                if not chunk:
                    raise TimeoutError
                for message in framer.feed(chunk):
                    reply = _parse(message)
                    if reply is not None and _matches(reply, query):
                        return reply
    except ConnectionRefusedError:
        raise CannotAsk(f"nothing answers on {_shown(server)} over TCP") from None


def _parse(data: bytes) -> DNSRecord | None:
    try:
        return DNSRecord.parse(data)
    except Exception:  # dnslib raises several types for junk: not our reply
        return None


def _matches(reply: DNSRecord, query: DNSRecord) -> bool:
    return (
        bool(reply.header.qr)
        and reply.header.id == query.header.id
        and len(reply.questions) == 1
        and str(reply.q.qname).lower() == str(query.q.qname).lower()
        and reply.q.qtype == query.q.qtype
    )


def _shown(server: tuple[str, int]) -> str:
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_address(spec: str) -> tuple[str, int]:
    """HOST:PORT to ask; a wildcard listen address (0.0.0.0, ::) is asked on loopback."""
    from .config import parse_listen
    from .errors import ConfigError

    try:
        host, port = parse_listen(spec)
    except ConfigError as error:
        raise ConfigError(f"--server: {error}") from None
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        try:
            host = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4][0]
        except OSError as error:
            raise DnsblError(f"--server {spec}: cannot resolve {host}: {error}") from None
    return host, port
