"""Settings: defaults, the TOML config file, environment and command-line overrides, in that order.

The database path is resolved the same way for every command: `--db`, else `DNSBL_DB`, else the
config file's `db`, else DEFAULT_DB (its directory is created on first use).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError, TargetError
from .names import default_db, zone_name
from .rrl import RrlSettings
from .tcplimits import TcpLimits
from .ttl import NO_LIMITS, TtlLimits, parse_ttl
from .zone import ZoneSettings

DEFAULT_LISTEN = "127.0.0.1:5300"  # loopback, unprivileged; not 5353 (mDNS)
DEMO_ZONE = "bl.example.org"


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
    allow_transfer: tuple[str, ...] = ()  # CIDRs that may AXFR/IXFR (xfr.py); empty: nobody
    notify: tuple[str, ...] = ()  # HOST:PORT secondaries sent NOTIFY on serial changes (notify.py)
    tsig_key: str | None = None  # NAME:ALGORITHM:BASE64: transfers must be signed with it (xfrtsig.py)
    metrics: str | None = None  # HOST:PORT of the Prometheus endpoint (metrics_http.py); None: none
    server_id: str | None = None  # CHAOS hostname.bind / id.server and EDNS NSID (RFC 5001); None: REFUSED
    log_format: str = "text"  # text, or json: one object per line (logs.py)
    tcp: TcpLimits = TcpLimits()  # the [tcp] table: connection caps and timeouts (tcplimits.py)
    rrl: RrlSettings | None = RrlSettings()  # the [rrl] table: UDP response rate limiting (rrl.py); None: off
    zone_defaults: ZoneSettings = ZoneSettings()
    zone_settings: dict[str, ZoneSettings] = field(default_factory=dict)

    ingest: IngestSettings | None = None  # the [ingest] table: trap sources on a schedule
    user: str | None = None  # NAME[:GROUP] to run as once the sockets are bound (privileges.py)
    export: ExportSettings | None = None  # the [export] table: zone files for rsync mirrors (exporter.py)
    web: WebSettings = field(default_factory=lambda: WebSettings())  # the [web] table: `dnsbl web`

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


@dataclass(frozen=True)
class ExportSettings:
    """The [export] table: every zone written to `directory` as an rbldnsd file, on a schedule, for
    mirrors that pull it with rsync (README, "Scheduled export"). Plain values: exporter.py runs them."""

    directory: str
    interval: float = 300.0  # seconds between runs
    format: str = "combined"  # a `dnsbl export --format` other than csv
    zones: tuple[str, ...] = ()  # empty: every zone served from the database


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
    "allow_transfer",
    "notify",
    "tsig_key",
    "metrics",
    "server_id",
    "log_format",
    "user",
    "export",
    "tcp",
    "rrl",
    "web",
}

_INGEST_LISTS = {"maildirs", "mboxes", "jsonl", "trap_mx", "trusted"}
_INGEST_NUMBERS = {"listing_days", "evidence_days", "v6_prefix"}
_SMTPD_LISTS = {"listen": "smtpd_listen", "trap_domains": "trap_domains", "proxy_from": "proxy_from"}
_INGEST_KEYS = _INGEST_LISTS | _INGEST_NUMBERS | {"zone", "interval", "lookup_url", "smtpd"}
_SMTPD_KEYS = set(_SMTPD_LISTS) | {"hostname"}
_EXPORT_KEYS = {"directory", "interval", "format", "zones"}


def ingest_settings(table: dict[str, Any], where: str) -> IngestSettings:
    """The [ingest] table (and its [ingest.smtpd] sub-table), checked key by key."""
    from .addresses import parse_duration

    smtpd = table.get("smtpd", {})
    _no_unknown(set(table) - _INGEST_KEYS, where)
    _no_unknown(set(smtpd) - _SMTPD_KEYS, f"{where}.smtpd")
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


def _text_or_none(data: dict[str, Any], key: str, where: str | os.PathLike[str]) -> str | None:
    value = data.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{where}: {key} must be a non-empty string, not {value!r}")
    return value


def _log_format(value: Any, where: str | os.PathLike[str]) -> str:
    if value not in ("text", "json"):
        raise ConfigError(f"{where}: log_format must be text or json, not {value!r}")
    return str(value)


def _workers(value: Any, where: str | os.PathLike[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: workers must be a number of processes (0: one per CPU), not {value!r}")
    return value


# --- [web]: the lookup and delisting site (web/, delisting.py; README, "Web page") ----------------


@dataclass(frozen=True)
class WebSettings:
    """The [web] table. Plain values: web/app.py and delisting.py apply them."""

    listen: str = "127.0.0.1:8080"
    token: str = ""  # the operator page's token; empty: the operator page is off
    secret: str = ""  # signs CSRF tokens; empty: a random one per process (forms die with a restart)
    policy: str = (
        "Listings are made automatically when a server sends backscatter (bounces, auto-replies, "
        "challenges, sender callouts) to our spam traps. They expire by themselves 4 weeks after the "
        "last hit. Fix the cause (reject spam at SMTP time instead of bouncing it later) and the listing "
        "goes away; if you have fixed it and cannot wait, ask below."
    )
    site_name: str = "DNSBL lookup"
    zones: tuple[str, ...] = ()  # zones shown; empty: every zone of the database
    requests_per_client: int = 3  # delisting requests from one address per hour
    requests_per_hour: int = 60  # delisting requests from everyone per hour
    lookups_per_minute: int = 60  # lookups (page and API) from one address per minute
    trusted_proxy: str = ""  # a reverse proxy's address whose X-Forwarded-For names the client


def web_settings(table: dict[str, Any], where: str) -> WebSettings:
    known = {f.name: f for f in fields(WebSettings)}
    _no_unknown(set(table) - set(known), where)
    values: dict[str, Any] = {}
    for key, value in table.items():
        default = getattr(WebSettings(), key)
        if key == "zones":
            values[key] = tuple(zone_name(z) for z in _strings(value, f"{where} zones"))
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}: {key} must be a whole number above 0, not {value!r}")
            values[key] = value
        elif not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be a string, not {value!r}")
        else:
            values[key] = value
    if "listen" in values:
        parse_listen(values["listen"])
    return WebSettings(**values)


def export_settings(table: dict[str, Any], where: str) -> ExportSettings:
    """The [export] table, checked key by key."""
    from .addresses import parse_duration
    from .export import WRITERS

    _no_unknown(set(table) - _EXPORT_KEYS, where)
    directory = table.get("directory")
    if not isinstance(directory, str) or not directory:
        raise ConfigError(f"{where}: directory is required: the folder the zone files are written to")
    fmt = table.get("format", "combined")
    if fmt not in WRITERS:
        raise ConfigError(f"{where}: format must be one of {', '.join(WRITERS)}, not {fmt!r}")
    try:
        interval = float(parse_duration(str(table.get("interval", "5m"))))
    except TargetError as error:
        raise ConfigError(f"{where}: interval: {error}") from None
    if interval <= 0:
        raise ConfigError(f"{where}: interval must be longer than 0s")
    zones = tuple(zone_name(z) for z in _strings(table.get("zones", []), f"{where}: zones"))
    return ExportSettings(directory, interval, fmt, zones)


_TCP_COUNTS = ("max_connections", "max_per_client")
_TCP_TIMES = ("idle_timeout", "read_timeout")


def tcp_limits(table: dict[str, Any], where: str) -> TcpLimits:
    """The [tcp] table: counts are integers, timeouts seconds or durations ("30s", "2m")."""
    from .addresses import parse_duration

    _no_unknown(set(table) - set(_TCP_COUNTS) - set(_TCP_TIMES), where)
    values = dict(table)
    for key in _TCP_TIMES:
        if isinstance(values.get(key), str):
            try:
                values[key] = float(parse_duration(values[key]))
            except TargetError as error:
                raise ConfigError(f"{where}: {key}: {error}") from None
    try:
        return TcpLimits(**values)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


_RRL_KEYS = ("enabled", "responses_per_second", "nxdomains_per_second", "all_per_second", "slip", "window")


def rrl_settings(table: dict[str, Any], where: str) -> RrlSettings | None:
    """The [rrl] table: whole numbers, `exempt` a list of CIDRs, `enabled = false` for none."""
    _no_unknown(set(table) - set(_RRL_KEYS) - {"exempt"}, where)
    if "enabled" in table and not _flag(table, "enabled", where):
        return None
    values = {key: value for key, value in table.items() if key != "enabled"}
    if "exempt" in values:
        values["exempt"] = _strings(values["exempt"], f"{where}: exempt")
    try:
        return RrlSettings(**values)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def _flag(data: dict[str, Any], key: str, where: str | os.PathLike[str]) -> bool:
    """A TOML boolean: the string "false" must not read as true."""
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be true or false, not {value!r}")
    return value


def _seconds(value: Any, key: str, where: str | os.PathLike[str]) -> float:
    """A number of seconds, or a duration in rbldnsd's units ("1m", "2h")."""
    from .addresses import parse_duration

    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    try:
        return float(parse_duration(str(value)))
    except TargetError as error:
        raise ConfigError(f"{where}: {key}: {error}") from None


