"""What the DNS answers for one address in one zone of the SQLite list, and the entries behind it: one
layout for `dnsbl check --json`, the web page and its JSON API (README, "JSON layouts").

The decision is the resolver's, asked exactly as the DNS would be, over the entries covering the address.
"""

from __future__ import annotations

from typing import Any

from .addresses import format_address, format_time
from .index import ZoneIndex, decide
from .resolver import TXT, A, Question, resolve
from .store import Store
from .zone import Zone, Zones


def query_name(family: int, address: int, zone: str) -> str:
    if family == 4:
        return ".".join(reversed(format_address(4, address).split("."))) + "." + zone
    return ".".join(reversed(f"{address:032x}")) + "." + zone


def check_zone(store: Store, zone: str, family: int, address: int, now: float) -> dict[str, Any]:
    """What the DNS answers for one address in one zone, and the entries behind it."""
    candidates = store.candidates(zone, family, address)
    view = Zones.of([Zone(zone, ZoneIndex.build(candidates))])
    name = query_name(family, address, zone)
    codes = [str(r.data) for r in resolve(Question(name, A), view, now).answer]
    texts = [str(r.data) for r in resolve(Question(name, TXT), view, now).answer]
    answering = {e.key for e in decide(candidates, now)}
    live = [e.key for e in candidates if e.live(now)]
    entries = [dict(d, answers=(d["target"], d["source"]) in answering) for d in store.details(zone, live)]
    return {
        "zone": zone,
        "listed": bool(codes),
        "codes": codes,
        "txt": texts,
        "entries": [entry_json(e) for e in entries],
        # trap hits from this address, newest first; never the trap addresses (that would burn them)
        "evidence": [
            dict(h, at=format_time(h["at"])) for h in store.hits(zone, format_address(family, address))
        ],
    }


def entry_json(e: dict[str, Any]) -> dict[str, Any]:
    return {
        "target": e["target"],
        "source": e["source"],
        "code": None if e["excluded"] else format_address(4, e["code"]),
        "reason": e["reason"],
        "excluded": bool(e["excluded"]),
        "answers": e["answers"],
        "created": format_time(e["created"]),
        "updated": format_time(e["updated"]),
        "expires": format_time(e["expires"]) or None,
    }
