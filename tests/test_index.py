"""ZoneIndex against a brute-force reading of the matching rule (index.py, README "Which entries answer").

The reference below scans every entry for every address. The index under test flattens entries into
segments and keeps later changes in an overlay; both must give the reference's answers, for every address
of a small space, for `any_listed` over spans, and before and after `fold()`.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_left
from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from dnsbl_server.index import Entry, Key, ZoneIndex

SPACE = 256  # addresses per family in the generated data
BASE = {4: int(ipaddress.IPv4Address("10.0.0.0")), 6: int(ipaddress.IPv6Address("2001:db8::"))}
TOP = {4: 2**32 - 1, 6: 2**128 - 1}
NOWS = [0.0, 10.0, 20.0]
EXPIRIES = [None, None, None, 10.0, 20.0]  # some `now` values fall exactly on an expiry
CODE2, CODE3 = 0x7F000002, 0x7F000003
Spec = tuple[int, int, int, bool, int, float | None]  # family, lo, hi, excluded, code, expires
Span = tuple[int, int, int]  # family, start in the space, length - 1


def reference(entries: Iterable[Entry], family: int, address: int, now: float) -> set[Entry]:
    """The rule, read literally: the smallest unexpired listings answer unless an exclusion at least as
    specific covers the address."""
    covering = [
        e
        for e in entries
        if e.family == family and e.lo <= address <= e.hi and (e.expires is None or now < e.expires)
    ]
    listings = [e for e in covering if not e.excluded]
    if not listings:
        return set()
    smallest = min(e.hi - e.lo + 1 for e in listings)
    if any(e.excluded and e.hi - e.lo + 1 <= smallest for e in covering):
        return set()
    return {e for e in listings if e.hi - e.lo + 1 == smallest}


# --- generated data ---------------------------------------------------------------------------


@st.composite
def entry_specs(draw: st.DrawFn) -> Spec:
    """(family, lo, hi, excluded, code, expires) inside the small space of its family."""
    family = draw(st.sampled_from([4, 4, 6]))
    if draw(st.booleans()):  # a CIDR block: many equal sizes, so ties and nested blocks are common
        size = 1 << draw(st.integers(0, 8))
        lo = draw(st.integers(0, SPACE // size - 1)) * size
        hi = lo + size - 1
    else:
        lo = draw(st.integers(0, SPACE - 1))
        hi = draw(st.integers(lo, min(SPACE - 1, lo + 40)))
    excluded = draw(st.sampled_from([False, False, True]))
    code = draw(st.sampled_from([CODE2, CODE3]))
    return family, BASE[family] + lo, BASE[family] + hi, excluded, code, draw(st.sampled_from(EXPIRIES))


def make(key: Key, spec: Spec) -> Entry:
    family, lo, hi, excluded, code, expires = spec
    return Entry(key, family, lo, hi, excluded, code, f"reason for {key[0]}", expires)


def keyed(specs: list[Spec], start: int = 0) -> list[Entry]:
    return [make((f"e{start + i}", "test"), spec) for i, spec in enumerate(specs)]


spec_lists = st.lists(entry_specs(), max_size=14)
spans = st.tuples(st.sampled_from([4, 6]), st.integers(-3, SPACE + 2), st.integers(0, 60))


# --- checks -----------------------------------------------------------------------------------


def addresses(family: int) -> range:
    return range(BASE[family] - 2, BASE[family] + SPACE + 2)


def expected_answers(entries: list[Entry], now: float) -> dict[tuple[int, int], set[Entry]]:
    return {(f, a): reference(entries, f, a, now) for f in (4, 6) for a in addresses(f)}


def assert_lookups(index: ZoneIndex, expected: dict[tuple[int, int], set[Entry]], now: float) -> None:
    for (family, address), answer in expected.items():
        got = index.lookup(family, address, now)
        assert len(got) == len(set(got)), (family, address)
        assert set(got) == answer, (family, address, now)


def assert_spans(
    index: ZoneIndex,
    expected: dict[tuple[int, int], set[Entry]],
    now: float,
    extra: list[Span],
) -> None:
    """any_listed over every aligned block of the space, the whole family, and some random spans."""
    for family in (4, 6):
        listed = [a for a in addresses(family) if expected[family, a]]  # sorted
        blocks = [
            (BASE[family] + lo, BASE[family] + lo + size - 1)
            for size in (2, 4, 8, 16, 32, 64, 128, 256)
            for lo in range(0, SPACE, size)
        ]
        blocks += [
            (0, TOP[family]),
            (BASE[family] - 1, BASE[family]),
            (BASE[family] + SPACE - 1, TOP[family]),
        ]
        blocks += [(BASE[f] + lo, BASE[f] + lo + length) for f, lo, length in extra if f == family]
        for lo, hi in blocks:
            first = bisect_left(listed, lo)
            some = first < len(listed) and listed[first] <= hi
            assert index.any_listed(family, lo, hi, now) == some, (family, lo, hi)


# --- properties -------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(spec_lists, st.sampled_from(NOWS), st.lists(spans, max_size=10))
def test_index_matches_the_rule(specs: list[Spec], now: float, extra: list[Span]) -> None:
    entries = keyed(specs)
    index, expected = ZoneIndex.build(entries), expected_answers(entries, now)
    assert_lookups(index, expected, now)
    assert_spans(index, expected, now, extra)
    assert sorted(index.entries(), key=lambda e: e.key) == sorted(entries, key=lambda e: e.key)


changes = st.lists(
    st.tuples(st.integers(0, 20), st.one_of(st.none(), entry_specs())),  # key number, new entry or removal
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(
    spec_lists, st.lists(changes, min_size=1, max_size=3), st.sampled_from(NOWS), st.lists(spans, max_size=6)
)
def test_overlay_matches_a_fresh_build(
    specs: list[Spec], batches: list[list[tuple[int, Spec | None]]], now: float, extra: list[Span]
) -> None:
    initial = keyed(specs)
    final = {e.key: e for e in initial}
    base = index = ZoneIndex.build(initial)
    for batch in batches:
        update = {
            (f"e{n}", "test"): None if spec is None else make((f"e{n}", "test"), spec) for n, spec in batch
        }
        index = index.with_changes(update)
        for key, entry in update.items():
            final.pop(key, None)
            if entry is not None:
                final[key] = entry
    entries = list(final.values())
    fresh, folded = ZoneIndex.build(entries), index.fold()
    assert not folded.changed
    expected = expected_answers(entries, now)
    for candidate in (index, fresh, folded):
        assert sorted(candidate.entries(), key=lambda e: e.key) == sorted(entries, key=lambda e: e.key)
        assert_lookups(candidate, expected, now)
        assert_spans(candidate, expected, now, extra)
    assert not base.changed
    assert_lookups(base, expected_answers(initial, now), now)  # the first index is still what it was


@settings(max_examples=50, deadline=None)
@given(spec_lists, spec_lists, st.sampled_from(NOWS))
def test_old_index_is_untouched_by_changes(specs: list[Spec], added: list[Spec], now: float) -> None:
    initial = keyed(specs)
    index = ZoneIndex.build(initial)
    newer = index.with_changes({e.key: e for e in keyed(added, start=100)})
    newer.with_changes({e.key: None for e in initial})
    assert_lookups(index, expected_answers(initial, now), now)
    assert_lookups(newer, expected_answers(initial + keyed(added, start=100), now), now)


# --- the rule, by example ---------------------------------------------------------------------


def entry(
    name: str,
    target: str,
    *,
    excluded: bool = False,
    code: int = CODE2,
    expires: float | None = None,
    source: str = "test",
) -> Entry:
    net = ipaddress.ip_network(target)
    return Entry((name, source), net.version, int(net[0]), int(net[-1]), excluded, code, name, expires)


def ip(text: str) -> tuple[int, int]:
    address = ipaddress.ip_address(text)
    return address.version, int(address)


def answering(index: ZoneIndex, address: str, now: float = 0.0) -> set[str]:
    return {e.key[0] for e in index.lookup(*ip(address), now)}


def test_readme_examples() -> None:
    index = ZoneIndex.build([entry("net", "192.0.2.0/24"), entry("hole", "192.0.2.7", excluded=True)])
    assert answering(index, "192.0.2.7") == set()
    assert answering(index, "192.0.2.8") == {"net"}
    index = ZoneIndex.build([entry("half", "192.0.2.0/25", excluded=True), entry("one", "192.0.2.7")])
    assert answering(index, "192.0.2.7") == {"one"}
    assert answering(index, "192.0.2.8") == set()


def test_most_specific_listing_answers_alone() -> None:
    index = ZoneIndex.build([entry("wide", "10.0.0.0/9"), entry("narrow", "10.0.0.0/12", code=CODE3)])
    assert answering(index, "10.0.0.1") == {"narrow"}
    assert answering(index, "10.16.0.1") == {"wide"}
    assert answering(index, "10.128.0.1") == set()


def test_equally_specific_listings_all_answer() -> None:
    index = ZoneIndex.build(
        [entry("hand", "192.0.2.7", source="manual"), entry("trap", "192.0.2.7", code=CODE3, source="trap")]
    )
    assert answering(index, "192.0.2.7") == {"hand", "trap"}
    assert {e.code for e in index.lookup(*ip("192.0.2.7"), 0.0)} == {CODE2, CODE3}


def test_exclusion_of_equal_size_wins() -> None:
    index = ZoneIndex.build([entry("a", "192.0.2.0/24"), entry("b", "192.0.2.0/24", excluded=True)])
    assert answering(index, "192.0.2.1") == set()
    assert not index.any_listed(*ip("192.0.2.0"), int(ipaddress.IPv4Address("192.0.2.255")), 0.0)


def test_expiry_is_exclusive() -> None:
    index = ZoneIndex.build(
        [entry("wide", "192.0.2.0/24"), entry("short", "192.0.2.7", code=CODE3, expires=100)]
    )
    assert answering(index, "192.0.2.7", now=99.9) == {"short"}
    assert answering(index, "192.0.2.7", now=100) == {"wide"}
    index = ZoneIndex.build(
        [entry("wide", "192.0.2.0/24"), entry("hole", "192.0.2.7", excluded=True, expires=50)]
    )
    assert answering(index, "192.0.2.7", now=49) == set()
    assert answering(index, "192.0.2.7", now=50) == {"wide"}


def test_ipv6_entries() -> None:
    index = ZoneIndex.build(
        [
            entry("v6", "2001:db8::/64"),
            entry("v6hole", "2001:db8::1", excluded=True),
            entry("v4", "10.0.0.0/8"),
        ]
    )
    assert answering(index, "2001:db8::2") == {"v6"}
    assert answering(index, "2001:db8::1") == set()
    assert answering(index, "2001:db8:0:1::") == set()
    assert answering(index, "::a00:1") == set()  # IPv6 ::10.0.0.1 is not the IPv4 address
    assert answering(index, "10.0.0.1") == {"v4"}


def test_any_listed_sees_an_overlay_listing_past_a_base_exclusion() -> None:
    """An overlay listing that outlives a base exclusion must be seen where the exclusion ends."""
    base = ZoneIndex.build([entry("hole", "10.0.0.0/30", excluded=True)])
    index = base.with_changes({("net", "test"): entry("net", "10.0.0.0/29")})
    lo, hi = ip("10.0.0.0")[1], ip("10.0.0.7")[1]
    assert answering(index, "10.0.0.4") == {"net"}
    assert index.any_listed(4, lo, hi, 0.0)
    assert index.fold().any_listed(4, lo, hi, 0.0)


def test_overlay_replaces_and_removes_by_key() -> None:
    index = ZoneIndex.build([entry("a", "192.0.2.0/24"), entry("b", "198.51.100.0/24")])
    index = index.with_changes({("a", "test"): entry("a", "192.0.2.0/24", code=CODE3), ("b", "test"): None})
    assert [e.code for e in index.lookup(*ip("192.0.2.1"), 0.0)] == [CODE3]
    assert answering(index, "198.51.100.1") == set()
    index = index.with_changes({("b", "test"): entry("b", "198.51.100.0/25")})
    assert answering(index, "198.51.100.1") == {"b"}
    assert answering(index, "198.51.100.200") == set()
    assert {e.key[0] for e in index.fold().entries()} == {"a", "b"}
