"""The lookup and delisting web site (`dnsbl web`; README, "Web page"), on Flask, served by waitress.

    app.py      the routes: request in, page or JSON out; the only Flask importer
    lookup.py   what a lookup answers: `dnsbl check --json`'s layout, plus what the page shows
    plots.py    the operator page's plots as SVG geometry (pure); templates/_plots.html draws them
    serve.py    waitress: listening, threads, the trusted proxy

Rules: the site reads the list and writes only delisting requests (requests_store.py); it never shows a
trap address; every page escapes what it prints (Jinja autoescape), so HTML in a reason stays text.
Importing this package imports nothing heavy: `dnsbl` start-up does not pay for Flask.
"""
