"""The `meshgate` command line: wiring only."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from .. import __version__, _accel

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # CONTRACT: bad flags -> a one-line reason on stderr, exit 2
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="meshgate", description="APISIX-compatible API gateway and mesh data plane.")
    ap.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                    help="log level (INFO also prints the access log)")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")
    run = sub.add_parser("run", help="start the gateway")
    run.add_argument("-c", "--config", help="node config (default conf/config.yaml, else an embedded standalone default)")
    val = sub.add_parser("validate", help="check a node config and/or an apisix.yaml")
    val.add_argument("-c", "--config", help="node config file to check")
    val.add_argument("routes_file", nargs="?", help="apisix.yaml to check (default: the one next to the node config)")
    demo = sub.add_parser("demo", help="gateway + Bookinfo-like demo services on loopback")
    demo.add_argument("--port", type=int, default=9080, help="gateway port (default 9080)")
    demo.add_argument("--services-port", type=int, default=19080, help="first port of the demo services (default 19080)")
    demo.add_argument("--control-port", type=int, default=9090, help="Control API port (default 9090)")
    demo.add_argument("--dir", default=None, help="where to write the demo config (default: a temporary directory)")
    from .iptables import add_parser as add_iptables_parser

    add_iptables_parser(sub)
    from .mesh import add_parser as add_mesh_parser

    add_mesh_parser(sub)
    from .ingress_controller import add_parser as add_ingress_controller_parser

    add_ingress_controller_parser(sub)
    from .mesh_controller import add_parser as add_mesh_controller_parser

    add_mesh_controller_parser(sub)
    sub.add_parser("version", help="print the version")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cmd is None:
        ap.print_help()
        return 2
    if args.cmd == "version":
        from ..proxy import codec
        print(f"meshgate {__version__}\nhot path: {_accel.status()}\n"
              f"head codec: {codec.NAME}{f' ({codec.WHY_NOT})' if codec.NATIVE is None else ''}")
        return 0
    if args.cmd == "validate":
        from .validate import validate

        return validate(args.config, args.routes_file)
    if args.cmd == "iptables":
        from .iptables import run as run_iptables

        return run_iptables(args)
    if args.cmd == "ingress-controller":
        from .ingress_controller import run as run_ingress_controller

        return run_ingress_controller(args)
    if args.cmd == "mesh-controller":
        from .mesh_controller import run as run_mesh_controller

        return run_mesh_controller(args)
    from ..config import NodeConfigErrors
    from .gateway import GatewayError, resolve_node_config, run_gateway

    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    try:
        if args.cmd == "run":
            node = resolve_node_config(args.config)
            return asyncio.run(run_gateway(node, log_level=args.log_level))
        if args.cmd == "mesh":
            from .mesh import run_mesh

            return asyncio.run(run_mesh(args, log_level=args.log_level))
        if args.cmd == "demo":
            from .demo import run_demo

            return asyncio.run(run_demo(port=args.port, services_port=args.services_port, control_port=args.control_port, workdir=args.dir,
                                        log_level=args.log_level))
    except NodeConfigErrors as e:
        print(f"meshgate: {e}", file=sys.stderr)
        return 1
    except GatewayError as e:
        print(f"meshgate: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"meshgate: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
