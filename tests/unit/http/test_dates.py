"""imf_fixdate gives what email.utils.formatdate(usegmt=True) gives (the Date header, cookies' Expires)."""

from __future__ import annotations

import random
from email.utils import formatdate

from meshgate.http.dates import imf_fixdate


def test_same_text_as_the_standard_library() -> None:
    rnd = random.Random(7)
    stamps = [0, 784111777, 951782400, 1709164800, 2147483647, 4102444799,
              *(rnd.randint(0, 4102444800) for _ in range(20000))]
    for ts in stamps:
        assert imf_fixdate(ts) == formatdate(ts, usegmt=True), ts
    assert imf_fixdate(784111777) == "Sun, 06 Nov 1994 08:49:37 GMT"   # RFC 9110's example
