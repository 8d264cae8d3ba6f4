"""The web page (README, "Web page"): the pure rules of delisting.py and web/plots.py as tables, then a
real `dnsbl web` process on a free loopback port asked over HTTP (urllib, with a cookie jar as a browser
keeps one), against real SQLite files filled by the CLI and the trap ingester."""

from __future__ import annotations

import http.cookiejar
import json
import re
import sqlite3
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import Server, run_cli

from dnsbl_server.addresses import parse_address
from dnsbl_server.delisting import (
    Limits,
    RateWindow,
    Recent,
    RequestError,
    approval_plan,
    check_request,
    csrf_ok,
    csrf_token,
    next_status,
    parse_query,
    refusal,
)
from dnsbl_server.index import Entry
from dnsbl_server.web.plots import nice_max, ranked_bars, stacked_bars

ZONE = "bl.example.org"
TRAP = "secret-trap-7@trap.example.org"
TOKEN = "operator-token-123"
AT_24TH = datetime(2026, 11, 24, 10, tzinfo=UTC).timestamp()

# --- pure rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", (4, "192.0.2.1", "")),
        (" 2001:DB8::1 ", (6, "", "")),
        ("::ffff:192.0.2.1", (4, "192.0.2.1", "")),
        ("Mail.Example.NET.", (0, "", "mail.example.net")),
    ],
)
def test_parse_query_accepts(text: str, expected: tuple[int, str, str]) -> None:
    q = parse_query(text)
    assert q.family == expected[0] and q.domain == expected[2]
    if expected[1]:
        assert (q.family, q.address) == parse_address(expected[1])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1.2.3",
        "256.1.1.1",
        "192.0.2.0/24",
        "::g",
        "<script>alert(1)</script>",
        "a" * 300,
        "localhost",
        "-bad-.example",
        "exa mple.com",
        "192.0.2.1.5",
    ],
)
def test_parse_query_refuses(text: str) -> None:
    with pytest.raises(RequestError):
        parse_query(text)


def test_check_request_fields() -> None:
    good = check_request(" 192.0.2.7 ", "postmaster@example.net", "We fixed the bounce configuration.")
    assert good.address_text == "192.0.2.7"
    for address, email, reason, word in [
        ("192.0.2.0/24", "a@example.net", "x" * 20, "address"),
        ("192.0.2.7", "not-an-email", "x" * 20, "e-mail"),
        ("192.0.2.7", "a@example.net", "short", "reason"),
        ("192.0.2.7", "a@example.net", "x" * 2001, "reason"),
        ("192.0.2.7", "a@example.net", "fixed it \x1b[31m now", "reason"),
    ]:
        with pytest.raises(RequestError, match=f"^{word}"):
            check_request(address, email, reason)


def test_refusal_table() -> None:
    limits = Limits(per_client=3, total=10)
    assert refusal(Recent(2, 9, 0), limits) is None
    assert "already waiting" in (refusal(Recent(0, 0, 1), limits) or "")
    assert "your address" in (refusal(Recent(3, 3, 0), limits) or "")
    assert "right now" in (refusal(Recent(0, 10, 0), limits) or "")


def test_rate_window_slides_and_stays_bounded() -> None:
    window = RateWindow(2, 60.0, max_clients=3)
    assert [window.allow("a", t) for t in (0, 1, 2)] == [True, True, False]
    assert window.allow("a", 60.5) and not window.allow("a", 60.6)  # the hit at 0 left the window
    for i in range(10):
        window.allow(f"c{i}", 100.0 + i)
    assert len(window._seen) <= 3


def test_csrf_tokens() -> None:
    secret = b"k" * 32
    token = csrf_token(secret, "cookie-1", 1000.0)
    assert csrf_ok(secret, "cookie-1", token, 1000.0 + 3600)
    assert not csrf_ok(secret, "cookie-2", token, 1000.0)  # another browser's cookie
    assert not csrf_ok(b"x" * 32, "cookie-1", token, 1000.0)  # another server's secret
    assert not csrf_ok(secret, "cookie-1", token, 1000.0 + 3 * 3600)  # too old
    assert not csrf_ok(secret, None, token, 1000.0) and not csrf_ok(secret, "cookie-1", "", 1000.0)
    assert not csrf_ok(secret, "cookie-1", "999." + token.split(".")[1], 1000.0)


