"""The scheduled export for rsync mirrors: the [export] table of `dnsbl serve` (README, "Scheduled
export"). Owns when, where and how safely zone files are written; export.py owns what they say.

Rules:
- One process runs it: the server itself with one worker, the trap/ops process with several
  (daemon.py). Runs never overlap: one thread, every run on a database connection of its own.
- Each zone of the SQLite list goes to DIR/ZONE.FORMAT (`bl.example.org.combined`) as `dnsbl export`
  writes it: a temp file `.ZONE.FORMAT.*.tmp` in DIR, fsynced, renamed over the old one, then DIR
  fsynced. A mirror's rsync, or an rbldnsd reading DIR, sees the old file or the new one, whole, even
  after a crash.
- A file is rewritten only when its header differs from the zone's: the serial (which moves with
  every change, expiries included, README "Serial"), SOA, NS and TTL. An unchanged zone costs two
  small queries and a read of the file's first lines; the file and its mtime stay (`rsync -t` copies
  nothing).
- The serial is read before and after the zone is built: a write in between means the data may be
  newer than its header says, so that file waits for the next run (a file never claims a serial its
  data is older than, or mirrors would skip the change).
- A failure (DIR missing or read-only, disk full, a reason rbldnsd would misread) is logged with the
  file and the reason; the old file stays as it was, the temp file is removed, the next run tries
  again. DIR itself is created if missing, its parent never: an unmounted volume must not fill up
  the filesystem under its mount point.
- After every run DIR/.dnsbl-export.json (`read_status`) records each zone's serial, when its file was
  last written and last found current, and `last_success`: the end of the last run that found every
  zone exported. Metrics read it from there, whichever process they run in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from . import metrics
from .config import ExportSettings, Settings
from .errors import DnsblError
from .export import WRITERS
from .index import ZoneIndex
from .loader import build_zone
from .store import Store
from .zone import Zone, ZoneSettings

log = logging.getLogger("dnsbl.export")
STATUS = ".dnsbl-export.json"


def file_name(zone: str, fmt: str) -> str:
    return f"{zone}.{fmt}"


def header(name: str, serial: int, settings: ZoneSettings, fmt: str, now: float) -> list[str]:
    """The lines a file of this zone starts with whatever its entries: the writer's output for the
    zone with no entries and no test points (the serial, SOA, NS and TTL lines)."""
    shell = Zone(name, ZoneIndex.build(()), serial, settings, test_points=False)
    return list(WRITERS[fmt](shell, now))


def current(path: Path, expected: list[str]) -> bool:
    """The file at `path` starts with the `expected` lines."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return [line.rstrip("\n") for line in islice(handle, len(expected))] == expected
    except OSError:
        return False


def write_atomic(path: Path, lines: Iterable[str]) -> None:
    """Temp file beside `path`, fsync, rename over, fsync the folder; DnsblError naming `path` if any of
    it fails, the old file untouched and the temp file gone."""
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise DnsblError(f"{path}: cannot write: {error.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for line in lines:
                handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)  # mirrors' rsync daemons read it as another user
        os.replace(temp, path)
        _sync_folder(path.parent)
    except BaseException as error:
        _unlink(temp)
        if isinstance(error, OSError):
            raise DnsblError(f"{path}: cannot write: {error.strerror or error}") from None
        raise


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: str | Path) -> None:
    with contextlib.suppress(OSError):  # already gone, or the folder itself is gone
        os.unlink(path)


@dataclass
class Outcome:
    zone: str
    path: Path
    serial: int | None = None
    written: bool = False
    error: str | None = None
    seconds: float = 0.0


