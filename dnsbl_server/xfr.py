"""Zone transfers out: AXFR (RFC 5936) and IXFR (RFC 1995) of every served zone, over TCP, to the
clients `--allow-transfer` names. The wire format is `xfrwire`'s; the records are `zonedump`'s; the
journal IXFR reads is `journal`'s.

Rules:
- A transfer is answered from the worker's in-memory zone, the one its queries are answered from, so
  what it sends is consistent with the serial it sends (SOA first and last); the zone object is
  immutable, so a swap during the transfer does not change what is sent.
- Refused (REFUSED, and a log line naming the client and the zone): clients outside every
  --allow-transfer network (default: nobody), and every client when there is no database (files-only
  zones). A name that is not a served zone's apex: NOTAUTH (RFC 5936 section 2.2.1). Over UDP an
  allowed IXFR gets the current SOA alone (RFC 1995 section 2: the client then uses TCP); AXFR over
  UDP is REFUSED. With --tsig-key, an allowed client must also sign the request (`xfrtsig`: REFUSED
  unsigned, NOTAUTH with BADKEY/BADSIG/BADTIME, logged), and every message of the answer is signed.
- IXFR: a client at or ahead of our serial gets the SOA alone; else the condensed difference from the
  journal (SOA new, SOA old, deletions, SOA new, additions, SOA new); a serial the journal does not
  reach back to gets the whole zone, AXFR-style (section 4). The journal is read in a thread on a
  connection of its own, never on the event loop.
- Streaming never holds the loop long: one message (<= 16 KiB) is built, written, and the loop runs
  again; while the transport's buffer is full (pause_writing) nothing is built. A client that goes
  away ends its transfer (counted as aborted) and nothing else.
Counts are `TransferCounts`, plain integers on the worker's `server.Counters`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from . import journal
from .addresses import Target, format_address, parse_target
from .errors import ConfigError, TargetError
from .wire import MalformedQuestion, frame
from .xfrwire import AXFR, FORMERR, IN, NOTAUTH, REFUSED, Packer, TransferRequest, parse_request, refusal

if TYPE_CHECKING:
    from . import zonedump
    from .server import Holder
    from .xfrtsig import Signer
    from .zone import Zone

log = logging.getLogger("dnsbl.xfr")


@dataclass
class TransferCounts:
    """Plain integers for the metrics (per worker; NOTIFY counts are the notifying process's)."""

    axfr: int = 0  # whole-zone answers to AXFR
    ixfr: int = 0  # incremental answers from the journal
    ixfr_full: int = 0  # IXFR answered with the whole zone: the journal did not reach back
    ixfr_current: int = 0  # IXFR from a client already at our serial: the SOA alone
    refused: int = 0  # REFUSED or NOTAUTH
    aborted: int = 0  # the client went away mid-transfer
    records: int = 0  # records sent, all transfers
    notify_sent: int = 0  # NOTIFY messages sent, retries included
    notify_answered: int = 0
    notify_failed: int = 0  # gave up after every retry


def parse_networks(specs: Iterable[str], where: str = "--allow-transfer") -> tuple[Target, ...]:
    """CIDRs (or single addresses, ranges) of clients allowed to transfer; ConfigError naming a bad one."""
    out = []
    for spec in specs:
        try:
            target = parse_target(spec)
        except TargetError as error:
            raise ConfigError(f"{where}: {error}") from None
        if target.excluded:
            raise ConfigError(f"{where}: {spec!r}: an exclusion means nothing here")
        out.append(target)
    return tuple(out)


@dataclass(frozen=True)
class TransferPolicy:
    allowed: tuple[Target, ...] = ()  # empty: nobody
    db: str | None = None  # the journal's database; None: no database, every transfer refused
    key: object = None  # dns.tsig.Key every request must be signed with (xfrtsig); None: no TSIG

    def refuses(self, client: tuple[int, int] | None) -> str | None:
        """Why this client may not transfer, or None."""
        if self.db is None:
            return "transfers need a database (these zones come from data files only)"
        if client is None or not any(
            t.family == client[0] and t.lo <= client[1] <= t.hi for t in self.allowed
        ):
            return "not in --allow-transfer"
        return None


class Sink(Protocol):
    """Where a transfer's framed messages go: the TCP connection."""

    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...  # returns once more may be written; raises if the peer is gone


class ClientGone(Exception):
    """The client closed the connection before the transfer ended."""


class Transfers:
    def __init__(
        self, policy: TransferPolicy, holder: Holder, counts: TransferCounts, clock: Callable[[], float]
    ) -> None:
        self.policy = policy
        self.holder = holder
        self.counts = counts
        self.clock = clock

    def udp(self, data: bytes, client: tuple[int, int] | None) -> bytes:
        """AXFR/IXFR over UDP: an allowed IXFR gets the current SOA alone, the rest REFUSED/NOTAUTH."""
        try:
            request = parse_request(data)
        except MalformedQuestion:
            return refusal(data, FORMERR)
        rcode, zone = self._decide(request, client)
        if zone is None or request.qtype == AXFR:
            return refusal(data, rcode or REFUSED)
        signer, rejected = self._signed(data, request, client)
        if rejected is not None:
            return rejected
        from . import zonedump  # imported when first needed: it is a big module, and a transfer is rare

        self.counts.ixfr_current += 1
        packer = Packer(request)
        message = packer.message([_record(packer, zonedump.apex(zone)[0])])
        return signer.sign(message) if signer else message

    async def tcp(self, data: bytes, client: tuple[int, int] | None, out: Sink) -> None:
        try:
            request = parse_request(data)
        except MalformedQuestion as error:
            log.info("transfer request from %s: %s: FORMERR", _shown(client), error)
            out.write(frame(refusal(data, FORMERR)))
            return
        rcode, zone = self._decide(request, client)
        if zone is None:
            out.write(frame(refusal(data, rcode)))
            return
        signer, rejected = self._signed(data, request, client)
        if rejected is not None:
            out.write(frame(rejected))
            return
        try:
            sent = await self._send(request, zone, out, signer)
        except (ClientGone, ConnectionError):
            self.counts.aborted += 1
            log.info("transfer of %s to %s ended: the client went away", zone.name, _shown(client))
            return
        kind = "AXFR" if request.qtype == AXFR else f"IXFR from serial {request.serial}"
        log.info("%s of %s serial %d to %s: %s", kind, zone.name, zone.serial, _shown(client), sent)

    def _decide(self, request: TransferRequest, client: tuple[int, int] | None) -> tuple[int, Zone | None]:
        why = self.policy.refuses(client)
        zone = self.holder.zones.by_labels.get(tuple(request.zone.split("."))) if request.zone else None
        if why is None and (zone is None or request.qclass != IN):
            why, rcode = "not a zone served here", NOTAUTH
        else:
            rcode = REFUSED
        if why is None:
            return 0, zone
        self.counts.refused += 1
        kind = "AXFR" if request.qtype == AXFR else "IXFR"
        log.warning("%s of %s refused to %s: %s", kind, request.zone or ".", _shown(client), why)
        return rcode, None

    def _signed(
        self, data: bytes, request: TransferRequest, client: tuple[int, int] | None
    ) -> tuple[Signer | None, bytes | None]:
        """With --tsig-key: the reply's signer, or the refusal to send (REFUSED unsigned, NOTAUTH bad)."""
        if self.policy.key is None:
            return None, None
        from . import xfrtsig

        try:
            return xfrtsig.verify(data, self.policy.key), None  # type: ignore[arg-type]
        except xfrtsig.Unsigned:
            why, reply = "not signed with the TSIG key", refusal(data, REFUSED)
        except xfrtsig.Rejected as error:
            why, reply = str(error), error.reply
        self.counts.refused += 1
        kind = "AXFR" if request.qtype == AXFR else "IXFR"
        log.warning("%s of %s refused to %s: %s", kind, request.zone, _shown(client), why)
        return None, reply

    async def _send(self, request: TransferRequest, zone: Zone, out: Sink, signer: Signer | None) -> str:
        from . import zonedump

        packer = Packer(request, signer.sign if signer else None)
        now = self.clock()
        if request.qtype == AXFR:
            self.counts.axfr += 1
            return await _stream(out, packer, whole(zone, now), self.counts)
        assert request.serial is not None
        if not _behind(request.serial, zone.serial):
            self.counts.ixfr_current += 1
            return await _stream(out, packer, zonedump.apex(zone)[:1], self.counts)
        diff = await asyncio.get_running_loop().run_in_executor(
            None, _read_chain, self.policy.db, zone.name, request.serial, zone.serial
        )
        if diff is None:
            self.counts.ixfr_full += 1
            return "the journal does not reach back: the whole zone, " + await _stream(
                out, packer, whole(zone, now), self.counts
            )
        self.counts.ixfr += 1
        return await _stream(out, packer, incremental(zone, request.serial, diff), self.counts)


def _behind(client: int, ours: int) -> bool:
    """RFC 1982 serial arithmetic: the client's serial is before ours."""
    return client != ours and (ours - client) % (1 << 32) < (1 << 31)


def _read_chain(db: str | None, zone: str, start: int, end: int) -> journal.Diff | None:
    if db is None:
        return None
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return journal.chain(conn, zone, start, end)
    except sqlite3.Error as error:  # no journal table yet, a locked file: the whole zone will do
        log.warning("reading the IXFR journal of %s: %s", zone, error)
        return None
    finally:
        conn.close()


def whole(zone: Zone, now: float) -> Iterator[zonedump.RR]:
    """The zone as AXFR sends it: SOA, NS, every record, SOA."""
    from . import zonedump

    apex = zonedump.apex(zone)
    yield from apex
    yield from zonedump.records(zone, now)
    yield apex[0]


def soa_at(soa: zonedump.RR, serial: int) -> zonedump.RR:
    fields = soa.rdata.split()
    fields[2] = str(serial)
    return soa._replace(rdata=" ".join(fields))


def incremental(zone: Zone, old: int, diff: journal.Diff) -> Iterator[zonedump.RR]:
    """RFC 1995 section 4, one condensed version: SOA new, SOA old, deletions, SOA new, additions, SOA new."""
    from . import zonedump

    soa = zonedump.apex(zone)[0]
    yield soa
    yield soa_at(soa, old)
    yield from (zonedump.RR(*r) for r in diff.deleted)
    yield soa
    yield from (zonedump.RR(*r) for r in diff.added)
    yield soa


def _record(packer: Packer, rr: zonedump.RR) -> bytes:
    return packer.record(rr.name, rr.rtype, rr.ttl, rr.rdata)


async def _stream(out: Sink, packer: Packer, rrs: Iterable[zonedump.RR], counts: TransferCounts) -> str:
    records = 0

    def encoded() -> Iterator[bytes]:
        nonlocal records
        for rr in rrs:
            records += 1
            yield _record(packer, rr)

    messages = 0
    for message in packer.messages(encoded()):
        out.write(frame(message))
        messages += 1
        await out.drain()
    counts.records += records
    return f"{records} records in {messages} messages"


def _shown(client: tuple[int, int] | None) -> str:
    return format_address(*client) if client else "an unknown client"
