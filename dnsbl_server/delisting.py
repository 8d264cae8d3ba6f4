"""Delisting requests and the web page's input rules: pure, no I/O, time given as `now` (README, "Web page").

Owns:
- what a lookup may ask (`parse_query`: an IPv4/IPv6 address or a domain name; anything else is refused
  with a one-line reason, before any work is done);
- what a delisting request may hold (`check_request`: field lengths, a plausible e-mail address, one line
  where one line is meant) and when one is refused for flooding (`refusal`: per requester address, all
  requesters together, one pending request per listed address);
- a lookup rate window per client, in memory (`RateWindow`);
- CSRF tokens (`csrf_token`/`csrf_ok`): an HMAC of a per-browser random value kept in a cookie and of the
  time it was issued, so a form posted from another site (no cookie, or no token) is refused;
- a request's life (`TRANSITIONS`: pending -> approved | denied, nothing else) and what approving it does
  to the list (`approval_plan`).

Rules: an input error is a `RequestError` whose text is shown to the person as it is (no HTML: pages
escape it); nothing here decides whether something is listed (that is the resolver's `decide`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from .addresses import Target, format_address, format_target, parse_address
from .errors import DnsblError, TargetError
from .index import Entry, decide

MAX_QUERY = 253  # a domain name's longest text form (RFC 1035 §2.3.4, without the trailing dot)
MAX_EMAIL = 254  # RFC 5321 §4.5.3.1.3 path limit, less the angle brackets
MAX_REASON = 2000
MIN_REASON = 10
CSRF_MAX_AGE = 2 * 3600.0  # a form older than this is refused; the page is simply reloaded

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_EMAIL = re.compile(r"^[^@\s<>\"]{1,64}@[a-z0-9.-]{1,253}\.[a-z]{2,63}$", re.I)


class RequestError(DnsblError):
    """A lookup or delisting request that cannot be taken as it is (the message says why)."""


# --- lookups --------------------------------------------------------------------------------


class Query(NamedTuple):
    """What a lookup asks: one address (family, value), or a domain name to resolve."""

    text: str
    family: int = 0  # 0: a domain
    address: int = 0
    domain: str = ""


def parse_query(text: str) -> Query:
    """An address (IPv4, IPv6, IPv4-mapped) or a domain name; RequestError otherwise."""
    value = text.strip()
    if not value:
        raise RequestError("enter an IPv4 or IPv6 address or a domain name")
    if len(value) > MAX_QUERY + 1:
        raise RequestError(f"too long: {len(value)} characters (at most {MAX_QUERY})")
    if ":" in value or re.fullmatch(r"[0-9./]+", value):
        try:
            family, address = parse_address(value)
        except TargetError as error:
            message = str(error).replace("invalid address", "not an address")
            raise RequestError(message.replace("invalid target", "not an address")) from None
        return Query(value, family, address)
    name = value.lower().rstrip(".")
    labels = name.split(".")
    if len(labels) < 2 or len(name) > MAX_QUERY or not all(_LABEL.match(p) for p in labels):
        raise RequestError(f"{value[:80]!r} is neither an IP address nor a domain name")
    return Query(value, domain=name)


# --- delisting requests -----------------------------------------------------------------------


class Draft(NamedTuple):
    """A delisting request that passed the field rules (not yet the flood rules)."""

    family: int
    address: int
    email: str
    reason: str

    @property
    def address_text(self) -> str:
        return format_address(self.family, self.address)


def check_request(address: str, email: str, reason: str) -> Draft:
    """The form's fields, or RequestError naming the first field that is wrong."""
    try:
        family, value = parse_address(address.strip()[: MAX_QUERY + 1])
    except TargetError:
        raise RequestError("address: enter the single IPv4 or IPv6 address to delist") from None
    email = email.strip()
    if len(email) > MAX_EMAIL or not _EMAIL.match(email):
        raise RequestError("e-mail: enter an address we can answer to, like postmaster@example.net")
    reason = reason.replace("\r\n", "\n").strip()
    if len(reason) < MIN_REASON:
        raise RequestError(f"reason: say in a few words what was fixed (at least {MIN_REASON} characters)")
    if len(reason) > MAX_REASON:
        raise RequestError(f"reason: {len(reason)} characters, at most {MAX_REASON}")
    if any(not (c.isprintable() or c == "\n") for c in reason):
        raise RequestError("reason: control characters are not allowed")
    return Draft(family, value, email, reason)


