"""traps: the pure trap-mail classifier (the relay finder is tested in test_received.py).

Layers: agreement with the labelled corpus in tests/data/bounces (150 real messages, see SOURCES.md there);
tables of hand-written messages for each rule; hypothesis fuzzing for the promise that nothing raises on any
input.
"""

from __future__ import annotations

import email
import email.message
import time
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnsbl_server import traps
from dnsbl_server.traps import Kind

CORPUS = Path(__file__).parent / "data" / "bounces"
KIND_OF_LABEL = {  # LABELS.tsv classes -> our kinds; the negatives map to None
    "bounce": Kind.BOUNCE,
    "delay": Kind.BOUNCE,
    "virus-notice": Kind.BOUNCE,
    "filter-notice": Kind.BOUNCE,
    "autoreply": Kind.AUTOREPLY,
    "challenge-response": Kind.CHALLENGE,
    "feedback-report": None,
    "mdn": None,
    "not-backscatter": None,
}


class Label(NamedTuple):
    path: str
    expected: str
    basis: str
    first_external_hop: str
    relay_behind_forwarder: str


def _labels() -> list[Label]:
    lines = (CORPUS / "LABELS.tsv").read_text(encoding="utf-8").splitlines()
    return [Label(*line.split("\t")[:5]) for line in lines if line and not line.startswith("#")]


LABELS = _labels()


def corpus_message(label: Label) -> email.message.Message:
    return traps.parse_message((CORPUS / label.path).read_bytes())


def agreement(pairs: list[tuple[str, bool]]) -> tuple[float, list[str]]:
    """Share of True, and the names of the False ones."""
    return sum(ok for _, ok in pairs) / len(pairs), [name for name, ok in pairs if not ok]


def message(*headers: str, body: str = "") -> email.message.Message:
    """A message from header lines ("Name: value") and a body, through the same parser as the ingester."""
    return traps.parse_message(("\n".join(headers) + "\n\n" + body).encode("utf-8"))


# --- the corpus --------------------------------------------------------------------------------------------


def test_corpus_is_complete_with_its_licences() -> None:
    assert len(LABELS) == 150
    assert {label.expected for label in LABELS} <= KIND_OF_LABEL.keys()
    assert [label.path for label in LABELS if not (CORPUS / label.path).is_file()] == []
    assert (CORPUS / "SOURCES.md").is_file() and (CORPUS / "spamassassin" / "NOTICE.source").is_file()
    folders = {label.path.split("/")[0] for label in LABELS}
    assert [f for f in sorted(folders) if not (CORPUS / f / "LICENSE.source").is_file()] == []


def test_backscatter_or_not_agrees_with_labels() -> None:
    pairs = []
    for label in LABELS:
        found = traps.verdict(corpus_message(label))
        expected = KIND_OF_LABEL[label.expected] is not None
        pairs.append(
            (
                f"{label.path} ({label.expected}, got {found.kind}: {found.reason})",
                (found.kind is not None) == expected,
            )
        )
    share, wrong = agreement(pairs)
    assert share >= 0.95, f"{share:.1%} agree; misclassified:\n" + "\n".join(wrong)


def test_kind_agrees_with_labels() -> None:
    pairs = []
    for label in (label for label in LABELS if KIND_OF_LABEL[label.expected] is not None):
        found = traps.verdict(corpus_message(label))
        pairs.append(
            (
                f"{label.path} ({label.expected}, got {found.kind}: {found.reason})",
                found.kind == KIND_OF_LABEL[label.expected],
            )
        )
    share, wrong = agreement(pairs)
    assert share >= 0.90, f"{share:.1%} of the kinds agree; wrong:\n" + "\n".join(wrong)


def test_corpus_run_is_fast() -> None:
    messages = [corpus_message(label) for label in LABELS]
    start = time.perf_counter()
    for each in messages:
        traps.verdict(each)
    assert time.perf_counter() - start < 5


# --- classification rules, by hand -------------------------------------------------------------------------

