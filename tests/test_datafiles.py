"""rbldnsd data files served directly: `dnsbl serve ZONE:TYPE:FILE...` answers as rbldnsd does, beside
a SQLite list when there is one, and reloads files that change."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
from conftest import Server, poll, rcode, run_cli, values
from rbldnsd import Rbldnsd, boundary_addresses, compare, qname

from dnsbl_server.zonefile import read_dataset

ZONE = "bl.example.org"
ZONES = Path(__file__).parent.parent / "zones"
EXAMPLES = ["ip4set", "ip4trie", "ip4tset", "ip6trie", "ip6tset"]


@pytest.fixture
def files_server():  # type: ignore[no-untyped-def]
    started: list[Server] = []

    def start(*args: str) -> Server:
        env = {k: v for k, v in os.environ.items() if k != "DNSBL_DB"}
        server = Server(list(args), env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def points(kind: str, path: Path, extra: int = 30) -> tuple[int, list[int]]:
    family = 6 if kind.startswith("ip6") else 4
    spans = [(i.target.lo, i.target.hi) for i in read_dataset(kind, [path]).items]
    return family, boundary_addresses(spans, family, extra=extra, seed=11)


def differences(ours: Server, ref: Rbldnsd, family: int, addresses: list[int], zone: str = ZONE) -> list[str]:
    found = []
    for address in addresses:
        name = qname(family, address, zone)
        for rdtype in ("A", "TXT"):
            found += [f"{name} {rdtype}: {d}" for d in compare(ours.ask(name, rdtype), ref.ask(name, rdtype))]
    return found


@pytest.mark.parametrize("kind", EXAMPLES)
def test_each_dataset_type_answers_as_rbldnsd(kind, files_server):  # type: ignore[no-untyped-def]
    path = ZONES / f"{kind}.example"
    ours = files_server(f"{ZONE}:{kind}:{path}")
    family, addresses = points(kind, path)
    with Rbldnsd([(ZONE, kind, [path])]) as ref:
        assert differences(ours, ref, family, addresses) == []
        # no SQLite list: no synthesised test points, as rbldnsd has none
        assert differences(ours, ref, 4, [0x7F000001, 0x7F000002]) == []


def test_zone_named_twice_and_dataset_shared_by_two_zones(files_server):  # type: ignore[no-untyped-def]
    v4, v6, trie = ZONES / "ip4set.example", ZONES / "ip6trie.example", ZONES / "ip4trie.example"
    specs = [
        (ZONE, "ip4set", [v4]),
        (ZONE, "ip6trie", [v6]),
        (ZONE, "ip4trie", [trie]),
        ("other.example.org", "ip4set", [v4]),
    ]
    ours = files_server(*(f"{z}:{k}:{','.join(map(str, p))}" for z, k, p in specs))
    _, a4 = points("ip4set", v4)
    _, a6 = points("ip6trie", v6)
    _, at = points("ip4trie", trie)
    with Rbldnsd(specs) as ref:
        assert differences(ours, ref, 4, a4 + at) == []
        assert differences(ours, ref, 6, a6) == []
        assert differences(ours, ref, 4, a4, zone="other.example.org") == []


def test_soa_and_ns_come_from_the_files(files_server):  # type: ignore[no-untyped-def]
    path = ZONES / "ip4set.example"
    ours = files_server(f"{ZONE}:ip4set:{path}")
    soa = ours.ask(ZONE, "SOA").answer[0][0]
    assert soa.mname.to_text() == "ns1.example.org." and soa.minimum == 600
    assert soa.serial == int(path.stat().st_mtime)  # `$SOA ... 0 ...`: the file's mtime
    assert values(ours.ask(ZONE, "NS"), "NS") == ["ns1.example.org.", "ns2.example.net."]


def test_sqlite_list_beside_files(files_server, tmp_path):  # type: ignore[no-untyped-def]
    db = tmp_path / "list.sqlite"
    # un-list an address the feed lists, and list one of our own
    assert run_cli("add", "--zone", ZONE, "!192.0.2.1", "198.18.0.1", db=db).returncode == 0
    ours = files_server("--db", str(db), f"{ZONE}:ip4set:{ZONES / 'ip4set.example'}")
    assert rcode(ours.ask(qname(4, "192.0.2.1", ZONE))) == "NXDOMAIN"  # the SQLite exclusion wins
    assert values(ours.ask(qname(4, "192.0.2.2", ZONE)), "A") == ["127.0.0.2"]  # the feed
    assert values(ours.ask(qname(4, "198.18.0.1", ZONE)), "A") == ["127.0.0.2"]  # the SQLite list
    assert values(ours.ask(qname(4, "127.0.0.2", ZONE)), "A") == ["127.0.0.2"]  # test point, with a db


def test_changed_file_is_reloaded_and_bad_file_keeps_old_data(files_server, tmp_path):  # type: ignore[no-untyped-def]
    data = tmp_path / "list.ip4set"
    data.write_text(":2:first $\n192.0.2.1\n")
    ours = files_server("--check-interval", "1", f"{ZONE}:ip4set:{data}")
    name = qname(4, "192.0.2.1", ZONE)
    assert values(ours.ask(name, "TXT"), "TXT") == ['"first 192.0.2.1"']
    new = tmp_path / "new"
    new.write_text(":2:second $\n192.0.2.1\nnot-an-address\n")
    os.replace(new, data)  # as rsync does: a new file renamed over
    assert poll(lambda: values(ours.ask(name, "TXT"), "TXT") == ['"second 192.0.2.1"'], timeout=10)
    assert "list.ip4set:3:" in ours.log  # the bad line is named and skipped
    data.unlink()
    os.kill(ours.proc.pid, signal.SIGHUP)
    assert poll(lambda: "still serving the previous data" in ours.log, timeout=10)
    assert values(ours.ask(name, "TXT"), "TXT") == ['"second 192.0.2.1"']


def test_sighup_reloads_without_interval(files_server, tmp_path):  # type: ignore[no-untyped-def]
    data = tmp_path / "list.ip4set"
    shutil.copy(ZONES / "ip4tset.example", data)
    data.write_text("192.0.2.77\n")
    ours = files_server("--check-interval", "0", f"{ZONE}:ip4tset:{data}")
    assert rcode(ours.ask(qname(4, "192.0.2.78", ZONE))) == "NXDOMAIN"
    data.write_text("192.0.2.77\n192.0.2.78\n")
    os.kill(ours.proc.pid, signal.SIGHUP)
    assert poll(lambda: rcode(ours.ask(qname(4, "192.0.2.78", ZONE))) == "NOERROR", timeout=10)


def test_bad_spec_is_an_error(tmp_path):  # type: ignore[no-untyped-def]
    for spec, named in (
        (f"{ZONE}:ip9set:x", "ip9set"),
        ("nozonespec", "nozonespec"),
        (f"{ZONE}:ip4set:{tmp_path / 'missing'}", "missing"),
    ):
        result = run_cli("serve", "--listen", "127.0.0.1:0", spec)
        assert result.returncode == 2 and named in result.stderr and "Traceback" not in result.stderr


def test_zone_check_names_every_problem(tmp_path):  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.ip4set"
    bad.write_text("192.0.2.1\nnot-an-address\n10.0.0.5/8\n192.0.2.9 :999:\n")
    result = run_cli("zone-check", f"{ZONE}:ip4set:{bad}", f"{ZONE}:ip6trie:{ZONES / 'ip6trie.example'}")
    assert result.returncode == 1
    problems = [line for line in result.stdout.splitlines() if line.startswith(str(bad))]
    assert [p.split(":")[1] for p in problems] == ["2", "3", "4"]
    good = run_cli("zone-check", *(f"{ZONE}:{k}:{ZONES / (k + '.example')}" for k in EXAMPLES))
    assert good.returncode == 0, good.stdout
    missing = run_cli("zone-check", f"{ZONE}:ip4set:{tmp_path / 'none'}")
    assert missing.returncode == 2 and "none" in missing.stderr


# --- name datasets: dnset, generic, combined -------------------------------------------------------

DNSET_NAMES = [
    "spam.example.net",
    "sub.spam.example.net",
    "SPAM.Example.NET",  # exact: not its subdomains; any case
    "phish.example.net",
    "a.phish.example.net",
    "b.a.phish.example.net",  # *.name: depth 1 and 2 only
    "cdn.phish.example.net",
    "x.cdn.phish.example.net",
    "mail.phish.example.net",
    "x.mail.phish.example.net",
    "y.x.mail.phish.example.net",
    "malware.example.com",
    "x.malware.example.com",
    "y.x.malware.example.com",
    "clean.malware.example.com",
    "y.clean.malware.example.com",
    "safe.malware.example.com",
    "a.safe.malware.example.com",
    "b.a.safe.malware.example.com",
    "multi.example.net",
    "both.example.net",
    "late.example.net",
    "example.net",
    "net",
    "example.com",
    "nope.example.org",
    "spam.example.net.example",
]
GENERIC_NAMES = ["@", "www", "WWW", "about", "multi", "host.deep", "deep", "x.host.deep", "mail", "nope"]
COMBINED_NAMES = [
    "@",
    "www",
    "proxies",
    "relays",
    "v6",
    "dbl",
    "domains.dbl",
    "www.proxies",
    "www.dbl",
    "x.www.proxies",
    "10.2.0.192",
    "20.2.0.192",
    "5.100.51.198",
    "10.2.0.192.proxies",
    "20.2.0.192.proxies",
    "10.2.0.192.relays",
    "20.2.0.192.relays",
    "5.100.51.198.relays",
    "5.100.51.198.proxies",
    "10.2.0.192.v6",
    "nosuch",
    "1.2.3.4.nosuch",
    "spam.example.net.dbl",
    "x.spam.example.net.dbl",
    "y.x.spam.example.net.dbl",
    "ok.spam.example.net.dbl",
    "spam.example.net",
    "a.example.com.domains.dbl",
    "b.a.example.com.domains.dbl",
    "example.com.domains.dbl",
    "spam.example.net.domains.dbl",
    "a.example.com.dbl",
    "x.domains.dbl.proxies",
]


def absolute(name: str, zone: str = ZONE) -> str:
    return zone if name == "@" else f"{name}.{zone}"


def _mx(message) -> set[str]:  # type: ignore[no-untyped-def]
    return {rdata.to_text() for rrset in message.answer if rrset.rdtype == 15 for rdata in rrset}


def name_differences(
    ours: Server, ref: Rbldnsd, names: list[str], rdtypes: tuple[str, ...] = ("A", "TXT")
) -> list[str]:
    found = []
    for name in map(absolute, names):
        for rdtype in rdtypes:
            a, b = ours.ask(name, rdtype), ref.ask(name, rdtype)
            found += [f"{name} {rdtype}: {d}" for d in compare(a, b)]
            if _mx(a) != _mx(b):
                found.append(f"{name} {rdtype}: MX {sorted(_mx(a))} != {sorted(_mx(b))}")
    return found


@pytest.mark.parametrize(
    ("kind", "names"), [("dnset", DNSET_NAMES), ("generic", GENERIC_NAMES), ("combined", COMBINED_NAMES)]
)
def test_name_datasets_answer_as_rbldnsd(kind, names, files_server):  # type: ignore[no-untyped-def]
    path = ZONES / f"{kind}.example"
    ours = files_server(f"{ZONE}:{kind}:{path}")
    with Rbldnsd([(ZONE, kind, [path])]) as ref:
        assert name_differences(ours, ref, names) == []


def test_combined_ip_subzones_answer_as_rbldnsd(files_server):  # type: ignore[no-untyped-def]
    path = ZONES / "combined.example"
    ours = files_server(f"{ZONE}:combined:{path}")
    v4 = [0xC000020A, 0xC0000214, 0xC000020B, 0xC6336407]  # 192.0.2.10, .20, .11, 198.51.100.7
    v6 = [0x20010DB8_0001_0000 << 64 | 5, 0x20010DB8_0001_0002 << 64 | 5, 0x20010DB8_0001_0003 << 64, 1]
    with Rbldnsd([(ZONE, "combined", [path])]) as ref:
        for sub in ("", "proxies.", "relays.", "v6.", "dbl."):
            assert differences(ours, ref, 4, v4, zone=sub + ZONE) == []
            assert differences(ours, ref, 6, v6, zone=sub + ZONE) == []


def test_generic_mx_answers_as_rbldnsd(files_server):  # type: ignore[no-untyped-def]
    path = ZONES / "generic.example"
    ours = files_server(f"{ZONE}:generic:{path}")
    with Rbldnsd([(ZONE, "generic", [path])]) as ref:
        assert name_differences(ours, ref, GENERIC_NAMES, ("MX",)) == []


def test_partial_names_in_combined_get_nodata(files_server):  # type: ignore[no-untyped-def]
    """As for plain IP zones: a name above a listed address is NODATA (rbldnsd: NXDOMAIN, its issue #17)."""
    ours = files_server(f"{ZONE}:combined:{ZONES / 'combined.example'}")
    assert rcode(ours.ask(f"2.0.192.proxies.{ZONE}")) == "NOERROR"
    assert rcode(ours.ask(f"3.0.192.proxies.{ZONE}")) == "NXDOMAIN"


def test_name_dataset_specs_are_accepted_and_checked(tmp_path):  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.dnset"
    bad.write_text("good.example.net\nbad..example.net\n")
    result = run_cli(
        "zone-check",
        f"{ZONE}:dnset:{bad}",
        *(f"{ZONE}:{k}:{ZONES / (k + '.example')}" for k in ("dnset", "generic", "combined")),
    )
    assert result.returncode == 1, result.stdout
    assert [line.split(":")[1] for line in result.stdout.splitlines() if line.startswith(str(bad))] == ["2"]
