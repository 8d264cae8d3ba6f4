"""The SMTP trap listener: the MX of the trap domains, on the running asyncio loop with aiosmtpd (README,
"Trap ingester"). What reaches it is recorded as trap hits and listed within about `flush_s`.

Rules:
- The relay is the TCP peer, or, when the peer is a configured proxy, the client its PROXY header (v1 or
  v2) declares; never a Received header (the sender writes those) and never the proxy itself. A PROXY
  header from any other peer is just a bad command. IPv4-mapped IPv6 peers count as their IPv4 address.
- Replies are a normal MX's: 250 for trap recipients and for any DATA; 550 5.7.1 for a recipient outside
  the trap domains (no relaying, nothing recorded); 552 above MAX_MESSAGE.
- DATA is classified like any trap mail (traps.verdict); what is not backscatter is accepted and skipped
  with its reason, logged.
- A callout (sender verification): RCPT to a trap from a null or postmaster sender, then the transaction
  ends without DATA (RSET, QUIT, or HELO/EHLO and a new MAIL). One session counts once.
- Hits go to SQLite from one worker thread (the loop never waits on SQLite), batched: what is queued is
  written `flush_s` after the first of it, one transaction and one serial change per batch.

Layers: `TrapSession` decides for one connection (no I/O, no clock); `TrapHandler` adapts aiosmtpd's hooks
to it and logs; `Recorder` writes; `start_listener` wires them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import secrets
import socket
import sqlite3
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from aiosmtpd.proxy_protocol import V2_CMD, ProxyData
from aiosmtpd.smtp import SMTP, Envelope, Session

from .allowlist import Allowlist
from .config import parse_listen
from .errors import ConfigError, DnsblError
from .ingest import MAX_MESSAGE
from .policy import Hit, Policy
from .store import Store
from .traps import parse_message, verdict

log = logging.getLogger("dnsbl.smtptrap")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PROXY_TIMEOUT_S = 10.0  # for a proxy's header; aiosmtpd warns below 3 s
MAX_RECIPIENTS = 100  # per transaction, as common MTAs do (RFC 5321 4.5.3.1.8 requires at least 100)
MAX_QUEUE = 100_000  # hits waiting for a database that keeps failing; beyond this they are dropped
SOURCE = "smtp"


@dataclass(frozen=True)
class SmtpdSettings:
    listen: tuple[str, ...]
    trap_domains: tuple[str, ...]
    proxy_from: tuple[Network, ...] = ()
    hostname: str = ""  # in the greeting; default: this host's FQDN
    flush_s: float = 1.0


@dataclass
class Summary:
    sessions: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)  # listed, extended, duplicate, allowlisted
    refused: int = 0  # relay attempts
    skipped: Counter[str] = field(default_factory=Counter)  # reason head -> count

    def line(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items())) or "none"
        outcomes = ", ".join(f"{k} {n}" for k, n in sorted(self.outcomes.items())) or "nothing listed"
        return (
            f"{self.sessions} session(s); backscatter: {kinds}; {outcomes}; "
            f"{self.refused} relay attempt(s) refused; {sum(self.skipped.values())} skipped"
        )


# --- the decisions, per connection ------------------------------------------------------------------------


class Judged(NamedTuple):
    """What a DATA message is: its kind (None: not backscatter), why, and the id it counts once under."""

    kind: str | None
    reason: str
    message_id: str


class Skipped(NamedTuple):
    reason: str


def judge(content: bytes) -> Judged:
    message = parse_message(content)
    decided = verdict(message)
    found = str(message.get("Message-ID") or "").strip()
    message_id = found or "sha256:" + hashlib.sha256(content).hexdigest()
    return Judged(None if decided.kind is None else str(decided.kind), decided.reason, message_id[:500])


def unmapped(ip: IPAddress) -> IPAddress:
    """::ffff:a.b.c.d is a.b.c.d (a dual-stack socket's view of an IPv4 peer)."""
    return ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip


def proxied_client(data: ProxyData) -> IPAddress | None:
    """The client a PROXY header declares; None for the proxy's own connections (v2 LOCAL, v1 UNKNOWN) and
    unix sockets, whose address fields mean nothing (haproxy proxy-protocol.txt, 2.1 and 2.2)."""
    if data.version == 2 and data.command != V2_CMD.PROXY:
        return None
    src = data.src_addr
    return unmapped(src) if isinstance(src, ipaddress.IPv4Address | ipaddress.IPv6Address) else None


def is_null_or_postmaster(sender: str) -> bool:
    """`MAIL FROM:<>` reaches aiosmtpd as "<>"; postmaster is matched in any case, with or without domain.
    `double-bounce@` counts too: it is the sender of Postfix's address verification by default."""
    local = sender.rpartition("@")[0] if "@" in sender else sender
    return sender in ("", "<>") or local.lower() in ("postmaster", "double-bounce")


@dataclass
class TrapSession:
    """One SMTP connection as the trap sees it: who sends (`relay`; None while a proxy has not declared a
    client) and the open transaction. Methods return what to record or skip; the caller does the I/O."""

    trap_domains: frozenset[str]
    relay: IPAddress | None
    session_id: str = field(default_factory=lambda: secrets.token_hex(8))
    helo: str = ""
    sender: str | None = None
    traps: list[str] = field(default_factory=list)

    def is_trap(self, address: str) -> bool:
        _local, at, domain = address.rpartition("@")
        return bool(at) and domain.lower().rstrip(".") in self.trap_domains

    def mail(self, sender: str, helo: str) -> None:
        self.sender, self.helo, self.traps = sender, helo, []

    def rcpt(self, address: str) -> None:
        self.traps.append(address)

    def end(self, now: float) -> Hit | Skipped | None:
        """The transaction ends without DATA: a callout if a null or postmaster sender asked for a trap.
        The session id is the message id, so one session counts once however often it asks."""
        sender, traps = self.sender, self.traps
        self.discard()
        if sender is None or not traps or not is_null_or_postmaster(sender):
            return None
        return self._hit("callout", f"callout:{self.session_id}", traps[0], now)

    def delivered(self, judged: Judged, now: float) -> Hit | Skipped:
        traps = self.traps
        self.discard()
        if judged.kind is None:
            return Skipped(f"not backscatter ({judged.reason})")
        return self._hit(judged.kind, judged.message_id, traps[0] if traps else "", now)

    def discard(self) -> None:
        self.sender, self.traps = None, []

    def _hit(self, kind: str, message_id: str, trap: str, now: float) -> Hit | Skipped:
        if self.relay is None:
            return Skipped(f"no client address ({kind} on a proxy's own connection)")
        return Hit(now, self.relay.version, int(self.relay), kind, message_id, _storable(trap)[:500], SOURCE)


def _storable(text: str) -> str:
    """aiosmtpd keeps bytes that are not UTF-8 in an address as surrogates, which SQLite refuses."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# --- aiosmtpd adapter -------------------------------------------------------------------------------------


def _shown(text: str | None) -> str:
    """Envelope text for a log line: quoted and cut, so a client cannot forge log lines."""
    return repr((text or "")[:200])


def where(trap: TrapSession) -> str:
    """Who sent what, for a log line. Of a trap only its domain: trap addresses are never shown."""
    more = f" +{len(trap.traps) - 1}" if len(trap.traps) > 1 else ""
    to = f", to a trap at {_shown(trap.traps[0].rpartition('@')[2])}{more}" if trap.traps else ""
    return f"from {trap.relay or 'no client'} (helo {_shown(trap.helo)}, mail from {_shown(trap.sender)}{to})"


class TrapSMTP(SMTP):
    """aiosmtpd's protocol, reading a PROXY header only from configured proxies, with the connection's
    TrapSession beside it."""

    def __init__(self, handler: TrapHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.trap_handler = handler
        self.trap = TrapSession(handler.trap_domains, None)
        self.peer: IPAddress | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.peer = unmapped(ipaddress.ip_address(transport.get_extra_info("peername")[0]))
        from_proxy = any(self.peer in network for network in self.trap_handler.proxy_from)
        # aiosmtpd waits for a PROXY header on every connection once it has a proxy timeout, and has no
        # per-peer switch: only a configured proxy may declare the client, everyone else speaks plain SMTP.
        self._proxy_timeout = PROXY_TIMEOUT_S if from_proxy else None
        self.trap.relay = None if from_proxy else self.peer
        self.trap_handler.connected(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.trap_handler.disconnected(self)
        super().connection_lost(error)

    async def push(self, status: Any) -> None:
        # aiosmtpd refuses an oversized message or line itself, without a hook: its reply is where we see it.
        text = status.decode("ascii", "replace") if isinstance(status, bytes) else str(status)
        if text.startswith(("552 ", "500 Line too long")):
            self.trap_handler.refused_data(self, text)
        await super().push(status)


class TrapHandler:
    """aiosmtpd hooks -> TrapSession; logs every hit, refusal and skip; queues hits on the Recorder.
    A log line's `where` is taken before the outcome is decided: deciding ends the transaction."""

    def __init__(self, settings: SmtpdSettings, recorder: Recorder, summary: Summary) -> None:
        self.trap_domains = frozenset(d.strip().lower().rstrip(".") for d in settings.trap_domains)
        self.proxy_from = settings.proxy_from
        self.recorder, self.summary = recorder, summary
        self.live: set[TrapSMTP] = set()
        self.classifier = ThreadPoolExecutor(1, thread_name_prefix="smtptrap-classify")

    def connected(self, server: TrapSMTP) -> None:
        self.summary.sessions += 1
        self.live.add(server)

    def disconnected(self, server: TrapSMTP) -> None:
        self.live.discard(server)

    async def handle_PROXY(
        self, server: TrapSMTP, session: Session, envelope: Envelope, data: ProxyData
    ) -> bool:
        server.trap.relay = proxied_client(data)
        log.info("PROXY from %s: client %s", server.peer, server.trap.relay or "none (the proxy's own)")
        return True

    async def handle_MAIL(
        self, server: TrapSMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        # A transaction HELO/EHLO reset (aiosmtpd calls no hook for that) ends here.
        self._report(where(server.trap), server.trap.end(time.time()))
        server.trap.mail(address, session.host_name or "")
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: TrapSMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        trap = server.trap
        if not trap.is_trap(address):
            self.summary.refused += 1
            log.info("refused relay %s to %s", where(trap), _shown(address))
            return "550 5.7.1 Relaying denied"
        if len(trap.traps) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        trap.rcpt(address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: TrapSMTP, session: Session, envelope: Envelope) -> str:
        trap, seen = server.trap, where(server.trap)
        content = envelope.original_content or b""
        try:  # in a thread: a 10 MB message must not stall the loop (nor the DNS answers sharing it)
            judged = await asyncio.get_running_loop().run_in_executor(self.classifier, judge, content)
        except Exception:  # a classifier bug costs one message, never the listener
            log.exception("classifying a message %s failed", seen)
            trap.discard()
            self._report(seen, Skipped("classifier error"))
        else:
            self._report(seen, trap.delivered(judged, time.time()))
        return f"250 2.0.0 OK: queued as {trap.session_id}"

    async def handle_RSET(self, server: TrapSMTP, session: Session, envelope: Envelope) -> str:
        self._report(where(server.trap), server.trap.end(time.time()))
        return "250 2.0.0 OK"

    async def handle_QUIT(self, server: TrapSMTP, session: Session, envelope: Envelope) -> str:
        self._report(where(server.trap), server.trap.end(time.time()))
        return "221 2.0.0 Bye"

    async def handle_exception(self, error: Exception) -> str:
        log.exception("SMTP session error")
        return "451 4.3.0 Local error, try again later"

    def refused_data(self, server: TrapSMTP, reply: str) -> None:
        self._report(where(server.trap), Skipped(f"not accepted ({reply})"))
        server.trap.discard()  # the sender was told no: neither a delivery nor a callout

    def _report(self, seen: str, outcome: Hit | Skipped | None) -> None:
        if isinstance(outcome, Skipped):
            self.summary.skipped[outcome.reason.split(" (")[0]] += 1
            log.info("skipped message %s: %s", seen, outcome.reason)
        elif outcome is not None:
            self.summary.kinds[outcome.kind] += 1
            log.info("%s %s", outcome.kind, seen)
            self.recorder.add(outcome)


# --- recording --------------------------------------------------------------------------------------------


class Recorder:
    """Hits into SQLite from one worker thread, in batches: what is queued is written `flush_s` after the
    first of it arrived, in one transaction (a burst is one serial change, not one per hit)."""

    def __init__(
        self, store: Store, worker: ThreadPoolExecutor, zone: str, policy: Policy, summary: Summary
    ) -> None:
        self.store, self.worker, self.zone, self.policy, self.summary = store, worker, zone, policy, summary
        self._queue: list[Hit] = []
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, flush_s: float) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(flush_s))

    def add(self, hit: Hit) -> None:
        if len(self._queue) >= MAX_QUEUE:
            log.error("%s hit dropped: %d wait for the database", hit.kind, len(self._queue))
            return
        self._queue.append(hit)
        self._wake.set()

    async def _run(self, flush_s: float) -> None:
        while not self._closing.is_set():
            await self._wake.wait()
            with contextlib.suppress(TimeoutError):  # closing cuts the wait short
                await asyncio.wait_for(self._closing.wait(), flush_s)
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        batch, self._queue = self._queue, []
        if not batch:
            return
        try:
            counts = await asyncio.get_running_loop().run_in_executor(self.worker, self._write, batch)
        except (DnsblError, sqlite3.Error) as error:  # locked, full, unreachable: the next flush retries
            log.error("cannot record %d hit(s), will retry: %s", len(batch), error)
            self._queue[:0] = batch
            self._wake.set()
            return
        except Exception:  # a bug: lose this batch, keep listening and recording
            log.exception("recording %d hit(s) failed; they are lost", len(batch))
            return
        self.summary.outcomes.update(counts)
        shown = ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))
        log.info("recorded %d hit(s): %s", len(batch), shown)

    def _write(self, batch: list[Hit]) -> Counter[str]:
        """In the worker thread. The allowlist is read each time: `dnsbl allowlist add` applies at once."""
        allowlist = Allowlist.of(self.store.allowlist(self.zone))
        return self.store.record_hits(self.zone, batch, self.policy, allowlist, time.time())

    async def close(self) -> None:
        self._closing.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        await self._flush()  # what came in during the last write, or a retry
        if self._queue:
            log.error("%d hit(s) not recorded: the database kept failing", len(self._queue))
        await asyncio.get_running_loop().run_in_executor(self.worker, self.store.close)
        self.worker.shutdown()


