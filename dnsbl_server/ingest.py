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
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from .allowlist import Allowlist
from .errors import DnsblError
from .policy import Hit, Policy
from .received import NoRelay, relay
from .store import Store
from .traps import parse_message, verdict

Networks = Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
log = logging.getLogger("dnsbl.ingest")
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

    def skip(self, reason: str) -> None:
        """Count a skipped message under the head of its reason (`no usable relay: ...`)."""
        self.skipped[reason.split(" (")[0].split(":")[0]] += 1

    def line(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items())) or "none"
        outcomes = ", ".join(f"{k} {n}" for k, n in sorted(self.outcomes.items())) or "nothing listed"
        skipped = sum(self.skipped.values())
        return f"{self.read} message(s) read; backscatter: {kinds}; {outcomes}; {skipped} skipped"


def hit_of(data: bytes, *, at: float, source: str, trusted: Networks, trap_mx: Sequence[str]) -> Hit | str:
    """The hit a trap message is, or why it is none."""
    message = parse_message(data)
    decided = verdict(message)
    if decided.kind is None:
        return f"not backscatter ({decided.reason})"
    found = relay(message, trusted=trusted, trap_mx=trap_mx)
    if isinstance(found, NoRelay):
        return f"no usable relay: {found.reason}"
    ip = found.ip
    message_id = printable(message.get("Message-ID")) or "sha256:" + hashlib.sha256(data).hexdigest()
    trap = printable(message.get("Delivered-To") or message.get("X-Original-To") or message.get("To"))
    return Hit(at, ip.version, int(ip), str(decided.kind), message_id, trap, source)


def printable(value: object) -> str:
    """A header value fit to store and print: one line, no control characters (a NUL or an escape
    sequence from a sender must not reach an operator's terminal through `dnsbl check`)."""
    text = " ".join(str(value or "").split())
    return "".join(c if c.isprintable() else "\ufffd" for c in text)[:500]


def classified(
    data: bytes, where: str, *, at: float, source: str, trusted: Networks, trap_mx: Sequence[str]
) -> Hit | str:
    """`hit_of`, except that a bug in the classifier skips this one message instead of blocking the
    whole source (every later run would stop at the same message)."""
    try:
        found = hit_of(data, at=at, source=source, trusted=trusted, trap_mx=trap_mx)
    except Exception as error:
        log.exception("%s: classifier failed", where)
        return f"classifier error: {type(error).__name__}"
    if isinstance(found, str):
        log.info("%s: skipped: %s", where, found)
    return found


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
    trusted: Networks = (),
    trap_mx: Sequence[str] = (),
    now: float,
) -> Summary:
    summary = Summary()
    allowlist = Allowlist.of(store.allowlist(zone))
    if not directory.is_dir():
        raise IngestError(f"{directory}: not a Maildir (no such directory)")
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


def _read(path: Path, summary: Summary, trusted: Networks, trap_mx: Sequence[str]) -> Hit | None:
    summary.read += 1
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_MESSAGE)
        at = path.stat().st_mtime  # when the trap MX delivered it
    except OSError as error:
        summary.skipped[f"unreadable: {error.strerror}"] += 1
        return None
    found = classified(
        data, str(path), at=at, source=f"maildir:{path.parent.parent}", trusted=trusted, trap_mx=trap_mx
    )
    if isinstance(found, str):
        summary.skip(found)
        return None
    summary.kinds[found.kind] += 1
    return found


def _done(path: Path, directory: Path) -> None:
    """new/ -> cur/ with the Maildir "seen" flag."""
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, directory / "cur" / (path.name.split(":")[0] + ":2,S"))


# --- append-only sources: JSON-lines feeds and mbox files ---------------------------------------

KINDS = ("bounce", "autoreply", "challenge", "callout")


def start_offset(store: Store, path: Path) -> tuple[int, int]:
    """(inode, offset) to read from: where the last run stopped, or 0 after rotation or truncation."""
    info = path.stat()
    seen = store.read_position(str(path))
    if seen is None or seen[0] != info.st_ino or seen[1] > info.st_size:
        return info.st_ino, 0
    return seen


def jsonl_hit(line: bytes, where: str) -> Hit:
    """One feed line: {"ts", "ip", "kind", "trap", "helo", "mail_from"}; ip and kind required."""
    import json
    from datetime import datetime

    try:
        record = json.loads(line)
    except ValueError as error:
        raise IngestError(f"{where}: not JSON: {error}") from None
    if not isinstance(record, dict) or "ip" not in record or "kind" not in record:
        raise IngestError(f'{where}: needs at least "ip" and "kind"')
    if record["kind"] not in KINDS:
        raise IngestError(f"{where}: unknown kind {record['kind']!r} (known: {', '.join(KINDS)})")
    try:
        ip = ipaddress.ip_address(str(record["ip"]))
        ts = record.get("ts")
        at = (
            float(ts)
            if isinstance(ts, int | float)
            else datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp()
        )
    except (ValueError, TypeError):
        raise IngestError(f'{where}: bad "ip" or "ts"') from None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    message_id = "sha256:" + hashlib.sha256(line.strip()).hexdigest()  # the same line twice is one hit
    return Hit(
        at,
        ip.version,
        int(ip),
        record["kind"],
        message_id,
        str(record.get("trap") or "")[:500],
        f"jsonl:{where.rsplit(':', 1)[0]}",
    )


