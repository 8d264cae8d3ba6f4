"""The composition root of `dnsbl serve`: settings -> store -> zones -> sockets, and the refresh loop.

Nothing imports this module but the CLI. Start-up order: open (and migrate) the database, create the
zones asked for, seed the demo zone into an empty database, build the index, bind, then follow the
change journal every REFRESH_S and the data files every check interval (and on SIGHUP) in a worker
thread, and swap in what it builds.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING

from . import __version__
from .addresses import parse_target
from .config import DEMO_ZONE, Settings
from .datafiles import DataFiles, compose, parse_spec
from .errors import ConfigError
from .loader import Loader
from .monitor import Monitor
from .resolver import Options
from .server import Handler, Holder, listen
from .store import Listing, Store
from .zone import Zones

if TYPE_CHECKING:
    from .schedule import Trap

log = logging.getLogger("dnsbl.daemon")
REFRESH_S = 0.25  # a change by another process is served within about this long

# Seeded into an empty database so a first `dnsbl serve` answers something real (documentation
# addresses only, RFC 5737 / RFC 3849).
DEMO_LISTINGS = (
    ("203.0.113.7", 2, "Demo listing: $ is listed in the demo zone"),
    ("198.51.100.0/24", 3, "Demo listing: $ is in a listed demo network"),
    ("!198.51.100.1", 2, ""),
    ("2001:db8::/64", 2, "Demo listing: $ is listed in the demo zone"),
)


def seed_demo(store: Store, now: float) -> None:
    store.ensure_zone(DEMO_ZONE, now)
    listings = [Listing(parse_target(t), 0x7F000000 | code, reason) for t, code, reason in DEMO_LISTINGS]
    store.add(DEMO_ZONE, listings, source="demo", now=now)
    log.info("empty database: created the demo zone %s", DEMO_ZONE)


def prepare(settings: Settings, now: float) -> Store:
    store = Store.open(settings.db)
    for name in settings.zones:
        if store.ensure_zone(name, now):
            log.info("created zone %s", name)
    if not store.zone_names() and not settings.datasets:
        seed_demo(store, now)
    return store


class Sources:
    """What the served zones are made of: the SQLite list (when there is a database) and data files.
    `refresh` runs in the worker thread and returns new zones, or None when nothing changed."""

    def __init__(self, settings: Settings, now: float) -> None:
        self.settings = settings
        self.store = prepare(settings, now) if settings.use_db else None
        self.loader = (
            Loader(self.store, list(settings.zones) or None, settings.settings_for) if self.store else None
        )
        specs = [parse_spec(s) for s in settings.datasets]
        self.files = DataFiles(specs, loose=settings.loose, limits=settings.ttl_limits)
        self.files.load(now)

    def load(self, now: float) -> Zones:
        sqlite = self.loader.load(now) if self.loader else None
        return compose(sqlite, self.files, self.settings.settings_for)

    def refresh(self, now: float, *, files_due: bool) -> Zones | None:
        reloaded = (self.files.refresh(now) if files_due else []) + self.files.expire(now)
        if self.store is not None:
            for name in set(reloaded) & set(self.store.zone_names()):
                self.store.touch(name, now)  # secondaries must learn of a reloaded file
        changed = self.loader.refresh(now) if self.loader else None
        if changed is None and not reloaded:
            return None
        sqlite = self.loader.zones if self.loader else None
        return compose(sqlite, self.files, self.settings.settings_for)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    sources = Sources(settings, time.time())
    holder = Holder(sources.load(time.time()))
    version = None if settings.hide_version else f"dnsbl-server {__version__}"
    handler = Handler(holder, Options(version=version, auth_ns=settings.auth_ns), settings.udp_cap)
    monitor = Monitor.open(handler, partial(_zone_names, holder), settings.stats_file, settings.query_log)
    closers = []
    for spec in settings.listen:
        transports, shown = await listen(handler, spec)
        closers += transports
        log.info(
            "listening on %s (udp, tcp) for %s", shown, ", ".join(z.name for z in holder.zones) or "no zones"
        )
    trap = await _start_trap(settings)
    stop = stop or asyncio.Event()
    reload_now = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    monitor.install(loop, on_hup=reload_now.set)  # SIGUSR1/2, and SIGHUP: the query log, then the files
    monitor.mark()
    reporter = asyncio.create_task(monitor.run(settings.check_interval))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="refresh") as worker:
        refresher = asyncio.create_task(_follow(sources, holder, worker, settings.check_interval, reload_now))
        await stop.wait()
        refresher.cancel()
        reporter.cancel()
        if trap is not None:
            await trap.stop()
        for closer in closers:
            closer.close()
    monitor.stop()
    sources.close()
    log.info("stopped")


def _zone_names(holder: Holder) -> list[str]:
    """The served zones, read when a stats line is written (zones come and go with the database)."""
    return [zone.name for zone in holder.zones]


async def _start_trap(settings: Settings) -> Trap | None:
    """The trap ingester's schedule (and SMTP listener) inside the server, when [ingest] has sources."""
    if settings.ingest is None or not settings.ingest.has_sources:
        return None
    if not settings.use_db:
        raise ConfigError("[ingest] needs a database to list into (--db, DNSBL_DB or the config's db)")
    from .schedule import open_trap

    trap = open_trap(settings.ingest, settings.db, time.time())
    await trap.start()
    log.info("trap ingester: listing into %s", trap.ingester.zone)
    return trap


async def _follow(
    sources: Sources,
    holder: Holder,
    worker: ThreadPoolExecutor,
    check_interval: float,
    reload_now: asyncio.Event,
) -> None:
    loop = asyncio.get_running_loop()
    next_check = loop.time() + check_interval
    while True:
        await asyncio.sleep(REFRESH_S)
        files_due = reload_now.is_set() or (check_interval > 0 and loop.time() >= next_check)
        if files_due:
            reload_now.clear()
            next_check = loop.time() + check_interval
        try:
            zones = await loop.run_in_executor(
                worker, partial(sources.refresh, files_due=files_due), time.time()
            )
        except Exception:  # keep serving the last good zones
            log.exception("refreshing failed; still serving the previous data")
            continue
        if zones is not None:
            holder.zones = zones
