"""received: the relay finder (which server handed trap mail to the trap MX) and the Received header reader.

Layers: agreement with the labelled corpus in tests/data/bounces (LABELS.tsv's first external hop and the
relay behind the trap owner's forwarder); tables of hand-written Received headers for each MTA's format and
each rule of the walk; hypothesis fuzzing for the promise that nothing raises on any input.
"""

from __future__ import annotations

import email
import email.message
import ipaddress
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_traps import FRAGMENTS, FUZZ, LABELS, agreement, corpus_message, message

from dnsbl_server import received
from dnsbl_server.received import NoRelay, Relay
from dnsbl_server.traps import parse_message

OWN_FORWARDER = [ipaddress.ip_network("80.169.141.78/32")]  # the SpamAssassin trap owner's forwarder


def chain(*values: str) -> email.message.Message:
    """A message whose Received headers are `values`, topmost first."""
    return message(*(f"Received: {value}" for value in values), "Subject: x")


# --- the corpus --------------------------------------------------------------------------------------------


def test_relay_agrees_with_first_external_hop_when_internal_ranges_are_trusted() -> None:
    """The labels' rule (skip loopback, private and link-local peers) is ours with NON_PUBLIC trusted."""
    pairs = []
    for label in LABELS:
        found = received.relay(corpus_message(label), trusted=received.NON_PUBLIC)
        got = str(found.ip) if isinstance(found, Relay) else ""
        pairs.append(
            (
                f"{label.path}: label {label.first_external_hop or '-'}, got {got or found}",
                got == label.first_external_hop,
            )
        )
    share, wrong = agreement(pairs)
    assert share >= 0.95, f"{share:.1%} agree; different:\n" + "\n".join(wrong)


def test_relay_without_trusted_stops_at_internal_hops_and_otherwise_agrees() -> None:
    """With nothing trusted a private peer is not stepped over (it may be a NAT hiding the sender): the
    answer is the label's address, or no relay because of a non-public hop, or no relay where the label
    has none."""
    pairs = []
    for label in LABELS:
        found = received.relay(corpus_message(label))
        if isinstance(found, Relay):
            ok = str(found.ip) == label.first_external_hop
        else:
            ok = not label.first_external_hop or "not a public address" in found.reason
        pairs.append((f"{label.path}: label {label.first_external_hop or '-'}, got {found}", ok))
    share, wrong = agreement(pairs)
    assert share >= 0.95, f"{share:.1%} agree; different:\n" + "\n".join(wrong)


def test_relay_behind_the_trap_owners_own_forwarder() -> None:
    cases = [label for label in LABELS if label.relay_behind_forwarder]
    assert len(cases) == 8
    pairs = []
    for label in cases:
        found = received.relay(corpus_message(label), trusted=OWN_FORWARDER)
        got = str(found.ip) if isinstance(found, Relay) else found
        pairs.append(
            (
                f"{label.path}: want {label.relay_behind_forwarder}, got {got}",
                got == label.relay_behind_forwarder,
            )
        )
    share, wrong = agreement(pairs)
    assert share == 1.0, "\n".join(wrong)


def test_corpus_run_is_fast() -> None:
    messages = [corpus_message(label) for label in LABELS]
    start = time.perf_counter()
    for each in messages:
        received.relay(each)
    assert time.perf_counter() - start < 5


# --- Received headers, by hand ----------------------------------------------------------------------------

TAIL = "; Mon, 1 Jan 2024 00:00:00 +0000"


def hop(name: str, peer: str, by: str, *header: str) -> object:
    return pytest.param(" ".join(header), peer, by, id=name)


