from __future__ import annotations

import pytest

from meshgate.errors import ConfigError
from meshgate.upstream import (
    HealthState,
    Node,
    build_probe_request,
    parse_checks,
    parse_status_line,
    probe_plan,
)

A = Node("10.0.0.1", 80, 1)
B = Node("10.0.0.2", 80, 1)
ACTIVE = {"active": {}}
BOTH = {"active": {}, "passive": {}}


def counter(state, node):
    return state.counters(node)


# ---------------------------------------------------------------- defaults


def test_active_defaults_exactly_apisix():
    a = parse_checks({"active": {}}).active
    assert a.type == "http"
    assert a.timeout == 1
    assert a.concurrency == 10
    assert a.http_path == "/"
    assert a.http_method == "GET"
    assert a.http_req_body == ""
    assert a.host is None and a.port is None
    assert a.https_verify_certificate is True
    assert a.req_headers == ()
    assert a.healthy.interval == 1
    assert a.healthy.http_statuses == {200, 302}
    assert a.healthy.successes == 2
    assert a.unhealthy.interval == 1
    assert a.unhealthy.http_statuses == {429, 404, 500, 501, 502, 503, 504, 505}
    assert a.unhealthy.http_failures == 5
    assert a.unhealthy.tcp_failures == 2
    assert a.unhealthy.timeouts == 3


def test_passive_defaults_exactly_apisix():
    p = parse_checks({"active": {}, "passive": {}}).passive
    assert p.type == "http"
    assert p.healthy.http_statuses == {200, 201, 202, 203, 204, 205, 206, 207, 208, 226,
                                       300, 301, 302, 303, 304, 305, 306, 307, 308}
    assert p.healthy.successes == 5
    assert p.unhealthy.http_statuses == {429, 500, 503}
    assert p.unhealthy.http_failures == 5
    assert p.unhealthy.tcp_failures == 2
    assert p.unhealthy.timeouts == 7


def test_partial_sections_keep_other_defaults():
    c = parse_checks({"active": {"healthy": {"successes": 1}, "unhealthy": {"http_statuses": [500]}}})
    assert c.active.healthy.successes == 1
    assert c.active.healthy.http_statuses == {200, 302}
    assert c.active.unhealthy.http_statuses == {500}
    assert c.active.unhealthy.http_failures == 5
    assert c.passive is None
    assert parse_checks(None).active is None


@pytest.mark.parametrize(
    ("checks", "pointer"),
    [
        ({"active": {"type": "udp"}}, "/checks/active/type"),
        ({"active": {"timeout": 0}}, "/checks/active/timeout"),
        ({"active": {"concurrency": 0}}, "/checks/active/concurrency"),
        ({"active": {"port": 70000}}, "/checks/active/port"),
        ({"active": {"http_path": "status"}}, "/checks/active/http_path"),
        ({"active": {"healthy": {"successes": 255}}}, "/checks/active/healthy/successes"),
        ({"active": {"healthy": {"interval": -1}}}, "/checks/active/healthy/interval"),
        ({"active": {"unhealthy": {"http_statuses": [200, "x"]}}}, "/checks/active/unhealthy/http_statuses/1"),
        ({"active": {"req_headers": ["bad"]}}, "/checks/active/req_headers/0"),
        ({"active": [], "passive": {}}, "/checks/active"),
        ({"passive": {"unhealthy": {"timeouts": True}}}, "/checks/passive/unhealthy/timeouts"),
        ("yes", "/checks"),
    ],
)
def test_parse_errors(checks, pointer):
    with pytest.raises(ConfigError) as exc:
        parse_checks(checks)
    assert exc.value.pointer == pointer


# ---------------------------------------------------------------- thresholds


def test_starts_healthy_with_zero_counters():
    s = HealthState(ACTIVE, [A, B])
    assert s.is_healthy(A) and s.is_healthy(B)
    assert s.internal_status(A) == "healthy"
    assert counter(s, A) == {"success": 0, "http_failure": 0, "tcp_failure": 0, "timeout_failure": 0}


