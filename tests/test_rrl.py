"""Response rate limiting: the pure policy (`rrl`) as tables and properties. Replies are real DNS
messages made by dnspython (the SOA of an NXDOMAIN compressed into the question, as ours are); time is a
parameter, so nothing sleeps."""

from __future__ import annotations

import random
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsbl_server.config import from_file
from dnsbl_server.errors import ConfigError
from dnsbl_server.rrl import Limiter, RrlSettings, client_prefix, response_key, truncated

ZONE = "bl.example.org."


def reply(name: str, qtype: str = "A", rcode: int = 0, zone: str = ZONE, qid: int = 7) -> bytes:
    """A reply as our server makes it: a listed answer, or NXDOMAIN/NODATA with the zone's SOA."""
    query = dns.message.make_query(name, qtype)
    query.id = qid
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    if rcode == 0 and qtype == "A":
        response.answer.append(dns.rrset.from_text(name, 2100, "IN", "A", "127.0.0.2"))
    elif rcode in (0, 3):
        soa = f"ns.{zone} hostmaster.{zone} 1 7200 1800 604800 600"
        response.authority.append(dns.rrset.from_text(zone, 600, "IN", "SOA", soa))
    return response.to_wire()


def listed(number: int) -> str:
    """A different listed address for every number."""
    return f"{number % 256}.{number // 256 % 256}.{number // 65536 % 256}.10.{ZONE}"


def outcome(sent: bytes | None, original: bytes) -> str:
    if sent is None:
        return "drop"
    return "pass" if sent == original else "slip"


def run(limiter: Limiter, host: str, replies: list[bytes], now: float) -> list[str]:
    return [outcome(limiter.check(host, one, now), one) for one in replies]


SMALL = RrlSettings(responses_per_second=5, nxdomains_per_second=10, all_per_second=50, exempt=())


# --- keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        (reply(listed(1)), reply(listed(1).upper()), True),  # case (0x20 resolvers) is not a new answer
        (reply(listed(1)), reply(listed(1), qid=99), True),  # nor is the id
        (reply(listed(1)), reply(listed(2)), False),  # another name
        (reply(listed(1)), reply(listed(1), "TXT"), False),  # another type
        (reply(listed(1)), reply(listed(1), "MX"), False),  # NODATA for the name is another answer
        (reply(listed(1), "MX"), reply(listed(2), "MX"), False),  # NODATA is keyed by name
        (reply(listed(1), rcode=3), reply(listed(2), rcode=3), True),  # NXDOMAIN: by zone
        (reply(listed(1), rcode=3), reply(listed(1).upper(), rcode=3), True),
        (reply("1.2.0.10.a.example.", rcode=3, zone="a.example."), reply(listed(2), rcode=3), False),
        (reply("x.example.", rcode=5), reply("y.other.", rcode=5), True),  # errors: by rcode
        (reply("x.example.", rcode=5), reply("x.example.", rcode=2), False),
        (reply(listed(1), rcode=3), reply(listed(1)), False),
    ],
)
def test_what_counts_as_the_same_response(one: bytes, other: bytes, same: bool) -> None:
    assert (response_key(one) == response_key(other)) is same


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        ("192.0.2.1", "192.0.2.254", True),  # one /24
        ("192.0.2.1", "192.0.3.1", False),
        ("2001:db8:0:1::1", "2001:db8:0:ff::9", True),  # one /56
        ("2001:db8:0:1::1", "2001:db8:0:100::1", False),
        ("::ffff:192.0.2.1", "192.0.2.7", True),  # IPv4-mapped is IPv4
        ("fe80::1%eth0", "fe80::2", True),
    ],
)
def test_what_counts_as_the_same_client(one: str, other: str, same: bool) -> None:
    assert (client_prefix(one) == client_prefix(other)) is same


def test_a_truncated_reply_is_the_question_with_tc_and_no_records() -> None:
    for original in (reply(listed(1)), reply(listed(1), rcode=3), reply(listed(1), "TXT")):
        cut = dns.message.from_wire(truncated(original))
        full = dns.message.from_wire(original)
        assert cut.flags & dns.flags.TC and cut.id == full.id and cut.rcode() == full.rcode()
        assert cut.question == full.question and not (cut.answer or cut.authority or cut.additional)
        assert len(truncated(original)) <= len(dns.message.make_query(listed(1), "A").to_wire())


