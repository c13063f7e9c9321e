"""What a Bookinfo user sees on /productpage (shared by the mesh journeys of tests/e2e): which
reviews version served the page, its stars, and the "unavailable" messages of a failed call."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Page"]

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
