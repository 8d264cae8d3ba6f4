"""The README's safe-mode mail server configurations, run in real mail software against a real
`dnsbl serve`.

Safe mode (backscatterer.org's): a client listed in the zone is refused only for mail whose envelope
sender is null (`<>`) or postmaster@, so a listed server's ordinary mail still gets through.

- The files in QUOTED are the README's lines, verbatim (test_readme_quotes_the_tested_lines); the tests
  load exactly those files, plus harness settings kept apart (tests/mta/*/harness.cf).
- Postfix and rspamd run inside a private network, mount and PID namespace (tests/mta/world.py): they
  find `dnsbl serve` through the system resolver there, as in production. swaks connects to Postfix
  from a listed and an unlisted address; rspamc hands rspamd the client address and envelope sender.
- SpamAssassin is asked with `spamassassin -t`, its `dns_server` pointed at a `dnsbl serve` on a free port.
- Like the rbldnsd tests: a missing tool FAILS the test (.ci/run installs them); nothing skips.
"""

from __future__ import annotations

import email
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import Server, run_cli

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
MTA = ROOT / "tests" / "mta"
README_SECTION = "## Using the list in a mail server (safe mode)"
QUOTED = [
    MTA / "postfix" / "main.cf",
    MTA / "postfix" / "backscatter_senders",
    MTA / "spamassassin" / "backscatter.cf",
    MTA / "rspamd" / "rbl.conf",
    MTA / "rspamd" / "rspamd.local.lua",
    MTA / "rspamd" / "force_actions.conf",
    # checked by hand only (`exim -bh`): Debian's Exim and Postfix can't be installed side by side
    MTA / "exim" / "acl_check_rcpt.conf",
]

ZONE = "bl.example.org"
LISTED, UNLISTED = "192.0.2.55", "192.0.2.66"
REASON = "Backscatter (bounce) to a trap - https://bl.example.org/lookup?ip=$"
TXT = REASON.replace("$", LISTED)
RECIPIENT = "alice@rcpt.example"
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
INSTALL_HINT = "{} is missing: run .ci/run's apt-get line (postfix swaks spamassassin rspamd iproute2)"
BOUNCE = (
    "From: Mail Delivery System <MAILER-DAEMON@sender.example>\n"
    f"To: {RECIPIENT}\nSubject: Undelivered Mail Returned to Sender\n"
    "Date: Sat, 28 Nov 2026 12:14:38 +0000\nMessage-ID: <bounce.1@sender.example>\nMIME-Version: 1.0\n"
    "\nThis is the mail system at host sender.example. Your message could not be delivered.\n"
)


