"""Settings: defaults, the TOML config file, environment and command-line overrides, in that order.

The database path is resolved the same way for every command: `--db`, else `DNSBL_DB`, else the
config file's `db`, else DEFAULT_DB (its directory is created on first use).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError, TargetError
from .ttl import NO_LIMITS, TtlLimits, parse_ttl
from .zone import ZoneSettings

DEFAULT_LISTEN = "127.0.0.1:5300"  # loopback, unprivileged; not 5353 (mDNS)
DEMO_ZONE = "bl.example.org"


def default_db() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "dnsbl-server" / "dnsbl.sqlite"


@dataclass(frozen=True)
class Settings:
    db: Path = field(default_factory=default_db)
    zones: tuple[str, ...] = ()  # empty: every zone in the database
    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    hide_version: bool = False
    udp_cap: int = 1232
    datasets: tuple[str, ...] = ()  # rbldnsd zone specs, ZONE:TYPE:FILE[,FILE...]
    use_db: bool = True  # False: only data files were asked for (a true rbldnsd replacement)
    check_interval: float = 60.0  # how often data files are checked for changes (rbldnsd -c)
    loose: bool = False  # accept CIDRs with host bits set (rbldnsd -e)
    ttl_limits: TtlLimits = NO_LIMITS  # bounds on the TTLs data files give (rbldnsd -t def:MIN:MAX)
    stats_file: str | None = None  # [+]FILE: per-zone counters every check interval (rbldnsd -s)
    query_log: str | None = None  # [+]FILE, or - for standard output: one line per query (rbldnsd -l)
    auth_ns: bool = False  # NS in the authority section of positive answers (rbldnsd -A; -a is ours)
    workers: int = 0  # serving processes sharing the sockets; 0: one per usable CPU, at most 4
    zone_defaults: ZoneSettings = ZoneSettings()
    zone_settings: dict[str, ZoneSettings] = field(default_factory=dict)

    ingest: IngestSettings | None = None  # the [ingest] table: trap sources on a schedule

    def settings_for(self, zone: str) -> ZoneSettings:
        return self.zone_settings.get(zone, self.zone_defaults)


@dataclass(frozen=True)
class IngestSettings:
    """The backscatter trap: where trap mail comes from and the listing policy (README, "Trap
    ingester"). Plain values only: schedule.py turns them into running jobs."""

    zone: str | None = None  # None: the database's only zone
    interval: float = 300.0  # seconds between runs of the file sources
    maildirs: tuple[str, ...] = ()
    mboxes: tuple[str, ...] = ()
    jsonl: tuple[str, ...] = ()
    trap_mx: tuple[str, ...] = ()
    trusted: tuple[str, ...] = ()  # CIDRs
    lookup_url: str = "https://bl.example.org/lookup?ip=$"
    listing_days: float = 28.0
    evidence_days: float = 90.0
    v6_prefix: int = 128
    smtpd_listen: tuple[str, ...] = ()  # the built-in SMTP trap listener: off unless listening
    trap_domains: tuple[str, ...] = ()
    proxy_from: tuple[str, ...] = ()  # CIDRs allowed to send a PROXY header
    hostname: str = ""

    @property
    def has_sources(self) -> bool:
        return bool(self.maildirs or self.mboxes or self.jsonl or self.smtpd_listen)


def resolve_db(cli_value: str | None, config_value: str | None = None) -> Path:
    value = cli_value or os.environ.get("DNSBL_DB") or config_value
    return Path(value).expanduser() if value else default_db()


_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def zone_name(text: str) -> str:
    """A zone name, lowercased, without the trailing dot; ConfigError if it is not a hostname."""
    name = text.strip().lower().rstrip(".")
    if not name or len(name) > 253 or not all(_LABEL.match(p) for p in name.split(".")):
        raise ConfigError(f"invalid zone name {text!r}")
    return name


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[v6]:PORT`, or just `PORT` (loopback)."""
    value = text.strip()
    if value.isdigit():
        host, port_text = "127.0.0.1", value
    elif value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        if not sep:
            raise ConfigError(f"invalid listen address {text!r}: use [IPv6]:PORT")
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or ":" in host:
            raise ConfigError(f"invalid listen address {text!r}: use HOST:PORT or [IPv6]:PORT")
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"invalid port in listen address {text!r}")
    return host, int(port_text)


def load_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    import tomllib  # only when there is a file: keeps `dnsbl check` start-up short

    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config file: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: {error}") from None


_ZONE_FIELDS = {f.name for f in fields(ZoneSettings)}


def zone_settings(base: ZoneSettings, table: dict[str, Any], where: str) -> ZoneSettings:
    unknown = set(table) - _ZONE_FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
    values = dict(table)
    if "ns" in values:
        values["ns"] = tuple(zone_name(n) for n in values["ns"])
    for key, value in values.items():
        if key not in ("ns", "mname", "rname") and (not isinstance(value, int) or value < 0):
            raise ConfigError(f"{where}: {key} must be a non-negative integer, not {value!r}")
    return replace(base, **values)


_TOP = {
    "db",
    "zones",
    "listen",
    "hide_version",
    "udp_cap",
    "zone_defaults",
    "zone",
    "datasets",
    "check_interval",
    "loose",
    "ingest",
    "ttl",
    "stats_file",
    "query_log",
    "auth_ns",
    "workers",
}

_INGEST_LISTS = {"maildirs", "mboxes", "jsonl", "trap_mx", "trusted"}
_INGEST_NUMBERS = {"listing_days", "evidence_days", "v6_prefix"}
_SMTPD_LISTS = {"listen": "smtpd_listen", "trap_domains": "trap_domains", "proxy_from": "proxy_from"}


def ingest_settings(table: dict[str, Any], where: str) -> IngestSettings:
    """The [ingest] table (and its [ingest.smtpd] sub-table), checked key by key."""
    from .addresses import parse_duration

    smtpd = table.get("smtpd", {})
    known = _INGEST_LISTS | _INGEST_NUMBERS | {"zone", "interval", "lookup_url", "smtpd"}
    _no_unknown(set(table) - known, where)
    _no_unknown(set(smtpd) - set(_SMTPD_LISTS) - {"hostname"}, f"{where}.smtpd")
    values: dict[str, Any] = {}
    for key in _INGEST_LISTS:
        values[key] = _strings(table.get(key, []), f"{where}: {key}")
    for key, name in _SMTPD_LISTS.items():
        values[name] = _strings(smtpd.get(key, []), f"{where}.smtpd: {key}")
    for key in _INGEST_NUMBERS & set(table):
        if not isinstance(table[key], int | float) or table[key] < 0:
            raise ConfigError(f"{where}: {key} must be a non-negative number, not {table[key]!r}")
        values[key] = table[key]
    if "zone" in table:
        values["zone"] = zone_name(str(table["zone"]))
    if "interval" in table:
        try:
            values["interval"] = float(parse_duration(str(table["interval"])))
        except TargetError as error:
            raise ConfigError(f"{where}: interval: {error}") from None
        if values["interval"] <= 0:
            raise ConfigError(f"{where}: interval must be longer than 0s")
    for key in ("lookup_url",):
        if key in table:
            values[key] = str(table[key])
    if "hostname" in smtpd:
        values["hostname"] = str(smtpd["hostname"])
    for spec in values["smtpd_listen"]:
        parse_listen(spec)
    if values["smtpd_listen"] and not values["trap_domains"]:
        raise ConfigError(f"{where}.smtpd: listen needs trap_domains (the domains the traps are in)")
    return IngestSettings(**values)


def _no_unknown(keys: set[str], where: str) -> None:
    if keys:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(keys))}")


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of strings, not {value!r}")
    return tuple(value)


def _path_or_none(data: dict[str, Any], key: str, where: str | os.PathLike[str]) -> str | None:
    value = data.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{where}: {key} must be a file name, not {value!r}")
    return value


def _workers(value: Any, where: str | os.PathLike[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: workers must be a number of processes (0: one per CPU), not {value!r}")
    return value


def from_file(path: str | os.PathLike[str]) -> tuple[Settings, str | None]:
    """Settings from a config file, and the db it names (resolved later with --db/DNSBL_DB)."""
    data = load_file(path)
    unknown = set(data) - _TOP
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}")
    ttl = parse_ttl(data["ttl"]) if "ttl" in data else None  # DEF[:MIN[:MAX]], as --ttl
    base = ZoneSettings() if ttl is None or ttl.default is None else ZoneSettings(ttl=ttl.default)
    defaults = zone_settings(base, data.get("zone_defaults", {}), f"{path}: [zone_defaults]")
    per_zone = {
        zone_name(name): zone_settings(defaults, table, f"{path}: [zone.{name}]")
        for name, table in data.get("zone", {}).items()
    }
    for spec in data.get("listen", []):
        parse_listen(spec)
    settings = Settings(
        zones=tuple(zone_name(z) for z in data.get("zones", [])),
        listen=tuple(data.get("listen", [DEFAULT_LISTEN])),
        hide_version=bool(data.get("hide_version", False)),
        udp_cap=int(data.get("udp_cap", 1232)),
        datasets=tuple(data.get("datasets", [])),
        check_interval=float(data.get("check_interval", 60)),
        loose=bool(data.get("loose", False)),
        ttl_limits=ttl.limits() if ttl else NO_LIMITS,
        stats_file=_path_or_none(data, "stats_file", path),
        query_log=_path_or_none(data, "query_log", path),
        auth_ns=bool(data.get("auth_ns", False)),
        workers=_workers(data.get("workers", 0), path),
        zone_defaults=defaults,
        zone_settings=per_zone,
        ingest=ingest_settings(data["ingest"], f"{path}: [ingest]") if "ingest" in data else None,
    )
    return settings, data.get("db")
