"""Keeping CPython's cyclic GC off the config's back.

A compiled config of 10,000 routes is a few hundred thousand long-lived objects.  Each
new config version allocates some more (one changed route, the rebuilt uri trees), and
CPython 3.11 runs a full collection whenever the objects that survived since the last
one reach a quarter of the long-lived heap: measured, every third route change, each a
40-70 ms pause that stops traffic and delays the next config (bench/etcd.py: p99 of the
propagation 475 ms before this module, median 106 ms).

So after each applied config the live heap is frozen (``gc.freeze``: moved out of the
collector's sight in O(1)); requests' garbage is young and collected as usual, and the
config objects are freed by reference counting when a later version drops them.  What a
freeze can hide is cyclic garbage alive at that moment (a request in flight); every
``REFREEZE_EVERY`` freezes the heap is unfrozen, collected once, and frozen again, a
little later than the config change so it does not delay it.
"""

from __future__ import annotations

import asyncio
import gc

__all__ = ["settle", "REFREEZE_EVERY"]

REFREEZE_EVERY = 256
_count = 0
_pending = False


def _full() -> None:
    global _pending
    _pending = False
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def settle() -> None:
    """Call after a new config is in place (the old one released)."""
    global _count, _pending
    gc.freeze()
    _count += 1
    if _count % REFREEZE_EVERY == 0 and not _pending:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            _full()
            return
        _pending = True
        loop.call_later(2.0, _full)
