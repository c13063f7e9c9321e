"""HTTP dates (RFC 9110 5.6.7 IMF-fixdate), without the ``email`` package (about 1 MB a worker
would import for ``email.utils.formatdate`` alone)."""

from __future__ import annotations

import time

__all__ = ["imf_fixdate"]

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def imf_fixdate(ts: float) -> str:
    """``Sun, 06 Nov 1994 08:49:37 GMT`` for the Unix time ``ts`` (what
    ``email.utils.formatdate(ts, usegmt=True)`` gives, whatever the locale)."""
    t = time.gmtime(ts)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")
