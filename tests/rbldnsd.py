"""A real rbldnsd for differential tests: start it on data files, ask it, compare its replies with ours.

Rules:
- rbldnsd is the reference. If it is missing the test FAILS (CI installs it); it never skips.
- It refuses to run as root and drops to user `rbldns`, so its data files are copied into a temp folder
  that user can read; the caller's files (often under pytest's mode-700 tmp_path) are never touched.
- `compare` looks only at what a DNSBL client acts on: rcode, A values, TXT strings, and whether a negative
  answer carries an SOA (what makes it cacheable). TTLs, AA, NS records and record order are ignored.

    with Rbldnsd([("bl.example.org", "ip4set", [Path("zones/ip4set.example")])]) as ref:
        assert compare(ref.ask(qname(4, 0xC0000201, "bl.example.org"), "A"), ours) == []
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

Spec = tuple[str, str, Sequence[Path]]
INSTALL_HINT = "rbldnsd is not installed: run `apt-get install rbldnsd` (CI installs it)"
START_TIMEOUT = 10.0


def free_port() -> int:
    """A port on 127.0.0.1 that is free for both UDP and TCP right now."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")


def rbldnsd_binary(search_path: str | None = None) -> str:
    """rbldnsd's path, looked for in `search_path` (default: PATH plus the sbin folders a non-root PATH
    may lack); a test FAILS when it is missing."""
    if search_path is None:
        search_path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    binary = shutil.which("rbldnsd", path=search_path)
    if binary is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return binary


