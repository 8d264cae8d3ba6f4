"""The pure resolver: question + zones + time -> answer. Every DNSBL decision is made here.

No sockets, clocks, loggers or dnslib objects: the wire module turns bytes into a `Question` and an
`Answer` back into bytes. DNS outcomes are values (rcodes), never exceptions.

Decisions, in order (RFC 1035, 2308, 5782):
0. a client the global acl ignores: no reply at all (`acl` owns the acl rules).
1. opcode other than QUERY: NOTIMP.
2. class CHAOS: `version.bind`/`version.server` TXT (unless hidden), `hostname.bind`/`id.server` TXT
   (the server id, when set: RFC 4892), else REFUSED. Other non-IN: REFUSED.
3. a name in no served zone: REFUSED. Then the acls (global and the zone's) for the client: ignore (no
   reply), refuse (REFUSED, the apex too), empty (only SOA, NS and generic records), always listed (every
   name the zone could list answers with the acl's A/TXT, `$` the client's address), or pass.
4. the apex: SOA, NS (ANY gives both); other types NODATA.
5. a full address name (4 octets, or 32 nibbles; IPv4-mapped IPv6 answers from IPv4 data):
   listed -> A / TXT / ANY (both), other types NODATA; not listed -> NXDOMAIN.
   RFC 5782 test points in zones with a SQLite list: 127.0.0.2 listed, 127.0.0.1 never.
   Data-file datasets add their answers to the SQLite list's, unless a SQLite exclusion covers it.
6. a partial address name (QNAME minimisation) above a listed address: NODATA; else NXDOMAIN.
7. zones with name datasets (dnset, generic) or combined datasets: every dataset's answers add up
   (`nameindex` owns their matching rules); a combined dataset answers from its most closely
   matching subzone only, whose own name always exists. Name data answers at the apex too (A, TXT, MX).
Negative answers carry the SOA in authority with TTL min(SOA TTL, minimum) (RFC 2308 section 5).
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

from .acl import Action, Listed, Rule, decide, ignores
from .addresses import (
    MAPPED_BASE,
    TEST_LISTED,
    TEST_UNLISTED,
    TXT_LIMIT,
    V4_MAX,
    format_address,
    query_address,
    v4_prefix,
    v6_prefix,
)
from .index import Entry, ZoneIndex
from .nameindex import Combined, Labels, NameData, NameSet, Part
from .zone import Zone, Zones

# RR types and classes, rcodes (RFC 1035 3.2.2-3.2.4, 4.1.1)
A, NS, SOA, MX, TXT, AAAA, ANY = 1, 2, 6, 15, 16, 28, 255
IN, CH = 1, 3
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5


class Question(NamedTuple):
    name: str  # as asked: case preserved, no trailing dot ("" is the root)
    qtype: int
    qclass: int = IN
    opcode: int = 0
    client: tuple[int, int] | None = None  # (family, address) of the querying client, for the acls


class Record(NamedTuple):
    name: str
    rtype: int
    ttl: int
    data: object  # A: dotted str; NS: name; TXT: str; SOA: Soa; MX: (preference, host)
    rclass: int = IN


class Soa(NamedTuple):
    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


class Answer(NamedTuple):
    rcode: int
    answer: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()
    authoritative: bool = True
    silent: bool = False  # send nothing at all (an acl's ignore)


class Options(NamedTuple):
    version: str | None = None  # None hides it (`--hide-version`)
    auth_ns: bool = False  # the zone's NS in the authority section of positive answers (rbldnsd's -A)
    server_id: str | None = None  # `--server-id`: hostname.bind / id.server (and NSID, in `wire`)


DEFAULT_OPTIONS = Options()


def resolve(question: Question, zones: Zones, now: float, options: Options = DEFAULT_OPTIONS) -> Answer:
    if ignores(zones.acl, question.client):  # before anything, as rbldnsd: not even NOTIMP or REFUSED
        return SILENT
    if question.opcode != 0:
        return Answer(NOTIMP, authoritative=False)
    if question.qclass == CH:
        return _chaos(question, options)
    if question.qclass not in (IN, ANY):
        return Answer(REFUSED, authoritative=False)
    labels = question.name.split(".") if question.name else []
    found = zones.find(labels)
    if found is None:
        return Answer(REFUSED, authoritative=False)
    zone, rel = found
    rule = decide(zones.acl, zone.acl, question.client)
    if rule is Action.PASS:
        answer = _in_zone(question, zone, rel, now)
    else:
        answer = _by_acl(question, zone, rel, rule, now)
    return _with_auth_ns(answer, zone) if options.auth_ns else answer


def _with_auth_ns(answer: Answer, zone: Zone) -> Answer:
    """rbldnsd without -a: a reply with answers carries the NS set in authority (the apex NS query too)."""
    if answer.rcode != NOERROR or not answer.answer:
        return answer
    ns = tuple(Record(zone.name, NS, zone.settings.ttl, n) for n in zone.settings.name_servers(zone.name))
    return answer._replace(authority=ns)


def _in_zone(question: Question, zone: Zone, rel: list[str], now: float) -> Answer:
    if zone.names or zone.combined:
        return _with_names(question, zone, rel, now)
    if not rel:
        return _apex(question, zone)
    return _address(question, zone, rel, now)


def _chaos(question: Question, options: Options) -> Answer:
    name = question.name.lower()
    if name in ("version.bind", "version.server"):
        text = options.version
    elif name in ("hostname.bind", "id.server"):  # RFC 4892: which server of an anycast set answered
        text = options.server_id
    else:
        text = None
    if text is not None and question.qtype in (TXT, ANY):
        return Answer(NOERROR, (Record(question.name, TXT, 0, text, rclass=CH),))
    return Answer(REFUSED, authoritative=False)


# --- the apex ---------------------------------------------------------------------------------


def soa_record(zone: Zone, ttl: int | None = None) -> Record:
    s = zone.settings
    mname, rname = s.soa_names(zone.name)
    soa = Soa(mname, rname, zone.serial, s.refresh, s.retry, s.expire, s.minimum)
    return Record(zone.name, SOA, s.ttl if ttl is None else ttl, soa)


def _negative(zone: Zone, rcode: int) -> Answer:
    return Answer(rcode, (), (soa_record(zone, zone.settings.negative_ttl),))


def _apex(question: Question, zone: Zone) -> Answer:
    ns = tuple(Record(question.name, NS, zone.settings.ttl, n) for n in zone.settings.name_servers(zone.name))
    soa = soa_record(zone)
    soa = Record(question.name, SOA, soa.ttl, soa.data)
    records = {SOA: (soa,), NS: ns, ANY: (soa, *ns)}.get(question.qtype)
    return Answer(NOERROR, records) if records else _negative(zone, NOERROR)


# --- address names ----------------------------------------------------------------------------


def _address(question: Question, zone: Zone, rel: list[str], now: float) -> Answer:
    address = query_address(rel)
    if address is None:
        return _negative(zone, NOERROR if _partial_listed(zone, rel, now) else NXDOMAIN)
    family, value = address
    listings = listings_for(zone, family, value, now)
    if not listings:
        return _negative(zone, NXDOMAIN)
    records = _records(question, zone, listings, format_address(family, value))
    return Answer(NOERROR, records) if records else _negative(zone, NOERROR)


def listings_for(zone: Zone, family: int, value: int, now: float) -> tuple[Entry, ...]:
    """What answers for one address in this zone, test points included."""
    if zone.test_points and family == 4 and value in (TEST_LISTED, TEST_UNLISTED):
        return (_test_point(zone),) if value == TEST_LISTED else ()
    own = zone.index.lookup(family, value, now)
    if not zone.files or zone.index.excludes(family, value, now):
        return own
    return own + tuple(e for dataset in zone.files for e in dataset.lookup(family, value, now))


def _test_point(zone: Zone) -> Entry:
    text = f"Test point: 127.0.0.2 is always listed in {zone.name} (RFC 5782)"
    return Entry(("127.0.0.2", "rfc5782"), 4, TEST_LISTED, TEST_LISTED, False, TEST_LISTED, text)


def _partial_listed(zone: Zone, rel: list[str], now: float) -> bool:
    """Is the name an empty non-terminal: a prefix of some listed address's name?"""
    spans = []
    v4 = v4_prefix(rel)
    if v4:
        spans.append((4, *v4))
    v6 = v6_prefix(rel)
    if v6:
        spans.append((6, *v6))
        lo, hi = max(v6[0], MAPPED_BASE), min(v6[1], MAPPED_BASE | V4_MAX)
        if lo <= hi:  # the part of the span that maps IPv4 addresses answers from IPv4 data
            spans.append((4, lo - MAPPED_BASE, hi - MAPPED_BASE))
    return any(_span_listed(zone, f, lo, hi, now) for f, lo, hi in spans)


