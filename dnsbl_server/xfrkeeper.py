"""The transfer side of `dnsbl serve` that must run in exactly one process: the IXFR journal's writer
(`journal.Keeper`) and the NOTIFY sender (`notify.Notifier`).

Where it runs: with one process, after each refresh of the serving loop (the diff in the refresh
thread); with workers, in the trap/ops child (forked and supervised like the trap, which it joins when
[ingest] is configured), which follows the change journal on its own connection as a worker does. The
parent stays single-threaded and never blocks on it. Order per serial change: journal written, then
NOTIFY (after notify.DELAY_S), so a secondary's IXFR finds the journal.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from concurrent.futures import Executor
from typing import TYPE_CHECKING

from .journal import Keeper
from .notify import Notifier, parse_targets
from .xfr import TransferCounts, TransferPolicy, parse_networks

if TYPE_CHECKING:
    from .config import Settings
    from .daemon import Sources
    from .server import Holder
    from .zone import Zone, Zones

log = logging.getLogger("dnsbl.xfr")
FOLLOW_S = 0.25  # as the workers follow the change journal


def policy(settings: Settings) -> TransferPolicy:
    """Who may transfer, from --allow-transfer; no database: nobody (ConfigError names a bad CIDR)."""
    key = None
    if settings.tsig_key:  # dnspython is imported only then
        from .xfrtsig import parse_key

        key = parse_key(settings.tsig_key)
    return TransferPolicy(
        parse_networks(settings.allow_transfer), str(settings.db) if settings.use_db else None, key
    )


def wanted(settings: Settings) -> bool:
    """Transfers or NOTIFYs are configured, over a database (files-only zones transfer nothing)."""
    return settings.use_db and bool(settings.allow_transfer or settings.notify)


class Keeping:
    def __init__(self, settings: Settings, counts: TransferCounts) -> None:
        self.conn: sqlite3.Connection | None = None
        self.db = str(settings.db)
        self.journal = bool(settings.allow_transfer)  # nobody may IXFR: no journal to keep
        self.keeper: Keeper | None = None
        targets = parse_targets(settings.notify)
        self.notifier = Notifier(targets, counts) if targets else None

    def step(self, zones: Zones, seq: int, now: float) -> list[Zone]:
        """In the refresh thread: the journal brought up to `zones`; the zones whose serial moved."""
        if self.keeper is None:
            self.conn = sqlite3.connect(self.db, timeout=30, isolation_level=None, check_same_thread=False)
            self.keeper = Keeper(self.conn, write=self.journal)
        return self.keeper.step(zones, seq, now)

    def announce(self, moved: list[Zone]) -> None:
        """On the loop: NOTIFY every secondary of each zone that moved."""
        if self.notifier is not None:
            for zone in moved:
                self.notifier.changed(zone)

    async def follow(self, sources: Sources, holder: Holder, executor: Executor) -> None:
        """The trap/ops process: follow the change journal as a worker does, and keep up with it."""
        loop = asyncio.get_running_loop()
        seq = sources.loader.seq if sources.loader else 0
        self.announce(await loop.run_in_executor(executor, self.step, holder.zones, seq, time.time()))
        while True:
            await asyncio.sleep(FOLLOW_S)
            try:
                now = time.time()
                zones = await loop.run_in_executor(executor, sources.follow, now)
                if zones is None:
                    continue
                holder.zones = zones
                seq = sources.loader.seq if sources.loader else 0
                self.announce(await loop.run_in_executor(executor, self.step, zones, seq, now))
            except Exception:  # keep going: the next change is journalled from what we hold
                log.exception("following the change journal for transfers failed")

    async def close(self) -> None:
        if self.notifier is not None:
            await self.notifier.close()
        if self.conn is not None:
            self.conn.close()