DSN = """From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
Subject: Delayed Mail (still being retried)
Content-Type: multipart/report; report-type=delivery-status; boundary="b"

--b
Content-Type: text/plain

The mail system will continue delivery attempts.
--b
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; nobody@example.org
Action: {action}
Status: 4.4.1
--b--
"""
MDN = """From: {sender}
Subject: {subject}
{extra}Content-Type: multipart/report; report-type=disposition-notification; boundary="b"

--b
Content-Type: text/plain

Your message was {what}.
--b
Content-Type: message/disposition-notification

Reporting-UA: example.org; Dovecot Mail Delivery Agent
Final-Recipient: rfc822; joe@example.org
Disposition: {disposition}
--b--
"""
ARF = """From: abuse@example.net
Subject: FW: cheap pills
Content-Type: multipart/report; report-type=feedback-report; boundary="b"

--b
Content-Type: text/plain

This is an email abuse report. The original message could not be delivered to us, 550 5.7.1.
--b
Content-Type: message/feedback-report

Feedback-Type: abuse
--b--
"""


def raw(text: str) -> email.message.Message:
    return traps.parse_message(text.encode("utf-8"))


def case(name: str, msg: email.message.Message, kind: Kind | None) -> object:
    return pytest.param(msg, kind, id=name)


MAILER_DAEMON = "From: Mail Delivery System <MAILER-DAEMON@mx.example>"
CLASSIFY_CASES = [
    # structured reports
    case("DSN, delayed", raw(DSN.format(action="delayed")), Kind.BOUNCE),
    case("DSN, failed", raw(DSN.format(action="failed")), Kind.BOUNCE),
    case("ARF is not backscatter even with failure words", raw(ARF), None),
    case(
        "read receipt",
        raw(
            MDN.format(
                sender="Joe <joe@example.org>",
                subject="Read: lunch",
                extra="",
                what="displayed",
                disposition="manual-action/MDN-sent-manually; displayed",
            )
        ),
        None,
    ),
    case(
        "Sieve reject (RFC 5429)",
        raw(
            MDN.format(
                sender="Mail Delivery Subsystem <postmaster@example.org>",
                subject="Automatically rejected mail",
                extra="Auto-Submitted: auto-replied (rejected)\n",
                what="rejected",
                disposition="automatic-action/MDN-sent-automatically; deleted",
            )
        ),
        Kind.BOUNCE,
    ),
    case(
        "Exim X-Failed-Recipients",
        message(MAILER_DAEMON, "X-Failed-Recipients: a@example.org", "Subject: whatever"),
        Kind.BOUNCE,
    ),
    case(
        "sendmail Auto-Submitted failure",
        message("Auto-Submitted: auto-generated (failure)", "Subject: x"),
        Kind.BOUNCE,
    ),
    case(
        "Exchange NDR header",
        message("X-MS-Exchange-Message-Is-Ndr:", "Subject: Undeliverable: hi"),
        Kind.BOUNCE,
    ),
    # non-standard bounces
    case(
        "qmail",
        message(
            "From: MAILER-DAEMON@mail.example.com",
            "Subject: failure notice",
            body="Hi. This is the qmail-send program at mail.example.com.\n"
            "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
            "<a@example.com>:\nSorry, no mailbox here by that name. (#5.1.1)\n"
            "--- Below this line is a copy of the message.\n",
        ),
        Kind.BOUNCE,
    ),
    case(
        "Exim, no MIME",
        message(
            MAILER_DAEMON,
            "Subject: Mail delivery failed: returning message to sender",
            body="This message was created automatically by mail delivery software.\n",
        ),
        Kind.BOUNCE,
    ),
    case(
        "Exchange 2003 text",
        message(
            "From: System Administrator <postmaster@example.jp>",
            "Subject: Undeliverable: hello",
            body="Your message\n did not reach the following recipient(s):\n"
            "a@example.jp on Thu\n The recipient name is not recognized",
        ),
        Kind.BOUNCE,
    ),
    case(
        "German bounce",
        message(
            "From: postmaster@example.de",
            "Subject: Unzustellbar: Angebot",
            body="Die Nachricht konnte nicht zugestellt werden.\n550 5.1.1 Benutzer unbekannt",
        ),
        Kind.BOUNCE,
    ),
    case(
        "Japanese bounce",
        message(
            "From: MAILER-DAEMON@example.jp",
            "Subject: 配信不能のお知らせ",
            body="次の宛先に配信できませんでした。\n550 5.1.1 <a@example.jp>... User unknown",
        ),
        Kind.BOUNCE,
    ),
    case(
        "Russian bounce, RFC 2047 subject",
        message(
            "From: mailer-daemon@example.ru",
            "Subject: =?UTF-8?B?0J3QtdC00L7RgdGC0LDQstC70LXQvdC90L7QtSDRgdC+0L7QsdGJ0LXQvdC40LU=?=",
            body="Сообщение не может быть доставлено.\n550 5.1.1 unknown user",
        ),
        Kind.BOUNCE,
    ),
    case(
        "virus notice to the forged sender",
        message(
            "From: MailScanner <postmaster@example.pl>",
            "Subject: Virus detected in a message you sent",
            body="Our scanner found the W32/Netsky virus.",
        ),
        Kind.BOUNCE,
    ),
    case(
        "filter notice",
        message(
            "From: MAILER-DAEMON <>",
            "Subject: Your mail was blocked",
            body="Your message was blocked by our bulk email filter.",
        ),
        Kind.BOUNCE,
    ),
    case(
        "a bounce that is also Auto-Submitted: auto-replied stays a bounce",
        message(
            MAILER_DAEMON,
            "Auto-Submitted: auto-replied",
            "Subject: Undelivered Mail Returned to Sender",
            body="This is the mail system at host example.com.\n<a@example.com>: user unknown",
        ),
        Kind.BOUNCE,
    ),
    # auto-replies (RFC 3834 and older conventions)
    case(
        "Auto-Submitted: auto-replied",
        message("From: a@example.org", "Auto-Submitted: auto-replied", "Subject: Re: hello"),
        Kind.AUTOREPLY,
    ),
    case("X-Autoreply", message("From: a@example.org", "X-Autoreply: yes", "Subject: hello"), Kind.AUTOREPLY),
    case("X-Autorespond", message("From: a@example.org", "X-Autorespond: hi", "Subject: x"), Kind.AUTOREPLY),
    case(
        "Precedence: auto_reply",
        message("From: a@example.org", "Precedence: auto_reply", "Subject: x"),
        Kind.AUTOREPLY,
    ),
    case(
        "Outlook", message("From: Bob <bob@example.org>", "Subject: Automatic reply: hello"), Kind.AUTOREPLY
    ),
    case(
        "Outlook, French",
        message("From: b@example.fr", "Subject: =?utf-8?q?R=C3=A9ponse_automatique=C2=A0:_x?="),
        Kind.AUTOREPLY,
    ),
    case("German", message("From: b@example.de", "Subject: Abwesenheitsnotiz: Angebot"), Kind.AUTOREPLY),
    case("Russian", message("From: b@example.ru", "Subject: Автоматический ответ: x"), Kind.AUTOREPLY),
    case("Japanese", message("From: b@example.jp", "Subject: 自動応答: x"), Kind.AUTOREPLY),
    case(
        "vacation word quoting the subject",
        message("From: b@example.es", "Subject: Vacaciones Re: hola"),
        Kind.AUTOREPLY,
    ),
    case(
        "vacation subject and out-of-office text",
        message(
            "From: b@example.org",
            "Subject: On holiday",
            body="I am currently out of the office until Monday.",
        ),
        Kind.AUTOREPLY,
    ),
    case(
        "out-of-office text in a reply",
        message(
            "From: b@example.org",
            "Subject: Re: offer",
            "In-Reply-To: <1@example.net>",
            body="Ich bin bis zum 5. Mai nicht im Büro.",
        ),
        Kind.AUTOREPLY,
    ),
    case(
        "auto-reply whose quoted subject is a bounce subject",
        message(
            "From: Bob <bob@example.org>",
            "Auto-Submitted: auto-generated",
            "Subject: Automatic reply: Undeliverable mail returned",
            body="I'm away until Monday.",
        ),
        Kind.AUTOREPLY,
    ),
    # challenge-response
    case(
        "TMDA",
        message("From: a@example.org", "Message-ID: <123.456.a-tmda-confirm>", "Subject: Please confirm"),
        Kind.CHALLENGE,
    ),
    case(
        "Boxbe",
        message("From: Boxbe <notify@boxbe.com>", "Subject: Request to join my Guest List"),
        Kind.CHALLENGE,
    ),
    case(
        "BoxTrapper, also Precedence: auto_reply",
        message(
            "From: a@example.org",
            "X-Boxtrapper: abc",
            "Precedence: auto_reply",
            "Subject: Your email requires verification verify#abc",
        ),
        Kind.CHALLENGE,
    ),
    case(
        "C/R wording from an auto-responder",
        message(
            "From: a@example.org",
            "Auto-Submitted: auto-replied",
            "Subject: Re: hi",
            body="I use a spam filter. To prove you are a human, reply to this message. "
            "You only need to do this once.",
        ),
        Kind.CHALLENGE,
    ),
    # not backscatter
    case(
        "plain spam",
        message("From: Deals <deals@shop.example>", "Subject: Cheap watches", body="Buy now, 90% off."),
        None,
    ),
    case(
        "a person mentions a failed delivery",
        message(
            "From: Alice <alice@example.com>",
            "Subject: my mail to Bob",
            body="When I write to bob@example.org I get 550 5.1.1 user unknown back. Is it right?",
        ),
        None,
    ),
    case(
        "a person replies about a bounce, quoting it",
        message(
            "From: Alice <alice@example.com>",
            "Subject: Re: Undeliverable: meeting",
            "In-Reply-To: <1@a.ex>",
            body="> Your message did not reach some or all of the intended recipients.\n"
            "> 550 5.1.1 user unknown\nOdd, can you check?",
        ),
        None,
    ),
    case(
        "a person forwards a bounce as an attachment",
        raw(
            "From: Alice <alice@example.com>\nSubject: look at this\n"
            "Content-Type: multipart/mixed; boundary=b\n\n"
            "--b\nContent-Type: text/plain\n\nsee attached\n--b\nContent-Type: message/rfc822\n\n"
            "From: MAILER-DAEMON@x.example\nSubject: Undelivered Mail Returned to Sender\n"
            "Content-Type: multipart/report; report-type=delivery-status; boundary=c\n\n--c\n"
            "Content-Type: message/delivery-status\n\nAction: failed\n--c--\n--b--\n"
        ),
        None,
    ),
    case(
        "newsletter with a spam-filter footer and a holiday subject",
        message(
            "From: Shop <noreply@shop.example>",
            "Precedence: bulk",
            "Subject: Holiday deals: 50% off",
            body="Add us to your address book so this mail is not stopped by your spam filter.",
        ),
        None,
    ),
    case(
        "phishing: verify your account",
        message(
            "From: Security <no-reply@bank.example>",
            "Subject: Verify your account",
            body="Click the link below to verify your account or it will be closed.",
        ),
        None,
    ),
    case(
        "scareware from a person",
        message(
            "From: Tom <tom@example.net>",
            "Subject: Virus alert! Your PC is infected",
            body="Your computer contains a virus. Call us.",
        ),
        None,
    ),
    case(
        "auto-generated notification",
        message(
            "From: bugzilla-daemon@bugs.example",
            "Auto-Submitted: auto-generated",
            "Subject: [Bug 132] quarantine retention fills the disk",
            body="Comment #3: still delayed.",
        ),
        None,
    ),
]


