import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from adsserver import AdsServer  # noqa: E402
from etcdpeer import EtcdCluster  # noqa: E402
from gwtools import Upstream  # noqa: E402


@pytest.fixture
def etcd(tmp_path: Path):
    """A real single-member etcd on loopback for one test."""
    c = EtcdCluster.start(tmp_path / "etcd")
    yield c
    c.stop()


@pytest.fixture
async def echo_up():
    """An upstream that answers every request with what it received (gwtools.echo)."""
    u = Upstream()
    await u.start()
    yield u
    await u.close()


@pytest.fixture
async def ads():
    """A real gRPC ADS server (tests/integration/adsserver.py) for one test."""
    srv = AdsServer()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A real etcd shared by the tests of one module (each uses its own key prefix)."""
    c = EtcdCluster.start(tmp_path_factory.mktemp("etcd"))
    yield c
    c.stop()
