"""Meshgate: an Apache-APISIX-compatible gateway and Istio data plane in Python."""

from . import _accel

__all__ = ["__version__"]

__version__ = "0.1.0"

# Before any hot-path module is imported: compiled extensions only when they match their sources.
_accel.install()
