"""The columnar ZoneIndex against a reference that applies `decide` to every entry covering an address.

Entries here are keyed as the store keys them, (canonical target text, source), so an update keeps its
range and `fold()` finds the base entry a changed key hides by parsing the key. The spaces sit at the
edges of each family (address 0, the top, the 64-bit boundary of IPv6) where off-by-one and width
mistakes show; most entries are single addresses, as in a trap-fed list, with blocks and ranges
overlapping some of them.
"""

from __future__ import annotations

from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from dnsbl_server.addresses import parse_target
from dnsbl_server.index import Entry, Key, ZoneIndex, decide, target_text

TOP = {4: 2**32 - 1, 6: 2**128 - 1}
SPACES = {4: (0, 2**32 - 128), 6: (2**64 - 64, 2**128 - 128)}  # each 128 addresses from here
WIDTH = 128
NOWS = [0.0, 10.0, 20.0]
# family, lo, hi, excluded, code, reason, expires, source
Spec = tuple[int, int, int, bool, int, str, float | None, str]


@st.composite
def specs(draw: st.DrawFn, expiring: float) -> Spec:
    family = draw(st.sampled_from([4, 4, 6]))
    base = draw(st.sampled_from(SPACES[family]))
    shape = draw(st.sampled_from(["one", "one", "one", "cidr", "range"]))
    if shape == "one":
        lo = hi = draw(st.integers(0, WIDTH - 1))
    elif shape == "cidr":
        size = 1 << draw(st.integers(1, 7))
        lo = draw(st.integers(0, WIDTH // size - 1)) * size
        hi = lo + size - 1
    else:
        lo = draw(st.integers(0, WIDTH - 1))
        hi = draw(st.integers(lo, min(WIDTH - 1, lo + 30)))
    excluded = draw(st.integers(0, 5)) == 0
    code = draw(st.sampled_from([0x7F000002, 0x7F000003]))
    reason = draw(st.sampled_from(["trap $", "manual", ""]))
    expires = draw(st.sampled_from([10.0, 20.0])) if draw(st.floats(0, 1)) < expiring else None
    source = draw(st.sampled_from(["trap:bounce", "manual"]))
    return family, base + lo, base + hi, excluded, code, reason, expires, source


def make(spec: Spec) -> Entry:
    family, lo, hi, excluded, code, reason, expires, source = spec
    return Entry(
        (target_text(family, lo, hi, excluded), source), family, lo, hi, excluded, code, reason, expires
    )


def keyed(entries: Iterable[Entry]) -> dict[Key, Entry]:
    return {e.key: e for e in entries}  # a key names one entry in a zone, as in the store


@st.composite
def background(draw: st.DrawFn) -> list[Spec]:
    """Single addresses every `stride` addresses of one space: many lone entries, as in a trap list, for
    changes to land between, beside and on."""
    family = draw(st.sampled_from([4, 6]))
    base = draw(st.sampled_from(SPACES[family])) + draw(st.integers(0, 3))
    stride = draw(st.integers(2, 5))
    expires = draw(st.sampled_from([None, 20.0]))
    return [
        (family, a, a, False, 0x7F000002, "trap $", expires, "trap:bounce")
        for a in range(base, base + WIDTH - 3, stride)
    ]


lists = st.builds(
    lambda backgrounds, items: [spec for specs in backgrounds for spec in specs] + items,
    st.lists(background(), max_size=2),
    st.floats(0, 1).flatmap(lambda p: st.lists(specs(p), max_size=30)),
)


# --- the reference ----------------------------------------------------------------------------


def covering(entries: Iterable[Entry], family: int, address: int) -> list[Entry]:
    return [e for e in entries if e.family == family and e.lo <= address <= e.hi]


def addresses(family: int) -> Iterable[int]:
    for base in SPACES[family]:
        yield from range(max(base - 2, 0), min(base + WIDTH + 2, TOP[family] + 1))


def assert_answers(index: ZoneIndex, entries: dict[Key, Entry], now: float) -> None:
    for family in (4, 6):
        listed = []
        for address in addresses(family):
            cover = covering(entries.values(), family, address)
            got = index.lookup(family, address, now)
            assert sorted(got, key=repr) == sorted(decide(cover, now), key=repr), (family, address)
            assert index.excludes(family, address, now) == any(e.excluded and e.live(now) for e in cover)
            if got:
                listed.append(address)
        assert_spans(index, family, listed, now)


def assert_spans(index: ZoneIndex, family: int, listed: list[int], now: float) -> None:
    """any_listed over aligned blocks of each space, across its edges, and the whole family."""
    spans = [(0, TOP[family])]
    for base in SPACES[family]:
        spans += [
            (base + lo, base + lo + size - 1) for size in (1, 4, 16, 128) for lo in range(0, WIDTH, size)
        ]
        spans += [(max(base - 3, 0), base + 2), (base + WIDTH - 3, min(base + WIDTH + 5, TOP[family]))]
    for lo, hi in spans:
        assert index.any_listed(family, lo, hi, now) == any(lo <= a <= hi for a in listed), (lo, hi)


def assert_entries(index: ZoneIndex, entries: dict[Key, Entry]) -> None:
    got = list(index.entries())
    assert [(e.family, e.lo) for e in got] == sorted((e.family, e.lo) for e in got)  # what build streams
    assert sorted(got, key=repr) == sorted(entries.values(), key=repr)


def assert_segments(index: ZoneIndex) -> None:
    """Sorted, disjoint segments (a folded index: no overlay), each listing exactly the entries that
    cover it."""
    entries = list(index.entries())
    for family, segments in index.segments.items():
        starts, ends = list(segments.starts), list(segments.ends)
        assert all(s <= e for s, e in zip(starts, ends, strict=True))
        assert all(e < s for e, s in zip(ends, starts[1:], strict=False))
        for start, end in zip(starts, ends, strict=True):
            found = set(index.candidates(family, start))
            assert (
                found == set(index.candidates(family, end)) == set(covering(entries, family, start)) != set()
            )


# --- properties -------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(lists, st.sampled_from(NOWS))
def test_build_answers_as_the_reference(items: list[Spec], now: float) -> None:
    entries = keyed(make(s) for s in items)
    index = ZoneIndex.build(entries.values())  # unsorted: built after a sort
    assert_answers(index, entries, now)
    assert_entries(index, entries)
    assert_segments(index)
    ordered = ZoneIndex.build(sorted(entries.values(), key=lambda e: (e.family, e.lo)))
    assert_answers(ordered, entries, now)


def changes_for(entries: dict[Key, Entry], draw: st.DrawFn) -> dict[Key, Entry | None]:
    """Adds, updates of base entries (same key: same range, new values) and removals, some of keys
    that are not there."""
    out: dict[Key, Entry | None] = {}
    for spec in draw(st.lists(specs(0.3), max_size=8)):
        added = make(spec)
        out[added.key] = added
    keys = sorted(entries)
    for key in draw(st.lists(st.sampled_from(keys), max_size=8)) if keys else []:
        old = entries[key]
        if draw(st.booleans()):
            out[key] = None
        else:
            code, expires = (
                draw(st.sampled_from([0x7F000004, 0x7F000002])),
                draw(st.sampled_from([None, 20.0])),
            )
            out[key] = Entry(key, old.family, old.lo, old.hi, old.excluded, code, "updated", expires)
    return out


@settings(max_examples=150, deadline=None)
@given(lists, st.data(), st.sampled_from(NOWS))
def test_changes_and_folds_answer_as_the_reference(
    items: list[Spec], data: st.DataObject, now: float
) -> None:
    entries = keyed(make(s) for s in items)
    index = first = ZoneIndex.build(entries.values())
    for _ in range(data.draw(st.integers(1, 3))):
        for _ in range(data.draw(st.integers(1, 2))):
            changes = changes_for(entries, data.draw)
            index = index.with_changes(changes)
            for key, entry in changes.items():
                entries.pop(key, None)
                if entry is not None:
                    entries[key] = entry
            assert_answers(index, entries, now)
        index = index.fold()
        assert not index.changed
        assert_answers(index, entries, now)
        assert_entries(index, entries)
        assert_segments(index)
    assert_answers(first, keyed(make(s) for s in items), now)  # the first index is untouched


# --- by example -------------------------------------------------------------------------------


def one(text: str, source: str = "trap", **values: object) -> Entry:
    t = parse_target(text)
    fields = dict(code=0x7F000002, reason="r", expires=None) | values
    return Entry((text, source), t.family, t.lo, t.hi, t.excluded, **fields)  # type: ignore[arg-type]


def test_lone_entries_need_no_runs_and_a_block_makes_one() -> None:
    lone = ZoneIndex.build([one("192.0.2.1"), one("192.0.2.3"), one("2001:db8::1")])
    assert len(lone.segments[4].shared) == 0 and len(lone.segments[4].ids) == 0
    index = lone.with_changes({("192.0.2.0/30", "manual"): one("192.0.2.0/30", "manual")}).fold()
    segments = index.segments[4]
    assert list(segments.starts) == [0xC0000200, 0xC0000201, 0xC0000202, 0xC0000203]
    assert len(segments.shared) == 3 and list(segments.joint) == [0, 1, 2, 3]
    assert {e.key[0] for e in index.lookup(4, 0xC0000201, 0.0)} == {"192.0.2.1"}
    assert {e.key[0] for e in index.lookup(4, 0xC0000202, 0.0)} == {"192.0.2.0/30"}


def test_fold_keeps_attribute_ids_and_copies_untouched_rows() -> None:
    base = ZoneIndex.build(one(f"10.0.{i}.1", reason=f"r{i % 3}") for i in range(200))
    index = base.with_changes(
        {("10.0.7.1", "trap"): None, ("10.0.9.9", "trap"): one("10.0.9.9", reason="new")}
    )
    folded = index.fold()
    assert folded.segments[4].attrs[:3] == base.segments[4].attrs
    assert len(folded.segments[4].starts) == 200
    assert folded.lookup(4, 0x0A000701, 0.0) == () and folded.lookup(4, 0x0A000909, 0.0)[0].reason == "new"
    assert folded.lookup(4, 0x0A000801, 0.0)[0].key == ("10.0.8.1", "trap")


def test_expiries_are_sparse_until_most_rows_have_one() -> None:
    def index(expiring: bool) -> ZoneIndex:  # 10.0.0.0 on: every 20th expires, or every 20th does not
        return ZoneIndex.build(
            one(f"10.0.{i // 256}.{i % 256}", expires=5.0 if (i % 20 == 0) == expiring else None)
            for i in range(1000)
        )

    sparse, dense = index(True), index(False)
    assert sparse.segments[4].items.expires.many is None and len(sparse.segments[4].items.expires.few) == 50
    assert dense.segments[4].items.expires.many is not None
    for built, expiring, never in ((sparse, 20, 21), (dense, 21, 20)):  # 10.0.0.20, 10.0.0.21
        assert built.lookup(4, 0x0A000000 + expiring, 4.9)[0].expires == 5.0
        assert built.lookup(4, 0x0A000000 + expiring, 5.0) == ()
        assert built.lookup(4, 0x0A000000 + never, 9.0)[0].expires is None
