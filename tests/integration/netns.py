"""Shared by the tests that build network namespaces and apply capture rules in them."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

__all__ = ["need_root", "run"]


def need_root() -> None:
    """Skip, with the reason, unless namespaces and iptables rules can be made here."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces and applies iptables rules in them")
    if shutil.which("ip") is None:
        pytest.skip("needs `ip` (iproute2) for `ip netns`")
    for tool in ("iptables-restore", "iptables-save"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            pytest.skip(f"needs {tool}: install Debian's iptables package (tools/peers/iptables.sh)")


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> {r.returncode}: {r.stderr.strip()}")
    return r
