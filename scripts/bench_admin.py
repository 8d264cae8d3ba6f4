#!/usr/bin/env python3
"""Admin benchmarks (issue: the admin CLI). Prints its figures; asserts nothing.

- import of 1,000,000 rbldnsd-format (ip4set) entries: wall time and peak memory (max RSS) of the
  `dnsbl import` process; targets: under 30 s and under 1 GB;
- `dnsbl check` of one address in a SQLite-only zone holding those entries, cold start included:
  wall time of the whole process, median and worst of several runs; target: under 150 ms.

Usage: scripts/bench_admin.py [--entries N] [--checks N]. Works in a temp folder, removed after.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def generate(path: Path, count: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    with open(path, "w") as out:
        out.write(":2:Listed in the benchmark list, see https://example.org/lookup?ip=$\n")
        for i in range(count):
            if i % 1000 == 0:  # some CIDRs among the single addresses
                out.write(f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.0/24\n")
            else:
                out.write(f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}."
                          f"{rng.randrange(256)}\n")


def dnsbl() -> list[str]:
    return [sys.executable, "-m", "dnsbl_server"]


def timed(args: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    return time.perf_counter() - start, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--checks", type=int, default=15)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dnsbl-bench-admin-"))
    try:
        data, db = work / "list.ip4set", work / "bench.sqlite"
        generate(data, options.entries)
        env = dict(os.environ, DNSBL_DB=str(db))
        seconds, done = timed([*dnsbl(), "import", "--zone", "bench.example.org", str(data)], env)
        if done.returncode:
            sys.exit(f"import failed: {done.stderr}")
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"import of {options.entries:,} ip4set lines: {seconds:.1f} s wall, peak RSS {peak_mb:.0f} MB "
              f"(targets: < 30 s, < 1024 MB) [{done.stdout.strip()}]")
        # Bytecode as `pip install` leaves it: an editable checkout under PYTHONDONTWRITEBYTECODE would
        # recompile every module at each start, which is not what an installed server does.
        import dnsbl_server

        subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(dnsbl_server.__file__).parent)],
                       check=True)
        beside = Path(sys.executable).parent / "dnsbl"  # this interpreter's console script
        runner = [str(beside)] if beside.exists() else dnsbl()
        bare = statistics.median(timed([sys.executable, "-c", "pass"], env)[0] * 1000 for _ in range(5))
        first = next(line for line in data.read_text().splitlines()[1:] if "/" not in line)
        times = []
        for _ in range(options.checks):
            seconds, done = timed([*runner, "check", first], env)
            if done.returncode != 0:
                sys.exit(f"check of a listed address did not exit 0: {done.stderr}")
            times.append(seconds * 1000)
        print(f"check of one address, cold start ({runner[0]}): median {statistics.median(times):.0f} ms, "
              f"worst {max(times):.0f} ms over {options.checks} runs (target: < 150 ms; "
              f"this Python starts in {bare:.0f} ms doing nothing)")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
