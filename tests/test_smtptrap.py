"""The SMTP trap listener end to end: a real `dnsbl trap-smtpd` process on 127.0.0.1:0, driven with smtplib
and raw sockets, its results read with `dnsbl check --json`, `dnsbl list --json` and the database.

127.0.0.0/8 is on the built-in allowlist (allowlist.BUILTIN), so what the test client sends directly is
"allowlisted", never listed. Listings are asserted for clients a PROXY header declares: the client
connects from 127.0.0.1, the configured proxy. A connection from 127.0.0.2 is a peer that is no proxy.
Hits are written in order, so once a callout sent last is listed, everything sent before it is recorded
(`settled`): "nothing listed" is asserted after that, not after a sleep.
"""

from __future__ import annotations

import contextlib
import email
import hashlib
import ipaddress
import itertools
import json
import re
import smtplib
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Server, poll, run_cli

pytestmark = pytest.mark.slow

CORPUS = Path(__file__).parent / "data" / "bounces"
ZONE = "bl.example.org"
TRAP = "no-reply-7@trap.example"
BOUNCES = [
    "flufl.bounce/postfix_01.txt",
    "flanker/bounce/gmail-invalid-address.eml",
    "php-bounce-handler/1.eml",
]
AUTOREPLY = "sisimai-set-of-emails/rfc3834-01.eml"
CHALLENGE = "spamassassin/BOUNCE_MESSAGE/10"
NOT_BACKSCATTER = "sisimai-set-of-emails/not/is-not-bounce-01.eml"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
LISTENING = re.compile(r"trap smtpd listening on (\S+):(\d+)$", re.M)
RECORDED = re.compile(r"recorded (\d+) hit\(s\)")

# Documentation ranges: never on the built-in allowlist.
_v4 = (f"{net}.{n}" for net in ("198.51.100", "203.0.113") for n in range(1, 255))
_v6 = (f"2001:db8::{n:x}" for n in itertools.count(1))


def fresh_ip(version: int = 4) -> str:
    return next(_v4 if version == 4 else _v6)


def corpus(name: str) -> bytes:
    """A labelled message with CRLF line ends, as an MTA sends it (smtplib leaves bytes as they are)."""
    return (CORPUS / name).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def message_id(data: bytes) -> str:
    """What a hit counts once under: the Message-ID, else a hash of the message as received
    (php-bounce-handler/1.eml has none of its own)."""
    found = email.message_from_bytes(data)["Message-ID"]
    return str(found).strip() if found else "sha256:" + hashlib.sha256(data).hexdigest()


# --- the process --------------------------------------------------------------------------------------------


class Smtpd(Server):
    """A `dnsbl trap-smtpd` subprocess (conftest's Server, started with other arguments); its summary goes
    to stdout, kept in a file."""

    def __init__(self, db: Path, *args: str) -> None:
        self.db = db
        self.log_file = tempfile.NamedTemporaryFile("w+", prefix="dnsbl-smtpd-", suffix=".log")  # noqa: SIM115 (closed in close())
        self.out_file = tempfile.NamedTemporaryFile("w+", prefix="dnsbl-smtpd-", suffix=".out")  # noqa: SIM115 (closed in close())
        command = ["trap-smtpd", "--db", str(db), "--zone", ZONE, "--listen", "127.0.0.1:0"]
        command += ["--trap-domain", "trap.example", "--trap-domain", "Other-Trap.example."]
        command += ["--proxy-from", "127.0.0.1/32", "--hostname", "mx.trap.example", *args]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dnsbl_server", *command],
            stderr=self.log_file,
            stdout=self.out_file,
            text=True,
        )
        self.host, self.port = self._wait_listening()

    def _wait_listening(self) -> tuple[str, int]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            match = LISTENING.search(self.log)
            if match:
                return match.group(1), int(match.group(2))
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("trap-smtpd did not start:\n" + self.log)

    @property
    def out(self) -> str:
        with open(self.out_file.name) as handle:
            return handle.read()

    def close(self) -> None:
        super().close()
        self.out_file.close()


@pytest.fixture(scope="module")
def smtpd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Smtpd]:
    """One listener for the module: every test uses its own client addresses."""
    server = Smtpd(tmp_path_factory.mktemp("smtpd") / "list.sqlite")
    yield server
    server.close()


# --- the client ---------------------------------------------------------------------------------------------


class ProxiedSMTP(smtplib.SMTP):
    """smtplib, sending a PROXY header first, as a load balancer in front of the trap MX does."""

    def __init__(self, header: bytes, port: int) -> None:
        self.header = header
        super().__init__("127.0.0.1", port, timeout=10)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = super()._get_socket(host, port, timeout)
        sock.sendall(self.header)
        return sock


