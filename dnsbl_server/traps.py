"""Trap mail, judged: is it backscatter, and of which kind?

Owns `classify` (message -> Kind | None; `verdict` adds the rule that decided) and `parse_message` (bytes ->
Message). Pure: no I/O, clock or logging; the stdlib `email` package parses. Which server handed the message
to the trap is received.py's question; the ingester does the rest.

Rules:
- Nothing here raises, however malformed the message: undecodable bytes and unknown charsets become U+FFFD,
  and only a bounded prefix is read (MAX_HEADERS fields, MAX_PARTS parts, TEXT_LIMIT characters).
  parse_message parses up to the MAX_DELIMITERS-th boundary line, and a message nested deeper than the
  stdlib parser can follow (some 300 levels) is read as its headers and one text body.
- Decide from content and headers, never the envelope: RFC 3834 auto-replies use the null sender too.
- Parts inside message/* (the returned or forwarded original) are never read: they hold the spam, not the
  notice. Only the notice's own headers, subject and text parts count.
- classify, first match wins:
  1. a feedback report (RFC 5965 ARF) is not backscatter;
  2. a delivery status notification (RFC 3464 message/delivery-status, failed or delayed) is a bounce, and so
     is a message with a non-delivery header (X-Failed-Recipients, Auto-Submitted: auto-generated (failure),
     Exchange's Content-Class dsn / X-MS-Exchange-Message-Is-Ndr);
  3. a disposition notification (RFC 8098) is a bounce when a server refused the message unread (a Sieve
     reject, RFC 5429); a read receipt is not backscatter;
  4. the first row of RULES whose EVIDENCE items are all present: challenge-response, then bounce (virus and
     filter notices included), then auto-reply. No single weak sign decides: wording needs a machine sender
     or a subject to back it, and a subject beginning Re:/Fwd: is a person's;
  5. anything else (spam sent straight to the trap, newsletters, a person's mail) is not backscatter.
"""

from __future__ import annotations

import email
import email.errors
import email.header
import email.message
import email.parser
import html
import itertools
import re
import unicodedata
from collections.abc import Iterator
from enum import StrEnum
from typing import NamedTuple

Headers = dict[str, tuple[str, ...]]  # lower-case name -> decoded, unfolded values in order

MAX_HEADERS = 400  # header fields read per message or part
MAX_PARTS = 64  # MIME parts walked
MAX_DELIMITERS = 1_000  # lines starting "--" (MIME boundaries) parsed
HEADER_LIMIT = 2_000  # characters of one header value
TEXT_LIMIT = 32_000  # characters of notice text


class Kind(StrEnum):
    """Backscatter kinds, spelled as everywhere else (config, sources, evidence)."""

    BOUNCE = "bounce"  # non-delivery and delay reports, virus and filter notices
    AUTOREPLY = "autoreply"  # vacation and other auto-replies
    CHALLENGE = "challenge"  # challenge-response ("confirm you are human")
    CALLOUT = "callout"  # sender verification seen by the SMTP listener; classify never returns it


class Verdict(NamedTuple):
    """What classify decided (None: not backscatter) and the rule that decided it, for logs and evidence."""

    kind: Kind | None
    reason: str


# --- reading a message, bounded -------------------------------------------------------------------------


def parse_message(data: bytes) -> email.message.Message:
    """Bytes -> Message, bounded (see the module rules). Leading blank lines are dropped: the parser would
    end the header at them."""
    data = _cut(re.sub(rb"\A(?:[ \t]*\r?\n)+", b"", data))
    try:
        return email.message_from_bytes(data)
    except RecursionError:  # the stdlib parser recurses once per nested multipart or message/* part
        return email.parser.BytesParser().parsebytes(data, headersonly=True)


def _cut(data: bytes) -> bytes:
    """The data before its MAX_DELIMITERS-th line starting with "--": the parts after it are never read,
    and the parser would build an object for each (some two million empty parts fit in 10 MB)."""
    at = -1
    for _ in range(MAX_DELIMITERS):
        at = data.find(b"\n--", at + 1)
        if at == -1:
            return data
    return data[: at + 1]


def _decode(data: bytes, charset: str | None, fallback: str | None = None) -> str:
    """Bytes as text: in the declared charset, else UTF-8 if valid, else in `fallback` (the body's charset,
    for raw 8-bit headers), else Latin-1. Bad bytes are replaced and unusable charsets passed over."""
    for name, errors in ((charset, "replace"), ("utf-8", "strict"), (fallback, "replace")):
        try:
            if name:
                return data.decode(name, errors)
        except (LookupError, ValueError):  # unknown, non-text or strict-only codecs; invalid UTF-8
            continue
    return data.decode("latin-1")


