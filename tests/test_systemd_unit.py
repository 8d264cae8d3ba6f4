"""scripts/systemd/dnsbl-server.service, tried as far as a machine without systemd running allows:
`systemd-analyze verify` and `security` on it, its ExecStart run with the capabilities the unit gives
(setpriv: only CAP_NET_BIND_SERVICE, no new privileges) on a low port, its ExecReload reloading data,
and every system call the server makes inside its SystemCallFilter (strace)."""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import LISTENING, Server, poll, run_cli, values
from test_workers import children

ROOT = Path(__file__).parent.parent
UNIT = ROOT / "scripts" / "systemd" / "dnsbl-server.service"
SYSUSERS = ROOT / "scripts" / "systemd" / "dnsbl-server.sysusers"
DNSBL = Path(sys.executable).parent / "dnsbl"  # the venv's entry point, for the unit's /opt/... one
ZONE = "bl.example.org"
CAP_NET_BIND_SERVICE = 1 << 10


def tool(name: str, package: str) -> str:
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if found is None:
        pytest.fail(f"{name} is not installed: apt-get install {package}", pytrace=False)
    return found


def service() -> dict[str, list[str]]:
    """The [Service] section: each key's values, in order (a key may be given several times)."""
    section, found = "", {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def local_unit(tmp_path: Path) -> Path:
    """The unit with its ExecStart pointing at this checkout's `dnsbl`."""
    text = UNIT.read_text().replace(service()["ExecStart"][0].split()[0], str(DNSBL))
    path = tmp_path / UNIT.name
    path.write_text(text)
    return path


def test_the_unit_verifies_and_is_well_confined(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "systemd")
    unit = local_unit(tmp_path)
    verified = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path)
    assert verified.returncode == 0 and verified.stdout + verified.stderr == "", verified.stderr
    security = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert security.returncode == 0, security.stdout  # "exposure level ... 1.7 OK" here
    unit_keys = service()
    for key, value in {
        "User": "dnsbl",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "NoNewPrivileges": "true",
        "StateDirectory": "dnsbl-server",
        "ProtectSystem": "strict",
        "ExecReload": "/bin/kill -HUP $MAINPID",
    }.items():
        assert unit_keys[key] == [value], key


def test_sysusers_creates_the_units_user(tmp_path: Path) -> None:
    sysusers = tool("systemd-sysusers", "systemd")
    (tmp_path / "etc").mkdir()
    subprocess.run([sysusers, f"--root={tmp_path}", str(SYSUSERS)], check=True, capture_output=True)
    users = {
        line.split(":")[0]: line.split(":") for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
    }
    assert service()["User"] == [users["dnsbl"][0]]
    assert users["dnsbl"][5] == "/var/lib/dnsbl-server" and users["dnsbl"][6] == "/usr/sbin/nologin"


def _low_port() -> int:
    """A port under 1024 free for UDP and TCP on loopback: binding it needs CAP_NET_BIND_SERVICE."""
    import socket

    for port in range(1023, 600, -1):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
                udp.bind(("127.0.0.1", port))
                tcp.bind(("127.0.0.1", port))
                return port
        except OSError:
            continue
    pytest.skip("no port under 1024 is free on 127.0.0.1")


def _setpriv() -> list[str]:
    """What the unit's capability lines do to the process it starts: only the bounding set's
    capabilities, held as ambient ones, none regained by uid 0 (securebits), no new privileges."""
    keys = service()
    caps = ",".join("+" + c.lower().removeprefix("cap_") for c in keys["AmbientCapabilities"][0].split())
    bounding = ",".join(
        "+" + c.lower().removeprefix("cap_") for c in keys["CapabilityBoundingSet"][0].split()
    )
    command = [
        tool("setpriv", "util-linux"),
        "--securebits=+noroot,+noroot_locked,+no_setuid_fixup,+no_setuid_fixup_locked",
        f"--bounding-set=-all,{bounding}",
        f"--inh-caps=-all,{caps}",
        f"--ambient-caps=-all,{caps}",
    ]
    return command + (["--no-new-privs"] if keys["NoNewPrivileges"] == ["true"] else [])