MX = "mx.trap.example"
RECEIVED_CASES = [
    hop(
        "Postfix",
        "192.0.2.1",
        MX,
        "from mail.example.com (mail.example.com [192.0.2.1])",
        "\n\tby mx.trap.example (Postfix) with ESMTPS id 4Xyz for <t@trap.example>",
    ),
    hop(
        "Postfix unknown [ip]",
        "198.51.100.7",
        MX,
        "from helo.example (unknown [198.51.100.7]) by mx.trap.example (Postfix) with ESMTP id AB",
    ),
    hop(
        "Postfix, HELO is an address literal",
        "198.51.100.7",
        MX,
        "from [203.0.113.99] (unknown [198.51.100.7]) by mx.trap.example (Postfix)",
    ),
    hop(
        "Postfix IPv6",
        "2001:db8::1",
        MX,
        "from mail.example.com (mail.example.com [IPv6:2001:db8::1]) by mx.trap.example (Postfix)",
    ),
    hop(
        "Postfix with TLS comments",
        "192.0.2.1",
        MX,
        "from mx.example (mx.example [192.0.2.1])",
        "(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519)",
        "(No client certificate requested) by mx.trap.example (Postfix) with ESMTPS id X",
    ),
    hop(
        "Exim",
        "192.0.2.1",
        MX,
        "from mail.example.com ([192.0.2.1] helo=mail.example.com)",
        "by mx.trap.example with esmtps (TLS1.3) (Exim 4.96) (envelope-from <>) id 1abcde-000Fgh-IJ",
    ),
    hop(
        "Exim, no reverse DNS, literal HELO",
        "192.0.2.1",
        MX,
        "from [192.0.2.1] (helo=[203.0.113.5]) by mx.trap.example with esmtp (Exim 4.96)",
    ),
    hop(
        "Exim with port",
        "192.0.2.1",
        MX,
        "from host.example ([192.0.2.1]:51234 helo=host.example) by mx.trap.example with esmtp",
    ),
    hop(
        "Exim IPv6",
        "2001:db8::25",
        MX,
        "from [2001:db8::25] (helo=mail.example) by mx.trap.example with esmtp (Exim 4.96)",
    ),
    hop(
        "Sendmail",
        "192.0.2.1",
        MX,
        "from helo.example (rdns.example [192.0.2.1]) by mx.trap.example (8.17.1/8.17.1) with ESMTP id 401",
    ),
    hop(
        "Sendmail, may be forged",
        "192.0.2.1",
        MX,
        "from helo.example (rdns.example [192.0.2.1] (may be forged)) by mx.trap.example (8.17.1/8.17.1)",
    ),
    hop(
        "Sendmail ident",
        "192.0.2.1",
        MX,
        "from helo (IDENT:root@rdns.example [192.0.2.1]) by mx.trap.example (8.17.1/8.17.1)",
    ),
    hop(
        "Sendmail IPv6",
        "2001:db8::2",
        MX,
        "from helo ([IPv6:2001:db8::2]) by mx.trap.example (8.17.1/8.17.1) with ESMTP",
    ),
    hop(
        "qmail",
        "192.0.2.1",
        MX,
        "from unknown (HELO mail.example.com) (192.0.2.1)\n  by mx.trap.example",
        "with SMTP",
    ),
    hop(
        "qmail, literal HELO",
        "192.0.2.1",
        MX,
        "from unknown (HELO [203.0.113.5]) (192.0.2.1) by mx.trap.example with SMTP",
    ),
    hop(
        "qmail user@ip",
        "192.0.2.1",
        MX,
        "from mail.example.com (HELO mail) (postmaster@192.0.2.1) by mx.trap.example with SMTP",
    ),
    hop(
        "Exchange",
        "10.1.2.3",
        "exch02.corp.example",
        "from EXCH01.corp.example (10.1.2.3) by EXCH02.corp.example (10.1.2.4) with Microsoft SMTP Server",
        "(version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.1.2507.39",
    ),
    hop(
        "Exchange SMTPSVC",
        "192.0.2.1",
        "exchange.trap.example",
        "from mail.example.com ([192.0.2.1]) by exchange.trap.example with Microsoft SMTPSVC(6.0.3790.4675)",
    ),
    hop(
        "Office 365 IPv6",
        "2603:10b6:5:1a0::12",
        "bn6pr01mb5678.prod.exchangelabs.com",
        "from DM6PR01MB1234.prod.exchangelabs.com (2603:10b6:5:1a0::12) by",
        "BN6PR01MB5678.prod.exchangelabs.com (2603:10b6:404:12::34) with Microsoft SMTP Server",
    ),
    hop(
        "Gmail",
        "209.85.220.41",
        "mx.google.com",
        "from mail-sor-f41.google.com (mail-sor-f41.google.com. [209.85.220.41]) by mx.google.com",
        "with SMTPS id a1sor123 for <t@trap.example> (Google Transport Security)",
    ),
    hop("mapped IPv6 literal", "192.0.2.9", MX, "from host (host [IPv6:::ffff:192.0.2.9]) by", MX),
    hop("mapped IPv6 bare", "192.0.2.9", MX, "from host (::ffff:192.0.2.9) by mx.trap.example"),
    hop(
        "fetchmail",
        "127.0.0.1",
        "box.example",
        "from localhost [127.0.0.1] by box.example with IMAP (fetchmail-6.4.37)",
    ),
    hop("by clause with a trailing dot", "192.0.2.1", MX, "from a (a [192.0.2.1]) by MX.Trap.Example."),
]


