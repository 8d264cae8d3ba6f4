"""Response rate limiting (RRL) over UDP: which answers go out, which are dropped, which go out
truncated. Pure policy in the style of BIND's RRL: no socket, no clock of its own (`now` is a
parameter), plain dicts and ints; `server.UdpProtocol` asks `Limiter.check` about each reply and sends
what it is given back.

Why (README, "Rate limiting"): a spoofed source makes a DNS server a reflector; a DNSBL's real clients
are a few busy resolvers asking many *different* names, and a dropped answer reads as "not listed" to a
mail server. So the limit is on the *same* answer to the same network, plus a high ceiling per network.

Rules:
- A client is its IPv4 /24 or its IPv6 /56 (an IPv4-mapped address is IPv4): a spoofer cannot dodge by
  rotating the host part, and one site's resolvers share a budget, as BIND keys them.
- A response is keyed by (client, qname without case, qtype, rcode); every NXDOMAIN of one zone is one
  response (the zone read from the SOA owner in the authority section, as BIND does), so a random-name
  flood collapses into one key; every error (REFUSED, FORMERR, SERVFAIL, ...) is one response per rcode
  (BIND's errors-per-second). NOERROR answers and NODATA: `responses_per_second`; NXDOMAIN:
  `nxdomains_per_second`; errors: `responses_per_second`.
- Besides, every response to one client counts against `all_per_second` (BIND's all-per-second).
- An account is credited its rate at each new second, up to one second's worth, and debited one per
  response; it may sink to `window` seconds' worth of debt, so a flood must stop for up to `window`
  seconds before it is answered again, while a client briefly over the rate is back within a second
  or two. A response is limited when its account or its client's is in debt.
- Slip: every `slip`-th limited response goes out truncated (TC=1, the question only, no EDNS) so a real
  client retries over TCP, which is never limited; the others are dropped. 0: drop all; 1: truncate all.
  A truncated reply is no larger than the query, so slipping reflects nothing larger than what came in.
- Exempt networks (loopback by default) are never limited; a whole address is checked, not its /24.
- Memory is bounded: each table (responses, clients, addresses seen) holds at most `max_table`
  entries. When full it keeps the accounts in debt (the only ones limiting anything), the most indebted
  first, at most half the cap, and forgets the rest, which start again with a second's credit. The
  scan is amortised over the inserts that refill the table, so a flood of spoofed sources costs a
  constant per query and cannot grow memory.
- Counts are per serving process: with N workers, each keeps its own tables (the kernel spreads one
  client's queries over them), so the server as a whole allows up to N times each rate.
"""

from __future__ import annotations

import heapq
import ipaddress
import socket
from dataclasses import dataclass

from .errors import ConfigError

NXDOMAIN = 3
TC = 0x02  # in the third header byte (RFC 1035 section 4.1.1)
_KINDS = [bytes((0x80 | rcode,)) for rcode in range(16)]  # how a key not keyed by name begins
_EXEMPT = None  # what `_client` maps an exempt address to
_MAPPED = b"\0" * 10 + b"\xff\xff"  # how an IPv4-mapped IPv6 address begins


@dataclass(frozen=True)
class RrlSettings:
    """The [rrl] table. Rates are responses per second per client network and serving process."""

    # the same answer to one /24, per second: a site's resolvers each asking about the same spam source
    # during a run; a resolver caches an answer for its TTL, so a real client repeats one rarely
    responses_per_second: int = 20
    # every NXDOMAIN of one zone to one /24: most of a DNSBL's answers are "not listed", one for each
    # different address a busy resolver asks about, so this is as high as the ceiling
    nxdomains_per_second: int = 1000
    # every answer to one /24: the busiest real resolver asks a few hundred different names a second;
    # above it every `slip`-th answer is truncated, and the TCP retry is answered
    all_per_second: int = 1000
    slip: int = 2  # every 2nd limited answer truncated (BIND's default): real clients get through on TCP
    window: int = 15  # seconds of debt a flood runs up (BIND's default)
    exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")  # never limited: loopback
    max_table: int = 20000  # accounts per table (BIND's max-table-size default)

    def __post_init__(self) -> None:
        for name in ("responses_per_second", "nxdomains_per_second", "all_per_second", "window", "max_table"):
            _check_int(name, getattr(self, name), 1)
        _check_int("slip", self.slip, 0)
        for cidr in self.exempt:
            _network(cidr)


