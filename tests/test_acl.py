"""rbldnsd's acl dataset: the file syntax, the resolver's answers per client, and real rbldnsd beside us.

Every client address used end to end is on loopback: Linux lets a socket send from any 127/8 address,
so one test machine plays many resolvers.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator
from dataclasses import replace
from itertools import product
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest
from conftest import Server, poll, rcode, run_cli, values
from rbldnsd import Rbldnsd, compare, qname

from dnsbl_server import wire
from dnsbl_server.acl import Acl, AclParsed, AclReader, Action, Listed, client_address, decide, keyword
from dnsbl_server.datafiles import DataFiles, compose, load_dataset, parse_spec
from dnsbl_server.errors import ConfigError
from dnsbl_server.index import Entry, ZoneIndex
from dnsbl_server.nameindex import GenericRecord, NameSet, RecordSet, Value
from dnsbl_server.resolver import SILENT, Answer, Options, Question, resolve
from dnsbl_server.zone import Zone, Zones, ZoneSettings

ZONE = "bl.example.org"
ZONES_DIR = Path(__file__).parent.parent / "zones"
EXAMPLE = ZONES_DIR / "acl.example"
DATA = ZONES_DIR / "ip4set.example"
A, NS, SOA, TXT, ANY = 1, 2, 6, 16, 255
IN, CH = 1, 3
NOERROR, NXDOMAIN, REFUSED = 0, 3, 5
NOW = 1_700_000_000.0


def v4(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def client(text: str) -> tuple[int, int]:
    address = ipaddress.ip_address(text)
    return address.version, int(address)


def parse(*files: str, loose: bool = False) -> AclParsed:
    reader = AclReader(loose=loose)
    for number, text in enumerate(files):
        reader.read(text.splitlines(), f"f{number}.acl")
    return reader.parsed


def acl_of(text: str) -> Acl:
    parsed = parse(text)
    assert parsed.problems == []
    return parsed.acl()


# --- the file syntax --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (":ignore", Action.IGNORE),
        (":blackhole", Action.IGNORE),
        (":IGN", Action.IGNORE),  # any case, any start of the word
        (":b", Action.IGNORE),
        (":refuse", Action.REFUSE),
        ("=refuse", Action.REFUSE),
        (":refuse:a text after it is ignored", Action.REFUSE),
        (":Empty # a comment", Action.EMPTY),
        (":pass", Action.PASS),
        (":p", Action.PASS),
        ("", Action.IGNORE),  # no value: the default, ignore
        ("# a comment", Action.IGNORE),
        (":3:Listed for $ ($1)", Listed(v4("127.0.0.3"), "Listed for $ (var one)")),
        (":4", Listed(v4("127.0.0.4"), None)),  # no TXT: the default has none
        (":5:", Listed(v4("127.0.0.5"), None)),
        (":127.0.0.9:Nine", Listed(v4("127.0.0.9"), "Nine")),
        ("ignore", Listed(v4("127.0.0.2"), "ignore")),  # no colon: a text, not a keyword
        ("A text $$", Listed(v4("127.0.0.2"), "A text $$")),
    ],
)
def test_each_value_form(value: str, rule: object) -> None:
    parsed = parse(f"$1 var one\n127.0.0.9 {value}\n")
    assert parsed.problems == []
    assert parsed.acl().rule(4, v4("127.0.0.9")) == rule


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("127.0.0.9 :refusefoo", "invalid A value"),
        ("127.0.0.9 =3", "invalid keyword"),
        ("!127.0.0.5", "invalid address"),
        ("127.0.0.5-127.0.0.6", "invalid address"),
        ("127.0.0.1/8", "host bits are set"),
        ("::ffff:127.0.0.1", "invalid address"),
        ("2001:db8::1-2001:db8::5", "invalid address"),
        ("not-an-address", "invalid address"),
        ("$SOA 1h ns1.example.org hostmaster.example.org 0 2h 30m 1w 10m", "$SOA is not allowed"),
        ("$NS 1d ns1.example.org", "$NS is not allowed"),
        ("$MAXRANGE4 /24\n10.0.0.0/8", "too large range (16777216) ignored (256 max)"),
        ("127.0.0.7 :refuse\n127.0.0.7 :empty", "duplicated entry for 127.0.0.7"),
    ],
)
def test_bad_lines_are_named_and_skipped(line: str, problem: str) -> None:
    parsed = parse(f"127.0.0.1 :pass\n{line}\n127.0.0.2 :refuse\n")
    last = len(line.splitlines()) + 1
    assert len(parsed.problems) == 1 and parsed.problems[0].startswith(f"f0.acl:{last}: ")
    assert problem in parsed.problems[0]
    acl = parsed.acl()
    assert acl.rule(4, v4("127.0.0.2")) is Action.REFUSE  # the rest is read
    if "duplicated" in problem:
        assert acl.rule(4, v4("127.0.0.7")) is Action.REFUSE  # the first entry stays


def test_loose_masks_host_bits() -> None:
    assert parse("127.0.0.1/8 :refuse", loose=True).acl().rule(4, v4("127.9.9.9")) is Action.REFUSE


def test_address_forms() -> None:
    acl = acl_of("127.1 :refuse\n10.1.2.3:empty\n2001:db8:1 :pass\n::1 :refuse\n2001:db8::/32 :empty\n")
    assert acl.rule(4, v4("127.1.200.3")) is Action.REFUSE  # `127.1` is 127.1.0.0/16
    assert acl.rule(4, v4("10.1.2.3")) is Action.EMPTY  # an IPv4 value may follow with no space
    assert acl.rule(*client("2001:db8:1::77")) is Action.PASS  # `2001:db8:1` is /48, inside the /32
    assert acl.rule(*client("2001:db8:2::1")) is Action.EMPTY
    assert acl.rule(*client("::1")) is Action.REFUSE
    assert acl.rule(4, v4("127.2.0.1")) is None  # not covered: the caller passes it


def test_default_lines_last_until_the_end_of_the_file() -> None:
    first = "127.0.0.1\n:refuse\n127.0.0.2\n=pass\n127.0.0.3\n:3:Default $\n127.0.0.4\n127.0.0.5 :4\n"
    second = "127.0.0.6\n127.0.0.7 :5\n"
    acl = parse(first, second).acl()
    rules = [acl.rule(4, v4(f"127.0.0.{n}")) for n in range(1, 8)]
    assert rules == [
        Action.IGNORE,
        Action.REFUSE,
        Action.PASS,
        Listed(v4("127.0.0.3"), "Default $"),
        Listed(v4("127.0.0.4"), "Default $"),  # `:A` keeps the default TXT
        Action.IGNORE,  # a new file starts from ignore again
        Listed(v4("127.0.0.5"), None),
    ]


def test_ttl_applies_to_every_listed_value() -> None:
    acl = acl_of("127.0.0.6 :3:x\n$TTL 5m\n127.0.0.7 :refuse\n")
    assert acl.rule(4, v4("127.0.0.6")) == Listed(v4("127.0.0.3"), "x", 300)


def test_keyword_needs_a_whole_word() -> None:
    assert keyword("ign:x") is Action.IGNORE
    assert keyword("ignorex") is None
    assert keyword("3:x") is None


def test_example_file_reads_clean() -> None:
    dataset = load_dataset("acl", (str(EXAMPLE),), NOW)
    assert dataset.problems == () and dataset.acl is not None


# --- combining a global and a zone acl --------------------------------------------------------

GLOBAL = acl_of(
    "127.0.0.1 :ignore\n127.0.0.2 :refuse\n127.0.0.3 :pass\n127.0.0.4 :7:global\n127.0.0.5 :empty"
)
LOCAL = acl_of("127.0.0.1 :pass\n127.0.0.2 :empty\n127.0.0.3 :refuse\n127.0.0.4 :8:zone\n127.0.0.6 :8:zone")


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("127.0.0.1", Action.IGNORE),
        ("127.0.0.2", Action.REFUSE),  # ignore, then refuse, then empty, then listed win
        ("127.0.0.3", Action.REFUSE),
        ("127.0.0.4", Listed(v4("127.0.0.7"), "global")),  # both listed: the global acl's value
        ("127.0.0.5", Action.EMPTY),
        ("127.0.0.6", Listed(v4("127.0.0.8"), "zone")),
        ("127.0.0.9", Action.PASS),  # in neither
    ],
)
def test_global_and_zone_acl_combine(address: str, rule: object) -> None:
    assert decide(GLOBAL, LOCAL, (4, v4(address))) == rule


def test_no_acl_or_no_client_passes() -> None:
    assert decide(None, None, (4, 1)) is Action.PASS
    assert decide(GLOBAL, LOCAL, None) is Action.PASS


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        (("127.0.0.2", 5353), (4, 0x7F000002)),
        (("::1", 53, 0, 0), (6, 1)),
        (("::ffff:192.0.2.1", 53, 0, 0), (4, 0xC0000201)),  # a dual-stack socket's IPv4 peer
        (("fe80::1%lo", 53, 0, 1), (6, int(ipaddress.IPv6Address("fe80::1")))),
        (None, None),
        (("not an address", 53), None),
    ],
)
def test_client_address_of_a_socket_peer(peer: object, expected: object) -> None:
    assert client_address(peer) == expected


# --- the resolver -----------------------------------------------------------------------------

ZONE_ACL = acl_of(
    "127.0.0.2 :ignore\n127.0.0.3 :refuse\n127.0.0.4 :empty\n127.0.0.5 :pass\n"
    "127.0.0.6 :3:Resolver $ blocked, $$5\n127.0.0.7 :4\n$TTL 300\n::2 :9:IPv6 resolver $\n"
)


def entry(target: str, code: int = 2, reason: str = "Listed: $") -> Entry:
    net = ipaddress.ip_network(target)
    return Entry((target, "t"), net.version, int(net[0]), int(net[-1]), False, 0x7F000000 | code, reason)


def files_zone(name: str = ZONE, **fields: object) -> Zone:
    """A files-only zone with an IPv4 dataset (an ip4set), as compose builds it."""
    index = ZoneIndex.build([entry("192.0.2.0/24")])
    zone = Zone(name, ZoneIndex.build(()), 7, ZoneSettings(), False, (index,), acl=ZONE_ACL)
    return replace(zone, **fields)  # type: ignore[arg-type]


def ask(
    name: str, qtype: int = A, who: str | None = "127.0.0.1", zones: Zones | None = None, qclass: int = IN
) -> Answer:
    question = Question(name, qtype, qclass, 0, client(who) if who else None)
    return resolve(question, zones or Zones.of([files_zone()]), NOW, Options(version="v"))


def records(answer: Answer, rtype: int) -> list[str]:
    return sorted(str(r.data) for r in answer.answer if r.rtype == rtype)


LISTED, UNLISTED = f"1.2.0.192.{ZONE}", f"1.3.0.192.{ZONE}"


def test_pass_and_unknown_clients_are_answered_as_usual() -> None:
    for who in ("127.0.0.1", "127.0.0.5", None):
        assert records(ask(LISTED, who=who), A) == ["127.0.0.2"]
        assert ask(UNLISTED, who=who).rcode == NXDOMAIN


def test_ignore_sends_nothing_and_refuse_refuses_the_apex_too() -> None:
    assert ask(LISTED, who="127.0.0.2") == SILENT
    assert ask(ZONE, SOA, who="127.0.0.2").silent
    for name, qtype in ((LISTED, A), (ZONE, SOA), (ZONE, NS)):
        answer = ask(name, qtype, who="127.0.0.3")
        assert (answer.rcode, answer.answer, answer.authoritative) == (REFUSED, (), False)


def test_a_zone_acl_does_not_reach_names_in_no_zone() -> None:
    assert ask("1.2.0.192.other.example", who="127.0.0.2").rcode == REFUSED


def test_empty_hides_the_data_not_the_apex() -> None:
    assert ask(LISTED, who="127.0.0.4").rcode == NXDOMAIN
    assert ask(LISTED, TXT, who="127.0.0.4").authority[0].rtype == SOA
    assert records(ask(ZONE, SOA, who="127.0.0.4"), SOA) != []
    assert records(ask(ZONE, NS, who="127.0.0.4"), NS) == [f"ns.{ZONE}"]


def test_always_lists_every_address_with_the_client_in_the_text() -> None:
    for name in (LISTED, UNLISTED, qname(6, "::ffff:198.51.100.1", ZONE)):  # mapped: IPv4 data
        answer = ask(name, ANY, who="127.0.0.6")
        assert records(answer, A) == ["127.0.0.3"]
        assert records(answer, TXT) == ["Resolver 127.0.0.6 blocked, $5"]
        assert {r.ttl for r in answer.answer} == {300}  # the acl's $TTL
    assert records(ask(UNLISTED, TXT, who="127.0.0.7"), TXT) == []  # `:4`: no TXT, so NODATA
    assert ask(UNLISTED, TXT, who="127.0.0.7").rcode == NOERROR
    assert records(ask(UNLISTED, TXT, who="::2"), TXT) == ["IPv6 resolver ::2"]


def test_always_reaches_only_names_the_zone_could_list() -> None:
    who = "127.0.0.6"
    assert ask(qname(6, "2001:db8::1", ZONE), who=who).rcode == NXDOMAIN  # an IPv4-only zone
    assert ask(f"foo.{ZONE}", who=who).rcode == NXDOMAIN
    assert ask(ZONE, A, who=who).answer == ()  # the apex is not an address
    partial = ask(f"2.0.192.{ZONE}", who=who)  # above listed addresses: NODATA, as everywhere here
    assert (partial.rcode, partial.answer) == (NOERROR, ())


def test_a_sqlite_zone_lists_both_families_and_drops_its_test_points() -> None:
    zone = files_zone(test_points=True, files=(), index=ZoneIndex.build([entry("192.0.2.0/24")]))
    zones = Zones.of([zone])
    assert records(ask(qname(6, "2001:db8::1", ZONE), who="127.0.0.6", zones=zones), A) == ["127.0.0.3"]
    assert ask(f"2.0.0.127.{ZONE}", who="127.0.0.4", zones=zones).rcode == NXDOMAIN  # empty: no test point
    assert records(ask(f"2.0.0.127.{ZONE}", who="127.0.0.1", zones=zones), A) == ["127.0.0.2"]


def test_name_zones_list_every_name_but_generic_records_stay() -> None:
    dnset = NameSet.build([(("spam", "example", "net"), False, Value(0x7F000002, "Bad $"))])
    generic = RecordSet({("www",): (GenericRecord(A, None, "127.0.0.9"),)})
    zones = Zones.of([files_zone(files=(), names=(dnset, generic))])
    assert records(ask(f"spam.example.net.{ZONE}", who="127.0.0.4", zones=zones), A) == []
    assert records(ask(f"www.{ZONE}", who="127.0.0.4", zones=zones), A) == ["127.0.0.9"]
    assert records(ask(f"anything.{ZONE}", who="127.0.0.6", zones=zones), A) == ["127.0.0.3"]
    assert records(ask(f"www.{ZONE}", who="127.0.0.6", zones=zones), A) == ["127.0.0.3", "127.0.0.9"]


def test_global_ignore_comes_before_everything() -> None:
    zones = Zones.of([files_zone()], acl=acl_of("127.9.0.0/16 :ignore\n127.8.0.1 :refuse\n"))
    assert ask(LISTED, who="127.9.0.1", zones=zones).silent
    assert ask("version.bind", TXT, who="127.9.0.1", zones=zones, qclass=CH).silent
    assert ask("other.example", who="127.9.0.1", zones=zones).silent
    # a global refuse refuses the zones' names only (rbldnsd still answers CHAOS version queries)
    assert ask(LISTED, who="127.8.0.1", zones=zones).rcode == REFUSED
    assert records(ask("version.bind", TXT, who="127.8.0.1", zones=zones, qclass=CH), TXT) == ["v"]


def test_wire_sends_nothing_for_a_silent_answer_and_passes_the_client() -> None:
    data = dns.message.make_query(LISTED, "A").to_wire()
    seen: list[Question] = []

    def silent(question: Question) -> Answer:
        seen.append(question)
        return SILENT

    assert wire.respond(data, silent, udp=True, client=(4, 0x7F000002)) is None
    assert seen[0].client == (4, 0x7F000002)


# --- specs and composition --------------------------------------------------------------------


def test_specs_global_and_per_zone() -> None:
    assert parse_spec(":acl:a.acl").zone == ""
    assert parse_spec(".:acl:a.acl").zone == ""
    assert parse_spec(f"{ZONE.upper()}:acl:a.acl").zone == ZONE
    with pytest.raises(ConfigError):
        parse_spec(":ip4set:a.ip4set")  # only an acl may be global
    for twice in ([f"{ZONE}:acl:a", f"{ZONE}:acl:b"], [":acl:a", ":acl:b"]):
        with pytest.raises(ConfigError, match="more than one acl"):
            DataFiles([parse_spec(s) for s in twice])
    DataFiles([parse_spec(s) for s in (f"{ZONE}:acl:a", f"{ZONE}:acl:a", "x.example:acl:a")])


def test_compose_puts_acls_on_zones(tmp_path: Path) -> None:
    data = tmp_path / "d.ip4set"
    data.write_text("$TTL 100\n192.0.2.1\n")
    acl = tmp_path / "z.acl"
    acl.write_text("$TTL 5\n127.0.0.3 :refuse\n")
    specs = [f"{ZONE}:acl:{acl}", f"{ZONE}:ip4set:{data}", f"db.example:acl:{acl}", f"lone.example:acl:{acl}"]
    files = DataFiles([parse_spec(s) for s in [*specs, f":acl:{acl}"]])
    files.load(NOW)
    sqlite = Zones.of([Zone("db.example", ZoneIndex.build(()))])
    zones = compose(sqlite, files, lambda name: ZoneSettings())
    by_name = {z.name: z for z in zones}
    assert set(by_name) == {ZONE, "db.example", "lone.example"}  # an acl-only zone is served, empty
    assert all(z.acl is not None for z in zones) and zones.acl is not None
    assert by_name[ZONE].settings.ttl == 100  # the acl's $TTL is its own answers', not the zone's
    assert by_name["db.example"].test_points  # the SQLite zone keeps its list and gets the acl


# --- end to end, beside real rbldnsd ----------------------------------------------------------

ANSWERED = [
    "127.0.0.1",
    "127.0.0.3",
    "127.0.0.4",
    "127.0.0.6",
    "127.0.0.7",
    "127.0.0.8",
    "127.1.0.1",
    "127.1.2.3",
    "127.1.3.1",
    "127.3.0.1",
    "127.4.0.1",
    "127.5.0.1",
]
IGNORED = ["127.0.0.2", "127.0.0.5", "127.1.4.1", "127.2.0.1"]
ADDRESSES = ["192.0.2.1", "192.0.2.10", "192.0.2.12", "203.0.113.70", "198.51.100.77", "192.0.2.99"]
NAMES = [
    *(qname(4, a, ZONE) for a in ADDRESSES),
    qname(6, "2001:db8::1", ZONE),
    qname(6, "::ffff:192.0.2.1", ZONE),
    f"foo.{ZONE}",
]


def ask_from(
    port: int, name: str, rdtype: str, source: str, *, tcp: bool = False, timeout: float = 3.0
) -> dns.message.Message | None:
    """The reply to a query sent from `source`, or None when none comes within `timeout`."""
    query = dns.message.make_query(name, rdtype)
    send = dns.query.tcp if tcp else dns.query.udp
    try:
        return send(query, "127.0.0.1", port=port, timeout=timeout, source=source)
    except dns.exception.Timeout:
        return None


def replied(port: int, questions: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The questions that got any reply within a short wait (for an ignored client: none)."""
    return [(who, n, t) for who, n, t in questions if ask_from(port, n, t, who, timeout=0.3) is not None]


