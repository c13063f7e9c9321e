"""Sans-IO health state of upstream nodes, with the semantics of lua-resty-healthcheck.

Theory of operation
-------------------
APISIX builds one checker per upstream from its ``checks`` object; this module is that
checker's state machine, fed by reports: active probe results (from the prober) and passive
observations (from proxied responses).  Nothing here sleeps or touches sockets.

*Targets.* One target per distinct ``(host, port)`` where ``port`` is ``checks.active.port``
when set, else the node's port (APISIX registers targets with the probe port, so nodes that
differ only by port share one target then).  Every target starts **healthy**.

*Counters.* Each target has four counters: ``success``, ``http_failure``, ``tcp_failure``,
``timeout_failure``.  They are shared by active and passive reports; only the thresholds come
from the ``active`` or ``passive`` section of the report's kind.  A success resets all three
failure counters; a failure of any kind resets only the success counter (failure counters of
other kinds keep their value).

*States.* Internally four, as lua-resty-healthcheck >= 2 and the APISIX Control API:

    healthy --failure--> mostly_healthy --failures reach a threshold--> unhealthy
    unhealthy --success--> mostly_unhealthy --successes reach threshold--> healthy

``mostly_healthy`` counts as healthy and ``mostly_unhealthy`` as unhealthy.  Reports that
agree with a *fully* healthy / unhealthy target are not counted at all (a healthy target
does not accumulate successes; an unhealthy one does not accumulate failures).  A counter
reaching its threshold moves the target to the reported side at once, whatever the other
counters hold.  There is no separate "reset on state change": the counter that tripped keeps
its value (the Control API shows e.g. ``http_failure: 5`` on an unhealthy node) until the
first report of the opposite polarity clears it.  :meth:`HealthState.set_healthy` forces a
status and clears every counter (``set_target_status``).

*Classification.* An HTTP status in ``healthy.http_statuses`` is a success, one in
``unhealthy.http_statuses`` (or ``None``/0 = no parsable status line) is an ``http_failure``,
anything else is ignored.  A threshold of 0 disables that counter (lua-resty-healthcheck).

*Active vs passive.* Reports are counted only when the corresponding section exists in
``checks``: APISIX reports passive results only when ``checks.passive`` is configured, and
probes only when ``checks.active`` is.  APISIX requires ``active`` whenever ``checks`` is set
(schema); this module still accepts a passive-only ``checks``, with the consequence APISIX
documents: a node that passive checks marked unhealthy receives no traffic, hence no passive
successes, until *every* node is unhealthy (the balancer then uses all of them) -- only then
can ``passive.healthy.successes`` good responses bring it back.

*Sharing.* ``on_change(node, healthy)`` fires whenever the externally visible status of a
target flips (once per node mapped to it), so one owner process can run the prober and
broadcast; replicas apply the broadcast with :meth:`HealthState.set_healthy`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from meshgate.errors import ConfigError

from .nodes import Node

__all__ = [
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
]

InternalHealth = Literal["healthy", "mostly_healthy", "mostly_unhealthy", "unhealthy"]
CheckType = Literal["http", "https", "tcp"]

# ----------------------------------------------------------------------------- defaults
# apisix-semantics.md 4.1 (APISIX upstream schema / lua-resty-healthcheck defaults).

ACTIVE_HEALTHY_STATUSES = (200, 302)
ACTIVE_UNHEALTHY_STATUSES = (429, 404, 500, 501, 502, 503, 504, 505)
PASSIVE_HEALTHY_STATUSES = (200, 201, 202, 203, 204, 205, 206, 207, 208, 226,
                            300, 301, 302, 303, 304, 305, 306, 307, 308)
PASSIVE_UNHEALTHY_STATUSES = (429, 500, 503)


@dataclass(frozen=True, slots=True)
class HealthyRule:
    interval: float
    http_statuses: frozenset[int]
    successes: int


@dataclass(frozen=True, slots=True)
class UnhealthyRule:
    interval: float
    http_statuses: frozenset[int]
    http_failures: int
    tcp_failures: int
    timeouts: int


@dataclass(frozen=True, slots=True)
class ActiveChecks:
    type: CheckType = "http"
    timeout: float = 1.0
    concurrency: int = 10
    http_path: str = "/"
    http_method: str = "GET"
    http_req_body: str = ""
    host: str | None = None
    port: int | None = None
    https_verify_certificate: bool = True
    req_headers: tuple[tuple[str, str], ...] = ()
    healthy: HealthyRule = HealthyRule(1, frozenset(ACTIVE_HEALTHY_STATUSES), 2)
    unhealthy: UnhealthyRule = UnhealthyRule(1, frozenset(ACTIVE_UNHEALTHY_STATUSES), 5, 2, 3)


@dataclass(frozen=True, slots=True)
class PassiveChecks:
    type: CheckType = "http"
    healthy: HealthyRule = HealthyRule(0, frozenset(PASSIVE_HEALTHY_STATUSES), 5)
    unhealthy: UnhealthyRule = UnhealthyRule(0, frozenset(PASSIVE_UNHEALTHY_STATUSES), 5, 2, 7)


@dataclass(frozen=True, slots=True)
class Checks:
    active: ActiveChecks | None
    passive: PassiveChecks | None


# ----------------------------------------------------------------------------- parsing


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _get_mapping(obj: Mapping[str, Any], key: str, ptr: str) -> Mapping[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{ptr}/{key}", "expected an object")
    return value


def _count(obj: Mapping[str, Any], key: str, default: int, ptr: str) -> int:
    value = obj.get(key, default)
    if not _is_int(value) or not 0 <= value <= 254:
        raise ConfigError(f"{ptr}/{key}", f"invalid value {value!r}: expected an integer in 0..254 (0 disables)")
    return int(value)


def _number(obj: Mapping[str, Any], key: str, default: float, ptr: str, *, minimum: float = 0) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ConfigError(f"{ptr}/{key}", f"invalid value {value!r}: expected a number >= {minimum:g}")
    return float(value)


def _statuses(obj: Mapping[str, Any], key: str, default: Iterable[int], ptr: str) -> frozenset[int]:
    value = obj.get(key)
    if value is None:
        return frozenset(default)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{ptr}/{key}", "expected an array of HTTP status codes")
    for i, code in enumerate(value):
        if not _is_int(code) or not 100 <= code <= 599:
            raise ConfigError(f"{ptr}/{key}/{i}", f"invalid status {code!r}: expected an integer in 100..599")
    return frozenset(value)


def _type(obj: Mapping[str, Any], ptr: str) -> CheckType:
    value = obj.get("type", "http")
    if value not in ("http", "https", "tcp"):
        raise ConfigError(f"{ptr}/type", f"invalid type {value!r}: expected http, https or tcp")
    return value  # type: ignore[no-any-return]


def _healthy(obj: Mapping[str, Any], ptr: str, *, interval: float, statuses: Iterable[int], successes: int) -> HealthyRule:
    return HealthyRule(
        interval=_number(obj, "interval", interval, ptr),
        http_statuses=_statuses(obj, "http_statuses", statuses, ptr),
        successes=_count(obj, "successes", successes, ptr),
    )


def _unhealthy(
    obj: Mapping[str, Any], ptr: str, *, interval: float, statuses: Iterable[int], http: int, tcp: int, timeouts: int
) -> UnhealthyRule:
    return UnhealthyRule(
        interval=_number(obj, "interval", interval, ptr),
        http_statuses=_statuses(obj, "http_statuses", statuses, ptr),
        http_failures=_count(obj, "http_failures", http, ptr),
        tcp_failures=_count(obj, "tcp_failures", tcp, ptr),
        timeouts=_count(obj, "timeouts", timeouts, ptr),
    )


def _req_headers(value: object, ptr: str) -> tuple[tuple[str, str], ...]:
    """APISIX spells ``req_headers`` as ``["Name: value", ...]``; a mapping is accepted too."""
    if value is None:
        return ()
    out: list[tuple[str, str]] = []
    if isinstance(value, Mapping):
        for name, v in value.items():
            for item in v if isinstance(v, (list, tuple)) else (v,):
                out.append((str(name), str(item)))
    elif isinstance(value, (list, tuple)):
        for i, line in enumerate(value):
            if not isinstance(line, str) or ":" not in line:
                raise ConfigError(f"{ptr}/{i}", f"invalid header {line!r}: expected \"Name: value\"")
            name, _, v = line.partition(":")
            out.append((name.strip(), v.strip()))
    else:
        raise ConfigError(ptr, "expected an array of \"Name: value\" strings")
    for name, v in out:
        if not name or any(c in name for c in " \t\r\n:") or "\r" in v or "\n" in v:
            raise ConfigError(ptr, f"invalid header {name!r}")
    return tuple(out)


def parse_checks(checks: Mapping[str, Any] | Checks | None, *, pointer: str = "/checks") -> Checks:
    """Apply APISIX's defaults to an upstream's ``checks`` object.

    Validation is deliberately light (types and ranges the state machine relies on); the
    APISIX JSON schema is the model's business.  Thresholds accept 0 (= disabled) and
    intervals accept 0 (= that probe loop disabled), like lua-resty-healthcheck.
    """
    if isinstance(checks, Checks):
        return checks
    if checks is None:
        return Checks(None, None)
    if not isinstance(checks, Mapping):
        raise ConfigError(pointer, "expected an object")
    active: ActiveChecks | None = None
    passive: PassiveChecks | None = None
    if checks.get("active") is not None:
        a = _get_mapping(checks, "active", pointer)
        p = f"{pointer}/active"
        port = a.get("port")
        if port is not None and (not _is_int(port) or not 1 <= port <= 65535):
            raise ConfigError(f"{p}/port", f"invalid port {port!r}: expected an integer in 1..65535")
        host = a.get("host")
        if host is not None and (not isinstance(host, str) or not host):
            raise ConfigError(f"{p}/host", "expected a non-empty string")
        path = a.get("http_path", "/")
        if not isinstance(path, str) or not path.startswith("/") or any(c in path for c in " \r\n"):
            raise ConfigError(f"{p}/http_path", f"invalid path {path!r}: expected an absolute path")
        method = a.get("http_method", "GET")
        if not isinstance(method, str) or not re.fullmatch(r"[A-Z]+", method):
            raise ConfigError(f"{p}/http_method", f"invalid method {method!r}")
        body = a.get("http_req_body", "")
        if not isinstance(body, str):
            raise ConfigError(f"{p}/http_req_body", "expected a string")
        concurrency = a.get("concurrency", 10)
        if not _is_int(concurrency) or concurrency < 1:
            raise ConfigError(f"{p}/concurrency", f"invalid value {concurrency!r}: expected an integer >= 1")
        verify = a.get("https_verify_certificate", True)
        if not isinstance(verify, bool):
            raise ConfigError(f"{p}/https_verify_certificate", "expected a boolean")
        timeout = _number(a, "timeout", 1, p)
        if timeout <= 0:
            raise ConfigError(f"{p}/timeout", "expected a number > 0")
        active = ActiveChecks(
            type=_type(a, p),
            timeout=timeout,
            concurrency=int(concurrency),
            http_path=path,
            http_method=method,
            http_req_body=body,
            host=host,
            port=port,
            https_verify_certificate=verify,
            req_headers=_req_headers(a.get("req_headers"), f"{p}/req_headers"),
            healthy=_healthy(_get_mapping(a, "healthy", p), f"{p}/healthy",
                             interval=1, statuses=ACTIVE_HEALTHY_STATUSES, successes=2),
            unhealthy=_unhealthy(_get_mapping(a, "unhealthy", p), f"{p}/unhealthy", interval=1,
                                 statuses=ACTIVE_UNHEALTHY_STATUSES, http=5, tcp=2, timeouts=3),
        )
    if checks.get("passive") is not None:
        ps = _get_mapping(checks, "passive", pointer)
        p = f"{pointer}/passive"
        passive = PassiveChecks(
            type=_type(ps, p),
            healthy=_healthy(_get_mapping(ps, "healthy", p), f"{p}/healthy",
                             interval=0, statuses=PASSIVE_HEALTHY_STATUSES, successes=5),
            unhealthy=_unhealthy(_get_mapping(ps, "unhealthy", p), f"{p}/unhealthy", interval=0,
                                 statuses=PASSIVE_UNHEALTHY_STATUSES, http=5, tcp=2, timeouts=7),
        )
    return Checks(active, passive)


# ----------------------------------------------------------------------------- probe plan


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """What the active prober sends and how often (from ``checks.active``).

    ``host``/``port`` are the overrides from ``checks.active``; ``None`` = the node's own.
    """

    type: CheckType
    method: str
    path: str
    host: str | None
    port: int | None
    headers: tuple[tuple[str, str], ...]
    body: bytes
    timeout: float
    concurrency: int
    healthy_interval: float
    unhealthy_interval: float
    verify_certificate: bool
    healthy_statuses: frozenset[int]
    unhealthy_statuses: frozenset[int]

    def host_header(self, node: Node) -> str:
        """``checks.active.host`` or the node's host (IPv6 bracketed); no port, as
        lua-resty-healthcheck."""
        host = self.host if self.host is not None else node.host
        return f"[{host}]" if ":" in host else host

    def target(self, node: Node) -> tuple[str, int]:
        """Address to connect to: the node's host and ``checks.active.port`` or its port."""
        return node.host, self.port if self.port is not None else node.port


