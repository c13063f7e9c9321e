"""Every built-in plugin keeps the contract the loader checks for third-party ones (the loader
skips the JSON-schema check for built-ins so that workers without plugin confs never import
jsonschema: this test is that check)."""

from __future__ import annotations

import jsonschema
import pytest

from meshgate.plugins import PluginRegistry

REG = PluginRegistry()
REG.load_builtin()


def test_every_builtin_loads():
    assert len(REG.names()) >= 37 and not REG.errors


@pytest.mark.parametrize("name", REG.names())
def test_builtin_schemas_are_valid_draft7(name):
    p = REG.get(name)
    assert p is not None
    for sch in (p.schema, p.consumer_schema, p.metadata_schema):
        if sch is not None:
            jsonschema.Draft7Validator.check_schema(sch)
    assert p.phases, f"{name} has no phase hook"


def test_a_worker_without_plugin_confs_does_not_import_jsonschema():
    import subprocess
    import sys

    code = ("import sys\nfrom meshgate.plugins import PluginRegistry\nr = PluginRegistry(); r.load_all()\n"
            "print('jsonschema' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