def differences(ours: Server, ref: Rbldnsd, questions: list[tuple[str, str, str]]) -> list[str]:
    found = []
    for who, name, rdtype in questions:
        a, b = (ask_from(port, name, rdtype, who) for port in (ours.port, ref.port))
        where = f"from {who}: {name} {rdtype}"
        if a is None or b is None:
            found.append(f"{where}: no reply from {'us' if a is None else 'rbldnsd'}")
            continue
        found += [f"{where}: {d}" for d in compare(a, b)]
    return found


@pytest.fixture
def ours() -> Iterator[object]:
    started: list[Server] = []

    def start(*args: str) -> Server:
        server = Server(list(args), {k: v for k, v in os.environ.items() if k != "DNSBL_DB"})
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def test_zone_acl_answers_as_rbldnsd(ours) -> None:  # type: ignore[no-untyped-def]
    specs = [(ZONE, "ip4set", [DATA]), (ZONE, "acl", [EXAMPLE])]
    server = ours(*(f"{z}:{k}:{p[0]}" for z, k, p in specs))
    answered = [
        *product(ANSWERED, NAMES, ("A", "TXT")),
        *product(ANSWERED, [ZONE], ("SOA", "NS", "A")),
        *product(ANSWERED, ["1.2.0.192.nozone.example"], ("A",)),
    ]
    ignored = [*product(IGNORED, [NAMES[0]], ("A",)), (IGNORED[0], ZONE, "SOA")]
    with Rbldnsd(specs) as ref:
        assert differences(server, ref, answered) == []
        assert replied(ref.port, ignored) == []  # an ignored client gets nothing from either
        assert replied(server.port, ignored) == []


