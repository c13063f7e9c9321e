"""`meshgate ingress-controller`: ApisixRoute & co. → a Meshgate (or APISIX) gateway's Admin API.

Wiring only: flags → ``k8s.KubeClient`` + ``k8s.controller.Controller`` (+ ``LeaderElector``),
SIGTERM/SIGINT → stop (the Lease is released) and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import uuid
from typing import TypeVar

from ..k8s.client import KubeClient, KubeConfigError, LeaderElector
from ..k8s.controller import AdminClient, Controller, ControllerOptions

__all__ = ["add_parser", "run"]

_P = TypeVar("_P", bound=argparse.ArgumentParser)
LEASE_NAME = "meshgate-ingress-controller-leader"
log = logging.getLogger("meshgate.ingress-controller")


def _seconds(text: str) -> float:
    t = text.strip()
    mult = 1.0
    for suffix, m in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if t.endswith(suffix) and t[: -len(suffix)].replace(".", "", 1).isdigit():
            t, mult = t[: -len(suffix)], m
            break
    try:
        v = float(t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration such as 30s, 5m or 1h, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration, got {text!r}")
    return v


def add_parser(sub: argparse._SubParsersAction[_P]) -> None:
    p = sub.add_parser(
        "ingress-controller", help="Kubernetes ingress controller (ApisixRoute & co.)",
        description="Watch apisix.apache.org/v2 ApisixRoute, ApisixUpstream, ApisixPluginConfig, ApisixTls and "
                    "ApisixConsumer, networking.k8s.io/v1 Ingress, gateway.networking.k8s.io/v1 Gateway and "
                    "HTTPRoute (when the apiserver serves the Gateway API), plus Services and EndpointSlices, and "
                    "keep a gateway's Admin API in sync; writes their status (Accepted conditions; Gateway API "
                    "statuses of GatewayClass, Gateway and HTTPRoute).")
    s = p.add_argument
    s("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, else $KUBECONFIG or ~/.kube/config)")
    s("--context", default=None, help="kubeconfig context (default: the current one)")
    s("--admin-url", default=None, help="gateway Admin API base URL, e.g. http://127.0.0.1:9180 (required)")
    s("--admin-key", default=os.environ.get("MESHGATE_ADMIN_KEY", ""),
      help="Admin API key (default $MESHGATE_ADMIN_KEY)")
    s("--ingress-class", default=None,
      help="class to handle; when given, objects must name it (default: 'apisix' and objects without a class)")
    s("--watch-namespace", action="append", default=[], metavar="NS",
      help="namespace to watch (repeatable; default: all namespaces)")
    s("--resync-period", type=_seconds, default=300.0, help="full resync with the gateway (default 5m)")
    s("--controller-name", default=None, help="value of the k8s/controller-name ownership label")
    s("--dry-run", action="store_true", help="print the changes (create/update/delete per Admin API object) and exit")
    s("--leader-elect", action="store_true", help="elect a leader with a coordination.k8s.io/v1 Lease")
    s("--leader-elect-namespace", default=None, help="namespace of the Lease (default: the kubeconfig's)")
    s("--leader-elect-lease-duration", type=_seconds, default=15.0, help="default 15s")
    s("--leader-elect-renew-deadline", type=_seconds, default=10.0, help="default 10s")
    s("--leader-elect-retry-period", type=_seconds, default=2.0, help="default 2s")
    s("--identity", default=None, help="leader election identity (default: hostname_uuid)")


def _fail(msg: str) -> int:
    print(f"meshgate ingress-controller: error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    if not args.admin_url:
        return _fail("--admin-url is required")
    if not args.admin_url.startswith(("http://", "https://")):
        return _fail(f"--admin-url must be an http(s) URL, got {args.admin_url!r}")
    if args.leader_elect and not (args.leader_elect_retry_period < args.leader_elect_renew_deadline
                                  < args.leader_elect_lease_duration):
        return _fail("leader election needs retry-period < renew-deadline < lease-duration")
    try:
        kube = KubeClient.from_config(args.kubeconfig, context=args.context)
    except KubeConfigError as e:
        print(f"meshgate ingress-controller: {e}", file=sys.stderr)
        return 1
    return asyncio.run(_main(args, kube))


async def _main(args: argparse.Namespace, kube: KubeClient) -> int:
    from ..k8s.translate import DEFAULT_CONTROLLER_NAME

    opts = ControllerOptions(namespaces=tuple(dict.fromkeys(args.watch_namespace)),
                             ingress_class=args.ingress_class or "apisix",
                             require_class=args.ingress_class is not None,
                             resync_period=args.resync_period,
                             controller_name=args.controller_name or DEFAULT_CONTROLLER_NAME)
    admin = AdminClient(args.admin_url, args.admin_key)
    ctl = Controller(kube, admin, opts)
    elector: LeaderElector | None = None
    if args.leader_elect and not args.dry_run:
        elector = LeaderElector(kube, name=LEASE_NAME, namespace=args.leader_elect_namespace or kube.namespace,
                                identity=args.identity or f"{socket.gethostname()}_{uuid.uuid4()}",
                                lease_duration=args.leader_elect_lease_duration,
                                renew_deadline=args.leader_elect_renew_deadline,
                                retry_period=args.leader_elect_retry_period, on_change=ctl.on_leadership)
        ctl.elector = elector
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    stopping = False

    def stop() -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            main.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    log.warning("ingress controller started: admin %s, namespaces %s, class %s%s", args.admin_url,
                ",".join(opts.namespaces) or "all", opts.ingress_class, " (required)" if opts.require_class else "")
    try:
        async with asyncio.TaskGroup() as tg:
            if elector is not None:
                tg.create_task(elector.run(), name="leader-election")
            await ctl.run(dry_run=args.dry_run)  # returns only after a dry run (no elector then)
    except asyncio.CancelledError:
        if not stopping:
            raise
    finally:
        if elector is not None:
            await asyncio.shield(elector.release())
        await admin.close()
        await kube.close()
    return 0
