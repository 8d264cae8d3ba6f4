"""What `dnsbl serve` counts for its Prometheus metrics beyond the rbldnsd tallies (`statsfile`), and how
a worker's counts travel to the parent and add up there. No prometheus-client here: `metrics_http` turns
these values into metric families and serves them.

Rules:
- The query path only increments: `kinds[zone][kind(qtype, rcode)] += 1` per reply (zone "" for names
  in no served zone, qtype 0 for a packet without a question, rcode NO_REPLY when nothing was sent; an
  int key, as a tuple key costs twice as much), and one in every SAMPLE queries is timed into `Latency`
  (plain integer buckets). Both are counters in the
  Prometheus sense: never reset (SIGUSR2 resets the rbldnsd tallies only).
- Workers send deltas (`snapshot` now, `delta` against what was sent) every second with their tallies;
  the parent `merge`s them, so its counters are the sum over every worker, at most a second behind.
  Keys travel as JSON lists: ("k", zone, kind), ("l", bucket), ("s",) latency sum, ("t", name)
  transfer counts; ("g", name) gauges (the last ingest time) are set, not added.
- Store figures (entries per zone and source, trap hits by kind) are read off the event loop every
  FIGURES_S by whoever holds a database connection (`Figures.refresh`), and swapped in whole.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import Counters
    from .store import Store

NO_REPLY = -1  # the rcode of a query that got no reply (dropped, an acl's ignore)
SAMPLE = 16  # one query in SAMPLE is timed (a power of two: the test is a mask)
SAMPLE_MASK = SAMPLE - 1
# Latency bucket upper bounds, seconds: an answer takes tens of microseconds, a slow one milliseconds.
BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
FIGURES_S = 15.0  # how often the store's figures are counted again


@dataclass
class Latency:
    """A histogram as plain integers: counts[i] queries took at most BUCKETS[i] (and more than the one
    before); counts[-1] took longer than every bound."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0  # seconds, all sampled queries

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds


@dataclass
class Gauges:
    """Values set, not added: when the last ingest and export runs succeeded (Unix time; 0: never).
    Each process has one, `GAUGES`, which the ingester and the exporter set wherever they run (the
    trap/ops process sends it to the parent with its counts)."""

    last_ingest: float = 0.0  # the end of the last ingest run in which every source succeeded
    last_export: float = 0.0  # the end of the last export run in which every zone was written


GAUGES = Gauges()
_GAUGES = tuple(f.name for f in fields(Gauges))


Key = tuple[Any, ...]


OTHER_TYPE = 256  # every qtype above 255 is counted under this one: random types must not grow the dict


def kind(qtype: int, rcode: int) -> int:
    """The int key of (qtype, rcode) in `Counters.kinds[zone]`; rcode is 4 bits, or NO_REPLY."""
    return ((qtype if qtype < OTHER_TYPE else OTHER_TYPE) << 5) | (rcode + 1)


def unkind(key: int) -> tuple[int, int]:
    return key >> 5, (key & 31) - 1


_RRL = ("rrl_dropped", "rrl_slipped")  # server.Counters' rate-limiting counts (rrl.py)


def snapshot(counters: Counters, gauges: Gauges | None = None) -> dict[Key, float]:
    """Every counter a worker sends, flat."""
    out: dict[Key, float] = {
        ("k", zone, key): n for zone, kinds in counters.kinds.items() for key, n in kinds.items()
    }
    out.update({("l", i): n for i, n in enumerate(counters.latency.counts) if n})
    if counters.latency.total:
        out[("s",)] = counters.latency.total
    transfers = counters.transfers
    out.update({("t", f.name): getattr(transfers, f.name) for f in fields(transfers)})
    out.update({("r", name): getattr(counters, name) for name in _RRL if getattr(counters, name)})
    if gauges is not None:
        out.update({("g", name): getattr(gauges, name) for name in _GAUGES if getattr(gauges, name)})
    return out


def delta(now: dict[Key, float], sent: dict[Key, float]) -> list[list[Any]]:
    """What changed since `sent`, as JSON-ready [key, value] pairs (gauges: their value)."""
    return [
        [list(key), value if key[0] == "g" else value - sent.get(key, 0)]
        for key, value in now.items()
        if value != sent.get(key)
    ]


def merge(counters: Counters, gauges: Gauges, pairs: list[list[Any]]) -> None:
    """A child's delta added to the parent's counters."""
    for key_list, value in pairs:
        what, *rest = key_list
        if what == "k":
            kinds = counters.kinds.setdefault(rest[0], {})
            kinds[rest[1]] = kinds.get(rest[1], 0) + int(value)
        elif what == "l" and 0 <= rest[0] < len(counters.latency.counts):
            counters.latency.counts[rest[0]] += int(value)
        elif what == "s":
            counters.latency.total += value
        elif what == "t" and hasattr(counters.transfers, rest[0]):
            setattr(counters.transfers, rest[0], getattr(counters.transfers, rest[0]) + int(value))
        elif what == "r" and rest[0] in _RRL:
            setattr(counters, rest[0], getattr(counters, rest[0]) + int(value))
        elif what == "g" and rest[0] in _GAUGES:
            setattr(gauges, rest[0], max(getattr(gauges, rest[0]), float(value)))


@dataclass(frozen=True)
class StoreFigures:
    """One reading of the store: entries per (zone, source, listed|excluded), hits per (zone, kind)."""

    at: float = 0.0
    entries: dict[tuple[str, str, str], int] = field(default_factory=dict)
    hits: dict[tuple[str, str], int] = field(default_factory=dict)


class Figures:
    """The latest `StoreFigures`, replaced whole by `refresh` (in a thread; readers see one or the other)."""

    def __init__(self, clock: Any = time.time) -> None:
        self.current = StoreFigures()
        self.clock = clock

    def due(self) -> bool:
        return self.clock() - self.current.at >= FIGURES_S

    def refresh(self, store: Store | None) -> None:
        """Count again if FIGURES_S has passed (a database connection of the calling thread's)."""
        if store is None or not self.due():
            return
        now = self.clock()
        entries = {}
        for zone, source, listed, excluded in store.entry_counts(now):
            entries[(zone, source, "listed")] = listed
            entries[(zone, source, "excluded")] = excluded
        hits = {(zone, kind): n for zone, kind, n in store.hit_counts()}
        self.current = StoreFigures(now, entries, hits)
