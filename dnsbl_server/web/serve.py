"""waitress around the Flask app: one process, a few threads, listening on HOST:PORT (port 0: any free
port, the one chosen is printed as `listening on HOST:PORT`, as `dnsbl serve` prints it).

waitress, not Flask's development server: a production WSGI server, pure Python (nothing to compile),
bounded threads and connection limits, and it reads X-Forwarded-For only from a `trusted_proxy`.
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

from waitress.server import create_server

from ..config import WebSettings, parse_listen
from .app import create_app

THREADS = 4


def run(db: str, web: WebSettings, listen: str) -> None:
    host, port = parse_listen(listen)
    app = create_app(db, web)
    options: dict[str, object] = {"threads": THREADS, "connection_limit": 200, "channel_timeout": 30}
    if web.trusted_proxy:
        options.update(
            trusted_proxy=web.trusted_proxy, trusted_proxy_headers={"x-forwarded-for", "x-forwarded-proto"}
        )
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "task queue depth" under a burst
    server = create_server(app, host=host, port=port, ident="dnsbl-web", **options)
    shown = f"[{host}]" if ":" in host else host
    print(
        f"dnsbl web: listening on {shown}:{server.effective_port} (database {db})",
        file=sys.stderr,
        flush=True,
    )

    def stop(_signum: int, _frame: FrameType | None) -> None:
        server.close()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        server.run()
    except KeyboardInterrupt:
        server.close()
