"""`meshgate validate`: check a node config and/or an apisix.yaml without starting anything."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..config import NodeConfigErrors, load_node_config, parse_apisix_yaml
from ..errors import ConfigError

from ..plugins import PluginRegistry

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
    rpath: Path | None = Path(routes_file) if routes_file else (node.apisix_yaml_path() if node else None)
    if rpath is not None and (routes_file or rpath.exists()):
        try:
            text = rpath.read_text(encoding="utf-8")
            parsed = parse_apisix_yaml(text, env=os.environ, source=str(rpath))
            errors += [f"{rpath}: {e}" for e in parsed.errors]
            # Plugin confs are checked by the plugin registry, as the gateway would.
            reg = PluginRegistry()
            reg.load_builtin()
            for kind in ("routes", "services", "plugin_configs", "global_rules", "consumers", "consumer_groups"):
                for id, value in parsed.items.get(kind, {}).items():
                    for name, pconf in (value.get("plugins") or {}).items():
                        try:
                            reg.validate(name, pconf, pointer=f"/plugins/{name}", kind=kind, id=id)
                        except ConfigError as e:
                            errors.append(f"{rpath}: {e}")
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
