"""Per-zone query counters and rbldnsd's statistics outputs: the `-s` stats file and the SIGUSR1 log.

The counting itself is plain integer increments on `Tally` objects held by `server.Counters`; this
module only reads them. What counts where, as rbldnsd 1.0 counts (tried against it; README, "rbldnsd
options"):
- a query in a served zone: that zone's tally, by the reply's rcode: NOERROR (NODATA too) is `ok`,
  NXDOMAIN is `nxd`, anything else (REFUSED, SERVFAIL, NOTIMP) is `err`; bytes in and out are DNS
  message sizes (no IP/UDP/TCP overhead);
- anything else (a name in no zone, CHAOS `version.bind`, another opcode, a packet that does not parse
  or is dropped): the `other` tally, which only the `*` total shows.
Stats-file line: `TIME zone:tot:ok:nxd:in:out ... *:tot:ok:nxd:in:out`, one tuple per served zone, in
the order they are served, then the total. A bare `TIME` line marks where counters start from zero:
start-up, reset (SIGUSR2) and shutdown. `+FILE` writes deltas since the previous line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

log = logging.getLogger("dnsbl.stats")


@dataclass
class Tally:
    """One zone's counters (rbldnsd's `struct dnsstats`). Only ever incremented on the query path."""

    ok: int = 0
    nxd: int = 0
    err: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    @property
    def total(self) -> int:
        return self.ok + self.nxd + self.err

    def copy(self) -> Tally:
        return Tally(self.ok, self.nxd, self.err, self.bytes_in, self.bytes_out)

    def __add__(self, other: Tally) -> Tally:
        return Tally(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(Tally)))

    def __sub__(self, other: Tally) -> Tally:
        return Tally(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(Tally)))

    def fields_text(self) -> str:
        return f"{self.total}:{self.ok}:{self.nxd}:{self.bytes_in}:{self.bytes_out}"


def snapshot(zones: Iterable[str], counted: Mapping[str, Tally], other: Tally) -> dict[str, Tally]:
    """Every served zone's tally (zero if never asked), and the total under `*`."""
    out = {name: counted.get(name, Tally()).copy() for name in zones}
    out["*"] = sum(counted.values(), other.copy())
    return out


def stats_line(now: float, tallies: Mapping[str, Tally]) -> str:
    """`TIME zone:tot:ok:nxd:in:out ... *:...` (rbldnsd's `dumpstats`); `*` is the last key."""
    return " ".join([str(int(now)), *(f"{name}:{t.fields_text()}" for name, t in tallies.items())]) + "\n"


def summary_lines(seconds: float, tallies: Mapping[str, Tally]) -> list[str]:
    """What SIGUSR1 logs, in rbldnsd's words: one line per zone, then the total."""
    lines = []
    for name, t in tallies.items():
        counts = f"tot={t.total} ok={t.ok} nxd={t.nxd} err={t.err} in={t.bytes_in} out={t.bytes_out}"
        where = f"{int(seconds)}sec" if name == "*" else f"{int(seconds)}secs zone {name}"
        lines.append(f"stats for {where}: {counts}")
    return lines


class StatsFile:
    """Appends stats lines to FILE (opened per write, so logrotate can move it); `+FILE`: deltas."""

    def __init__(self, spec: str) -> None:
        self.relative = spec.startswith("+")
        self.path = spec[1:] if self.relative else spec
        self.previous: dict[str, Tally] = {}

    def write(self, now: float, tallies: Mapping[str, Tally]) -> None:
        shown = dict(tallies)
        if self.relative:
            shown = {name: t - self.previous.get(name, Tally()) for name, t in tallies.items()}
            self.previous = dict(tallies)
        self._append(stats_line(now, shown))

    def mark(self, now: float) -> None:
        """A bare timestamp: the counters start from zero here."""
        self.previous = {}
        self._append(f"{int(now)}\n")

    def _append(self, text: str) -> None:
        try:
            with open(self.path, "a") as handle:
                handle.write(text)
        except OSError as error:
            log.warning("cannot write the stats file %s: %s", self.path, error.strerror)