def test_transitions() -> None:
    assert next_status("pending", "approve") == "approved"
    assert next_status("pending", "deny") == "denied"
    with pytest.raises(RequestError, match="already approved"):
        next_status("approved", "deny")


def _entry(target: str, source: str, lo: int, hi: int, excluded: bool = False) -> Entry:
    return Entry((target, source), 4, lo, hi, excluded, 0x7F000002, "", None)


def test_approval_plan() -> None:
    _, a = parse_address("192.0.2.7")
    net = a & ~0xFF
    single = _entry("192.0.2.7", "manual", a, a)
    trap = _entry("192.0.2.7", "trap:bounce", a, a)
    wide = _entry("192.0.2.0/24", "feed", net, net + 255)
    assert approval_plan([single, trap, wide], 4, a, 0) == (
        (("192.0.2.7", "manual"), ("192.0.2.7", "trap:bounce")),
        True,  # the /24 still covers it: an exclusion is needed
    )
    assert approval_plan([trap], 4, a, 0) == ((("192.0.2.7", "trap:bounce"),), False)
    assert approval_plan([wide], 4, a, 0) == ((), True)  # a hand-made /24 is not removed for one address
    assert approval_plan([], 4, a, 0) == ((), False)


def test_plots_geometry() -> None:
    assert [nice_max(v) for v in (0, 1, 3, 10, 11, 49, 51, 1234)] == [1, 1, 5, 10, 20, 50, 100, 2000]
    days = [0.0, 86400.0, 172800.0]
    plot = stacked_bars("hits", days, {"bounce": [1, 0, 4], "callout": [1, 0, 0]})
    assert len(plot.bars) == 3 and not plot.empty
    tallest = max(plot.bars, key=lambda b: b[3])
    assert tallest[3] == pytest.approx(plot.plot_h * 4 / 5)  # 4 of a nice maximum of 5
    assert stacked_bars("hits", days, {}).empty
    ranked = ranked_bars("top", [("192.0.2.1", 10), ("192.0.2.2", 5)])
    assert ranked.bars[0][2] == pytest.approx(2 * ranked.bars[1][2])


# --- a real `dnsbl web` -----------------------------------------------------------------------


class WebServer(Server):
    """A `dnsbl web` subprocess on a free loopback port; `get`/`post` keep cookies like a browser."""

    def __init__(self, db: Path, config: Path) -> None:
        self.log_file = tempfile.NamedTemporaryFile("w+", prefix="dnsbl-web-", suffix=".log")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dnsbl_server",
                "web",
                "--db",
                str(db),
                "--config",
                str(config),
                "--listen",
                "127.0.0.1:0",
            ],
            stderr=self.log_file,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self.host, self.port = self._wait_listening()
        self.base = f"http://{self.host}:{self.port}"
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def fetch(
        self, path: str, data: dict[str, str] | bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, str, dict[str, str]]:
        body = urllib.parse.urlencode(data).encode() if isinstance(data, dict) else data
        req = urllib.request.Request(self.base + path, data=body, headers=headers or {})
        try:
            with self.opener.open(req, timeout=20) as response:
                return response.status, response.read().decode(), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(), dict(error.headers)

    def json(self, path: str) -> tuple[int, Any]:
        status, body, _ = self.fetch(path)
        return status, json.loads(body)

    def csrf(self, address: str = "") -> str:
        status, body, _ = self.fetch("/request?ip=" + urllib.parse.quote(address))
        assert status == 200
        match = re.search(r'name="csrf" value="([^"]+)"', body)
        assert match, body
        return match.group(1)


