"""Plugin tests: one file per plugin (schema, behaviour through the real gateway, ``_meta``).

The gateway runs as a real subprocess (``gwtools.start_gateway``) in front of a real
loopback upstream (``gwtools.Upstream``); see tests/integration/gwtools.py.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from gwtools import Upstream  # noqa: E402


@pytest.fixture
async def up():
    u = await Upstream().start()
    yield u
    await u.close()


@pytest.fixture(scope="session")
def registry():
    """The built-in plugins, as the gateway loads them (for schema tests)."""
    from meshgate.plugins import PluginRegistry

    reg = PluginRegistry()
    reg.load_builtin()
    return reg
