"""The shipped scripts work as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import run_cli

SCRIPTS = Path(__file__).parent.parent / "scripts"


def test_export_for_rsync_writes_every_zone_atomically(tmp_path: Path) -> None:
    db = tmp_path / "list.sqlite"
    assert run_cli("add", "--zone", "a.example", "192.0.2.1", db=db).returncode == 0
    assert run_cli("add", "--zone", "b.example", "2001:db8::/48", db=db).returncode == 0
    out = tmp_path / "export"
    bindir = str(Path(sys.executable).parent)
    env = dict(
        os.environ, DNSBL_DB=str(db), EXPORT_DIR=str(out), PATH=bindir + os.pathsep + os.environ["PATH"]
    )
    done = subprocess.run(
        ["sh", str(SCRIPTS / "export-for-rsync.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [".lock", "a.example.combined", "b.example.combined"]
    assert "192.0.2.1 :127.0.0.2:" in (out / "a.example.combined").read_text()
    assert "$DATASET ip6trie" in (out / "b.example.combined").read_text()
