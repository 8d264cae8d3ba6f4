"""The zone as records (`zonedump`): what a secondary serves answers as this server does.

The records are read back by a small RFC 1034 4.3.2 / RFC 4592 lookup written here (the exact name,
else the closest encloser's `*` child; `CNAME excluded` is "not listed") and compared with the
resolver's answers; then a real NSD serving them is compared with a real `dnsbl serve`, and rbldnsd's own
dump (`rbldnsd -d`) of the example files is read by the same lookup.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest
from conftest import Server, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rbldnsd import free_port, rbldnsd_binary

from dnsbl_server.addresses import MAPPED_BASE, V4_MAX, V6_MAX, format_address, parse_target
from dnsbl_server.compact import CompactIndex
from dnsbl_server.datafiles import load_dataset
from dnsbl_server.index import Entry, ZoneIndex
from dnsbl_server.resolver import TXT, A, Question, listings_for, resolve
from dnsbl_server.zone import Zone, Zones
from dnsbl_server.zonedump import BLOCKS, RR, apex, blocks_of, records

ORIGIN = "bl.test"
NOW = 1_800_000_000.0
ZONES = Path(__file__).parent.parent / "zones"
Seen = tuple[frozenset[str], frozenset[str]]  # (A values, TXT strings); no A: not listed
NOT_LISTED: Seen = (frozenset(), frozenset())


# --- the lookup a secondary does ----------------------------------------------------------------


def unquote(text: str) -> str:
    assert text.startswith('"') and text.endswith('"'), text
    body = text[1:-1].encode("ascii")
    out = re.sub(rb"\\(\d{3}|.)", lambda m: bytes([int(m[1])]) if m[1].isdigit() else m[1], body)
    return out.decode()


class ZoneView:
    """Owner names (relative, `*` wildcards) -> records, answered by RFC 1034 4.3.2 with RFC 4592."""

    def __init__(self, rrs: Iterable[tuple[str, str, str]]) -> None:
        self.rrsets: dict[tuple[str, ...], list[tuple[str, str]]] = defaultdict(list)
        self.exists: set[tuple[str, ...]] = set()
        for name, rtype, rdata in rrs:
            if name == "@":
                continue
            labels = tuple(reversed(name.lower().split(".")))  # from the top
            self.rrsets[labels].append((rtype, rdata))
            self.exists.update(labels[:i] for i in range(1, len(labels) + 1))

    def encloser(self, labels: tuple[str, ...]) -> tuple[str, ...]:
        return max((labels[:i] for i in range(len(labels)) if labels[:i] in self.exists), key=len, default=())

    def stopped_at_empty_name(self, labels: tuple[str, ...]) -> bool:
        """NXDOMAIN because the closest encloser is a name with no records and no `*` below it."""
        encloser = self.encloser(labels)
        return (
            labels not in self.exists and encloser not in self.rrsets and (*encloser, "*") not in self.rrsets
        )

    def answer(self, labels: tuple[str, ...]) -> Seen:
        rrs = self.rrsets.get(labels)
        if rrs is None:
            if labels in self.exists:
                return NOT_LISTED  # an empty non-terminal: NODATA
            encloser = self.encloser(labels)
            rrs = self.rrsets.get((*encloser, "*"))  # `()`: the apex, which has no wildcard
            if rrs is None or not encloser:
                return NOT_LISTED  # NXDOMAIN
        if any(rtype == "CNAME" for rtype, _ in rrs):
            assert rrs == [("CNAME", "excluded")] and ("excluded",) not in self.exists, rrs
            return NOT_LISTED
        a = frozenset(data for rtype, data in rrs if rtype == "A")
        return a, frozenset(unquote(data) for rtype, data in rrs if rtype == "TXT")


def labels_of(family: int, address: int) -> tuple[str, ...]:
    if family == 4:
        return tuple(str(address >> shift & 255) for shift in range(24, -1, -8))
    return tuple(format(address >> shift & 15, "x") for shift in range(124, -1, -4))


def served(zone: Zone, family: int, address: int) -> Seen:
    """What this server answers (A and TXT asked separately, as a DNSBL client asks)."""
    name = ".".join(reversed(labels_of(family, address))) + "." + zone.name
    zones = Zones.of([zone])
    a = resolve(Question(name, A), zones, NOW).answer
    txt = resolve(Question(name, TXT), zones, NOW).answer
    return frozenset(str(r.data) for r in a), frozenset(str(r.data) for r in txt)


def txt_comparable(zone: Zone, family: int, address: int) -> bool:
    """A single address's TXT is carried exactly (and a text without `$` is the same everywhere);
    a range's wildcard writes its block's first address for `$`, as rbldnsd -d does."""
    return all(e.lo == e.hi or "$" not in e.reason for e in listings_for(zone, family, address, NOW))


def mismatches(zone: Zone, view: ZoneView, family: int, addresses: Iterable[int]) -> list[str]:
    out = []
    for address in addresses:
        if family == 6 and MAPPED_BASE <= address <= MAPPED_BASE | V4_MAX:
            continue  # IPv4-mapped names answer from IPv4 data: not carried (README)
        ours, theirs = served(zone, family, address), view.answer(labels_of(family, address))
        if not txt_comparable(zone, family, address):
            ours, theirs = (ours[0], frozenset()), (theirs[0], frozenset())
        if ours != theirs:
            out.append(f"{format_address(family, address)}: served {ours}, zone file {theirs}")
    return out


def view_of(zone: Zone, blocks: Iterable[str] | None = None) -> ZoneView:
    return ZoneView((rr.name, rr.rtype, rr.rdata) for rr in records(zone, NOW, blocks))


# --- zones of random entries ------------------------------------------------------------------

V4_BASES = [0x0A000000, 0x0A010200, 0x02000000, 0x7F000000, 0x00000000, 0xFFFFFF00, 0x01020300]
V6_BASES = [0x20010DB8 << 96, 0x2 << 124, 0x25 << 120, 0, 0xF << 124, (0x20010DB8 << 96) | (0xFFFF << 32)]
REASONS = ["listed $", "fixed text", "", "a $ and $$ b", 'quote " \\ é']


def entry(i: int, family: int, lo: int, hi: int, excluded: bool, code: int, reason: str, expires):  # type: ignore[no-untyped-def]
    return Entry((f"e{i}", "test"), family, lo, hi, excluded, 0x7F000000 + code, reason, expires)


@st.composite
def ranges(draw, family: int):  # type: ignore[no-untyped-def]
    bits = 32 if family == 4 else 128
    base = draw(st.sampled_from(V4_BASES if family == 4 else V6_BASES))
    shape = draw(st.sampled_from(["address", "cidr", "range"]))
    if shape == "address":
        lo = base + draw(st.integers(0, 600))
        return lo, lo
    if shape == "cidr":
        prefix = draw(st.integers(0, bits))
        size = 1 << (bits - prefix)
        lo = (base + draw(st.integers(0, 600))) // size * size
        return lo, lo + size - 1
    lo = base + draw(st.integers(0, 700))
    return lo, lo + draw(st.integers(1, 600 if draw(st.booleans()) else 70_000))


@st.composite
def entries(draw):  # type: ignore[no-untyped-def]
    out = []
    for i in range(draw(st.integers(1, 9))):
        family = draw(st.sampled_from([4, 4, 6]))
        lo, hi = draw(ranges(family))
        top = V4_MAX if family == 4 else V6_MAX
        lo, hi = min(lo, top), min(hi, top)
        if family == 6 and lo >= MAPPED_BASE and hi <= MAPPED_BASE | V4_MAX:
            continue  # the store keeps such targets as IPv4 (`addresses._unmap`)
        excluded = draw(st.integers(0, 3)) == 0
        expires = draw(st.sampled_from([None, None, None, NOW - 1, NOW + 60]))
        code, reason = draw(st.integers(2, 4)), draw(st.sampled_from(REASONS))
        out.append(entry(i, family, lo, hi, excluded, code, reason, expires))
    return out


@st.composite
def zones(draw):  # type: ignore[no-untyped-def]
    own = draw(entries())
    index = ZoneIndex.build(own)
    if draw(st.booleans()):  # an overlay of later changes, as the server holds between folds
        changes = {e.key: (None if draw(st.booleans()) else e._replace(code=0x7F000009)) for e in own[:2]}
        index = index.with_changes(changes)
    files = (ZoneIndex.build(draw(entries())),) if draw(st.booleans()) else ()
    return Zone(ORIGIN, index, 7, test_points=draw(st.booleans()), files=files)


def spans_of(index: ZoneIndex | CompactIndex, family: int) -> list[tuple[int, int]]:
    if isinstance(index, ZoneIndex):
        return [(e.lo, e.hi) for e in index.entries() if e.family == family]
    return list(zip(index.segments[family].starts, index.segments[family].ends, strict=True))


def probes(zone: Zone, family: int, seed: int) -> list[int]:
    """First, last, one before and one after each range; neighbours sharing all but one label of an
    end (where a name's existence could stop a wildcard); random addresses."""
    top, step = (V4_MAX, 8) if family == 4 else (V6_MAX, 4)
    found: set[int] = set()
    spans = [span for index in (zone.index, *zone.files) for span in spans_of(index, family)]
    if family == 4 and zone.test_points:
        spans += [(0x7F000001, 0x7F000002)]
    rng = random.Random(seed)
    for lo, hi in spans:
        found.update((lo, hi, lo - 1, hi + 1, rng.randint(lo, hi)))
        found.update(
            x ^ (rng.randint(1, 15) << (step * k))
            for x in (lo, hi)
            for k in range(0, 32 if family == 6 else 4)
        )
    found.update(rng.randint(0, top) for _ in range(20))
    return sorted(a for a in found if 0 <= a <= top)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(zones(), st.integers(0, 1000))
def test_records_answer_as_the_resolver(zone: Zone, seed: int) -> None:
    view = view_of(zone)
    for family in (4, 6):
        assert mismatches(zone, view, family, probes(zone, family, seed)) == []


# --- pure cases ----------------------------------------------------------------------------------


def zone_of(*targets: str, test_points: bool = False, reason: str = "listed $") -> Zone:
    out = []
    for i, text in enumerate(targets):
        t = parse_target(text.lstrip("!"))
        out.append(entry(i, t.family, t.lo, t.hi, text.startswith("!"), 2, reason, None))
    return Zone(ORIGIN, ZoneIndex.build(out), 3, test_points=test_points)


def names(zone: Zone) -> list[tuple[str, str, str]]:
    return [(rr.name, rr.rtype, rr.rdata) for rr in records(zone, NOW)]


def test_an_exclusion_in_a_16_is_written_as_rbldnsd_writes_it() -> None:
    assert names(zone_of("10.1.0.0/16", "!10.1.2.3")) == [
        ("*.1.10", "A", "127.0.0.2"),
        ("*.1.10", "TXT", '"listed 10.1.0.0"'),
        ("*.2.1.10", "A", "127.0.0.2"),
        ("*.2.1.10", "TXT", '"listed 10.1.2.0"'),
        ("3.2.1.10", "CNAME", "excluded"),
    ]


def test_a_slash_8_with_one_exclusion_is_a_handful_of_records() -> None:
    rrs = names(zone_of("10.0.0.0/8", "!10.1.2.3"))
    assert len(rrs) == 7
    assert {name for name, _, _ in rrs} == {"*.10", "*.1.10", "*.2.1.10", "3.2.1.10"}


def test_an_excluded_24_in_a_16_is_a_wildcard_cname() -> None:
    rrs = names(zone_of("10.1.0.0/16", "!10.1.2.0/24"))
    assert ("*.2.1.10", "CNAME", "excluded") in rrs and len(rrs) == 3


def test_slash_0_is_a_wildcard_per_block_never_at_the_apex() -> None:
    """Blocks 0-9 are IPv6 blocks too: below them, the names IPv6 addresses share with IPv4 ones
    (digits only) are written out so that no IPv4 wildcard answers an IPv6 name (about 3,000 each)."""
    zone = zone_of("0.0.0.0/0", reason="all")
    rrs = names(zone)
    wildcards = {name for name, _, _ in rrs if name.count(".") == 1}
    assert wildcards == {f"*.{i}" for i in range(256)} and not any(name == "*" for name, _, _ in rrs)
    assert len(rrs) - 2 * 246 < 10 * 3000
    view = view_of(zone)
    for family, address in [(4, 0), (4, V4_MAX), (4, 0x02050301), (6, 0x2 << 124), (6, 0x25 << 120), (6, 1)]:
        assert mismatches(zone, view, family, [address]) == []


def test_an_off_boundary_range_becomes_exact_names() -> None:
    rrs = names(zone_of("192.0.2.250-192.0.3.1"))
    assert [name for name, rtype, _ in rrs if rtype == "A"] == [f"{i}.2.0.192" for i in range(250, 256)] + [
        "0.3.0.192",
        "1.3.0.192",
    ]


def test_the_rfc5782_test_points_are_included() -> None:
    rrs = names(zone_of("192.0.2.1", test_points=True))
    assert ("2.0.0.127", "A", "127.0.0.2") in rrs
    assert not any(name == "1.0.0.127" for name, _, _ in rrs)


def test_ipv4_and_ipv6_share_a_block() -> None:
    """`*.2` would list 2000::/4 too: 2.0.0.0/8 and an IPv6 /64 under 2 need their own names."""
    zone = zone_of("2.0.0.0/8", "2001:db8::/64")
    view = view_of(zone)
    for family, address in [
        (4, 0x02030405),
        (6, 0x20010DB8 << 96),
        (6, (0x20010DB8 << 96) - 1),
        (6, 0x2 << 124),
    ]:
        assert mismatches(zone, view, family, [address]) == []


def test_txt_is_quoted_for_a_zone_file() -> None:
    rrs = names(zone_of("192.0.2.1", reason='say "hi" \\ é'))
    assert ("1.2.0.192", "TXT", '"say \\"hi\\" \\\\ \\195\\169"') in rrs


def test_apex_is_soa_then_ns() -> None:
    zone = zone_of("192.0.2.1")
    assert apex(zone) == [
        RR("@", "SOA", 2100, "ns.bl.test. hostmaster.bl.test. 3 7200 1800 604800 600"),
        RR("@", "NS", 2100, "ns.bl.test."),
    ]


# --- locality: what an IXFR needs ----------------------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(zones(), st.data())
def test_blocks_concatenated_are_the_whole_and_a_change_stays_in_its_blocks(zone: Zone, data) -> None:  # type: ignore[no-untyped-def]
    whole = list(records(zone, NOW))
    assert [rr for key in BLOCKS for rr in records(zone, NOW, [key])] == whole
    changed = data.draw(entries().filter(bool))[0]
    index = zone.index.with_changes({("new", "test"): changed})
    after = list(records(Zone(ORIGIN, index, 8, zone.settings, zone.test_points, zone.files), NOW))
    touched = blocks_of(changed.family, changed.lo, changed.hi)
    untouched = [key for key in BLOCKS if key not in touched]
    assert [rr for rr in after if rr.name.rsplit(".", 1)[-1] in untouched] == [
        rr for rr in whole if rr.name.rsplit(".", 1)[-1] in untouched
    ]


def test_blocks_of() -> None:
    assert blocks_of(4, 0x0A000000, 0x0B000000) == {"10", "11"}
    assert blocks_of(6, 0x20010DB8 << 96, (0x20010DB8 << 96) + 5) == {"2"}
    assert blocks_of(6, 0, V6_MAX) == set("0123456789abcdef")


# --- a real secondary's view: NSD serving the zone file, beside a real `dnsbl serve` ------------

NSD_ENTRIES = [
    ("10.0.0.0/8", "3", "net $"),
    ("!10.1.2.3", "", ""),
    ("192.0.2.0/24", "2", "doc $"),
    ("!192.0.2.64-192.0.2.70", "", ""),
    ("192.0.2.5", "4", "single $"),
    ("198.51.100.7-198.51.100.9", "2", "short range $"),
    ("2.5.3.0/24", "2", "shared labels $"),
    ("2001:db8::/64", "5", "v6 $"),
    ("!2001:db8::5", "", ""),
    ("2001:db8:1::1", "6", "v6 single $"),
]


def nsd_server(folder: Path, port: int) -> str:
    """nsd.conf's server part: everything in `folder`, on 127.0.0.1@port, no remote control."""
    return f"""server:
  ip-address: 127.0.0.1@{port}
  database: ""
  username: ""
  zonesdir: "{folder}"
  pidfile: "{folder}/nsd.pid"
  xfrdfile: "{folder}/xfrd.state"
  xfrdir: "{folder}"
  zonelistfile: "{folder}/zone.list"
  logfile: "{folder}/nsd.log"
  verbosity: 2
remote-control:
  control-enable: no
"""


def nsd_config(folder: Path, port: int, zone_file: Path) -> Path:
    config = folder / "nsd.conf"
    config.write_text(nsd_server(folder, port) + f'zone:\n  name: "{ORIGIN}"\n  zonefile: "{zone_file}"\n')
    return config


def ask(port: int, name: str, rdtype: str) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port, timeout=3)


