"""A private mail world for tests/test_mta.py: a real mail filter (Postfix, or rspamd) asking a real
`dnsbl serve` through the system resolver, and a real client (swaks, or rspamc) in front of it.

Run it only as the first process of a private namespace, as root (the test does this):

    unshare --net --mount --pid --fork --kill-child --mount-proc python world.py SPEC.json OUT.json

Inside it: loopback up with the clients' addresses on it, /etc/resolv.conf bind-mounted to say
`nameserver 127.0.0.1`, `dnsbl serve` on 127.0.0.1:53, and the program under test with a temporary copy
of its /etc folder (bind-mounted) holding the README's lines plus what the harness needs:
- postfix: harness.cf + main.cf + backscatter_senders; smtpd on 127.0.0.1:2525; each case is a swaks
  session from the case's address, quitting after RCPT, with Postfix's log of that session.
- rspamd: local.d/rbl.conf, local.d/force_actions.conf, rspamd.local.lua (plus the harness's logging.inc
  and options.inc); each case is `rspamc --json` with the case's --ip and --from.
The mounts and addresses vanish with the namespace, and every process left in it dies with this one (it
is PID 1 there, and refuses to run anywhere else); outside it, only a temporary folder is written, and
removed at the end.

SPEC.json: {"mta": "postfix" | "rspamd", "db", "zone", "recipient", "message" (rspamd),
            "cases": [{"name", "client", "sender" (null: none given)}]}.
OUT.json: {"cases": {name: {"output": client's transcript or JSON, "log": Postfix's log of the session}},
           "log": the program's whole log, "dnsbl_log", "error": str | null}.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DNS = "127.0.0.1:53"
SMTPD = ("127.0.0.1", 2525)
RSPAMD = ("127.0.0.1", 11333)  # rspamd's normal worker, its default port
START_TIMEOUT = 30.0
STARTED: list[subprocess.Popen[bytes]] = []  # stopped at the end; the PID namespace kills any left


def sh(*argv: str, timeout: float = 30) -> str:
    """Run a command; its output, or an exception carrying it."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout + done.stderr


def wait_for(check: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def listening(address: tuple[str, int]) -> Callable[[], bool]:
    def check() -> bool:
        try:
            socket.create_connection(address, timeout=1).close()
        except OSError:
            return False
        return True

    return check


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def network(clients: list[str], work: Path) -> None:
    """Loopback up, the clients' addresses on it, and a resolver that asks 127.0.0.1."""
    sh("ip", "link", "set", "lo", "up")
    for address in clients:
        sh("ip", "addr", "add", f"{address}/32", "dev", "lo")
    resolv = work / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    sh("mount", "--bind", str(resolv), "/etc/resolv.conf")


def start_dnsbl(db: str, zone: str, log: Path) -> None:
    argv = [sys.executable, "-m", "dnsbl_server", "serve", "--db", db, "--zone", zone, "--listen", DNS]
    with log.open("wb") as handle:
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=handle)
    STARTED.append(server)
    wait_for(lambda: f"listening on {DNS}" in read(log) or server.poll() is not None, "dnsbl serve")
    if server.poll() is not None:
        raise RuntimeError("dnsbl serve exited:\n" + read(log))


def etc_copy(system: str, work: Path) -> Path:
    """A copy of the system's config folder, bind-mounted over it once filled (see `mount_etc`)."""
    etc = work / "etc"
    shutil.copytree(system, etc, symlinks=True)
    return etc


def mount_etc(etc: Path, system: str) -> None:
    sh("mount", "--bind", str(etc), system)


# --- Postfix ------------------------------------------------------------------------------------------


def master_cf(text: str) -> str:
    """Debian's master.cf with smtpd moved to 127.0.0.1:2525 and no service chrooted (a chroot would
    need its own copy of resolv.conf)."""
    lines = []
    for line in text.splitlines():
        fields = line.split()
        if line[:1].isspace() or line.startswith("#") or len(fields) < 8:
            lines.append(line)
            continue
        if fields[:2] == ["smtp", "inet"]:
            fields[0] = "{}:{}".format(*SMTPD)
        fields[4] = "n"
        lines.append(" ".join(fields))
    return "\n".join(lines) + "\n"


def start_postfix(work: Path) -> None:
    """harness.cf plus the README's main.cf lines and sender map, in a copy of /etc/postfix."""
    etc, ours = etc_copy("/etc/postfix", work), HERE / "postfix"
    harness = (ours / "harness.cf").read_text().replace("{work}", str(work))
    (etc / "main.cf").write_text(harness + "\n" + (ours / "main.cf").read_text())
    shutil.copy(ours / "backscatter_senders", etc / "backscatter_senders")
    (etc / "master.cf").write_text(master_cf((etc / "master.cf").read_text()))
    for folder in ("queue", "data"):
        (work / folder).mkdir()
    shutil.chown(work / "data", "postfix", "postfix")
    mount_etc(etc, "/etc/postfix")
    sh("postmap", "hash:/etc/postfix/backscatter_senders")
    sh("postfix", "post-install", "create-missing")
    sh("postfix", "check")
    sh("postfix", "start")
    wait_for(listening(SMTPD), "Postfix smtpd on 127.0.0.1:2525")


