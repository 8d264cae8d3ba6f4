#!/usr/bin/env python3
"""Ingester benchmark (issue: the trap ingester). Prints its figures; asserts nothing.

Fills a Maildir with N trap messages (the labelled corpus in tests/data/bounces, each copy given its own
Message-ID and relay address so every one is a distinct hit), runs `dnsbl ingest --once --maildir`,
and prints the wall time and the peak memory (max RSS) of the ingest process, for N and for N/4, so
"memory flat in the number of messages" can be read off. Target: 10,000 messages in under 60 s.

Usage: scripts/bench_ingest.py [--messages N]. Works in a temp folder, removed after.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "bounces"


def fill(maildir: Path, count: int) -> None:
    (maildir / "new").mkdir(parents=True)
    samples = sorted(p.read_bytes() for p in CORPUS.rglob("*") if p.is_file() and p.suffix in (".eml", ".txt")
                     and "LICENSE" not in p.name)
    for i in range(count):
        body = samples[i % len(samples)]
        # a fresh top hop and Message-ID: every copy is a new relay's new message
        relay = f"198.{18 + (i >> 16) % 2}.{(i >> 8) & 255}.{i & 255}"
        top = (
            f"Received: from mx.sender.example (mx.sender.example [{relay}])\n\tby trap.example.org "
            f"(Postfix) with ESMTP id B{i}\n\tfor <trap{i}@trap.example.org>; "
            f"Sat, 28 Nov 2026 00:00:00 +0000\nMessage-ID: <bench-{i}@trap.example.org>\n"
        ).encode()
        (maildir / "new" / f"{i:06d}.bench").write_bytes(top + body)


def run(count: int) -> tuple[float, float, str]:
    work = Path(tempfile.mkdtemp(prefix="dnsbl-bench-ingest-"))
    try:
        fill(work / "Maildir", count)
        env = dict(os.environ, DNSBL_DB=str(work / "db.sqlite"))
        command = [sys.executable, "-m", "dnsbl_server", "ingest", "--once", "--zone", "bl.example.org",
                   "--trap-mx", "trap.example.org", "--maildir", str(work / "Maildir")]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
        if done.returncode:
            sys.exit(f"ingest failed: {done.stderr}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        return seconds, max(peak, before) / 1024, done.stdout.splitlines()[0]
    finally:
        shutil.rmtree(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    count = parser.parse_args().messages
    small = run(count // 4)  # first: RUSAGE_CHILDREN keeps the largest child seen so far
    large = run(count)
    print(f"ingest of {count // 4:,} messages: {small[0]:.1f} s, peak RSS {small[1]:.0f} MB")
    print(f"ingest of {count:,} messages: {large[0]:.1f} s, peak RSS {large[1]:.0f} MB (target: < 60 s, "
          f"memory flat) [{large[2].split(': ', 1)[1]}]")


if __name__ == "__main__":
    main()