def ingest_jsonl(store: Store, zone: str, path: Path, policy: Policy, *, now: float) -> Summary:
    """A feed file, or every file of a directory, from where the last run stopped."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    summary = Summary()
    allowlist = Allowlist.of(store.allowlist(zone))
    for file in files:
        inode, offset = start_offset(store, file)
        hits, end = _jsonl_lines(file, offset, summary)
        summary.outcomes.update(
            store.record_hits(zone, hits, policy, allowlist, now, (str(file), inode, end))
        )
    return summary


def _jsonl_lines(file: Path, offset: int, summary: Summary) -> tuple[list[Hit], int]:
    hits: list[Hit] = []
    with open(file, "rb") as handle:
        handle.seek(offset)
        number = 0
        for line in handle:
            if not line.endswith(b"\n"):
                break  # a line still being written: the next run reads it whole
            offset += len(line)
            number += 1
            if not line.strip():
                continue
            summary.read += 1
            try:
                hit = jsonl_hit(line, f"{file}:+{number}")
            except IngestError as error:
                summary.skipped[str(error)] += 1
                continue
            summary.kinds[hit.kind] += 1
            hits.append(hit)
    return hits, offset


def ingest_mbox(
    store: Store,
    zone: str,
    path: Path,
    policy: Policy,
    *,
    trusted: Networks = (),
    trap_mx: Sequence[str] = (),
    now: float,
) -> Summary:
    """The messages appended to an mbox since the last run (mboxo/mboxrd `From ` separators)."""
    summary = Summary()
    allowlist = Allowlist.of(store.allowlist(zone))
    inode, offset = start_offset(store, path)
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read()
    messages, consumed = _mbox_messages(data)
    hits = []
    for number, message in enumerate(messages, 1):
        summary.read += 1
        found = classified(
            message[:MAX_MESSAGE],
            f"{path}: message {number} from byte {offset}",
            at=now,
            source=f"mbox:{path}",
            trusted=trusted,
            trap_mx=trap_mx,
        )
        if isinstance(found, str):
            summary.skip(found)
            continue
        summary.kinds[found.kind] += 1
        hits.append(found)
    summary.outcomes.update(
        store.record_hits(zone, hits, policy, allowlist, now, (str(path), inode, offset + consumed))
    )
    return summary


def _mbox_messages(data: bytes) -> tuple[list[bytes], int]:
    """Whole messages and the bytes they take; a message still being appended (no blank line before
    the end of data) waits for the next run."""
    starts = [0] if data.startswith(b"From ") else []
    starts += [i + 1 for i in _find_all(data, b"\nFrom ")]
    if not starts:
        return [], 0
    complete = data.endswith(b"\n\n")
    ends = starts[1:] + ([len(data)] if complete else [])
    messages = [
        _unescape(data[s:e].split(b"\n", 1)[1] if b"\n" in data[s:e] else b"")
        for s, e in zip(starts, ends, strict=False)
    ]
    return messages, (ends[-1] if ends else 0)


def _find_all(data: bytes, needle: bytes) -> Iterator[int]:
    position = data.find(needle)
    while position != -1:
        yield position
        position = data.find(needle, position + 1)


def _unescape(body: bytes) -> bytes:
    return body.replace(b"\n>From ", b"\nFrom ")


# --- every configured file source, one run ----------------------------------------------------


@dataclass(frozen=True)
class FileSources:
    maildirs: Sequence[str] = ()
    mboxes: Sequence[str] = ()
    jsonl: Sequence[str] = ()
    trusted: Networks = ()
    trap_mx: Sequence[str] = ()


def run_sources(
    store: Store, zone: str, sources: FileSources, policy: Policy, *, now: float
) -> Iterator[tuple[str, Summary | IngestError]]:
    """Each source's summary, or the error that stopped it: one unreadable or locked source does not
    stop the others."""
    mail = {"trusted": sources.trusted, "trap_mx": sources.trap_mx}
    runs: list[tuple[str, Callable[[], Summary]]] = [
        (d, partial(ingest_maildir, store, zone, Path(d), policy, now=now, **mail)) for d in sources.maildirs
    ]
    runs += [(m, partial(ingest_mbox, store, zone, Path(m), policy, now=now, **mail)) for m in sources.mboxes]
    runs += [(f, partial(ingest_jsonl, store, zone, Path(f), policy, now=now)) for f in sources.jsonl]
    for where, run in runs:
        try:
            yield where, run()
        except IngestError as error:
            yield where, error
        except OSError as error:
            yield where, IngestError(f"{where}: cannot read: {error.strerror}")
