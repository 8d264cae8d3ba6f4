"""Bad packets over the wire: a corpus of malformed messages and hypothesis-made ones, sent over UDP and
TCP to a real `dnsbl serve` (one worker and two). Each gets FORMERR, NOTIMP or REFUSED, or is dropped,
as README "Answers" says; a good query is answered after every bad one; the server never logs a
traceback (an "error answering" line is a packet that reached the SERVFAIL catch-all: a bug here).

`test_wire.py` fuzzes the codec in-process; this file asks the real process, through the fast path,
the general path, the transfer code and the TCP framing.
"""

from __future__ import annotations

import itertools
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rcode
import pytest
from conftest import Server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_wire import mutate

pytestmark = pytest.mark.slow

ZONE = b"\x02bl\x07example\x03org\x00"
LISTED = b"\x012\x010\x010\x03127" + ZONE  # 127.0.0.2, the RFC 5782 test point: always listed
A_IN = b"\x00\x01\x00\x01"
QUESTION = LISTED + A_IN
DROP = "drop"
FORMERR, NOTIMP, REFUSED, NOERROR, NXDOMAIN = "FORMERR", "NOTIMP", "REFUSED", "NOERROR", "NXDOMAIN"
BADVERS = "BADVERS"
# what any message may get: the well-formed ones an answer, the rest FORMERR/NOTIMP/REFUSED; never SERVFAIL
ALLOWED = {FORMERR, NOTIMP, REFUSED, NOERROR, NXDOMAIN, BADVERS, "NOTAUTH"}
ident = itertools.count(1)


def header(
    flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0, qid: int = 0x5A5A
) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def labels(*parts: bytes) -> bytes:
    return b"".join(bytes([len(p)]) + p for p in parts) + b"\x00"


def opt(payload: int = 1232, ttl: int = 0, rdata: bytes = b"", owner: bytes = b"\x00") -> bytes:
    return owner + struct.pack("!HHIH", 41, payload, ttl, len(rdata)) + rdata


SOA_RR = ZONE + struct.pack("!HHIH", 6, 1, 0, 22) + b"\x00\x00" + struct.pack("!IIIII", 1, 2, 3, 4, 5)

