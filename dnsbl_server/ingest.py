"""Trap mail in, listings out: runs sources through the classifier into the store. Time and paths
are parameters; the scheduler (later) only calls `ingest_maildir`.

Rules (README, "Trap ingester"):
- A Maildir message is moved from `new/` to `cur/` only after its batch's result is committed, so
  nothing is read twice or lost; a crash in between re-reads it, and the store counts the same
  (message, relay, kind) once.
- A message that is not backscatter, or has no usable relay, is skipped with its reason, and moved too.
- A lock file keeps two ingesters off one Maildir.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .allowlist import Allowlist
from .errors import DnsblError
from .policy import Hit, Policy
from .store import Store
from .traps import NoRelay, parse_message, relay, verdict

BATCH = 500
MAX_MESSAGE = 10 * 1024 * 1024  # bytes read of one message: a trap gets no legitimate giants


class IngestError(DnsblError):
    """A trap source cannot be read or is locked by another ingester."""


@dataclass
class Summary:
    read: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)  # listed, extended, duplicate, allowlisted
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> count

    def line(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items())) or "none"
        outcomes = ", ".join(f"{k} {n}" for k, n in sorted(self.outcomes.items())) or "nothing listed"
        skipped = sum(self.skipped.values())
        return f"{self.read} message(s) read; backscatter: {kinds}; {outcomes}; {skipped} skipped"


def hit_of(
    data: bytes, *, at: float, source: str, trusted: Sequence[ipaddress._BaseNetwork], trap_mx: Sequence[str]
) -> Hit | str:
    """The hit a trap message is, or why it is none."""
    message = parse_message(data)
    decided = verdict(message)
    if decided.kind is None:
        return f"not backscatter ({decided.reason})"
    found = relay(message, trusted=trusted, trap_mx=trap_mx)  # type: ignore[arg-type]
    if isinstance(found, NoRelay):
        return f"no usable relay: {found.reason}"
    ip = found.ip
    message_id = str(message.get("Message-ID") or "").strip() or "sha256:" + hashlib.sha256(data).hexdigest()
    trap = str(message.get("Delivered-To") or message.get("X-Original-To") or message.get("To") or "")
    return Hit(at, ip.version, int(ip), str(decided.kind), message_id[:500], trap[:500], source)


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    try:
        handle = open(directory / ".dnsbl-ingest.lock", "w")  # noqa: SIM115 (held for the block)
    except OSError as error:
        raise IngestError(f"{directory}: cannot lock: {error.strerror}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise IngestError(f"{directory}: another ingester is working on it") from None
        yield


def new_messages(directory: Path) -> list[Path]:
    new = directory / "new"
    if not new.is_dir():
        raise IngestError(f"{directory}: not a Maildir (no new/ folder)")
    return sorted(p for p in new.iterdir() if p.is_file() and not p.name.startswith("."))


def ingest_maildir(
    store: Store,
    zone: str,
    directory: Path,
    policy: Policy,
    *,
    trusted=(),  # type: ignore[no-untyped-def]
    trap_mx: Sequence[str] = (),
    now: float,
) -> Summary:
    summary = Summary()
    allowlist = Allowlist.of(store.allowlist(zone))
    with locked(directory):
        paths = new_messages(directory)
        (directory / "cur").mkdir(exist_ok=True)
        for start in range(0, len(paths), BATCH):
            batch = paths[start : start + BATCH]
            hits = [h for h in (_read(p, summary, trusted, trap_mx) for p in batch) if h is not None]
            summary.outcomes.update(store.record_hits(zone, hits, policy, allowlist, now))
            for path in batch:  # only now that the batch is committed
                _done(path, directory)
    return summary


def _read(path: Path, summary: Summary, trusted, trap_mx) -> Hit | None:  # type: ignore[no-untyped-def]
    summary.read += 1
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_MESSAGE)
        at = path.stat().st_mtime  # when the trap MX delivered it
    except OSError as error:
        summary.skipped[f"unreadable: {error.strerror}"] += 1
        return None
    found = hit_of(data, at=at, source=f"maildir:{path.parent.parent}", trusted=trusted, trap_mx=trap_mx)
    if isinstance(found, str):
        summary.skipped[found.split(" (")[0].split(":")[0]] += 1
        return None
    summary.kinds[found.kind] += 1
    return found


def _done(path: Path, directory: Path) -> None:
    """new/ -> cur/ with the Maildir "seen" flag."""
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, directory / "cur" / (path.name.split(":")[0] + ":2,S"))