def v1(client: str) -> bytes:
    if ipaddress.ip_address(client).version == 4:
        return f"PROXY TCP4 {client} 192.0.2.1 40000 25\r\n".encode()
    return f"PROXY TCP6 {client} 2001:db8::1 40000 25\r\n".encode()


def v2(client: str, command: int = 1) -> bytes:
    """haproxy proxy-protocol.txt 2.2: signature, version 2 and command (1 PROXY, 0 LOCAL), family over
    TCP, address block length, addresses, ports."""
    ip = ipaddress.ip_address(client)
    family, server = (0x11, "192.0.2.1") if ip.version == 4 else (0x21, "2001:db8::1")
    block = ip.packed + ipaddress.ip_address(server).packed + struct.pack("!HH", 40000, 25)
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(block)) + block


def connect(smtpd: Smtpd, via: bytes | None = None, source: str = "127.0.0.1") -> smtplib.SMTP:
    if via is not None:
        return ProxiedSMTP(via, smtpd.port)
    return smtplib.SMTP("127.0.0.1", smtpd.port, timeout=10, source_address=(source, 0))


def deliver(smtpd: Smtpd, data: bytes, via: bytes | None = None, source: str = "127.0.0.1") -> None:
    """A bounce as an MTA sends one: null sender, to a trap, then QUIT."""
    with connect(smtpd, via, source) as client:
        client.ehlo("mx.sender.example")
        assert client.sendmail("", [TRAP], data) == {}


def callout(smtpd: Smtpd, via: bytes | None, sender: str = "", end: str = "QUIT") -> None:
    """Sender verification: RCPT to a trap, then QUIT (or RSET and QUIT) without DATA."""
    with connect(smtpd, via) as client:
        client.ehlo("verifier.example")
        assert client.mail(sender)[0] == 250
        assert client.rcpt(TRAP)[0] == 250
        if end == "RSET":
            assert client.rset()[0] == 250


# --- the results --------------------------------------------------------------------------------------------


def sources(db: Path, ip: str) -> set[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT source FROM entries WHERE zone = ? AND target = ?", (ZONE, ip))
        return {source for (source,) in rows}


def check(db: Path, ip: str) -> dict[str, Any]:
    result = run_cli("check", "--json", ip, db=db)
    assert result.returncode in (0, 1), result.stderr
    zones = json.loads(result.stdout)[0]["zones"]
    return next(z for z in zones if z["zone"] == ZONE)


def wait_listed(smtpd: Smtpd, ip: str) -> dict[str, Any]:
    """Polls the database (cheap), then asks `dnsbl check --json` once."""
    assert poll(lambda: sources(smtpd.db, ip), timeout=15), f"{ip} not listed:\n{smtpd.log}"
    return check(smtpd.db, ip)


def settled(smtpd: Smtpd) -> None:
    """Everything sent so far is recorded: a callout sent now is listed only after what came before."""
    marker = fresh_ip()
    callout(smtpd, v1(marker))
    wait_listed(smtpd, marker)


def assert_not_listed(smtpd: Smtpd, *ips: str) -> None:
    for ip in ips:
        result = check(smtpd.db, ip)
        # entries, not "listed": 127.0.0.2 is the RFC 5782 test point, always listed
        assert not result["entries"] and not result["evidence"], (ip, result)


# --- DATA: bounces, auto-replies, what is not backscatter ---------------------------------------------------


@pytest.mark.parametrize("name", BOUNCES)
def test_a_bounce_lists_the_proxied_client_as_bounce(smtpd: Smtpd, name: str) -> None:
    client = fresh_ip()
    data = corpus(name)
    deliver(smtpd, data, via=v2(client))
    result = wait_listed(smtpd, client)
    assert result["codes"] == ["127.0.0.2"]
    assert [e["source"] for e in result["entries"]] == ["trap:bounce"]
    assert result["evidence"][0]["message_id"] == message_id(data)
    assert result["evidence"][0]["source"] == "smtp"
    assert TRAP not in json.dumps(result) and TRAP not in smtpd.log  # trap addresses are never shown


def test_a_bounce_from_the_direct_peer_is_allowlisted_loopback(smtpd: Smtpd) -> None:
    deliver(smtpd, corpus(BOUNCES[0]), source="127.0.0.2")
    settled(smtpd)
    assert re.search(r"bounce from 127\.0\.0\.2 \(helo 'mx\.sender\.example'", smtpd.log)
    assert_not_listed(smtpd, "127.0.0.2")


@pytest.mark.parametrize(("name", "kind"), [(AUTOREPLY, "autoreply"), (CHALLENGE, "challenge")])
def test_an_auto_reply_or_challenge_lists_as_autoreply(smtpd: Smtpd, name: str, kind: str) -> None:
    client = fresh_ip()
    deliver(smtpd, corpus(name), via=v1(client))
    result = wait_listed(smtpd, client)
    assert result["codes"] == ["127.0.0.3"]
    assert [e["source"] for e in result["entries"]] == ["trap:autoreply"]
    assert result["evidence"][0]["kind"] == kind


def test_what_is_not_backscatter_is_accepted_and_skipped_with_its_reason(smtpd: Smtpd) -> None:
    client = fresh_ip()
    with connect(smtpd, v1(client)) as smtp:
        smtp.ehlo("spammer.example")
        smtp.mail("")
        smtp.rcpt(TRAP)
        assert smtp.data(corpus(NOT_BACKSCATTER))[0] == 250
    settled(smtpd)
    assert_not_listed(smtpd, client)
    assert re.search(rf"skipped message from {re.escape(client)} .*: not backscatter \(", smtpd.log)


def test_the_same_message_in_two_sessions_counts_once(smtpd: Smtpd) -> None:
    client = fresh_ip()
    data = corpus(BOUNCES[1])
    deliver(smtpd, data, via=v1(client))
    deliver(smtpd, data, via=v2(client))
    settled(smtpd)
    assert len(check(smtpd.db, client)["evidence"]) == 1


# --- callouts -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "end"),
    [
        ("", "QUIT"),
        ("", "RSET"),
        ("postmaster@verifier.example", "QUIT"),
        ("PostMaster@verifier.example", "RSET"),
        ("double-bounce@verifier.example", "QUIT"),  # Postfix's default address_verify_sender
    ],
)
def test_a_callout_lists_as_callout(smtpd: Smtpd, sender: str, end: str) -> None:
    client = fresh_ip()
    callout(smtpd, v1(client), sender, end)
    result = wait_listed(smtpd, client)
    assert result["codes"] == ["127.0.0.4"]
    assert [e["source"] for e in result["entries"]] == ["trap:callout"]