def test_active_http_failures_threshold():
    s = HealthState(ACTIVE, [A, B])
    for i in range(4):
        s.report_http(A, 500, active=True)
        assert s.is_healthy(A)
        assert s.internal_status(A) == "mostly_healthy"
    s.report_http(A, 500, active=True)
    assert not s.is_healthy(A)
    assert s.internal_status(A) == "unhealthy"
    assert s.is_healthy(B)
    # the counter that tripped stays visible (no reset on the transition itself)
    assert counter(s, A)["http_failure"] == 5
    # fully unhealthy: further failures are not counted
    s.report_http(A, 502, active=True)
    assert counter(s, A)["http_failure"] == 5


def test_active_recovery_needs_successes():
    s = HealthState(ACTIVE, [A])
    for _ in range(5):
        s.report_http(A, 503, active=True)
    assert not s.is_healthy(A)
    s.report_http(A, 200, active=True)
    assert s.internal_status(A) == "mostly_unhealthy" and not s.is_healthy(A)
    assert counter(s, A) == {"success": 1, "http_failure": 0, "tcp_failure": 0, "timeout_failure": 0}
    s.report_http(A, 302, active=True)
    assert s.is_healthy(A) and s.internal_status(A) == "healthy"
    assert counter(s, A)["success"] == 2
    # fully healthy: successes are not counted any more
    s.report_http(A, 200, active=True)
    assert counter(s, A)["success"] == 2
    # the next failure clears the success counter
    s.report_http(A, 500, active=True)
    assert counter(s, A) == {"success": 0, "http_failure": 1, "tcp_failure": 0, "timeout_failure": 0}


def test_tcp_failures_and_timeouts_thresholds():
    s = HealthState(ACTIVE, [A, B])
    s.report_tcp_failure(A, active=True)
    assert s.is_healthy(A)
    s.report_tcp_failure(A, active=True)
    assert not s.is_healthy(A)
    for _ in range(2):
        s.report_timeout(B, active=True)
        assert s.is_healthy(B)
    s.report_timeout(B, active=True)
    assert not s.is_healthy(B)
    assert counter(s, B)["timeout_failure"] == 3


def test_failure_kinds_count_separately_and_success_resets_all():
    s = HealthState(ACTIVE, [A])
    s.report_http(A, 500, active=True)
    s.report_timeout(A, active=True)
    s.report_tcp_failure(A, active=True)
    # a failure resets only the success counter; other failure kinds keep counting
    assert counter(s, A) == {"success": 0, "http_failure": 1, "tcp_failure": 1, "timeout_failure": 1}
    s.report_http(A, 200, active=True)
    assert counter(s, A) == {"success": 1, "http_failure": 0, "tcp_failure": 0, "timeout_failure": 0}
    # mostly_healthy needs `successes` successes to become fully healthy again
    assert s.internal_status(A) == "mostly_healthy"
    s.report_http(A, 200, active=True)
    assert s.internal_status(A) == "healthy"


def test_interleaved_failures_never_reach_threshold():
    s = HealthState(ACTIVE, [A])
    for _ in range(20):
        s.report_http(A, 500, active=True)
        s.report_http(A, 500, active=True)
        s.report_http(A, 200, active=True)
    assert s.is_healthy(A)


def test_mostly_unhealthy_failure_keeps_state_then_trips():
    s = HealthState(ACTIVE, [A])
    s.report_tcp_failure(A, active=True)
    s.report_tcp_failure(A, active=True)
    s.report_tcp_success(A)
    assert s.internal_status(A) == "mostly_unhealthy"
    s.report_tcp_failure(A, active=True)
    assert s.internal_status(A) == "mostly_unhealthy"
    assert counter(s, A) == {"success": 0, "http_failure": 0, "tcp_failure": 1, "timeout_failure": 0}
    s.report_tcp_failure(A, active=True)
    assert s.internal_status(A) == "unhealthy"


def test_unknown_statuses_are_ignored_and_missing_status_is_failure():
    s = HealthState({"active": {"unhealthy": {"http_failures": 1}}}, [A])
    s.report_http(A, 418, active=True)
    s.report_http(A, 201, active=True)  # not an active healthy status either
    assert s.internal_status(A) == "healthy"
    s.report_http(A, None, active=True)  # unparsable status line
    assert not s.is_healthy(A)


