"""The asyncio adapters: UDP and TCP sockets in, `wire.respond` out. No DNS decisions here.

Rules: a packet never kills the server (an unexpected error is logged, answered SERVFAIL and counted);
TCP carries many queries per connection, answered in order, and closes after IDLE_TIMEOUT of silence
(RFC 7766 section 6.2.3).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import wire
from .acl import client_address
from .config import parse_listen
from .resolver import ANY, IN, NXDOMAIN, Answer, Options, Question, resolve
from .statsfile import Tally
from .zone import Zones

log = logging.getLogger("dnsbl.server")
IDLE_TIMEOUT = 30.0


@dataclass
class Counters:
    """Plain integers, cheap on the hot path; read elsewhere."""

    udp: int = 0
    tcp: int = 0
    dropped: int = 0  # no reply: short, or a response (QR set)
    formerr: int = 0
    errors: int = 0  # unexpected exceptions, answered SERVFAIL
    zones: dict[str, Tally] = field(default_factory=dict)  # per zone, as rbldnsd counts (`statsfile`)
    other: Tally = field(default_factory=Tally)  # queries in no zone, and packets without a question


class Holder:
    """The one place the current zones live; replaced by a single assignment."""

    def __init__(self, zones: Zones) -> None:
        self.zones = zones


class Handler:
    def __init__(
        self,
        holder: Holder,
        options: Options,
        udp_cap: int = wire.UDP_CAP,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.holder = holder
        self.options = options
        self.udp_cap = udp_cap
        self.clock = clock
        self.counters = Counters()
        self.question: Question | None = None  # the current query's, once parsed: its zone is counted
        self.on_reply: Callable[[tuple[int, int] | None, bytes, bytes], None] | None = None  # query log

    def _resolve(self, question: Question) -> Answer:
        self.question = question
        return resolve(question, self.holder.zones, self.clock(), self.options)

    def __call__(self, data: bytes, udp: bool, client: tuple[int, int] | None = None) -> bytes | None:
        self.question = None
        try:
            reply = wire.respond(data, self._resolve, udp=udp, udp_cap=self.udp_cap, client=client)
        except Exception:
            self.counters.errors += 1
            log.exception("error answering a %d-byte query", len(data))
            reply = wire.servfail(data)
        if reply is None:
            self.counters.dropped += 1
        elif reply[3] & 0xF == 1:
            self.counters.formerr += 1
        self._count(len(data), reply)
        if self.on_reply is not None and reply is not None:
            self.on_reply(client, data, reply)
        return reply

    def _count(self, size: int, reply: bytes | None) -> None:
        """rbldnsd's per-zone counters: NOERROR is ok (NODATA too), NXDOMAIN nxd, the rest err."""
        tally = self._tally()
        tally.bytes_in += size
        if reply is None:
            tally.err += 1
            return
        tally.bytes_out += len(reply)
        rcode = reply[3] & 0xF
        if rcode == 0:
            tally.ok += 1
        elif rcode == NXDOMAIN:
            tally.nxd += 1
        else:
            tally.err += 1

    def _tally(self) -> Tally:
        """The zone's tally for an IN query to a served zone; else `other` (as rbldnsd's global stats)."""
        question = self.question
        if question is None or question.opcode or question.qclass not in (IN, ANY):
            return self.counters.other
        found = self.holder.zones.find(question.name.split(".") if question.name else [])
        if found is None:
            return self.counters.other
        name = found[0].name
        tally = self.counters.zones.get(name)
        if tally is None:
            tally = self.counters.zones[name] = Tally()
        return tally


class UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.handler.counters.udp += 1
        reply = self.handler(data, True, client_address(addr))
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error: %s", exc)


class TcpProtocol(asyncio.Protocol):
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.framer = wire.Framer()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.client: tuple[int, int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client = client_address(transport.get_extra_info("peername"))
        self._arm()

    def _arm(self) -> None:
        if self.timer:
            self.timer.cancel()
        assert self.transport is not None
        self.timer = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self.transport.close)

    def data_received(self, data: bytes) -> None:
        self._arm()
        for message in self.framer.feed(data):
            self.handler.counters.tcp += 1
            reply = self.handler(message, False, self.client)
            if reply is not None and self.transport is not None:
                self.transport.write(wire.frame(reply))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer:
            self.timer.cancel()


async def listen(handler: Handler, spec: str) -> tuple[list[asyncio.BaseTransport | asyncio.Server], str]:
    """Bind UDP and TCP on one address; port 0 picks a port free for both. Returns what to close."""
    host, port = parse_listen(spec)
    loop = asyncio.get_running_loop()
    for _ in range(20):
        udp, _proto = await loop.create_datagram_endpoint(
            lambda: UdpProtocol(handler), local_addr=(host, port)
        )
        bound = udp.get_extra_info("sockname")[1]
        try:
            tcp = await loop.create_server(
                lambda: TcpProtocol(handler), host, bound, reuse_address=True, backlog=512
            )
        except OSError:
            udp.close()
            if port:
                raise
            continue
        shown = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        return [udp, tcp], shown
    raise OSError(f"no port free for both UDP and TCP on {host}")
