"""The Bookinfo-like demo services behind ``meshgate demo``.

Six tiny HTTP/1.1 services on loopback, shaped like Istio's Bookinfo sample:

============  ==============================================================================
productpage   ``GET /productpage`` (HTML from details + reviews), ``GET /api/v1/products``,
              ``GET /api/v1/products/<id>`` (+ ``/reviews``, ``/ratings``), ``GET /static/*``
details       ``GET /details/<id>`` -> book details
ratings       ``GET /ratings/<id>`` -> ``{"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}``
reviews-v1    ``GET /reviews/<id>`` -> reviews without ratings
reviews-v2    same, with ratings from the ratings service as black stars
reviews-v3    same, red stars
============  ==============================================================================

Every service answers ``GET /health`` with 200 and sets ``x-demo-service`` (``productpage``,
``details``, ``ratings``, ``reviews``) and ``x-demo-version`` (``v1``; ``v1``/``v2``/``v3``
for reviews) on every response, so a user sees who answered.

Inter-service calls go either directly to the other services (reviews are then balanced
round-robin across the three versions in process) or, when ``gateway_url`` is given, through
the gateway with ``Host: <gateway_host>`` so that the gateway's routes (weights, plugins)
apply to east-west calls too.

Like Bookinfo, every call forwards the trace headers it received and the signed-in user as
``end-user`` (what Istio's "jason" VirtualServices match): productpage takes the user from an
``end-user`` request header, else a ``user`` cookie, else a ``?user=`` query parameter, and
shows it on the page.

One service alone (a "pod" of a mesh, behind a sidecar) runs with :func:`start_service` or::

    python -m meshgate.demo --service reviews --version v2 --port 9080 \
        --peer ratings=http://ratings:9080

where the peers default to ``http://<name>:9080`` (the Kubernetes Service names), and call
timeouts are Bookinfo's (productpage -> others 3 s; reviews-v2 -> ratings 10 s, reviews-v3 ->
ratings 2.5 s), which is what makes Istio's ratings-delay task show its bug.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import itertools
import json
import logging
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from meshgate.errors import UpstreamError

from .client import http_request
from .server import DemoHTTPServer, DemoRequest, DemoResponse, json_response, start_server

log = logging.getLogger("meshgate.demo")

__all__ = [
    "SERVICE_NAMES",
    "DEFAULT_BASE_PORT",
    "DemoServices",
    "SINGLE_SERVICES",
    "BOOKINFO_TIMEOUTS",
    "start_demo_services",
    "start_service",
    "end_user",
    "main",
]

SERVICE_NAMES: tuple[str, ...] = ("productpage", "details", "ratings", "reviews-v1", "reviews-v2", "reviews-v3")
DEFAULT_BASE_PORT = 19080
CALL_TIMEOUT = 3.0  # per inter-service call
# What Bookinfo's services forward on every call: the trace context (B3, W3C, OpenTracing) and
# the signed-in user, which Istio's routing by ``end-user`` relies on.
PROPAGATED_HEADERS = ("x-request-id", "traceparent", "tracestate", "x-b3-traceid", "x-b3-spanid",
                      "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3", "x-ot-span-context", "end-user")
SINGLE_SERVICES: tuple[str, ...] = ("productpage", "details", "ratings", "reviews")
#: (caller, caller version or "*", callee) -> seconds: Bookinfo's own call timeouts.
BOOKINFO_TIMEOUTS: dict[tuple[str, str, str], float] = {
    ("productpage", "*", "details"): 3.0,
    ("productpage", "*", "reviews"): 3.0,
    ("productpage", "*", "ratings"): 3.0,
    ("reviews", "v2", "ratings"): 10.0,
    ("reviews", "v3", "ratings"): 2.5,
}
_USER = re.compile(r"[A-Za-z0-9._@-]{1,64}")  # what may be forwarded as end-user

# --- data -------------------------------------------------------------------------------

PRODUCTS: tuple[dict[str, Any], ...] = (
    {
        "id": 0,
        "title": "The Comedy of Errors",
        "descriptionHtml": (
            "Two pairs of identical twins, separated at birth, turn up in the same town on the "
            "same day. Mistaken identities pile up into one of Shakespeare's shortest farces."
        ),
    },
    {
        "id": 1,
        "title": "The Tempest",
        "descriptionHtml": "A banished duke, an enchanted island and a storm raised to set things right.",
    },
    {
        "id": 2,
        "title": "Twelfth Night",
        "descriptionHtml": "A shipwreck, a disguise and a household turned upside down by love letters.",
    },
)
_PRODUCTS_BY_ID = {p["id"]: p for p in PRODUCTS}

DETAILS: dict[int, dict[str, Any]] = {
    0: {"author": "William Shakespeare", "year": 1595, "type": "paperback", "pages": 200,
        "publisher": "PublisherA", "language": "English",
        "ISBN-10": "1234567890", "ISBN-13": "123-1234567890"},
    1: {"author": "William Shakespeare", "year": 1611, "type": "hardcover", "pages": 176,
        "publisher": "PublisherB", "language": "English",
        "ISBN-10": "2345678901", "ISBN-13": "234-2345678901"},
    2: {"author": "William Shakespeare", "year": 1602, "type": "paperback", "pages": 188,
        "publisher": "PublisherA", "language": "English",
        "ISBN-10": "3456789012", "ISBN-13": "345-3456789012"},
}

RATINGS: dict[int, dict[str, int]] = {
    0: {"Reviewer1": 5, "Reviewer2": 4},
    1: {"Reviewer1": 4, "Reviewer2": 3},
    2: {"Reviewer1": 5, "Reviewer2": 5},
}

REVIEWS: dict[int, tuple[tuple[str, str], ...]] = {
    0: (("Reviewer1", "A fast, silly, delightful evening. The mix-ups never stop being funny."),
        ("Reviewer2", "Great fun on stage, though thinner on ideas than the later comedies.")),
    1: (("Reviewer1", "Strange and beautiful; the island feels alive."),
        ("Reviewer2", "Lovely verse, slow middle act.")),
    2: (("Reviewer1", "The best of the romantic comedies, and the funniest letter scene ever."),
        ("Reviewer2", "Witty from the first line to the last.")),
}

STYLE_CSS = b"""body{font-family:sans-serif;max-width:48rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{margin-bottom:.2rem}.who{color:#777;font-size:.85rem}table{border-collapse:collapse}
td{padding:.15rem .8rem .15rem 0}.review{border-left:3px solid #ddd;padding:.3rem .8rem;margin:.6rem 0}
.stars-black{color:#000}.stars-red{color:#c00}.error{color:#a00}
"""

_ID = re.compile(r"[0-9]{1,6}")  # never int() on raw input (hardening.md section 4)


def _product_id(segment: str) -> int | None:
    return int(segment) if _ID.fullmatch(segment) else None


def _not_found(what: str) -> DemoResponse:
    return json_response({"error": f"{what} not found"}, 404)


def _bad_id() -> DemoResponse:
    return json_response({"error": "product id must be a non-negative integer"}, 400)


def _method_not_allowed() -> DemoResponse:
    return json_response({"error": "method not allowed"}, 405, headers=[("allow", "GET, HEAD")])


def _health() -> DemoResponse:
    return json_response({"status": "ok"})


# --- outbound calls -----------------------------------------------------------------------


class _Backend:
    """Where a service calls another one: base URLs (round-robin) and an optional Host.

    Filled in by :meth:`set` once every port is bound, so ephemeral ports work too."""

    __slots__ = ("urls", "host", "timeout", "_cycle")

    def __init__(self, timeout: float = CALL_TIMEOUT) -> None:
        self.timeout = timeout
        self.set((), None)

    def set(self, urls: tuple[str, ...], host: str | None) -> None:
        self.urls = urls
        self.host = host
        self._cycle = itertools.cycle(urls)

    async def get(self, path: str, req: DemoRequest, *, user: str | None = None) -> tuple[int, Mapping[str, str], Any]:
        headers = {h: req.headers[h] for h in PROPAGATED_HEADERS if h in req.headers}
        if user is not None:
            headers["end-user"] = user
        resp = await http_request(next(self._cycle) + path, host=self.host, headers=headers, timeout=self.timeout)
        try:
            data = resp.json()
        except ValueError:
            raise UpstreamError(f"GET {path}: response is not JSON (status {resp.status})") from None
        return resp.status, resp.headers, data


_Route = Callable[[DemoRequest], Awaitable[DemoResponse]]


def _get_only(handler: _Route) -> _Route:
    async def wrapped(req: DemoRequest) -> DemoResponse:
        if req.method not in ("GET", "HEAD"):
            return _method_not_allowed()
        if req.path == "/health":
            return _health()
        return await handler(req)

    return wrapped


# --- details, ratings, reviews --------------------------------------------------------------


def _details_app() -> _Route:
    async def handle(req: DemoRequest) -> DemoResponse:
        parts = req.path.split("/")
        if len(parts) == 3 and parts[1] == "details":
            pid = _product_id(parts[2])
            if pid is None:
                return _bad_id()
            d = DETAILS.get(pid)
            return json_response({"id": pid, **d}) if d is not None else _not_found("product")
        return _not_found("path")

    return _get_only(handle)


def _ratings_app() -> _Route:
    async def handle(req: DemoRequest) -> DemoResponse:
        parts = req.path.split("/")
        if len(parts) == 3 and parts[1] == "ratings":
            pid = _product_id(parts[2])
            if pid is None:
                return _bad_id()
            r = RATINGS.get(pid)
            return json_response({"id": pid, "ratings": r}) if r is not None else _not_found("product")
        return _not_found("path")

    return _get_only(handle)


def _reviews_app(version: str, ratings: _Backend | None) -> _Route:
    color = {"v2": "black", "v3": "red"}.get(version)

    async def handle(req: DemoRequest) -> DemoResponse:
        parts = req.path.split("/")
        if not (len(parts) == 3 and parts[1] == "reviews"):
            return _not_found("path")
        pid = _product_id(parts[2])
        if pid is None:
            return _bad_id()
        reviews = REVIEWS.get(pid)
        if reviews is None:
            return _not_found("product")
        stars: dict[str, int] | None = None
        if color is not None and ratings is not None:
            try:
                status, _, data = await ratings.get(f"/ratings/{pid}", req)
                if status == 200 and isinstance(data, dict) and isinstance(data.get("ratings"), dict):
                    stars = data["ratings"]
            except UpstreamError:
                stars = None
        out = []
        for reviewer, text in reviews:
            item: dict[str, Any] = {"reviewer": reviewer, "text": text}
            if color is not None:
                if stars is not None and isinstance(stars.get(reviewer), int):
                    item["rating"] = {"stars": stars[reviewer], "color": color}
                else:
                    item["rating"] = {"error": "Ratings service is currently unavailable"}
            out.append(item)
        return json_response({"id": pid, "version": version, "reviews": out})

    return _get_only(handle)


# --- productpage ----------------------------------------------------------------------------


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        k, sep, v = part.strip().partition("=")
        if sep and k == name:
            return v.strip().strip('"')
    return None


def end_user(req: DemoRequest) -> str | None:
    """The signed-in user as Bookinfo's productpage knows it: an ``end-user`` header (a caller
    that already knows), else the ``user`` cookie (Bookinfo's login), else ``?user=``.  Only a
    plain name is accepted (it is forwarded as a header and shown on the page)."""
    candidates = [req.headers.get("end-user"), _cookie(req.headers.get("cookie", ""), "user")]
    if req.target.query:
        candidates.append(dict(parse_qsl(req.target.query)).get("user"))
    for c in candidates:
        if c and _USER.fullmatch(c):
            return c
    return None


def _productpage_app(details: _Backend, reviews: _Backend, ratings: _Backend) -> _Route:
    async def fetch(backend: _Backend, path: str, req: DemoRequest) -> tuple[int, Mapping[str, str], Any]:
        try:
            got = await backend.get(path, req, user=end_user(req))
        except UpstreamError as e:
            log.warning("productpage: GET %s failed: %s", path, e)
            return 503, {}, {"error": f"{path.split('/')[1]} service unavailable: {e}"}
        if got[0] >= 500:
            log.warning("productpage: GET %s answered %d: %.200s", path, got[0], json.dumps(got[2]))
        return got

    async def product_json(pid: int, req: DemoRequest) -> DemoResponse:
        product = _PRODUCTS_BY_ID.get(pid)
        if product is None:
            return _not_found("product")
        status, _, data = await fetch(details, f"/details/{pid}", req)
        body = dict(product)
        body["details"] = data if status == 200 else {"error": "Sorry, product details are currently unavailable"}
        return json_response(body)

    async def passthrough(backend: _Backend, path: str, req: DemoRequest) -> DemoResponse:
        status, headers, data = await fetch(backend, path, req)
        extra = [(f"x-backend-{h[2:]}", headers[h]) for h in ("x-demo-service", "x-demo-version") if h in headers]
        return json_response(data, status, headers=extra)

    async def page(req: DemoRequest) -> DemoResponse:
        pid = 0
        (d_status, _, d), (r_status, r_headers, r) = await asyncio.gather(
            fetch(details, f"/details/{pid}", req), fetch(reviews, f"/reviews/{pid}", req)
        )
        return DemoResponse(200, _render_page(_PRODUCTS_BY_ID[pid], d_status, d, r_status, r_headers, r,
                                              user=end_user(req)),
                            "text/html; charset=utf-8")

    async def handle(req: DemoRequest) -> DemoResponse:
        path = req.path
        if path in ("/", "/index.html"):
            return DemoResponse(200, _INDEX_HTML, "text/html; charset=utf-8")
        if path == "/productpage":
            return await page(req)
        if path == "/static/style.css":
            return DemoResponse(200, STYLE_CSS, "text/css; charset=utf-8")
        if path == "/api/v1/products":
            return json_response(list(PRODUCTS))
        parts = path.split("/")
        if len(parts) in (5, 6) and parts[1:4] == ["api", "v1", "products"]:
            pid = _product_id(parts[4])
            if pid is None:
                return _bad_id()
            if len(parts) == 5:
                return await product_json(pid, req)
            if parts[5] == "reviews":
                return await passthrough(reviews, f"/reviews/{pid}", req)
            if parts[5] == "ratings":
                return await passthrough(ratings, f"/ratings/{pid}", req)
        return _not_found("path")

    return _get_only(handle)


_INDEX_HTML = (
    b"<!doctype html><html><head><title>Bookinfo (meshgate demo)</title>"
    b'<link rel="stylesheet" href="/static/style.css"></head><body><h1>Bookinfo</h1>'
    b'<p>A Bookinfo-like demo application. <a href="/productpage">Open the product page</a>.</p>'
    b"</body></html>"
)


def _render_page(
    product: Mapping[str, Any],
    d_status: int,
    details: Any,
    r_status: int,
    r_headers: Mapping[str, str],
    reviews: Any,
    *,
    user: str | None = None,
) -> bytes:
    esc = html.escape
    out = [
        "<!doctype html><html><head><meta charset=\"utf-8\">",
        f"<title>Bookinfo: {esc(product['title'])}</title>",
        '<link rel="stylesheet" href="/static/style.css"></head><body>',
    ]
    if user is not None:
        out.append(f'<p class="who" id="user">Signed in as {esc(user)}</p>')
    out += [
        f"<h1>{esc(product['title'])}</h1>",
        f"<p>{esc(product['descriptionHtml'])}</p>",
        "<h2>Book Details</h2>",
    ]
    if d_status == 200 and isinstance(details, dict):
        out.append('<table id="details">')
        for key in ("author", "year", "type", "pages", "publisher", "language", "ISBN-10", "ISBN-13"):
            if key in details:
                out.append(f"<tr><th>{esc(key)}</th><td>{esc(str(details[key]))}</td></tr>")
        out.append("</table>")
    else:
        out.append('<p class="error" id="details-error">Sorry, product details are currently unavailable.</p>')
    out.append("<h2>Book Reviews</h2>")
    if r_status == 200 and isinstance(reviews, dict) and isinstance(reviews.get("reviews"), list):
        version = r_headers.get("x-demo-version", str(reviews.get("version", "?")))
        out.append(f'<p class="who" id="reviews-version">Reviews served by reviews-{esc(version)}</p>')
        for item in reviews["reviews"]:
            if not isinstance(item, dict):
                continue
            out.append('<div class="review">')
            out.append(f"<p>{esc(str(item.get('text', '')))}</p>")
            out.append(f"<p class=\"who\">{esc(str(item.get('reviewer', '')))}</p>")
            rating = item.get("rating")
            if isinstance(rating, dict):
                if isinstance(rating.get("stars"), int):
                    color = "red" if rating.get("color") == "red" else "black"
                    n = max(0, min(5, rating["stars"]))
                    out.append(f'<p class="stars-{color}">{"★" * n}{"☆" * (5 - n)}</p>')
                elif "error" in rating:
                    out.append(f'<p class="error">{esc(str(rating["error"]))}</p>')
            out.append("</div>")
    else:
        out.append('<p class="error" id="reviews-error">Sorry, product reviews are currently unavailable.</p>')
    out.append("</body></html>")
    return "".join(out).encode("utf-8")


# --- wiring -------------------------------------------------------------------------------


class DemoServices:
    """The running demo services.  ``ports``/``urls`` are keyed by :data:`SERVICE_NAMES`."""

    def __init__(self, host: str, servers: Mapping[str, DemoHTTPServer], gateway_url: str | None) -> None:
        self.host = host
        self.gateway_url = gateway_url
        self._servers = dict(servers)
        self.ports: dict[str, int] = {name: srv.port for name, srv in self._servers.items()}
        url_host = f"[{host}]" if ":" in host else host
        self.urls: dict[str, str] = {name: f"http://{url_host}:{port}" for name, port in self.ports.items()}

    async def close(self) -> None:
        servers, self._servers = self._servers, {}
        await asyncio.gather(*(srv.close() for srv in servers.values()))

    async def __aenter__(self) -> DemoServices:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def start_demo_services(
    *,
    host: str = "127.0.0.1",
    base_port: int = DEFAULT_BASE_PORT,
    gateway_url: str | None = None,
    gateway_host: str = "bookinfo.local",
) -> DemoServices:
    """Start the six demo services on ``host``.

    Ports are ``base_port + i`` in :data:`SERVICE_NAMES` order (productpage, details, ratings,
    reviews-v1, reviews-v2, reviews-v3); ``base_port=0`` lets the OS pick each port.  With
    ``gateway_url`` (``http://127.0.0.1:9080``) productpage and reviews call the other services
    through the gateway with ``Host: gateway_host``; without it they call them directly.
    Raises ``OSError`` if a port cannot be bound (services already started are closed).
    """
    if not 0 <= base_port <= 65535 - len(SERVICE_NAMES):
        raise ValueError(f"base_port out of range: {base_port}")
    # Backends are filled in after binding, so ephemeral ports work too.
    details_be, ratings_be, reviews_be = _Backend(), _Backend(), _Backend()
    apps: dict[str, tuple[_Route, str, str]] = {
        "productpage": (_productpage_app(details_be, reviews_be, ratings_be), "productpage", "v1"),
        "details": (_details_app(), "details", "v1"),
        "ratings": (_ratings_app(), "ratings", "v1"),
        "reviews-v1": (_reviews_app("v1", None), "reviews", "v1"),
        "reviews-v2": (_reviews_app("v2", ratings_be), "reviews", "v2"),
        "reviews-v3": (_reviews_app("v3", ratings_be), "reviews", "v3"),
    }
    servers: dict[str, DemoHTTPServer] = {}
    try:
        for i, name in enumerate(SERVICE_NAMES):
            handler, service, version = apps[name]
            port = base_port + i if base_port else 0
            servers[name] = await start_server(handler, host=host, port=port, service=service, version=version)
    except BaseException:
        await asyncio.gather(*(s.close() for s in servers.values()))
        raise
    services = DemoServices(host, servers, gateway_url)
    if gateway_url is not None:
        gw = gateway_url.rstrip("/")
        for be in (details_be, ratings_be, reviews_be):
            be.set((gw,), gateway_host)
    else:
        u = services.urls
        details_be.set((u["details"],), None)
        ratings_be.set((u["ratings"],), None)
        reviews_be.set((u["reviews-v1"], u["reviews-v2"], u["reviews-v3"]), None)
    return services


# --- one service alone (a mesh "pod") -----------------------------------------------------


def _peer_timeout(service: str, version: str, peer: str) -> float:
    return BOOKINFO_TIMEOUTS.get((service, version, peer), BOOKINFO_TIMEOUTS.get((service, "*", peer), CALL_TIMEOUT))


async def start_service(
    service: str,
    *,
    version: str = "v1",
    host: str = "0.0.0.0",
    port: int = 9080,
    peers: Mapping[str, str] | None = None,
    timeouts: Mapping[str, float] | None = None,
) -> DemoHTTPServer:
    """Start one of :data:`SINGLE_SERVICES` alone, as one Bookinfo pod runs it.

    ``peers`` maps the services it calls (productpage: details, reviews, ratings; reviews v2/v3:
    ratings) to base URLs, default ``http://<name>:9080``: by name, so that in a mesh the call
    goes to the Service's address and the sidecar routes it.  ``timeouts`` (seconds, by peer)
    override Bookinfo's (:data:`BOOKINFO_TIMEOUTS`).  Raises ``ValueError`` for an unknown
    service or version, ``OSError`` if the port cannot be bound.
    """
    if service not in SINGLE_SERVICES:
        raise ValueError(f"unknown service {service!r} (expected one of {', '.join(SINGLE_SERVICES)})")
    if service == "reviews" and version not in ("v1", "v2", "v3"):
        raise ValueError(f"unknown reviews version {version!r} (expected v1, v2 or v3)")
    urls = {name: f"http://{name}:9080" for name in SINGLE_SERVICES}
    urls.update(peers or {})

    def backend(peer: str) -> _Backend:
        t = (timeouts or {}).get(peer, _peer_timeout(service, version, peer))
        be = _Backend(t)
        be.set((urls[peer].rstrip("/"),), None)
        return be

    handler: _Route
    if service == "productpage":
        handler = _productpage_app(backend("details"), backend("reviews"), backend("ratings"))
    elif service == "details":
        handler = _details_app()
    elif service == "ratings":
        handler = _ratings_app()
    else:
        handler = _reviews_app(version, backend("ratings") if version in ("v2", "v3") else None)
    return await start_server(handler, host=host, port=port, service=service, version=version)


def _peer_arg(value: str) -> tuple[str, str]:
    name, sep, url = value.partition("=")
    if not sep or name not in SINGLE_SERVICES or not url.startswith("http://"):
        raise argparse.ArgumentTypeError(f"expected NAME=http://HOST:PORT with NAME one of "
                                         f"{', '.join(SINGLE_SERVICES)}, got {value!r}")
    return name, url


def _timeout_arg(value: str) -> tuple[str, float]:
    name, sep, secs = value.partition("=")
    try:
        t = float(secs)
    except ValueError:
        t = -1.0
    if not sep or name not in SINGLE_SERVICES or not 0 < t <= 600:
        raise argparse.ArgumentTypeError(f"expected NAME=SECONDS (0 < SECONDS <= 600), got {value!r}")
    return name, t


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m meshgate.demo",
                                description="Run one Bookinfo-like demo service alone (one mesh pod).")
    p.add_argument("--service", required=True, choices=SINGLE_SERVICES)
    p.add_argument("--version", default="v1", help="v1 (default); reviews: v1, v2 or v3")
    p.add_argument("--host", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=9080, help="listen port (default 9080)")
    p.add_argument("--peer", type=_peer_arg, action="append", default=[], metavar="NAME=URL",
                   help="where to call NAME (default http://NAME:9080); repeatable")
    p.add_argument("--timeout", type=_timeout_arg, action="append", default=[], metavar="NAME=SECONDS",
                   help="call timeout towards NAME (default: Bookinfo's); repeatable")
    return p


async def _serve(args: argparse.Namespace) -> int:
    try:
        srv = await start_service(args.service, version=args.version, host=args.host, port=args.port,
                                  peers=dict(args.peer), timeouts=dict(args.timeout))
    except (ValueError, OSError) as e:
        print(f"demo {args.service}: {e}", file=sys.stderr, flush=True)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"demo {args.service} {args.version} listening on {args.host}:{srv.port}", flush=True)
    await stop.wait()
    await srv.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m meshgate.demo``: one service until SIGTERM/SIGINT (exit 0)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    return asyncio.run(_serve(args))
