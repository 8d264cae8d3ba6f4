"""The composition root of `dnsbl serve`: settings -> store -> zones -> sockets, and the refresh loop.

Nothing imports this module but the CLI. Start-up order: open (and migrate) the database, create the
zones asked for, seed the demo zone into an empty database, build the index, bind, then follow the
change journal every REFRESH_S and the data files every check interval (and on SIGHUP) in a worker
thread, and swap in what it builds.

With several workers (`serve_forever`, the default on a machine with several CPUs) all of that up to
the bind happens once, synchronously, in the parent, before any thread or event loop exists; then
`workers.Supervisor` forks the workers (`_work`: the sockets, the handler, the change journal, the
query log) and the trap process (`_run_trap`), and the parent keeps the data files, the stats file and
the signals (`workers.py` has the rules). With one, `serve` does it all in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import pkgutil
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING

from . import __version__
from .addresses import parse_target
from .child import FLUSH_S, Channel, WorkerLink
from .config import DEMO_ZONE, Settings
from .datafiles import DataFiles, compose, parse_spec
from .errors import ConfigError
from .loader import Loader
from .loop import run as run_loop
from .metrics import GAUGES, Figures
from .monitor import Monitor
from .querylog import QueryLog
from .resolver import Options
from .rrl import Limiter
from .server import Counters, Handler, Holder, attach, bind
from .statsfile import StatsFile
from .store import Listing, Store
from .tcplimits import Connections
from .workers import Plan, Supervisor, default_count
from .zone import Zones

if TYPE_CHECKING:
    from .schedule import Trap
    from .xfrkeeper import Keeping

log = logging.getLogger("dnsbl.daemon")
REFRESH_S = 0.25  # a change by another process is served within about this long
SIDE_NICE = 10  # the trap/ops process runs below the workers (nice 10: ~1/10 of their CPU share)
Sockets = list[tuple[socket.socket, socket.socket]]  # (UDP, TCP) per listen address, bound by the parent

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
    store = Store.open(settings.db, check=True)  # a damaged file stops the start (dbfile.py)
    for name in settings.zones:
        if store.ensure_zone(name, now):
            log.info("created zone %s", name)
    if not store.zone_names() and not settings.datasets:
        seed_demo(store, now)
    return store


class _Loader(Loader):
    """Counts its whole rebuilds: after one (a bulk change), the parent forks fresh workers from its own
    rebuilt zones, which they then share, where each worker's own rebuild is private memory."""

    rebuilds = 0

    def load(self, now: float) -> Zones:
        self.rebuilds += 1
        return super().load(now)


class Sources:
    """What the served zones are made of: the SQLite list (when there is a database) and data files.
    `refresh` runs in the worker thread and returns new zones, or None when nothing changed."""

    def __init__(self, settings: Settings, now: float) -> None:
        self.settings = settings
        self.store = prepare(settings, now) if settings.use_db else None
        self.connected = self.store is not None
        self.loader = (
            _Loader(self.store, list(settings.zones) or None, settings.settings_for) if self.store else None
        )
        specs = [parse_spec(s) for s in settings.datasets]
        self.files = DataFiles(specs, loose=settings.loose, limits=settings.ttl_limits)
        self.files.load(now)

    def load(self, now: float) -> Zones:
        sqlite = self.loader.load(now) if self.loader else None
        return compose(sqlite, self.files, self.settings.settings_for)

    def refresh(self, now: float, *, files_due: bool) -> Zones | None:
        reloaded = self.refresh_files(now, due=files_due)
        zones = self.follow(now)
        return self.compose() if zones is None and reloaded else zones

    def refresh_files(self, now: float, *, due: bool) -> list[str]:
        """Reload changed files (when due) and empty expired ones; the zones that changed."""
        reloaded = (self.files.refresh(now) if due else []) + self.files.expire(now)
        if self.store is not None:
            for name in set(reloaded) & set(self.store.zone_names()):
                self.store.touch(name, now)  # secondaries must learn of a reloaded file
        return reloaded

    def follow(self, now: float) -> Zones | None:
        """The change journal: new zones, or None when the SQLite list did not change."""
        if self.loader is None or self.loader.refresh(now) is None:
            return None
        return self.compose()

    def compose(self) -> Zones:
        sqlite = self.loader.zones if self.loader else None
        return compose(sqlite, self.files, self.settings.settings_for)

    def detach(self) -> None:
        """Close the connection: none may cross a fork (SQLite's rule)."""
        if self.store is not None and self.connected:
            self.store.close()
            self.connected = False

    def attach(self) -> None:
        """A connection of this process's own, after `detach` (or in a forked child)."""
        if self.store is None or self.connected:
            return
        self.store = Store.open(self.settings.db)
        assert self.loader is not None
        self.loader.store = self.store
        self.loader.version = -1  # PRAGMA data_version is per connection: read the journal anew
        self.connected = True

    def close(self) -> None:
        self.detach()


