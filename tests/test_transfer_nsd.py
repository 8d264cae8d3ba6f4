"""A real NSD (Debian package) as a SECONDARY of a real `dnsbl serve`, on loopback: it transfers every
zone (AXFR), answers as our server does, takes a `dnsbl add` and an expiry by IXFR after our NOTIFY.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest
from conftest import Server, poll, run_cli
from rbldnsd import free_port
from test_zonedump import NSD_ENTRIES, ask, differences, nsd_server, seen

ZONES = {
    "bl.test": NSD_ENTRIES,
    "second.test": [
        ("203.0.113.0/25", "4", "second $"),
        ("!203.0.113.64", "", ""),
        ("2001:db8:5::/48", "7", "v6 second $"),
        ("192.0.2.77", "2", "one $"),
    ],
}


SECRET = "c2VjcmV0LXRyYW5zZmVyLWtleS0zMi1ieXRlcy1sb25n"


def nsd_config(folder: Path, nsd_port: int, primary_port: int, tsig: bool) -> Path:
    key = f'key:\n  name: "xfr.test"\n  algorithm: hmac-sha256\n  secret: "{SECRET}"\n' if tsig else ""
    zones = key + "".join(
        f"""zone:
  name: "{zone}"
  zonefile: "{folder}/{zone}.zone"
  request-xfr: 127.0.0.1@{primary_port} {"xfr.test" if tsig else "NOKEY"}
  allow-notify: 127.0.0.1 NOKEY
"""
        for zone in ZONES
    )
    config = folder / "nsd.conf"
    config.write_text(nsd_server(folder, nsd_port) + zones)
    return config


def soa_serial(port: int, zone: str) -> int | None:
    try:
        reply = ask(port, zone, "SOA")
    except (OSError, dns.exception.Timeout):
        return None
    return reply.answer[0][0].serial if reply.answer else None


@pytest.fixture(params=["NOKEY", "TSIG"])
def secondary(tmp_path: Path, db: Path, request):  # type: ignore[no-untyped-def]
    """NSD transferring from our server; with TSIG, both hold the key and transfers must be signed."""
    tsig = request.param == "TSIG"
    binary = shutil.which("nsd", path="/usr/sbin:/usr/bin:/sbin")
    assert binary, "nsd is not installed: run `apt-get install nsd` (CI installs it)"
    for zone, entries in ZONES.items():
        rows = [f'{t},{c and "127.0.0." + c},"{r}",test,' for t, c, r in entries]
        csv = "target,code,reason,source,expires\n" + "\n".join(rows) + "\n"
        done = run_cli("import", "-", "--zone", zone, "--type", "csv", db=db, input=csv)
        assert done.returncode == 0, done.stderr
    folder = tmp_path / "nsd"
    folder.mkdir()
    nsd_port = free_port()
    # our server first (its port goes into NSD's config), NOTIFYing NSD's port
    args = ["--db", str(db), "--allow-transfer", "127.0.0.1/32", "--notify", f"127.0.0.1:{nsd_port}"]
    ours = Server(args + (["--tsig-key", f"xfr.test:hmac-sha256:{SECRET}"] if tsig else []))
    proc = subprocess.Popen([binary, "-d", "-c", str(nsd_config(folder, nsd_port, ours.port, tsig))])
    try:
        yield ours, nsd_port, folder
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        ours.close()


def test_nsd_as_a_secondary_transfers_every_zone_and_follows_changes(secondary) -> None:  # type: ignore[no-untyped-def]
    ours, port, folder = secondary
    for zone in ZONES:
        assert poll(lambda z=zone: soa_serial(port, z) == ours.ask(z, "SOA").answer[0][0].serial, 20), (
            folder / "nsd.log"
        ).read_text() + ours.log
    for zone, entries in ZONES.items():
        assert differences(ours, port, zone, entries) == [], zone
    assert ask(port, "3.2.1.10.bl.test", "A").rcode() == dns.rcode.NXDOMAIN  # excluded
    assert poll(lambda: ours.log.count("AXFR of") >= 2, 5)

    # a new entry: NOTIFY, then NSD asks by IXFR and serves it within 10 s
    done = run_cli(
        "add",
        "--zone",
        "bl.test",
        "203.0.113.200",
        "--code",
        "127.0.0.9",
        "--reason",
        "new $",
        "--expires",
        "12s",
        db=ours_db(ours),
    )
    assert done.returncode == 0, done.stderr
    started = time.monotonic()
    name = "200.113.0.203.bl.test"
    assert poll(lambda: seen(ask(port, name, "A"))[0] == {"127.0.0.9"}, 10), (folder / "nsd.log").read_text()
    print(f"NSD served the new entry {time.monotonic() - started:.1f} s after `dnsbl add`")
    assert seen(ask(port, name, "TXT"))[1] == {"new 203.0.113.200"}
    assert poll(lambda: "IXFR from serial" in ours.log and "NOTIFY of bl.test" in ours.log, 5), ours.log
    # the entry expires: gone from NSD too, by IXFR
    assert poll(lambda: not seen(ask(port, name, "A"))[0], 30), (folder / "nsd.log").read_text()
    assert ask(port, name, "A").rcode() == dns.rcode.NXDOMAIN
    assert ours.log.count("IXFR from serial") >= 2
    assert "the journal does not reach back" not in ours.log
    assert "refused" not in ours.log
    assert differences(ours, port, "bl.test", ZONES["bl.test"]) == []


def ours_db(ours: Server) -> Path:
    args = ours.proc.args
    return Path(args[args.index("--db") + 1])  # type: ignore[union-attr, arg-type]