# name -> (message, what it gets: a DNS rcode, or DROP)
CORPUS: dict[str, tuple[bytes, str]] = {
    "empty": (b"", DROP),
    "truncated header (5 octets)": (header()[:5], DROP),
    "truncated header (11 octets)": (header()[:11], DROP),
    "header alone, qdcount 1": (header(), FORMERR),
    "question truncated after the name": (header() + LISTED, FORMERR),
    "question truncated in the class": (header() + LISTED + b"\x00\x01\x00", FORMERR),
    "name runs off the end": (header() + b"\x01a\x05abc", FORMERR),
    "label of 64 (0x40)": (header() + b"\x40" + b"a" * 64 + ZONE + A_IN, FORMERR),
    "label type 0x80": (header() + b"\x80" + b"a" * 128 + b"\x00" + A_IN, FORMERR),
    "name of 256 octets": (header() + labels(b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 62) + A_IN, FORMERR),
    "name far over 255": (header() + labels(*[b"x" * 63] * 5) + A_IN, FORMERR),
    "compression pointer to itself": (header() + b"\xc0\x0c" + A_IN, FORMERR),
    "compression loop through a label": (header() + b"\x01a\xc0\x0c" + A_IN, FORMERR),
    "compression loop of two pointers": (header() + b"\x01a\xc0\x10\xc0\x0c" + A_IN, FORMERR),
    "forward compression pointer": (header() + b"\x01a\xc0\x14" + A_IN + b"\x01b\x00", FORMERR),
    "pointer past the end": (header() + b"\xc3\xff" + A_IN, FORMERR),
    "truncated pointer": (header() + b"\x01a\xc0", FORMERR),
    "qdcount 0": (header(qd=0), FORMERR),
    "qdcount 0 with a question": (header(qd=0) + QUESTION, FORMERR),
    "qdcount 2": (header(qd=2) + QUESTION * 2, FORMERR),
    "qdcount 65535": (header(qd=0xFFFF) + QUESTION, FORMERR),
    "QR set (a response)": (header(flags=0x8100) + QUESTION, DROP),
    "QR set, garbage after": (header(flags=0x8000) + b"\xff" * 40, DROP),
    "unknown class 99": (header() + LISTED + b"\x00\x01\x00\x63", REFUSED),
    "class NONE (254)": (header() + LISTED + b"\x00\x01\x00\xfe", REFUSED),
    "class HS": (header() + LISTED + b"\x00\x01\x00\x04", REFUSED),
    "opcode 3 (unassigned)": (header(flags=0x1900) + QUESTION, NOTIMP),
    "opcode 15 (unassigned)": (header(flags=0x7900) + QUESTION, NOTIMP),
    "opcode STATUS": (header(flags=0x1100) + QUESTION, NOTIMP),
    "opcode UPDATE": (header(flags=0x2800) + ZONE + b"\x00\x06\x00\x01", NOTIMP),
    "opcode IQUERY, malformed question": (header(flags=0x0900) + b"\xc0\x0c" + A_IN, NOTIMP),
    "two OPT records": (header(ar=2) + QUESTION + opt() + opt(4096), FORMERR),
    "OPT record cut short": (header(ar=1) + QUESTION + opt()[:7], FORMERR),
    "OPT rdlength past the end": (header(ar=1) + QUESTION + opt()[:-2] + b"\x00\x40", FORMERR),
    "arcount 3, one record": (header(ar=3) + QUESTION + opt(), FORMERR),
    "ancount 1, no answer": (header(an=1) + QUESTION, FORMERR),
    "nscount 200, garbage": (header(ns=200) + QUESTION + b"\xff" * 30, FORMERR),
    "EDNS version 1": (header(ar=1) + QUESTION + opt(ttl=0x00010000), BADVERS),
    "EDNS version 255, DO": (header(ar=1) + QUESTION + opt(ttl=0x00FF8000), BADVERS),
    "AXFR over UDP, not allowed": (header() + ZONE + b"\x00\xfc\x00\x01", REFUSED),
    "IXFR without its SOA": (header() + ZONE + b"\x00\xfb\x00\x01", FORMERR),
    "IXFR, not allowed": (header(ns=1) + ZONE + b"\x00\xfb\x00\x01" + SOA_RR, REFUSED),
    "ANY class, name in no zone": (header() + labels(b"example", b"com") + b"\x00\x01\x00\xff", REFUSED),
}
# Over TCP a transfer request goes to the transfer code, which streams: refused, and the connection goes on
TCP_ONLY = {"AXFR over TCP, not allowed": (header() + ZONE + b"\x00\xfc\x00\x01", REFUSED)}


def rcode_of(reply: bytes) -> str:
    """The reply's rcode (the extended one from its OPT, for BADVERS) after checking it is a reply."""
    assert len(reply) >= 12 and reply[2] & 0x80, reply
    try:
        return dns.rcode.to_text(dns.message.from_wire(reply).rcode())
    except Exception:  # some replies echo what dnspython will not read back (an UPDATE's question)
        return dns.rcode.to_text(reply[3] & 0xF)


def good(qid: int) -> bytes:
    return header(qid=qid) + QUESTION


def assert_good(reply: bytes, qid: int) -> None:
    message = dns.message.from_wire(reply)
    assert message.id == qid and message.rcode() == 0
    assert [rr.to_text() for rrset in message.answer for rr in rrset] == ["127.0.0.2"]


def with_id(message: bytes, qid: int) -> bytes:
    return struct.pack("!H", qid) + message[2:] if len(message) >= 2 else message


