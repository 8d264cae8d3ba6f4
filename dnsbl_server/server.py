"""The asyncio adapters: UDP and TCP sockets in, `fastpath` or else `wire.respond` out. No DNS decisions here.

Rules: a packet never kills the server (an unexpected error is logged, answered SERVFAIL and counted);
TCP carries many queries per connection, answered in order, and closes after IDLE_TIMEOUT of silence
(RFC 7766 section 6.2.3).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import wire
from .acl import client_address
from .config import parse_listen
from .errors import ConfigError
from .fastpath import FastPath
from .resolver import ANY, IN, NXDOMAIN, Answer, Options, Question, resolve
from .statsfile import Tally
from .zone import Zones

log = logging.getLogger("dnsbl.server")
IDLE_TIMEOUT = 30.0
BACKLOG = 512  # TCP connections waiting to be accepted


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
        # the common question, answered from its bytes; None sends it here, to __call__ (the general path)
        self.fast = FastPath(holder, self.counters, clock, udp_cap=udp_cap, auth_ns=options.auth_ns)

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
        self.counters = handler.counters  # held here: one attribute lookup less per query
        self.fast = handler.fast.answer
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if isinstance(getattr(transport, "max_size", None), int):
            # asyncio's selector loop reads each datagram into a new 256 KiB buffer, which costs an mmap,
            # an mremap and a munmap per query; a UDP message is at most 64 KiB (uvloop has no such field)
            transport.max_size = wire.TCP_MAX  # type: ignore[attr-defined]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.counters.udp += 1
        reply = self.fast(data, True)
        if reply is None:
            reply = self.handler(data, True, client_address(addr))
        elif self.handler.on_reply is not None:  # the query log: only then is the peer's address needed
            self.handler.on_reply(client_address(addr), data, reply)
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
            reply = self.handler.fast.answer(message, False)
            if reply is None:
                reply = self.handler(message, False, self.client)
            elif self.handler.on_reply is not None:
                self.handler.on_reply(self.client, message, reply)
            if reply is not None and self.transport is not None:
                self.transport.write(wire.frame(reply))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer:
            self.timer.cancel()


def bind(spec: str) -> tuple[socket.socket, socket.socket, str]:
    """UDP and TCP sockets on one address, bound and listening but not served yet (`attach` serves them,
    here or in forked workers that share them); port 0 picks a port free for both. Also returns the
    address as shown in the log. ConfigError if the address cannot be had."""
    host, port = parse_listen(spec)
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        for _ in range(20):
            udp = _bound(family, socket.SOCK_DGRAM, address)
            bound = udp.getsockname()[1]
            try:
                tcp = _bound(family, socket.SOCK_STREAM, (address[0], bound, *address[2:]))
            except OSError:
                udp.close()
                if port:
                    raise
                continue
            tcp.listen(BACKLOG)
            return udp, tcp, f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
    except OSError as error:
        raise ConfigError(f"cannot listen on {spec}: {error.strerror or error}") from None
    raise ConfigError(f"cannot listen on {spec}: no port free for both UDP and TCP")


def _bound(family: int, kind: int, address: tuple[Any, ...]) -> socket.socket:
    """One socket, as asyncio's endpoints make them (TCP: SO_REUSEADDR, and IPv6 only on an IPv6 address)."""
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def attach(
    handler: Handler, udp: socket.socket, tcp: socket.socket
) -> list[asyncio.BaseTransport | asyncio.Server]:
    """Serve sockets from `bind` on the running loop. Returns what to close."""
    loop = asyncio.get_running_loop()
    transport, _proto = await loop.create_datagram_endpoint(lambda: UdpProtocol(handler), sock=udp)
    server = await loop.create_server(lambda: TcpProtocol(handler), sock=tcp, backlog=BACKLOG)
    return [transport, server]


async def listen(handler: Handler, spec: str) -> tuple[list[asyncio.BaseTransport | asyncio.Server], str]:
    """Bind UDP and TCP on one address and serve them here. Returns what to close, and the address."""
    udp, tcp, shown = bind(spec)
    return await attach(handler, udp, tcp), shown