@pytest.mark.parametrize(("msg", "kind"), CLASSIFY_CASES)
def test_classify(msg: email.message.Message, kind: Kind | None) -> None:
    found = traps.verdict(msg)
    assert found.kind == kind, found.reason
    assert traps.classify(msg) == kind


def test_classify_never_answers_callout() -> None:
    kinds = {traps.classify(corpus_message(label)) for label in LABELS}
    assert Kind.CALLOUT not in kinds and str(Kind.CALLOUT) == "callout"


def test_every_rule_names_known_evidence() -> None:
    assert {item for _, needed in traps.RULES for item in needed} <= traps.EVIDENCE.keys()


def test_leading_blank_lines_do_not_hide_the_header() -> None:
    data = b"\n \n\t\nFrom: MAILER-DAEMON@x.example\nX-Failed-Recipients: a@b.example\nSubject: x\n\nbody\n"
    assert email.message_from_bytes(data)["X-Failed-Recipients"] is None  # what a naive parse sees
    assert traps.classify(traps.parse_message(data)) is Kind.BOUNCE


def test_raw_8bit_subject_is_read_in_the_body_charset() -> None:
    data = (
        "From: MAILER-DAEMON@sina.example\nSubject: 邮件传输失败！\n"
        "Content-Type: text/plain; charset=gb2312\n\n邮件无法发送到您指定的地址中。\n"
    ).encode("gb2312")
    assert traps.verdict(traps.parse_message(data)).reason == "bounce-subject + failure-text + machine"


