"""The query log (`--query-log`, rbldnsd's `-l`): one line per answered query, in rbldnsd's format.

    1795867873 127.0.0.1 1.2.0.192.bl.example.org A IN: NOERROR/1/82

that is `TIME PEER QNAME TYPE CLASS: RCODE/ANSWERS/REPLY-BYTES`, as rbldnsd 1.0 writes it (found by
running it; its `logreply`): QNAME as asked (case kept, root as `.`), with `"` `.` `;` `\\` `@` `$`
backslash-escaped and other non-printable octets as `\\DDD`; TYPE and CLASS as rbldnsd names them
(`type65`, `class254` for those it has no name for); the rcode is the reply header's.
Rules:
- only replies are logged, and only those whose question can be read (like rbldnsd, which drops what
  it cannot parse);
- `FILE` is buffered (flushed every second, on SIGHUP and at exit), `+FILE` is written line by line,
  `-` is standard output (`+-` line by line). SIGHUP reopens FILE, so logrotate can move it (standard
  output is only flushed).
"""

from __future__ import annotations

import logging
import struct
import sys
from typing import TextIO

from .errors import ConfigError
from .wire import MalformedQuestion, read_name

log = logging.getLogger("dnsbl.querylog")

# rbldnsd's names (its dns.h): the types it knows, by number; every other type is `typeN`.
# fmt: off
_TYPES = (
    "INVALID", "A", "NS", "MD", "MF", "CNAME", "SOA", "MB", "MG", "MR", "NULL", "WKS", "PTR", "HINFO",
    "MINFO", "MX", "TXT", "RP", "AFSDB", "X25", "ISDN", "RT", "NSAP", "NSAP_PTR", "SIG", "KEY", "PX", "GPOS",
    "AAAA", "LOC", "NXT", "EID", "NIMLOC", "SRV", "ATMA", "NAPTR", "KX", "CERT", "A6", "DNAME", "SINK", "OPT",
)
# fmt: on
TYPE_NAMES = {
    **dict(enumerate(_TYPES)),
    **dict(zip(range(250, 257), ["TSIG", "IXFR", "AXFR", "MAILB", "MAILA", "ANY", "ZXFR"], strict=True)),
}
CLASS_NAMES = {0: "INVALID", 1: "IN", 3: "CH", 4: "HS", 255: "ANY"}
RCODE_NAMES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMPL", "REFUSED")
_ESCAPED = frozenset(b'".;\\@$')


def name_text(labels: list[bytes]) -> str:
    """A wire name as rbldnsd's `dns_dntop` prints it."""
    if not labels:
        return "."
    return ".".join("".join(_octet_text(octet) for octet in label) for label in labels)


def _octet_text(octet: int) -> str:
    if octet in _ESCAPED:
        return "\\" + chr(octet)
    if octet <= 0x20 or octet >= 0x7F:
        return f"\\{octet:03d}"
    return chr(octet)


def log_line(now: float, peer: str, query: bytes, reply: bytes) -> str | None:
    """The log line for one reply, or None when the query's question cannot be read."""
    if len(query) < 12 or query[4:6] != b"\x00\x01":
        return None
    try:
        labels, end = read_name(query, 12)
    except MalformedQuestion:
        return None
    if end + 4 > len(query):
        return None
    qtype, qclass = struct.unpack_from("!HH", query, end)
    kind = TYPE_NAMES.get(qtype, f"type{qtype}")
    klass = CLASS_NAMES.get(qclass, f"class{qclass}")
    rcode = reply[3] & 0xF
    outcome = RCODE_NAMES[rcode] if rcode < len(RCODE_NAMES) else f"rcode{rcode}"
    answers = int.from_bytes(reply[6:8], "big")
    return f"{int(now)} {peer} {name_text(labels)} {kind} {klass}: {outcome}/{answers}/{len(reply)}\n"


class QueryLog:
    """Where log lines go: a file (reopened on SIGHUP) or standard output."""

    def __init__(self, spec: str) -> None:
        self.unbuffered = spec.startswith("+")
        self.path = spec[1:] if self.unbuffered else spec
        if not self.path:
            raise ConfigError("--query-log needs a file name, or - for standard output")
        self.stream: TextIO | None = sys.stdout if self.path == "-" else self._open(strict=True)

    def _open(self, *, strict: bool) -> TextIO | None:
        try:
            return open(self.path, "a", encoding="ascii")  # noqa: SIM115 (held open; closed in close())
        except OSError as error:
            if strict:
                raise ConfigError(f"cannot open the query log {self.path}: {error.strerror}") from None
            log.warning(
                "cannot reopen the query log %s: %s; not logging until the next SIGHUP", self.path, error
            )
            return None

    def write(self, line: str) -> None:
        if self.stream is None:
            return
        self.stream.write(line)
        if self.unbuffered:
            self.stream.flush()

    def flush(self) -> None:
        if self.stream is not None:
            self.stream.flush()

    def reopen(self) -> None:
        """SIGHUP: logrotate has moved the file; write to a new one under the same name."""
        if self.path == "-":
            self.flush()
            return
        self.close()
        self.stream = self._open(strict=False)

    def close(self) -> None:
        if self.path == "-":
            self.flush()
        elif self.stream is not None:
            self.stream.close()
            self.stream = None