def test_global_acl_answers_as_rbldnsd(ours, tmp_path) -> None:  # type: ignore[no-untyped-def]
    global_acl = tmp_path / "global.acl"
    global_acl.write_text(
        "127.0.0.3 :pass\n127.0.0.4 :refuse\n127.0.0.6 :7:Global listing for $\n"
        "127.0.0.7 :empty\n127.6.0.0/16 :ignore\n127.7.0.0/16 :refuse\n"
    )
    specs = [(ZONE, "ip4set", [DATA]), (ZONE, "acl", [EXAMPLE]), ("", "acl", [global_acl])]
    server = ours(*(f"{z}:{k}:{p[0]}" for z, k, p in specs))
    clients = ["127.0.0.1", "127.0.0.3", "127.0.0.4", "127.0.0.6", "127.0.0.7", "127.7.0.1"]
    nozone = "1.2.0.192.nozone.example"
    answered = [*product(clients, [NAMES[0], NAMES[5], ZONE, nozone], ("A", "TXT"))]
    answered.append(("127.0.0.2", nozone, "A"))  # a zone's ignore does not reach names in no zone
    ignored = [("127.6.0.1", NAMES[0], "A"), ("127.6.0.1", nozone, "A"), ("127.0.0.2", NAMES[0], "A")]
    with Rbldnsd(specs) as ref:
        assert differences(server, ref, answered) == []
        assert replied(ref.port, ignored) == []  # a global ignore: not even REFUSED for no zone
        assert replied(server.port, ignored) == []