def _capabilities(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise AssertionError("no CapEff")


@pytest.mark.skipif(os.geteuid() != 0, reason="setpriv needs root to set the capability sets")
def test_exec_start_binds_a_low_port_with_the_units_capability_alone_and_reloads(tmp_path: Path) -> None:
    keys = service()
    port = _low_port()
    data = tmp_path / "feed.ip4set"
    data.write_text("192.0.2.1 :2:first\n")
    conf = tmp_path / "dnsbl.toml"
    conf.write_text(
        f'listen = ["127.0.0.1:{port}"]\ncheck_interval = "0"\ndatasets = ["{ZONE}:ip4set:{data}"]\n'
        f'[export]\ndirectory = "{tmp_path / "export"}"\ninterval = "1s"\n'
    )
    argv = shlex.split(keys["ExecStart"][0])
    argv[0] = str(DNSBL)
    argv[argv.index("--config") + 1] = str(conf)
    env = dict(os.environ)
    for assignment in keys["Environment"]:
        name, _, value = assignment.partition("=")
        env[name] = str(tmp_path / "dnsbl.sqlite") if name == "DNSBL_DB" else value
    assert run_cli("add", "--zone", "db.example.org", "192.0.2.7", db=Path(env["DNSBL_DB"])).returncode == 0
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*_setpriv(), *argv, "--workers", "2"], stderr=out, env=env, cwd=tmp_path)
    try:
        assert poll(lambda: LISTENING.search(log.read_text()), timeout=30), log.read_text()
        server = _Asker(port)
        assert values(server.ask("1.2.0.192." + ZONE, "TXT"), "TXT") == ['"first"']
        for pid in {proc.pid} | children(proc.pid):
            assert _capabilities(pid) == CAP_NET_BIND_SERVICE, pid
        assert poll((tmp_path / "export" / "db.example.org.combined").exists, timeout=15), log.read_text()
        data.write_text("192.0.2.1 :3:second\n")
        reload = keys["ExecReload"][0].replace("$MAINPID", str(proc.pid))
        subprocess.run(shlex.split(reload), check=True)
        assert poll(lambda: values(server.ask("1.2.0.192." + ZONE, "TXT"), "TXT") == ['"second"'], timeout=15)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()


class _Asker(Server):
    """Asks 127.0.0.1:port with dnspython (Server's `ask`, without starting a process)."""

    def __init__(self, port: int) -> None:  # no process of its own
        self.host, self.port = "127.0.0.1", port


@functools.cache
def _syscalls(group: str) -> frozenset[str]:
    """A systemd system-call group, nested groups expanded."""
    out = subprocess.run(
        [tool("systemd-analyze", "systemd"), "syscall-filter", group],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if item and not item.startswith("#"):
            names |= _syscalls(item) if item.startswith("@") else {item}
    return frozenset(names)


def test_every_system_call_is_inside_the_units_filter(tmp_path: Path, db: Path) -> None:
    """SystemCallFilter= lists what the server may call; with SystemCallErrorNumber=EPERM anything else
    fails. strace -f of a server with workers, the export, a change, a query and a SIGHUP."""
    allowed: set[str] = set()
    for spec in service()["SystemCallFilter"]:
        assert not spec.startswith("~"), "only allow-lists here"
        for item in spec.split():
            allowed |= _syscalls(item) if item.startswith("@") else {item}
    assert run_cli("add", "--zone", ZONE, "192.0.2.7", db=db).returncode == 0
    conf = tmp_path / "dnsbl.toml"
    conf.write_text(f'[export]\ndirectory = "{tmp_path / "export"}"\ninterval = "1s"\n')
    trace = tmp_path / "trace"
    strace = [tool("strace", "strace"), "-f", "-qq", "-o", str(trace), sys.executable, "-m", "dnsbl_server"]
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                *strace,
                "serve",
                "--db",
                str(db),
                "--config",
                str(conf),
                "--workers",
                "2",
                "--listen",
                "127.0.0.1:0",
            ],
            stderr=out,
        )
    try:
        match = poll(lambda: LISTENING.search(log.read_text()), timeout=60)
        assert match, log.read_text()
        asker = _Asker(int(match.group(2)))
        assert values(asker.ask("7.2.0.192." + ZONE), "A") == ["127.0.0.2"]
        assert run_cli("add", "--zone", ZONE, "192.0.2.8", db=db).returncode == 0
        assert poll(lambda: values(asker.ask("8.2.0.192." + ZONE), "A") == ["127.0.0.2"], timeout=15)
        assert poll(lambda: "192.0.2.8 " in _read(tmp_path / "export" / f"{ZONE}.combined"), timeout=15)
        os.kill(_parent(proc.pid), signal.SIGHUP)  # the data files reloaded, the workers' logs reopened
        time.sleep(1)
    finally:
        pid = _parent(proc.pid)
        if pid:
            os.kill(pid, signal.SIGTERM)
        proc.wait(timeout=60)
    called = {m.group(1) for m in re.finditer(r"^\d+\s+([a-z0-9_]+)\(", trace.read_text(), re.M)}
    assert called, trace.read_text()[:2000]
    assert sorted(called - allowed) == []


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _parent(strace_pid: int) -> int:
    """The traced server: strace's only child."""
    found = children(strace_pid)
    return next(iter(found)) if found else 0
