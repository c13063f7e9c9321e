"""`meshgate validate`: check a node config and/or an apisix.yaml without starting anything."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ..config import NodeConfigErrors, load_node_config, parse_apisix_yaml
from ..errors import ConfigError
from ..model import Resource, Snapshot, check_references
from ..plugins import PluginRegistry
from ..proxy import build_runtime

__all__ = ["validate"]


def validate(config: str | None, routes_file: str | None) -> int:
    errors: list[str] = []
    node = None
    if config is not None or routes_file is None:
        try:
            node = load_node_config(config)
            for w in node.warnings:
                print(f"warning: {node.source}: {w}", file=sys.stderr)
        except NodeConfigErrors as e:
            errors += [f"{e.source}: {err}" for err in e.errors]
        if node is not None and node.admin_enabled:
            from .gateway import GatewayError, check_admin_keys

            try:
                check_admin_keys(node)   # what 'meshgate run' would refuse
            except GatewayError as e:
                errors.append(str(e))
    rpath: Path | None = Path(routes_file) if routes_file else (node.apisix_yaml_path() if node else None)
    if rpath is not None and (routes_file or rpath.exists()):
        try:
            text = rpath.read_text(encoding="utf-8")
            parsed = parse_apisix_yaml(text, env=os.environ, source=str(rpath))
            errors += [f"{rpath}: {e}" for e in parsed.errors]
            # Everything the gateway checks when it loads the file: the config is compiled
            # exactly as a worker compiles it (router, plugin chains with their schemas,
            # consumers' credentials, upstreams, plugin metadata).
            reg = PluginRegistry()
            reg.load_all(node.plugin_dirs if node is not None else (),
                         enabled=node.plugins if node is not None else None)
            errors += [f"{rpath}: {e}" for e in reg.errors]
            snap = Snapshot(version=1, resources={
                kind: {id: Resource(kind=kind, id=id, value=value) for id, value in items.items()}
                for kind, items in parsed.items.items()})
            quiet = logging.getLogger("meshgate.proxy")   # its errors are listed below, once
            level = quiet.level
            quiet.setLevel(logging.CRITICAL)
            try:
                rt = build_runtime(snap, router_kind=node.router_http if node is not None else "radixtree_host_uri",
                                   plugins=reg)
            finally:
                quiet.setLevel(level)
            errors += [f"{rpath}: {e}" for e in rt.errors]
            if snap.items("stream_routes") and (node is None or "stream" in node.proxy_mode):
                from ..proxy.stream import StreamRoutes

                quiet_stream = logging.getLogger("meshgate.stream")
                level = quiet_stream.level
                quiet_stream.setLevel(logging.CRITICAL)
                try:
                    errors += [f"{rpath}: {e}" for e in StreamRoutes(rt).errors]   # as a worker compiles them
                finally:
                    quiet_stream.setLevel(level)
            # APISIX accepts dangling references from files (the request fails at run time)
            for ref in check_references(parsed.items):
                print(f"warning: {rpath}: {ref}", file=sys.stderr)
            n = parsed.count()
        except ConfigError as e:
            errors.append(f"{rpath}: {e}")
            n = 0
        except OSError as e:
            errors.append(f"{rpath}: cannot read: {e.strerror}")
            n = 0
    else:
        n = 0
    if errors:
        for line in errors:
            print(line, file=sys.stderr)
        print(f"invalid: {len(errors)} error(s)", file=sys.stderr)
        return 1
    what = []
    if node is not None:
        what.append(node.source)
    if rpath is not None and rpath.exists():
        what.append(f"{rpath} ({n} items)")
    print("ok: " + ", ".join(what))
    return 0
