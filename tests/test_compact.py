"""The compact index of IP data files, and its snapshots, against the reference they replace.

`compact.CompactIndex` must answer exactly as `index.ZoneIndex` built from the same entries, for every
address (`lookup`) and span (`any_listed`): random ranges, overlaps, exclusions and same-size duplicates
with other values. `compact.read_compact` (which takes plain addresses by inet_pton) must read a file as
`zonefile.read_dataset` does. A snapshot must give back what was built, be rebuilt when its files change,
and be ignored when it is damaged.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsbl_server.compact import EXCLUDED, Builder, CompactIndex, compact_of, count_entries, read_compact
from dnsbl_server.datafiles import DataFiles, load_dataset, parse_spec
from dnsbl_server.index import Entry, ZoneIndex
from dnsbl_server.snapshot import MAGIC, load_ip, snapshot_path
from dnsbl_server.zonefile import IP_TYPES, rbldnsd_blocks, read_dataset

SPACE = 512
BASE = {4: int(ipaddress.IPv4Address("10.0.0.0")), 6: int(ipaddress.IPv6Address("2001:db8::"))}
TOP = {4: 2**32 - 1, 6: 2**128 - 1}
CODES = [0x7F000002, 0x7F000003]
TEXTS = ["", "listed: $", "other"]
Spec = tuple[int, int, int, bool, int, str]  # family, lo, hi, excluded, code, text


def answers(entries: tuple[Entry, ...]) -> set[tuple[int, str]]:
    return {(e.code, e.reason) for e in entries}


def addresses(family: int) -> list[int]:
    """Every address of the generated space, the ones just outside it, and the ends of the family."""
    return [0, TOP[family], *range(BASE[family] - 2, BASE[family] + SPACE + 2)]


def same_answers(ours: CompactIndex, reference: ZoneIndex, spans: list[tuple[int, int, int]]) -> None:
    for family in (4, 6):
        for address in addresses(family):
            expected = answers(reference.lookup(family, address, 0.0))
            assert answers(ours.lookup(family, address, 0.0)) == expected, (family, hex(address))
    for family, lo, hi in spans:
        assert ours.any_listed(family, lo, hi, 0.0) == reference.any_listed(family, lo, hi, 0.0), (lo, hi)


# --- the index against ZoneIndex, on random entries -------------------------------------------


@st.composite
def entry_specs(draw: st.DrawFn) -> Spec:
    family = draw(st.sampled_from([4, 4, 6]))
    if draw(st.booleans()):  # a CIDR block, of few sizes at few places: ties and nesting are common
        size = 1 << draw(st.sampled_from([0, 0, 2, 4, 8]))
        lo = draw(st.integers(0, min(SPACE // size, 6) - 1)) * size
        hi = lo + size - 1
    else:  # any range: partial overlaps too
        lo = draw(st.integers(0, SPACE - 1))
        hi = draw(st.integers(lo, min(SPACE - 1, lo + 40)))
    excluded = draw(st.sampled_from([False, False, True]))
    return (
        family,
        BASE[family] + lo,
        BASE[family] + hi,
        excluded,
        draw(st.sampled_from(CODES)),
        draw(st.sampled_from(TEXTS)),
    )


def both(specs: list[Spec]) -> tuple[CompactIndex, ZoneIndex]:
    builder = Builder("test")
    for family, lo, hi, excluded, code, text in specs:
        builder.add(family, lo, hi, EXCLUDED if excluded else builder.value(code, text))
    entries = [Entry((str(i), "t"), f, lo, hi, x, c, t) for i, (f, lo, hi, x, c, t) in enumerate(specs)]
    return builder.build(), ZoneIndex.build(entries)


spans = st.lists(
    st.tuples(st.sampled_from([4, 6]), st.integers(-3, SPACE + 2), st.integers(0, 60)).map(
        lambda s: (s[0], BASE[s[0]] + s[1], BASE[s[0]] + s[1] + s[2])
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(entry_specs(), max_size=16), spans)
def test_answers_as_zone_index(specs, some_spans):  # type: ignore[no-untyped-def]
    ours, reference = both(specs)
    same_answers(ours, reference, some_spans)
    assert ours.count == len(specs)


@settings(max_examples=60, deadline=None)
@given(st.lists(entry_specs(), max_size=16), st.randoms(use_true_random=False), spans)
def test_input_order_does_not_matter(specs, rng, some_spans):  # type: ignore[no-untyped-def]
    shuffled = list(specs)
    rng.shuffle(shuffled)
    ours, _ = both(shuffled)
    _, reference = both(specs)
    same_answers(ours, reference, some_spans)


@st.composite
def disjoint_specs(draw: st.DrawFn) -> list[Spec]:
    """In order, nothing overlapping (the fast path): some adjacent, some excluded, few values."""
    out, at = [], BASE[4]
    for _ in range(draw(st.integers(0, 30))):
        at += draw(st.integers(0, 3))
        size = draw(st.integers(1, 5))
        excluded = draw(st.sampled_from([False, False, False, True]))
        out.append((4, at, at + size - 1, excluded, draw(st.sampled_from(CODES)), "t"))
        at += size
    return out


@settings(max_examples=100, deadline=None)
@given(disjoint_specs(), spans)
def test_the_fast_path_answers_the_same(specs, some_spans):  # type: ignore[no-untyped-def]
    ours, reference = both(specs)
    same_answers(ours, reference, some_spans)


@settings(max_examples=100, deadline=None)
@given(st.lists(entry_specs(), min_size=16, max_size=40), st.randoms(use_true_random=False), spans)
def test_a_few_entries_out_of_place(specs, rng, some_spans):  # type: ignore[no-untyped-def]
    """In order but for a few (the lines after a range holding them): spliced back, not all sorted."""
    nearly = sorted(specs, key=lambda s: s[1])
    for _ in range(rng.randint(1, 3)):
        nearly.insert(rng.randrange(len(nearly)), nearly.pop(rng.randrange(len(nearly))))
    ours, _ = both(nearly)
    _, reference = both(specs)
    same_answers(ours, reference, some_spans)


def test_adjacent_ranges_with_one_answer_merge() -> None:
    a, b = BASE[4], BASE[4] + 10
    ours, _ = both(
        [(4, a, a, False, CODES[0], ""), (4, a + 1, a + 3, False, CODES[0], ""), (4, b, b, False, 1, "")]
    )
    assert list(ours.segments[4].starts) == [a, b] and list(ours.segments[4].ends) == [a + 3, b]


def test_equally_specific_listings_all_answer_and_an_exclusion_wins() -> None:
    a = BASE[4]
    ours, _ = both(
        [
            (4, a, a + 255, False, CODES[0], "wide"),
            (4, a + 1, a + 1, False, CODES[0], "x"),
            (4, a + 1, a + 1, False, CODES[1], "y"),
        ]
        + [(4, a + 2, a + 2, True, 0, "")]
    )
    assert answers(ours.lookup(4, a + 1, 0)) == {(CODES[0], "x"), (CODES[1], "y")}
    assert ours.lookup(4, a + 2, 0) == () and answers(ours.lookup(4, a + 3, 0)) == {(CODES[0], "wide")}
    assert not ours.any_listed(4, a + 2, a + 2, 0) and ours.any_listed(4, a + 2, a + 3, 0)
    same, _ = both([(4, a, a + 3, False, CODES[0], ""), (4, a, a + 3, True, 0, ""), (4, a, a, False, 1, "")])
    assert same.lookup(4, a + 1, 0) == () and answers(same.lookup(4, a, 0)) == {(1, "")}


# --- reading files: as read_dataset, whatever the lines --------------------------------------

V4_LINES = [
    "10.0.0.{a}",
    "10.0.0.{a}",
    "10.0.1.{a}",
    "010.0.0.{a}",  # a leading zero: not for inet_pton, still an address to the reader
    " 10.0.0.{a} ",
    "10.0.0.{a} :3:own text $",
    "10.0.0.{a}:4",
    "10.0.0.{a}/30",
    "10.0.0.{a}/29 :5:",
    "10.0.0.{a}-10.0.0.{b}",
    "10.0.{a}",
    "!10.0.0.{a}",
    "!10.0.0.{a}/30",
    ":2:default $",
    ":3:",
    "$TTL 5m",
    "$SOA 1h ns.example hm.example 0 2h 30m 1w 10m",
    "$NS 1h ns1.example ns2.example",
    "$1 var{a}",
    "# comment",
    "",
    "10.0.0.{a}\x00",
    "bad line {a}",
    "10.0.0.300",
]
V6_LINES = [
    "2001:db8::{x}",
    "2001:db8::{x}/124",
    "2001:db8::{x}/126 :3:six $",
    "!2001:db8::{x}",
    "!2001:db8::{x}/127",
    ":4:v6 default",
    "$TTL 1h",
    "2001:db8::zz",
    "1.2.3.4",
]


@st.composite
def data_files(draw: st.DrawFn, v6: bool) -> str:
    templates = V6_LINES if v6 else V4_LINES
    lines = []
    for _ in range(draw(st.integers(0, 40))):
        template = draw(st.sampled_from(templates))
        a = draw(st.integers(0, 255))
        b = draw(st.integers(a, 255))
        x = format(draw(st.integers(0, SPACE - 1)), "x")
        lines.append(template.format(a=a, b=b, x=x))
    return "\n".join(lines) + "\n"


def reference_index(kind: str, paths: list[Path]) -> tuple[ZoneIndex, list[Entry], object]:
    """What datafiles built before the compact index: an Entry per rbldnsd block of every item."""
    parsed = read_dataset(kind, paths)
    entries = [
        Entry((str(b), f"{kind}:{item.line}"), b.family, b.lo, b.hi, b.excluded, item.code, item.txt or "")
        for item in parsed.items
        for b in rbldnsd_blocks(item, kind)
    ]
    return ZoneIndex.build(entries), entries, parsed


@pytest.mark.parametrize("kind", IP_TYPES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_files_read_as_read_dataset(kind, data, tmp_path_factory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("files")
    paths = []
    for n in range(data.draw(st.integers(1, 2))):  # two files are one logical file
        path = folder / f"data{n}"
        path.write_text(data.draw(data_files(kind.startswith("ip6"))))
        paths.append(path)
    reference, entries, parsed = reference_index(kind, paths)
    compiled = read_compact(kind, paths)
    assert compiled.problems == parsed.problems  # type: ignore[attr-defined]
    assert compiled.specials == parsed.specials  # type: ignore[attr-defined]
    assert compiled.index.count == len(entries)
    same_answers(compiled.index, reference, [])


def test_combined_sections_use_it_too() -> None:
    kind, items = "ip4set", read_dataset("ip4set", [Path("zones/ip4set.example")]).items
    assert isinstance(compact_of(kind, items), CompactIndex)


# --- snapshots --------------------------------------------------------------------------------


def big_file(path: Path, lines: int = 3000, seed: int = 5) -> Path:
    rng = random.Random(seed)
    body = [":3:big $", "$TTL 10m", "bad line", "10.0.0.0/30", "!10.0.0.1"]
    body += [str(ipaddress.IPv4Address(rng.randrange(2**32))) for _ in range(lines)]
    path.write_text("\n".join(body) + "\n")
    return path


def probes(path: Path) -> list[int]:
    listed = [i.target.lo for i in read_dataset("ip4set", [path]).items]
    return [*listed, *(a + 1 for a in listed), 0x0A000000, 0x0A000001, 0x0A000003]


def test_a_snapshot_gives_back_what_was_built(tmp_path, caplog):  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG, logger="dnsbl.snapshot")
    path = big_file(tmp_path / "big.ip4set")
    built = load_ip("ip4set", [str(path)], min_size=0)
    snapshot = Path(snapshot_path("ip4set", [str(path)]))
    assert snapshot.exists() and snapshot.read_bytes().startswith(MAGIC) and "written" in caplog.text
    loaded = load_ip("ip4set", [str(path)], min_size=0)
    assert "loaded" in caplog.text
    assert (loaded.problems, loaded.specials) == (built.problems, built.specials) and loaded.problems
    assert loaded.index == built.index
    for address in probes(path):
        assert loaded.index.lookup(4, address, 0) == built.index.lookup(4, address, 0)


def test_an_ipv6_snapshot_round_trips(tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "six"
    path.write_text("2001:db8::/64 :3:a\n2001:db8::5\n!2001:db8::7\n2001:db8:1::1 :4:b $\n")
    built = load_ip("ip6trie", [str(path)], min_size=0)
    assert load_ip("ip6trie", [str(path)], min_size=0).index == built.index


def test_a_changed_file_is_read_again(tmp_path):  # type: ignore[no-untyped-def]
    path = big_file(tmp_path / "big.ip4set")
    load_ip("ip4set", [str(path)], min_size=0)
    with path.open("a") as more:
        more.write("192.0.2.77\n")
    assert load_ip("ip4set", [str(path)], min_size=0).index.lookup(4, 0xC000024D, 0)
    os.utime(path, ns=(0, 0))  # another mtime, same size: a rebuild too, the answers the same
    assert load_ip("ip4set", [str(path)], min_size=0).index.lookup(4, 0xC000024D, 0)
    assert not load_ip("ip4set", [str(path)], loose=True, min_size=0).index.lookup(4, 0xC000024E, 0)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "header", "empty", "key"])
def test_a_damaged_snapshot_is_rebuilt(tmp_path, damage, caplog):  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG, logger="dnsbl.snapshot")
    path = big_file(tmp_path / "big.ip4set")
    built = load_ip("ip4set", [str(path)], min_size=0)
    snapshot = Path(snapshot_path("ip4set", [str(path)]))
    data = bytearray(snapshot.read_bytes())
    if damage == "truncate":
        data = data[:-5]
    elif damage == "flip":
        data[-3] ^= 0xFF
    elif damage == "garbage":
        data = bytearray(b"\x80\x04garbage that is not ours")
    elif damage == "header":
        data = data.replace(b'"count":', b'"count":"x","c":')
    elif damage == "empty":
        data = bytearray()
    else:  # a snapshot claiming a huge body must not be read into memory
        header = json.dumps({"key": "x"}).encode()
        data = bytearray(MAGIC + (2**60).to_bytes(8, "big") + header)
    snapshot.write_bytes(bytes(data))
    caplog.clear()
    assert load_ip("ip4set", [str(path)], min_size=0).index == built.index
    assert "rebuilding" in caplog.text and "written" in caplog.text


def test_no_snapshot_where_it_cannot_be_written(tmp_path, caplog):  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG, logger="dnsbl.snapshot")
    path = big_file(tmp_path / "big.ip4set")
    Path(snapshot_path("ip4set", [str(path)])).mkdir()  # in the way: neither read nor replaced
    first = load_ip("ip4set", [str(path)], min_size=0)
    assert load_ip("ip4set", [str(path)], min_size=0).index == first.index
    assert "not written" in caplog.text
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_small_files_and_zone_check_leave_no_snapshot(tmp_path):  # type: ignore[no-untyped-def]
    path = big_file(tmp_path / "big.ip4set", lines=50)
    files = DataFiles([parse_spec(f"bl.example:ip4set:{path}")])
    files.load(0)
    load_dataset("ip4set", (str(big_file(tmp_path / "other.ip4set", lines=80_000)),), 0)  # zone-check
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.ip4set", "other.ip4set"]


def test_the_server_path_writes_and_uses_snapshots(tmp_path, caplog):  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG, logger="dnsbl.snapshot")
    path = big_file(tmp_path / "big.ip4set", lines=80_000)  # over snapshot.MIN_SIZE
    spec = parse_spec(f"bl.example:ip4set:{path}")
    first = DataFiles([spec])
    first.load(0)
    again = DataFiles([spec])
    again.load(0)
    (built,), (loaded,) = first.datasets.values(), again.datasets.values()
    assert "written" in caplog.text and "loaded" in caplog.text
    assert loaded.index == built.index and loaded.problems == built.problems
    # ip4set stores 10.0.0.0/30 as four /32s; the exclusion counts too; the problem is logged at each load
    assert count_entries(loaded.index) == 80_000 + 4 + 1 and loaded.specials.ttl == 600


@pytest.mark.slow
def test_the_benchmark_runs(tmp_path):  # type: ignore[no-untyped-def]
    """scripts/bench_datafiles.py, tiny: both servers start, answer alike, and the table comes out (its
    PASS/FAIL means nothing at this size: Python's own start-up is most of it)."""
    script = Path(__file__).parent.parent / "scripts" / "bench_datafiles.py"
    done = subprocess.run(
        [sys.executable, str(script), "--entries", "3000", "--runs", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "dnsbl serve, warm" in done.stdout and "36/36 probe addresses answered alike" in done.stdout, done