def test_ignore_and_refuse_over_udp_and_tcp(ours) -> None:  # type: ignore[no-untyped-def]
    server = ours(f"{ZONE}:ip4set:{DATA}", f"{ZONE}:acl:{EXAMPLE}")
    name = qname(4, "192.0.2.1", ZONE)
    for tcp in (False, True):
        assert ask_from(server.port, name, "A", "127.0.0.2", tcp=tcp, timeout=0.5) is None
        refused = ask_from(server.port, name, "A", "127.0.0.3", tcp=tcp)
        assert refused is not None and rcode(refused) == "REFUSED"
        listed = ask_from(server.port, name, "TXT", "127.0.0.6", tcp=tcp)
        assert listed is not None
        assert values(listed, "TXT") == [
            '"Resolver 127.0.0.6 may not query this list, see https://bl.example.org/access"'
        ]
        usual = ask_from(server.port, name, "A", "127.0.0.1", tcp=tcp)
        assert usual is not None and values(usual, "A") == ["127.0.0.2"]


def test_ipv6_client(ours, tmp_path) -> None:  # type: ignore[no-untyped-def]
    acl = tmp_path / "v6.acl"
    acl.write_text("::1 :7:IPv6 resolver $\n")
    server = ours("--listen", "[::1]:0", f"{ZONE}:ip4set:{DATA}", f"{ZONE}:acl:{acl}")
    found = poll(lambda: re.findall(r"listening on \[::1\]:(\d+) ", server.log))
    port = int(found[0])
    query = dns.message.make_query(qname(4, "192.0.2.99", ZONE), "TXT")
    reply = dns.query.udp(query, "::1", port=port, timeout=3, source="::1")
    assert values(reply, "TXT") == ['"IPv6 resolver ::1"']
    assert rcode(server.ask(qname(4, "192.0.2.99", ZONE))) == "NXDOMAIN"  # from 127.0.0.1: as usual


