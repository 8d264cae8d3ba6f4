#!/usr/bin/env python3
"""Data-file benchmark (issue: rbldnsd data files): a 1,000,000-line ip4set served by rbldnsd and by
`dnsbl serve`, measured in the same run. Prints a table and PASS/FAIL; exits 1 on a FAIL.

- start to first answer: from the process's start until a listed address is answered correctly (a UDP
  query every ~10 ms); target: within 5x rbldnsd's, with the compiled snapshot in place ("warm");
- memory: PSS (/proc/PID/smaps_rollup) of the process and its children, just after that first answer;
  target: within 4x rbldnsd's, cold and warm.
`dnsbl serve` is measured cold (no snapshot: the file is parsed and the snapshot written) and warm (the
snapshot beside the file is loaded). The package is byte-compiled first (`python -m compileall -q`), as
an installed package is. Only 127.0.0.1; a temp folder, removed after; every wait is bounded.

Usage: scripts/bench_datafiles.py [--entries N] [--runs N] [--seed N] [--in-order]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZONE = "bench.example"
LISTED_CODE = b"\x7f\x00\x00\x02"  # the file's default A, 127.0.0.2
START_TIMEOUT = 120.0
TIME_TARGET, PSS_TARGET = 5.0, 4.0


# --- the data -------------------------------------------------------------------------------


def generate(path: Path, entries: int, seed: int, in_order: bool) -> tuple[list[int], list[int]]:
    """An ip4set of `entries` lines, in random or address order: single addresses, and every 500th line
    a /24, a range or an exclusion inside that /24. Returns (listed, excluded) addresses to ask about."""
    rng = random.Random(seed)
    lines, listed, excluded, network = [], [], [], 0
    for i in range(entries):
        address = rng.randrange(1 << 24, 224 << 24)
        if i % 500 == 1:
            network = address & ~0xFF
            lines.append((network, f"{dotted(network)}/24"))
        elif i % 500 == 2:
            lines.append((address, f"{dotted(address)}-{dotted(address + 40)}"))
        elif i % 500 == 3:
            lines.append((network + 7, f"!{dotted(network + 7)}"))
            excluded.append(network + 7)
        else:
            lines.append((address, dotted(address)))
            listed.append(address)
    if in_order:
        lines.sort()
    else:
        rng.shuffle(lines)
    path.write_text(":127.0.0.2:Listed: $\n" + "\n".join(line for _, line in lines) + "\n")
    return listed[:50], excluded


def dotted(address: int) -> str:
    return socket.inet_ntoa(address.to_bytes(4, "big"))


# --- DNS over UDP, by hand (no client library in the timing) --------------------------------


def query(address: int, ident: int) -> bytes:
    labels = [str(address >> s & 0xFF) for s in (0, 8, 16, 24)] + ZONE.split(".")
    name = b"".join(bytes([len(label)]) + label.encode() for label in labels) + b"\x00"
    return struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1)


def ask(sock: socket.socket, port: int, address: int, wait: float) -> bytes | None:
    ident = random.randrange(1 << 16)
    sock.sendto(query(address, ident), ("127.0.0.1", port))
    sock.settimeout(wait)
    try:
        while True:
            reply, _ = sock.recvfrom(4096)
            if reply[:2] == ident.to_bytes(2, "big"):
                return reply
    except (TimeoutError, ConnectionRefusedError):
        return None


def listed_answer(reply: bytes | None) -> bool:
    return reply is not None and reply[3] & 0x0F == 0 and reply[6:8] != b"\x00\x00" and LISTED_CODE in reply


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        port: int = udp.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", port))
        return port


# --- one measured start ---------------------------------------------------------------------


def pss_kib(pid: int) -> int:
    """PSS of the process and its children, in KiB; a child that exits while it is read counts 0."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            total = next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
        children = [
            c for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()
        ]
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return total + sum(pss_kib(int(child)) for child in children)