def test_zero_threshold_disables_counter():
    s = HealthState({"active": {"unhealthy": {"timeouts": 0}}}, [A])
    for _ in range(10):
        s.report_timeout(A, active=True)
    assert s.is_healthy(A)
    assert counter(s, A)["timeout_failure"] == 0


def test_passive_thresholds_and_shared_counters():
    s = HealthState(BOTH, [A])
    for _ in range(4):
        s.report_http(A, 500, active=False)
    s.report_http(A, 404, active=False)  # 404 is not a passive failure
    assert s.is_healthy(A)
    s.report_http(A, 500, active=True)  # active failure adds to the same counter
    assert not s.is_healthy(A)
    for _ in range(6):
        s.report_timeout(A, active=False)
    # passive recovery needs 5 successes (passive.healthy.successes)
    for i in range(4):
        s.report_http(A, 204, active=False)
        assert not s.is_healthy(A)
    s.report_http(A, 204, active=False)
    assert s.is_healthy(A)


def test_passive_timeouts_threshold_is_seven():
    s = HealthState(BOTH, [A])
    for _ in range(6):
        s.report_timeout(A, active=False)
    assert s.is_healthy(A)
    s.report_timeout(A, active=False)
    assert not s.is_healthy(A)


def test_passive_reports_ignored_without_passive_section():
    s = HealthState(ACTIVE, [A])
    for _ in range(20):
        s.report_http(A, 500, active=False)
        s.report_tcp_failure(A, active=False)
        s.report_timeout(A, active=False)
    assert s.is_healthy(A)
    assert counter(s, A)["http_failure"] == 0


def test_passive_only_recovers_only_through_passive_successes():
    s = HealthState({"passive": {}}, [A])
    assert probe_plan({"passive": {}}) is None
    for _ in range(5):
        s.report_http(A, 503, active=False)
    assert not s.is_healthy(A)
    s.report_http(A, 200, active=True)  # no active section: ignored
    assert not s.is_healthy(A)
    for _ in range(5):
        s.report_http(A, 200, active=False)
    assert s.is_healthy(A)


def test_tcp_type_success():
    s = HealthState({"active": {"type": "tcp"}}, [A])
    s.report_tcp_failure(A, active=True)
    s.report_tcp_failure(A, active=True)
    assert not s.is_healthy(A)
    s.report_tcp_success(A)
    s.report_tcp_success(A)
    assert s.is_healthy(A)


# ---------------------------------------------------------------- targets, callbacks, snapshot


def test_on_change_fires_on_visible_flips_only():
    events = []
    s = HealthState(ACTIVE, [A, B], on_change=lambda n, h: events.append((n, h)))
    s.report_http(A, 500, active=True)  # -> mostly_healthy: still healthy
    assert events == []
    s.report_tcp_failure(A, active=True)
    s.report_tcp_failure(A, active=True)
    assert events == [(A, False)]
    s.report_http(A, 200, active=True)
    s.report_http(A, 200, active=True)
    assert events == [(A, False), (A, True)]


def test_set_healthy_forces_and_clears_counters():
    events = []
    s = HealthState(ACTIVE, [A], on_change=lambda n, h: events.append(h))
    s.report_http(A, 500, active=True)
    s.set_healthy(A, False)
    assert not s.is_healthy(A) and s.internal_status(A) == "unhealthy"
    assert counter(s, A) == {"success": 0, "http_failure": 0, "tcp_failure": 0, "timeout_failure": 0}
    s.set_healthy(A, False)
    s.set_healthy(A, True)
    assert events == [False, True]


def test_active_port_groups_nodes_into_one_target():
    n1, n2 = Node("h", 8001, 1), Node("h", 8002, 1)
    events = []
    s = HealthState({"active": {"port": 9000}}, [n1, n2], on_change=lambda n, h: events.append(n))
    s.report_tcp_failure(n1, active=True)
    s.report_tcp_failure(n2, active=True)
    assert not s.is_healthy(n1) and not s.is_healthy(n2)
    assert events == [n1, n2]
    assert s.snapshot() == [
        {"ip": "h", "port": 9000, "status": "unhealthy",
         "counter": {"success": 0, "http_failure": 0, "tcp_failure": 2, "timeout_failure": 0}}
    ]


