"""Bad trap mail never breaks an ingest run.

The issue's rule: "Malformed MIME, wrong charsets, huge or binary messages, a Received header with garbage:
the message is classified or skipped with a logged reason; the run goes on; nothing half-written."

One Maildir holds a real bounce and one message of each kind of bad input. `dnsbl ingest --once` must read
them all, move them all to cur/, list exactly the relays of the ones that are backscatter with a readable
relay, skip the rest with a reason, and leave a database `dnsbl list` reads. The same inputs go to
traps.verdict and received.relay directly, which must not raise.

Messages a person can read are files in tests/data/badmail/; binary, huge, NUL-laden, wrongly encoded and
deeply nested ones are made here.
"""

from __future__ import annotations

import ipaddress
import json
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import run_cli

from dnsbl_server import received, traps
from dnsbl_server.ingest import MAX_MESSAGE
from dnsbl_server.traps import Kind

DATA = Path(__file__).parent / "data"
ZONE = "bl.example.org"
RECEIVED = (  # the relay is 198.51.100.<number>
    b"Received: from mx.bouncer.example (mx.bouncer.example [198.51.100.%d])\n"
    b"\tby mx.trap.example (Postfix) with ESMTP id 4Tq; Mon, 1 Jan 2024 00:00:00 +0000\n"
)
DAEMON = b"From: MAILER-DAEMON@mx.bouncer.example (Mail Delivery System)\nTo: trap@trap.example\n"
SPAMMER = b"From: Deals <deals@shop.example>\nTo: trap@trap.example\nSubject: Cheap watches\n"


def fixture(name: str) -> Callable[[], bytes]:
    return lambda: (DATA / "badmail" / name).read_bytes()


def real_bounce() -> bytes:
    return (DATA / "bounces" / "flanker" / "bounce" / "mailbox-full.eml").read_bytes()


def bad_charset() -> bytes:
    """A Postfix bounce in a charset that does not exist, with bytes invalid in UTF-8 in headers and body."""
    return (
        RECEIVED % 3
        + b"From: Syst\xe8me de messagerie <MAILER-DAEMON@mx.bouncer.example>\n"
        + b"To: =?x-no-such?b?//79?= <trap@trap.example>\n"
        + b"Subject: Undelivered Mail Returned to Sender \xff\xfe\xe9\n"
        + b'Content-Type: text/plain; charset="x-no-such"\nContent-Transfer-Encoding: 8bit\n\n'
        + b"This is the mail system at host mx.bouncer.example.\n\xff\xfe\xc3\x28 \xe9chec\n"
        + b"<trap@trap.example>: user unknown\n"
    )


def binary() -> bytes:
    return random.Random(8).randbytes(64 * 1024)


def huge() -> bytes:
    """A 20 MB bounce (twice MAX_MESSAGE): its notice comes first, then a 20 MB attachment."""
    head = (
        RECEIVED % 5
        + DAEMON
        + b"Subject: Undelivered Mail Returned to Sender\nContent-Type: multipart/mixed; boundary=b\n\n"
        + b"--b\nContent-Type: text/plain\n\nThis is the mail system at host mx.bouncer.example.\n"
        + b"<trap@trap.example>: user unknown\n"
        + b"--b\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
    )
    line = b"QUJD" * 19 + b"\n"
    return head + line * (20 * 2**20 // len(line)) + b"--b--\n"


def nul_bytes() -> bytes:
    """An Exim bounce with NUL bytes in a header, in the Message-ID (stored as evidence) and in the body."""
    return (
        RECEIVED % 7
        + b"From: MAILER-DAEMON@mx.bouncer.example\x00\nTo: trap@trap.example\n"
        + b"Subject: Mail delivery failed: returning message to sender\n"
        + b"Message-ID: <nul\x00bytes@mx.bouncer.example>\n\n"
        + b"This message was created automatically by mail delivery software.\x00\x00\n"
        + b"\x00" * 1000
        + b"\n  trap@trap.example\n    user unknown\n"
    )


def nested(depth: int, headers: bytes) -> bytes:
    """Multiparts `depth` deep (each the only part of the one above), a text part at the bottom."""
    opening = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(depth)
    )
    return headers + opening + b"Content-Type: text/plain\n\nBuy now, 90% off.\n"


def many_parts() -> bytes:
    """Two million empty parts in 10 MB: the stdlib parser would build an object for each."""
    head = RECEIVED % 12 + SPAMMER + b"Content-Type: multipart/mixed; boundary=b\n\n"
    return head + b"--b\n\n" * 2_000_000


class Case(NamedTuple):
    make: Callable[[], bytes]
    kind: Kind | None  # what verdict decides
    relay: str | None  # what received.relay finds; listed when kind is not None too


