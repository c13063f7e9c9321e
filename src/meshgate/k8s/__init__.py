"""Kubernetes → the one model (``meshgate ingress-controller``).

This package is the only one talking to kube-apiserver (watches, status writes, leader
election).  Its ``translate/`` sub-package is pure: Kubernetes objects, as the API server
returns them (plain dicts), in; APISIX objects of the one model (the dicts the Admin API v3
takes) out; no I/O, no asyncio, testable without sockets (DESIGN.md, layout).
"""
