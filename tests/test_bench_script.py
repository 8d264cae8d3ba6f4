"""scripts/bench runs end to end in its tiny mode and prints the whole report.

A smoke test: the figures of 20,000 entries and 3 s of load say nothing, so PASS/FAIL is not asserted;
what is, is that every server was measured (a row each, every column a number), the churn test ran, and
every target got a verdict. Needs rbldnsd and dnsperf, as CI has; never skips.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "scripts" / "bench"
ROWS = ("rbldnsd (data file)", "dnsbl serve (data file)", "dnsbl serve (SQLite)")
N = r"(\d+(?:\.\d+)?)"
# label; 1st start, 2nd start, qps, lost %, avg ms, p99 ms, PSS MB, qps ratio, PSS ratio
ROW = re.compile(r"^(.{24}) +" + " +".join([N + " s", N + " s", N, N, N, N, N, N + "x", N + "x"]) + "$")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--churn", "3"], capture_output=True, text=True, timeout=90
    )


def test_runs_to_the_end(report: subprocess.CompletedProcess[str]) -> None:
    assert report.returncode in (0, 1), report.stderr  # 1: a target failed, which tiny figures may
    assert "Traceback" not in report.stderr, report.stderr


def test_a_row_of_numbers_per_server(report: subprocess.CompletedProcess[str]) -> None:
    rows = {m.group(1).strip(): m.groups()[1:] for m in map(ROW.match, report.stdout.splitlines()) if m}
    assert sorted(rows) == sorted(ROWS), report.stdout
    for label, figures in rows.items():
        start1, start2, qps, lost, avg, p99, pss, qps_ratio, pss_ratio = map(float, figures)
        assert qps > 0 and avg > 0 and p99 > 0 and pss > 0 and qps_ratio > 0 and pss_ratio > 0, label
        assert 0 <= lost <= 100, label
        assert 0 < start1 < 60 and 0 < start2 < 60, label
    assert rows["rbldnsd (data file)"][-2:] == ("1.00", "1.00")
    cpu = re.search(r"^CPU per query .*: (.*)$", report.stdout, re.M)
    assert cpu is not None, report.stdout
    each = "; ".join(re.escape(label) + r" \d+\.\d µs \(\d+\.\dx\)" for label in ROWS)
    assert re.fullmatch(each, cpu.group(1)), cpu.group(1)


def test_churn_and_verdicts(report: subprocess.CompletedProcess[str]) -> None:
    out = report.stdout
    assert re.search(r"^churn \(SQLite, 3 x dnsbl add", out, re.M), out
    verdicts = re.findall(r"^(PASS|FAIL)  (.*)$", out, re.M)
    # queries/s, lost and PSS for both of ours, the data file's start, churn delay and churn lost
    assert len(verdicts) == 9, out
    assert re.search(r"^machine: .*\d+ CPUs", out, re.M), out
    assert re.search(r"^load average .* before: [\d.]+ [\d.]+ [\d.]+", out, re.M), out
