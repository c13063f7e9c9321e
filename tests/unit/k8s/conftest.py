import pytest

from meshgate.plugins import PluginRegistry


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    """The built-in plugins, for checking translated plugin confs against their schemas."""
    reg = PluginRegistry()
    reg.load_builtin()
    return reg
