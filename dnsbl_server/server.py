"""The asyncio adapters: UDP (in batches, `udpbatch`) and TCP sockets in, `fastpath` or else `wire.respond`
out. No DNS decisions here.

Rules: a packet never kills the server (an unexpected error is logged, answered SERVFAIL and counted);
TCP carries many queries per connection, answered in order; `tcplimits` decides who may connect and
when a connection is closed (idle, a message never finished); a client that does not read its answers
is not read from either (the write buffer's pause_writing), so it cannot pile up replies in memory.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import udpbatch, wire
from .acl import client_address
from .config import parse_listen
from .errors import ConfigError
from .fastpath import FastPath
from .metrics import NO_REPLY, SAMPLE_MASK, Latency, kind
from .resolver import ANY, IN, NXDOMAIN, Answer, Options, Question, resolve
from .rrl import Limiter
from .statsfile import Tally
from .tcplimits import Connections, Deadline
from .xfr import ClientGone, TransferCounts, TransferPolicy, Transfers
from .xfrwire import transfer_qtype
from .zone import Zones

log = logging.getLogger("dnsbl.server")
_perf_counter = time.perf_counter  # a global lookup, not an attribute's, on the query path
_monotonic = time.monotonic  # the rate limiter's clock: whole seconds that never go back
BACKLOG = 512  # TCP connections waiting to be accepted
UDP_RCVBUF = 4 << 20  # bytes asked for each UDP socket's receive buffer (see _bound)


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
    transfers: TransferCounts = field(default_factory=TransferCounts)  # AXFR/IXFR (and NOTIFY) counts
    kinds: dict[str, dict[int, int]] = field(default_factory=dict)  # zone -> metrics.kind(qtype, rcode) -> n
    latency: Latency = field(default_factory=Latency)  # one query in metrics.SAMPLE, timed
    rrl_dropped: int = 0  # UDP answers not sent: over a rate limit (rrl.py)
    rrl_slipped: int = 0  # UDP answers sent truncated instead: over a rate limit, every slip-th


class Closer(Protocol):
    """What `attach` returns: a way to stop serving a socket."""

    def close(self) -> None: ...


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
        self.nsid = options.server_id.encode() if options.server_id is not None else None  # RFC 5001
        self.question: Question | None = None  # the current query's, once parsed: its zone is counted
        self.on_reply: Callable[[tuple[int, int] | None, bytes, bytes], None] | None = None  # query log
        # the common question, answered from its bytes; None sends it here, to __call__ (the general path)
        self.fast = FastPath(holder, self.counters, clock, udp_cap=udp_cap, auth_ns=options.auth_ns)
        # AXFR/IXFR: refused to everyone until the daemon sets a policy (--allow-transfer)
        self.transfers = Transfers(TransferPolicy(), holder, self.counters.transfers, clock)
        # this process's TCP connections and their limits (the daemon sets the configured ones)
        self.tcp: Connections[TcpProtocol] = Connections()
        # UDP response rate limiting, after the fast path or the general path; None: off (TCP never)
        self.rrl: Limiter | None = None

    def _resolve(self, question: Question) -> Answer:
        self.question = question
        return resolve(question, self.holder.zones, self.clock(), self.options)

    def __call__(self, data: bytes, udp: bool, client: tuple[int, int] | None = None) -> bytes | None:
        self.question = None
        try:
            if udp and transfer_qtype(data):  # over TCP they never get here: TcpProtocol streams them
                reply = self.transfers.udp(data, client)
            else:
                reply = wire.respond(
                    data, self._resolve, udp=udp, udp_cap=self.udp_cap, client=client, nsid=self.nsid
                )
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
        name, tally = self._tally()
        question = self.question
        key = kind(
            question.qtype if question is not None else 0, NO_REPLY if reply is None else reply[3] & 0xF
        )
        kinds = self.counters.kinds.get(name) or self.counters.kinds.setdefault(name, {})
        kinds[key] = kinds.get(key, 0) + 1
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

    def _tally(self) -> tuple[str, Tally]:
        """The zone and its tally for an IN query to a served zone; else "" and `other` (as rbldnsd's
        global stats)."""
        question = self.question
        if question is None or question.opcode or question.qclass not in (IN, ANY):
            return "", self.counters.other
        found = self.holder.zones.find(question.name.split(".") if question.name else [])
        if found is None:
            return "", self.counters.other
        name = found[0].name
        tally = self.counters.zones.get(name)
        if tally is None:
            tally = self.counters.zones[name] = Tally()
        return name, tally


class UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.counters = handler.counters  # held here: one attribute lookup less per query
        self.fast = handler.fast.answer
        self.rrl = handler.rrl.check if handler.rrl is not None else None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if isinstance(getattr(transport, "max_size", None), int):
            # asyncio's selector loop reads each datagram into a new 256 KiB buffer, which costs an mmap,
            # an mremap and a munmap per query; a UDP message is at most 64 KiB (uvloop has no such field)
            transport.max_size = wire.TCP_MAX  # type: ignore[attr-defined]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.reply(data, addr)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def reply(self, data: bytes, addr: tuple[Any, ...]) -> bytes | None:
        """What to send back for one datagram from `addr`, after rate limiting; None for nothing."""
        counters = self.counters
        counters.udp += 1
        started = 0.0 if counters.udp & SAMPLE_MASK else _perf_counter()  # one query in metrics.SAMPLE
        reply = self.fast(data, True)
        if reply is None:
            reply = self.handler(data, True, client_address(addr))
        elif self.handler.on_reply is not None:  # the query log: only then is the peer's address needed
            self.handler.on_reply(client_address(addr), data, reply)
        if reply is not None and self.rrl is not None:
            sent = self.rrl(addr[0], reply, _monotonic())
            if sent is not reply:  # rate limited: dropped, or truncated for a retry over TCP
                if sent is None:
                    counters.rrl_dropped += 1
                else:
                    counters.rrl_slipped += 1
                reply = sent
        if started:
            counters.latency.observe(_perf_counter() - started)
        return reply

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error: %s", exc)


class TcpProtocol(asyncio.Protocol):
    """Many queries per connection, answered in order. A zone transfer (`xfr`) is streamed by a task;
    queries arriving meanwhile wait for it. The protocol is also the transfer's `Sink`: its write
    buffer's pause_writing/resume_writing hold the transfer back."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.framer = wire.Framer()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.client: tuple[int, int] | None = None
        self.transfer: asyncio.Future[None] | None = None
        self.waiting: list[bytes] = []  # messages that arrived during a transfer
        self.writable = asyncio.Event()
        self.writable.set()
        self.gone = False
        self.deadline = Deadline(handler.tcp.limits)
        self.last = 0.0  # when the last byte arrived (loop time)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client = client_address(transport.get_extra_info("peername"))
        admission = self.handler.tcp.admit(self, self.client)
        if admission.evict is not None:
            log.debug("tcp: closing an idle connection to make room")
            admission.evict.close()
        if not admission.admit:
            log.debug("tcp: connection refused: %s", admission.reason)
            self.close()
            return
        self.last = asyncio.get_running_loop().time()
        self._arm()

    def close(self) -> None:
        """Closed by the server (a limit, a timeout): forgotten by the limits at once."""
        self.handler.tcp.release(self)
        if self.transport is None:
            return
        if self.transport.get_write_buffer_size():  # answers the client has not read: close() would
            self.transport.abort()  # wait for them as long as the client likes
        else:
            self.transport.close()

    def _arm(self) -> None:
        """The close timer: idle or read timeout (`tcplimits.Deadline`), none while a transfer runs."""
        if self.timer:
            self.timer.cancel()
            self.timer = None
        if self.transfer is not None:  # a long transfer is not idleness
            self.handler.tcp.busy(self)
            return
        if self.deadline.reading:
            self.handler.tcp.busy(self)
        else:
            self.handler.tcp.rested(self)
        self.timer = asyncio.get_running_loop().call_at(self.deadline.at(self.last), self._expired)

    def _expired(self) -> None:
        self.timer = None
        log.debug("tcp: closing, %s", "message not finished in time" if self.deadline.reading else "idle")
        self.close()

    def data_received(self, data: bytes) -> None:
        messages = self.framer.feed(data)
        self.last = asyncio.get_running_loop().time()
        self.deadline.fed(self.last, len(messages), self.framer.pending)
        for message in messages:
            self.handler.counters.tcp += 1
            if self.transfer is not None:
                self.waiting.append(message)
            else:
                self._message(message)
        if not self.gone:
            self._arm()

    def _message(self, message: bytes) -> None:
        if transfer_qtype(message):
            self._transfer(message)
            return
        counters = self.handler.counters
        started = 0.0 if counters.tcp & SAMPLE_MASK else _perf_counter()  # the latency sample, as UDP's
        reply = self.handler.fast.answer(message, False)
        if reply is None:
            reply = self.handler(message, False, self.client)
        elif self.handler.on_reply is not None:
            self.handler.on_reply(self.client, message, reply)
        if reply is not None and self.transport is not None:
            self.transport.write(wire.frame(reply))
        if started:
            counters.latency.observe(_perf_counter() - started)

    def _transfer(self, message: bytes) -> None:
        if self.timer:
            self.timer.cancel()
            self.timer = None
        self.transfer = asyncio.ensure_future(self.handler.transfers.tcp(message, self.client, self))
        self.transfer.add_done_callback(self._transferred)

    def _transferred(self, task: asyncio.Future[None]) -> None:
        self.transfer = None
        if not task.cancelled() and task.exception() is not None:
            self.handler.counters.errors += 1
            log.error("zone transfer failed", exc_info=task.exception())
            if self.transport is not None:
                self.transport.close()
            return
        if self.gone or self.transport is None:
            return
        waiting, self.waiting = self.waiting, []
        for position, message in enumerate(waiting):
            if self.transfer is not None:  # another transfer: the rest waits for it
                self.waiting = waiting[position:] + self.waiting
                return
            self._message(message)
        self.last = asyncio.get_running_loop().time()  # the transfer stopped the clocks: restart them
        self.deadline.resumed(self.last)
        self._arm()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.gone:
            self.transport.write(data)

    async def drain(self) -> None:
        await asyncio.sleep(0)  # let the loop answer others between two messages
        await self.writable.wait()
        if self.gone:
            raise ClientGone

    def pause_writing(self) -> None:
        self.writable.clear()
        if self.transport is not None:  # a client not reading its answers is not read from either
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writable.set()
        if self.transport is not None and not self.gone:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self.writable.set()
        self.handler.tcp.release(self)
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
        else:
            # Room for bursts: queries that arrive while every worker is off the CPU for some
            # milliseconds (a busy machine, a reload) wait here instead of being dropped by the kernel
            # (the default, ~208 KiB, holds a few hundred). The kernel caps it at net.core.rmem_max.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def attach(
    handler: Handler, udp: socket.socket, tcp: socket.socket, *, batch: bool | None = None
) -> list[Closer]:
    """Serve sockets from `bind` on the running loop. Returns what to close. UDP is read in batches
    (`udpbatch`) where the system can, unless `batch` is False; else by the loop's datagram endpoint."""
    loop = asyncio.get_running_loop()
    protocol = UdpProtocol(handler)
    batches = udpbatch.available() if batch is None else batch
    if batches:
        datagrams: Closer = udpbatch.BatchReader(udp, protocol.reply)
    else:
        datagrams, _ = await loop.create_datagram_endpoint(lambda: protocol, sock=udp)
    server = await loop.create_server(lambda: TcpProtocol(handler), sock=tcp, backlog=BACKLOG)
    return [datagrams, server]


async def listen(handler: Handler, spec: str) -> tuple[list[Closer], str]:
    """Bind UDP and TCP on one address and serve them here. Returns what to close, and the address."""
    udp, tcp, shown = bind(spec)
    return await attach(handler, udp, tcp), shown