def _udp_cap(value: Any, where: str | os.PathLike[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 512 <= value <= 65535:
        raise ConfigError(f"{where}: udp_cap must be a number of bytes from 512 to 65535, not {value!r}")
    return value


def _user(value: Any, where: str | os.PathLike[str]) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{where}: user must be NAME or NAME:GROUP, not {value!r}")
    return value


def accepted() -> dict[str, frozenset[str]]:
    """Every key the config file takes, by table ("" for the top level): what the README's table and
    zones/dnsbl.toml must document (tests/test_config_doc.py holds them to it)."""
    zone = frozenset(_ZONE_FIELDS)
    return {
        "": frozenset(_TOP),
        "zone_defaults": zone,
        "zone.NAME": zone,
        "ingest": frozenset(_INGEST_KEYS),
        "ingest.smtpd": frozenset(_SMTPD_KEYS),
        "export": frozenset(_EXPORT_KEYS),
        "tcp": frozenset(_TCP_COUNTS + _TCP_TIMES),
        "rrl": frozenset((*_RRL_KEYS, "exempt")),
        "web": frozenset(f.name for f in fields(WebSettings)),
    }


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
        hide_version=_flag(data, "hide_version", path),
        udp_cap=_udp_cap(data.get("udp_cap", 1232), path),
        datasets=tuple(data.get("datasets", [])),
        check_interval=_seconds(data.get("check_interval", 60), "check_interval", path),
        loose=_flag(data, "loose", path),
        ttl_limits=ttl.limits() if ttl else NO_LIMITS,
        stats_file=_path_or_none(data, "stats_file", path),
        query_log=_path_or_none(data, "query_log", path),
        auth_ns=_flag(data, "auth_ns", path),
        workers=_workers(data.get("workers", 0), path),
        allow_transfer=_strings(data.get("allow_transfer", []), f"{path}: allow_transfer"),
        notify=_strings(data.get("notify", []), f"{path}: notify"),
        tsig_key=_text_or_none(data, "tsig_key", path),
        metrics=_text_or_none(data, "metrics", path),
        server_id=_text_or_none(data, "server_id", path),
        log_format=_log_format(data.get("log_format", "text"), path),
        zone_defaults=defaults,
        zone_settings=per_zone,
        ingest=ingest_settings(data["ingest"], f"{path}: [ingest]") if "ingest" in data else None,
        user=_user(data.get("user"), path),
        tcp=tcp_limits(data.get("tcp", {}), f"{path}: [tcp]"),
        rrl=rrl_settings(data.get("rrl", {}), f"{path}: [rrl]"),
        export=export_settings(data["export"], f"{path}: [export]") if "export" in data else None,
        web=web_settings(data.get("web", {}), f"{path}: [web]"),
    )
    return settings, data.get("db")