# --- limits -------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=20),
    st.integers(min_value=0, max_value=10**6),
)
def test_a_resolver_asking_many_different_names_is_never_limited(per_second: list[int], start: int) -> None:
    """Up to all_per_second different listed names a second, second after second: all answered."""
    limiter = Limiter(SMALL)
    number = start
    for second, count in enumerate(per_second):
        replies = [reply(listed(number + i)) for i in range(count)]
        number += count
        assert run(limiter, "192.0.2.1", replies, 1000 + second + 0.5) == ["pass"] * count


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=40))
def test_the_same_answer_within_its_rate_is_never_limited(per_second: list[int]) -> None:
    limiter = Limiter(SMALL)
    for second, count in enumerate(per_second):
        assert run(limiter, "192.0.2.1", [reply(listed(1))] * count, 50 + second) == ["pass"] * count


@pytest.mark.parametrize(
    ("slip", "limited"),
    [(0, ["drop"] * 6), (1, ["slip"] * 6), (2, ["drop", "slip"] * 3), (3, ["drop", "drop", "slip"] * 2)],
)
def test_the_same_answer_over_its_rate_is_limited_and_every_nth_slips(slip: int, limited: list[str]) -> None:
    limiter = Limiter(RrlSettings(responses_per_second=5, slip=slip, exempt=()))
    assert run(limiter, "192.0.2.1", [reply(listed(1))] * 11, 10.0) == ["pass"] * 5 + limited


def test_a_flood_of_one_answer_is_limited_but_other_answers_to_that_client_are_not() -> None:
    limiter = Limiter(SMALL)
    flood = run(limiter, "192.0.2.1", [reply(listed(1))] * 40, 10.2)
    assert flood.count("pass") == 5 and flood.count("slip") == 35 // 2
    assert run(limiter, "192.0.2.9", [reply(listed(2))], 10.3) == ["pass"]  # same /24, other answer
    assert run(limiter, "192.0.3.1", [reply(listed(1))], 10.3) == ["pass"]  # other /24, same answer


def test_a_flood_must_stop_for_its_window_before_it_is_answered_again() -> None:
    limiter = Limiter(RrlSettings(responses_per_second=5, window=15, exempt=()))
    flood = reply(listed(1))
    for second in range(30):  # 50 a second for 30 s: the debt reaches its floor
        run(limiter, "192.0.2.1", [flood] * 50, 100 + second)
    later = [run(limiter, "192.0.2.1", [flood], 129 + wait)[0] for wait in (1, 5, 10)]
    assert "pass" not in later
    assert run(limiter, "192.0.2.1", [flood], 129 + 17) == ["pass"]  # a window and a bit later


def test_a_client_briefly_over_the_rate_is_answered_again_within_two_seconds() -> None:
    limiter = Limiter(RrlSettings(responses_per_second=5, exempt=()))
    assert run(limiter, "192.0.2.1", [reply(listed(1))] * 7, 10.0).count("pass") == 5
    assert run(limiter, "192.0.2.1", [reply(listed(1))], 12.0) == ["pass"]


def test_random_names_in_one_zone_are_one_nxdomain_response() -> None:
    limiter = Limiter(SMALL)
    replies = [reply(f"{random.randrange(256)}.{n}.99.10.{ZONE}", rcode=3) for n in range(30)]
    assert run(limiter, "192.0.2.1", replies, 5.0) == ["pass"] * 10 + ["drop", "slip"] * 10
    assert len(limiter.responses) == 1


def test_the_ceiling_on_all_answers_to_one_client() -> None:
    limiter = Limiter(SMALL)
    replies = [reply(listed(n)) for n in range(70)]  # all different: only the ceiling (50) applies
    assert run(limiter, "192.0.2.1", replies, 5.0) == ["pass"] * 50 + ["drop", "slip"] * 10
    assert run(limiter, "198.51.100.1", [reply(listed(1))], 5.0) == ["pass"]  # others untouched