def test_one_session_asking_twice_is_one_callout(smtpd: Smtpd) -> None:
    client = fresh_ip()
    with connect(smtpd, v1(client)) as smtp:
        smtp.ehlo("verifier.example")
        for _ in range(2):
            smtp.mail("")
            smtp.rcpt(TRAP)
            smtp.rset()
    wait_listed(smtpd, client)
    settled(smtpd)
    assert len(check(smtpd.db, client)["evidence"]) == 1


def test_a_normal_sender_asking_for_a_trap_is_no_callout(smtpd: Smtpd) -> None:
    quits, resets = fresh_ip(), fresh_ip()
    callout(smtpd, v1(quits), "alice@sender.example", "QUIT")
    callout(smtpd, v1(resets), "bob@sender.example", "RSET")
    settled(smtpd)
    assert_not_listed(smtpd, quits, resets)


# --- relaying -----------------------------------------------------------------------------------------------


def test_recipients_outside_the_trap_domains_get_550_and_list_nobody(smtpd: Smtpd) -> None:
    client = fresh_ip()
    with connect(smtpd, v1(client)) as smtp:
        smtp.ehlo("relay-tester.example")
        assert smtp.mail("")[0] == 250  # a null sender: a callout, were any recipient a trap
        for outside in (
            "victim@elsewhere.example",
            "x@sub.trap.example",
            "x@trap.example.evil",
            "postmaster",
        ):
            code, text = smtp.rcpt(outside)
            assert (code, text[:5]) == (550, b"5.7.1"), outside
        smtp.rset()
        smtp.mail("alice@sender.example")
        assert smtp.rcpt("X@TRAP.EXAMPLE")[0] == 250  # domains in any case
        assert smtp.rcpt("y@other-trap.example")[0] == 250  # given as "Other-Trap.example."
        smtp.rset()
        smtp.mail("bob@sender.example")
        smtp.rcpt("victim@elsewhere.example")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.data(b"Subject: hi\r\n\r\nrelay me\r\n")
        assert refused.value.smtp_code == 503  # no recipient was accepted: nothing to deliver
    settled(smtpd)
    assert_not_listed(smtpd, client)
    assert smtpd.log.count(f"refused relay from {client} ") == 5