BROKEN = [
    b"Content-Type: text/plain; charset=idna\n\n\xff\xfe bad bytes in a strict-only codec",
    b"Content-Type: text/plain; charset=x-no-such\nSubject: =?x-no-such?q?abc?=\n\n\xe9t\xe9",
    b"Content-Type: text/plain; charset*=utf-8''x\n\n\xff",
    b"Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\nQUJD=truncated!!!",
    b"Content-Type: text/plain\nContent-Transfer-Encoding: x-uuencode\n\nbegin 644 x\nnot uu\n",
    b"Content-Type: multipart/mixed\n\nno boundary at all\nmailer-daemon",
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n--b\n"
    b"Content-Type: message/delivery-status\n\n\xff\xfe\n--b",  # truncated
    b"Content-Type: message/disposition-notification; charset=undefined\n\n\xff Disposition: x",
    b"Subject: =?utf-8?b?!!!?=\nFrom: =?utf-8?q?=ZZ?=\n\n",
    b"\x00\x01\x02" * 1000,
]


@pytest.mark.parametrize("data", BROKEN, ids=range(len(BROKEN)))
def test_malformed_mime_is_classified_not_raised(data: bytes) -> None:
    traps.verdict(traps.parse_message(data))
    traps.verdict(email.message_from_bytes(data))