CASES = {
    "real-bounce": Case(real_bounce, Kind.BOUNCE, "205.188.249.66"),
    "broken-boundary": Case(fixture("broken-boundary.eml"), Kind.BOUNCE, "198.51.100.2"),  # DSN by its header
    "bad-charset": Case(bad_charset, Kind.BOUNCE, "198.51.100.3"),
    "binary": Case(binary, None, None),
    "huge": Case(huge, Kind.BOUNCE, "198.51.100.5"),
    "garbage-received": Case(fixture("garbage-received.eml"), Kind.BOUNCE, None),  # not the forged one below
    "nul-bytes": Case(nul_bytes, Kind.BOUNCE, "198.51.100.7"),
    "empty": Case(fixture("empty.eml"), None, None),
    "headers-only": Case(fixture("headers-only.eml"), Kind.BOUNCE, "198.51.100.9"),
    "nested-200": Case(lambda: nested(200, RECEIVED % 10 + SPAMMER), None, "198.51.100.10"),
    "nested-5000": Case(  # deeper than the stdlib parser recurses: read as headers and text
        lambda: nested(5000, RECEIVED % 11 + DAEMON + b"X-Failed-Recipients: trap@trap.example\n"),
        Kind.BOUNCE,
        "198.51.100.11",
    ),
    "many-parts": Case(many_parts, None, "198.51.100.12"),
}
LISTED = {case.relay for case in CASES.values() if case.kind is not None and case.relay is not None}
NOT_BACKSCATTER = sum(case.kind is None for case in CASES.values())
NO_RELAY = sum(case.kind is not None and case.relay is None for case in CASES.values())


# --- the pure layer, input by input ------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_classified_and_its_relay_read_without_raising(name: str) -> None:
    case = CASES[name]
    data = case.make()
    start = time.perf_counter()
    message = traps.parse_message(data)
    found = traps.verdict(message)
    relay = received.relay(message)
    assert time.perf_counter() - start < 5
    assert found.kind == case.kind, found.reason
    assert (str(relay.ip) if isinstance(relay, received.Relay) else None) == case.relay, relay


def test_the_huge_message_is_bigger_than_the_ingester_reads() -> None:
    data = huge()
    assert len(data) > 20_000_000 > MAX_MESSAGE
    assert traps.verdict(traps.parse_message(data[:MAX_MESSAGE])).kind is Kind.BOUNCE


def test_garbage_received_ends_the_walk_without_reading_the_forged_header_below() -> None:
    found = received.relay(traps.parse_message(fixture("garbage-received.eml")()))
    assert isinstance(found, received.NoRelay)
    assert "999.1.2.3" in found.reason and "203.0.113.6" not in found.reason


@pytest.mark.parametrize("depth", [200, 330, 1000, 50_000])
def test_deep_nesting_is_classified_past_the_parser_recursion(depth: int) -> None:
    """Past some 300 levels the stdlib parser raises RecursionError; the message is then headers and text."""
    headers = RECEIVED % 11 + DAEMON + b"X-Failed-Recipients: trap@trap.example\nSubject: failure notice\n"
    message = traps.parse_message(nested(depth, headers))
    assert traps.verdict(message).kind is Kind.BOUNCE
    assert received.relay(message).ip == ipaddress.ip_address("198.51.100.11")


def test_parts_past_the_delimiter_limit_are_not_parsed() -> None:
    data = b"Content-Type: multipart/mixed; boundary=b\n\n" + b"--b\nContent-Type: text/plain\n\nx\n" * 5000
    parts = list(traps.parse_message(data).walk())
    assert len(parts) == traps.MAX_DELIMITERS  # the top and the parts before the last delimiter kept


# --- the real CLI over one Maildir of them all -----------------------------------------------------------


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    box = tmp_path / "Maildir"
    (box / "new").mkdir(parents=True)
    for number, (name, case) in enumerate(CASES.items()):
        (box / "new" / f"17000000{number:02}.{name}.trap").write_bytes(case.make())
    return box


def listing(db: Path) -> set[str]:
    result = run_cli("list", "--zone", ZONE, "--json", db=db)
    assert result.returncode == 0, result.stderr
    return {row["target"] for row in json.loads(result.stdout)}


def test_a_run_over_bad_mail_goes_on_and_lists_only_what_it_should(maildir: Path, db: Path) -> None:
    result = run_cli("ingest", "--once", "--zone", ZONE, "--maildir", str(maildir), db=db)
    assert result.returncode == 0, result.stderr
    assert f"{len(CASES)} message(s) read; backscatter: bounce {len(LISTED)}; listed {len(LISTED)};" in (
        result.stdout
    )
    assert f"skipped {NOT_BACKSCATTER}: not backscatter" in result.stdout
    assert f"skipped {NO_RELAY}: no usable relay" in result.stdout
    assert not list((maildir / "new").iterdir())
    assert sorted(p.name.split(".")[1] for p in (maildir / "cur").iterdir()) == sorted(CASES)
    assert listing(db) == LISTED
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM hits").fetchone() == (len(LISTED),)


def test_a_second_run_reads_nothing_and_changes_nothing(maildir: Path, db: Path) -> None:
    assert run_cli("ingest", "--once", "--zone", ZONE, "--maildir", str(maildir), db=db).returncode == 0
    again = run_cli("ingest", "--once", "--zone", ZONE, "--maildir", str(maildir), db=db)
    assert again.returncode == 0 and "0 message(s) read" in again.stdout
    assert listing(db) == LISTED
