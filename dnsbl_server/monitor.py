"""What `dnsbl serve` reports about the queries it answers: the stats file, the query log, the signals.

Everything here runs on the event loop, as the query path does, so reading the counters needs no lock.
When, as rbldnsd 1.0 does it (tried against it; README, "rbldnsd options"):
- stats file: a bare timestamp at start; a line every check interval (none when the interval is 0);
  a line and a bare timestamp at exit;
- SIGUSR1: a stats line, and the counters logged (rbldnsd logs them to syslog);
- SIGUSR2: the same, then the counters start again from zero (a bare timestamp marks it);
- SIGHUP: the query log is reopened (the daemon also reloads data files on it);
- a buffered query log is flushed every second (rbldnsd only flushes when its buffer fills).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from .addresses import format_address
from .querylog import QueryLog, log_line
from .statsfile import StatsFile, Tally, snapshot, summary_lines

log = logging.getLogger("dnsbl.stats")
FLUSH_S = 1.0


class Counted(Protocol):
    """What the monitor reads of `server.Counters`."""

    zones: dict[str, Tally]
    other: Tally


class Handled(Protocol):
    """What the monitor needs of `server.Handler`: its counters, and the hook each reply goes through."""

    counters: Counted
    on_reply: Callable[[tuple[int, int] | None, bytes, bytes], None] | None


class Monitor:
    def __init__(
        self,
        counters: Counted,
        zones: Callable[[], Iterable[str]],
        stats: StatsFile | None = None,
        query_log: QueryLog | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.counters = counters
        self.zones = zones  # the served zones' names, in order, when a stats line is written
        self.stats = stats
        self.query_log = query_log
        self.clock = clock
        self.since = clock()  # when the counters last started from zero

    @classmethod
    def open(
        cls,
        handler: Handled,
        zones: Callable[[], Iterable[str]],
        stats_file: str | None,
        query_log: str | None,
    ) -> Monitor:
        """The handler's monitor, from the settings; ConfigError if the query log cannot be opened."""
        stats = StatsFile(stats_file) if stats_file else None
        monitor = cls(handler.counters, zones, stats, QueryLog(query_log) if query_log else None)
        if monitor.query_log is not None:
            handler.on_reply = monitor.on_reply
        return monitor

    # --- the query path ---------------------------------------------------------------------------

    def on_reply(self, client: tuple[int, int] | None, query: bytes, reply: bytes) -> None:
        """Called by the handler for every reply it sends, when there is a query log."""
        assert self.query_log is not None
        peer = format_address(*client) if client is not None else "?"  # rbldnsd's "?" for no address
        line = log_line(self.clock(), peer, query, reply)
        if line is not None:
            self.query_log.write(line)

    # --- events -------------------------------------------------------------------------------------

    def tallies(self) -> dict[str, Tally]:
        return snapshot(self.zones(), self.counters.zones, self.counters.other)

    def mark(self) -> None:
        """A bare timestamp in the stats file: the counters start from zero here."""
        if self.stats is not None:
            self.stats.mark(self.clock())

    def write_stats(self) -> None:
        if self.stats is not None:
            self.stats.write(self.clock(), self.tallies())

    def report(self) -> None:
        """SIGUSR1: a stats line, and the counters logged."""
        self.write_stats()
        for line in summary_lines(self.clock() - self.since, self.tallies()):
            log.info("%s", line)

    def reset(self) -> None:
        """SIGUSR2: report, then start the counters again from zero."""
        self.report()
        self.counters.zones.clear()
        self.counters.other = Tally()
        self.since = self.clock()
        self.mark()

    def reopen(self) -> None:
        if self.query_log is not None:
            self.query_log.reopen()

    def stop(self) -> None:
        self.report()
        self.mark()  # as rbldnsd at exit
        if self.query_log is not None:
            self.query_log.close()

    # --- wiring ---------------------------------------------------------------------------------

    def install(self, loop: asyncio.AbstractEventLoop, on_hup: Callable[[], None]) -> None:
        """The signals, SIGHUP included: it reopens the query log, then calls `on_hup` (reload files)."""
        loop.add_signal_handler(signal.SIGUSR1, self.report)
        loop.add_signal_handler(signal.SIGUSR2, self.reset)
        loop.add_signal_handler(signal.SIGHUP, self._hup, on_hup)

    def _hup(self, then: Callable[[], None]) -> None:
        self.reopen()
        then()

    async def run(self, check_interval: float) -> None:
        """Flush the query log every second; write a stats line every check interval (0: never)."""
        loop = asyncio.get_running_loop()
        next_stats = loop.time() + check_interval
        while True:
            await asyncio.sleep(min(FLUSH_S, check_interval) if check_interval > 0 else FLUSH_S)
            if self.query_log is not None:
                self.query_log.flush()
            if check_interval > 0 and loop.time() >= next_stats:
                next_stats += check_interval
                self.write_stats()
