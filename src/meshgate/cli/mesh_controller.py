"""`meshgate mesh-controller`: AmeshPluginConfig → the plugins of each sidecar.

Wiring only: flags → ``k8s.KubeClient`` + ``k8s.mesh_controller.MeshController`` (informers,
plugin sets, status) + ``xds.extconfig.ExtConfigServer`` (the stream the sidecars'
``meshgate mesh --plugins-address`` hold), and the probe port.  SIGTERM/SIGINT → the streams
end (sidecars keep their last plugin set and reconnect), exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Mapping
from typing import Any, TypeVar

from ..admin.httpserver import ApiRequest, ApiServer, json_response
from ..k8s.client import KubeClient, KubeConfigError
from ..k8s.mesh_controller import MeshController
from ..xds.extconfig import ExtConfigServer, NodeInfo, NotReady, parse_address, state_version
from .ingress_controller import cancel_on_signals

__all__ = ["add_parser", "run", "DEFAULT_LISTEN"]

_P = TypeVar("_P", bound=argparse.ArgumentParser)
DEFAULT_LISTEN = "0.0.0.0:15810"      # Amesh's plugin stream port
DEFAULT_PROBES = "0.0.0.0:18081"      # Amesh's probe port
log = logging.getLogger("meshgate.mesh-controller")


def add_parser(sub: argparse._SubParsersAction[_P]) -> None:
    p = sub.add_parser(
        "mesh-controller", help="AmeshPluginConfig controller: plugins for the mesh sidecars",
        description="Watch apisix.apache.org/v1alpha1 AmeshPluginConfigs and Pods, serve each sidecar "
                    "(meshgate mesh --plugins-address) the plugins of the configs its pod matches, and write "
                    "which pods applied each config into its status.")
    s = p.add_argument
    s("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, else $KUBECONFIG or ~/.kube/config)")
    s("--context", default=None, help="kubeconfig context (default: the current one)")
    s("--listen", default=DEFAULT_LISTEN, help=f"plugin stream address HOST:PORT or unix:/path (default "
                                               f"{DEFAULT_LISTEN})")
    s("--probe-address", default=DEFAULT_PROBES, help=f"/healthz and /readyz (default {DEFAULT_PROBES}; "
                                                      "'off' for none)")
    s("--watch-namespace", action="append", default=[], metavar="NS",
      help="namespace to watch (repeatable; default: all namespaces)")


def _fail(msg: str) -> int:
    print(f"meshgate mesh-controller: error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    for flag, value in (("--listen", args.listen), ("--probe-address", args.probe_address)):
        if flag == "--probe-address" and value == "off":
            continue
        try:
            host, port = parse_address(value)
        except ValueError as e:
            return _fail(f"{flag}: {e}")
        if flag == "--probe-address" and port is None:
            return _fail("--probe-address: expected HOST:PORT")
    try:
        kube = KubeClient.from_config(args.kubeconfig, context=args.context)
    except KubeConfigError as e:
        print(f"meshgate mesh-controller: {e}", file=sys.stderr)
        return 1
    return asyncio.run(_main(args, kube))


class _Delivery:
    """What the controller needs of the channel (``k8s`` may not import ``xds``)."""

    def __init__(self) -> None:
        self.server: ExtConfigServer | None = None

    def notify(self) -> None:
        if self.server is not None:
            self.server.notify()

    def version(self, state: Mapping[str, Any]) -> str:
        return state_version(dict(state))


async def _main(args: argparse.Namespace, kube: KubeClient) -> int:
    delivery = _Delivery()
    ctl = MeshController(kube, delivery, namespaces=args.watch_namespace)
    ready = asyncio.Event()

    def resolve(node: NodeInfo) -> dict[str, Any] | None:
        if not ready.is_set():
            # never an empty set before the caches are filled: after a controller restart the
            # sidecars keep running their plugins until the real set is known
            raise NotReady()
        return ctl.state_for(node.namespace, node.pod, node.labels)

    def on_status(node: NodeInfo, version: str | None, error: str | None) -> None:
        ctl.on_ack(node.key, version, error)

    server = ExtConfigServer(resolve, on_status=on_status)
    delivery.server = server
    probes: ApiServer | None = None

    async def probe(req: ApiRequest) -> tuple[int, dict[str, str], bytes]:
        if req.path == "/healthz":
            return json_response(200, {"status": "ok"})
        if req.path == "/readyz":
            return json_response(200 if ready.is_set() else 503, {"ready": ready.is_set(),
                                                                  "sidecars": len(server.connected())})
        return 404, {"Content-Type": "text/plain"}, b"not found\n"

    stopping = cancel_on_signals()
    try:
        try:
            bound = await server.start(args.listen)
            if args.probe_address != "off":
                host, port = parse_address(args.probe_address)
                probes = ApiServer(probe)
                await probes.listen(host, int(port or 0))
        except OSError as e:
            print(f"meshgate mesh-controller: cannot listen: {e.strerror or e}", file=sys.stderr)
            return 1
        log.warning("mesh controller started: plugin stream on %s, namespaces %s", bound,
                    ",".join(args.watch_namespace) or "all")

        def on_ready() -> None:
            ready.set()
            server.notify()
        await ctl.run(ready=on_ready)
    except asyncio.CancelledError:
        if not stopping():
            raise
    finally:
        await server.stop()
        if probes is not None:
            await probes.close()
        await kube.close()
    return 0