# --- PROXY protocol -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "version"), [(v1, 4), (v1, 6), (v2, 4), (v2, 6)])
def test_proxy_headers_from_a_proxy_list_the_declared_client(
    smtpd: Smtpd, header: Callable[[str], bytes], version: int
) -> None:
    client = fresh_ip(version)
    deliver(smtpd, corpus(BOUNCES[2]), via=header(client))
    assert wait_listed(smtpd, client)["codes"] == ["127.0.0.2"]
    assert f"PROXY from 127.0.0.1: client {client}" in smtpd.log
    assert not re.search(r"bounce from 127\.0\.0\.1 ", smtpd.log)  # the proxy is never the relay


def test_an_ipv4_mapped_client_is_listed_as_ipv4(smtpd: Smtpd) -> None:
    client = fresh_ip()
    callout(smtpd, v2(f"::ffff:{client}"))
    assert wait_listed(smtpd, client)["codes"] == ["127.0.0.4"]


def test_a_proxy_health_check_lists_nobody(smtpd: Smtpd) -> None:
    """PROXY v2 LOCAL: the proxy's own connection; its address block means nothing."""
    client = fresh_ip()
    callout(smtpd, v2(client, command=0))
    settled(smtpd)
    assert_not_listed(smtpd, client)
    assert "skipped message from no client" in smtpd.log


def test_a_proxy_header_from_another_peer_is_not_trusted(smtpd: Smtpd) -> None:
    declared = fresh_ip()
    with connect(smtpd, source="127.0.0.2") as smtp:
        code, _ = smtp.docmd(v1(declared).decode().strip())
        assert code == 500  # just a bad command from a peer that is no proxy
        smtp.ehlo("liar.example")
        smtp.mail("")
        smtp.rcpt(TRAP)
    settled(smtpd)
    assert_not_listed(smtpd, declared)
    assert re.search(r"callout from 127\.0\.0\.2 \(helo 'liar\.example'", smtpd.log)


def test_a_binary_proxy_header_from_another_peer_ends_the_session(smtpd: Smtpd) -> None:
    """The v2 signature holds "QUIT\\n" so that a server not expecting it hangs up."""
    declared = fresh_ip()
    with socket.create_connection(
        ("127.0.0.1", smtpd.port), timeout=10, source_address=("127.0.0.2", 0)
    ) as sock:
        sock.sendall(
            v2(declared) + b"EHLO liar.example\r\nMAIL FROM:<>\r\nRCPT TO:<" + TRAP.encode() + b">\r\n"
        )
        replies = read_all(sock)
    assert (
        replies.startswith(b"220 mx.trap.example ESMTP") and b"221" in replies and b"250 2.1.5" not in replies
    )
    settled(smtpd)
    assert_not_listed(smtpd, declared)


def test_a_proxy_sending_no_proxy_header_is_hung_up_on(smtpd: Smtpd) -> None:
    with socket.create_connection(("127.0.0.1", smtpd.port), timeout=15) as sock:
        sock.sendall(b"EHLO sneaky.example\r\nMAIL FROM:<>\r\nRCPT TO:<" + TRAP.encode() + b">\r\nQUIT\r\n")
        assert read_all(sock) == b""  # no greeting, no reply: closed
    settled(smtpd)  # and the listener still works


