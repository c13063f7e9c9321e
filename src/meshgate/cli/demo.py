"""`meshgate demo`: the gateway in front of Bookinfo-like demo services on loopback."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..config import parse_node_config
from ..demo import demo_apisix_yaml, demo_instructions, start_demo_services
from .gateway import run_gateway

__all__ = ["run_demo"]


async def run_demo(*, port: int, services_port: int, control_port: int = 9090, workdir: str | None,
                   log_level: str) -> int:
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="meshgate-demo-")
        workdir = tmp.name
    d = Path(workdir)
    d.mkdir(parents=True, exist_ok=True)
    svc = await start_demo_services(base_port=services_port, gateway_url=f"http://127.0.0.1:{port}")
    try:
        (d / "apisix.yaml").write_text(demo_apisix_yaml(svc.ports))
        conf = {
            "apisix": {"node_listen": [{"ip": "127.0.0.1", "port": port}], "ssl": {"enable": False},
                       "control": {"ip": "127.0.0.1", "port": control_port}},
            "nginx_config": {"worker_processes": 1, "worker_shutdown_timeout": "5s"},
            "deployment": {"role": "data_plane", "role_data_plane": {"config_provider": "yaml"}},
        }
        import yaml

        cfile = d / "config.yaml"
        cfile.write_text(yaml.safe_dump(conf))
        node = parse_node_config(conf, source=str(cfile), path=cfile)

        async def ready(_: object) -> None:
            print(demo_instructions(port), flush=True)
            print(f"\nconfig: {cfile} and {d / 'apisix.yaml'} (edit apisix.yaml: it is reloaded live)", flush=True)
            print(f"Control API: curl http://127.0.0.1:{control_port}/v1/routes   |   Ctrl-C to stop", flush=True)

        return await run_gateway(node, log_level=log_level, on_ready=ready)
    finally:
        await svc.close()
        if tmp is not None:
            tmp.cleanup()
