"""What a lookup answers, per address and zone, exactly as `dnsbl check --json` lays it out (the API
returns this), and the extra facts the page shows: what each code means, when the listing expires, the
first and last trap hit and the hits by kind.

The DNS decision is `checks.check_zone`'s (the resolver asked as the DNS would be), so the page, the
API and `dnsbl check` cannot disagree; only the evidence is replaced by the publishable one
(requests_store.evidence: no trap addresses, no spool paths).
"""

from __future__ import annotations

from typing import Any

from ..addresses import format_address, format_time
from ..checks import check_zone
from ..delisting import Query
from ..policy import Policy
from ..requests_store import evidence, hit_summary
from ..store import Store

KIND_WORDS = {
    "bounce": "bounces (non-delivery reports)",
    "autoreply": "auto-replies (vacation, out-of-office)",
    "challenge": "challenge-response messages",
    "callout": "sender-verification callouts",
}


def code_meanings(policy: Policy | None = None) -> dict[str, str]:
    """127.0.0.N -> what it says, from the trap policy's codes."""
    kinds: dict[str, list[str]] = {}
    for kind, n in (policy or Policy()).codes.items():
        kinds.setdefault(f"127.0.0.{n}", []).append(KIND_WORDS.get(kind, kind))
    return {code: "backscatter: " + ", ".join(words) for code, words in kinds.items()}


def check_one(
    store: Store, zones: list[str], text: str, family: int, address: int, now: float
) -> dict[str, Any]:
    """One object of `dnsbl check --json`'s list."""
    ip = format_address(family, address)
    per_zone = []
    for zone in zones:
        result = check_zone(store, zone, family, address, now)
        result["evidence"] = [dict(h, at=format_time(h["at"])) for h in evidence(store, zone, ip)]
        per_zone.append(result)
    return {"address": ip, "query": text, "listed": any(z["listed"] for z in per_zone), "zones": per_zone}


def check_query(
    store: Store, zones: list[str], query: Query, addresses: list[tuple[int, int]], now: float
) -> list[dict[str, Any]]:
    """The API's answer: one object per address (a domain has several)."""
    return [check_one(store, zones, query.text, family, value, now) for family, value in addresses]


def page_facts(store: Store, result: dict[str, Any], meanings: dict[str, str]) -> dict[str, Any]:
    """One address's check result with what the page adds per zone."""
    zones = []
    for z in result["zones"]:
        summary = hit_summary(store, z["zone"], result["address"])
        answering = [e for e in z["entries"] if e["answers"]]
        expiries = [e["expires"] for e in answering]
        zones.append(
            dict(
                z,
                meanings=[(c, meanings.get(c, "listed by the operator")) for c in z["codes"]],
                expires=None if not expiries or None in expiries else max(expiries),
                first_hit=format_time(summary.first) or None,
                last_hit=format_time(summary.last) or None,
                hits_by_kind=sorted(summary.by_kind.items()),
                entries=[e for e in z["entries"] if not e["excluded"]],
            )
        )
    return dict(result, zones=zones)
