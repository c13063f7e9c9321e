"""Which HTTP/1 head codec runs: the native one (Rust, ``meshgate.proxy._codec``, built from
``native/``) when it was built and imports, else the Python reference (``headcodec.py``).

``MESHGATE_PURE=1`` forces the Python one (as it forces the pure-Python hot path);
``MESHGATE_CODEC=python`` forces only the codec (to compare the two with the same compiled hot path:
bench/perfprofile.py, bench/synthetic.py).  Both have the interface ``headcodec.py`` documents;
``meshgate version`` prints ``NAME``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from .. import _accel
from ..http.request import find_field
from . import headcodec

__all__ = ["NAME", "NATIVE", "PYTHON", "WHY_NOT", "Codec", "active", "load_native"]


class Codec:
    """One implementation of the head codec's calls (``find_field``: a field of a request's
    raw field block, for :meth:`meshgate.http.Request.header`)."""

    __slots__ = ("name", "scan_request", "scan_response", "resp_fields", "find_field", "relay_response")

    def __init__(self, name: str, scan_request: Callable[[bytes, bytes], Any], scan_response: Callable[[bytes], Any],
                 resp_fields: Callable[[bytes], Any], find_field: Callable[[bytes, str], Any],
                 relay_response: Callable[[bytes, bytes, bytes, int, bytes], Any]) -> None:
        self.name = name
        self.scan_request = scan_request
        self.scan_response = scan_response
        self.resp_fields = resp_fields
        self.find_field = find_field
        self.relay_response = relay_response


PYTHON = Codec("python", headcodec.scan_request, headcodec.scan_response, headcodec.resp_fields, find_field,
               headcodec.relay_response)


def load_native(*, ignore_env: bool = False) -> tuple[Codec | None, str]:
    """The native codec, or None and why not (``ignore_env``: even under MESHGATE_PURE, for the
    tests that hold the two codecs to the same answers)."""
    if not ignore_env:
        if os.environ.get("MESHGATE_PURE"):
            return None, "MESHGATE_PURE is set"
        if os.environ.get("MESHGATE_CODEC", "native") == "python":
            return None, "MESHGATE_CODEC=python"
    why = _accel.native_status(Path(__file__).resolve().parent)
    if why is not None:
        return None, why
    try:
        from . import _codec  # type: ignore[attr-defined]
    except ImportError as e:
        return None, f"not built ({e})"
    if tuple(_codec.SKIP_NAMES) != headcodec.SKIP_NAMES or tuple(_codec.SKIP_PREFIXES) != headcodec.SKIP_PREFIXES \
            or tuple(_codec.RESP_DROP) != headcodec.RESP_DROP or _codec.LITE_MAX != headcodec.LITE_MAX \
            or not hasattr(_codec, "find_field") or not hasattr(_codec, "relay_response"):
        return None, "stale build (its field tables or calls differ from headcodec.py)"
    return Codec(f"native (Rust {_codec.VERSION})", _codec.scan_request, _codec.scan_response,
                 _codec.resp_fields, _codec.find_field, _codec.relay_response), ""


NATIVE, WHY_NOT = load_native()
NAME = NATIVE.name if NATIVE is not None else "python"


def active() -> Codec:
    """The codec a worker uses."""
    return NATIVE if NATIVE is not None else PYTHON
