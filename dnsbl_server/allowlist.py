"""Ranges that automatic sources (the trap ingester) never list. Pure: the store keeps the
admin's ranges; the built-in ones are here.

Built in: addresses that never send mail on the internet, so a "hit" from them is a
misconfiguration or a forgery: loopback, RFC 1918 and fc00::/7, link-local, unspecified, multicast,
and 100.64.0.0/10 (carrier-grade NAT). The documentation ranges (192.0.2.0/24, 198.51.100.0/24,
203.0.113.0/24, 2001:db8::/32) are not built in: they never route, and tests and examples use them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from .addresses import Target, format_target, parse_target

BUILTIN = (
    "0.0.0.0/8",  # "this network" and the unspecified address
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "::/128",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
)


class Allowed(NamedTuple):
    target: Target
    zone: str  # '' for every zone
    reason: str

    @property
    def text(self) -> str:
        return format_target(self.target)


def builtin() -> list[Allowed]:
    return [Allowed(parse_target(t), "", "built in") for t in BUILTIN]


@dataclass(frozen=True, slots=True)
class Allowlist:
    ranges: tuple[Allowed, ...]

    @classmethod
    def of(cls, stored: Iterable[Allowed]) -> Allowlist:
        return cls((*builtin(), *stored))

    def match(self, family: int, address: int, zone: str) -> Allowed | None:
        """The range that keeps this address off `zone`, if any."""
        for allowed in self.ranges:
            t = allowed.target
            if t.family == family and t.lo <= address <= t.hi and allowed.zone in ("", zone):
                return allowed
        return None
