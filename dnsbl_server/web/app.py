"""The site's routes (README, "Web page"): the only module that imports Flask. Each route reads its input,
asks delisting.py (the rules), web/lookup.py (the answers) and requests_store.py (the rows), and renders.

    GET  /                       the lookup form and the listing policy
    GET  /lookup?ip=ADDRESS      listed or not per zone, why, since when, until when, the evidence
    GET  /api/v1/lookup/ADDRESS  the same as JSON, `dnsbl check --json`'s layout; 400 if malformed
    GET  /api                    the API's documentation
    GET  /request?ip=ADDRESS     the delisting request form (sets the CSRF cookie)
    POST /request                stores a request, or says why not (400, 403 CSRF, 429 flood)
    GET  /operator               plots and pending requests, with the token (`?token=` or a Bearer header)

Errors are pages with one clear sentence and the right status; nothing is stored for a refused request.
Every response carries a strict Content-Security-Policy (no script at all, styles from /static only).
"""

from __future__ import annotations

import hmac
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, render_template, request

from ..addresses import format_time, parse_address
from ..config import WebSettings
from ..delisting import (
    Limits,
    Query,
    RateWindow,
    RequestError,
    check_request,
    csrf_ok,
    csrf_token,
    new_session,
    parse_query,
    refusal,
)
from ..requests_store import Requests, hits_per_day, listings_per_day, top_sources
from ..store import Store
from . import plots
from .lookup import check_query, code_meanings, page_facts

MAX_BODY = 16 * 1024  # a request form is a few KB at most; more is refused with 413 before parsing
MAX_ADDRESSES = 8  # a domain's addresses looked up
RESOLVE_TIMEOUT = 3.0
PLOT_DAYS = 30
FIGURES_TTL = 60.0  # seconds the operator page's plots are reused
COOKIE = "dnsbl_csrf"
CSP = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'"

Resolver = Callable[[str], list[tuple[int, int]]]


def resolve_domain(name: str) -> list[tuple[int, int]]:
    """A domain's IPv4 and IPv6 addresses (the system resolver), at most MAX_ADDRESSES."""
    found: list[tuple[int, int]] = []
    for info in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP):
        pair = parse_address(str(info[4][0]).split("%")[0])
        if pair not in found:
            found.append(pair)
    return found[:MAX_ADDRESSES]


