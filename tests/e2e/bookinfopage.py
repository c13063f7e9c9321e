"""What a Bookinfo user sees on /productpage (shared by the mesh journeys of tests/e2e): which
reviews version served the page, its stars, and the "unavailable" messages of a failed call."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

__all__ = ["Page", "pages", "wait_pages"]

_VERSION = re.compile(r'id="reviews-version">Reviews served by reviews-(v\d+)<')


@dataclass
class Page:
    status: int
    elapsed: float
    body: str = ""
    error: str = ""

    @property
    def version(self) -> str | None:
        """Which reviews version served the page (None: reviews failed, or no page)."""
        m = _VERSION.search(self.body)
        return m.group(1) if m else None

    @property
    def reviews_unavailable(self) -> bool:
        return "Sorry, product reviews are currently unavailable" in self.body

    @property
    def ratings_unavailable(self) -> bool:
        return "Ratings service is currently unavailable" in self.body

    @property
    def stars(self) -> str | None:
        m = re.search(r'class="stars-(black|red)"', self.body)
        return m.group(1) if m else None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.version is not None


def pages(fetch: Callable[[str | None], Page], n: int, user: str | None = None, parallel: int = 4) -> list[Page]:
    """``n`` pages fetched ``parallel`` at a time (``fetch(user)`` gets one)."""
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda _: fetch(user), range(n)))


def wait_pages(fetch: Callable[[str | None], Page], cond: Callable[[Page], bool], what: str, *,
               user: str | None = None, consecutive: int = 5, timeout: float = 30.0,
               diagnostics: Callable[[], str] = lambda: "") -> float:
    """Until ``consecutive`` pages in a row satisfy ``cond`` (the config reached every sidecar on
    the path); returns the seconds it took."""
    t0 = time.monotonic()
    run = 0
    last: Page | None = None
    while run < consecutive:
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not seen {consecutive}x in a row within {timeout}s; last page: "
                                 f"{last and (last.status, last.version, last.error, last.body[-400:])}\n"
                                 f"{diagnostics()}")
        last = fetch(user)
        run = run + 1 if cond(last) else 0
        if run == 0:
            time.sleep(0.1)
    return time.monotonic() - t0