def measure(command: Callable[[int], list[str]], probe: int, env: dict[str, str]) -> tuple[float, float]:
    """(seconds from start to the first listed answer for `probe`, PSS in MiB just after)."""
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        proc = subprocess.Popen(command(port), stdout=log, stderr=log, env=env)
        try:
            while time.perf_counter() - started < START_TIMEOUT:
                if listed_answer(ask(sock, port, probe, 0.01)):
                    return time.perf_counter() - started, pss_kib(proc.pid) / 1024
                if proc.poll() is not None:
                    break
            log.seek(0)
            raise SystemExit(f"{command(port)[0]} gave no answer:\n{log.read().decode(errors='replace')}")
        finally:
            stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def agree(commands: list[Callable[[int], list[str]]], addresses: list[int], env: dict[str, str]) -> int:
    """How many of `addresses` the servers answer differently (listed or not): expected 0."""
    outcomes = []
    for command in commands:
        port = free_port()
        proc = subprocess.Popen(command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                deadline = time.perf_counter() + START_TIMEOUT
                while ask(sock, port, addresses[0], 0.05) is None and time.perf_counter() < deadline:
                    pass
                outcomes.append([listed_answer(ask(sock, port, a, 2.0)) for a in addresses])
        finally:
            stop(proc)
    return sum(a != b for a, b in zip(outcomes[0], outcomes[1], strict=True))


# --- the run --------------------------------------------------------------------------------


def rbldnsd_command(data: Path) -> Callable[[int], list[str]]:
    binary = shutil.which("rbldnsd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if binary is None:
        raise SystemExit("rbldnsd is not installed (apt-get install rbldnsd)")
    user = ["-u", "rbldns"] if os.geteuid() == 0 else []
    return lambda port: [binary, "-n", *user, "-b", f"127.0.0.1/{port}", f"{ZONE}:ip4set:{data}"]


def ours_command(data: Path) -> Callable[[int], list[str]]:
    return lambda port: (
        [sys.executable, "-m", "dnsbl_server", "serve", "--listen", f"127.0.0.1:{port}"]
        + [f"{ZONE}:ip4set:{data}"]
    )


def remove_snapshots(folder: Path) -> None:
    for snapshot in folder.glob(".*.dnsbl-snapshot"):
        snapshot.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--in-order", action="store_true", help="lines in address order (many feeds are)")
    options = parser.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "dnsbl_server")], check=True)
    print("byte-compiled dnsbl_server first (python -m compileall -q), as an installed package is")
    env = {k: v for k, v in os.environ.items() if k != "DNSBL_DB"} | {"PYTHONPATH": str(ROOT)}
    work = Path(tempfile.mkdtemp(prefix="dnsbl-bench-files-"))
    try:
        run(work, options, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, options: argparse.Namespace, env: dict[str, str]) -> None:
    os.chmod(work, 0o755)  # rbldnsd, started as root, reads as user rbldns
    data = work / "big.ip4set"
    listed, excluded = generate(data, options.entries, options.seed, options.in_order)
    os.chmod(data, 0o644)
    print(
        f"data: {options.entries:,} lines in {'address' if options.in_order else 'random'} order, "
        f"{data.stat().st_size / 1e6:.1f} MB "
        "(single addresses; every 500th line a /24, a range or an exclusion)"
    )
    theirs, ours = rbldnsd_command(data), ours_command(data)
    figures: dict[str, list[tuple[float, float]]] = {"rbldnsd": [], "cold": [], "warm": []}
    for _ in range(options.runs):  # interleaved: the machine's load falls on all three alike
        figures["rbldnsd"].append(measure(theirs, listed[0], env))
        remove_snapshots(work)
        figures["cold"].append(measure(ours, listed[0], env))
        figures["warm"].append(measure(ours, listed[0], env))
    probes = listed[:20] + excluded[:10] + [a + 1 for a in listed[:10]]
    report(figures, agree([theirs, ours], probes, env), len(probes))


def report(figures: dict[str, list[tuple[float, float]]], differing: int, asked: int) -> None:
    median = {
        name: tuple(statistics.median(v[i] for v in runs) for i in (0, 1)) for name, runs in figures.items()
    }
    base_time, base_pss = median["rbldnsd"]
    print(f"\nmedian of {len(figures['rbldnsd'])} runs     first answer    PSS      vs rbldnsd (time, PSS)")
    print(f"rbldnsd                     {base_time:8.3f} s  {base_pss:6.1f} MB")
    failed = False
    for name, label in (("cold", "dnsbl serve, cold"), ("warm", "dnsbl serve, warm")):
        seconds, pss = median[name]
        time_ratio, pss_ratio = seconds / base_time, pss / base_pss
        time_ok, pss_ok = time_ratio <= TIME_TARGET, pss_ratio <= PSS_TARGET
        time_verdict = ("PASS" if time_ok else "FAIL") if name == "warm" else "(no target)"
        failed |= (name == "warm" and not time_ok) or not pss_ok
        print(
            f"{label:26}  {seconds:8.3f} s  {pss:6.1f} MB  {time_ratio:5.1f}x {time_verdict:11}"
            f"  {pss_ratio:4.1f}x {'PASS' if pss_ok else 'FAIL'}"
        )
    print(f"targets: first answer within {TIME_TARGET:g}x rbldnsd's (warm start), PSS within {PSS_TARGET:g}x")
    print(f"answers: {asked - differing}/{asked} probe addresses answered alike (listed or not)")
    sys.exit(1 if failed or differing else 0)


if __name__ == "__main__":
    main()