def _bytes(text: str) -> bytes:
    """Parser text back to bytes (the parser keeps 8-bit bytes as surrogate escapes)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def _header_text(value: object, fallback: str | None = None) -> str:
    """A header value unfolded, RFC 2047 encoded words decoded."""
    raw = (value if isinstance(value, str) else str(value))[:HEADER_LIMIT]
    try:
        chunks = email.header.decode_header(raw)
    except (email.errors.HeaderParseError, ValueError, LookupError):
        chunks = [(raw, None)]
    text = "".join(_decode(_bytes(c) if isinstance(c, str) else c, cs, fallback) for c, cs in chunks)
    return " ".join(text.split())


def _headers(part: email.message.Message, fallback: str | None = None) -> Headers:
    """The fields as parsed: raw_items (the generator's accessor) bypasses the policy's header parsing,
    which can raise on crafted input."""
    found: dict[str, list[str]] = {}
    for name, value in itertools.islice(part.raw_items(), MAX_HEADERS):
        found.setdefault(str(name).strip().lower(), []).append(_header_text(value, fallback))
    return {name: tuple(values) for name, values in found.items()}


def _first(headers: Headers, name: str) -> str:
    return headers.get(name, ("",))[0]


def _content_type(headers: Headers) -> tuple[str, str]:
    """(type/subtype, whole header) of a part; text/plain when missing or invalid (RFC 2045 5.2)."""
    value = _first(headers, "content-type")
    ctype = value.split(";", 1)[0].strip().lower()
    return (ctype if re.fullmatch(r"[\w.+-]+/[\w.+-]+", ctype) else "text/plain"), value


def _param(value: str, name: str) -> str:
    found = re.search(rf"(?:^|;)\s*{name}\*?\s*=\s*\"?(?:[\w.-]*'[\w-]*')?([^\";\s]*)", value, re.I)
    return found.group(1).lower() if found else ""


def _walk(message: email.message.Message) -> Iterator[tuple[email.message.Message, Headers]]:
    """The message and its parts, depth first, at most MAX_PARTS, not entering message/* parts."""
    stack, seen = [message], 0
    while stack and seen < MAX_PARTS:
        part = stack.pop()
        seen += 1
        headers = _headers(part)
        yield part, headers
        payload = part.get_payload() if part.is_multipart() else None
        if isinstance(payload, list) and not _content_type(headers)[0].startswith("message/"):
            stack.extend(p for p in reversed(payload) if isinstance(p, email.message.Message))


def _is_text(part: email.message.Message, ctype: str) -> bool:
    """A text part, or a multipart the parser could not split (no boundary), which is read as text."""
    unsplit = ctype.startswith("multipart/") and not part.is_multipart()
    return ctype in ("text/plain", "text/html") or unsplit


def _part_text(part: email.message.Message, ctype: str, header: str) -> str:
    payload = part.get_payload(decode=True)  # bytes for a parsed leaf part, transfer encoding undone
    if not isinstance(payload, bytes):
        return ""
    text = _decode(payload[: 2 * TEXT_LIMIT], _param(header, "charset") or None)
    return html.unescape(re.sub(r"<[^>]{0,2000}>", " ", text)) if ctype == "text/html" else text


def _status_fields(part: email.message.Message) -> str:
    """The fields of a message/delivery-status or disposition-notification part, as 'name: value' lines."""
    if not part.is_multipart():  # the parser left it unsplit
        payload = part.get_payload(decode=True)
        return _decode(payload[:TEXT_LIMIT], None) if isinstance(payload, bytes) else ""
    blocks = [block for block in part.get_payload() if isinstance(block, email.message.Message)]
    return "\n".join(f"{name}: {v}" for block in blocks for name, vs in _headers(block).items() for v in vs)


_APOSTROPHES = str.maketrans("\u2018\u2019\u02bc\u00b4`", "'''''")


def _strip_accents(text: str) -> str:
    if text.isascii():  # most trap mail: nothing to strip
        return text
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _norm(text: str) -> str:
    """What the rules match: casefolded, accents stripped, plain apostrophes, whitespace collapsed."""
    return " ".join(_strip_accents(text).translate(_APOSTROPHES).casefold().split())


class _Mail(NamedTuple):
    headers: Headers
    subject: str  # normalised, like status and text
    types: frozenset[str]  # content types of the notice's parts (message/* parts counted, not entered)
    report_type: str
    status: str  # fields of the delivery-status or disposition-notification parts
    text: str  # the notice's text parts, at most TEXT_LIMIT characters


def _read(message: email.message.Message) -> _Mail:
    headers: Headers | None = None
    types: set[str] = set()
    texts: list[str] = []
    status: list[str] = []
    report_type = charset = ""
    for part, part_headers in _walk(message):
        headers = part_headers if headers is None else headers
        ctype, header = _content_type(part_headers)
        types.add(ctype)
        report_type = report_type or (_param(header, "report-type") if ctype == "multipart/report" else "")
        if ctype in ("message/delivery-status", "message/disposition-notification"):
            status.append(_status_fields(part))
        elif _is_text(part, ctype) and sum(map(len, texts)) < TEXT_LIMIT:
            texts.append(_part_text(part, ctype, header))
            charset = charset or _param(header, "charset")
    raw = itertools.islice(message.raw_items(), MAX_HEADERS)
    if charset and not all(str(value).isascii() for _, value in raw):
        headers = _headers(message, charset)  # raw 8-bit header bytes are most likely in the body's charset
    headers = headers or {}
    return _Mail(
        headers,
        _norm(_first(headers, "subject")),
        frozenset(types),
        report_type,
        _norm("\n".join(status)[:TEXT_LIMIT]),
        _norm("\n".join(texts)[:TEXT_LIMIT]),
    )


# --- what the rules look for (patterns match normalised text, see _norm) ------------------------------------


def _rx(*alternatives: str) -> re.Pattern[str]:
    """One pattern from lower-case alternatives; accents are stripped here as _norm strips them from text."""
    return re.compile(_strip_accents("|".join(f"(?:{a})" for a in alternatives)))


_REPLY_PREFIX = re.compile(r"^(?:re|fwd?|aw|wg|sv|vs|tr|rif|odp|enc|res|antw|doorst)\s*(?:\[\d+\])?\s*:")
_MACHINE_SENDER = _rx(
    r"mailer[-_ .]?da?e?mon",
    r"\bpost_?master\b",
    r"\bmail ?delivery\b",
    r"\bmdaemon\b",
    r"\bmail ?admin",
    r"\bmail ?master\b",
    r"(?:system|mail) administrator",
    r"\bno[-_.]?reply\b",
    r"\bdo[-_.]?not[-_.]?reply\b",
    r"\bauto[-_.]?(?:reply|respon)",
    r"\bdaemon\b",
    r"\bvirus|\bscanner\b|mailsweeper|\binterscan\b",
    r"automated response",
    r"\bmail system\b",
    r"<>",
)
_BOUNCE_SUBJECT = _rx(
    r"undeliver",
    r"non[- ]?deliver",
    r"not (?:be )?delivered",
    r"delivery has failed",
    r"failure notice",
    r"deliver(?:y|ing) (?:status|fail|notif|problem|error|report|delay)",
    r"failed mail",
    r"mail delivery",
    r"returned (?:mail|message|e-?mail)",
    r"mail (?:system )?error",
    r"returned to sender",
    r"(?:message|mail) (?:delayed|rejected|returned)",
    r"delayed (?:mail|message|\d+ hours)",
    r"warning: message .{0,40} delayed",
    r"still being retried",
    r"rejected (?:mail|message)",
    r"postmaster notif",
    r"nameserver error",
    r"unable to deliver",
    r"\bbounced? (?:notification|notice|message|report|mail|e-?mail)\b",
    r"unzustellbar",
    r"nicht zustellbar",
    r"zustellung fehlgeschlagen",
    r"non remis",
    r"non distribu",
    r"echec de (?:la )?(?:remise|distribution|livraison)",
    r"etat de (?:la )?distribution",
    r"impossible de remettre",
    r"no (?:se pudo|ha podido) entregar",
    r"no entregad",
    r"error de entrega",
    r"estado de (?:la )?entrega",
    r"nao entregue",
    r"falha (?:na|de) entrega",
    r"mancato recapito",
    r"non (?:consegnat|recapitat)",
    r"onbestelbaar",
    r"niet (?:afgeleverd|bezorgd)",
    r"olevererbar",
    r"ej levererat",
    r"kunde inte levereras",
    r"ikke (?:levert|leveret|leverbar)",
    r"kan ikke (?:leveres|aflev)",
    r"toimitus epaonnistui",
    r"niedostarcz",
    r"nie (?:mozna|moze byc) dostarcz",
    r"nedorucitel",
    r"nelze dorucit",
    r"kezbesithetetlen",
    r"nelivrat",
    r"teslim edilemedi",
    r"iletilemedi",
    r"nepiegad",
    r"nepristatyt",
    r"недоставлен",
    r"не доставлен",
    r"не удалось доставить",
    r"ошибка доставки",
    r"не вдалося доставити",
    r"配信(?:不能|エラー|失敗|でき)",
    r"配送不能",
    r"送信(?:エラー|失敗|できません)",
    r"宛先不明",
    r"退信",
    r"无法投递",
    r"無法投遞",
    r"投递失败",
    r"傳送失敗",
    r"传输失败",
    r"发送失败",
    r"无法送达",
    r"전송 실패",
    r"배달 실패",
    r"반송",
)
_MAILER_TEXT = _rx(  # the wording of mailers' own reports, and RFC 3464 fields written inline
    r"this is the qmail-send program",
    r"this is the (?:mail system|postfix program) at host",
    r"i'm (?:afraid|sorry) i (?:wasn't|was not|couldn't) (?:able to )?deliver",
    r"created automatically by mail delivery software",
    r"had permanent fatal errors",
    r"a message that you sent (?:could not be|has not yet been) delivered",
    r"transcript of session follows",
    r"the original message was received at",
    r"did not reach (?:some or all of )?the (?:intended|following) recipient",
    r"delivery has failed to these recipients",
    r"automatically generated delivery status notification",
    r"your message (?:wasn't|was not|couldn't be|could not be|cannot be|can't be) delivered",
    r"delivery to the following recipients? (?:failed|has been delayed|was aborted)",
    r"this is a delivery status notification",
    r"(?:unable|not able) to deliver (?:your|the|this) message",
    r"message delivery (?:has )?failed",
    r"could not be delivered to (?:one or more|the following|all|some)",
    r"the following (?:message|recipients?|addresses?|destination)[^.]{0,40}(?:could not|cannot|can't) be "
    r"(?:delivered|reached)",
    r"permanent fatal",
    r"generating server:",
    r"remote server returned '",
    r"diagnostic information for administrators",
    r"\breporting-mta:",
    r"\bfinal-recipient:",
    r"\baction: (?:failed|delayed)\b",
    r"delivery (?:status notification|failure (?:notification|report))",
    r"message has not (?:yet )?been delivered",
    r"returning message to sender",
    r"delivery attempts will continue",
    r"will (?:continue|keep) (?:delivery attempts|trying until|to try to deliv)",
    r"nachricht (?:konnte|kann) nicht zugestellt",
    r"n'a pas pu etre (?:remis|distribue|livre)",
    r"no (?:se )?(?:ha podido|pudo) (?:ser )?entregar",
    r"nao (?:pode|foi possivel) (?:ser )?entreg",
    r"non (?:e stato possibile|puo essere) (?:consegn|recapit)",
    r"kon niet (?:worden )?(?:afgeleverd|bezorgd)",
    r"kunde inte levereras",
    r"kunne ikke (?:leveres|afleveres)",
    r"nie (?:mozna|moze zostac|zostal[ao]?) dost",
    r"nelze dorucit|nebyla dorucena",
    r"не (?:может быть |удалось |был[оа]? )?доставлен",
    r"配信(?:でき|に失敗)",
)
_FAILURE_TEXT = _rx(
    r"user unknown|unknown (?:user|recipient)|no such (?:user|mailbox|recipient|address)",
    r"(?:user|recipient)(?: name)? (?:is )?not (?:found|recognized)",
    r"invalid (?:recipient|mailbox)",
    r"(?:mailbox|account) (?:is )?(?:unavailable|full|disabled|not found|does not exist|over quota)",
    r"over ?quota|quota exceeded|recipient (?:address )?rejected|address rejected|giving up",
    r"(?:host|domain) (?:name )?not found|relay(?:ing)? (?:access )?denied|not (?:be )?delivered",
    r"undeliverable|could not (?:be )?deliver|delivery (?:failed|failure|error|problem|delayed)",
    r"failed to deliver|(?:message|mail) (?:was )?(?:rejected|refused|returned)|delayed",
    r"temporary (?:failure|error)",
    r"unzustellbar|nicht zugestellt|non (?:remis|distribu)|no entregad",
    r"nao entregue|non consegnat|onbestelbaar|olevererbar|niedostarcz|nedorucitel|недоставлен|не доставлен",
    r"配信できません|宛先不明|无法(?:送达|发送)",
)
_SMTP_REPLY = _rx(  # SMTP replies and RFC 3463 status codes, in the contexts mailers quote them
    r"\b[45]\d\d[ -]+#?[45]\.\d{1,3}\.\d{1,3}\b",
    r"\bsaid: ?[45]\d\d\b",
    r"#[45]\.\d\.\d{1,3}\b",
    r"\b(?:status|diagnostic-code|error|reply|code): ?(?:smtp; ?)?[45](?:\d\d|\.\d{1,3}\.\d{1,3})\b",
    r"\b[45]\d\d[ -]+(?:user|mailbox|no such|unknown|requested|relay|sorry|invalid|recipient|not|<)",
    r"smtp error",
)
_ORIGINAL_TEXT = _rx(
    r"original message follows|below this line is a copy of the message|copy of the (?:original )?message",
    r"returned message|original message (?:header|text|is)|-{3,} ?original message ?-{3,}|unsent message",
    r"message headers follow|the text you sent follows|\breceived: from .{1,200} by |\bmessage-id: ?<",
)
_ORIGINAL_TYPES = frozenset(
    {"message/rfc822", "message/global", "text/rfc822-headers", "message/rfc822-headers"}
)
_FILTER = _rx(  # virus and content-filter notices
    r"virus (?:found|detected|alert|warning|infected|notification)",
    r"virus gefunden|virenwarnung|virusmelding",
    r"infected (?:message|mail|e-?mail|attach|file)",
    r"(?:rbl|policy) block|policy violation|content violation",
    r"(?:found|detected|contains?|containing|infected with) (?:a |the )?(?:virus|malware|worm|trojan)",
    r"(?:message|mail|e-?mail) (?:you sent )?(?:was |has been )?(?:blocked|quarantined|filtered)",
    r"blocked (?:message|mail|e-?mail)",
    r"quarantined (?:message|mail|attachment)",
    r"banned (?:attachment|file|content|material)",
    r"(?:disallowed|dangerous|prohibited|forbidden) (?:attach|file)",
    r"attachment (?:was |has been )?(?:removed|deleted|blocked|stripped)",
    r"(?:spam|junk) (?:detected|blocked)",
    r"(?:blocked|rejected|stopped) by (?:our|the recipient's) (?:[\w-]+ ){0,3}filter",
    r"wiadomosc odrzucona",
    r"mensagem bloqueada",
)
_AUTOREPLY_SUBJECT = _rx(
    r"\bauto(?:matic|matically generated)?[- ]?(?:reply|response|respon[sd]|answer)",
    r"autoreply",
    r"autorespon",
    r"out of (?:the )?office",
    r"automated response",
    r"away from (?:the|my) (?:office|desk)",
    r"automatische antwort",
    r"autom\. antwort",
    r"abwesenheitsnotiz",
    r"reponse automatique",
    r"respuesta automatica",
    r"resposta automatica",
    r"risposta automatica",
    r"automatisch antwoord",
    r"autosvar",
    r"automatiske? svar",
    r"automatiskt svar",
    r"automaattinen vastaus",
    r"automatyczna odpowiedz",
    r"automaticka odpove",
    r"automatikus valasz",
    r"raspuns automat",
    r"otomatik (?:yanit|cevap)",
    r"автоматический ответ",
    r"автоответ",
    r"автоматична відповідь",
    r"automatiska atbilde",
    r"automatinis atsakymas",
    r"automaatne vastus",
    r"αυτοματη απαντηση",
    r"自動応答",
    r"自動返信",
    r"自动回复",
    r"自動回覆",
    r"자동 ?(?:회신|응답)",
    r"תשובה אוטומטית",
    r"رد تلقائي",
    r"fuera de la oficina",
    r"fora do escritorio",
    r"fuori (?:sede|ufficio)",
    r"buiten kantoor",
    r"absence du bureau",
    r"ausser(?:halb des)? haus|nicht im buro",
)
_VACATION_SUBJECT = _rx(
    r"\b(?:vacation|holidays?|on leave|away|absen(?:ce|t)|abwesen\w*|urlaub|ferien|conges?|vacances)\b",
    r"\b(?:vacaciones|ausente|ausencia|ferias|ferie|assente|afwezig|vakantie|fravaer|franvaro|semester)\b",
    r"\b(?:lomalla|poissa|urlop|nieobecn\w*|dovolen\w*|nepritomn\w*|szabadsag|concediu|izinde|atvalinajums)\b",
    r"\b(?:atostogos|puhkus)\b",
    r"отпуск",
    r"отсутств",
    r"відпустк",
    r"不在",
    r"休暇",
    r"休假",
    r"부재",
)
_VACATION_QUOTING = re.compile(rf"(?:{_VACATION_SUBJECT.pattern}).{{0,40}}\bre ?:")
_OUT_OF_OFFICE_TEXT = _rx(
    r"\bi(?:'m| am| will be|'ll be) (?:currently |now )?(?:out of (?:the |my )?office|away|out of town"
    r"|on (?:vacation|holiday|leave|annual leave|sick leave|maternity leave|a business trip)|travell?ing)",
    r"\bi will (?:be back|return)",
    r"limited access to (?:my )?e-?mail",
    r"(?:during|in) my absence",
    r"upon my return",
    r"\bi will (?:respond|reply|get back to you)",
    r"this is an auto(?:matic|mated)?[- ]?(?:reply|response)",
    r"\ben conge",
    r"\bich bin (?:bis|vom|ab|derzeit|zur zeit|momentan|nicht|im urlaub|abwesend)",
    r"\bbin ich (?:nicht|abwesend|im urlaub)",
    r"\bje (?:suis|serai) (?:actuellement )?absent",
    r"\bestare (?:fuera|ausente|de vacaciones)",
    r"\bestoy (?:fuera|ausente|de vacaciones)",
    r"\bsono (?:fuori|assente|in ferie)",
    r"\bik ben (?:afwezig|met vakantie|niet aanwezig)",
    r"\bjeg er (?:pa ferie|fravaerende|ikke pa kontoret)",
    r"\bjag ar (?:pa semester|franvarande|ledig)",
    r"\bolen lomalla",
    r"\bjestem (?:na urlopie|nieobecn)",
    r"\bя (?:в отпуске|отсутствую)",
)
_CHALLENGE_TEXT = _rx(
    r"requires verification",
    r"please verify your (?:e-?mail|message)",
    r"unverified e-?mail",
    r"(?:prove|confirm|verify) (?:that )?you are (?:a )?(?:human|real person|person"
    r"|not a (?:robot|spammer|machine|computer|bot))",
    r"challenge[- /]response",
    r"(?:approved|authorized|allowed|trusted|accepted) senders? list",
    r"(?:added|add you) to (?:my|the|our) (?:list of )?(?:approved|authorized|allowed|trusted) senders",
    r"spam (?:protection|blocker|filter)[^.]{0,60}(?:verify|confirm)",
    r"only (?:need|have) to (?:do this|verify|confirm) once",
    r"sender verification",
    r"(?:held|waiting|pending) (?:for|until) (?:your )?(?:verification|confirmation)",
    r"awaiting (?:your )?(?:verification|confirmation)",
    r"\[qurb",
    r"antispam uol",
)
_CHALLENGE_HEADERS = frozenset(
    {
        "x-boxtrapper",
        "x-bluebottle-request",
        "x-choicemail-registration-request",
        "x-spamarrest-noauth",
        "x-askversion",
        "x-spamazoid-md",
        "spamlion",
    }
)
_CHALLENGE_SENDER = _rx(
    r"@(?:[\w-]+\.)*(?:boxbe|spamarrest|0spam|mailinblack|ipermitmail|spamstomp|bluebottle|mailblocks)\.com\b",
    r"@(?:[\w-]+\.)*si20\.com\b",
    r"spamguard\.vanquish\.com",
    r"-tmda-confirm>",
    r"\btmda\b",
)
_AUTOREPLY_HEADERS = frozenset({"x-autoreply", "x-autorespond", "x-autoresponder", "x-autoreply-from"})
_AUTO_HEADERS = _AUTOREPLY_HEADERS | {"x-auto-response-suppress", "x-autogenerated", "x-ms-embedded-report"}

EVIDENCE = {
    "machine": "auto headers, bulk precedence, or a program's sender name (mailer-daemon, postmaster, ...)",
    "auto": "headers only software sets (Auto-Submitted, X-Autoreply, Precedence junk), or a null sender",
    "in-reply": "In-Reply-To or References",
    "bounce-subject": "the subject starts out as a non-delivery or delay notice (many languages)",
    "autoreply-subject": "the subject starts out as an auto-reply: Automatic reply, Out of Office, ...",
    "filter-subject": "the subject starts out as a virus or content-filter notice",
    "mailer-text": "the wording of a mailer's report (qmail, Postfix, Exim, Sendmail, Exchange, Gmail...)",
    "failure-text": "failure wording: user unknown, mailbox full, could not be delivered, ...",
    "smtp-reply": "an SMTP reply or status code as mailers quote them: 550 5.1.1, said: 550, #5.1.1",
    "original": "the original returned: a message/rfc822 or text/rfc822-headers part, or an inline copy",
    "filter-text": "virus or content-filter wording in the text",
    "autoreply-header": "Auto-Submitted: auto-replied (RFC 3834), X-Autoreply, Precedence: auto_reply",
    "vacation-subject": "a vacation or absence word in the subject",
    "vacation-quoting": "a vacation word, then 'Re:' and the original subject",
    "ooo-text": "out-of-office wording in the text",
    "challenge-marker": "a challenge-response system's header or address (TMDA, BoxTrapper, Boxbe, ...)",
    "challenge-text": "challenge-response wording: prove you are human, approved senders list, ...",
}
# A message is of the kind of the first row whose evidence is all present.
RULES: tuple[tuple[Kind, frozenset[str]], ...] = tuple(
    (kind, frozenset(items.split()))
    for kind, items in (
        (Kind.CHALLENGE, "challenge-marker"),
        (Kind.CHALLENGE, "challenge-text auto"),
        (Kind.CHALLENGE, "challenge-text in-reply"),
        (Kind.BOUNCE, "bounce-subject mailer-text"),
        (Kind.BOUNCE, "bounce-subject machine failure-text"),
        (Kind.BOUNCE, "bounce-subject machine smtp-reply"),
        (Kind.BOUNCE, "bounce-subject machine original"),
        (Kind.BOUNCE, "bounce-subject failure-text original"),
        (Kind.BOUNCE, "filter-subject machine"),
        (Kind.AUTOREPLY, "autoreply-subject"),
        (Kind.BOUNCE, "mailer-text machine"),
        (Kind.BOUNCE, "failure-text smtp-reply machine"),
        (Kind.BOUNCE, "filter-text machine"),
        (Kind.AUTOREPLY, "autoreply-header"),
        (Kind.AUTOREPLY, "vacation-subject ooo-text"),
        (Kind.AUTOREPLY, "vacation-subject auto"),
        (Kind.AUTOREPLY, "vacation-quoting"),
        (Kind.AUTOREPLY, "ooo-text auto"),
        (Kind.AUTOREPLY, "ooo-text in-reply"),
    )
)


def _evidence(mail: _Mail) -> frozenset[str]:
    """The names of the EVIDENCE items the message shows."""
    own = "" if _REPLY_PREFIX.match(mail.subject) else mail.subject  # a reply's subject is a person's
    first = _earliest(own, _BOUNCE_SUBJECT, _AUTOREPLY_SUBJECT, _FILTER)
    present = {
        "machine": _is_machine(mail),
        "auto": _is_auto(mail),
        "in-reply": bool(mail.headers.keys() & {"in-reply-to", "references"}),
        "bounce-subject": first is _BOUNCE_SUBJECT,
        "autoreply-subject": first is _AUTOREPLY_SUBJECT,
        "filter-subject": first is _FILTER,
        "mailer-text": bool(_MAILER_TEXT.search(mail.text)),
        "failure-text": bool(_FAILURE_TEXT.search(mail.text)),
        "smtp-reply": bool(_SMTP_REPLY.search(mail.text)),
        "original": bool(mail.types & _ORIGINAL_TYPES or _ORIGINAL_TEXT.search(mail.text)),
        "filter-text": bool(_FILTER.search(mail.text)),
        "autoreply-header": _autoreply_header(mail),
        "vacation-subject": bool(_VACATION_SUBJECT.search(mail.subject)),
        "vacation-quoting": bool(_VACATION_QUOTING.search(own)),
        "ooo-text": bool(_OUT_OF_OFFICE_TEXT.search(mail.text)),
        "challenge-marker": _challenge_marker(mail),
        "challenge-text": bool(_CHALLENGE_TEXT.search(f"{mail.subject}\n{mail.text}")),
    }
    return frozenset(name for name, found in present.items() if found)


def _earliest(text: str, *patterns: re.Pattern[str]) -> re.Pattern[str] | None:
    """The pattern matching first in text: a notice's own words come before the original subject it quotes."""
    found = [(match.start(), i) for i, pattern in enumerate(patterns) if (match := pattern.search(text))]
    return patterns[min(found)[1]] if found else None


def _is_auto(mail: _Mail) -> bool:
    """A header only software sets (RFC 3834 Auto-Submitted and its older cousins), or a null sender."""
    auto_submitted = _norm(_first(mail.headers, "auto-submitted"))
    return (
        auto_submitted not in ("", "no")
        or bool(_AUTO_HEADERS & mail.headers.keys())
        or _norm(_first(mail.headers, "precedence")) in ("junk", "auto_reply")
        or _norm(_first(mail.headers, "return-path")) == "<>"
    )


def _is_machine(mail: _Mail) -> bool:
    """Auto headers, bulk precedence, or a sender name or address a program uses, not a person."""
    senders = [_norm(value) for name in ("from", "sender") for value in mail.headers.get(name, ())]
    return (
        _is_auto(mail)
        or _norm(_first(mail.headers, "precedence")) == "bulk"
        or any(_MACHINE_SENDER.search(sender) for sender in senders)
        or "mailer-daemon" in _norm(_first(mail.headers, "return-path"))
    )


def _autoreply_header(mail: _Mail) -> bool:
    """RFC 3834 section 5: Auto-Submitted: auto-replied; X-Autoreply and friends; Precedence: auto_reply."""
    return (
        _norm(_first(mail.headers, "auto-submitted")).startswith("auto-replied")
        or bool(_AUTOREPLY_HEADERS & mail.headers.keys())
        or _norm(_first(mail.headers, "precedence")) == "auto_reply"
    )


def _challenge_marker(mail: _Mail) -> bool:
    """Headers and addresses of challenge-response systems (TMDA, BoxTrapper, Bluebottle, Spam Arrest...)."""
    names = ("from", "return-path", "message-id", "x-delivery-agent")
    values = [_norm(value) for name in names for value in mail.headers.get(name, ())]
    return bool(_CHALLENGE_HEADERS & mail.headers.keys()) or any(map(_CHALLENGE_SENDER.search, values))


# --- classify --------------------------------------------------------------------------------------------


def classify(message: email.message.Message) -> Kind | None:
    """The backscatter kind of a trap message, or None when it is not backscatter."""
    return verdict(message).kind


def verdict(message: email.message.Message) -> Verdict:
    """classify, with its reason: a report rule, or the RULES row that matched (its evidence names)."""
    mail = _read(message)
    report = _report(mail)
    if report is not None:
        return report
    evidence = _evidence(mail)
    for kind, needed in RULES:
        if needed <= evidence:
            return Verdict(kind, " + ".join(sorted(needed)))
    return Verdict(None, f"no rule matched (evidence: {', '.join(sorted(evidence)) or 'none'})")


_REFUSED = re.compile(r"disposition: ?automatic-action\S* ?; ?(?:deleted|denied|failed|rejected)")


def _report(mail: _Mail) -> Verdict | None:
    """Rules 1-3: machine-readable reports (RFC 5965 ARF, RFC 3464 DSN, RFC 8098 MDN) and NDR headers."""
    auto_submitted = _norm(_first(mail.headers, "auto-submitted"))
    if mail.report_type == "feedback-report" or "message/feedback-report" in mail.types:
        return Verdict(None, "feedback report (ARF)")
    dsn_types = {"message/delivery-status", "message/global-delivery-status"}
    if mail.report_type in ("delivery-status", "global-delivery-status") or mail.types & dsn_types:
        return Verdict(Kind.BOUNCE, "delivery status notification (RFC 3464)")
    ndr_headers = ("x-failed-recipients", "x-ms-exchange-message-is-ndr")
    markers = [name for name in ndr_headers if name in mail.headers]
    markers += ["content-class: dsn"] if _norm(_first(mail.headers, "content-class")).endswith(":dsn") else []
    markers += ["auto-submitted: (failure)"] if "(failure)" in auto_submitted else []
    if markers:
        return Verdict(Kind.BOUNCE, f"non-delivery header ({markers[0]})")
    if mail.report_type == "disposition-notification" or "message/disposition-notification" in mail.types:
        refused = _REFUSED.search(mail.status)
        if refused or "(rejected)" in auto_submitted:
            return Verdict(Kind.BOUNCE, "automatic disposition notification: refused unread (Sieve reject)")
        return Verdict(None, "read receipt (disposition notification)")
    return None
