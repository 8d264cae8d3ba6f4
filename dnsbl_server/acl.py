"""rbldnsd's `acl` dataset: which answer a client (the querying resolver, not the queried address) gets.

Owns the acl file syntax, the lookup by client address, and how a global and a zone acl combine
(`man rbldnsd`, "acl Dataset"; every rule below was tried against rbldnsd 1.0pre 20210120). Pure: the
resolver asks `decide`, the server turns a socket peer into an address with `client_address`.

Rules:
- An entry is `ADDRESS[/BITS] [VALUE]`, an IPv4 or IPv6 CIDR written as in ip4trie / ip6trie (`10.1`,
  `2001:db8:1` are prefixes); no ranges, no `!` exclusions, no `::ffff:a.b.c.d`; host bits set are an
  error unless loose (`-e`); $MAXRANGE4 applies; a second entry for the same CIDR is a problem, the first
  stays. The longest prefix containing the client decides; a client no entry covers passes.
- VALUE: `:ignore` (or `:blackhole`: no reply at all), `:refuse` (REFUSED), `:empty` (the zone has no
  data: SOA, NS and generic records only), `:pass` (as usual), written `:word` or `=word`, any case, any
  prefix of the word (`:ign`); anything else is an A:TXT value as in ip4set (`:3:text`, `:3`, `text`):
  the client is answered "listed" with it for every name the zone could list, and `$` in the TXT is the
  CLIENT's address. `ignore` alone, without `:`, is the TXT "ignore".
- An entry without a value takes the default, `ignore` at the start of each file; a line `:word`,
  `=word` or `:A:TXT` changes it for the rest of the file (`:A:TXT` also sets the default TXT, as in
  ip4set). `$1`..`$9`, `$=`, $TTL (the TTL of the "listed" answers), $TIMESTAMP and $MAXRANGE4 are read
  as in the other datasets; $SOA and $NS are problems.
- A global acl (spec `:acl:FILE`) and the zone's acl are both asked; the stronger rule wins: ignore,
  then refuse, then empty, then listed (the global acl's value first), then pass.
"""

from __future__ import annotations

import enum
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from .addresses import Target, format_target
from .zonefile import (
    DEFAULT_CODE,
    SPECIAL,
    LineError,
    Scope,
    Specials,
    parse_key,
    read_lines,
    special,
    split_value,
)


class Action(enum.Enum):
    IGNORE = "ignore"
    REFUSE = "refuse"
    EMPTY = "empty"
    PASS = "pass"


class Listed(NamedTuple):
    """ "Always listed": every name the zone could list answers with this A and TXT."""

    code: int
    txt: str | None  # template: `$` is the client's address, `$$` a dollar; None: no TXT
    ttl: int | None = None  # the acl's $TTL; None: the zone's


Rule = Action | Listed
Client = tuple[int, int]  # (family, address)

# a word is a keyword if it is the start of one (rbldnsd compares up to the word's end)
KEYWORDS = (
    ("ignore", Action.IGNORE),
    ("blackhole", Action.IGNORE),
    ("refuse", Action.REFUSE),
    ("empty", Action.EMPTY),
    ("pass", Action.PASS),
)
STRONGEST_FIRST = (Action.IGNORE, Action.REFUSE, Action.EMPTY)


# --- lookup -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acl:
    """Per family, (shift, {address >> shift: rule}) tables, the longest prefix (smallest shift) first."""

    tables: dict[int, tuple[tuple[int, dict[int, Rule]], ...]]

    @classmethod
    def build(cls, entries: Iterable[tuple[Target, Rule]]) -> Acl:
        by_shift: dict[int, dict[int, dict[int, Rule]]] = {4: {}, 6: {}}
        for target, rule in entries:
            shift = (target.hi - target.lo + 1).bit_length() - 1
            by_shift[target.family].setdefault(shift, {})[target.lo >> shift] = rule
        return cls({f: tuple(sorted(t.items())) for f, t in by_shift.items()})

    def rule(self, family: int, address: int) -> Rule | None:
        for shift, table in self.tables[family]:
            found = table.get(address >> shift)
            if found is not None:
                return found
        return None


def decide(global_acl: Acl | None, zone_acl: Acl | None, client: Client | None) -> Rule:
    """What the client gets in a zone, from the global acl and the zone's own (either may be None)."""
    if client is None or (global_acl is None and zone_acl is None):
        return Action.PASS
    rules = [acl.rule(*client) for acl in (global_acl, zone_acl) if acl is not None]
    for action in STRONGEST_FIRST:
        if action in rules:
            return action
    return next((r for r in rules if isinstance(r, Listed)), Action.PASS)


def ignores(acl: Acl | None, client: Client | None) -> bool:
    return acl is not None and client is not None and acl.rule(*client) is Action.IGNORE


