"""Received headers, read: which server handed a trap message to the trap MX.

Owns `relay` (message -> Relay | NoRelay) and `parse_received` (one Received header -> Hop). Pure: no I/O,
clock or logging; it reads a parsed `email.message.Message` (traps.parse_message makes one).

Rules:
- Walk the Received headers from the top (the newest, written by our own side), at most MAX_RECEIVED of the
  first MAX_HEADERS header fields. Skip local hops (no peer: a by-only header, a comment such as qmail's
  "(qmail 1 invoked ...)", local submission, Exim `with local`), loopback peers, and peers in `trusted`
  networks (own relays and forwarders).
- The first other hop is the relay, if a `trap_mx` host received it (its `by` host, compared without case
  or trailing dot; any host when none is named) and its address is public. NON_PUBLIC peers are ours, or a
  NAT/proxy hiding the sender: they are not stepped over unless trusted.
- Headers below the relay are the sender's and may be forged: no address is ever taken from them, so a hop
  that cannot be read ends the walk, with a reason, instead of being stepped over.
- The peer is the TCP address, as RFC 5321 4.4 has the receiver record it: the first address in a comment
  of the from clause, HELO arguments not counted (Postfix/Sendmail/Gmail `(rdns [ip])` and `(unknown [ip])`,
  Exim `([ip] helo=x)` and `([ip]:port ...)`, qmail and Exchange `(ip)`, qmail `(user@ip)`), else an address
  literal in the from clause itself (Exim `from [ip] (helo=x)`). IPv6 as `[IPv6:addr]`, `[addr]` or bare;
  IPv4-mapped IPv6 (::ffff:a.b.c.d) is read as IPv4.
- Nothing here raises on a parsed message, however malformed: a header is read up to HEADER_LIMIT
  characters, and one that cannot be read is a Hop of form "unreadable".
"""

from __future__ import annotations

import email.message
import ipaddress
import itertools
import re
from collections.abc import Sequence
from typing import NamedTuple

from .allowlist import BUILTIN

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_HEADERS = 400  # header fields scanned for Received headers
MAX_RECEIVED = 40  # Received headers walked
HEADER_LIMIT = 2_000  # characters of one Received header read

# The allowlist's built-in ranges (one home for them), plus 240.0.0.0/4, reserved: never a mail peer.
NON_PUBLIC: tuple[IPNetwork, ...] = (
    *(ipaddress.ip_network(net) for net in BUILTIN),
    ipaddress.ip_network("240.0.0.0/4"),
)


class Hop(NamedTuple):
    """One Received header, read."""

    index: int  # 0 = topmost Received header
    header: str  # unfolded text
    ip: IPAddress | None  # the TCP peer (IPv4-mapped IPv6 as IPv4); None if the from clause names none
    by: str  # first word of the by clause, lower case, no trailing dot; "" if none
    form: str  # "from" (a from clause), "local" (no peer: by-only, a comment, local submission), "unreadable"
    helo: str = ""  # first word of the from clause: the peer's HELO or reverse DNS name


class Relay(NamedTuple):
    """The server that handed the message to the trap MX, and the Received header that says so."""

    ip: IPAddress
    hop: Hop
    skipped: tuple[str, ...] = ()  # why each header above it was passed over


class NoRelay(NamedTuple):
    """No usable relay: `reason` is for the log line of the skipped message."""

    reason: str
    skipped: tuple[str, ...] = ()


# --- relay ------------------------------------------------------------------------------------------------


def relay(
    message: email.message.Message, *, trusted: Sequence[IPNetwork] = (), trap_mx: Sequence[str] = ()
) -> Relay | NoRelay:
    """The server that handed the message to the trap MX (see the module rules), or why there is none."""
    items = itertools.islice(message.raw_items(), MAX_HEADERS)
    headers = [value for name, value in items if str(name).strip().lower() == "received"]
    if not headers:
        return NoRelay("no Received header")
    names = {name.lower().rstrip(".") for name in trap_mx}
    skipped: list[str] = []
    for index, header in enumerate(headers[:MAX_RECEIVED]):
        hop = parse_received(str(header), index)
        why = _skip(hop, trusted)
        if why is None:
            return _judge(hop, names, tuple(skipped))
        skipped.append(why)
    return NoRelay(f"all {len(skipped)} Received headers read are local or trusted", tuple(skipped))


def _skip(hop: Hop, trusted: Sequence[IPNetwork]) -> str | None:
    """Why this hop is passed over as our own side of the chain, or None: it may be the relay."""
    if hop.form == "local" or (hop.ip is None and hop.helo in ("localhost", "localhost.localdomain")):
        return f"Received #{hop.index}: local, no peer"
    if hop.ip is not None and hop.ip.is_loopback:
        return f"Received #{hop.index}: from loopback {hop.ip}"
    if hop.ip is not None and any(hop.ip in net for net in trusted):
        return f"Received #{hop.index}: from trusted {hop.ip}"
    return None


