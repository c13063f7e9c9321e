"""Fixtures of the e2e suite's heavy real peers (built by tools/peers-e2e.sh; skipped when absent).

``kube``: a real kube-apiserver + etcd on loopback, one per test module.
``istiod``: a real istiod against it, one per test module.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from istiodpeer import Istiod  # noqa: E402
from kubepeer import KubeAPIServer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_helm_chart import helm_binary  # noqa: E402


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPIServer]:
    k = KubeAPIServer.start(tmp_path_factory.mktemp("kube"))
    try:
        yield k
    finally:
        k.stop()


@pytest.fixture(scope="module")
def istiod(kube: KubeAPIServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Istiod]:
    i = Istiod.start(kube, tmp_path_factory.mktemp("istiod"))
    try:
        yield i
    finally:
        i.stop()


@pytest.fixture(scope="module")
def helm() -> Path:
    """The helm CLI of tools/peers-e2e/helm.sh (skipped when absent)."""
    h = helm_binary()
    if h is None:
        pytest.skip("no helm binary: run tools/peers-e2e/helm.sh")
    return h
