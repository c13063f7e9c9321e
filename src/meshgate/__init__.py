"""Meshgate: an Apache-APISIX-compatible gateway and Istio data plane in Python."""

__all__ = ["__version__"]

__version__ = "0.1.0"