def _judge(hop: Hop, trap_mx: set[str], skipped: tuple[str, ...]) -> Relay | NoRelay:
    where = f"Received #{hop.index}"
    if hop.ip is None:
        return NoRelay(f"{where} is unreadable or names no peer address: {hop.header[:200]!r}", skipped)
    if trap_mx and hop.by not in trap_mx:
        return NoRelay(
            f"{where} from {hop.ip} was received by {hop.by or 'no named host'}, not a trap MX", skipped
        )
    if any(hop.ip in net for net in NON_PUBLIC):
        return NoRelay(f"{where} is from {hop.ip}, not a public address (are your relays trusted?)", skipped)
    return Relay(hop.ip, hop, skipped)


# --- one Received header ----------------------------------------------------------------------------------


def parse_received(header: str, index: int = 0) -> Hop:
    """Read one Received header (RFC 5321 4.4) as Postfix, Exim, Sendmail, qmail, Exchange and Gmail write it.

    The peer is the first address in a comment of the from clause, HELO arguments not counted (the TCP info:
    Postfix/Sendmail/Gmail `(rdns [ip])`, `(unknown [ip])`, Exim `([ip] helo=x)`, qmail and Exchange `(ip)`),
    else an address literal in the from clause itself (Exim `from [ip] (helo=x)`).
    """
    text = " ".join(header[:HEADER_LIMIT].split())
    items = _split(text)
    clauses = _clauses(items)
    by_words = clauses.get("by", ([], []))[0]
    by = by_words[0].lower().strip("[]").rstrip(".") if by_words else ""
    if "from" not in clauses:  # by-only (local submission) or a note such as qmail's "(qmail 1 invoked ...)"
        local = by or (items and all(kind == "comment" for kind, _ in items))
        return Hop(index, text, None, by, "local" if local else "unreadable")
    words, comments = clauses["from"]
    in_comments = (_address(_HELO.sub(" ", comment)) for comment in comments)
    ip = next(filter(None, in_comments), None) or _address(" ".join(words))
    with_words = clauses.get("with", ([], []))[0]
    if ip is None and with_words and with_words[0].lower().startswith("local"):  # Exim: with local(-esmtp)
        return Hop(index, text, None, by, "local", words[0].lower() if words else "")
    return Hop(index, text, ip, by, "from", words[0].lower().rstrip(".") if words else "")


_CLAUSE_WORDS = frozenset({"from", "by", "via", "with", "id", "for"})
_HELO = re.compile(r"\b(?:helo|ehlo)(?:\s*=\s*|\s+)\S+", re.I)
_ADDRESS = re.compile(  # [ip], [IPv6:ip], [ip]:port, bare ip, user@ip, ip:port
    r"\[(?:ipv6:)?([0-9a-f:.]+)(?:%[\w.-]*)?\]|(?<![\w.:@-])(?:[\w.+-]*@)?([0-9a-f]*[:.][0-9a-f:.]*[0-9a-f])(?![\w-])",
    re.I,
)


def _split(text: str) -> list[tuple[str, str]]:
    """Top-level ("word", w) and ("comment", text) items of a header, up to the ';' before its date."""
    items: list[tuple[str, str]] = []
    depth, buf, escaped = 0, [], False
    for ch in text:
        if escaped or ch == "\\":
            escaped = not escaped
            buf.append(ch)
        elif depth == 0 and ch in ";(":
            items += [("word", word) for word in "".join(buf).split()]
            if ch == ";":
                return items
            buf, depth = [], 1
        elif ch == "(" or (ch == ")" and depth > 1):
            depth += 1 if ch == "(" else -1
            buf.append(ch)
        elif ch == ")" and depth == 1:
            items.append(("comment", "".join(buf)))
            buf, depth = [], 0
        else:
            buf.append(ch)
    rest = "".join(buf)
    return items + ([("comment", rest)] if depth else [("word", word) for word in rest.split()])


def _clauses(items: list[tuple[str, str]]) -> dict[str, tuple[list[str], list[str]]]:
    """Clause keyword -> (its words, its comments). The word after a keyword is its value, whatever it is."""
    clauses: dict[str, tuple[list[str], list[str]]] = {}
    current: tuple[list[str], list[str]] | None = None
    expect_value = False
    for kind, value in items:
        keyword = value.lower()
        if kind == "word" and not expect_value and keyword in _CLAUSE_WORDS and keyword not in clauses:
            current = clauses[keyword] = ([], [])
            expect_value = True
        elif current is not None:
            current[0 if kind == "word" else 1].append(value)
            expect_value = expect_value and kind != "word"
    return clauses


def _address(text: str) -> IPAddress | None:
    """The first IPv4 or IPv6 address in text; IPv4-mapped IPv6 (::ffff:a.b.c.d) as IPv4."""
    for match in _ADDRESS.finditer(text):
        candidate = match.group(1) or match.group(2)
        for form in (candidate, candidate.rsplit(":", 1)[0] if "." in candidate else ""):  # ip:port
            try:
                ip = ipaddress.ip_address(form)
            except ValueError:
                continue
            mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
            return mapped or ip
    return None