def _check_int(name: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"rrl {name} must be a whole number, at least {least}, not {value!r}")


def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except (TypeError, ValueError):
        raise ConfigError(f"rrl exempt: {cidr!r} is not a network (CIDR)") from None


def _packed(host: str) -> bytes:
    """An address as 4 bytes (IPv4, IPv4-mapped IPv6 too: an IPv4 client on a dual-stack socket) or 16."""
    host = host.partition("%")[0]  # an IPv6 scope (fe80::1%eth0)
    if ":" not in host:
        return socket.inet_pton(socket.AF_INET, host)
    packed = socket.inet_pton(socket.AF_INET6, host)
    return packed[12:] if packed[:12] == _MAPPED else packed


def _span(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int, int]:
    """(address size in bytes, network, mask) as integers; an IPv4-mapped IPv6 network as IPv4."""
    mapped = network.network_address.ipv4_mapped if network.version == 6 else None  # type: ignore[union-attr]
    if mapped is not None and network.prefixlen >= 96:
        network = ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network.max_prefixlen // 8, int(network.network_address), int(network.netmask)


def client_prefix(host: str) -> bytes:
    """The network a client address counts as: its /24 (IPv4) or /56 (IPv6), as bytes led by the
    family (4 or 6), so that no IPv4 key reads as an IPv6 one."""
    return _prefix(_packed(host))


def _prefix(packed: bytes) -> bytes:
    return b"\4" + packed[:3] if len(packed) == 4 else b"\6" + packed[:7]


def response_key(reply: bytes) -> bytes:
    """What makes two replies "the same response". NOERROR (an answer, or NODATA): the qname in lower
    case and the qtype (its two bytes lowered too: at worst two types share an account). NXDOMAIN: the
    zone instead of the name. Another rcode: the rcode alone. Those two begin with 0x80 | rcode, which
    no name does (a label is at most 63 octets), so the three kinds never meet."""
    rcode = reply[3] & 0xF
    if rcode == 0:
        return reply[12 : reply.find(b"\0", 12) + 3].lower()  # no name found: b""
    if rcode != NXDOMAIN:
        return _KINDS[rcode]
    end = reply.find(b"\0", 12)  # the end of the question's name: the first name is never compressed
    return _KINDS[NXDOMAIN] + _zone(reply, end) if end > 0 else _KINDS[NXDOMAIN]


def _zone(reply: bytes, end: int) -> bytes:
    """The owner of the first authority record (the SOA of an NXDOMAIN), in lower case: a pointer into
    the question, as our replies have it, or a name written out; the qname when there is none."""
    at = end + 5  # past QTYPE and QCLASS; an NXDOMAIN from us has no answer records
    if reply[6] or reply[7] or not (reply[8] or reply[9]) or at >= len(reply):
        return reply[12:end].lower()
    if reply[at] & 0xC0 == 0xC0:
        pointer = (reply[at] & 0x3F) << 8 | reply[at + 1] if at + 1 < len(reply) else 0
        if 12 <= pointer <= end:
            return reply[pointer:end].lower()
        return reply[12:end].lower()
    stop = reply.find(b"\0", at)
    return reply[at:stop].lower() if stop > 0 else reply[12:end].lower()


def truncated(reply: bytes) -> bytes:
    """The reply cut to its header and question with TC set: the client should ask again over TCP."""
    end = reply.find(b"\0", 12)
    question = reply[12 : end + 5] if end >= 0 and reply[5] else b""
    return b"%s%c%s\0%c\0\0\0\0\0\0%s" % (
        reply[:2],
        reply[2] | TC,
        reply[3:4],
        1 if question else 0,
        question,
    )