@pytest.mark.parametrize(("header", "peer", "by"), RECEIVED_CASES)
def test_parse_received(header: str, peer: str, by: str) -> None:
    found = received.parse_received(header + TAIL)
    assert (found.form, str(found.ip), found.by) == ("from", peer, by)
    assert type(found.ip) is type(ipaddress.ip_address(peer))


NO_PEER = [  # (header, form), by name
    pytest.param("by mx.trap.example (Postfix, from userid 0) id 1", "local", id="Postfix local submission"),
    pytest.param("(from root@localhost) by host.example (8.17.1/Submit) id X", "local", id="Sendmail submit"),
    pytest.param("(qmail 1234 invoked from network)", "local", id="qmail note"),
    pytest.param("by 2002:a05:6102:3b0b:b0:45a::5678 with SMTP id x12csp345", "local", id="Gmail by-only"),
    pytest.param("from mail by host.example with local (Exim 4.96) id 1abc", "local", id="Exim local"),
    pytest.param("garbage here \x00 \udcff", "unreadable", id="garbage"),
    pytest.param("", "unreadable", id="empty"),
]


@pytest.mark.parametrize(("header", "form"), NO_PEER)
def test_parse_received_without_a_peer(header: str, form: str) -> None:
    found = received.parse_received(header + TAIL)
    assert (found.form, found.ip) == (form, None)


def test_relay_skips_local_and_loopback_hops() -> None:
    found = received.relay(
        chain(
            "by mx.trap.example (Postfix, from userid 0) id 1" + TAIL,
            "from localhost (localhost [127.0.0.1]) by mx.trap.example (Postfix)" + TAIL,
            "from mailbox (mailbox [IPv6:::1]) by mx.trap.example (Postfix)" + TAIL,
            "from bouncer.example (bouncer.example [192.0.2.1]) by mx.trap.example (Postfix)" + TAIL,
            "from forged.example (forged.example [203.0.113.66]) by bouncer.example" + TAIL,
        )
    )
    assert isinstance(found, Relay)
    assert (found.ip, found.hop.index, len(found.skipped)) == (ipaddress.ip_address("192.0.2.1"), 3, 3)
    assert "loopback" in found.skipped[1]


def test_relay_skips_trusted_forwarders() -> None:
    msg = chain(
        "from fwd.example (fwd.example [198.51.100.1]) by mailbox.example" + TAIL,
        "from bouncer.example (bouncer.example [192.0.2.1]) by fwd.example" + TAIL,
    )
    assert received.relay(msg).ip == ipaddress.ip_address("198.51.100.1")
    found = received.relay(msg, trusted=[ipaddress.ip_network("198.51.100.0/24")])
    assert found.ip == ipaddress.ip_address("192.0.2.1") and "trusted" in found.skipped[0]