def test_deep_nesting_and_huge_bodies_are_bounded() -> None:
    nested = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(300))
    huge = b"From: MAILER-DAEMON@x.example\nSubject: failure notice\n\n" + b"\xffbinary\x00" * 1_000_000
    start = time.perf_counter()
    assert traps.classify(traps.parse_message(b"Subject: x\n" + nested + b"\nhello")) is None
    assert traps.classify(traps.parse_message(huge)) is None  # no wording in the bounded prefix
    assert time.perf_counter() - start < 5


# --- never raises ----------------------------------------------------------------------------------------

FRAGMENTS = [
    b"\n",
    b"Content-Type: multipart/mixed; boundary=x\n",
    b"--x\n",
    b"--x--\n",
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\n",
    b"Content-Type: message/delivery-status\n",
    b"Content-Type: message/rfc822\n",
    b"Content-Type: message/disposition-notification\n",
    b"Content-Type: text/html; charset=idna\n",
    b"Content-Type: text/plain; charset*=utf-8''x\n",
    b"Content-Transfer-Encoding: base64\n",
    b"Content-Transfer-Encoding: quoted-printable\n",
    b"Content-Transfer-Encoding: x-uuencode\n",
    b"Subject: =?utf-8?b?w6k?= =?x?q?=FF?=\n",
    b"From: MAILER-DAEMON <>\n",
    b"Auto-Submitted: auto-replied\n",
    b"Received: from a (b [IPv6:::ffff:1.2.3.4]) by c; d\n",
    b"Received: ((((\n",
    b"Received: from [::1\n",
    b"Disposition: automatic-action/x; deleted\n",
    b"\xff\xfe\x00",
    b"<a href='x'>",
    b" continuation\n",
]
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def exercise(msg: email.message.Message) -> None:
    found = traps.verdict(msg)
    assert found.kind is None or found.kind in Kind


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes_never_raise(data: bytes) -> None:
    exercise(email.message_from_bytes(data))
    exercise(traps.parse_message(data))


@FUZZ
@given(st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=30)), max_size=40))
def test_mime_shaped_bytes_never_raise(chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    exercise(email.message_from_bytes(data))
    exercise(traps.parse_message(data))
