"""Zone-transfer and NOTIFY messages on the wire, written by hand (no dnslib object per record: a
1M-entry AXFR is millions of records). Sans-IO: bytes in, bytes out.

Owns:
- reading a transfer request (RFC 5936 AXFR, RFC 1995 IXFR with the client's SOA in authority) from
  a message whose header is known to be a query;
- `Packer`: records (`zonedump.RR`, presentation text) into messages of at most MESSAGE_MAX bytes,
  each carrying the question, owner names compressed against it (a pointer to offset 12), each
  passed through a signing hook when TSIG is on (`xfrtsig.Signer.sign`: the MAC is not ours);
- NOTIFY (RFC 1996) queries and matching their replies.
Rdata is read from zone-file presentation for the five types a DNSBL zone holds (SOA, NS, CNAME, A,
TXT); relative names are relative to the zone origin, as in a zone file.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from .wire import MalformedQuestion, read_name

AXFR, IXFR = 252, 251
SOA_TYPE, IN = 6, 1
NOTIFY_OPCODE = 4
NOTAUTH, REFUSED, FORMERR = 9, 5, 1
MESSAGE_MAX = 16384  # RFC 5936 section 2.2: many records per message; 16 KiB keeps writes small
TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "TXT": 16}
_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_ORIGIN_POINTER = b"\xc0\x0c"
_LENGTHS = [bytes((n,)) for n in range(64)]  # the question's name, right after the header


class TransferRequest(NamedTuple):
    ident: int
    flags: int
    question: bytes  # the question section as sent (name case kept), echoed in every reply
    zone: str  # lowercase, no trailing dot
    qtype: int
    qclass: int
    serial: int | None  # IXFR: the client's serial, from the SOA in authority
    end: int  # where the request's records after the question begin (TSIG reads on from here)


def transfer_qtype(data: bytes) -> int:
    """AXFR or IXFR when `data` is a query (QR clear, opcode QUERY, one question) asking for one, else
    0. Cheap: the serving path calls it for every TCP message."""
    if len(data) < 17 or data[2] & 0xF8 or data[4:6] != b"\x00\x01":
        return 0
    try:
        _labels, end = read_name(data, 12)
    except MalformedQuestion:
        return 0
    qtype = int.from_bytes(data[end : end + 2], "big") if end + 4 <= len(data) else 0
    return qtype if qtype in (AXFR, IXFR) else 0


def parse_request(data: bytes) -> TransferRequest:
    """A transfer request whose `transfer_qtype` is set; MalformedQuestion if the IXFR's SOA is missing
    or broken (FORMERR, RFC 1995 section 3)."""
    ident, flags, _qd, _an, nscount, _ar = _HEADER.unpack_from(data)
    labels, end = read_name(data, 12)
    qtype, qclass = struct.unpack_from("!HH", data, end)
    zone = ".".join(label.decode("latin-1").lower() for label in labels)
    question = data[12 : end + 4]
    offset, serial = end + 4, None
    if qtype == IXFR:
        if nscount < 1:
            raise MalformedQuestion("IXFR without the client's SOA in the authority section")
        serial, offset = _soa_serial(data, offset)
    return TransferRequest(ident, flags, question, zone, qtype, qclass, serial, offset)


def _soa_serial(data: bytes, offset: int) -> tuple[int, int]:
    _owner, offset = read_name(data, offset)
    if offset + 10 > len(data):
        raise MalformedQuestion("IXFR authority record truncated")
    rtype, _cls, _ttl, size = _RR.unpack_from(data, offset)
    start = offset + 10
    if rtype != SOA_TYPE or start + size > len(data):
        raise MalformedQuestion("IXFR authority record is not a SOA")
    _mname, at = read_name(data, start)
    _rname, at = read_name(data, at)
    if at + 20 > start + size:
        raise MalformedQuestion("IXFR SOA rdata truncated")
    return int.from_bytes(data[at : at + 4], "big"), start + size


def refusal(request_data: bytes, rcode: int) -> bytes:
    """A header-and-question reply with `rcode` (REFUSED, NOTAUTH, FORMERR)."""
    ident, flags = struct.unpack_from("!HH", request_data)
    try:
        _labels, end = read_name(request_data, 12)
        question = request_data[12 : end + 4] if end + 4 <= len(request_data) else b""
    except MalformedQuestion:
        question = b""
    head = _HEADER.pack(ident, 0x8000 | (flags & 0x7900) | rcode, 1 if question else 0, 0, 0, 0)
    return head + question


# --- records to wire ---------------------------------------------------------------------------


def name_wire(text: str, origin: bytes = b"\x00") -> bytes:
    """A name in presentation form: absolute with a trailing dot, else relative to `origin` (wire)."""
    if text == "@":
        return origin
    absolute = text.endswith(".")
    labels = [label for label in text.rstrip(".").encode().split(b".") if label]
    if max(map(len, labels), default=0) > 63:
        raise ValueError(f"label longer than 63 octets in {text!r}")
    # one bytes per label with its length in front: this runs once per record of a transfer
    return b"".join([_LENGTHS[len(label)] + label for label in labels]) + (b"\x00" if absolute else origin)


def txt_wire(text: str) -> bytes:
    """Quoted character-strings (`"a" "b"`, escapes `\\"`, `\\\\`, `\\DDD`) as rdata; a string over 255
    octets is cut into several."""
    out = bytearray()
    for string in _txt_strings(text):
        for start in range(0, max(len(string), 1), 255):
            piece = string[start : start + 255]
            out += len(piece).to_bytes(1, "big") + piece
    return bytes(out)


def _txt_strings(text: str) -> Iterator[bytes]:
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        quoted = text[i] == '"'
        i += quoted
        current = bytearray()
        while i < n and (text[i] != '"' if quoted else not text[i].isspace()):
            if text[i] == "\\" and i + 1 < n:
                if text[i + 1 : i + 4].isdigit() and len(text[i + 1 : i + 4]) == 3:
                    current.append(int(text[i + 1 : i + 4]) & 255)
                    i += 4
                    continue
                i += 1
            current += text[i].encode()
            i += 1
        i += quoted
        yield bytes(current)


def rdata_wire(rtype: str, rdata: str, origin: bytes) -> bytes:
    if rtype == "A":
        return socket.inet_aton(rdata)
    if rtype == "TXT":
        return txt_wire(rdata)
    if rtype in ("NS", "CNAME"):
        return name_wire(rdata, origin)
    if rtype == "SOA":
        mname, rname, *times = rdata.split()
        numbers = struct.pack("!IIIII", *(int(t) for t in times))
        return name_wire(mname, origin) + name_wire(rname, origin) + numbers
    raise ValueError(f"record type {rtype} cannot be transferred")


class Packer:
    """Records of one zone into reply messages (RFC 5936 section 2.2): each at most MESSAGE_MAX bytes,
    with the question, owners compressed against it. Rdata of repeated values is encoded once."""

    def __init__(self, request: TransferRequest, sign: Callable[[bytes], bytes] | None = None) -> None:
        self.request = request
        self.sign = sign  # TSIG (xfrtsig.Signer.sign): each message signed as it is built
        self.origin = name_wire(request.zone + ".")
        self.head_size = 12 + len(request.question)
        self.cache: dict[tuple[str, str], bytes] = {}

    def record(self, name: str, rtype: str, ttl: int, rdata: str) -> bytes:
        key = (rtype, rdata)
        data = self.cache.get(key)
        if data is None:
            data = rdata_wire(rtype, rdata, self.origin)
            if rtype == "A" or len(self.cache) < 4096:  # texts carry the address: rarely repeated
                self.cache[key] = data
        owner = _ORIGIN_POINTER if name == "@" else name_wire(name, _ORIGIN_POINTER)
        return owner + _RR.pack(TYPES[rtype], IN, ttl, len(data)) + data

    def unsigned(self, records: list[bytes], rcode: int = 0) -> bytes:
        r = self.request
        flags = 0x8400 | (r.flags & 0x0100) | rcode  # QR, AA; RD echoed
        return _HEADER.pack(r.ident, flags, 1, len(records), 0, 0) + r.question + b"".join(records)

    def messages(self, records: Iterable[bytes]) -> Iterator[bytes]:
        batch: list[bytes] = []
        size = self.head_size
        for record in records:
            if batch and size + len(record) > MESSAGE_MAX:
                yield self.message(batch)
                batch, size = [], self.head_size
            batch.append(record)
            size += len(record)
        if batch:
            yield self.message(batch)

    def message(self, records: list[bytes], rcode: int = 0) -> bytes:
        message = self.unsigned(records, rcode)
        return self.sign(message) if self.sign else message


# --- NOTIFY (RFC 1996) -------------------------------------------------------------------------


def notify_query(ident: int, zone: str, soa_rdata: bytes, ttl: int) -> bytes:
    """NOTIFY for `zone`, AA set, with the new SOA in the answer section (section 3.7: a hint)."""
    origin = name_wire(zone + ".")
    head = _HEADER.pack(ident, (NOTIFY_OPCODE << 11) | 0x0400, 1, 1, 0, 0)
    question = origin + struct.pack("!HH", SOA_TYPE, IN)
    answer = _ORIGIN_POINTER + _RR.pack(SOA_TYPE, IN, ttl, len(soa_rdata)) + soa_rdata
    return head + question + answer


def notify_reply_id(data: bytes) -> int | None:
    """The id of a NOTIFY reply (QR set, opcode NOTIFY), else None; its rcode is not checked: any
    reply means the secondary heard us (section 4.7)."""
    if len(data) < 12 or not data[2] & 0x80 or (data[2] >> 3) & 0xF != NOTIFY_OPCODE:
        return None
    return int.from_bytes(data[:2], "big")
