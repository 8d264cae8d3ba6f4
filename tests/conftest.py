"""Shared fixtures: a real `dnsbl serve` process on a free loopback port, and the `dnsbl` CLI."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

LISTENING = re.compile(r"listening on (\S+):(\d+) ")


def run_cli(
    *args: str, db: Path | None = None, input: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("DNSBL_DB", None)
    if db is not None:
        full_env["DNSBL_DB"] = str(db)
    return subprocess.run(
        [sys.executable, "-m", "dnsbl_server", *args],
        capture_output=True,
        text=True,
        input=input,
        env=full_env,
        timeout=60,
    )


class Server:
    """A `dnsbl serve` subprocess; `ask()` queries it with dnspython over UDP or TCP."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        full_env = dict(os.environ, **(env or {}))
        # stderr to a file, not a pipe: a pipe nobody reads could fill and block the server
        self.log_file = tempfile.NamedTemporaryFile("w+", prefix="dnsbl-serve-", suffix=".log")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dnsbl_server", "serve", "--listen", "127.0.0.1:0", *args],
            stderr=self.log_file,
            stdout=subprocess.DEVNULL,
            text=True,
            env=full_env,
        )
        self.host, self.port = self._wait_listening()

    @property
    def log(self) -> str:
        with open(self.log_file.name) as handle:
            return handle.read()

    def _wait_listening(self) -> tuple[str, int]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            match = LISTENING.search(self.log)
            if match:
                return match.group(1), int(match.group(2))
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("server did not start:\n" + self.log)

    def ask(
        self, name: str, rdtype: str = "A", *, tcp: bool = False, **kwargs: object
    ) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]
        send = dns.query.tcp if tcp else dns.query.udp
        return send(query, self.host, port=self.port, timeout=5)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        self.log_file.close()


def rcode(message: dns.message.Message) -> str:
    return dns.rcode.to_text(message.rcode())


def values(message: dns.message.Message, rdtype: str) -> list[str]:
    return sorted(
        rr.to_text()
        for rrset in message.answer
        if dns.rdatatype.to_text(rrset.rdtype) == rdtype
        for rr in rrset
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()  # `dnsbl serve` needs the folder of a --db to exist
    return tmp_path / "data" / "list.sqlite"


@pytest.fixture
def serve(db: Path) -> Iterator[object]:
    started: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Server:
        server = Server(["--db", str(db), *args], env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Servers a test starts with `start`, closed after it."""
    started: list[Server] = []
    yield started
    for server in started:
        server.close()


def start(servers: list[Server], *args: str) -> Server:
    server = Server(list(args))
    servers.append(server)
    return server


def poll(check, timeout: float = 10.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Call `check` until it returns something true or the timeout passes; return the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)