class Rbldnsd:
    """rbldnsd serving `specs` ([(zone, dataset type, [files])]) on 127.0.0.1:`port`, UDP only.

    Starts at construction and answers before the constructor returns; `close()` (or leaving the `with`
    block) stops it and removes its data folder. `log` holds everything it printed, load warnings included.
    """

    def __init__(self, specs: Sequence[Spec], extra_args: Sequence[str] = ()) -> None:
        self.binary = rbldnsd_binary()
        self.zones = [zone for zone, _, _ in specs]
        self.folder = Path(tempfile.mkdtemp(prefix="rbldnsd-"))
        self.log_path = self.folder / "rbldnsd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            self.zone_args = self._copy_data(specs)
            self.extra_args = list(extra_args)
            self._start_answering()
        except BaseException:
            self.close()
            raise

    def _copy_data(self, specs: Sequence[Spec]) -> list[str]:
        """Copy every distinct file once (so a file reused by two zones stays one rbldnsd dataset)."""
        os.chmod(self.folder, 0o755)
        copies: dict[Path, Path] = {}
        for _, _, files in specs:
            for source in files:
                source = Path(source).resolve()
                if source not in copies:
                    copies[source] = self.folder / f"{len(copies)}-{source.name}"
                    shutil.copy2(source, copies[source])  # keeps mtime: $SOA serial 0 uses it
                    os.chmod(copies[source], 0o644)
        return [
            f"{zone}:{kind}:" + ",".join(str(copies[Path(f).resolve()]) for f in files)
            for zone, kind, files in specs
        ]

    def _command(self) -> list[str]:
        user = ["-u", "rbldns"] if os.geteuid() == 0 else []
        return [self.binary, "-n", *user, "-b", f"127.0.0.1/{self.port}", *self.extra_args, *self.zone_args]

    def _start_answering(self) -> None:
        for _ in range(3):  # another process may take the port between free_port() and rbldnsd's bind
            self.port = free_port()
            # output to a file, not a pipe: a pipe nobody reads could fill and block rbldnsd
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT)
            if self._wait_answering():
                return
            exited = self.proc.poll()
            self.stop()
            if exited is None or "bind" not in self.log.lower():
                break
        why = f"exited with code {exited}" if exited is not None else "did not answer in time"
        pytest.fail(f"rbldnsd {why}: {' '.join(self._command())}\n{self.log}", pytrace=False)

    def _wait_answering(self) -> bool:
        probe = dns.message.make_query(self.zones[0] if self.zones else ".", "SOA")
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                dns.query.udp(probe, "127.0.0.1", port=self.port, timeout=0.2)
                return True
            except (dns.exception.Timeout, OSError):
                time.sleep(0.02)
        return False

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def ask(self, name: str, rdtype: str = "A", **kwargs: object) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]
        return dns.query.udp(query, "127.0.0.1", port=self.port, timeout=5)

    def stop(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return None if self.proc is None else self.proc.returncode

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Rbldnsd:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _a_values(message: dns.message.Message) -> set[str]:
    return {rdata.to_text() for rrset in message.answer if rrset.rdtype == dns.rdatatype.A for rdata in rrset}


def _txt_strings(message: dns.message.Message) -> set[str]:
    """Each TXT record as the one string a client sees (its character-strings joined), bytes kept."""
    return {
        b"".join(rdata.strings).decode("latin-1")
        for rrset in message.answer
        if rrset.rdtype == dns.rdatatype.TXT
        for rdata in rrset
    }


def _negative_soa(message: dns.message.Message) -> bool | None:
    """None for a positive answer; else whether the authority section carries an SOA (RFC 2308 s. 3)."""
    rcode = message.rcode()
    if not (rcode == dns.rcode.NXDOMAIN or (rcode == dns.rcode.NOERROR and not message.answer)):
        return None
    return any(rrset.rdtype == dns.rdatatype.SOA for rrset in message.authority)


def _set_difference(what: str, a: set[str], b: set[str]) -> list[str]:
    if a == b:
        return []
    return [f"{what}: only in first {sorted(a - b)}, only in second {sorted(b - a)}"]


def compare(a: dns.message.Message, b: dns.message.Message) -> list[str]:
    """The differences a DNSBL client could act on between replies `a` and `b`; [] when they agree."""
    differences = []
    if a.rcode() != b.rcode():
        differences.append(f"rcode: {dns.rcode.to_text(a.rcode())} != {dns.rcode.to_text(b.rcode())}")
    differences += _set_difference("A", _a_values(a), _a_values(b))
    differences += _set_difference("TXT", _txt_strings(a), _txt_strings(b))
    soa_a, soa_b = _negative_soa(a), _negative_soa(b)
    if soa_a is not None and soa_b is not None and soa_a != soa_b:
        differences.append(f"negative answer SOA in authority: {soa_a} != {soa_b}")
    return differences


def _bits(family: int) -> int:
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, not {family!r}")
    return 32 if family == 4 else 128


def boundary_addresses(
    ranges: Iterable[tuple[int, int]], family: int = 4, *, extra: int = 16, seed: int = 0
) -> list[int]:
    """Addresses worth asking about `ranges` (inclusive (lo, hi) ints): each range's first, last, one
    before and one after, one random address inside it, plus `extra` random addresses anywhere in the
    family's space; sorted, no repeats, and the same for the same `seed`."""
    top = (1 << _bits(family)) - 1
    rng = random.Random(seed)
    found: set[int] = set()
    for lo, hi in ranges:
        found.update((lo, hi, lo - 1, hi + 1, rng.randint(min(lo, hi), max(lo, hi))))
    found.update(rng.randint(0, top) for _ in range(extra))
    return sorted(address for address in found if 0 <= address <= top)


def qname(family: int, address: int | str, zone: str) -> str:
    """The DNSBL query name for `address` in `zone`: 4 reversed octets, or 32 reversed nibbles."""
    if isinstance(address, str):
        address = int(ipaddress.ip_address(address))
    bits = _bits(family)
    if not 0 <= address < 1 << bits:
        raise ValueError(f"{address} is not an IPv{family} address")
    if family == 4:
        labels = [str(address >> shift & 0xFF) for shift in range(0, 32, 8)]
    else:
        labels = [format(address >> shift & 0xF, "x") for shift in range(0, 128, 4)]
    return ".".join(labels) + "." + zone.rstrip(".")