# --- the listener -----------------------------------------------------------------------------------------


class Listener:
    """Running servers; `close()` stops accepting, drops open sessions and writes what is queued."""

    def __init__(self, handler: TrapHandler, recorder: Recorder) -> None:
        self.handler, self.recorder = handler, recorder
        self.servers: list[asyncio.Server] = []
        self.addresses: list[str] = []

    @property
    def summary(self) -> Summary:
        return self.handler.summary

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for connection in list(self.handler.live):
            if isinstance(connection.transport, asyncio.Transport):
                connection.transport.abort()  # Server.wait_closed waits for open connections (3.12+)
        await asyncio.sleep(0)  # connection_lost runs
        for server in self.servers:
            await server.wait_closed()
        await self.recorder.close()
        self.handler.classifier.shutdown(cancel_futures=True)


async def start_listener(settings: SmtpdSettings, db: Path, zone: str, policy: Policy) -> Listener:
    """Bind every `settings.listen` address on the running loop and record what arrives into `zone` of
    `db`. Raises ConfigError for a bad or busy listen address, StoreError for the database."""
    addresses = [parse_listen(spec) for spec in settings.listen]
    loop = asyncio.get_running_loop()
    hostname = settings.hostname or await loop.run_in_executor(None, socket.getfqdn)  # may ask the DNS
    worker = ThreadPoolExecutor(1, thread_name_prefix="smtptrap-db")
    try:
        store = await loop.run_in_executor(worker, Store.open, db)
    except BaseException:
        worker.shutdown()
        raise
    summary = Summary()
    recorder = Recorder(store, worker, zone, policy, summary)
    recorder.start(settings.flush_s)
    listener = Listener(TrapHandler(settings, recorder, summary), recorder)
    _quiet_aiosmtpd()
    try:
        for host, port in addresses:
            await _bind(listener, host, port, hostname)
    except BaseException:
        await listener.close()
        raise
    return listener


async def _bind(listener: Listener, host: str, port: int, hostname: str) -> None:
    loop = asyncio.get_running_loop()

    def protocol() -> TrapSMTP:
        return TrapSMTP(
            listener.handler,
            hostname=hostname,
            ident="ESMTP",  # not "Python SMTP x.y": a trap answers like any MX
            data_size_limit=MAX_MESSAGE,
            enable_SMTPUTF8=True,  # internationalised bounces are backscatter too
            loop=loop,
        )

    try:
        server = await loop.create_server(protocol, host, port, reuse_address=True)
    except OSError as error:
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    listener.servers.append(server)
    for sock in server.sockets:
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"
        listener.addresses.append(shown)
        log.info("trap smtpd listening on %s", shown)


def _quiet_aiosmtpd() -> None:
    """aiosmtpd logs every connection and command at INFO on "mail.log"; ours says what matters. Left
    alone if someone configured that logger."""
    aiosmtpd_log = logging.getLogger("mail.log")
    if aiosmtpd_log.level == logging.NOTSET:
        aiosmtpd_log.setLevel(logging.WARNING)
