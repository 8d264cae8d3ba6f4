"""DNS messages on the wire: the only module that imports dnslib, used as a codec only.

Per-packet policy (RFC 1035, 6891, 7766), all here:
- shorter than a header, or QR set (a response, e.g. a reply to our own NOTIFY): dropped, no answer;
- a `silent` answer from the resolver (a client an acl ignores): no answer either;
- opcode other than QUERY: NOTIMP (the resolver decides when the question parses);
- a header that parses but a question that doesn't (label over 63, name over 255, compression loop or
  forward pointer, qdcount not 1, truncated), or two OPT records: FORMERR;
- EDNS version above 0: BADVERS; a reply to an EDNS query carries our own OPT (version 0, our UDP
  size, DO copied, the client's options not reflected), with NSID (RFC 5001) when the query asks for it
  and the server has an id;
- a reply larger than the UDP limit (512, or the client's EDNS size capped at `udp_cap`) goes out with
  TC set and no records, so the client retries over TCP, where it comes whole;
- an error inside the resolver: SERVFAIL (the caller logs it).
TCP framing (two-byte length prefix) is `Framer`, a sans-IO object fed arbitrary chunks.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from dnslib import EDNS0, RR, DNSBuffer, DNSHeader, DNSLabel, DNSQuestion, DNSRecord, EDNSOption
from dnslib import MX as MX_RD
from dnslib import NS as NS_RD
from dnslib import SOA as SOA_RD
from dnslib import TXT as TXT_RD
from dnslib import A as A_RD

from .resolver import FORMERR, MX, NOTIMP, NS, SERVFAIL, TXT, A, Answer, Question, Record, Soa

OPT = 41
NSID = 3  # the EDNS option (RFC 5001)
BADVERS = 16
DEFAULT_UDP = 512
UDP_CAP = 1232  # the DNS flag day 2020 size: no IP fragmentation on common paths
TCP_MAX = 65535
_HEADER = struct.Struct("!HHHHHH")


class MalformedQuestion(Exception):
    """The question section is not a well-formed DNS question."""


@dataclass(frozen=True, slots=True)
class Edns:
    udp_size: int
    version: int
    do: bool
    nsid: bool = False  # the query carries an NSID option


@dataclass(frozen=True, slots=True)
class Request:
    record: DNSRecord
    question: Question
    edns: Edns | None


# --- reading ----------------------------------------------------------------------------------


def read_name(data: bytes, offset: int) -> tuple[list[bytes], int]:
    """Walk a name strictly; return its labels and the offset after it. Pointers must point backwards.

    A label is any octets (RFC 2181 section 11), so the question name is read here: dnslib's reader
    refuses labels that are not UTF-8.
    """
    labels: list[bytes] = []
    end: int | None = None
    length = 1  # the root label
    position, floor = offset, offset
    while True:
        if position >= len(data):
            raise MalformedQuestion("name runs past the end of the message")
        size = data[position]
        if size & 0xC0 == 0xC0:
            if position + 1 >= len(data):
                raise MalformedQuestion("truncated compression pointer")
            target = ((size & 0x3F) << 8) | data[position + 1]
            if target >= floor:
                raise MalformedQuestion("compression pointer does not point backwards")
            end = position + 2 if end is None else end
            position = floor = target
            continue
        if size & 0xC0:
            raise MalformedQuestion("label longer than 63 octets")
        if size == 0:
            return labels, position + 1 if end is None else end
        length += size + 1
        if length > 255:
            raise MalformedQuestion("name longer than 255 octets")
        labels.append(data[position + 1 : position + 1 + size])
        position += size + 1


def _label_text(label: bytes) -> str:
    # A dot inside a label must not split it: escape it so it never reads as an address or zone.
    return label.decode("latin-1").replace(".", "\\046")


def parse(data: bytes) -> Request:
    """Decode a query whose header is known to be a request; raise MalformedQuestion."""
    qdcount = _HEADER.unpack_from(data)[2]
    if qdcount != 1:
        raise MalformedQuestion(f"qdcount is {qdcount}, not 1")
    labels, end = read_name(data, 12)
    if end + 4 > len(data):
        raise MalformedQuestion("question truncated")
    try:
        record = _record(data, DNSQuestion(DNSLabel(labels), *struct.unpack_from("!HH", data, end)), end + 4)
    except Exception as error:  # dnslib raises several types for bad input
        raise MalformedQuestion(str(error)) from None
    q = record.q
    name = ".".join(_label_text(label) for label in q.qname.label)
    question = Question(name, q.qtype, q.qclass, record.header.opcode)
    return Request(record, question, _edns(record, data, end + 4))


def _record(data: bytes, question: DNSQuestion, offset: int) -> DNSRecord:
    """dnslib reads the header and the record sections after our question (like `DNSRecord.parse`)."""
    buffer = DNSBuffer(data)
    header = DNSHeader.parse(buffer)
    buffer.offset = offset
    rr, auth, ar = ([RR.parse(buffer) for _ in range(n)] for n in (header.a, header.auth, header.ar))
    return DNSRecord(header, [question], rr, auth=auth, ar=ar)


def _edns(record: DNSRecord, data: bytes, offset: int) -> Edns | None:
    opts = [rr for rr in record.ar if rr.rtype == OPT]
    if len(opts) > 1:
        raise MalformedQuestion("more than one OPT record")
    if not opts:
        return None
    ttl = opts[0].ttl
    records = len(record.rr) + len(record.auth) + len(record.ar)
    nsid = NSID in _option_codes(data, offset, records)
    return Edns(udp_size=opts[0].rclass, version=(ttl >> 16) & 0xFF, do=bool(ttl & 0x8000), nsid=nsid)


def _option_codes(data: bytes, offset: int, records: int) -> list[int]:
    """The option codes of the OPT record among the `records` RRs from `offset`, read from the bytes:
    dnslib drops an option of no data that ends the record, and an NSID query is exactly that."""
    codes = []
    for _ in range(records):
        _labels, offset = read_name(data, offset)
        rtype, _class, _ttl, rdlength = struct.unpack_from("!HHIH", data, offset)
        offset += 10
        at, end = offset, offset + rdlength
        while rtype == OPT and at + 4 <= end:
            code, length = struct.unpack_from("!HH", data, at)
            codes.append(code)
            at += 4 + length
        offset = end
    return codes


# --- writing ----------------------------------------------------------------------------------


def _header_only(data: bytes, rcode: int) -> bytes:
    ident, flags = struct.unpack_from("!HH", data)
    flags = 0x8000 | (flags & 0x7900) | rcode  # QR, opcode and RD echoed
    return _HEADER.pack(ident, flags, 0, 0, 0, 0)


def _rdata(record: Record) -> object:
    if record.rtype == A:
        return A_RD(record.data)
    if record.rtype == TXT:
        return TXT_RD(str(record.data).encode())
    if record.rtype == NS:
        return NS_RD(str(record.data) + ".")
    if record.rtype == MX:
        preference, host = record.data  # type: ignore[misc]
        return MX_RD(str(host).rstrip(".") + ".", int(preference))
    soa = record.data
    assert isinstance(soa, Soa)
    times = (soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum)
    return SOA_RD(soa.mname + ".", soa.rname + ".", times)


def _rr(record: Record, question: Question, qname: DNSLabel) -> RR:
    # Echo the query's own name bytes (and so its case) where the record is about it.
    name = qname if record.name == question.name else DNSLabel(record.name + ".")
    return RR(name, record.rtype, record.rclass, record.ttl, _rdata(record))


def _opt(edns: Edns, ext_rcode: int = 0, nsid: bytes | None = None) -> RR:
    opts = [EDNSOption(NSID, nsid)] if nsid is not None and edns.nsid else []
    return EDNS0(udp_len=UDP_CAP, version=0, flags="do" if edns.do else "", ext_rcode=ext_rcode, opts=opts)


def encode(request: Request, answer: Answer, limit: int, nsid: bytes | None = None) -> bytes:
    h = request.record.header
    header = DNSHeader(id=h.id, qr=1, aa=int(answer.authoritative), rd=h.rd, rcode=answer.rcode & 0xF)
    header.opcode = h.opcode
    reply = DNSRecord(
        header, q=DNSQuestion(request.record.q.qname, request.record.q.qtype, request.record.q.qclass)
    )
    qname = request.record.q.qname
    for record in answer.answer:
        reply.add_answer(_rr(record, request.question, qname))
    for record in answer.authority:
        reply.add_auth(_rr(record, request.question, qname))
    if request.edns is not None:
        reply.add_ar(_opt(request.edns, answer.rcode >> 4, nsid))
    packed = bytes(reply.pack())
    if len(packed) <= limit:
        return packed
    reply.rr, reply.auth = [], []
    reply.header.tc = 1
    return bytes(reply.pack())


def udp_limit(edns: Edns | None, cap: int = UDP_CAP) -> int:
    if edns is None:
        return DEFAULT_UDP
    return min(max(DEFAULT_UDP, edns.udp_size), cap)


def respond(
    data: bytes,
    resolve: Callable[[Question], Answer],
    *,
    udp: bool,
    udp_cap: int = UDP_CAP,
    client: tuple[int, int] | None = None,
    nsid: bytes | None = None,
) -> bytes | None:
    """One query in, one reply out, or None to drop it (or when the resolver says to send nothing, an
    acl's ignore). `client` is the peer as (family, address); `nsid` the server id sent to a query that
    asks for it. The caller turns errors into `servfail`."""
    if len(data) < 12 or data[2] & 0x80:
        return None
    try:
        request = parse(data)
    except MalformedQuestion:
        return _header_only(data, NOTIMP if (data[2] >> 3) & 0xF else FORMERR)
    if request.edns is not None and request.edns.version > 0:
        answer = Answer(BADVERS, authoritative=False)
    else:
        answer = resolve(request.question._replace(client=client))
    if answer.silent:
        return None
    limit = udp_limit(request.edns, udp_cap) if udp else TCP_MAX
    return encode(request, answer, limit, nsid)


def servfail(data: bytes) -> bytes | None:
    """The reply for a query whose handling failed unexpectedly."""
    if len(data) < 12 or data[2] & 0x80:
        return None
    return _header_only(data, SERVFAIL)


class Framer:
    """RFC 7766 length-prefixed messages from a byte stream fed in any chunks."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        messages = []
        while len(self._buffer) >= 2:
            size = (self._buffer[0] << 8) | self._buffer[1]
            if len(self._buffer) < 2 + size:
                break
            messages.append(bytes(self._buffer[2 : 2 + size]))
            del self._buffer[: 2 + size]
        return messages

    @property
    def pending(self) -> int:
        return len(self._buffer)


def frame(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message
