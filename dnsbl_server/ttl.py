"""The answer-TTL policy: `--ttl DEF[:MIN[:MAX]]`, rbldnsd's `-t defttl:minttl:maxttl`.

Rules, as rbldnsd 1.0 applies them (tried against it; README, "rbldnsd options"):
- DEF is the TTL of records whose data gives none. MIN and MAX bound the TTLs that data files give
  (`$TTL`, a generic record's own TTL); 0 or an empty part means no bound.
- A TTL of 0 in a data file means "no TTL given": the default applies (rbldnsd's `parse_ttl`).
- DEF itself must lie within the bounds (rbldnsd refuses to start otherwise), so it is never clamped;
  neither is the SOA minimum, which sets the negative-answer TTL.
- Every part takes rbldnsd's time units (`30`, `5m`, `1h`, `1d`, `1w`).
Pure: no I/O. Applied once, when a data file is loaded (`limit_ttls`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .addresses import parse_duration
from .errors import ConfigError, TargetError

if TYPE_CHECKING:  # config imports this module: the data-file readers load only with data files
    from .namesets import NamesParsed
    from .zonefile import Specials


class Read(Protocol):
    """A freshly read data file of any dataset type: what `limit_ttls` changes."""

    specials: Specials


@dataclass(frozen=True, slots=True)
class TtlLimits:
    minimum: int = 0  # 0: no lower bound
    maximum: int = 0  # 0: no upper bound

    def clamp(self, ttl: int | None) -> int | None:
        """A TTL a data file gave, within the bounds; None (use the default) for none or 0."""
        if not ttl:
            return None
        if self.minimum and ttl < self.minimum:
            return self.minimum
        if self.maximum and ttl > self.maximum:
            return self.maximum
        return ttl

    def check(self, defaults: Mapping[str, int]) -> None:
        """Defaults (by where they are set) outside the bounds are an error, as rbldnsd refuses to start
        with an "inconsistent def:min:max ttl"."""
        if self.minimum and self.maximum and self.minimum > self.maximum:
            raise ConfigError(f"--ttl: the minimum TTL {self.minimum} is above the maximum {self.maximum}")
        for where, default in defaults.items():
            if (self.minimum and default < self.minimum) or (self.maximum and default > self.maximum):
                bounds = f"{self.minimum}..{self.maximum or 'no limit'}"
                raise ConfigError(
                    f"{where}: the default TTL {default} is outside the --ttl bounds {bounds}"
                    " (give a default inside them too, e.g. --ttl 300:60:3600)"
                )


NO_LIMITS = TtlLimits()


@dataclass(frozen=True, slots=True)
class TtlSpec:
    """`DEF[:MIN[:MAX]]` as given: None for a part left out (it keeps its previous value)."""

    default: int | None = None
    minimum: int | None = None
    maximum: int | None = None

    def limits(self, base: TtlLimits = NO_LIMITS) -> TtlLimits:
        """The bounds this spec gives; `base`'s where it leaves one out."""
        return TtlLimits(_given(self.minimum, base.minimum), _given(self.maximum, base.maximum))


def _given(mine: int | None, theirs: int) -> int:
    return theirs if mine is None else mine


def parse_ttl(text: str | int) -> TtlSpec:
    """`300`, `5m:1m:1h`, `::2m` (only a maximum): rbldnsd's -t syntax; an int is a default in seconds."""
    if isinstance(text, int) and not isinstance(text, bool):
        return TtlSpec(_non_negative(text, str(text)))
    if not isinstance(text, str):
        raise ConfigError(f"invalid TTL {text!r}: use DEF[:MIN[:MAX]], e.g. 2100 or 35m:1m:1d")
    parts = text.strip().split(":")
    if len(parts) > 3:
        raise ConfigError(f"invalid TTL {text!r}: use DEF[:MIN[:MAX]], e.g. 2100 or 35m:1m:1d")
    values = [_part(p, text) for p in parts] + [None] * (3 - len(parts))
    return TtlSpec(*values)


def _part(part: str, text: str) -> int | None:
    if not part.strip():
        return None
    try:
        return _non_negative(parse_duration(part), text)
    except TargetError:
        raise ConfigError(f"invalid TTL {text!r}: each part is a time like 300, 5m, 1h or 1d") from None


def _non_negative(value: int, text: str) -> int:
    if not 0 <= value < 2**31:
        raise ConfigError(f"invalid TTL {text!r}: must be between 0 and 2147483647 seconds")
    return value


# --- applied to what a data file gave -------------------------------------------------------------


def limit_ttls(parsed: Read, limits: TtlLimits) -> None:
    """Clamp, in place, every TTL a freshly read data file gave: its `$TTL`s and generic records' TTLs."""
    from .namesets import CombinedParsed, NamesParsed

    parsed.specials.ttl = limits.clamp(parsed.specials.ttl)
    if isinstance(parsed, NamesParsed):
        _limit_records(parsed, limits)
    elif isinstance(parsed, CombinedParsed):
        for section in parsed.sections:
            limit_ttls(section.parsed, limits)


def _limit_records(parsed: NamesParsed, limits: TtlLimits) -> None:
    parsed.records = {
        labels: [r._replace(ttl=limits.clamp(r.ttl)) for r in records]
        for labels, records in parsed.records.items()
    }
