"""The Bookinfo-like demo behind ``meshgate demo``: services, gateway config, instructions.

Typical use (what the CLI does)::

    services = await start_demo_services(base_port=19080, gateway_url="http://127.0.0.1:9080")
    Path("apisix.yaml").write_text(demo_apisix_yaml(services.ports))
    print(demo_instructions(9080))
    ...
    await services.close()
"""

from .client import DemoHTTPResponse, http_request
from .config import default_ports, demo_apisix_yaml, demo_instructions
from .services import DEFAULT_BASE_PORT, SERVICE_NAMES, DemoServices, start_demo_services

__all__ = [
    "DEFAULT_BASE_PORT",
    "SERVICE_NAMES",
    "DemoHTTPResponse",
    "DemoServices",
    "default_ports",
    "demo_apisix_yaml",
    "demo_instructions",
    "http_request",
    "start_demo_services",
]