def stop_postfix(work: Path) -> None:
    if (work / "queue" / "pid" / "master.pid").exists():  # ours: never the machine's Postfix
        subprocess.run(["postfix", "stop"], capture_output=True, timeout=30)


def session_log(maillog: Path, start: int, client: str) -> str:
    """Postfix's log from offset `start` on, once smtpd has logged the end of `client`'s session."""
    end = re.compile(rf"\]: disconnect from \S*\[{re.escape(client)}\] ")
    wait_for(lambda: end.search(read(maillog)[start:]), f"{end.pattern!r} in the maillog")
    return read(maillog)[start:]


def swaks(spec: dict[str, Any], case: dict[str, str], work: Path) -> dict[str, str]:
    maillog, start = work / "maillog", len(read(work / "maillog"))
    argv = ["swaks", "--server", "{}:{}".format(*SMTPD), "--local-interface", case["client"]]
    argv += ["--helo", "client.example", "--from", case["sender"], "--to", spec["recipient"]]
    argv += ["--quit-after", "RCPT", "--timeout", "20"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return {"output": done.stdout + done.stderr, "log": session_log(maillog, start, case["client"])}


# --- rspamd -------------------------------------------------------------------------------------------


def start_rspamd(work: Path) -> None:
    """The README's rspamd files in a copy of /etc/rspamd; its state, pid and log in `work`."""
    etc, ours = etc_copy("/etc/rspamd", work), HERE / "rspamd"
    for name in ("rbl.conf", "force_actions.conf"):
        shutil.copy(ours / name, etc / "local.d" / name)
    shutil.copy(ours / "rspamd.local.lua", etc / "rspamd.local.lua")
    (etc / "local.d" / "logging.inc").write_text(f'type = "file";\nfilename = "{work}/rspamd.log";\n')
    # compiling the whole public suffix list into an empty cache takes ~15 s at every start
    (work / "tlds.dat").write_text("example\norg\n")
    (etc / "local.d" / "options.inc").write_text(f'url_tld = "{work}/tlds.dat";\n')
    for folder in ("run", "db"):
        (work / folder).mkdir()
        shutil.chown(work / folder, "_rspamd", "_rspamd")
    (work / "rspamd.log").touch()
    shutil.chown(work / "rspamd.log", "_rspamd", "_rspamd")
    mount_etc(etc, "/etc/rspamd")
    argv = ["rspamd", "-f", "-u", "_rspamd", "-g", "_rspamd", "-c", "/etc/rspamd/rspamd.conf"]
    argv += ["--var", f"RUNDIR={work}/run", "--var", f"DBDIR={work}/db", "--var", f"LOGDIR={work}"]
    with (work / "rspamd.out").open("wb") as out:
        STARTED.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT))
    wait_for(listening(RSPAMD), "rspamd on 127.0.0.1:11333")


def rspamc(spec: dict[str, Any], case: dict[str, str], work: Path) -> dict[str, str]:
    argv = ["rspamc", "--json", "-h", "{}:{}".format(*RSPAMD), "--ip", case["client"]]
    argv += ["--rcpt", spec["recipient"]] + (["--from", case["sender"]] if case["sender"] is not None else [])
    done = subprocess.run(
        argv + ["symbols"], input=spec["message"], capture_output=True, text=True, timeout=30
    )
    return {"output": done.stdout + done.stderr, "log": ""}


# --- the run ------------------------------------------------------------------------------------------

MTAS = {
    "postfix": (start_postfix, swaks, stop_postfix, "maillog"),
    "rspamd": (start_rspamd, rspamc, lambda work: None, "rspamd.log"),
}


def stop_started() -> None:
    for process in reversed(STARTED):
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def run(spec: dict[str, Any], work: Path, out: dict[str, Any]) -> None:
    start, client, _, _ = MTAS[spec["mta"]]
    network(sorted({case["client"] for case in spec["cases"]}), work)
    start_dnsbl(spec["db"], spec["zone"], work / "dnsbl.log")
    start(work)
    for case in spec["cases"]:
        out["cases"][case["name"]] = client(spec, case, work)


def main(spec_path: str, out_path: str) -> int:
    if os.getpid() != 1:  # bind mounts and addresses outside a private namespace would change the machine
        sys.exit("world.py runs only as PID 1 of a private namespace: see its docstring")
    spec = json.loads(Path(spec_path).read_text())
    # not under pytest's mode-700 tmp_path: the programs' unprivileged processes must reach their files
    work = Path(tempfile.mkdtemp(prefix=f"dnsbl-{spec['mta']}-"))
    work.chmod(0o755)
    out: dict[str, Any] = {"cases": {}, "error": None}
    _, _, stop, log = MTAS[spec["mta"]]
    try:
        run(spec, work, out)
    except Exception as error:  # reported to the test, which fails with it
        out["error"] = f"{type(error).__name__}: {error}"
    finally:
        stop(work)
        stop_started()
        out["log"] = read(work / log) + read(work / "rspamd.out")
        out["dnsbl_log"] = read(work / "dnsbl.log")
        Path(out_path).write_text(json.dumps(out, indent=1))
        shutil.rmtree(work, ignore_errors=True)
    return 0 if out["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