def require(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool, path=SBIN_PATH) is None:
            pytest.fail(INSTALL_HINT.format(tool), pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the mail server tests run as root (namespaces, mounts)", pytrace=False)


def listing(folder: Path) -> Path:
    """A database where LISTED is listed as the trap ingester lists a bounce source."""
    db = folder / "list.sqlite"
    added = run_cli("add", "--zone", ZONE, LISTED, "--code", "2", "--reason", REASON,
                    "--source", "trap:bounce", db=db)  # fmt: skip
    assert added.returncode == 0, added.stderr
    return db


def world(mta: str, folder: Path, cases: dict[str, tuple[str, str | None]]) -> dict[str, dict[str, str]]:
    """Each case's {"output", "log"} from one run of tests/mta/world.py in a private namespace."""
    spec, out = folder / "spec.json", folder / "out.json"
    listed = [{"name": name, "client": client, "sender": sender} for name, (client, sender) in cases.items()]
    spec.write_text(
        json.dumps({"mta": mta, "db": str(listing(folder)), "zone": ZONE, "recipient": RECIPIENT,
                    "message": BOUNCE, "cases": listed})
    )  # fmt: skip
    namespace = ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc"]
    command = [sys.executable, str(MTA / "world.py"), str(spec), str(out)]
    done = subprocess.run(namespace + command, capture_output=True, text=True, timeout=120)
    result: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    if done.returncode != 0 or result.get("error"):
        logs = "\n".join(f"--- {key}:\n{result.get(key, '')}" for key in ("error", "log", "dnsbl_log"))
        pytest.fail(f"the {mta} world failed (exit {done.returncode}):\n{done.stderr}\n{logs}")
    sessions: dict[str, dict[str, str]] = result["cases"]
    return sessions


# --- Postfix: refused at RCPT ------------------------------------------------------------------------

# name: (client address, envelope sender, refused?)
POSTFIX_CASES = {
    "bounce_from_listed": (LISTED, "<>", True),
    "postmaster_from_listed": (LISTED, "postmaster@sender.example", True),
    "postmaster_any_case_from_listed": (LISTED, "PostMaster@Sender.Example", True),
    "ordinary_mail_from_listed": (LISTED, "alice@sender.example", False),
    "bounce_from_unlisted": (UNLISTED, "<>", False),
}


@pytest.fixture(scope="module")
def postfix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """Every case's swaks transcript ("output") and Postfix's log of it, from one Postfix (about 5 s)."""
    require("unshare", "ip", "postfix", "postmap", "swaks")
    cases = {name: (client, sender) for name, (client, sender, _) in POSTFIX_CASES.items()}
    return world("postfix", tmp_path_factory.mktemp("postfix"), cases)


def reply_to(command: str, transcript: str) -> str:
    """The server's reply to the client line starting with `command`, e.g. `250 2.1.5 Ok`."""
    lines = transcript.splitlines()
    for index, line in enumerate(lines):
        if line.startswith(" -> " + command):
            replies = [reply for reply in lines[index + 1 :] if reply.startswith(("<- ", "<**"))]
            return replies[0][3:].strip() if replies else ""
    return ""


def session(postfix: dict[str, dict[str, str]], name: str) -> tuple[str, str, str]:
    """(swaks's transcript, Postfix's log, both for assertion messages); checks that the session really
    came from the case's client address, which swaks's transcript doesn't show."""
    transcript, log = postfix[name]["output"], postfix[name]["log"]
    both = f"{transcript}\n--- maillog:\n{log}"
    client = re.escape(POSTFIX_CASES[name][0])
    assert re.search(rf"postfix/smtpd\[\d+\]: disconnect from \S+\[{client}\]", log), both
    return transcript, log, both


@pytest.mark.parametrize("name", [name for name, case in POSTFIX_CASES.items() if case[2]])
def test_postfix_refuses_a_listed_client_for_bounces_and_postmaster(
    postfix: dict[str, dict[str, str]], name: str
) -> None:
    transcript, log, both = session(postfix, name)
    assert reply_to("MAIL FROM:", transcript).startswith("250"), both  # refused at RCPT, not before
    rcpt = reply_to("RCPT TO:", transcript)
    assert rcpt.startswith("554 5.7.1 "), both
    assert f"Client host [{LISTED}] blocked using {ZONE}; {TXT}" in rcpt, both
    assert "rcpt=0/1" in log, both


@pytest.mark.parametrize("name", [name for name, case in POSTFIX_CASES.items() if not case[2]])
def test_postfix_accepts_ordinary_mail_and_unlisted_clients(
    postfix: dict[str, dict[str, str]], name: str
) -> None:
    transcript, log, both = session(postfix, name)
    assert reply_to("MAIL FROM:", transcript).startswith("250"), both
    assert reply_to("RCPT TO:", transcript).startswith("250 "), both
    assert " rcpt=1 " in log and "reject" not in log, both


def test_postfix_sessions_are_real_smtp_with_the_cases_senders(postfix: dict[str, dict[str, str]]) -> None:
    """Guards the parsing above: each transcript is swaks talking to our Postfix, with the case's sender."""
    for name, (_, sender, _) in POSTFIX_CASES.items():
        transcript, _, both = session(postfix, name)
        assert "<-  220 mx.rcpt.example ESMTP" in transcript, both
        assert f" -> MAIL FROM:<{sender.strip('<>')}>" in transcript, both


# --- SpamAssassin: scored after DATA -------------------------------------------------------------------

SA_CASES = {
    # name: (relay, Return-Path header or None, BL_EXAMPLE_BACKSCATTER expected?)
    "bounce_from_listed": (LISTED, "<>", True),
    "postmaster_from_listed": (LISTED, "<PostMaster@sender.example>", True),
    "ordinary_mail_from_listed": (LISTED, "<alice@sender.example>", False),
    "unknown_sender_from_listed": (LISTED, None, False),
    "bounce_from_unlisted": (UNLISTED, "<>", False),
}


def delivered(relay: str, return_path: str | None) -> str:
    """BOUNCE as Postfix's final delivery hands it on: Return-Path, then Postfix's Received."""
    top = f"Return-Path: {return_path}\n" if return_path is not None else ""
    return (
        f"{top}Received: from client.example (unknown [{relay}])\n"
        "\tby mx.rcpt.example (Postfix) with ESMTP id 8523520CF28\n"
        f"\tfor <{RECIPIENT}>; Sat, 28 Nov 2026 12:14:39 +0000 (UTC)\n{BOUNCE}"
    )


@pytest.fixture(scope="module")
def spamassassin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[list[str], str]]]:
    """Every case's (rules hit, dns debug log) from `spamassassin -t`, the README's rules in its site
    config, asking a real `dnsbl serve`."""
    require("unshare", "spamassassin")
    folder = tmp_path_factory.mktemp("spamassassin")
    server = Server(["--db", str(listing(folder)), "--zone", ZONE])
    try:
        site = site_config(folder / "site", server.port)
        with ThreadPoolExecutor(max_workers=len(SA_CASES)) as pool:
            runs = {
                name: pool.submit(scan, site, delivered(relay, rp))
                for name, (relay, rp, _) in SA_CASES.items()
            }
            yield {name: run.result() for name, run in runs.items()}
    finally:
        server.close()