def seen(message: dns.message.Message) -> tuple[frozenset[str], frozenset[str]]:
    """A values and TXT strings in the answer (a CNAME to `excluded` brings neither)."""
    a = frozenset(rr.to_text() for rrset in message.answer if rrset.rdtype == 1 for rr in rrset)
    txt = frozenset(
        b"".join(rr.strings).decode() for rrset in message.answer if rrset.rdtype == 16 for rr in rrset
    )
    return a, txt


@pytest.fixture
def nsd(tmp_path: Path):  # type: ignore[no-untyped-def]
    binary = shutil.which("nsd", path="/usr/sbin:/usr/bin:/sbin")
    assert binary, "nsd is not installed: run `apt-get install nsd` (CI installs it)"
    started: list[subprocess.Popen[bytes]] = []

    def start(zone_file: Path) -> int:
        folder = tmp_path / "nsd"
        folder.mkdir()
        port = free_port()
        proc = subprocess.Popen([binary, "-d", "-c", str(nsd_config(folder, port, zone_file))])
        started.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if ask(port, ORIGIN, "SOA").answer:
                    return port
            except (OSError, dns.exception.Timeout):
                pass
            time.sleep(0.05)
        raise RuntimeError("nsd did not answer:\n" + (folder / "nsd.log").read_text())

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(timeout=10)