def _span_listed(zone: Zone, family: int, lo: int, hi: int, now: float) -> bool:
    if zone.test_points and family == 4 and lo <= TEST_LISTED <= hi:
        return True
    return any(index.any_listed(family, lo, hi, now) for index in (zone.index, *zone.files))


def expand(template: str, address: str) -> str:
    """rbldnsd's TXT template: `$` is the queried address, `$$` a dollar; cut at TXT_LIMIT bytes."""
    text = "$".join(part.replace("$", address) for part in template.split("$$"))
    return truncate_txt(text)


def truncate_txt(text: str) -> str:
    data = text.encode()
    if len(data) <= TXT_LIMIT:
        return text
    return data[:TXT_LIMIT].decode(errors="ignore")


def _records(question: Question, zone: Zone, listings: tuple[Entry, ...], address: str) -> tuple[Record, ...]:
    ttl, name, out = zone.settings.ttl, question.name, []
    if question.qtype in (A, ANY):
        codes = sorted({e.code for e in listings})
        out += [Record(name, A, ttl, format_address(4, c)) for c in codes]
    if question.qtype in (TXT, ANY):
        texts = dict.fromkeys(
            expand(e.reason, address) for e in sorted(listings, key=lambda e: e.code) if e.reason
        )
        out += [Record(name, TXT, ttl, t) for t in texts]
    return tuple(out)