def site_config(site: Path, port: int) -> Path:
    """The Debian plugin loaders, harness.cf as local.cf, and the README's backscatter.cf."""
    site.mkdir()
    for pre in Path("/etc/spamassassin").glob("*.pre"):
        shutil.copy(pre, site)
    harness = (MTA / "spamassassin" / "harness.cf").read_text().replace("{port}", str(port))
    (site / "local.cf").write_text(harness)
    shutil.copy(MTA / "spamassassin" / "backscatter.cf", site)
    return site


def scan(site: Path, message: str) -> tuple[list[str], str]:
    """The rules `spamassassin -t` hit (from X-Spam-Status) and its dns debug log."""
    # SpamAssassin makes ~/.spamassassin in the passwd home, whatever HOME says: hide that home under a
    # throwaway tmpfs in a private mount namespace, so the machine's is never touched
    home = pwd.getpwuid(os.geteuid()).pw_dir
    private = ["unshare", "--mount", "sh", "-c", 'mount -t tmpfs none "$0" && exec "$@"', home]
    argv = ["spamassassin", "-x", "-D", "dns", f"--siteconfigpath={site}", "-t"]
    done = subprocess.run(private + argv, input=message, capture_output=True, text=True, timeout=60)
    status = email.message_from_string(done.stdout).get("X-Spam-Status", "")
    tests = re.search(r"tests=(\S*)", re.sub(r"\s+", " ", status).replace(", ", ","))
    assert done.returncode == 0 and tests, (
        f"spamassassin exited {done.returncode}:\n{done.stdout}{done.stderr}"
    )
    return tests.group(1).split(","), done.stderr


@pytest.mark.parametrize("name", SA_CASES)
def test_spamassassin_scores_bounces_and_postmaster_from_a_listed_relay(
    spamassassin: dict[str, tuple[list[str], str]], name: str
) -> None:
    relay, _, expected = SA_CASES[name]
    hits, debug = spamassassin[name]
    assert ("BL_EXAMPLE_BACKSCATTER" in hits) is expected, (hits, debug)
    # the relay was looked up in every case: an ordinary sender is let off by the meta rule, not by chance
    reversed_relay = ".".join(reversed(relay.split(".")))
    assert f"IN/A/{reversed_relay}.{ZONE}" in debug, debug
    assert ("rbl rule __BL_EXAMPLE_RELAY hit" in debug) is (relay == LISTED), debug


# --- rspamd: rejected after DATA ------------------------------------------------------------------------

RSPAMD_CASES = {
    # name: (client address, envelope sender or None (the MTA didn't say), rejected?)
    "bounce_from_listed": (LISTED, "<>", True),
    "postmaster_from_listed": (LISTED, "PostMaster@sender.example", True),
    "ordinary_mail_from_listed": (LISTED, "alice@sender.example", False),
    "unknown_sender_from_listed": (LISTED, None, False),
    "bounce_from_unlisted": (UNLISTED, "<>", False),
}


@pytest.fixture(scope="module")
def rspamd(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every case's `rspamc --json` reply, from one rspamd (about 5 s)."""
    require("unshare", "ip", "rspamd", "rspamc")
    cases = {name: (client, sender) for name, (client, sender, _) in RSPAMD_CASES.items()}
    sessions = world("rspamd", tmp_path_factory.mktemp("rspamd"), cases)
    return {name: json.loads(session["output"]) for name, session in sessions.items()}


@pytest.mark.parametrize("name", RSPAMD_CASES)
def test_rspamd_rejects_bounces_and_postmaster_from_a_listed_client(
    rspamd: dict[str, dict[str, Any]], name: str
) -> None:
    client, _, rejected = RSPAMD_CASES[name]
    reply = rspamd[name]
    forced = "FORCE_ACTION_BL_EXAMPLE_BACKSCATTER" in reply["symbols"]
    assert (forced, reply["action"] == "reject") == (rejected, rejected), reply
    # the client was looked up and found (or not) in every case: the sender decides, not chance
    assert ("BL_EXAMPLE" in reply["symbols"]) is (client == LISTED), reply
    if rejected:
        assert reply["messages"]["smtp_message"] == f"Backscatter from a host listed in {ZONE}", reply


# --- the README -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", QUOTED, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_readme_quotes_the_tested_lines(template: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    assert README_SECTION in readme
    assert template.read_text() in readme, f"README.md must quote {template.relative_to(ROOT)} verbatim"
