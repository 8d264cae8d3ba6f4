"""A zone out, as rbldnsd data files, a BIND zone file, or CSV.

Owns flattening: `runs()` walks a zone's index and yields non-overlapping address runs with the
listings that answer there, decided by the resolver's own `listings_for` (test points included), so any
format written from runs answers exactly as this server does, whatever the reader's overlap rules.

Formats (README, "Export"):
- `ip4set` / `ip6trie`: one family; ip6trie keeps one value per prefix, so a run with several answers,
  or data of the other family, is refused with a pointer to `combined`;
- `combined`: `$DATASET ip4set @` for IPv4 and one `$DATASET ip6trie @` per answer layer for IPv6;
- `bind`: the zone's records as a secondary serves them (`zonedump`, as `rbldnsd -d` writes them);
- `csv`: the entries themselves (`target,code,reason,source,expires`), for scripts to round-trip.
"""

from __future__ import annotations

import csv
import heapq
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, pairwise

from . import zonedump
from .addresses import TEST_LISTED, TEST_UNLISTED, V4_MAX, V6_MAX, cidr_prefix, format_address, format_time
from .errors import DnsblError
from .imports import CSV_COLUMNS
from .index import Entry
from .resolver import listings_for
from .zone import Zone
from .zonefile import cidr_blocks

Answer = tuple[tuple[int, str], ...]  # (code, reason) pairs, sorted


@dataclass(frozen=True, slots=True)
class Run:
    family: int
    lo: int
    hi: int
    answer: Answer


def _breakpoints(zone: Zone, family: int) -> Iterator[int]:
    """Where answers may change, ascending, from 0 to just past the top (streamed: a million-entry
    zone has two million of them)."""
    extra = [0]
    if family == 4 and zone.test_points:
        extra += [TEST_UNLISTED, TEST_LISTED, TEST_LISTED + 1]
    top = V4_MAX if family == 4 else V6_MAX
    previous = None
    for point in heapq.merge(extra, zone.index.bounds(family)):
        if point > top:
            break
        if point != previous:
            yield point
        previous = point
    yield top + 1


def _answer(listings: tuple[Entry, ...]) -> Answer:
    return tuple(sorted({(e.code, e.reason) for e in listings}))


def runs(zone: Zone, now: float, family: int) -> Iterator[Run]:
    """Non-overlapping runs of one family, adjacent runs with the same answer merged."""
    points = _breakpoints(zone, family)
    current: Run | None = None
    for start, nxt in pairwise(points):
        answer = _answer(listings_for(zone, family, start, now))
        if current is not None and (not answer or answer != current.answer):
            yield current
            current = None
        if answer:
            lo = current.lo if current is not None else start
            current = Run(family, lo, nxt - 1, answer)
    if current is not None:
        yield current


# --- rbldnsd data files -----------------------------------------------------------------------

_VARIABLE = re.compile(r"(?<!\$)(?:\$\$)*\$[0-9=]")


def range_text(family: int, lo: int, hi: int) -> str:
    first = format_address(family, lo)
    if lo == hi:
        return first
    prefix = cidr_prefix(family, lo, hi)
    return f"{first}/{prefix}" if prefix is not None else f"{first}-{format_address(family, hi)}"


def value_text(code: int, reason: str) -> str:
    """`:A:TXT`; an empty reason is `:A:` (no TXT). rbldnsd would read `$1` or `$=` as its own
    variables, which our templates don't have: such a reason is refused rather than changed."""
    if _VARIABLE.search(reason):
        raise DnsblError(
            f"the reason {reason!r} has `$` before a digit or `=`, which rbldnsd reads as a "
            "variable: it cannot be written to an rbldnsd file unchanged"
        )
    return f":{format_address(4, code)}:{reason}"