def test_unknown_node_is_healthy():
    s = HealthState(ACTIVE, [A])
    s.report_http(B, 500, active=True)
    assert s.is_healthy(B)
    assert s.internal_status(B) is None


def test_snapshot():
    s = HealthState(ACTIVE, [A, B])
    for _ in range(5):
        s.report_http(B, 500, active=True)
    s.report_timeout(A, active=True)
    assert s.snapshot() == [
        {"ip": "10.0.0.1", "port": 80, "status": "healthy",
         "counter": {"success": 0, "http_failure": 0, "tcp_failure": 0, "timeout_failure": 1}},
        {"ip": "10.0.0.2", "port": 80, "status": "unhealthy",
         "counter": {"success": 0, "http_failure": 5, "tcp_failure": 0, "timeout_failure": 0}},
    ]
    detailed = s.snapshot(apisix_states=True)
    assert [e["status"] for e in detailed] == ["mostly_healthy", "unhealthy"]
    assert detailed[0]["hostname"] == "10.0.0.1"


def test_previous_state_is_carried_over():
    s1 = HealthState(ACTIVE, [A, B])
    for _ in range(5):
        s1.report_http(B, 500, active=True)
    C = Node("10.0.0.3", 80, 1)
    s2 = HealthState(ACTIVE, [B, C], previous=s1)
    assert not s2.is_healthy(B)
    assert s2.counters(B)["http_failure"] == 5
    assert s2.is_healthy(C)


# ---------------------------------------------------------------- probe plan


def test_probe_plan_defaults():
    spec = probe_plan({"active": {}})
    assert spec.type == "http" and spec.method == "GET" and spec.path == "/"
    assert spec.timeout == 1 and spec.concurrency == 10
    assert spec.healthy_interval == 1 and spec.unhealthy_interval == 1
    assert spec.verify_certificate is True
    assert spec.healthy_statuses == {200, 302}
    assert spec.host is None and spec.port is None and spec.headers == () and spec.body == b""
    assert spec.target(A) == ("10.0.0.1", 80)
    assert spec.host_header(A) == "10.0.0.1"
    assert spec.host_header(Node("::1", 80, 1)) == "[::1]"


def test_probe_plan_and_request():
    spec = probe_plan(
        {
            "active": {
                "type": "https",
                "http_path": "/status?x=1",
                "host": "svc.example",
                "port": 8443,
                "req_headers": ["User-Agent: meshgate", "X-A: b: c"],
                "https_verify_certificate": False,
                "healthy": {"interval": 0.5},
                "unhealthy": {"interval": 2},
            }
        }
    )
    assert spec.type == "https" and spec.verify_certificate is False
    assert spec.target(A) == ("10.0.0.1", 8443)
    assert spec.healthy_interval == 0.5 and spec.unhealthy_interval == 2
    assert build_probe_request(spec, A) == (
        b"GET /status?x=1 HTTP/1.1\r\nConnection: close\r\nUser-Agent: meshgate\r\nX-A: b: c\r\n"
        b"Host: svc.example\r\n\r\n"
    )


def test_probe_request_with_body_and_custom_host():
    spec = probe_plan({"active": {"http_method": "POST", "http_req_body": "ping",
                                  "req_headers": ["Host: custom"]}})
    assert build_probe_request(spec, A) == (
        b"POST / HTTP/1.1\r\nConnection: close\r\nHost: custom\r\nContent-Length: 4\r\n\r\nping"
    )


def test_parse_status_line():
    assert parse_status_line(b"HTTP/1.1 200 OK\r\n") == 200
    assert parse_status_line(b"http/1.0  503\r\n") == 503
    assert parse_status_line(b"HTTP/2 200\r\n") is None
    assert parse_status_line(b"garbage\r\n") is None
    assert parse_status_line(b"") is None
