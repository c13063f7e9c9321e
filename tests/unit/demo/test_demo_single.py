"""One demo service alone (a mesh "pod"): ``start_service`` / ``python -m meshgate.demo``, and
Bookinfo's propagation of the signed-in user (``end-user``) and trace headers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from meshgate.demo import http_request
from meshgate.demo.server import DemoHTTPServer, DemoRequest, DemoResponse, json_response, start_server
from meshgate.demo.services import BOOKINFO_TIMEOUTS, start_service

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """A fake peer: answers like the real service would and records the headers it got."""

    def __init__(self, body: Any, delay: float = 0.0) -> None:
        self.body = body
        self.delay = delay
        self.seen: list[dict[str, str]] = []
        self.server: DemoHTTPServer | None = None

    async def handle(self, req: DemoRequest) -> DemoResponse:
        self.seen.append(dict(req.headers))
        await asyncio.sleep(self.delay)
        return json_response(self.body)

    async def start(self, service: str, version: str = "v1") -> str:
        self.server = await start_server(self.handle, host="127.0.0.1", port=0, service=service, version=version)
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture
async def peers() -> AsyncIterator[dict[str, Recorder]]:
    recs = {
        "details": Recorder({"id": 0, "author": "William Shakespeare"}),
        "reviews": Recorder({"id": 0, "version": "v2", "reviews": [
            {"reviewer": "Reviewer1", "text": "x", "rating": {"stars": 5, "color": "black"}}]}),
        "ratings": Recorder({"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}),
    }
    yield recs
    for r in recs.values():
        if r.server is not None:
            await r.server.close()


async def _urls(peers: dict[str, Recorder]) -> dict[str, str]:
    return {name: await r.start(name, "v2" if name == "reviews" else "v1") for name, r in peers.items()}


@pytest.mark.parametrize("how,user", [
    ({"cookie": "session=abc; user=jason"}, "jason"),
    ({"end-user": "jason"}, "jason"),
    ({}, None),
])
async def test_productpage_forwards_the_user_and_trace_headers(peers: dict[str, Recorder], how: dict[str, str],
                                                               user: str | None) -> None:
    pp = await start_service("productpage", host="127.0.0.1", port=0, peers=await _urls(peers))
    try:
        headers = {"x-request-id": "r-1", "x-b3-traceid": "abc", "traceparent": "00-1-2-01", **how}
        r = await http_request(f"http://127.0.0.1:{pp.port}/productpage", headers=headers)
        assert r.status == 200 and r.headers["x-demo-service"] == "productpage"
        assert "Reviews served by reviews-v2" in r.text
        assert ("Signed in as jason" in r.text) == (user == "jason")
        for name in ("details", "reviews"):
            got = peers[name].seen[-1]
            assert got.get("end-user") == user
            assert (got["x-request-id"], got["x-b3-traceid"], got["traceparent"]) == ("r-1", "abc", "00-1-2-01")
    finally:
        await pp.close()


async def test_user_from_query_and_bad_names_are_not_forwarded(peers: dict[str, Recorder]) -> None:
    pp = await start_service("productpage", host="127.0.0.1", port=0, peers=await _urls(peers))
    try:
        r = await http_request(f"http://127.0.0.1:{pp.port}/productpage?user=jason")
        assert r.status == 200 and peers["reviews"].seen[-1].get("end-user") == "jason"
        r = await http_request(f"http://127.0.0.1:{pp.port}/productpage?user=%3Cscript%3E")
        assert r.status == 200 and "end-user" not in peers["reviews"].seen[-1] and "<script>" not in r.text
    finally:
        await pp.close()


async def test_reviews_forwards_end_user_to_ratings(peers: dict[str, Recorder]) -> None:
    rv = await start_service("reviews", version="v3", host="127.0.0.1", port=0, peers=await _urls(peers))
    try:
        r = await http_request(f"http://127.0.0.1:{rv.port}/reviews/0", headers={"end-user": "jason",
                                                                                  "x-request-id": "r-2"})
        assert r.status == 200 and (r.headers["x-demo-service"], r.headers["x-demo-version"]) == ("reviews", "v3")
        body = r.json()
        assert body["version"] == "v3" and body["reviews"][0]["rating"] == {"stars": 5, "color": "red"}
        assert peers["ratings"].seen[-1]["end-user"] == "jason" and peers["ratings"].seen[-1]["x-request-id"] == "r-2"
    finally:
        await rv.close()


async def test_bookinfo_timeouts(peers: dict[str, Recorder]) -> None:
    """productpage gives reviews 3 s (Bookinfo); a slower reviews means "reviews unavailable"."""
    assert BOOKINFO_TIMEOUTS[("productpage", "*", "reviews")] == 3.0
    assert BOOKINFO_TIMEOUTS[("reviews", "v2", "ratings")] == 10.0
    peers["reviews"].delay = 1.0
    pp = await start_service("productpage", host="127.0.0.1", port=0, peers=await _urls(peers),
                             timeouts={"reviews": 0.3})
    try:
        t0 = time.monotonic()
        r = await http_request(f"http://127.0.0.1:{pp.port}/productpage")
        assert r.status == 200 and "Sorry, product reviews are currently unavailable" in r.text
        assert time.monotonic() - t0 < 0.9
    finally:
        await pp.close()


async def test_ratings_failure_is_shown_by_reviews(peers: dict[str, Recorder]) -> None:
    rv = await start_service("reviews", version="v2", host="127.0.0.1", port=0,
                             peers={"ratings": "http://127.0.0.1:1"})
    try:
        r = await http_request(f"http://127.0.0.1:{rv.port}/reviews/0")
        assert r.status == 200
        assert all(item["rating"] == {"error": "Ratings service is currently unavailable"}
                   for item in r.json()["reviews"])
    finally:
        await rv.close()


async def test_bad_service_or_version() -> None:
    with pytest.raises(ValueError, match="unknown service"):
        await start_service("reviews-v2")
    with pytest.raises(ValueError, match="unknown reviews version"):
        await start_service("reviews", version="v9")


def test_command_line_runs_one_service_until_sigterm() -> None:
    p = subprocess.Popen([sys.executable, "-m", "meshgate.demo", "--service", "ratings", "--host", "127.0.0.1",
                          "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.startswith("demo ratings v1 listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        out = subprocess.run([sys.executable, "-c", f"import urllib.request as u; print(u.urlopen("
                              f"'http://127.0.0.1:{port}/ratings/1', timeout=5).read().decode())"],
                             capture_output=True, text=True, timeout=30)
        assert json.loads(out.stdout) == {"id": 1, "ratings": {"Reviewer1": 4, "Reviewer2": 3}}
        p.terminate()
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)


@pytest.mark.parametrize("argv,needle", [
    (["--service", "nope"], "invalid choice"),
    (["--service", "reviews", "--peer", "ratings=ftp://x"], "expected NAME=http://HOST:PORT"),
    (["--service", "reviews", "--timeout", "ratings=0"], "expected NAME=SECONDS"),
])
def test_bad_flags_exit_2(argv: list[str], needle: str) -> None:
    r = subprocess.run([sys.executable, "-m", "meshgate.demo", *argv], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