def test_relay_must_be_received_by_a_trap_mx() -> None:
    msg = chain("from bouncer.example (bouncer.example [192.0.2.1]) by MX1.trap.example." + TAIL)
    assert isinstance(received.relay(msg, trap_mx=["mx1.trap.example", "mx2.trap.example"]), Relay)
    assert isinstance(received.relay(msg, trap_mx=["mx1.trap.example."]), Relay)
    refused = received.relay(msg, trap_mx=["mx2.trap.example"])
    assert isinstance(refused, NoRelay) and "not a trap MX" in refused.reason


def test_relay_never_reads_below_the_first_untrusted_hop() -> None:
    """A hop from an untrusted host other than the trap MX ends the walk: the headers below are the
    sender's, even when one of them claims the trap MX."""
    msg = chain(
        "from filter.example (filter.example [198.51.100.5]) by mailbox.example" + TAIL,
        "from victim.example (victim.example [192.0.2.77]) by mx.trap.example" + TAIL,
    )
    found = received.relay(msg, trap_mx=["mx.trap.example"])
    assert isinstance(found, NoRelay) and "198.51.100.5" in found.reason


def test_an_unreadable_hop_ends_the_walk() -> None:
    msg = chain(
        "from mail.example by mx.trap.example with SMTP" + TAIL,
        "from victim.example (victim.example [192.0.2.77]) by mail.example" + TAIL,
    )
    found = received.relay(msg)
    assert isinstance(found, NoRelay) and "names no peer address" in found.reason


def test_a_private_peer_is_not_stepped_over() -> None:
    """A NAT or proxy in front of the MX hides the sender: the next header down is the sender's own."""
    msg = chain(
        "from lb (unknown [172.17.0.1]) by mx.trap.example (Postfix)" + TAIL,
        "from x (x [192.0.2.77]) by victim.example" + TAIL,
    )
    found = received.relay(msg)
    assert isinstance(found, NoRelay) and "not a public address" in found.reason
    assert received.relay(msg, trusted=received.NON_PUBLIC).ip == ipaddress.ip_address("192.0.2.77")


def test_relay_ipv6_and_mapped() -> None:
    v6 = received.relay(chain("from a (a [IPv6:2001:db8::1]) by mx.trap.example" + TAIL))
    mapped = received.relay(chain("from a (a [IPv6:::ffff:192.0.2.1]) by mx.trap.example" + TAIL))
    assert v6.ip == ipaddress.IPv6Address("2001:db8::1")
    assert mapped.ip == ipaddress.IPv4Address("192.0.2.1")


def test_relay_without_usable_headers() -> None:
    assert received.relay(message("Subject: x")) == NoRelay("no Received header")
    local = received.relay(chain(*["by mx.trap.example (Postfix, from userid 0) id 1" + TAIL] * 100))
    assert isinstance(local, NoRelay) and len(local.skipped) == received.MAX_RECEIVED
    garbage = received.relay(chain("((((((", "from [999.1.1.1] by x", "\x00\xff"))
    assert isinstance(garbage, NoRelay)


# --- never raises ----------------------------------------------------------------------------------------


def exercise(msg: email.message.Message) -> None:
    for answer in (received.relay(msg), received.relay(msg, trusted=received.NON_PUBLIC, trap_mx=["c"])):
        assert isinstance(answer, Relay | NoRelay)


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes_never_raise(data: bytes) -> None:
    exercise(email.message_from_bytes(data))
    exercise(parse_message(data))


@FUZZ
@given(st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=30)), max_size=40))
def test_mime_shaped_bytes_never_raise(chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    exercise(email.message_from_bytes(data))
    exercise(parse_message(data))


@FUZZ
@given(st.text(max_size=500))
def test_any_received_text_parses(text: str) -> None:
    hop = received.parse_received(text)
    assert hop.form in ("from", "local", "unreadable")
