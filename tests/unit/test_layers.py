"""DESIGN.md layer rules, enforced on the import statements of src/meshgate.

cli → proxy | admin | config | xds | k8s → plugins → router | upstream → http → model
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "meshgate"

BASE = {"errors", "__init__", "__main__", "__version__", "_accel"}
LOWER = {
    "model": set(),
    "shared": set(),   # state shared by worker processes (shared-memory dicts): a leaf
    "http": {"model"},
    "router": {"model", "http"},
    "upstream": {"model", "http"},
    "observability": {"model", "http", "shared"},
    "plugins": {"model", "http", "router", "upstream", "observability", "shared"},
}
PEER_BASE = {"model", "http", "router", "upstream", "observability", "plugins", "shared"}
ALLOWED = {
    **LOWER,
    "proxy": PEER_BASE,
    "config": PEER_BASE,
    "admin": PEER_BASE | {"config"},   # the Admin API is a producer of the ConfigStore
    "xds": PEER_BASE,
    "k8s": PEER_BASE,
    "demo": {"model", "http"},
    "cli": PEER_BASE | {"proxy", "config", "admin", "xds", "k8s", "demo"},
}
NO_ASYNCIO = {"model", "http", "router"}


def _imports(path: Path) -> list[tuple[str, int]]:
    """meshgate sub-packages imported by ``path`` (resolving relative imports)."""
    tree = ast.parse(path.read_text(), str(path))
    rel = path.relative_to(SRC).with_suffix("").parts
    pkg = list(rel[:-1]) if rel[-1] != "__init__" else list(rel[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "meshgate" and len(parts) > 1:
                    out.append((parts[1], node.lineno))
                elif parts[0] == "asyncio":
                    out.append(("asyncio", node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                mod = (node.module or "").split(".") if node.module else []
                full = base + mod
                if full:
                    out.append((full[0], node.lineno))
                else:  # "from .. import x" at the top: x is the sub-package
                    out += [(a.name, node.lineno) for a in node.names]
            else:
                parts = (node.module or "").split(".")
                if parts[0] == "meshgate" and len(parts) > 1:
                    out.append((parts[1], node.lineno))
                elif parts[0] == "asyncio":
                    out.append(("asyncio", node.lineno))
    return out


def test_layers_point_one_way() -> None:
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).parts
        layer = rel[0].removesuffix(".py") if len(rel) > 1 else None
        if layer is None:
            continue  # top-level modules (errors, __main__) are shared
        allowed = ALLOWED.get(layer)
        assert allowed is not None, f"{layer} has no layer rule: add it to DESIGN.md and this test"
        for target, line in _imports(path):
            if target == "asyncio":
                if layer in NO_ASYNCIO:
                    bad.append(f"{path.relative_to(SRC)}:{line}: {layer}/ must not import asyncio")
                continue
            if target in BASE or target == layer:
                continue
            if target not in allowed:
                bad.append(f"{path.relative_to(SRC)}:{line}: {layer}/ imports {target}/")
    assert not bad, "\n".join(bad)


def test_translators_stay_apart() -> None:
    for a, b in (("xds", "k8s"), ("k8s", "xds")):
        d = SRC / a / "translate"
        for path in d.rglob("*.py") if d.exists() else []:
            assert all(t != b for t, _ in _imports(path)), f"{path} imports {b}"