class Limiter:
    """One serving process's accounts. `check` is the only call on the query path."""

    def __init__(self, settings: RrlSettings | None = None) -> None:
        self.settings = settings = settings or RrlSettings()
        self.exempt = tuple(_span(_network(cidr)) for cidr in settings.exempt)
        self.cap = settings.max_table
        self.slip = settings.slip
        self.all_rate = settings.all_per_second
        self.rates = [settings.responses_per_second] * 16  # by rcode
        self.rates[NXDOMAIN] = settings.nxdomains_per_second
        self.window = settings.window
        self.responses: dict[bytes, list[int]] = {}  # client network + response_key -> account
        self.clients: dict[bytes, list[int]] = {}
        self.hosts: dict[str, bytes | None] = {}  # address -> its network, or _EXEMPT

    def check(self, host: str, reply: bytes, now: float) -> bytes | None:
        """What to send for `reply` to the client at `host` at time `now`: the reply itself, its
        truncated form (slip), or None (drop)."""
        prefix = self.hosts.get(host, b"")
        if prefix == b"":
            prefix = self._client(host)
        if prefix is _EXEMPT:
            return reply
        second = int(now)
        rcode = reply[3] & 0xF
        if rcode:
            key = prefix + response_key(reply)
        else:  # NOERROR, most answers: `response_key` written out
            key = prefix + reply[12 : reply.find(b"\0", 12) + 3].lower()
        # `_debit` written out twice: this runs for every UDP answer, and a call costs as much as it
        account = self.responses.get(key)
        if account is None:
            account = self._open(self.responses, key, self.rates[rcode], second)
        elif account[1] != second:
            balance = account[0] + account[3] * (second - account[1])
            account[0] = (account[3] if balance > account[3] else balance) - 1
            account[1] = second
        elif account[0] > account[4]:
            account[0] -= 1
        client = self.clients.get(prefix)
        if client is None:
            client = self._open(self.clients, prefix, self.all_rate, second)
        elif client[1] != second:
            balance = client[0] + client[3] * (second - client[1])
            client[0] = (client[3] if balance > client[3] else balance) - 1
            client[1] = second
        elif client[0] > client[4]:
            client[0] -= 1
        if account[0] >= 0 and client[0] >= 0:
            return reply
        over = account if account[0] < 0 else client
        over[2] += 1
        if self.slip and over[2] % self.slip == 0:
            return truncated(reply)
        return None

    def _open(self, table: dict[bytes, list[int]], key: bytes, rate: int, second: int) -> list[int]:
        """A new account, debited its first response. An account: [balance, the second it was last
        credited, limited responses (for slip), rate, floor (`window` seconds of debt)]. Credit: `rate`
        at each new second, up to `rate`; a debit stops at the floor."""
        if len(table) >= self.cap:
            self._shrink(table, second)
        account = table[key] = [rate - 1, second, 0, rate, -rate * self.window]
        return account

    def _shrink(self, table: dict[bytes, list[int]], second: int) -> None:
        """Keep the accounts in debt (the only ones limiting anything), at most half the cap, the most
        indebted first; the others start again at full credit when next seen."""
        debts = []
        for key, (balance, seen, _, rate, _) in table.items():
            if balance + rate * (second - seen) < 0:
                debts.append((balance + rate * (second - seen), key))
        if len(debts) > self.cap // 2:
            debts = heapq.nsmallest(self.cap // 2, debts, key=lambda item: item[0])
        survivors = {key: table[key] for _, key in debts}
        table.clear()
        table.update(survivors)

    def _client(self, host: str) -> bytes | None:
        """`host`'s network, or _EXEMPT; remembered (the cache is emptied when full). Integers, not
        `ipaddress` objects: under a flood of spoofed sources nearly every query comes here."""
        try:
            packed = _packed(host)
        except (ValueError, OSError):
            prefix: bytes | None = b"\0"  # not an address (a Unix socket?): one client for all such
        else:
            number = int.from_bytes(packed, "big")
            exempt = any(len(packed) == size and number & mask == net for size, net, mask in self.exempt)
            prefix = _EXEMPT if exempt else _prefix(packed)
        if len(self.hosts) >= self.cap:
            self.hosts.clear()
        self.hosts[host] = prefix
        return prefix