def serve_forever(settings: Settings) -> int:
    """`dnsbl serve`: one process, or a parent and its workers (`settings.workers`, 0 for one per
    CPU). Returns the exit code; DnsblError if it cannot start."""
    count = settings.workers or default_count()
    if count == 1:
        run_loop(serve(settings))
        return 0
    bound = [bind(spec) for spec in settings.listen]  # as root (port 53), then as --user from here on
    _become_user(settings)
    sources = Sources(settings, time.time())
    holder = Holder(sources.load(time.time()))
    if settings.query_log:
        QueryLog(settings.query_log).close()  # cannot be opened: stop here, not in every worker
    if settings.ingest is not None and settings.ingest.has_sources:
        _check_trap(settings)
    sockets = [(udp, tcp) for udp, tcp, _shown in bound]
    plan = _plan(settings, count, sources, holder, sockets)
    _parent_metrics(settings, plan, sources)
    _log_listening(bound, holder)
    return Supervisor(plan).run()


def _parent_metrics(settings: Settings, plan: Plan, sources: Sources) -> None:
    """--metrics with workers: the endpoint on the parent's selector, over the sum of every worker's
    counts; the store's figures counted in the parent's refresh thread (its connection)."""
    if settings.metrics is None:
        return
    from .metrics_http import SelectorEndpoint, open_endpoint

    figures = Figures()
    sock, scrape = open_endpoint(settings.metrics, plan.counters, figures, plan.gauges, lambda: plan.workers)
    plan.endpoint = SelectorEndpoint(sock, scrape)
    refresh = plan.refresh

    def refresh_and_count(now: float, files_due: bool) -> bool:
        changed = refresh(now, files_due)
        figures.refresh(sources.store)
        return changed

    plan.refresh = refresh_and_count


def _become_user(settings: Settings) -> None:
    """--user: after the bind, before any file is opened or child forked (privileges.py)."""
    if settings.user is None:
        return
    from .privileges import check_db, drop, parse_user

    user = parse_user(settings.user)
    _import_ahead()
    drop(user)
    log.info("running as user %s (uid %d, gid %d)", user, user.uid, user.gid)
    if settings.use_db:
        check_db(settings.db, user)


# Modules the server imports only when first needed (the trap's scheduler, a transfer's zone dump, a
# codec), imported ahead of the drop to --user: the Python installation itself may be unreadable by that
# user (a pyenv under /root), and a later import would fail there. The web site (Flask) is not served.
_ALSO = (
    "apscheduler.schedulers.asyncio",
    "apscheduler.triggers.interval",
    "encodings.ascii",
    "encodings.idna",
)


def _import_ahead() -> None:
    package = importlib.import_module(__package__ or "dnsbl_server")
    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in ("web", "__main__"):
            importlib.import_module(f"{package.__name__}.{module.name}")
    for name in _ALSO:
        importlib.import_module(name)


def _log_listening(bound: list[tuple[socket.socket, socket.socket, str]], holder: Holder) -> None:
    """Once every address is bound, not one by one: whoever waits for the first line finds them all."""
    for _udp, _tcp, shown in bound:
        fields = {"listen": shown, "zones": [z.name for z in holder.zones]}  # --log-format json
        log.info("listening on %s (udp, tcp) for %s", shown, _zones_text(holder), extra=fields)


def _plan(settings: Settings, count: int, sources: Sources, holder: Holder, sockets: Sockets) -> Plan:
    counters = Counters()  # every worker's counts, added up
    stats = StatsFile(settings.stats_file) if settings.stats_file else None
    monitor = Monitor(counters, partial(_zone_names, holder), stats)
    monitor.mark()
    has_trap = settings.ingest is not None and settings.ingest.has_sources
    # the trap/ops process: trap, IXFR journal, NOTIFY, scheduled export
    has_side = has_trap or _transfers_wanted(settings) or settings.export is not None
    return Plan(
        workers=count,
        worker=partial(_run_worker, settings, sources, holder, sockets),
        trap=partial(_run_trap, settings, sources, holder) if has_side else None,
        refresh=partial(_refresh_parent, sources, holder),
        before_fork=sources.detach,
        counters=counters,
        report=monitor.report,
        reset=monitor.reset,
        write_stats=monitor.write_stats,
        stop=monitor.stop,
        check_interval=settings.check_interval,
    )


def _refresh_parent(sources: Sources, holder: Holder, now: float, files_due: bool) -> bool:
    """The parent's refresh (its thread): its data kept current for the workers it forks. True when data
    files changed or the SQLite list was rebuilt whole, for the workers to be forked anew from it."""
    sources.attach()
    rebuilds = sources.loader.rebuilds if sources.loader else 0
    reloaded = sources.refresh_files(now, due=files_due)
    zones = sources.follow(now)
    if reloaded:
        holder.zones = sources.compose()
    elif zones is not None:
        holder.zones = zones
    return bool(reloaded) or (sources.loader is not None and sources.loader.rebuilds > rebuilds)


def _run_worker(
    settings: Settings, sources: Sources, holder: Holder, sockets: Sockets, channel: Channel
) -> int:
    """A worker's life, in the forked child: its own connection, caught up with the journal before it
    answers (the parent's copy may be a refresh behind), then the sockets until SIGTERM."""
    sources.attach()
    zones = sources.follow(time.time())
    if zones is not None:
        holder.zones = zones
    run_loop(_work(settings, sources, holder, sockets, channel))
    return 0


async def _work(
    settings: Settings, sources: Sources, holder: Holder, sockets: Sockets, channel: Channel
) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)  # before any query is counted
    handler = _handler(settings, holder)
    monitor = Monitor.open(handler, partial(_zone_names, holder), None, settings.query_log)
    closers = [closer for udp, tcp in sockets for closer in await attach(handler, udp, tcp)]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="refresh") as executor:
        link = WorkerLink(channel, holder, handler.counters, sources.follow, executor)
        link.on_reopen = monitor.reopen
        link.on_flush = partial(_flush, monitor)
        link.start()
        waiting = [asyncio.ensure_future(event.wait()) for event in (stop, link.gone)]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        for task in waiting:
            task.cancel()
        for closer in closers:
            closer.close()
        link.close()
    if monitor.query_log is not None:
        monitor.query_log.close()
    sources.close()


def _flush(monitor: Monitor) -> None:
    if monitor.query_log is not None:
        monitor.query_log.flush()


def _run_trap(settings: Settings, sources: Sources, holder: Holder, channel: Channel) -> int:
    # Batch work (trap mail, journal, export) yields the CPU to the workers answering queries: under
    # full load it falls behind and catches up after; a query answered late reads as "not listed".
    os.nice(SIDE_NICE)
    run_loop(_trap(settings, sources, holder, channel))
    return 0