@pytest.mark.parametrize(
    ("exempt", "host", "limited"),
    [
        (("127.0.0.0/8", "::1/128"), "127.0.0.1", False),  # the default
        (("127.0.0.0/8", "::1/128"), "::1", False),
        (("127.0.0.0/8", "::1/128"), "::ffff:127.0.0.1", False),
        (("127.0.0.0/8", "::1/128"), "192.0.2.1", True),
        (("10.0.0.0/8",), "10.1.2.3", False),
        (("10.0.0.0/8",), "127.0.0.1", True),
        (("192.0.2.7/32",), "192.0.2.7", False),  # the address, not its /24
        (("192.0.2.7/32",), "192.0.2.8", True),
        (("2001:db8::/32",), "2001:db8:1::1", False),
        ((), "127.0.0.1", True),
    ],
)
def test_exempt_networks_are_never_limited(exempt: tuple[str, ...], host: str, limited: bool) -> None:
    limiter = Limiter(RrlSettings(responses_per_second=1, all_per_second=1, exempt=exempt))
    outcomes = run(limiter, host, [reply(listed(1))] * 20, 3.0)
    assert (outcomes != ["pass"] * 20) is limited


def test_memory_is_bounded_under_a_flood_from_spoofed_sources() -> None:
    limiter = Limiter(RrlSettings(responses_per_second=5, max_table=1000, exempt=()))
    flood = reply(listed(1))
    run(limiter, "198.51.100.1", [flood] * 40, 0.0)  # one real flooder, in debt
    rng = random.Random(8)
    names = [reply(listed(n), rcode=rng.choice((0, 3))) for n in range(300)]
    for n in range(30000):  # spoofed sources: a new /24 almost every query, random names
        host = f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.1"
        limiter.check(host, rng.choice(names), n / 10000)
        assert len(limiter.responses) <= 1000 and len(limiter.clients) <= 1000
        assert len(limiter.hosts) <= 1000
    assert run(limiter, "198.51.100.1", [flood] * 4, 2.5).count("pass") == 0  # its debt was kept


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("responses_per_second", 0, "rrl responses_per_second must be a whole number, at least 1"),
        ("all_per_second", "10", "rrl all_per_second must be a whole number"),
        ("slip", -1, "rrl slip must be a whole number, at least 0"),
        ("window", True, "rrl window must be"),
        ("exempt", ("10.0.0.0/33",), "rrl exempt: '10.0.0.0/33' is not a network"),
    ],
)
def test_bad_settings_are_named(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        RrlSettings(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("", RrlSettings()),  # on by default
        ("[rrl]\nenabled = false\n", None),
        ("[rrl]\nenabled = true\nslip = 0\n", RrlSettings(slip=0)),
        ('[rrl]\nexempt = ["10.0.0.0/8"]\nwindow = 5\n', RrlSettings(exempt=("10.0.0.0/8",), window=5)),
        ("[rrl]\nresponses_per_second = 7\nall_per_second = 70\n", RrlSettings(7, all_per_second=70)),
    ],
)
def test_the_config_file_table(tmp_path: Path, table: str, expected: RrlSettings | None) -> None:
    path = tmp_path / "dnsbl.toml"
    path.write_text(table)
    assert from_file(path)[0].rrl == expected


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[rrl]\nrate = 5\n", r"\[rrl\]: unknown setting\(s\) rate"),
        ('[rrl]\nenabled = "no"\n', r"\[rrl\]: enabled must be true or false"),
        ("[rrl]\nslip = 1.5\n", r"\[rrl\]: rrl slip must be a whole number"),
        ('[rrl]\nexempt = ["nowhere"]\n', r"\[rrl\]: rrl exempt: 'nowhere' is not a network"),
        ("[rrl]\nexempt = [1]\n", r"\[rrl\]: exempt: expected a list of strings"),
    ],
)
def test_bad_config_values_are_named(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "dnsbl.toml"
    path.write_text(table)
    with pytest.raises(ConfigError, match=message):
        from_file(path)


def test_an_ipv4_mapped_exempt_network_exempts_ipv4_clients() -> None:
    limiter = Limiter(RrlSettings(responses_per_second=1, all_per_second=1, exempt=("::ffff:10.0.0.0/104",)))
    assert run(limiter, "10.1.2.3", [reply(listed(1))] * 5, 3.0) == ["pass"] * 5
    assert run(limiter, "11.1.2.3", [reply(listed(1))] * 5, 3.0) != ["pass"] * 5
