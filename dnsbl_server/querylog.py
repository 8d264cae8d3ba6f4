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
import os
import select
import struct
from collections.abc import Iterator

from .errors import ConfigError
from .wire import MalformedQuestion, read_name

log = logging.getLogger("dnsbl.querylog")
STDOUT = 1
BUFFER = 65536  # bytes of lines held before a flush comes due anyway
PIPE_BUF = select.PIPE_BUF  # a write this small to a pipe is atomic (POSIX)

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
    """Where log lines go: a file opened for appending (reopened on SIGHUP), or standard output.

    Lines are kept here and written whole, with one `os.write` per PIPE_BUF bytes of whole lines: worker
    processes (`dnsbl serve --workers`) share the file or the pipe, and a write that small is never
    torn or interleaved (O_APPEND on a file, PIPE_BUF on a pipe)."""

    def __init__(self, spec: str) -> None:
        self.unbuffered = spec.startswith("+")
        self.path = spec[1:] if self.unbuffered else spec
        if not self.path:
            raise ConfigError("--query-log needs a file name, or - for standard output")
        self.fd: int | None = STDOUT if self.path == "-" else self._open(strict=True)
        self.pending: list[str] = []
        self.size = 0

    def _open(self, *, strict: bool) -> int | None:
        try:
            return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as error:
            if strict:
                raise ConfigError(f"cannot open the query log {self.path}: {error.strerror}") from None
            log.warning(
                "cannot reopen the query log %s: %s; not logging until the next SIGHUP", self.path, error
            )
            return None

    def write(self, line: str) -> None:
        self.pending.append(line)
        self.size += len(line)
        if self.unbuffered or self.size >= BUFFER:
            self.flush()

    def flush(self) -> None:
        lines, self.pending, self.size = self.pending, [], 0
        if self.fd is None:
            return
        try:
            for chunk in _whole_lines(lines, PIPE_BUF):
                _write_all(self.fd, chunk)
        except OSError as error:
            log.warning("cannot write the query log %s: %s", self.path, error.strerror)

    def reopen(self) -> None:
        """SIGHUP: logrotate has moved the file; write to a new one under the same name."""
        self.flush()
        if self.path == "-":
            return
        self.close()
        self.fd = self._open(strict=False)

    def close(self) -> None:
        self.flush()
        if self.path != "-" and self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _whole_lines(lines: list[str], limit: int) -> Iterator[bytes]:
    """The lines, joined into chunks of at most `limit` bytes (a longer line is a chunk of its own)."""
    chunk: list[str] = []
    size = 0
    for line in lines:
        if chunk and size + len(line) > limit:
            yield "".join(chunk).encode("ascii", "replace")
            chunk, size = [], 0
        chunk.append(line)
        size += len(line)
    if chunk:
        yield "".join(chunk).encode("ascii", "replace")


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]
