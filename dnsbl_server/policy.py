"""What a trap hit turns into: backscatterer.org's policy, configurable. Pure.

Defaults (README, "Trap ingester"): list on the first hit; one entry per (address, kind) with source
`trap:<kind>` and code 127.0.0.2 (bounce), 127.0.0.3 (autoreply, challenge-response counts here),
127.0.0.4 (callout); TXT `Backscatter (<kind>) to a trap on <date> - <lookup URL>`; expiry = last hit
+ 28 days, every new hit extends it; an IPv6 relay is listed as its /128 (configurable).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

from .addresses import Target

LOOPBACK = 0x7F000000
DAY = 86400


class Hit(NamedTuple):
    """One piece of backscatter that reached a trap."""

    at: float
    family: int
    ip: int
    kind: str  # bounce, autoreply, challenge, callout
    message_id: str
    trap: str = ""
    source: str = ""  # where it was read: maildir:PATH, mbox:PATH, jsonl:PATH, smtp


@dataclass(frozen=True)
class Policy:
    codes: dict[str, int] = field(
        default_factory=lambda: {"bounce": 2, "autoreply": 3, "challenge": 3, "callout": 4}
    )
    listing_days: float = 28
    lookup_url: str = "https://bl.example.org/lookup?ip=$"
    v6_prefix: int = 128

    def source(self, kind: str) -> str:
        return f"trap:{'autoreply' if kind == 'challenge' else kind}"

    def target(self, hit: Hit) -> Target:
        if hit.family == 4 or self.v6_prefix >= 128:
            return Target(hit.family, hit.ip, hit.ip)
        host = (1 << (128 - self.v6_prefix)) - 1
        return Target(6, hit.ip & ~host, hit.ip | host)

    def code(self, kind: str) -> int:
        return LOOPBACK | self.codes[kind]

    def reason(self, hit: Hit) -> str:
        day = time.strftime("%Y-%m-%d", time.gmtime(hit.at))
        return f"Backscatter ({hit.kind}) to a trap on {day} - {self.lookup_url}"

    def expires(self, hit: Hit) -> float:
        return hit.at + self.listing_days * DAY
