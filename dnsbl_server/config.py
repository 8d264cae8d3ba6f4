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

from .errors import ConfigError
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
    zone_defaults: ZoneSettings = ZoneSettings()
    zone_settings: dict[str, ZoneSettings] = field(default_factory=dict)

    def settings_for(self, zone: str) -> ZoneSettings:
        return self.zone_settings.get(zone, self.zone_defaults)


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
}


def from_file(path: str | os.PathLike[str]) -> tuple[Settings, str | None]:
    """Settings from a config file, and the db it names (resolved later with --db/DNSBL_DB)."""
    data = load_file(path)
    unknown = set(data) - _TOP
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}")
    defaults = zone_settings(ZoneSettings(), data.get("zone_defaults", {}), f"{path}: [zone_defaults]")
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
        zone_defaults=defaults,
        zone_settings=per_zone,
    )
    return settings, data.get("db")