def read_all(sock: socket.socket) -> bytes:
    """What the server sent until it hung up."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:  # closed with our bytes unread: also hanging up
        pass
    return data


# --- bad input ----------------------------------------------------------------------------------------------


BAD_MESSAGES = {
    "binary": bytes(range(256)).replace(b"\r", b"").replace(b"\n", b"") * 3 + b"\r\n\x00\xff\xfe\r\n",
    "malformed MIME": b"Content-Type: multipart/report; report-type=delivery-status; boundary=\r\n"
    b"Subject: Undelivered Mail\r\n\r\n--\r\n--nothing--\r\nContent-Type: message/delivery-status\r\n",
    "malformed Received": b"Received: from [999.1.2.3] (helo=[ by ;;; for <<>\r\n"
    b"Received: by \r\nReceived: from \xff\xfe (x [::ffff:not-an-ip]) by\r\n"
    b"From: MAILER-DAEMON@mx.example\r\nSubject: Undelivered Mail Returned to Sender\r\n\r\n"
    b"This is the mail system. I'm sorry to have to inform you that your message could not be delivered\r\n",
    "empty": b"",
    "header only": b"Subject: " + b"=?x-unknown?Q?=ff=fe?= " * 30 + b"\r\n",
}


@pytest.mark.parametrize("name", BAD_MESSAGES)
def test_bad_messages_get_an_answer_and_the_listener_goes_on(smtpd: Smtpd, name: str) -> None:
    client = fresh_ip()
    with connect(smtpd, v1(client)) as smtp:
        smtp.ehlo("mx.sender.example")
        smtp.mail("")
        smtp.rcpt(TRAP)
        assert smtp.data(BAD_MESSAGES[name])[0] == 250
    settled(smtpd)  # a later session is recorded
    assert "Traceback" not in smtpd.log


def test_an_address_that_is_not_utf8_is_recorded(smtpd: Smtpd) -> None:
    client = fresh_ip()
    with socket.create_connection(("127.0.0.1", smtpd.port), timeout=10) as sock:
        sock.sendall(v1(client) + b"EHLO mx.sender.example\r\nMAIL FROM:<>\r\n")
        sock.sendall(b"RCPT TO:<caf\xe9\xff@trap.example>\r\nQUIT\r\n")
        assert b"250 2.1.5" in read_all(sock)
    assert wait_listed(smtpd, client)["codes"] == ["127.0.0.4"]


def test_a_line_too_long_and_a_message_too_big_are_refused_and_skipped(smtpd: Smtpd) -> None:
    client = fresh_ip()
    with connect(smtpd, v1(client)) as smtp:
        smtp.ehlo("mx.sender.example")
        too_long = b"Subject: x\r\n\r\n" + b"a" * 5000 + b"\r\n"
        too_big = (b"b" * 998 + b"\r\n") * 11_000  # 11 MB, above ingest.MAX_MESSAGE
        for data, code in ((too_long, 500), (too_big, 552)):
            smtp.mail("")
            smtp.rcpt(TRAP)
            assert smtp.data(data)[0] == code  # the reply after the data, not a 354
    settled(smtpd)
    assert_not_listed(smtpd, client)  # not a callout either: the transaction was refused
    assert smtpd.log.count(f"skipped message from {client} ") == 2


# --- the command --------------------------------------------------------------------------------------------


def test_sigterm_flushes_what_is_queued_and_prints_the_summary(tmp_path: Path) -> None:
    server = Smtpd(tmp_path / "list.sqlite")
    try:
        bouncer, spammer, burst, last = fresh_ip(), fresh_ip(), [fresh_ip() for _ in range(3)], fresh_ip()
        data = corpus(BOUNCES[0])
        deliver(server, data, via=v1(bouncer))
        deliver(server, data, via=v2(bouncer))  # the same message again: a duplicate
        deliver(server, data, source="127.0.0.2")  # loopback: allowlisted
        deliver(server, corpus(NOT_BACKSCATTER), via=v1(spammer))  # skipped
        with connect(server, v1(spammer)) as smtp:
            smtp.ehlo("x")
            smtp.mail("")
            assert smtp.rcpt("victim@elsewhere.example")[0] == 550
        for client in burst:
            callout(server, v1(client))
        wait_listed(server, burst[-1])
        callout(server, v1(last))  # queued, not yet written: SIGTERM must write it
        with connect(server, source="127.0.0.2") as idle:  # a session still open does not hold the exit
            idle.ehlo("idle.example")
            assert server.stop() == 0
        out, log = server.out, server.log
    finally:
        server.close()
    assert out.splitlines() == [
        "10 session(s); backscatter: bounce 3, callout 4; allowlisted 1, duplicate 1, listed 5; "
        "1 relay attempt(s) refused; 1 skipped"
    ]
    listed = json.loads(run_cli("list", "--json", db=server.db).stdout)
    assert sorted((e["target"], e["source"]) for e in listed) == sorted(
        [(bouncer, "trap:bounce"), *((c, "trap:callout") for c in (*burst, last))]
    )
    batches = [int(n) for n in RECORDED.findall(log)]
    assert sum(batches) == 7 and max(batches) >= 2, log  # a burst is one batch, one transaction


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--trap-domain", "trap.example", "--proxy-from", "10.0.0.0/33"], "--proxy-from"),
        (["--trap-domain", "trap.example", "--listen", "localhost"], "--listen"),
        (["--trap-domain", "x@trap.example"], "--trap-domain"),
        ([], "--trap-domain"),
    ],
)
def test_bad_arguments_are_named_and_exit_2(tmp_path: Path, args: list[str], named: str) -> None:
    db = tmp_path / "list.sqlite"
    result = run_cli("trap-smtpd", "--zone", ZONE, *args, db=db)
    assert result.returncode == 2 and named in result.stderr, result.stderr
    assert result.stderr.startswith("dnsbl: error: ") and "Traceback" not in result.stderr
    assert not db.exists()  # refused before anything was created


def test_a_busy_port_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        listen = f"127.0.0.1:{port}"
        result = run_cli(
            "trap-smtpd", "--zone", ZONE, "--trap-domain", "t.example", "--listen", listen, db=tmp_path / "db"
        )
    assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr
