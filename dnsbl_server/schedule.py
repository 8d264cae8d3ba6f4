"""The trap ingester on a schedule: APScheduler runs the file sources every `interval` and the
housekeeping (purge expired entries, forget evidence past its retention) every hour, beside the SMTP
trap listener, in whatever asyncio loop is running (`dnsbl serve`'s, or `dnsbl ingest`'s own).

Rules (README, "Trap ingester"):
- Jobs never overlap: each runs at most once at a time, a run that falls due while another is still
  working is coalesced into one, and ingest and housekeeping take turns (one lock).
- Jobs run in worker threads, each with its own database connection: the serving loop never waits
  on SQLite or the disk.
- A job that fails logs why and runs again at its next time; the server goes on.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import metrics
from .config import IngestSettings
from .errors import ConfigError, DnsblError
from .ingest import FileSources, Networks, Summary, run_sources
from .policy import DAY, Policy
from .store import Store

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

log = logging.getLogger("dnsbl.ingest")
HOUSEKEEPING_S = 3600.0


def policy_of(settings: IngestSettings) -> Policy:
    return Policy(
        listing_days=settings.listing_days, lookup_url=settings.lookup_url, v6_prefix=settings.v6_prefix
    )


def networks(texts: tuple[str, ...], what: str) -> Networks:
    try:
        return [ipaddress.ip_network(t.strip(), strict=False) for t in texts]
    except ValueError as error:
        raise ConfigError(f"invalid {what}: {error}") from None


def trap_zone(store: Store, wanted: str | None, now: float) -> str:
    """The zone trap hits are listed in: the one named (created if missing), else the only zone."""
    if wanted:
        store.ensure_zone(wanted, now)
        return wanted
    names = store.zone_names()
    if len(names) != 1:
        raise ConfigError(
            f"set the zone trap hits go to ([ingest] zone, or --zone): the database has "
            f"{', '.join(names) or 'no zones'}"
        )
    return names[0]


class Ingester:
    """One configured trap: runs its file sources and its housekeeping, each call on a fresh
    connection so that any worker thread may make it."""

    def __init__(self, settings: IngestSettings, db: Path, zone: str) -> None:
        self.settings = settings
        self.db = db
        self.zone = zone
        self.policy = policy_of(settings)
        self.sources = FileSources(
            settings.maildirs,
            settings.mboxes,
            settings.jsonl,
            networks(settings.trusted, "trusted network"),
            settings.trap_mx,
        )
        self.turn = threading.Lock()  # ingest and housekeeping never run at once

    def ingest(self, now: float | None = None) -> list[tuple[str, Summary | DnsblError]]:
        with self.turn, _opened(self.db) as store:
            results = list(run_sources(store, self.zone, self.sources, self.policy, now=now or time.time()))
        for where, result in results:
            report(where, result)
        if not any(isinstance(result, DnsblError) for _where, result in results):
            metrics.GAUGES.last_ingest = time.time()  # the metrics' last successful ingest
        return results

    def housekeeping(self, now: float | None = None) -> tuple[dict[str, int], int]:
        now = now or time.time()
        with self.turn, _opened(self.db) as store:
            purged = store.expire(store.zone_names(), now)
            forgotten = store.prune_hits(now - self.settings.evidence_days * DAY)
        if any(purged.values()) or forgotten:
            log.info(
                "housekeeping: purged %d expired entries, forgot %d hits older than %g days",
                sum(purged.values()),
                forgotten,
                self.settings.evidence_days,
            )
        return purged, forgotten


def report(where: str, result: Summary | DnsblError) -> None:
    if isinstance(result, DnsblError):
        log.warning("%s", result)
        return
    log.info("%s: %s", where, result.line())
    for reason, count in result.skipped.most_common():
        log.info("%s: skipped %d: %s", where, count, reason)


class _opened:
    """A Store for the length of one job."""

    def __init__(self, db: Path) -> None:
        self.db = db

    def __enter__(self) -> Store:
        self.store = Store.open(self.db)
        return self.store

    def __exit__(self, *exc: object) -> None:
        self.store.close()


def scheduler(ingester: Ingester) -> AsyncIOScheduler:
    """Started in the running loop by `start()`; jobs first run at once, then on their interval."""
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # not a line per job run
    jobs = AsyncIOScheduler(job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None})
    first = _soon()
    if ingester.sources.maildirs or ingester.sources.mboxes or ingester.sources.jsonl:
        jobs.add_job(
            _guard(ingester.ingest),
            IntervalTrigger(seconds=ingester.settings.interval),
            id="ingest",
            next_run_time=first,
        )
    jobs.add_job(
        _guard(ingester.housekeeping),
        IntervalTrigger(seconds=HOUSEKEEPING_S),
        id="housekeeping",
        next_run_time=first,
    )
    return jobs


def _soon() -> Any:
    from datetime import datetime

    return datetime.now(UTC)


def _guard(job: Callable[[], object]) -> Callable[[], None]:
    """A job that fails is logged and tried again at its next time."""

    def run() -> None:
        try:
            job()
        except DnsblError as error:
            log.error("%s: %s", job.__name__, error)
        except Exception:
            log.exception("%s failed; trying again at its next run", job.__name__)

    run.__name__ = job.__name__
    return run


class Trap:
    """The whole trap in a running loop: the schedule and, when configured, the SMTP listener."""

    def __init__(self, settings: IngestSettings, db: Path, zone: str) -> None:
        self.ingester = Ingester(settings, db, zone)
        self.jobs = scheduler(self.ingester)
        self.listener: Any = None

    async def start(self) -> None:
        self.jobs.start()
        settings = self.ingester.settings
        if settings.smtpd_listen:
            from .smtptrap import SmtpdSettings, start_listener

            smtpd = SmtpdSettings(
                listen=settings.smtpd_listen,
                trap_domains=settings.trap_domains,
                proxy_from=tuple(networks(settings.proxy_from, "proxy network")),
                hostname=settings.hostname,
            )
            self.listener = await start_listener(
                smtpd, self.ingester.db, self.ingester.zone, self.ingester.policy
            )

    async def stop(self) -> None:
        if self.listener is not None:
            await self.listener.close()
        self.jobs.shutdown(wait=False)
        await asyncio.sleep(0)


def open_trap(settings: IngestSettings, db: Path, now: float) -> Trap:
    with _opened(db) as store:
        zone = trap_zone(store, settings.zone, now)
    return Trap(settings, db, zone)
