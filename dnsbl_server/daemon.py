"""The composition root of `dnsbl serve`: settings -> store -> zones -> sockets, and the refresh loop.

Nothing imports this module but the CLI. Start-up order: open (and migrate) the database, create the
zones asked for, seed the demo zone into an empty database, build the index, bind, then follow the
change journal every REFRESH_S in a worker thread and swap in what it builds.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor

from . import __version__
from .addresses import parse_target
from .config import DEMO_ZONE, Settings
from .loader import Loader
from .resolver import Options
from .server import Handler, Holder, listen
from .store import Listing, Store

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
    if not store.zone_names():
        seed_demo(store, now)
    return store


async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    store = prepare(settings, time.time())
    loader = Loader(store, list(settings.zones) or None, settings.settings_for)
    holder = Holder(loader.load(time.time()))
    version = None if settings.hide_version else f"dnsbl-server {__version__}"
    handler = Handler(holder, Options(version=version), settings.udp_cap)
    closers = []
    for spec in settings.listen:
        transports, shown = await listen(handler, spec)
        closers += transports
        log.info(
            "listening on %s (udp, tcp) for %s", shown, ", ".join(z.name for z in holder.zones) or "no zones"
        )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="refresh") as worker:
        refresher = asyncio.create_task(_follow(loader, holder, worker))
        await stop.wait()
        refresher.cancel()
        for closer in closers:
            closer.close()
    store.close()
    log.info("stopped")


async def _follow(loader: Loader, holder: Holder, worker: ThreadPoolExecutor) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(REFRESH_S)
        try:
            zones = await loop.run_in_executor(worker, loader.refresh, time.time())
        except Exception:  # keep serving the last good zones
            log.exception("refreshing from the database failed; still serving the previous data")
            continue
        if zones is not None:
            holder.zones = zones