@dataclass(frozen=True)
class Limits:
    """Flood limits on delisting requests (config `[web]`), counted over the last hour."""

    per_client: int = 3
    total: int = 60


class Recent(NamedTuple):
    """What the store counted for a new request (see requests_store.Requests.recent)."""

    from_client: int  # requests from this requester address in the last hour
    total: int  # requests from anyone in the last hour
    pending_for_address: int  # undecided requests for the same listed address


def refusal(recent: Recent, limits: Limits) -> str | None:
    """Why a request is refused for flooding, or None: it may be stored."""
    if recent.pending_for_address:
        return "a request for this address is already waiting for a decision; there is no need to ask twice"
    if recent.from_client >= limits.per_client:
        return f"too many requests from your address: at most {limits.per_client} an hour; try again later"
    if recent.total >= limits.total:
        return "too many requests right now; try again in an hour"
    return None


class RateWindow:
    """At most `limit` events per client in the last `window` seconds (lookups); memory is bounded by
    forgetting clients whose events are all older than the window."""

    def __init__(self, limit: int, window: float = 60.0, max_clients: int = 100_000) -> None:
        self.limit, self.window, self.max_clients = limit, window, max_clients
        self._seen: dict[str, deque[float]] = {}

    def allow(self, client: str, now: float) -> bool:
        times = self._seen.get(client)
        if times is None:
            if len(self._seen) >= self.max_clients:
                self._forget(now)
            times = self._seen[client] = deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True

    def _forget(self, now: float) -> None:
        stale = [c for c, t in self._seen.items() if not t or t[-1] <= now - self.window]
        for client in stale or list(self._seen):  # all busy: start over rather than grow without bound
            del self._seen[client]


# --- CSRF ---------------------------------------------------------------------------------------


def new_session() -> str:
    """The random value kept in the browser's cookie."""
    return secrets.token_urlsafe(24)


def csrf_token(secret: bytes, session: str, now: float) -> str:
    issued = str(int(now))
    return f"{issued}.{_mac(secret, session, issued)}"


def csrf_ok(secret: bytes, session: str | None, token: str | None, now: float) -> bool:
    """The token was issued for this cookie by this server, and not too long ago."""
    if not session or not token or "." not in token:
        return False
    issued, _, mac = token.partition(".")
    if not issued.isdigit() or not hmac.compare_digest(mac, _mac(secret, session, issued)):
        return False
    return now - int(issued) <= CSRF_MAX_AGE


def _mac(secret: bytes, session: str, issued: str) -> str:
    return hmac.new(secret, f"{session}|{issued}".encode(), hashlib.sha256).hexdigest()


# --- a request's life -------------------------------------------------------------------------

PENDING, APPROVED, DENIED = "pending", "approved", "denied"
TRANSITIONS = {(PENDING, "approve"): APPROVED, (PENDING, "deny"): DENIED}


def next_status(status: str, action: str) -> str:
    """The status after `action`; RequestError if a decided request is decided again."""
    try:
        return TRANSITIONS[(status, action)]
    except KeyError:
        raise RequestError(f"the request is already {status}") from None


class Plan(NamedTuple):
    """What approving a request does in one zone."""

    remove: tuple[tuple[str, str], ...]  # (target, source) entries deleted
    exclude: bool  # then add `!ADDRESS`: the address is still covered by a larger entry


def approval_plan(candidates: Iterable[Entry], family: int, address: int, now: float) -> Plan:
    """Approving removes the answering entries that are this address alone or a trap's listing (a trap
    lists a relay, or its IPv6 prefix); a larger entry someone listed by hand (a /24) is not removed for
    one address in it: an exclusion of the address is added instead, if it would still answer."""
    entries = list(candidates)
    removed = [e for e in decide(entries, now) if e.size == 1 or e.key[1].startswith("trap")]
    keys = {e.key for e in removed}
    rest = [e for e in entries if e.key not in keys]
    return Plan(tuple(e.key for e in removed), bool(decide(rest, now)))


def exclusion(family: int, address: int) -> Target:
    return Target(family, address, address, True)


def exclusion_text(family: int, address: int) -> str:
    return format_target(exclusion(family, address))
