"""NOTIFY (RFC 1996): tell every `--notify HOST:PORT` secondary that a zone's serial moved.

Rules:
- Sent from a UDP socket of our own (one per address family), never from the serving sockets: they
  drop every packet with QR set, replies to NOTIFY included.
- Per (secondary, zone) at most one NOTIFY is outstanding. Changes that arrive meanwhile are
  coalesced: the next attempt carries the newest serial, and a change after the reply sends once more.
- The first NOTIFY waits DELAY_S, so every worker serves the new serial by the time the secondary asks
  for it, and changes within that time go out as one.
- No reply: retried ATTEMPTS times in all, the wait doubling from TIMEOUT_S; then a warning is logged
  and the secondary is left to its SOA refresh timer. Any reply counts, whatever its rcode (section
  4.7), if it comes from the address we sent to with our id.
Counts go to `xfr.TransferCounts` (notify_sent, notify_answered, notify_failed).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from dataclasses import dataclass

from .config import parse_listen
from .errors import ConfigError
from .resolver import soa_record
from .xfr import TransferCounts
from .xfrwire import name_wire, notify_query, notify_reply_id
from .zone import Zone

log = logging.getLogger("dnsbl.notify")
ATTEMPTS = 4
TIMEOUT_S = 2.0  # the first wait for a reply; doubled each retry (2+4+8+16 s: given up after 30 s)
DELAY_S = 1.0

Address = tuple[str, int]


def parse_targets(specs: tuple[str, ...] | list[str]) -> list[Address]:
    """`HOST:PORT` (or `[v6]:PORT`) secondaries, resolved now: ConfigError names a bad one."""
    out = []
    for spec in specs:
        host, port = parse_listen(spec)
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as error:
            raise ConfigError(f"--notify {spec}: {error.strerror or error}") from None
        out.append((str(info[0][4][0]), int(port)))
    return out


@dataclass
class _Pending:
    zone: Zone  # the newest version to announce
    task: asyncio.Task[None] | None = None


class _Replies(asyncio.DatagramProtocol):
    def __init__(self, waiting: dict[tuple[int, Address], asyncio.Future[None]]) -> None:
        self.waiting = waiting

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        ident = notify_reply_id(data)
        future = self.waiting.get((ident, (addr[0], addr[1]))) if ident is not None else None
        if future is not None and not future.done():
            future.set_result(None)

    def error_received(self, exc: Exception) -> None:
        log.debug("notify socket: %s", exc)  # ICMP unreachable: the retries go on


class Notifier:
    def __init__(
        self,
        targets: list[Address],
        counts: TransferCounts,
        *,
        attempts: int = ATTEMPTS,
        timeout: float = TIMEOUT_S,
        delay: float = DELAY_S,
    ) -> None:
        self.targets = targets
        self.counts = counts
        self.attempts, self.timeout, self.delay = attempts, timeout, delay
        self.pending: dict[tuple[Address, str], _Pending] = {}
        self.waiting: dict[tuple[int, Address], asyncio.Future[None]] = {}
        self.transports: dict[int, asyncio.DatagramTransport] = {}

    def changed(self, zone: Zone) -> None:
        """The zone's serial moved: announce it to every secondary (coalesced with what is pending)."""
        for target in self.targets:
            key = (target, zone.name)
            entry = self.pending.get(key)
            if entry is None:
                entry = self.pending[key] = _Pending(zone)
            entry.zone = zone
            if entry.task is None:
                entry.task = asyncio.ensure_future(self._announce(key, entry))

    async def _announce(self, key: tuple[Address, str], entry: _Pending) -> None:
        target, name = key
        await asyncio.sleep(self.delay)
        try:
            sent = None
            while sent is None or entry.zone.serial != sent:
                sent = entry.zone.serial
                if not await self._attempts(target, entry):
                    log.warning(
                        "NOTIFY of %s serial %d to %s:%d: no reply after %d attempts; the secondary "
                        "will find the change at its SOA refresh",
                        name,
                        sent,
                        *target,
                        self.attempts,
                    )
                    self.counts.notify_failed += 1
                    return
        finally:
            entry.task = None
            if self.pending.get(key) is entry:
                del self.pending[key]

    async def _attempts(self, target: Address, entry: _Pending) -> bool:
        """Sends until a reply comes; each retry carries the newest serial."""
        transport = await self._transport(target)
        wait = self.timeout
        for _ in range(self.attempts):
            ident = secrets.randbelow(1 << 16)
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiting[(ident, target)] = future
            try:
                transport.sendto(_message(ident, entry.zone), target)
                self.counts.notify_sent += 1
                await asyncio.wait_for(future, wait)
            except TimeoutError:
                wait *= 2
                continue
            finally:
                self.waiting.pop((ident, target), None)
            self.counts.notify_answered += 1
            log.info("NOTIFY of %s serial %d to %s:%d answered", entry.zone.name, entry.zone.serial, *target)
            return True
        return False

    async def _transport(self, target: Address) -> asyncio.DatagramTransport:
        family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        if family not in self.transports:
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _Replies(self.waiting), family=family
            )
            self.transports[family] = transport
        return self.transports[family]

    async def close(self) -> None:
        tasks = [p.task for p in self.pending.values() if p.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for transport in self.transports.values():
            transport.close()


def _message(ident: int, zone: Zone) -> bytes:
    record = soa_record(zone)
    soa = record.data
    rdata = name_wire(soa.mname + ".") + name_wire(soa.rname + ".")  # type: ignore[attr-defined]
    times = (soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum)  # type: ignore[attr-defined]
    rdata += b"".join(t.to_bytes(4, "big") for t in times)
    return notify_query(ident, zone.name, rdata, record.ttl)
