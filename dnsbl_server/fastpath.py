"""The fast path: the common DNSBL question answered straight from its bytes, byte for byte as the
general path (`wire.respond`: dnslib parse, `resolver.resolve`, dnslib encode) answers it.

Rules (tests/test_fastpath.py compares both paths on random questions):
- It answers only what it fully parsed: a query (QR 0, opcode QUERY, AA and TC clear; RA, AD, CD and
  Z are read by neither path) with one question and no answer or authority records; the name 4 decimal
  octet labels (leading zeros as `addresses.octet_label`) or 32 nibble labels in front of a served
  zone, uncompressed; class IN, any type but AXFR and IXFR (`xfr`'s); then nothing, or exactly one
  OPT (root name, version 0, options well formed, no NSID) and nothing after it. Anything else returns
  None: the general path owns every error rule (drop, FORMERR, NOTIMP, BADVERS, TC, SERVFAIL), and so
  does an answer larger than the client's UDP limit.
- Only zones it answers alike: no acl (the zone's or a global one), no name or combined datasets, no
  served zone below it (the general path picks the longest zone), SOA and NS names of plain labels none
  of which looks like an address label (so dnslib's compression never points into the address part).
- The decision is the resolver's: `listings_for` gives the listings, `expand` the texts; the records
  rule (codes sorted, each once; texts in code order, each once) is `resolver._records`'s. Where one
  id says what answers an address (`_ids`: an index's `listing_id`), the answer section is prebuilt by
  that id from the resolver's listings the first time, and no `Entry` is made after; a text with one
  `$` is spliced around the address (`expand` when it would be cut).
- Names are compressed as dnslib does (`_Compressor`): answer owners point at the question, the SOA's
  names at the exact-case suffixes already written.
- The counters are the general path's: the zone's `Tally` here; UDP/TCP counts and the query log stay
  with the protocols.
- Prebuilt pieces (answer sections, SOA and NS sections) hang off one `Zones` value and are dropped
  whole when `holder.zones` is replaced; each cache is cleared when it reaches CACHE_MAX entries.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from .addresses import MAPPED_BASE, TEST_LISTED, TEST_UNLISTED, TXT_LIMIT, V4_MAX, format_address
from .compact import CompactIndex
from .index import LOOK, Entry
from .resolver import (
    ANY,
    IN,
    NOERROR,
    NS,
    NXDOMAIN,
    SOA,
    TXT,
    A,
    Soa,
    expand,
    listings_for,
    soa_record,
)
from .statsfile import Tally
from .wire import DEFAULT_UDP, OPT, TCP_MAX, UDP_CAP
from .zone import Zone, Zones

if TYPE_CHECKING:
    from .server import Counters, Holder

log = logging.getLogger("dnsbl.fastpath")
CACHE_MAX = 4096  # entries per cache; reached (many suffix cases, many listing combinations): cleared

_QUERY_COUNTS = b"\x00\x01\x00\x00\x00\x00"  # qdcount 1, ancount 0, nscount 0
_HEAD = struct.Struct("!BBHHHH")  # the reply header after the ID: flags, counts
_RR = struct.Struct("!HHIH")  # type, class, TTL, rdlength
_OPT_HEAD = b"\x00\x00\x29"  # root name, type OPT
_OUR_OPT = {do: b"\x00" + _RR.pack(OPT, UDP_CAP, do << 15, 0) for do in (0, 1)}  # as wire._opt
_NSID = b"\x00\x03"  # the EDNS option code (RFC 5001)
_TRANSFERS = (b"\x00\xfb", b"\x00\xfc")  # IXFR, AXFR (RFC 1995, 5936)
_ANSWER_NAME = b"\xc0\x0c"  # the question's name: dnslib points at it
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_NIBBLE_LENGTHS = b"\x01" * 32
_OCTETS = {  # every label `addresses.octet_label` reads as an octet, leading zeros included
    text.encode(): value
    for value in range(256)
    for text in {str(value), str(value).zfill(2), str(value).zfill(3)}
    if len(text) <= 3
}
_PLAIN_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}")
_ADDRESS_LIKE = re.compile(r"[0-9]{1,3}|[0-9a-fA-F]")
_T = TypeVar("_T")


class FastPath:
    """`answer(data, udp)`: the reply, or None when the general path must answer."""

    def __init__(
        self,
        holder: Holder,
        counters: Counters,
        clock: Callable[[], float],
        *,
        udp_cap: int = UDP_CAP,
        auth_ns: bool = False,
    ) -> None:
        self.holder = holder
        self.counters = counters
        self.clock = clock
        self.udp_cap = udp_cap
        self.auth_ns = auth_ns
        self._zones: Zones | None = None
        self._by_suffix: dict[bytes, _ZoneFast] = {}

    def answer(self, data: bytes, udp: bool) -> bytes | None:
        try:
            zones = self.holder.zones
            if zones is not self._zones:
                self._load(zones)
            if not self._by_suffix or data[2] > 1 or data[4:10] != _QUERY_COUNTS:
                return None
            if data[10:12] == b"\x00\x00":  # no EDNS, the common shape: read here, a call and a tuple less
                end, opt, limit = len(data) - 4, b"", DEFAULT_UDP if udp else TCP_MAX
            else:
                edns = self._edns(data, udp)
                if edns is None:
                    return None
                end, opt, limit = edns
            found = self._find(data, end)
            if found is None or data[end + 2 : end + 4] != b"\x00\x01" or end - 12 > 255:
                return None  # not ours; or not class IN; or a name over 255 octets (FORMERR)
            if data[end : end + 2] in _TRANSFERS:
                return None  # AXFR/IXFR: the transfer code's (`xfr`), over UDP too
            state, (family, value, start) = found
            reply = state.reply(data, start, end, (family, value), self.clock(), opt, self.auth_ns)
            if len(reply) > limit:
                return None  # the general path sends it truncated (TC)
            self._count(state, (data[end] << 8) | data[end + 1], len(data), reply)
            return reply
        except IndexError:  # labels that run past the end: malformed, the general path's FORMERR
            return None
        except Exception:  # a bug here must not cost the answer: the general path gives it
            log.exception("fast path failed on a %d-byte query; answered by the general path", len(data))
            return None

    def _edns(self, data: bytes, udp: bool) -> tuple[int, bytes, int] | None:
        """(where the question's name ends, our OPT or b"", the size limit), or None: not ours."""
        size = len(data)
        if data[10:12] == b"\x00\x00":
            return size - 4, b"", DEFAULT_UDP if udp else TCP_MAX
        if data[10:12] != b"\x00\x01":
            return None
        if data[size - 11 : size - 8] == _OPT_HEAD and data[size - 2 :] == b"\x00\x00":
            at: int | None = size - 11  # an OPT without options ends the message: the common shape
        else:
            at = _opt_with_options(data)
        if at is None or data[at + 6] != 0:  # EDNS version above 0: BADVERS, the general path's
            return None
        udp_size = (data[at + 3] << 8) | data[at + 4]
        limit = min(max(DEFAULT_UDP, udp_size), self.udp_cap) if udp else TCP_MAX
        return at - 4, _OUR_OPT[data[at + 7] >> 7], limit

    def _find(self, data: bytes, end: int) -> tuple[_ZoneFast, tuple[int, int, int]] | None:
        """The zone and (family, address, where the zone's name starts) for 4 octet labels, else 32
        nibble labels, in front of a zone answered here and ending at `end`.

        (The name's end is where the message's tail says; a zone's name, ending in the root label,
        matching exactly up to it proves the whole name was read.)"""
        address = _v4(data)
        state = self._by_suffix.get(data[address[2] : end].lower()) if address else None
        if state is None:
            address = _v6(data)
            state = self._by_suffix.get(data[76:end].lower()) if address else None
        return None if state is None or address is None else (state, address)

    def _count(self, state: _ZoneFast, qtype: int, size: int, reply: bytes) -> None:
        """As `Handler._count`: NOERROR (NODATA too) is ok, NXDOMAIN nxd; and the metrics' kinds."""
        # metrics.kind: the fast path's rcodes fill that byte alone; types above 255 share one key (OTHER)
        key = ((qtype if qtype < 256 else 256) << 5) | (reply[3] + 1)
        try:
            state.kinds[key] += 1
        except KeyError:  # the first of its kind: no method call on the common path
            state.kinds[key] = 1
        zone = state.zone.name
        tally = self.counters.zones.get(zone)
        if tally is None:
            tally = self.counters.zones[zone] = Tally()
        tally.bytes_in += size
        tally.bytes_out += len(reply)
        if reply[3]:
            tally.nxd += 1
        else:
            tally.ok += 1

    def _load(self, zones: Zones) -> None:
        """A new `Zones` value: fresh per-zone state (and empty caches) for the zones it can answer."""
        self._zones = zones
        self._by_suffix = {}
        if zones.acl is not None:  # a global acl can change any answer for some client
            return
        names = {zone.name for zone in zones}
        for zone in zones:
            if _eligible(zone, names):
                state = _ZoneFast.of(zone)
                state.kinds = self.counters.kinds.setdefault(zone.name, {})  # never reset: held here
                self._by_suffix[state.key] = state


# --- reading the question -----------------------------------------------------------------------


def _v4(data: bytes) -> tuple[int, int, int] | None:
    """Four octet labels from offset 12: (4, address, where the zone's name starts)."""
    get = _OCTETS.get
    p = 13 + data[12]
    a = get(data[13:p])
    q = p + 1 + data[p]
    b = get(data[p + 1 : q])
    r = q + 1 + data[q]
    c = get(data[q + 1 : r])
    s = r + 1 + data[r]
    d = get(data[r + 1 : s])
    if a is None or b is None or c is None or d is None:
        return None
    return 4, (d << 24) | (c << 16) | (b << 8) | a, s


def _v6(data: bytes) -> tuple[int, int, int] | None:
    """32 nibble labels from offset 12; a mapped IPv4 address answers from IPv4 data (`query_address`)."""
    nibbles = data[13:76:2]
    if data[12:76:2] != _NIBBLE_LENGTHS or len(nibbles) != 32 or nibbles.translate(None, _HEX_DIGITS):
        return None
    value = int(nibbles[::-1], 16)
    if MAPPED_BASE <= value <= MAPPED_BASE | V4_MAX:
        return 4, value - MAPPED_BASE, 76
    return 6, value, 76


def _opt_with_options(data: bytes) -> int | None:
    """Where the one OPT record starts when it carries options (a cookie, say), or None when anything
    is off: options must fill its data exactly and end the message."""
    size, p = len(data), 12
    while p < size and data[p]:
        if data[p] > 63:
            return None
        p += data[p] + 1
    at = p + 5  # the root byte, type and class
    if data[at : at + 3] != _OPT_HEAD or at + 11 + ((data[at + 9] << 8) | data[at + 10]) != size:
        return None
    option = at + 11
    while option + 4 <= size:
        if data[option : option + 2] == _NSID:
            return None  # the general path answers NSID (RFC 5001)
        option += 4 + ((data[option + 2] << 8) | data[option + 3])
    return at if option == size else None


# --- which zones ----------------------------------------------------------------------------------


def _eligible(zone: Zone, served: set[str]) -> bool:
    if zone.acl is not None or zone.names or zone.combined or not _plain(zone.name):
        return False
    if any(other.endswith("." + zone.name) for other in served):
        return False  # a name under a served subzone belongs to it, not here
    mname, rname = zone.settings.soa_names(zone.name)
    written = (mname, rname, *zone.settings.name_servers(zone.name))
    return all(_plain(name) and not _may_point_into_address(name, zone.name) for name in written)


def _may_point_into_address(name: str, zone: str) -> bool:
    """Could dnslib compress `name` to a pointer into the question's address labels (our templates
    leave them out)? Only when it ends in the zone with an address-like label just before it."""
    labels, ours = name.lower().split("."), zone.split(".")
    size = len(ours)
    return len(labels) > size and labels[-size:] == ours and bool(_ADDRESS_LIKE.fullmatch(labels[-size - 1]))


def _plain(name: str) -> bool:
    """Labels dnslib writes as they are (IDNA leaves plain ASCII alone), in a name it accepts."""
    return 0 < len(name) <= 253 and all(_PLAIN_LABEL.fullmatch(label) for label in name.split("."))


def _labels(name: str) -> tuple[bytes, ...]:
    return tuple(label.encode() for label in name.split("."))


def _wire_name(labels: tuple[bytes, ...]) -> bytes:
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


# --- writing the reply ----------------------------------------------------------------------------


@dataclass(slots=True)
class _ZoneFast:
    """One zone's prebuilt pieces; `reply` assembles them around the query's own ID and question."""

    zone: Zone
    key: bytes  # the zone's name on the wire, as the lowercased question ends
    a_head: bytes  # an A record up to its data: a pointer to the question's name, type, class, TTL
    txt_head: bytes
    ids: dict[int, _Ids | None]  # per family: what answers an address, as one id (None: no such id)
    plans: dict[tuple[object, ...], _Plan] = field(default_factory=dict)  # by the listings' values
    id_plans: dict[tuple[object, ...], _Plan] = field(default_factory=dict)  # by (family, type, id)
    sections: dict[tuple[object, ...], tuple[bytes, int]] = field(default_factory=dict)
    negatives: dict[tuple[object, ...], tuple[bytes, bytes]] = field(default_factory=dict)
    kinds: dict[int, int] = field(default_factory=dict)  # the zone's `Counters.kinds` entry (metrics)

    @classmethod
    def of(cls, zone: Zone) -> _ZoneFast:
        ttl = zone.settings.ttl
        a_head = _ANSWER_NAME + struct.pack("!HHI", A, IN, ttl)
        txt_head = _ANSWER_NAME + struct.pack("!HHI", TXT, IN, ttl)
        ids = {family: _ids(zone, family) for family in (4, 6)}
        return cls(zone, _wire_name(_labels(zone.name)), a_head, txt_head, ids)

    def reply(
        self,
        data: bytes,
        start: int,
        end: int,
        address: tuple[int, int],
        now: float,
        opt: bytes,
        auth_ns: bool,
    ) -> bytes:
        """`data[start:end]` is the zone's name as asked; the question ends 4 bytes after it."""
        qtype = (data[end] << 8) | data[end + 1]
        answers = self._by_id(qtype, address, now)
        if answers is _ASK:  # no id says what answers here: the resolver's listings, as they are
            listings = listings_for(self.zone, *address, now)
            answers = self._answers(qtype, listings, address) if listings else None
        if answers is None:
            return self._negative(data, start, end, NXDOMAIN, opt)
        body, count = answers
        if not count:
            return self._negative(data, start, end, NOERROR, opt)  # listed, another type: NODATA
        authority, ns = b"", 0
        if auth_ns:
            authority, ns = self._section(_ns_section, data[start:end], start, end + 4 + len(body))
        head = _HEAD.pack(0x84 | data[2], NOERROR, 1, count, ns, 1 if opt else 0)  # QR AA, RD echoed
        return b"".join((data[:2], head, data[12 : end + 4], body, authority, opt))

    def _negative(self, data: bytes, start: int, end: int, rcode: int, opt: bytes) -> bytes:
        """NXDOMAIN or NODATA: all but the ID and the question prebuilt, by the header's flags too."""
        key = (data[start:end], start, data[2], rcode, opt)
        pieces = self.negatives.get(key)
        if pieces is None:
            authority, ns = self._section(_soa_section, data[start:end], start, end + 4)
            head = _HEAD.pack(0x84 | data[2], rcode, 1, 0, ns, 1 if opt else 0)
            pieces = _bounded(self.negatives)[key] = (head, authority + opt)
        return b"".join((data[:2], pieces[0], data[12 : end + 4], pieces[1]))

    def _by_id(self, qtype: int, address: tuple[int, int], now: float) -> tuple[bytes, int] | object | None:
        """The answer section by the id of what answers (`_ids`), its plan made once from the
        resolver's listings: (b"", 0) for a name listed with another type, None when nothing is
        listed, _ASK when no id says (`listings_for` decides, with no plan by id)."""
        family, value = address
        ids = self.ids[family]
        if ids is None or (family == 4 and value in _TEST_POINTS and self.zone.test_points):
            return _ASK
        found = ids(value, now)
        if found < 0:
            return _ASK if found == LOOK else None
        key = (family, qtype, found)
        plan = self.id_plans.get(key)
        if plan is None:
            listings = listings_for(self.zone, family, value, now)
            if not listings:  # cannot be (the id says listed); the resolver's word stands
                return None
            plan = _bounded(self.id_plans)[key] = _Plan.of(qtype, self.a_head, self.txt_head, listings)
        return plan.fixed or plan.render(format_address(family, value))

    def _answers(
        self, qtype: int, listings: tuple[Entry, ...], address: tuple[int, int]
    ) -> tuple[bytes, int]:
        if qtype not in (A, TXT, ANY):
            return b"", 0  # a listed name, another type: NODATA
        if len(listings) == 1:
            key: tuple[object, ...] = (qtype, listings[0].code, listings[0].reason)
        else:
            key = (qtype, tuple((e.code, e.reason) for e in listings))
        plan = self.plans.get(key)
        if plan is None:
            plan = _bounded(self.plans)[key] = _Plan.of(qtype, self.a_head, self.txt_head, listings)
        return plan.fixed or plan.render(format_address(*address))

    def _section(self, build: _Builder, suffix: bytes, start: int, offset: int) -> tuple[bytes, int]:
        """An authority section as dnslib compresses it after this question, cached by what it depends
        on: the zone's name as asked (case), where it sits, and where the section starts."""
        key = (build, suffix, start, offset)
        section = self.sections.get(key)
        if section is None:
            names = _Compressor(offset)
            names.remember(suffix, start)
            section = _bounded(self.sections)[key] = build(self.zone, names)
        return section


_Builder = Callable[[Zone, "_Compressor"], tuple[bytes, int]]
_Ids = Callable[[int, float], int]  # (address, now) -> id of what answers, -1 nothing, LOOK ask
_ASK = object()  # `_ZoneFast._by_id`: `listings_for` decides
_TEST_POINTS = (TEST_LISTED, TEST_UNLISTED)


def _ids(zone: Zone, family: int) -> _Ids | None:
    """How one id names what answers an address of `family` in this zone, so that the answer is
    prebuilt by it and no `Entry` is made per query; None when no id can (`listings_for` then):
    - a zone of the SQLite list alone: the index's `listing_id` (an attr id; LOOK where entries
      overlap or a change since the last fold touches the address);
    - a zone of data files alone (nothing in its SQLite index): the one compact dataset with addresses
      of that family, by result id; no dataset with any: nothing is listed (test points aside: the
      caller asks `listings_for` for those)."""
    index = zone.index
    if not zone.files:
        return partial(index.listing_id, family)
    if index.changed or any(len(index.segments[f].starts) for f in (4, 6)):
        return None
    holding = [d for d in zone.files if not isinstance(d, CompactIndex) or len(d.segments[family])]
    if not holding:
        return _nothing
    if len(holding) == 1 and isinstance(holding[0], CompactIndex):
        return partial(holding[0].listing_id, family)
    return None


def _nothing(address: int, now: float) -> int:
    return -1


def _bounded(cache: dict[tuple[object, ...], _T]) -> dict[tuple[object, ...], _T]:
    if len(cache) >= CACHE_MAX:
        cache.clear()
    return cache


@dataclass(frozen=True, slots=True)
class _Plan:
    """The answer section for one type and one set of listings (`resolver._records`' rule); when a text
    holds `$` it is rendered per address, else once (`fixed`)."""

    a_rrs: bytes
    a_count: int
    txt_head: bytes
    texts: tuple[str, ...]  # the TXT templates, in code order
    fixed: tuple[bytes, int] | None = None  # (section, record count)
    around: tuple[bytes, bytes] | None = None  # one text with one `$`: the bytes before and after it

    @classmethod
    def of(cls, qtype: int, a_head: bytes, txt_head: bytes, listings: tuple[Entry, ...]) -> _Plan:
        codes = sorted({e.code for e in listings}) if qtype in (A, ANY) else []
        a_rrs = b"".join(a_head + b"\x00\x04" + code.to_bytes(4, "big") for code in codes)
        texts: tuple[str, ...] = ()
        if qtype in (TXT, ANY):
            texts = tuple(e.reason for e in sorted(listings, key=lambda e: e.code) if e.reason)
        plan = cls(a_rrs, len(codes), txt_head, texts)
        if len(texts) == 1 and texts[0].count("$") == 1:  # the usual template: splice the address in
            before, after = texts[0].encode().split(b"$")
            return cls(a_rrs, len(codes), txt_head, texts, None, (before, after))
        if any("$" in text.replace("$$", "") for text in texts):
            return plan
        return cls(a_rrs, len(codes), txt_head, texts, plan.render(""))

    def render(self, address: str) -> tuple[bytes, int]:
        if self.around is not None:  # as `expand` would, unless the text is cut (TXT_LIMIT)
            text = self.around[0] + address.encode() + self.around[1]
            if len(text) <= TXT_LIMIT:
                rr = self.txt_head + struct.pack("!HB", len(text) + 1, len(text)) + text
                return self.a_rrs + rr, self.a_count + 1
        texts = dict.fromkeys(expand(text, address).encode() for text in self.texts)
        txt_rrs = b"".join(self.txt_head + struct.pack("!HB", len(t) + 1, len(t)) + t for t in texts)
        return self.a_rrs + txt_rrs, self.a_count + len(texts)


class _Compressor:
    """dnslib's name compression (`DNSBuffer.encode_name`), replayed: every suffix of a name written is
    remembered, labels exactly as written (case kept), at its offset; a name ends in a pointer at the
    first of its suffixes seen before."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.seen: dict[tuple[bytes, ...], int] = {}
        self.out = bytearray()

    def remember(self, name: bytes, offset: int) -> None:
        """The question's zone part, already written at `offset`. (Its address labels are left out:
        `_eligible` keeps every name we write from ending in one.)"""
        labels = []
        while name[0]:
            labels.append(name[1 : 1 + name[0]])
            name = name[1 + name[0] :]
        for i, label in enumerate(labels):
            self.seen.setdefault(tuple(labels[i:]), offset)
            offset += 1 + len(label)

    def name(self, labels: tuple[bytes, ...]) -> None:
        while labels:
            if labels in self.seen:
                self.raw(struct.pack("!H", 0xC000 | (self.seen[labels] & 0x3FFF)))  # dnslib's set_bits
                return
            self.seen[labels] = self.offset
            self.raw(bytes((len(labels[0]),)) + labels[0])
            labels = labels[1:]
        self.raw(b"\x00")

    def raw(self, data: bytes) -> None:
        self.out += data
        self.offset += len(data)

    def record(
        self, owner: tuple[bytes, ...], rtype: int, ttl: int, *rdata: bytes | tuple[bytes, ...]
    ) -> None:
        """One RR as `RR.pack` writes it: its data's names compressed too, then its length filled in."""
        self.name(owner)
        self.raw(struct.pack("!HHIH", rtype, IN, ttl, 0))
        start = len(self.out)
        for part in rdata:
            if isinstance(part, tuple):
                self.name(part)
            else:
                self.raw(part)
        self.out[start - 2 : start] = (len(self.out) - start).to_bytes(2, "big")


def _soa_section(zone: Zone, names: _Compressor) -> tuple[bytes, int]:
    """The negative answer's authority: the SOA with the negative TTL (`resolver._negative`)."""
    record = soa_record(zone, zone.settings.negative_ttl)
    soa = record.data
    assert isinstance(soa, Soa)
    times = struct.pack("!IIIII", soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum)
    names.record(_labels(record.name), SOA, record.ttl, _labels(soa.mname), _labels(soa.rname), times)
    return bytes(names.out), 1


def _ns_section(zone: Zone, names: _Compressor) -> tuple[bytes, int]:
    """A positive answer's authority with auth_ns: the zone's NS set (`resolver._with_auth_ns`)."""
    servers = zone.settings.name_servers(zone.name)
    for server in servers:
        names.record(_labels(zone.name), NS, zone.settings.ttl, _labels(server))
    return bytes(names.out), len(servers)
