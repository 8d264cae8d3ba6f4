"""Files in, rows for the store out: rbldnsd data files, plain address lists, and CSV.

Owns what `dnsbl import` means (README, "Import"): an rbldnsd file imported here answers as rbldnsd
answers it (its entries are cut into blocks that keep rbldnsd's matching rule, `zonefile.rbldnsd_blocks`);
the same target listed twice with different values keeps both, the second under the source `NAME:2`
(both answer, as in rbldnsd). Problems are collected as `FILE:LINE: problem`; the caller decides whether
they stop the import. Pure, except reading the lines it is given.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from .addresses import Target, parse_code, parse_date, parse_target
from .errors import DnsblError, TargetError
from .zonefile import IP_TYPES, Reader, rbldnsd_blocks

TYPES = (*IP_TYPES, "plain", "csv")
CSV_COLUMNS = ("target", "code", "reason", "source", "expires")
DEFAULT_CODE = 0x7F000002


class Row(NamedTuple):
    target: Target
    source: str
    code: int
    reason: str
    expires: float | None


@dataclass
class Batch:
    """Rows as they are read (an iterator: a million-line file is never held whole), and the
    problems found so far; the list is complete once `rows` is exhausted."""

    rows: Iterator[Row] = field(default_factory=lambda: iter(()))
    problems: list[str] = field(default_factory=list)


def type_for(path: str, given: str | None) -> str:
    """The --type given, else the file's extension (`.gz` aside), else ip4set."""
    if given:
        if given not in TYPES:
            raise DnsblError(f"unknown import type {given!r} (known: {', '.join(TYPES)})")
        return given
    name = path.lower().removesuffix(".gz")
    extension = name.rsplit(".", 1)[-1] if "." in name else ""
    aliases = {"txt": "plain", "list": "plain"}
    return aliases.get(extension, extension if extension in TYPES else "ip4set")


class Dedup:
    """One entry per (target, source, value); a second value for a target gets source `NAME:n`."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, int, int, bool], tuple[tuple[int, str], ...]] = {}

    def source_for(self, target: Target, source: str, code: int, reason: str) -> str | None:
        key = (target.family, target.lo, target.hi, target.excluded)
        values = self.seen.get(key, ())
        if (code, reason) in values:
            return None  # an exact repeat
        self.seen[key] = (*values, (code, reason))
        return source if not values else f"{source}:{len(values) + 1}"


def rbldnsd_rows(
    kind: str, lines: Iterable[str], path: str, source: str, expires: float | None, *, loose: bool = False
) -> Batch:
    reader = Reader(kind, loose=loose)
    return Batch(_rbldnsd(reader, kind, lines, path, source, expires), reader.parsed.problems)


def _rbldnsd(
    reader: Reader, kind: str, lines: Iterable[str], path: str, source: str, expires: float | None
) -> Iterator[Row]:
    dedup = Dedup()
    for item in reader.iter(lines, path):
        reason = item.txt or ""
        blocks = (item.target,) if item.target.lo == item.target.hi else rbldnsd_blocks(item, kind)
        for block in blocks:
            src = dedup.source_for(block, source, item.code, reason)
            if src is not None:
                yield Row(block, src, item.code, reason, expires)


def plain_rows(
    lines: Iterable[str],
    path: str,
    source: str,
    code: int,
    reason: str,
    expires: float | None,
    *,
    loose: bool = False,
) -> Batch:
    """One address, CIDR or range a line (either family); `#` and `;` start comments."""
    problems: list[str] = []
    return Batch(_plain(lines, path, source, code, reason, expires, loose, problems), problems)


def _plain(
    lines: Iterable[str],
    path: str,
    source: str,
    code: int,
    reason: str,
    expires: float | None,
    loose: bool,
    problems: list[str],
) -> Iterator[Row]:
    dedup = Dedup()
    for number, raw in enumerate(lines, 1):
        text = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not text:
            continue
        try:
            target = parse_target(text.split()[0], loose=loose)
        except TargetError as error:
            problems.append(f"{path}:{number}: {error}")
            continue
        if dedup.source_for(target, source, code, reason) is not None:
            yield Row(target, source, code, reason, expires)


def csv_rows(lines: Iterable[str], path: str, source: str | None, *, loose: bool = False) -> Batch:
    """The header `target,code,reason,source,expires` (what `export --format csv` writes)."""
    problems: list[str] = []
    return Batch(_csv(lines, path, source, loose, problems), problems)


def _csv(
    lines: Iterable[str], path: str, source: str | None, loose: bool, problems: list[str]
) -> Iterator[Row]:
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None or tuple(h.strip().lower() for h in header) != CSV_COLUMNS:
        problems.append(f"{path}:1: the header must be {','.join(CSV_COLUMNS)}")
        return
    for number, fields in enumerate(reader, 2):
        if not fields or not "".join(fields).strip():
            continue
        try:
            yield _csv_row(fields, source, loose)
        except (TargetError, ValueError) as error:
            problems.append(f"{path}:{number}: {error}")


def _csv_row(fields: list[str], source: str | None, loose: bool) -> Row:
    if len(fields) != len(CSV_COLUMNS):
        raise ValueError(f"expected {len(CSV_COLUMNS)} columns, got {len(fields)}")
    target_text, code_text, reason, row_source, expires_text = (f.strip() for f in fields)
    target = parse_target(target_text, loose=loose)
    code = parse_code(code_text) if code_text and not target.excluded else DEFAULT_CODE
    expires = parse_date(expires_text) if expires_text else None
    src = source or row_source or "import"
    return Row(target, src, code, fields[2], expires)
