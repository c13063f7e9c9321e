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
import json
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..config.etcd import EtcdClient, EtcdError, EtcdUnavailable
from ..k8s.client import KubeClient, KubeConfigError, LeaderElector
from ..k8s.controller import AdminClient, AdminError, Controller, ControllerOptions, FanOut, GatewayWriter

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
    s("--admin-url", action="append", default=[], metavar="URL",
      help="gateway Admin API base URL, e.g. http://127.0.0.1:9180 (this or --etcd; repeatable: gateways with an "
           "Admin API each, kept identical)")
    s("--admin-key", default=os.environ.get("MESHGATE_ADMIN_KEY", ""),
      help="Admin API key, the same for every --admin-url (default $MESHGATE_ADMIN_KEY)")
    s("--etcd", action="append", default=[], metavar="URL",
      help="write into the gateways' etcd instead of an Admin API, e.g. http://etcd:2379 (repeatable: the cluster's "
           "members)")
    s("--etcd-prefix", default="/apisix", help="the gateways' deployment.etcd.prefix (default /apisix)")
    s("--etcd-user", default=None, help="etcd user (password from $MESHGATE_ETCD_PASSWORD)")
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


class EtcdWriter:
    """``--etcd``: the controller's objects written straight into the gateways' etcd, in
    APISIX's layout (``<prefix>/<kind>/<id>``, JSON, ``create_time`` kept and ``update_time``
    set as the Admin API does), for deployments without an Admin API next to the controller;
    every gateway watching that etcd serves them.  The objects were checked against the
    gateway's schemas and plugins by the controller before (``validate_translation``)."""

    def __init__(self, endpoints: list[str], prefix: str = "/apisix", *, user: str | None = None,
                 password: str | None = None) -> None:
        self.etcd = EtcdClient(endpoints, user=user, password=password, timeout=10.0)
        self.prefix = "/" + prefix.strip("/")

    def _key(self, kind: str, id: str) -> str:
        return f"{self.prefix}/{kind}/{id}"

    @staticmethod
    def _error(e: EtcdError, what: str) -> AdminError:
        return AdminError(0 if isinstance(e, EtcdUnavailable) else 500, f"etcd {what}: {e}")

    async def list(self, kind: str) -> dict[str, dict[str, Any]]:
        try:
            _, kvs = await self.etcd.get_prefix(f"{self.prefix}/{kind}/")
        except EtcdError as e:
            raise self._error(e, f"list {kind}") from None
        out: dict[str, dict[str, Any]] = {}
        for kv in kvs:
            try:
                value = json.loads(kv.value)
            except ValueError:
                continue            # a directory marker or a foreign value: not an object of ours
            if isinstance(value, dict):
                out[kv.key.rsplit("/", 1)[-1]] = value
        return out

    async def put(self, kind: str, id: str, value: Mapping[str, Any]) -> None:
        key = self._key(kind, id)
        try:
            old = await self.etcd.get(key)
            now = int(time.time())
            created = now
            if old is not None:
                try:
                    created = int(json.loads(old.value).get("create_time") or now)
                except (ValueError, AttributeError, TypeError):
                    pass
            body = {**value, "create_time": created, "update_time": now}
            await self.etcd.put(key, json.dumps(body, separators=(",", ":")).encode())
        except EtcdError as e:
            raise self._error(e, f"put {key}") from None

    async def delete(self, kind: str, id: str) -> None:
        try:
            await self.etcd.delete(self._key(kind, id))
        except EtcdError as e:
            raise self._error(e, f"delete {self._key(kind, id)}") from None

    async def close(self) -> None:
        await self.etcd.close()


def cancel_on_signals() -> Callable[[], bool]:
    """SIGTERM / SIGINT cancel the running task (once): a controller's way to stop cleanly;
    the returned function tells whether that is why it was cancelled."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    stopping = [False]

    def stop() -> None:
        if not stopping[0]:
            stopping[0] = True
            main.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    return lambda: stopping[0]


def _fail(msg: str) -> int:
    print(f"meshgate ingress-controller: error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    if bool(args.admin_url) == bool(args.etcd):
        return _fail("give one of --admin-url (the gateway's Admin API) or --etcd (the gateways' etcd)")
    for url in args.admin_url:
        if not url.startswith(("http://", "https://")):
            return _fail(f"--admin-url must be an http(s) URL, got {url!r}")
    if args.etcd:
        from ..config.etcd import parse_endpoints

        try:
            parse_endpoints(args.etcd)
        except ValueError as e:
            return _fail(str(e).replace("deployment.etcd.host", "--etcd"))
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
    admin: GatewayWriter
    if len(args.admin_url) > 1:
        admin = FanOut([(u, AdminClient(u, args.admin_key)) for u in dict.fromkeys(args.admin_url)])
    elif args.admin_url:
        admin = AdminClient(args.admin_url[0], args.admin_key)
    else:
        admin = EtcdWriter(list(args.etcd), args.etcd_prefix, user=args.etcd_user,
                           password=os.environ.get("MESHGATE_ETCD_PASSWORD") or None)
    ctl = Controller(kube, admin, opts)
    elector: LeaderElector | None = None
    if args.leader_elect and not args.dry_run:
        elector = LeaderElector(kube, name=LEASE_NAME, namespace=args.leader_elect_namespace or kube.namespace,
                                identity=args.identity or f"{socket.gethostname()}_{uuid.uuid4()}",
                                lease_duration=args.leader_elect_lease_duration,
                                renew_deadline=args.leader_elect_renew_deadline,
                                retry_period=args.leader_elect_retry_period, on_change=ctl.on_leadership)
        ctl.elector = elector
    stopping = cancel_on_signals()
    target = f"admin {', '.join(args.admin_url)}" if args.admin_url else f"etcd {','.join(args.etcd)} {args.etcd_prefix}"
    log.warning("ingress controller started: %s, namespaces %s, class %s%s", target,
                ",".join(opts.namespaces) or "all", opts.ingress_class, " (required)" if opts.require_class else "")
    try:
        async with asyncio.TaskGroup() as tg:
            if elector is not None:
                tg.create_task(elector.run(), name="leader-election")
            await ctl.run(dry_run=args.dry_run)  # returns only after a dry run (no elector then)
    except asyncio.CancelledError:
        if not stopping():
            raise
    finally:
        if elector is not None:
            await asyncio.shield(elector.release())
        await admin.close()
        await kube.close()
    return 0