def test_zone_check_names_acl_problems(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.acl"
    bad.write_text("127.0.0.1 :pass\n127.0.0.2 :nope\n$SOA 1h a b 0 1 1 1 1\n")
    result = run_cli("zone-check", f"{ZONE}:acl:{bad}", f":acl:{EXAMPLE}")
    assert result.returncode == 1, result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith(str(bad))]
    assert [line.split(":")[1] for line in lines] == ["2", "3"]
    assert run_cli("zone-check", f":acl:{EXAMPLE}", f"{ZONE}:ip4set:{DATA}").returncode == 0


def test_changed_global_acl_is_reloaded(ours, tmp_path) -> None:  # type: ignore[no-untyped-def]
    acl = tmp_path / "global.acl"
    acl.write_text("127.0.0.3 :refuse\n")
    server = ours("--check-interval", "1", f"{ZONE}:ip4set:{DATA}", f":acl:{acl}")
    name = qname(4, "192.0.2.1", ZONE)

    def answer() -> str:
        reply = ask_from(server.port, name, "A", "127.0.0.3")
        return "no reply" if reply is None else rcode(reply)

    assert answer() == "REFUSED"
    new = tmp_path / "new"
    new.write_text("127.0.0.3 :pass\n")
    os.replace(new, acl)  # as rsync does: a new file renamed over
    assert poll(lambda: answer() == "NOERROR", timeout=10)