def client_address(peer: object) -> Client | None:
    """A socket peer (`(host, port, ...)`) as (family, address); an IPv4-mapped IPv6 peer (a dual-stack
    socket) is its IPv4 address, so IPv4 entries cover it (rbldnsd looks such peers up as IPv6)."""
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return None
    host = peer[0].partition("%")[0]  # a link-local zone index is not part of the address
    for family, af in ((4, socket.AF_INET), (6, socket.AF_INET6)):
        try:
            value = int.from_bytes(socket.inet_pton(af, host), "big")
        except OSError:
            continue
        if family == 6 and value >> 32 == 0xFFFF:
            return 4, value & 0xFFFFFFFF
        return family, value
    return None


# --- reading ----------------------------------------------------------------------------------


@dataclass
class AclParsed:
    entries: dict[tuple[int, int, int], Rule] = field(default_factory=dict)  # (family, lo, hi) -> rule
    problems: list[str] = field(default_factory=list)
    specials: Specials = field(default_factory=Specials)

    def acl(self) -> Acl:
        ttl = self.specials.ttl
        return Acl.build(
            (Target(f, lo, hi), r._replace(ttl=ttl) if isinstance(r, Listed) else r)
            for (f, lo, hi), r in self.entries.items()
        )

    @property
    def count(self) -> int:
        return len(self.entries)


_V4_KEY = re.compile(r"[0-9./]+(?=$|[\s:#;])")
_V6_KEY = re.compile(r"[^\s#;]+")
_WORD = re.compile(r"([A-Za-z]+)(?=$|[\s:#;])")


def keyword(text: str) -> Action | None:
    match = _WORD.match(text)
    if match is None:
        return None
    word = match.group(1).lower()
    return next((action for name, action in KEYWORDS if name.startswith(word)), None)


class AclReader:
    """Reads one acl dataset's files in order; variables run on across files, the default does not."""

    def __init__(self, *, loose: bool = False) -> None:
        self.loose = loose
        self.parsed = AclParsed()
        self.scope = Scope()
        self.default: Rule = Action.IGNORE

    def read(self, lines: Iterable[str], path: str) -> AclParsed:
        self.scope.set_default(DEFAULT_CODE, None)
        self.default = Action.IGNORE
        for number, raw in enumerate(lines, 1):
            try:
                self.line(raw.strip())
            except LineError as error:
                self.parsed.problems.append(f"{path}:{number}: {error}")
        return self.parsed

    def line(self, text: str) -> None:
        special_line = SPECIAL.match(text)
        if special_line:
            self.special(special_line.group(1), special_line.group(2).strip())
        elif not text or text[0] in "#;":
            return
        elif text[0] == "=" or (text[0] == ":" and text[1:2] != ":"):  # `::1` is an address
            self.default = self.value(text, default_line=True)
        else:
            self.entry(text)

    def special(self, name: str, rest: str) -> None:
        if name in ("SOA", "NS"):
            raise LineError(f"${name} is not allowed in an acl dataset")
        special(name, rest, self.scope, self.parsed.specials)
        self.scope.changed()

    def value(self, text: str, *, default_line: bool = False) -> Rule:
        """`=word`, `:word`, or an A:TXT value; a default line's A:TXT becomes the default TXT too."""
        if text[0] == "=":
            action = keyword(text[1:])
            if action is None:
                raise LineError(f"invalid keyword {text!r}: use =ignore, =refuse, =empty or =pass")
            return action
        action = keyword(text[1:]) if text[0] == ":" else None
        if action is not None:
            return action
        code, txt, given = split_value(text)
        if default_line:
            self.scope.set_default(DEFAULT_CODE if code is None else code, txt if given else None)
            return Listed(self.scope.code, self.scope.template(None, False))
        return Listed(self.scope.code if code is None else code, self.scope.template(txt, given))

    def entry(self, text: str) -> None:
        target, rest = self.key(text)
        if target.family == 4 and target.size > self.scope.maxrange4:
            raise LineError(f"too large range ({target.size}) ignored ({self.scope.maxrange4} max)")
        rest = rest.strip()
        rule = self.default if not rest or rest[0] in "#;" else self.value(rest)
        key = (target.family, target.lo, target.hi)
        if key in self.parsed.entries:
            raise LineError(f"duplicated entry for {format_target(target)}")
        self.parsed.entries[key] = rule

    def key(self, text: str) -> tuple[Target, str]:
        """The client CIDR and the rest of the line; IPv4 is tried first, as rbldnsd does."""
        v4 = _V4_KEY.match(text)
        if v4:
            try:
                return parse_key(v4.group(), "ip4trie", self.loose), text[v4.end() :]
            except LineError:
                if text[v4.end() : v4.end() + 1] != ":":  # `2001:db8::` starts like IPv4, then is IPv6
                    raise
        v6 = _V6_KEY.match(text)
        assert v6 is not None  # the line is not empty
        key = v6.group()
        if ":" not in key or any(c in key for c in "!.-"):
            raise LineError(f"invalid address {key!r}: use an IPv4 or IPv6 address or CIDR")
        return parse_key(key, "ip6trie", self.loose), text[v6.end() :]


def read_acl(paths: Iterable[str | Path], *, loose: bool = False) -> AclParsed:
    """Read the files of one acl dataset (several files are one logical file, `man rbldnsd`)."""
    reader = AclReader(loose=loose)
    for path in paths:
        reader.read(read_lines(path), str(path))
    return reader.parsed