class Client:
    """One UDP socket and one TCP connection (opened on first use, kept) to the server."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.address = (server.host, server.port)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.settimeout(5)
        self.tcp: socket.socket | None = None
        self.buffer = b""

    def ask_udp(self, message: bytes, wait: float = 5.0) -> bytes | None:
        self.udp.sendto(message, self.address)
        self.udp.settimeout(wait)
        try:
            return self.udp.recv(65535)
        except TimeoutError:
            return None

    def udp_reply(self, qid: int | None) -> bytes:
        """The reply to `qid` (None: the next reply), skipping late replies to earlier messages."""
        self.udp.settimeout(5)
        while True:
            reply = self.udp.recv(65535)
            if qid is None or reply[:2] == struct.pack("!H", qid):
                return reply

    def connect(self) -> socket.socket:
        if self.tcp is None:
            self.tcp = socket.create_connection(self.address, timeout=5)
            self.buffer = b""
        return self.tcp

    def send_tcp(self, *messages: bytes) -> None:
        self.connect().sendall(b"".join(len(m).to_bytes(2, "big") + m for m in messages))

    def read_tcp(self) -> bytes:
        assert self.tcp is not None
        while len(self.buffer) < 2 or len(self.buffer) < 2 + int.from_bytes(self.buffer[:2], "big"):
            chunk = self.tcp.recv(65535)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buffer += chunk
        size = int.from_bytes(self.buffer[:2], "big")
        message, self.buffer = self.buffer[2 : 2 + size], self.buffer[2 + size :]
        return message

    def close(self) -> None:
        self.udp.close()
        if self.tcp is not None:
            self.tcp.close()


@pytest.fixture(scope="module", params=[1, 2], ids=["workers1", "workers2"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    db = Path(tmp_path_factory.mktemp("fuzz")) / "list.sqlite"
    started = Server(["--db", str(db), "--workers", str(request.param)])
    yield started
    started.close()


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    opened = Client(server)
    yield opened
    opened.close()
    assert_healthy(server)


def assert_healthy(server: Server) -> None:
    assert server.proc.poll() is None, server.log
    log = server.log
    assert "Traceback" not in log and "error answering" not in log, log


# --- the corpus -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CORPUS, ids=list(CORPUS))
def test_corpus_over_udp(client: Client, case: str) -> None:
    message, expected = CORPUS[case]
    qid = next(ident)
    reply = client.ask_udp(with_id(message, qid), wait=0.3 if expected == DROP else 5)
    if expected == DROP:
        assert reply is None
    else:
        assert reply is not None and reply[:2] == struct.pack("!H", qid)
        assert rcode_of(reply) == expected
    qid = next(ident)
    client.udp.sendto(good(qid), client.address)
    assert_good(client.udp_reply(qid), qid)


@pytest.mark.parametrize("case", {**CORPUS, **TCP_ONLY}, ids=list({**CORPUS, **TCP_ONLY}))
def test_corpus_over_tcp(client: Client, case: str) -> None:
    """The bad message and a good query in one write on a fresh connection: the bad one's reply (none
    if dropped), then the good one's, on the same connection."""
    message, expected = {**CORPUS, **TCP_ONLY}[case]
    bad_id, good_id = next(ident), next(ident)
    client.send_tcp(with_id(message, bad_id), good(good_id))
    reply = client.read_tcp()
    if expected != DROP:
        assert rcode_of(reply) == expected and reply[:2] == struct.pack("!H", bad_id)
        reply = client.read_tcp()
    assert_good(reply, good_id)


def test_whole_corpus_pipelined_on_one_connection(client: Client) -> None:
    """Every case and a good query after each, in one write: the replies come in order, the dropped
    ones leave no gap."""
    cases = list({**CORPUS, **TCP_ONLY}.values())
    ids = [(next(ident), next(ident)) for _ in cases]
    client.send_tcp(
        *(m for (message, _), (b, g) in zip(cases, ids, strict=True) for m in (with_id(message, b), good(g)))
    )
    for (_, expected), (bad_id, good_id) in zip(cases, ids, strict=True):
        reply = client.read_tcp()
        if expected != DROP:
            assert rcode_of(reply) == expected and reply[:2] == struct.pack("!H", bad_id)
            reply = client.read_tcp()
        assert_good(reply, good_id)


def test_bad_framing_is_closed_quietly(client: Client) -> None:
    """A stream that stops mid-length, mid-message or with a length of 0 or 65535 and junk: the server
    drops what it cannot read, never answers junk with junk, and serves the next connection."""
    streams = [
        b"\x00",  # half a length
        b"\x00\x40" + good(1)[:20],  # a length, then less than it says
        b"\x00\x00" * 20,  # twenty empty messages: dropped, like a UDP packet under 12 octets
        b"\xff\xff" + bytes(range(256)) * 255 + b"\x00" * 255,  # the largest message, junk
        b"\x00\x0c" + b"\xff" * 12,  # a header alone with every bit set: QR, dropped
    ]
    for stream in streams:
        with socket.create_connection(client.address, timeout=5) as sock:
            sock.sendall(stream)
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65535):
                data += chunk
        if data:  # the 65535-octet junk: one header-only FORMERR, or nothing
            assert len(data) == 14 and rcode_of(data[2:]) in {FORMERR, NOTIMP}, data
        qid = next(ident)
        client.send_tcp(good(qid))
        assert_good(client.read_tcp(), qid)


# --- hypothesis: mutated good queries, random headers, random bytes ----------------------------