class Site:
    """What the routes share: settings, a database connection per thread, the lookup rate window."""

    def __init__(self, db: str, web: WebSettings, now: Callable[[], float], resolver: Resolver) -> None:
        self.db, self.web, self.now, self.resolver = db, web, now, resolver
        self.secret = web.secret.encode() or os.urandom(32)
        self.lookups = RateWindow(web.lookups_per_minute, 60.0)
        self.lookups_lock = threading.Lock()
        self.limits = Limits(web.requests_per_client, web.requests_per_hour)
        self.meanings = code_meanings()
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="resolve")
        self._figures: tuple[int, list[plots.Plot]] = (-1, [])

    @property
    def store(self) -> Store:
        if getattr(self._local, "store", None) is None:
            self._local.store = Store.open(self.db, create=False)
        return self._local.store  # type: ignore[no-any-return]

    def zones(self) -> list[str]:
        have = self.store.zone_names()
        return [z for z in self.web.zones if z in have] if self.web.zones else have

    def allow_lookup(self) -> bool:
        with self.lookups_lock:
            return self.lookups.allow(request.remote_addr or "", self.now())

    def addresses(self, query: Query) -> list[tuple[int, int]]:
        if not query.domain:
            return [(query.family, query.address)]
        future = self._pool.submit(self.resolver, query.domain)
        try:
            found = future.result(RESOLVE_TIMEOUT)
        except (OSError, UnicodeError):
            raise RequestError(f"{query.domain} does not resolve to any address") from None
        except FutureTimeout:
            raise RequestError(f"{query.domain}: no answer from DNS in {RESOLVE_TIMEOUT:g} s") from None
        if not found:
            raise RequestError(f"{query.domain} does not resolve to any address")
        return found

    def figures(self) -> list[plots.Plot]:
        """The operator page's plots, drawn at most once a minute: they scan every entry (0.8 s for
        300,000), and reloading the page must not cost that each time."""
        now = self.now()
        minute, drawn = self._figures
        if minute != int(now // FIGURES_TTL):
            drawn = draw_figures(self.store, now)
            self._figures = (int(now // FIGURES_TTL), drawn)
        return drawn

    def check(self, text: str) -> list[dict[str, Any]]:
        query = parse_query(text)
        return check_query(self.store, self.zones(), query, self.addresses(query), self.now())


def create_app(
    db: str, web: WebSettings, *, now: Callable[[], float] = time.time, resolver: Resolver = resolve_domain
) -> Flask:
    app = Flask(__name__, static_folder=str(Path(__file__).parent / "static"))
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY, MAX_FORM_MEMORY_SIZE=MAX_BODY, JSON_SORT_KEYS=False)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    site = Site(db, web, now, resolver)
    app.extensions["dnsbl_site"] = site
    app.add_template_filter(format_time, "utc")

    @app.context_processor
    def common() -> dict[str, Any]:
        return {"site_name": web.site_name, "policy": web.policy}

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    _public_routes(app, site)
    _request_routes(app, site)
    _operator_routes(app, site)
    _error_pages(app)
    return app


def _error(message: str, status: int, **extra: Any) -> tuple[str, int]:
    return render_template("error.html", message=message, status=status, **extra), status


def _public_routes(app: Flask, site: Site) -> None:
    @app.get("/")
    def index() -> str:
        return render_template("index.html", zones=site.zones())

    @app.get("/lookup")
    def lookup() -> Any:
        text = request.args.get("ip", "")
        if not site.allow_lookup():
            return _error("Too many lookups from your address; wait a minute.", 429, query=text)
        try:
            results = site.check(text)
        except RequestError as error:
            return _error(str(error), 400, query=text)
        facts = [page_facts(site.store, r, site.meanings) for r in results]
        return render_template("lookup.html", query=text, results=facts)

    @app.get("/api/v1/lookup/<path:address>")
    def api_lookup(address: str) -> Any:
        if not site.allow_lookup():
            return jsonify(error="too many lookups from your address; wait a minute"), 429
        try:
            return jsonify(site.check(address))
        except RequestError as error:
            return jsonify(error=str(error)), 400

    @app.get("/api")
    def api_doc() -> str:
        return render_template("api.html")


def _request_routes(app: Flask, site: Site) -> None:
    @app.get("/request")
    def request_form() -> Any:
        return _form(site, request.args.get("ip", ""), "", "", None, 200)

    @app.post("/request")
    def request_post() -> Any:
        form = request.form
        address, email, reason = form.get("ip", ""), form.get("email", ""), form.get("reason", "")
        if not csrf_ok(site.secret, request.cookies.get(COOKIE), form.get("csrf"), site.now()):
            return _form(
                site,
                address,
                email,
                reason,
                "The form expired or did not come from this site; it was not sent. Please send it again.",
                403,
            )
        try:
            draft = check_request(address, email, reason)
            listed = [z["zone"] for r in site.check(draft.address_text) for z in r["zones"] if z["listed"]]
            if not listed:
                raise RequestError(f"{draft.address_text} is not listed: there is nothing to delist")
        except RequestError as error:
            return _form(site, address, email, reason, str(error), 400)
        client = request.remote_addr or ""
        requests = Requests(site.store)
        why = refusal(requests.recent(client, draft.address_text, site.now()), site.limits)
        if why:
            return _form(site, address, email, reason, why[0].upper() + why[1:] + ".", 429)
        number = requests.add(draft, client, listed, site.now())
        return render_template("requested.html", number=number, address=draft.address_text, zones=listed)


def _form(site: Site, address: str, email: str, reason: str, error: str | None, status: int) -> Response:
    """The request form, with a fresh CSRF token bound to the browser's cookie."""
    session = request.cookies.get(COOKIE) or new_session()
    page = render_template(
        "request.html",
        address=address,
        email=email,
        reason=reason,
        error=error,
        csrf=csrf_token(site.secret, session, site.now()),
    )
    response = Response(page, status=status)
    response.set_cookie(COOKIE, session, httponly=True, samesite="Strict", secure=request.is_secure)
    return response


def _operator_routes(app: Flask, site: Site) -> None:
    @app.get("/operator")
    def operator() -> Any:
        if not site.web.token:
            return _error("The operator page is off: set [web] token in the config.", 404)
        given = request.args.get("token") or request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), site.web.token.encode()):
            return _error("The operator page needs the token from the config.", 403)
        figures = site.figures()
        pending = Requests(site.store).find("pending", limit=100)
        return render_template("operator.html", figures=figures, pending=pending)


def draw_figures(store: Store, now: float) -> list[plots.Plot]:
    days, by_kind = hits_per_day(store, PLOT_DAYS, now)
    return [
        plots.line_plot(f"Listings alive, last {PLOT_DAYS} days", listings_per_day(store, PLOT_DAYS, now)),
        plots.stacked_bars(f"Trap hits per day by kind, last {PLOT_DAYS} days", days, by_kind),
        plots.ranked_bars(
            f"Top sources (relays by trap hits), last {PLOT_DAYS} days", top_sources(store, PLOT_DAYS, now)
        ),
    ]


def _error_pages(app: Flask) -> None:
    @app.errorhandler(404)
    def not_found(_exc: Exception) -> Any:
        return _error("No such page.", 404)

    @app.errorhandler(405)
    def not_allowed(_exc: Exception) -> Any:
        return _error("That method is not allowed here.", 405)

    @app.errorhandler(413)
    def too_large(_exc: Exception) -> Any:
        return _error(f"Too much data: a request is at most {MAX_BODY // 1024} KB.", 413)
