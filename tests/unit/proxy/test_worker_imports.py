"""A gateway worker imports only what it needs: its RSS is a benchmark target (40 MB per worker).

The mesh's modules load in mesh mode only, h2 with the first HTTP/2 upstream, ``email`` and
``importlib.metadata`` not at all (the supervisor looks up the plugins' entry points once and
hands the list over; HTTP dates are formatted without ``email.utils``), and no plugin pulls in
``urllib.request``/``http.client``.  Measured: about 7 MB less per worker.  ``ctypes`` (the TLS
listener's libssl calls), ``tempfile`` (with ``shutil``, ``bz2``, ``lzma``), ``argparse`` and
``pkgutil`` load only where they are used, not in a plain HTTP worker: about 2 MB more.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("meshgate.proxy.mesh", "meshgate.proxy.mesh_server", "meshgate.observability.istio", "h2", "email",
         "importlib.metadata", "http.client", "urllib.request", "xml", "ctypes", "tempfile", "shutil", "bz2",
         "lzma", "argparse", "pkgutil", "posix_ipc")

PROBE = """
import json, sys
import meshgate.proxy.worker
from meshgate.model import Snapshot
from meshgate.plugins import PluginRegistry
from meshgate.proxy import ProxyServer, ProxySettings, build_runtime
import asyncio
reg = PluginRegistry()
reg.load_all((), entry_points=[])      # what a worker does with its supervisor's list
rt = build_runtime(Snapshot(version=1, resources={}), plugins=reg)
asyncio.set_event_loop(asyncio.new_event_loop())
ProxyServer(ProxySettings(), rt)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {h.split(".")[0] for h in %r})))
"""


def test_a_gateway_worker_leaves_heavy_modules_alone() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE % (HEAVY,)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not [h for h in HEAVY if h in loaded], sorted(loaded)