class Exporter:
    """[export] in a running server: `run()` exports every zone now and then every `interval`."""

    def __init__(self, settings: Settings) -> None:
        assert settings.export is not None
        self.settings = settings
        self.export: ExportSettings = settings.export
        self.directory = Path(settings.export.directory)
        self.last_success: float | None = None
        self.warned = False

    # --- one run (a worker thread) ----------------------------------------------------------------

    def run_once(self, now: float) -> list[Outcome]:
        try:
            self._folder()
            store = Store.open(self.settings.db, create=False)
        except DnsblError as error:
            return [Outcome("*", self.directory, error=str(error))]
        try:
            outcomes = [self._zone(store, name, now) for name in self._zones(store)]
        finally:
            store.close()
        if all(o.error is None for o in outcomes):
            self.last_success = metrics.GAUGES.last_export = time.time()
        self._record(outcomes)
        return outcomes

    def _folder(self) -> None:
        """DIR created if missing (its parent must exist); temp files a killed run left removed."""
        try:
            self.directory.mkdir(exist_ok=True)
        except OSError as error:
            raise DnsblError(f"{self.directory}: cannot create the export folder: {error.strerror}") from None
        for pattern in (f".*.{self.export.format}.*.tmp", f".{STATUS}.*.tmp"):
            for stale in self.directory.glob(pattern):
                _unlink(stale)

    def _zones(self, store: Store) -> list[str]:
        return list(self.export.zones or self.settings.zones or store.zone_names())

    def _zone(self, store: Store, name: str, now: float) -> Outcome:
        path = self.directory / file_name(name, self.export.format)
        outcome = Outcome(name, path)
        started = time.monotonic()
        try:
            outcome.serial, outcome.written = self._export(store, name, path, now)
        except DnsblError as error:
            outcome.error = str(error)
        outcome.seconds = time.monotonic() - started
        return outcome

    def _export(self, store: Store, name: str, path: Path, now: float) -> tuple[int, bool]:
        settings = self.settings.settings_for(name)
        serial = store.serial(name, now)  # StoreError (a DnsblError) for a zone that is not there
        if current(path, header(name, serial, settings, self.export.format, now)):
            return serial, False
        zone = build_zone(store, name, settings, now)
        if store.serial(name, now) != serial or zone.serial != serial:
            raise DnsblError(f"{name}: changed while being exported; written at the next run")
        write_atomic(path, WRITERS[self.export.format](zone, now))
        return serial, True

    # --- the status file ----------------------------------------------------------------------

    def _record(self, outcomes: list[Outcome]) -> None:
        status = read_status(self.directory)
        zones: dict[str, Any] = status.get("zones", {})
        when = time.time()
        for o in outcomes:
            entry = zones.setdefault(o.zone, {})
            entry.update(file=o.path.name, error=o.error)
            if o.error is None:
                entry.update(serial=o.serial, checked=when)
                if o.written:
                    entry["written"] = when
        status.update(zones=zones, format=self.export.format)
        if self.last_success is not None:
            status["last_success"] = self.last_success
        try:
            write_atomic(self.directory / STATUS, [json.dumps(status, indent=1, sort_keys=True)])
        except DnsblError as error:
            log.warning("export status not recorded: %s", error)

    # --- the schedule (the event loop) ---------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled: a run now, then one every interval (from the start of the last)."""
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="export") as pool:
            while True:
                started = loop.time()
                try:
                    outcomes = await loop.run_in_executor(pool, self.run_once, time.time())
                except Exception:
                    log.exception("export failed; trying again at the next run")
                else:
                    self._log(outcomes)
                await asyncio.sleep(max(0.0, started + self.export.interval - loop.time()))

    def _log(self, outcomes: list[Outcome]) -> None:
        if not outcomes and not self.warned:
            self.warned = True  # once: zones may come later
            log.warning("export: no zones in the database yet; data-file zones are not exported")
        for o in outcomes:
            if o.error is not None:
                log.error(
                    "export: %s; the previous file stays, trying again in %s",
                    o.error,
                    _duration(self.export.interval),
                )
            elif o.written:
                log.info("exported %s (serial %d) to %s in %.2f s", o.zone, o.serial, o.path, o.seconds)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g}m" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g}s"


def read_status(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """What the last runs recorded in DIR/.dnsbl-export.json: `last_success` (Unix time, absent before
    the first complete run), `format`, and per zone `file`, `serial`, `written`, `checked`, `error`.
    Empty when there is none (or it cannot be read)."""
    try:
        with open(Path(directory) / STATUS, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