# --- name datasets and combined subzones ------------------------------------------------------

EMPTY_INDEX = ZoneIndex.build(())


def _with_names(question: Question, zone: Zone, rel: list[str], now: float) -> Answer:
    """Every dataset of the zone answers; their records add up (rbldnsd queries each one)."""
    labels = tuple(label.lower() for label in rel)
    base = _apex(question, zone) if not rel else _address(question, zone, rel, now)
    records, found = list(base.answer), not rel or (base.rcode == NOERROR)
    for data in zone.names:
        hit, more = _name_records(question, zone, data, labels)
        found, records = found or hit, records + more
    for combined in zone.combined:
        match = combined.find(labels)
        if match is not None:
            hit, more = _part_records(question, zone, match[1], match[0], rel, now)
            found, records = found or hit, records + more
    if records:
        return Answer(NOERROR, tuple(records))
    return _negative(zone, NOERROR if found else NXDOMAIN)


def _part_records(
    question: Question, zone: Zone, part: Part, sub: Labels, rel: list[str], now: float
) -> tuple[bool, list[Record]]:
    """One combined subzone's answer for the labels `sub` in front of it (none: the subzone itself)."""
    found, records = not sub, []
    if sub and part.files:
        view = Zone(zone.name, EMPTY_INDEX, zone.serial, zone.settings, False, part.files)
        answer = _address(question, view, rel[: len(sub)], now)
        found, records = found or answer.rcode == NOERROR, list(answer.answer)
    for data in part.names:
        hit, more = _name_records(question, zone, data, sub)
        found, records = found or hit, records + more
    return found, records