def differences(
    ours: Server, port: int, zone: str, entries: list[tuple[str, str, str]], *, flips: bool = False
) -> list[str]:
    """Where NSD on `port` answers otherwise than our server, for addresses at and around each entry
    and the test points: A always, TXT for single addresses (NSD's `$` is the block start).
    `flips`: also every address one octet (nibble) away from each entry's start."""
    spans = [parse_target(t.lstrip("!")) for t, _, _ in entries] + [parse_target("127.0.0.1-127.0.0.2")]
    differ = []
    for t in spans:
        rng = random.Random(t.lo)
        around = {t.lo, t.hi, t.lo - 1, t.hi + 1, rng.randint(t.lo, t.hi)}
        if flips:
            bits, step = (32, 8) if t.family == 4 else (128, 4)
            around |= {t.lo ^ (1 << (step * k)) for k in range(bits // step)}
        for address in sorted(around):
            name = ".".join(reversed(labels_of(t.family, address))) + "." + zone
            a = seen(ours.ask(name, "A"))[0], seen(ask(port, name, "A"))[0]
            txt = seen(ours.ask(name, "TXT"))[1], seen(ask(port, name, "TXT"))[1]
            if a[0] != a[1] or (address == t.lo == t.hi and txt[0] != txt[1]):
                differ.append(f"{name}: dnsbl serve {a[0]} {txt[0]}, nsd {a[1]} {txt[1]}")
    return differ


def test_nsd_serving_the_export_answers_as_dnsbl_serve(tmp_path: Path, db: Path, nsd) -> None:  # type: ignore[no-untyped-def]
    rows = [f'{target},{code and "127.0.0." + code},"{reason}",test,' for target, code, reason in NSD_ENTRIES]
    csv = "target,code,reason,source,expires\n" + "\n".join(rows) + "\n"
    imported = run_cli("import", "-", "--zone", ORIGIN, "--type", "csv", db=db, input=csv)
    assert imported.returncode == 0, imported.stderr
    exported = run_cli("export", "--zone", ORIGIN, "--format", "bind", db=db)
    assert exported.returncode == 0, exported.stderr
    zone_file = tmp_path / "bl.test.zone"
    zone_file.write_text(exported.stdout)
    port = nsd(zone_file)
    ours = Server(["--db", str(db), "--workers", "1"])
    try:
        assert differences(ours, port, ORIGIN, NSD_ENTRIES, flips=True) == []
        assert seen(ask(port, "2.0.0.127." + ORIGIN, "A"))[0] == {"127.0.0.2"}
        assert ask(port, "3.2.1.10." + ORIGIN, "A").rcode() == dns.rcode.NXDOMAIN  # CNAME to a name not there
    finally:
        ours.close()


# --- rbldnsd's own dump ------------------------------------------------------------------------


def rbldnsd_dump(tmp_path: Path, kind: str, path: Path) -> list[tuple[str, str, str]]:
    """`rbldnsd -d` of one data file, as (owner, type, data); it runs as user rbldns."""
    folder = tmp_path / "rbldnsd"
    folder.mkdir(exist_ok=True)
    shutil.copy(path, folder / path.name)
    folder.chmod(0o755)
    tmp_path.chmod(0o755)
    (folder / path.name).chmod(0o644)
    out = subprocess.run(
        [rbldnsd_binary(), "-d", "-u", "rbldns", f"{ORIGIN}:{kind}:{folder / path.name}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    rrs, owner = [], "@"
    for line in out.splitlines():
        if not line or line.startswith((";", "$")):
            continue
        fields = line.split("\t")
        owner = fields[0] or owner
        rest = [f for f in fields[1:] if f and not f.isdigit()]  # the TTL column, when there is one
        rrs.append((owner, rest[0], "\t".join(rest[1:])))
    return rrs


@pytest.mark.parametrize("kind", ["ip4set", "ip4trie", "ip4tset", "ip6trie", "ip6tset"])
def test_the_example_files_answer_as_rbldnsds_dump(tmp_path: Path, kind: str) -> None:
    path = ZONES / f"{kind}.example"
    dataset = load_dataset(kind, (str(path),), NOW)
    zone = Zone(ORIGIN, ZoneIndex.build(()), 1, test_points=False, files=(dataset.index,))
    family = 6 if kind.startswith("ip6") else 4
    theirs, ours = ZoneView(rbldnsd_dump(tmp_path, kind, path)), view_of(zone)
    differ, stopped = [], 0
    for address in probes(zone, family, 5):
        labels = labels_of(family, address)
        a, b = ours.answer(labels), theirs.answer(labels)
        if a[0] and not b[0] and kind == "ip6tset" and theirs.stopped_at_empty_name(labels):
            stopped += 1  # rbldnsd's ip6tset dump: an exclusion's levels above get no wildcards
        elif a[0] != b[0]:
            differ.append(f"{format_address(family, address)}: ours {a}, rbldnsd -d {b}")
    assert differ == []
    assert (stopped > 0) == (kind == "ip6tset")
    assert mismatches(zone, ours, family, probes(zone, family, 5)) == []