SEEDS = [
    good(0),
    header(ar=1) + QUESTION + opt(),
    header(ar=1) + LISTED + b"\x00\x10\x00\x01" + opt(4096, 0x8000, b"\x00\x0a\x00\x08clientck"),
    header() + ZONE + b"\x00\x06\x00\x01",  # the apex SOA
    header() + b"\x017\x03113\x010\x03203" + ZONE + b"\x00\xff\x00\x01",  # ANY
    header() + b"\x012\x010\x010\x03127\xc0\x0c" + A_IN,  # a pointer to the header: the root's labels
    header(ns=1) + ZONE + b"\x00\xfb\x00\x01" + SOA_RR,  # IXFR
    header() + b"\x07version\x04bind\x00\x00\x10\x00\x03",  # CHAOS TXT version.bind
]


EDITS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 200), st.integers(0, 255)), max_size=6)
MESSAGES = st.one_of(
    st.builds(mutate, st.sampled_from(SEEDS), EDITS),
    st.builds(
        lambda flags, counts, rest: struct.pack("!HHHHHH", 0, flags, *counts) + rest,
        st.integers(0, 0x7FFF),  # QR clear: these always pass the first check
        st.tuples(*[st.integers(0, 3)] * 4),
        st.binary(max_size=120),
    ),
    st.binary(max_size=300),
)
FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))


def droppable(message: bytes) -> bool:
    return len(message) < 12 or bool(message[2] & 0x80)


def check_reply(message: bytes, reply: bytes) -> None:
    """A reply to this message (not one README drops) with an allowed rcode."""
    assert not droppable(message) and reply[:2] == message[:2], (message, reply)
    assert rcode_of(reply) in ALLOWED, (message, reply)


@pytest.fixture(scope="module")
def fuzz_client(server: Server) -> Iterator[Client]:
    """One client for every example, so that a late reply to a dropped message shows up as a stray."""
    opened = Client(server)
    yield opened
    opened.close()
    assert_healthy(server)


def ids() -> tuple[int, int]:
    """A fresh id for the bad message and one for the good query after it."""
    number = next(ident) % 0x4000
    return number, number | 0x8000


@FUZZ
@given(message=MESSAGES)
def test_fuzz_over_udp(fuzz_client: Client, message: bytes) -> None:
    """The bad message, then a good query: both replies are awaited (workers may answer in either
    order); a reply to a message README drops would be a stray id in a later example."""
    client = fuzz_client
    bad_id, good_id = ids()
    message = with_id(message, bad_id)
    client.udp.sendto(message, client.address)
    client.udp.sendto(good(good_id), client.address)
    wanted = {good_id} if droppable(message) else {good_id, bad_id}
    replies: dict[int, bytes] = {}
    while not wanted <= set(replies):
        reply = client.udp_reply(None)
        qid = int.from_bytes(reply[:2], "big")
        assert qid in wanted, f"stray reply {reply!r}"
        replies[qid] = reply
    assert_good(replies[good_id], good_id)
    if bad_id in replies:
        check_reply(message, replies[bad_id])


@FUZZ
@given(message=MESSAGES)
def test_fuzz_over_tcp(fuzz_client: Client, message: bytes) -> None:
    """The bad message and a good query in one write on a kept connection: the bad one's reply first
    (none if dropped), then the good one's."""
    client = fuzz_client
    bad_id, good_id = ids()
    message = with_id(message, bad_id)
    client.send_tcp(message, good(good_id))
    reply = client.read_tcp()
    if not droppable(message):
        check_reply(message, reply)
        reply = client.read_tcp()
    assert_good(reply, good_id)


# --- scripts/soak ------------------------------------------------------------------------------

SOAK = Path(__file__).parent.parent / "scripts" / "soak"


def test_soak_script_quick() -> None:
    """scripts/soak --quick: its own server (two workers), 20,000 mixed packets, nothing lost, memory
    read from every process holding the socket."""
    import re
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(SOAK), "--quick", "--workers", "2"], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"^sent 20,000 packets in [\d.]+ s", out, re.M), out
    assert re.search(r"^good answers: [\d,]+ right, 0 wrong, 0 lost", out, re.M), out
    assert "stray replies: 0" in out and "FORMERR" in out and "NOTIMP" in out and "REFUSED" in out, out
    readings = re.findall(r"RSS +([\d.]+) MiB +PSS +([\d.]+) MiB +\((\d+) processes\)", out)
    assert len(readings) == 3 and all(int(n) == 3 for _, _, n in readings), out  # parent and 2 workers
    assert "server still running: yes; traceback in its log: no" in out and out.rstrip().endswith("PASS"), out