async def _trap(settings: Settings, sources: Sources, holder: Holder, channel: Channel) -> None:
    """The trap/ops process: the ingester's schedule and SMTP listener, and the IXFR journal and
    NOTIFYs (`xfrkeeper`), the scheduled export (`exporter`): each must run in one process only."""
    trap = await _start_trap(settings)
    counters = Counters()  # its NOTIFY counts, sent to the parent for the metrics
    keeping, following = _start_keeping(settings, sources, holder, counters)
    exporting = _start_export(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(channel.fileno(), _stop_when_gone, channel, stop)
    channel.send({"op": "ready"})
    reporting = asyncio.create_task(_report_side(channel, counters))
    await stop.wait()
    reporting.cancel()
    loop.remove_reader(channel.fileno())
    if trap is not None:
        await trap.stop()
    if keeping is not None and following is not None:
        following.cancel()
        await keeping.close()
    await _stop_export(exporting)


def _start_export(settings: Settings) -> asyncio.Task[None] | None:
    """[export]: the zone files for rsync mirrors, written on their schedule (exporter.py)."""
    if settings.export is None:
        return None
    from .exporter import Exporter

    log.info("exporting zones to %s every %gs", settings.export.directory, settings.export.interval)
    return asyncio.create_task(Exporter(settings).run())


async def _stop_export(exporting: asyncio.Task[None] | None) -> None:
    if exporting is not None:
        exporting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await exporting  # a run under way is finished first: no temp file left behind


def _transfers_wanted(settings: Settings) -> bool:
    from .xfrkeeper import wanted

    return wanted(settings)


async def _report_side(channel: Channel, counters: Counters) -> None:
    """The trap/ops process's counts (NOTIFY) and gauges (last ingest, last export) to the parent,
    every second they change, as a worker sends its own (`metrics`)."""
    from . import metrics

    sent: dict[metrics.Key, float] = {}
    while True:
        await asyncio.sleep(FLUSH_S)
        now = metrics.snapshot(counters, GAUGES)
        extra = metrics.delta(now, sent)
        if extra and channel.send({"op": "counts", "id": 0, "tallies": {}, "metrics": extra}):
            sent = now


def _start_keeping(
    settings: Settings, sources: Sources, holder: Holder, counters: Counters
) -> tuple[Keeping | None, asyncio.Task[None] | None]:
    """The trap/ops process follows the change journal itself (own connection, own thread) to keep the
    IXFR journal and send NOTIFYs, when transfers are configured."""
    if not _transfers_wanted(settings):
        return None, None
    from .xfrkeeper import Keeping

    sources.attach()
    keeping = Keeping(settings, counters.transfers)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xfr")
    return keeping, asyncio.create_task(keeping.follow(sources, holder, executor))


def _stop_when_gone(channel: Channel, stop: asyncio.Event) -> None:
    """The trap process hears nothing from the parent but the end of its channel: the parent is gone."""
    if not channel.receive()[1]:
        asyncio.get_running_loop().remove_reader(channel.fileno())
        stop.set()


def _check_trap(settings: Settings) -> None:
    """What `_start_trap` would refuse, refused before anything starts."""
    if not settings.use_db:
        raise ConfigError("[ingest] needs a database to list into (--db, DNSBL_DB or the config's db)")
    from .schedule import trap_zone

    assert settings.ingest is not None
    store = Store.open(settings.db)
    try:
        trap_zone(store, settings.ingest.zone, time.time())
    finally:
        store.close()


def _handler(settings: Settings, holder: Holder) -> Handler:
    from .xfrkeeper import policy

    version = None if settings.hide_version else f"dnsbl-server {__version__}"
    options = Options(version=version, auth_ns=settings.auth_ns, server_id=settings.server_id)
    handler = Handler(holder, options, settings.udp_cap)
    handler.transfers.policy = policy(settings)
    handler.tcp = Connections(settings.tcp)
    handler.rrl = Limiter(settings.rrl) if settings.rrl is not None else None
    return handler


def _zones_text(holder: Holder) -> str:
    return ", ".join(z.name for z in holder.zones) or "no zones"


async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """`dnsbl serve` in this process alone (one worker), until SIGTERM/SIGINT or `stop`."""
    bound = [bind(spec) for spec in settings.listen]  # as root (port 53), then as --user from here on
    _become_user(settings)
    sources = Sources(settings, time.time())
    holder = Holder(sources.load(time.time()))
    handler = _handler(settings, holder)
    monitor = Monitor.open(handler, partial(_zone_names, holder), settings.stats_file, settings.query_log)
    closers = [closer for udp, tcp, _shown in bound for closer in await attach(handler, udp, tcp)]
    figures = Figures()
    closers += await _local_metrics(settings, handler, figures)
    _log_listening(bound, holder)
    trap = await _start_trap(settings)
    stop = stop or asyncio.Event()
    reload_now = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    monitor.install(loop, on_hup=reload_now.set)  # SIGUSR1/2, and SIGHUP: the query log, then the files
    monitor.mark()
    reporter = asyncio.create_task(monitor.run(settings.check_interval))
    keeping = _keeping(settings, handler)
    exporting = _start_export(settings)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="refresh") as worker:
        refresher = asyncio.create_task(
            _follow(sources, holder, worker, settings.check_interval, reload_now, keeping)
        )
        counting = asyncio.create_task(_count_figures(figures, sources, worker)) if settings.metrics else None
        await stop.wait()
        refresher.cancel()
        if counting is not None:
            counting.cancel()
        reporter.cancel()
        if trap is not None:
            await trap.stop()
        if keeping is not None:
            await keeping.close()
        await _stop_export(exporting)
        for closer in closers:
            closer.close()
    monitor.stop()
    sources.close()
    log.info("stopped")