def _name_records(
    question: Question, zone: Zone, data: NameData, labels: Labels
) -> tuple[bool, list[Record]]:
    name, ttl, qtype = question.name, zone.settings.ttl, question.qtype
    if isinstance(data, NameSet):
        match = data.match(labels)
        if match is None:
            return False, []
        entry, values = match
        out = []
        if qtype in (A, ANY):
            out += [Record(name, A, ttl, format_address(4, c)) for c in sorted({v.code for v in values})]
        if qtype in (TXT, ANY):
            texts = dict.fromkeys(expand(v.txt, entry) for v in values if v.txt)
            out += [Record(name, TXT, ttl, t) for t in texts]
        return True, out
    records = data.match(labels)
    if records is None:
        return False, []
    wanted = [r for r in records if qtype in (r.rtype, ANY)]
    return True, [Record(name, r.rtype, ttl if r.ttl is None else r.ttl, r.data) for r in wanted]


# --- acls: what one client gets (man rbldnsd, "acl Dataset") ----------------------------------

SILENT = Answer(NOERROR, authoritative=False, silent=True)
PARTIAL, FULL = 1, 2  # how far an "always listed" rule reaches at a name


def _by_acl(question: Question, zone: Zone, rel: list[str], rule: Rule, now: float) -> Answer:
    if rule is Action.IGNORE:
        return SILENT
    if rule is Action.REFUSE:
        return Answer(REFUSED, authoritative=False)
    answer = _in_zone(question, _bare(zone), rel, now)
    if isinstance(rule, Listed) and question.client is not None:
        return _always(question, zone, rel, rule, answer, format_address(*question.client))
    return answer


def _bare(zone: Zone) -> Zone:
    """The zone with only what an acl never hides: SOA, NS and generic records (rbldnsd's man page)."""

    def generic(names: tuple[NameData, ...]) -> tuple[NameData, ...]:
        return tuple(d for d in names if not isinstance(d, NameSet))

    combined = tuple(
        Combined({sub: Part((), generic(part.names)) for sub, part in c.subzones.items()})
        for c in zone.combined
    )
    return replace(
        zone, index=EMPTY_INDEX, test_points=False, files=(), names=generic(zone.names), combined=combined
    )


def _always(
    question: Question, zone: Zone, rel: list[str], listed: Listed, answer: Answer, client: str
) -> Answer:
    """A name the zone could list answers the acl's A/TXT (generic records beside); a partial address
    name above such names is NODATA, as everywhere here (rbldnsd: NXDOMAIN)."""
    reach = _reach(zone, rel)
    if reach == FULL:
        ttl = zone.settings.ttl if listed.ttl is None else listed.ttl
        out = []
        if question.qtype in (A, ANY):
            out.append(Record(question.name, A, ttl, format_address(4, listed.code)))
        if question.qtype in (TXT, ANY) and listed.txt:
            out.append(Record(question.name, TXT, ttl, expand(listed.txt, client)))
        records = (*out, *answer.answer)
        return Answer(NOERROR, records) if records else _negative(zone, NOERROR)
    if reach == PARTIAL and answer.rcode == NXDOMAIN:
        return _negative(zone, NOERROR)
    return answer


def _reach(zone: Zone, rel: list[str]) -> int:
    """FULL where a dataset of the zone could list the name (an address of a family it lists, any name
    of a dnset), PARTIAL above such addresses, else 0; combined subzones each by their own datasets."""
    if not rel:
        return 0
    named = any(isinstance(d, NameSet) for d in zone.names)
    reach = FULL if named else _address_reach(rel, {4, 6} if zone.test_points else _families(zone.files))
    for combined in zone.combined:
        match = combined.find(tuple(label.lower() for label in rel))
        if match is not None and match[0]:
            sub, part = match
            named = any(isinstance(d, NameSet) for d in part.names)
            reach = max(reach, FULL if named else _address_reach(rel[: len(sub)], _families(part.files)))
    return reach


def _families(indexes: tuple[ZoneIndex, ...]) -> set[int]:
    # an rbldnsd IP dataset lists the family its entries have (ip4set: IPv4); a SQLite list lists both
    return {family for index in indexes for family in (4, 6) if index.segments[family].starts}


def _address_reach(rel: list[str], families: set[int]) -> int:
    address = query_address(rel)
    if address is not None:
        return FULL if address[0] in families else 0
    partial = (4 in families and v4_prefix(rel)) or (6 in families and v6_prefix(rel))
    return PARTIAL if partial else 0