def probe_plan(checks: Mapping[str, Any] | Checks | None) -> ProbeSpec | None:
    """The active probe derived from ``checks`` (defaults applied); ``None`` without ``active``."""
    a = parse_checks(checks).active
    if a is None:
        return None
    return ProbeSpec(
        type=a.type,
        method=a.http_method,
        path=a.http_path,
        host=a.host,
        port=a.port,
        headers=a.req_headers,
        body=a.http_req_body.encode("utf-8"),
        timeout=a.timeout,
        concurrency=a.concurrency,
        healthy_interval=a.healthy.interval,
        unhealthy_interval=a.unhealthy.interval,
        verify_certificate=a.https_verify_certificate,
        healthy_statuses=a.healthy.http_statuses,
        unhealthy_statuses=a.unhealthy.http_statuses,
    )


def build_probe_request(spec: ProbeSpec, node: Node) -> bytes:
    """The raw HTTP/1.1 probe request (``Connection: close``; ``Content-Length`` with a body)."""
    lines = [f"{spec.method} {spec.path} HTTP/1.1", "Connection: close"]
    has_host = False
    for name, value in spec.headers:
        if name.lower() == "host":
            has_host = True
        lines.append(f"{name}: {value}")
    if not has_host:
        lines.append(f"Host: {spec.host_header(node)}")
    if spec.body:
        lines.append(f"Content-Length: {len(spec.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + spec.body


_STATUS_RE = re.compile(rb"^HTTP/\d+\.\d+\s+(\d+)", re.IGNORECASE)


def parse_status_line(line: bytes) -> int | None:
    """Status code from ``HTTP/x.y NNN ...``; ``None`` when the line is not a status line."""
    m = _STATUS_RE.match(line)
    return int(m.group(1)) if m else None


# ----------------------------------------------------------------------------- state machine


class _Target:
    __slots__ = ("host", "port", "nodes", "state", "success", "http", "tcp", "timeout")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.nodes: list[Node] = []
        self.state: InternalHealth = "healthy"
        self.success = 0
        self.http = 0
        self.tcp = 0
        self.timeout = 0

    @property
    def healthy(self) -> bool:
        return self.state == "healthy" or self.state == "mostly_healthy"


_CounterName = Literal["success", "http", "tcp", "timeout"]


class HealthState:
    """Health of an upstream's nodes; see the module docstring for the rules."""

    def __init__(
        self,
        checks: Mapping[str, Any] | Checks | None,
        nodes: Sequence[Node],
        *,
        on_change: Callable[[Node, bool], None] | None = None,
        previous: HealthState | None = None,
    ) -> None:
        """``previous``: a state for an earlier version of the same upstream; targets present in
        both keep their status and counters (APISIX keeps checker state across config changes)."""
        self.checks = parse_checks(checks)
        self.on_change = on_change
        self._probe_port = self.checks.active.port if self.checks.active else None
        self._targets: dict[tuple[str, int], _Target] = {}
        for node in nodes:
            key = self._key(node)
            t = self._targets.get(key)
            if t is None:
                t = self._targets[key] = _Target(*key)
                old = previous._targets.get(key) if previous is not None else None
                if old is not None:
                    t.state, t.success, t.http, t.tcp, t.timeout = old.state, old.success, old.http, old.tcp, old.timeout
            t.nodes.append(node)

    def _key(self, node: Node) -> tuple[str, int]:
        return node.host, self._probe_port if self._probe_port is not None else node.port

    @property
    def nodes(self) -> list[Node]:
        return [n for t in self._targets.values() for n in t.nodes]

    # -- queries

    def is_healthy(self, node: Node) -> bool:
        """False only for a known node whose target is (mostly_)unhealthy; unknown nodes are
        reported healthy (fail open)."""
        t = self._targets.get(self._key(node))
        return True if t is None else t.healthy

    def internal_status(self, node: Node) -> InternalHealth | None:
        t = self._targets.get(self._key(node))
        return None if t is None else t.state

    def counters(self, node: Node) -> dict[str, int] | None:
        t = self._targets.get(self._key(node))
        return None if t is None else self._counter_dict(t)

    @staticmethod
    def _counter_dict(t: _Target) -> dict[str, int]:
        return {"success": t.success, "http_failure": t.http, "tcp_failure": t.tcp, "timeout_failure": t.timeout}

    def snapshot(self, *, apisix_states: bool = False) -> list[dict[str, Any]]:
        """One entry per target for the Control API ``/v1/healthcheck``::

            {"ip", "port", "status": "healthy"|"unhealthy",
             "counter": {"success", "http_failure", "tcp_failure", "timeout_failure"}}

        ``apisix_states=True`` reports the four internal states (``mostly_healthy``,
        ``mostly_unhealthy`` too) and adds ``hostname``, as APISIX >= 3.6 does.
        """
        out: list[dict[str, Any]] = []
        for t in self._targets.values():
            entry: dict[str, Any] = {
                "ip": t.host,
                "port": t.port,
                "status": t.state if apisix_states else ("healthy" if t.healthy else "unhealthy"),
                "counter": self._counter_dict(t),
            }
            if apisix_states:
                entry["hostname"] = t.host
            out.append(entry)
        return out

    # -- reports

    def report_http(self, node: Node, status: int | None, *, active: bool) -> None:
        """An HTTP status seen by a probe (``active=True``) or a proxied response."""
        section = self.checks.active if active else self.checks.passive
        if section is None:
            return
        code = status or 0
        if code in section.healthy.http_statuses:
            self._incr(node, True, "success", section.healthy.successes)
        elif code == 0 or code in section.unhealthy.http_statuses:
            self._incr(node, False, "http", section.unhealthy.http_failures)

    def report_tcp_failure(self, node: Node, *, active: bool) -> None:
        """Connect / TLS handshake / send / receive failed (not by timeout)."""
        section = self.checks.active if active else self.checks.passive
        if section is not None:
            self._incr(node, False, "tcp", section.unhealthy.tcp_failures)

    def report_timeout(self, node: Node, *, active: bool) -> None:
        section = self.checks.active if active else self.checks.passive
        if section is not None:
            self._incr(node, False, "timeout", section.unhealthy.timeouts)

    def report_tcp_success(self, node: Node, *, active: bool = True) -> None:
        """A successful probe that has no HTTP status (``tcp`` checks: connected)."""
        section = self.checks.active if active else self.checks.passive
        if section is not None:
            self._incr(node, True, "success", section.healthy.successes)

    def set_healthy(self, node: Node, healthy: bool) -> None:
        """Force a status and clear the counters (lua-resty-healthcheck ``set_target_status``)."""
        t = self._targets.get(self._key(node))
        if t is None:
            return
        was = t.healthy
        t.success = t.http = t.tcp = t.timeout = 0
        t.state = "healthy" if healthy else "unhealthy"
        if was != healthy:
            self._notify(t)

    # -- the machine

    def _incr(self, node: Node, good: bool, counter: _CounterName, limit: int) -> None:
        if limit == 0:  # counter disabled by configuration
            return
        t = self._targets.get(self._key(node))
        if t is None:
            return
        if t.state == ("healthy" if good else "unhealthy"):
            return  # fully on that side already: not counted
        was = t.healthy
        if good:
            t.success += 1
            t.http = t.tcp = t.timeout = 0
            value = t.success
        else:
            t.success = 0
            value = getattr(t, counter) + 1
            setattr(t, counter, value)
        if value >= limit:
            t.state = "healthy" if good else "unhealthy"
        elif t.state == "healthy" and not good:
            t.state = "mostly_healthy"
        elif t.state == "unhealthy" and good:
            t.state = "mostly_unhealthy"
        if t.healthy != was:
            self._notify(t)

    def _notify(self, t: _Target) -> None:
        if self.on_change is not None:
            for n in t.nodes:
                self.on_change(n, t.healthy)