async def _local_metrics(settings: Settings, handler: Handler, figures: Figures) -> list[asyncio.Server]:
    """--metrics in one process: the endpoint on this loop, over the handler's own counts."""
    if settings.metrics is None:
        return []
    from .metrics_http import open_endpoint, serve_async

    sock, scrape = open_endpoint(settings.metrics, handler.counters, figures, GAUGES, lambda: 1)
    return [await serve_async(sock, scrape)]


async def _count_figures(figures: Figures, sources: Sources, worker: ThreadPoolExecutor) -> None:
    """The store's figures for the metrics, counted in the refresh thread (its connection), when due."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(1.0)
        if figures.due():
            try:
                await loop.run_in_executor(worker, figures.refresh, sources.store)
            except Exception:
                log.exception("counting entries for the metrics failed")


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
    keeping: Keeping | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    next_check = loop.time() + check_interval
    if keeping is not None:  # the journal starts from what is served now
        await _keep(keeping, sources, holder, worker, time.time())
    while True:
        await asyncio.sleep(REFRESH_S)
        files_due = reload_now.is_set() or (check_interval > 0 and loop.time() >= next_check)
        if files_due:
            reload_now.clear()
            next_check = loop.time() + check_interval
        now = time.time()
        try:
            zones = await loop.run_in_executor(worker, partial(sources.refresh, files_due=files_due), now)
        except Exception:  # keep serving the last good zones
            log.exception("refreshing failed; still serving the previous data")
            continue
        if zones is not None:
            holder.zones = zones
            if keeping is not None:
                await _keep(keeping, sources, holder, worker, now)


def _keeping(settings: Settings, handler: Handler) -> Keeping | None:
    """One process: the IXFR journal and NOTIFYs are kept here, counted on the handler's counters."""
    if not _transfers_wanted(settings):
        return None
    from .xfrkeeper import Keeping

    return Keeping(settings, handler.counters.transfers)


async def _keep(
    keeping: Keeping, sources: Sources, holder: Holder, worker: ThreadPoolExecutor, now: float
) -> None:
    """The journal brought up to the zones just swapped in (in the refresh thread), then NOTIFYs."""
    seq = sources.loader.seq if sources.loader else 0
    try:
        moved = await asyncio.get_running_loop().run_in_executor(worker, keeping.step, holder.zones, seq, now)
    except Exception:
        log.exception("keeping the IXFR journal failed")
        return
    keeping.announce(moved)
