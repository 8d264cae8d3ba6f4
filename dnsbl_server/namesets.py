"""rbldnsd data files of the name datasets, read: dnset, generic and combined (`man rbldnsd`).

Owns their line syntaxes; the `$`-specials, `:A:TXT` values and substitution variables are
`zonefile`'s. Pure except through `zonefile.read_lines`. Rules:
- A bad line is reported as `FILE:LINE: problem` and skipped (as rbldnsd does).
- dnset: `name`, `*.name`, `.name` (both), `!` before any of them; `:A:TXT` defaults and per-entry values
  as in ip4set. generic: `name [ttl] TYPE value`, TYPE A, TXT (one optionally quoted string, cut at 254
  bytes) or MX (`pref host`); `@` is the apex; NS and other types are refused, as rbldnsd does.
- combined: a common section ($SOA, $NS, $TTL, $n) then `$DATASET type[:name] subzone... [@]` sections,
  each read as a dataset of its own type (not combined) that starts with the common section's
  variables. $SOA and $NS count for the base zone wherever they are written.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .nameindex import GenericRecord, Labels, NameSet, RecordSet, Value
from .zonefile import (
    DEFAULT_CODE,
    IP_TYPES,
    SPECIAL,
    LineError,
    Parsed,
    Reader,
    Scope,
    Specials,
    _time,
    parse_a,
    read_lines,
    special,
    split_value,
)

NAME_TYPES = ("dnset", "generic")
A, MX, TXT = 1, 15, 16
TXT_LIMIT = 254


def parse_name(text: str) -> Labels:
    """A domain name relative to the zone, lowercase; `@` is the zone itself."""
    if text == "@":
        return ()
    labels = tuple(text.rstrip(".").lower().split("."))
    if not text.rstrip(".") or any(not label or len(label) > 63 for label in labels):
        raise LineError(f"invalid domain name {text!r}")
    if len(text) > 253:
        raise LineError(f"domain name too long: {text[:40]!r}...")
    return labels


@dataclass
class NamesParsed:
    """What a name dataset's files give: a NameSet or RecordSet, problems and specials."""

    kind: str
    entries: list[tuple[Labels, bool, Value | None]] = field(default_factory=list)
    records: dict[Labels, list[GenericRecord]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    specials: Specials = field(default_factory=Specials)

    def data(self) -> NameSet | RecordSet:
        if self.kind == "dnset":
            return NameSet.build(self.entries)
        return RecordSet({k: tuple(v) for k, v in self.records.items()})

    @property
    def count(self) -> int:
        return len(self.entries) + sum(len(v) for v in self.records.values())


class NameReader:
    """Reads a dnset or generic dataset line by line; the scope (defaults, variables) runs on."""

    def __init__(self, kind: str, variables: dict[str, str] | None = None) -> None:
        self.parsed = NamesParsed(kind)
        self.scope = Scope(variables=dict(variables or {}))

    def read(self, lines: Iterable[str], path: str, first: int = 1) -> NamesParsed:
        self.scope.set_default(DEFAULT_CODE, None)
        for number, raw in enumerate(lines, first):
            try:
                self.line(raw.strip(), number)
            except LineError as error:
                self.parsed.problems.append(f"{path}:{number}: {error}")
        return self.parsed

    def line(self, text: str, number: int) -> None:
        match = SPECIAL.match(text)
        if match:
            special(match.group(1), match.group(2).strip(), self.scope, self.parsed.specials)
            self.scope.changed()
        elif not text or text[0] in "#;":
            return
        elif self.parsed.kind == "generic":
            self.generic(text)
        elif text.startswith(":"):
            code, txt, given = split_value(text)
            self.scope.set_default(code if code is not None else DEFAULT_CODE, txt if given else None)
        else:
            self.dnset(text)

    def dnset(self, text: str) -> None:
        excluded = text.startswith("!")
        body = text[1:].lstrip() if excluded else text
        key, rest = (*body.split(None, 1), "")[:2]
        rest = rest.strip()
        wild = key.startswith(("*.", "."))
        labels = parse_name(key[2:] if key.startswith("*.") else key.lstrip(".") if wild else key)
        if not labels:
            raise LineError("invalid domain name '@'")
        value = None if excluded else self.value(rest)
        self.parsed.entries.append((labels, wild, value))
        if key.startswith(".") and not key.startswith(".."):  # `.name`: the name itself too
            self.parsed.entries.append((labels, False, value))

    def value(self, rest: str) -> Value:
        if not rest or rest[0] in "#;":
            return Value(self.scope.code, self.scope.template(None, False))
        code, txt, given = split_value(rest)
        return Value(self.scope.code if code is None else code, self.scope.template(txt, given))

    def generic(self, text: str) -> None:
        parts = text.split(None, 2)
        if len(parts) < 3:
            raise LineError("invalid/unrecognized entry")
        labels, ttl = parse_name(parts[0]), None
        if parts[1][0].isdigit():
            ttl = _time(parts[1])
            parts = [parts[0], *parts[2].split(None, 1)]
            if len(parts) < 3:
                raise LineError("invalid/unrecognized entry")
        record = generic_record(parts[1].lower(), parts[2].strip(), ttl)
        self.parsed.records.setdefault(labels, []).append(record)


def generic_record(rtype: str, value: str, ttl: int | None) -> GenericRecord:
    if rtype == "a":
        if value.count(".") != 3:
            raise LineError(f"invalid A value {value!r}")
        code = parse_a(value)
        return GenericRecord(A, ttl, ".".join(str(code >> s & 0xFF) for s in (24, 16, 8, 0)))
    if rtype == "txt":
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        return GenericRecord(TXT, ttl, value.encode()[:TXT_LIMIT].decode(errors="ignore"))
    if rtype == "mx":
        pref, _, host = value.partition(" ")
        host = host.strip()
        if not pref.isdigit() or int(pref) > 65535 or not host or len(host.split()) != 1:
            raise LineError(f"invalid MX value {value!r}: use PREFERENCE HOST")
        return GenericRecord(MX, ttl, (int(pref), ".".join(parse_name(host))))
    raise LineError(f"unrecognized record type {rtype.upper()!r} (A, TXT and MX are served)")


def read_names(kind: str, paths: Iterable[str | Path]) -> NamesParsed:
    reader = NameReader(kind)
    for path in paths:
        reader.read(read_lines(path), str(path))
    return reader.parsed


# --- combined ---------------------------------------------------------------------------------


@dataclass
class Section:
    kind: str
    subzones: tuple[Labels, ...]
    parsed: Parsed | NamesParsed


@dataclass
class CombinedParsed:
    sections: list[Section] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    specials: Specials = field(default_factory=Specials)


class CombinedReader:
    """The common section, then one nested reader per `$DATASET` section."""

    def __init__(self, loose: bool = False) -> None:
        self.parsed = CombinedParsed()
        self.scope = Scope()
        self.loose = loose

    def read(self, lines: Iterable[str], path: str) -> None:
        header: tuple[int, str] | None = None
        body: list[str] = []
        for number, raw in enumerate(lines, 1):
            text = raw.strip()
            if text.startswith("$DATASET") and text[8:9] in ("", " ", "\t"):
                self.section(header, body, path)
                header, body = (number, text[8:]), []
            elif header is not None:
                body.append(raw)
            else:
                self.common(text, number, path)
        self.section(header, body, path)

    def common(self, text: str, number: int, path: str) -> None:
        match = SPECIAL.match(text)
        try:
            if match:
                special(match.group(1), match.group(2).strip(), self.scope, self.parsed.specials)
            elif text and text[0] not in "#;":
                raise LineError("invalid/unrecognized entry - specify $DATASET line")
        except LineError as error:
            self.parsed.problems.append(f"{path}:{number}: {error}")

    def section(self, header: tuple[int, str] | None, body: list[str], path: str) -> None:
        if header is None:
            return
        number, text = header
        words = text.split("#")[0].split()
        kind = words[0].partition(":")[0] if words else ""
        if kind not in (*IP_TYPES, *NAME_TYPES):
            self.parsed.problems.append(f"{path}:{number}: unknown or unusable dataset type {kind!r}")
            return
        subzones = []
        for word in words[1:]:
            try:
                subzones.append(parse_name(word))
            except LineError as error:
                self.parsed.problems.append(f"{path}:{number}: {error}")
        nested = self.nested(kind, [""] * number + body, path)  # padding keeps the line numbers
        self.parsed.problems += nested.problems
        own = self.parsed.specials
        own.soa, own.ns = own.soa or nested.specials.soa, own.ns or nested.specials.ns
        self.parsed.sections.append(Section(kind, tuple(subzones), nested))

    def nested(self, kind: str, lines: list[str], path: str) -> Parsed | NamesParsed:
        if kind in NAME_TYPES:
            return NameReader(kind, self.scope.variables).read(lines, path)
        reader = Reader(kind, loose=self.loose)
        reader.scope.variables = dict(self.scope.variables)
        return reader.read(lines, path)


def read_combined(paths: Iterable[str | Path], *, loose: bool = False) -> CombinedParsed:
    reader = CombinedReader(loose)
    for path in paths:
        reader.read(read_lines(path), str(path))
    return reader.parsed