def header(zone: Zone) -> list[str]:
    s = zone.settings
    mname, rname = s.soa_names(zone.name)
    return [
        f"# {zone.name}: exported by dnsbl-server, serial {zone.serial}",
        f"$SOA {s.ttl} {mname} {rname} {zone.serial} {s.refresh} {s.retry} {s.expire} {s.minimum}",
        f"$NS {s.ttl} {' '.join(s.name_servers(zone.name))}",
        f"$TTL {s.ttl}",
    ]


def v4_lines(v4: Iterable[Run]) -> Iterator[str]:
    for run in v4:  # ip4set: several lines for one range all answer (same octet level)
        for code, reason in run.answer:
            yield f"{range_text(4, run.lo, run.hi)} {value_text(code, reason)}"


def v6_layers(v6: Iterable[Run]) -> list[list[str]]:
    """ip6trie keeps one value per prefix: the n-th answer of every run goes to layer n."""
    layers: list[list[str]] = []
    for run in v6:
        for n, (code, reason) in enumerate(run.answer):
            if n == len(layers):
                layers.append([])
            value = value_text(code, reason)
            layers[n] += [f"{range_text(6, lo, hi)} {value}" for lo, hi in cidr_blocks(run.lo, run.hi, 128)]
    return layers


def _has_data(v: list[Run], family: int) -> bool:
    """Listings of this family other than the synthesised RFC 5782 test point."""
    return any(not (family == 4 and r.lo == r.hi == TEST_LISTED) for r in v)


def write_combined(zone: Zone, now: float) -> Iterator[str]:
    yield from header(zone)
    yield "$DATASET ip4set:ipv4 @"
    yield from v4_lines(runs(zone, now, 4))
    for n, layer in enumerate(v6_layers(runs(zone, now, 6)), 1):
        yield f"$DATASET ip6trie:ipv6-{n} @"
        yield from layer


def write_ip4set(zone: Zone, now: float) -> Iterator[str]:
    if _has_data(list(runs(zone, now, 6)), 6):
        raise DnsblError(f"{zone.name} lists IPv6 addresses, which ip4set cannot hold: use --format combined")
    yield from header(zone)
    yield from v4_lines(runs(zone, now, 4))


def write_ip6trie(zone: Zone, now: float) -> Iterator[str]:
    if _has_data(list(runs(zone, now, 4)), 4):
        raise DnsblError(
            f"{zone.name} lists IPv4 addresses, which ip6trie cannot hold: use --format combined"
        )
    layers = v6_layers(runs(zone, now, 6))
    if len(layers) > 1:
        raise DnsblError(
            f"{zone.name} gives some IPv6 addresses several answers, and ip6trie keeps one "
            "value per prefix: use --format combined"
        )
    yield from header(zone)
    yield from (layers[0] if layers else [])


# --- BIND -------------------------------------------------------------------------------------


def write_bind(zone: Zone, now: float) -> Iterator[str]:
    """The zone as a secondary serves it (`zonedump`): the same records a zone transfer carries."""
    yield f"; {zone.name}: exported by dnsbl-server, serial {zone.serial}"
    yield f"$ORIGIN {zone.name}."
    yield f"$TTL {zone.settings.ttl}"
    for rr in chain(zonedump.apex(zone), zonedump.records(zone, now)):  # streamed: a big zone is big
        ttl = "" if rr.ttl == zone.settings.ttl else f" {rr.ttl}"
        yield f"{rr.name}{ttl} {rr.rtype} {rr.rdata}"


# --- CSV --------------------------------------------------------------------------------------


def write_csv(entries: Iterable[tuple[str, str, int, str, float | None]]) -> Iterator[str]:
    """Rows of (target, source, code, reason, expires)."""
    yield ",".join(CSV_COLUMNS)
    for target, source, code, reason, expires in entries:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="").writerow(
            [
                target,
                "" if target.startswith("!") else format_address(4, code),
                reason,
                source,
                format_time(expires),
            ]
        )
        yield buffer.getvalue()


WRITERS = {"combined": write_combined, "ip4set": write_ip4set, "ip6trie": write_ip6trie, "bind": write_bind}
