"""Upstreams: nodes, load balancers, health state (sans-IO) and the active prober (asyncio).

Other packages import from here, not from the modules.
"""

from .balancer import (
    BALANCER_TYPES,
    BalanceContext,
    Balancer,
    BalancerType,
    ChashBalancer,
    DictContext,
    EwmaBalancer,
    HashOn,
    LeastConnBalancer,
    RoundRobinBalancer,
    chash_key,
    create_balancer,
    default_retries,
)
from .health import (
    ActiveChecks,
    Checks,
    HealthState,
    HealthyRule,
    InternalHealth,
    PassiveChecks,
    ProbeSpec,
    UnhealthyRule,
    build_probe_request,
    parse_checks,
    parse_status_line,
    probe_plan,
)
from .nodes import Node, default_port, parse_addr, parse_nodes
from .prober import ActiveProber

__all__ = [
    # nodes
    "Node",
    "parse_nodes",
    "parse_addr",
    "default_port",
    # balancer
    "BalanceContext",
    "DictContext",
    "Balancer",
    "BalancerType",
    "HashOn",
    "BALANCER_TYPES",
    "RoundRobinBalancer",
    "ChashBalancer",
    "LeastConnBalancer",
    "EwmaBalancer",
    "create_balancer",
    "default_retries",
    "chash_key",
    # health
    "HealthyRule",
    "UnhealthyRule",
    "ActiveChecks",
    "PassiveChecks",
    "Checks",
    "ProbeSpec",
    "HealthState",
    "InternalHealth",
    "parse_checks",
    "probe_plan",
    "build_probe_request",
    "parse_status_line",
    # prober
    "ActiveProber",
]