def write_config(path: Path, **web: object) -> Path:
    lines = ["[web]"] + [f"{k} = {json.dumps(v)}" for k, v in web.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def listed_db(db: Path, tmp_path: Path) -> Path:
    """A hand listing, a listed /24, and trap hits for 203.0.113.9 (one carrying the trap in its id)."""
    assert (
        run_cli("add", "--zone", ZONE, "192.0.2.55", "--code", "3", "--reason", "Hand: $", db=db).returncode
        == 0
    )
    assert run_cli("add", "--zone", ZONE, "198.51.100.0/24", "--reason", "Feed: $", db=db).returncode == 0
    feed = tmp_path / "feed.jsonl"
    feed.write_text(
        f'{{"ts": "2026-11-20T10:00:00Z", "ip": "203.0.113.9", "kind": "bounce", "trap": "{TRAP}"}}\n'
        f'{{"ts": "2026-11-25T10:00:00Z", "ip": "203.0.113.9", "kind": "autoreply", "trap": "{TRAP}"}}\n'
    )
    done = run_cli("ingest", "--once", "--zone", ZONE, "--jsonl", str(feed), db=db)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(db) as conn:  # an auto-reply whose Message-ID quotes the trap address
        conn.execute(
            "INSERT INTO hits (zone, at, ip, kind, trap, message_id, source) VALUES (?,?,?,?,?,?,?)",
            (ZONE, AT_24TH, "203.0.113.9", "autoreply", TRAP, f"<reply-to-{TRAP}@relay>", "smtp"),
        )
    return db


@pytest.fixture
def web(listed_db: Path, tmp_path: Path) -> Iterator[Any]:
    started: list[WebServer] = []

    def start(**settings: object) -> WebServer:
        config = write_config(tmp_path / f"web{len(started)}.toml", **({"token": TOKEN} | settings))
        server = WebServer(listed_db, config)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def check_json(db: Path, address: str) -> Any:
    done = run_cli("check", "--json", address, db=db)
    return json.loads(done.stdout)


def test_api_has_check_json_layout_and_no_trap(web: Any, listed_db: Path) -> None:
    site = web()
    for address in ("203.0.113.9", "192.0.2.55", "198.51.100.20", "192.0.2.99", "2001:db8::1"):
        status, api = site.json("/api/v1/lookup/" + address)
        assert status == 200
        cli = check_json(listed_db, address)
        for ours, theirs in zip(api, cli, strict=True):  # the evidence is the publishable one
            assert [e["at"] for z in ours["zones"] for e in z.pop("evidence")] == [
                e["at"] for z in theirs["zones"] for e in z.pop("evidence")
            ]
        assert api == cli
    _, api = site.json("/api/v1/lookup/203.0.113.9")
    evidence = api[0]["zones"][0]["evidence"]
    assert [e["source"] for e in evidence] == ["jsonl", "smtp", "jsonl"]  # no spool paths
    assert evidence[1]["message_id"] == "<reply-to-[trap]@relay>"
    for path in ("/api/v1/lookup/203.0.113.9", "/lookup?ip=203.0.113.9", f"/operator?token={TOKEN}"):
        body = site.fetch(path)[1]
        assert TRAP not in body and "secret-trap-7" not in body, path


def test_lookup_page_shows_why_since_when_until_when(web: Any) -> None:
    status, page, headers = web().fetch("/lookup?ip=203.0.113.9")
    assert status == 200 and "LISTED" in page
    assert "<code>127.0.0.2</code> backscatter: bounces" in page
    assert "Backscatter (bounce) to a trap on 2026-11-20" in page  # the TXT
    assert re.search(r'class="first-hit">2026-11-20T10:00:00Z<', page)
    assert re.search(r'class="last-hit">2026-11-25T10:00:00Z<', page)
    assert re.search(r'class="by-kind">autoreply: 2, bounce: 1<', page)
    assert re.search(r'class="expires">2026-12-23T10:00:00Z<', page)  # last hit + 28 days
    assert (
        "script-src" not in headers["Content-Security-Policy"]
        and "default-src 'none'" in (headers["Content-Security-Policy"])
    )
    status, page, _ = web().fetch("/lookup?ip=192.0.2.99")
    assert status == 200 and "not listed" in page and "Request delisting" not in page


def test_malformed_input_gets_400_and_escaped(web: Any) -> None:
    site = web()
    for bad in ("1.2.3", "256.0.0.1", "192.0.2.0/24", "<b>x</b>", "a" * 400, "::1::2"):
        status, body = site.json("/api/v1/lookup/" + urllib.parse.quote(bad, safe=""))
        assert status == 400 and body["error"], bad
        status, page, _ = site.fetch("/lookup?ip=" + urllib.parse.quote(bad))
        assert status == 400 and 'class="error"' in page
        assert "<b>x</b>" not in page
    status, page, _ = site.fetch("/lookup?ip=" + urllib.parse.quote("<script>alert(1)</script>"))
    assert status == 400 and "<script>alert" not in page and "&lt;script&gt;" in page


def test_domain_lookup(web: Any, listed_db: Path) -> None:
    status, body = web().json("/api/v1/lookup/no-such-host.invalid")  # the system resolver, for real
    assert status == 400 and "does not resolve" in body["error"]
    # a name with several addresses: the app in-process, the system resolver swapped for a fixed answer
    from dnsbl_server.config import WebSettings
    from dnsbl_server.web.app import create_app

    answers = {"mail.relay.example": [parse_address("203.0.113.9"), parse_address("2001:db8::25")]}
    app = create_app(str(listed_db), WebSettings(), resolver=lambda name: answers[name])
    got = app.test_client().get("/api/v1/lookup/Mail.Relay.Example")
    assert got.status_code == 200
    assert [(a["address"], a["query"], a["listed"]) for a in got.json] == [
        ("203.0.113.9", "Mail.Relay.Example", True),
        ("2001:db8::25", "Mail.Relay.Example", False),
    ]
    page = app.test_client().get("/lookup?ip=mail.relay.example").get_data(as_text=True)
    assert page.count('<section class="address') == 2


def requests_json(db: Path, status: str = "all") -> list[dict[str, Any]]:
    done = run_cli("requests", "list", "--status", status, "--json", db=db)
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else []


def test_delisting_request_approve_with_allowlist(web: Any, listed_db: Path) -> None:
    site = web()
    reason = "We fixed it. <script>alert('x')</script> & <b>bold</b>\nSecond line."
    form = {"ip": "203.0.113.9", "email": "postmaster@relay.example.net", "reason": reason}
    status, page, _ = site.fetch("/request", form)  # no CSRF token: refused, nothing stored
    assert status == 403 and "did not come from this site" in page
    assert requests_json(listed_db) == []
    status, page, _ = site.fetch("/request", form | {"csrf": site.csrf("203.0.113.9")})
    assert status == 200 and "Request <strong>#1</strong>" in page, page
    [stored] = requests_json(listed_db)
    assert stored["reason"] == reason and stored["client"] == "127.0.0.1" and stored["zones"] == [ZONE]
    operator = site.fetch(f"/operator?token={TOKEN}")[1]
    assert "<script>alert" not in operator and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in operator
    listed = run_cli("requests", "list", db=listed_db)
    assert listed.returncode == 0 and "#1 " in listed.stdout and "| We fixed it." in listed.stdout
    done = run_cli("requests", "approve", "1", "--allowlist", "--note", "fixed", db=listed_db)
    assert done.returncode == 0, done.stderr
    assert f"{ZONE}: removed (trap:bounce) 203.0.113.9" in done.stdout
    assert f"{ZONE}: allowlisted 203.0.113.9" in done.stdout
    assert site.json("/api/v1/lookup/203.0.113.9")[1][0]["listed"] is False
    allow = json.loads(run_cli("allowlist", "list", "--json", db=listed_db).stdout)
    assert any(a["target"] == "203.0.113.9" and a["zone"] == ZONE for a in allow)
    assert requests_json(listed_db)[0]["status"] == "approved"
    again = run_cli("requests", "approve", "1", db=listed_db)
    assert again.returncode == 2 and "already approved" in again.stderr


def test_approve_keeps_a_larger_entry_and_deny_keeps_listing(web: Any, listed_db: Path) -> None:
    site = web()
    for address in ("198.51.100.20", "192.0.2.55"):
        form = {"ip": address, "email": "noc@example.net", "reason": "Cleaned the compromised host."}
        assert site.fetch("/request", form | {"csrf": site.csrf()})[0] == 200
    ids = {r["address"]: r["id"] for r in requests_json(listed_db)}
    done = run_cli("requests", "approve", str(ids["198.51.100.20"]), db=listed_db)
    assert done.returncode == 0 and f"{ZONE}: excluded !198.51.100.20" in done.stdout, done.stdout
    assert site.json("/api/v1/lookup/198.51.100.20")[1][0]["listed"] is False
    assert site.json("/api/v1/lookup/198.51.100.21")[1][0]["listed"] is True  # the /24 stays
    denied = run_cli("requests", "deny", str(ids["192.0.2.55"]), "--note", "still bouncing", db=listed_db)
    assert denied.returncode == 0 and "denied" in denied.stdout
    assert site.json("/api/v1/lookup/192.0.2.55")[1][0]["listed"] is True
    assert [r["status"] for r in requests_json(listed_db, "denied")] == ["denied"]
    assert run_cli("requests", "deny", "99", db=listed_db).returncode == 2


def test_bad_requests_store_nothing(web: Any, listed_db: Path) -> None:
    site = web()
    good = {"ip": "203.0.113.9", "email": "a@example.net", "reason": "Fixed the bounces."}
    cases = [
        ({"ip": "192.0.2.99"}, 400, "is not listed"),
        ({"ip": "not an address"}, 400, "address:"),
        ({"email": "nobody"}, 400, "e-mail:"),
        ({"reason": "x" * 2001}, 400, "at most 2000"),
        ({"reason": ""}, 400, "reason:"),
    ]
    for change, status, message in cases:
        got, page, _ = site.fetch("/request", good | change | {"csrf": site.csrf()})
        assert (got, message in page) == (status, True), (change, got)
    huge = urllib.parse.urlencode(good | {"reason": "y" * 40_000, "csrf": site.csrf()}).encode()
    status, page, _ = site.fetch("/request", huge)
    assert status == 413 and "Too much data" in page
    assert requests_json(listed_db) == []


def test_request_flood_is_limited(web: Any, listed_db: Path) -> None:
    site = web(requests_per_client=2)
    form = {"email": "a@example.net", "reason": "Fixed the bounces."}
    first = site.fetch("/request", form | {"ip": "203.0.113.9", "csrf": site.csrf()})
    assert first[0] == 200
    status, page, _ = site.fetch("/request", form | {"ip": "203.0.113.9", "csrf": site.csrf()})
    assert status == 429 and "already waiting" in page
    assert site.fetch("/request", form | {"ip": "192.0.2.55", "csrf": site.csrf()})[0] == 200
    status, page, _ = site.fetch("/request", form | {"ip": "198.51.100.7", "csrf": site.csrf()})
    assert status == 429 and "at most 2 an hour" in page
    assert len(requests_json(listed_db)) == 2


def test_lookup_flood_is_limited(web: Any) -> None:
    site = web(lookups_per_minute=5)
    statuses = [site.json("/api/v1/lookup/192.0.2.55")[0] for _ in range(7)]
    assert statuses == [200] * 5 + [429] * 2
    assert site.fetch("/lookup?ip=192.0.2.55")[0] == 429


def test_operator_page(web: Any) -> None:
    site = web()
    assert site.fetch("/operator")[0] == 403
    assert site.fetch("/operator?token=wrong")[0] == 403
    status, page, _ = site.fetch("/operator", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    assert page.count("<svg") == 3 and 'class="series"' in page
    assert page.count('class="bar"') >= 2  # hits per day and top sources drawn
    assert "203.0.113.9 (3)" in page  # top source with its hit count
    assert web(token="").fetch("/operator")[0] == 404


def test_web_refuses_a_missing_database(tmp_path: Path) -> None:
    done = run_cli("web", "--db", str(tmp_path / "nope.sqlite"), "--listen", "127.0.0.1:0")
    assert done.returncode == 2 and "no such database" in done.stderr
    bad = write_config(tmp_path / "bad.toml", lookups_per_minute=0)
    done = run_cli("web", "--db", str(tmp_path / "nope.sqlite"), "--config", str(bad))
    assert done.returncode == 2 and "lookups_per_minute" in done.stderr


def test_client_address_behind_a_trusted_proxy(web: Any, listed_db: Path) -> None:
    form = {"email": "a@example.net", "reason": "Fixed the bounces.", "ip": "203.0.113.9"}
    forwarded = {"X-Forwarded-For": "198.51.100.77"}
    direct = web()  # no trusted proxy: the header proves nothing
    assert direct.fetch("/request", form | {"csrf": direct.csrf()}, headers=forwarded)[0] == 200
    assert requests_json(listed_db)[0]["client"] == "127.0.0.1"
    assert run_cli("requests", "deny", "1", db=listed_db).returncode == 0
    proxied = web(trusted_proxy="127.0.0.1")
    assert proxied.fetch("/request", form | {"csrf": proxied.csrf()}, headers=forwarded)[0] == 200
    assert requests_json(listed_db, "pending")[0]["client"] == "198.51.100.77"
