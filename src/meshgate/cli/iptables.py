"""`meshgate iptables`: print or apply (or remove) the sidecar traffic-capture rules.

A drop-in for Istio's ``istio-iptables`` in REDIRECT mode: same short and long flags, so the
injector's init-container arguments (``-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*'
-d 15090,15021,15020``) work unchanged, and like istio-iptables an unset flag falls back to the
environment variable named after it (``ENVOY_PORT``, ``ISTIO_INBOUND_PORTS``, ...).  Rules come
from ``xds.iptables`` (pure); this module only runs iptables-save / iptables-restore.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
from typing import TypeVar

from ..xds.iptables import CaptureOptionError, CaptureOptions, Family, cleanup_text, parse_options, restore_text

__all__ = ["add_parser", "run"]

_PROG = "meshgate iptables"
_TOOLS: dict[Family, tuple[str, str]] = {
    "ipv4": ("iptables-restore", "iptables-save"),
    "ipv6": ("ip6tables-restore", "ip6tables-save"),
}
_TIMEOUT = 30.0
_P = TypeVar("_P", bound=argparse.ArgumentParser)


class _Failure(Exception):
    """Applying failed: one line for stderr, exit 1."""


def _env(name: str, default: str) -> str:
    # istio-iptables (viper AutomaticEnv): an unset flag reads the variable named after it.
    return os.environ.get(name.upper().replace("-", "_"), default)


def _default_uid() -> str:
    # As istio-iptables: the uid of $ENVOY_USER (istio-proxy) when that user exists, else 1337.
    try:
        return str(pwd.getpwnam(os.environ.get("ENVOY_USER", "istio-proxy")).pw_uid)
    except KeyError:
        return "1337"


def add_parser(sub: argparse._SubParsersAction[_P]) -> None:
    p = sub.add_parser(
        "iptables", help="print or apply the traffic-interception rules for sidecar mode",
        description="Install (or with --cleanup remove) Istio-compatible REDIRECT capture in the nat table: "
                    "outbound TCP -> the proxy port, inbound TCP -> the inbound capture port. Takes istio-iptables' "
                    "flags; one iptables-restore batch per family, so a failure changes nothing.")
    s = p.add_argument
    s("-p", "--envoy-port", default=None, help="outbound capture port (default $ENVOY_PORT or 15001)")
    s("-z", "--inbound-capture-port", default=None, help="inbound capture port (default $INBOUND_CAPTURE_PORT or 15006)")
    s("-e", "--inbound-tunnel-port", default=None, help="tunnel port never captured (default $INBOUND_TUNNEL_PORT or 15008)")
    s("-u", "--proxy-uid", default=None,
      help="uid(s) of the proxy, whose traffic is not captured (default $PROXY_UID, the uid of istio-proxy, or 1337)")
    s("-g", "--proxy-gid", default=None, help="gid(s) of the proxy, whose traffic is not captured (default: same as -u)")
    s("-m", "--istio-inbound-interception-mode", default=None,
      help="REDIRECT (the only mode Meshgate supports; TPROXY is refused)")
    s("-b", "--istio-inbound-ports", default=None,
      help="inbound ports to capture, comma-separated, '*' = all, '' = none (default $ISTIO_INBOUND_PORTS or '*')")
    s("-d", "--istio-local-exclude-ports", default=None,
      help="inbound ports not captured when -b is '*' (default $ISTIO_LOCAL_EXCLUDE_PORTS or 15090,15021,15020)")
    s("-q", "--istio-outbound-ports", default=None, help="outbound ports always captured, comma-separated")
    s("-o", "--istio-local-outbound-ports-exclude", default=None, help="outbound ports not captured, comma-separated")
    s("-i", "--istio-service-cidr", default=None,
      help="outbound destinations to capture, CIDRs comma-separated, '*' = all, '' = none (default $ISTIO_SERVICE_CIDR or '*')")
    s("-x", "--istio-service-exclude-cidr", default=None, help="outbound destinations not captured, CIDRs comma-separated")
    s("-c", "--istio-exclude-interfaces", default=None, help="interfaces whose traffic is never captured, comma-separated")
    s("-k", "--kube-virt-interfaces", default=None,
      help="virtual interfaces whose incoming traffic is treated as outbound (KubeVirt), comma-separated")
    s("--enable-ipv6", "--dual-stack", dest="enable_ipv6", action="store_true", default=None,
      help="also capture IPv6 with ip6tables (default: $ENABLE_INBOUND_IPV6 is true)")
    s("-n", "--dry-run", action="store_true", help="print the iptables-restore input instead of applying it "
                                                   "(with --cleanup: read the tables and print what would be removed)")
    s("--cleanup", "--cleanup-only", dest="cleanup", action="store_true",
      help="remove Meshgate's (Istio's) capture chains and jumps; idempotent (pass the same -c/-k as when applying)")
    # Accepted for istio-iptables compatibility, without effect: the output is always restore format,
    # and logging goes to stderr.
    s("-f", "--restore-format", nargs="?", const="true", default=None, help=argparse.SUPPRESS)
    s("--log_output_level", default=None, help=argparse.SUPPRESS)


def _options(a: argparse.Namespace) -> CaptureOptions:
    def get(flag: str, default: str) -> str:
        v = getattr(a, flag.replace("-", "_"))
        return str(v) if v is not None else _env(flag, default)

    ipv6 = a.enable_ipv6 if a.enable_ipv6 is not None else \
        os.environ.get("ENABLE_INBOUND_IPV6", "").strip().lower() in ("1", "true", "yes", "on")
    return parse_options(
        envoy_port=get("envoy-port", "15001"),
        inbound_capture_port=get("inbound-capture-port", "15006"),
        inbound_tunnel_port=get("inbound-tunnel-port", "15008"),
        proxy_uid=get("proxy-uid", "") or _default_uid(),
        proxy_gid=get("proxy-gid", ""),
        interception_mode=get("istio-inbound-interception-mode", "REDIRECT"),
        inbound_ports=get("istio-inbound-ports", "*"),
        inbound_ports_exclude=get("istio-local-exclude-ports", "15090,15021,15020"),
        outbound_ports_include=get("istio-outbound-ports", ""),
        outbound_ports_exclude=get("istio-local-outbound-ports-exclude", ""),
        service_cidr=get("istio-service-cidr", "*"),
        service_exclude_cidr=get("istio-service-exclude-cidr", ""),
        exclude_interfaces=get("istio-exclude-interfaces", ""),
        kube_virt_interfaces=get("kube-virt-interfaces", ""),
        ipv6=bool(ipv6),
    )


def _tool(name: str) -> str:
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(("/usr/sbin", "/sbin"))
    found = shutil.which(name, path=path)
    if found is None:
        raise _Failure(f"{name} not found on PATH or in /usr/sbin; install the iptables package "
                       f"(Debian: apt-get install iptables, or tools/peers/iptables.sh)")
    return found


def _exec(argv: list[str], stdin: str | None = None) -> str:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise _Failure(f"could not run {argv[0]}: {e}") from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        raise _Failure(f"{os.path.basename(argv[0])} failed (exit {done.returncode}): "
                       f"{lines[0] if lines else 'no output'}")
    return done.stdout


def _save(family: Family) -> str:
    return _exec([_tool(_TOOLS[family][1]), "-t", "nat"])


def _restore(family: Family, text: str, *, test: bool = False) -> None:
    _exec([_tool(_TOOLS[family][0]), "--noflush", *(["--test"] if test else [])], text)


def _ipv6_passthrough_address() -> None:
    # The inbound passthrough binds ::6 (Istio adds it too): IPv6 lo only has ::1/128.
    try:
        done = subprocess.run([_tool("ip"), "-6", "addr", "add", "::6/128", "dev", "lo"], capture_output=True,
                              text=True, timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise _Failure(f"could not add ::6/128 to lo: {e}") from None
    if done.returncode != 0 and "exists" not in done.stderr.lower():
        raise _Failure(f"could not add ::6/128 to lo: {done.stderr.strip().splitlines()[0] if done.stderr.strip() else 'ip failed'}")


def _cleanup(opts: CaptureOptions, *, dry_run: bool) -> int:
    families: list[Family] = ["ipv4"]
    # IPv6 is cleaned whenever ip6tables is usable, even without --enable-ipv6: cleanup removes
    # whatever capture a previous run installed.
    try:
        _tool(_TOOLS["ipv6"][1])
        families.append("ipv6")
    except _Failure:
        if opts.ipv6:
            raise
    for fam in families:
        try:
            existing = _save(fam)
        except _Failure:
            if fam == "ipv6" and not opts.ipv6:
                continue   # no IPv6 netfilter here: nothing of ours can be there
            raise
        text = cleanup_text(opts, existing)
        if dry_run:
            print(f"# {_TOOLS[fam][0]} --noflush")
            print(text if text is not None else "# nothing to remove\n", end="")
        elif text is not None:
            _restore(fam, text)
            print(f"{_PROG}: removed the capture rules ({fam})", file=sys.stderr)
    return 0


def _apply(opts: CaptureOptions) -> int:
    fams = opts.families()
    batches = {fam: restore_text(opts, fam, existing=_save(fam)) for fam in fams}
    for fam in fams:                       # parse-and-check every batch before changing anything
        try:
            _restore(fam, batches[fam], test=True)
        except _Failure as e:
            raise _Failure(f"{e}; nothing was applied") from None
    if opts.ipv6:
        _ipv6_passthrough_address()
    done: list[Family] = []
    for fam in fams:
        try:
            _restore(fam, batches[fam])
        except _Failure as e:
            for prev in done:              # keep "a failure changes nothing" across families
                undo = cleanup_text(opts, _save(prev))
                if undo is not None:
                    _restore(prev, undo)
            raise _Failure(f"{e}; nothing was applied" + (" (the IPv4 rules were removed again)" if done else "")) from None
        done.append(fam)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        opts = _options(args)
    except CaptureOptionError as e:
        print(f"{_PROG}: error: {e}", file=sys.stderr)
        return 2
    try:
        if args.cleanup:
            return _cleanup(opts, dry_run=args.dry_run)
        if args.dry_run:
            for fam in opts.families():
                print(f"# {_TOOLS[fam][0]} --noflush")
                print(restore_text(opts, fam), end="")
            return 0
        return _apply(opts)
    except _Failure as e:
        print(f"{_PROG}: {e}", file=sys.stderr)
        return 1
