"""The command line as CONTRACT.md states it: exit codes and one-line reasons."""

from __future__ import annotations

import subprocess
import sys

from gwtools import free_port


def meshgate(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshgate", *args], capture_output=True, text=True, timeout=30,
                          cwd=cwd)


def test_version():
    r = meshgate("version")
    assert r.returncode == 0 and r.stdout.startswith("meshgate ")


def test_bad_flag_is_one_line_and_exit_2():
    r = meshgate("run", "--bogus")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "--bogus" in r.stderr


def test_bad_node_config_lists_every_error_exit_1(tmp_path):
    conf = tmp_path / "config.yaml"
    conf.write_text("apisix:\n  node_listen: x\nnginx_config:\n  http:\n    keepalive_timeout: soon\n")
    r = meshgate("run", "-c", str(conf))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "/apisix/node_listen" in r.stderr and "/nginx_config/http/keepalive_timeout" in r.stderr


def test_validate_reports_kind_id_pointer(tmp_path):
    f = tmp_path / "apisix.yaml"
    f.write_text("routes:\n  - id: r1\n    uri: /a\n    upstream: {nodes: {'127.0.0.1:1': -1}}\n"
                 "  - id: r2\n    uri: /b\n    filter_func: 'function(vars) return true end'\n"
                 "    upstream: {nodes: {'127.0.0.1:1': 1}}\n#END\n")
    r = meshgate("validate", str(f))
    assert r.returncode == 1
    assert "routes id=r1: /routes/0/upstream/nodes" in r.stderr
    assert "routes id=r2" in r.stderr and "filter_func" in r.stderr
    good = tmp_path / "good.yaml"
    good.write_text("routes:\n  - id: 1\n    uri: /a\n    upstream: {nodes: {'127.0.0.1:1': 1}}\n#END\n")
    assert meshgate("validate", str(good)).returncode == 0


def test_validate_runs_every_check_the_gateway_runs(tmp_path):
    f = tmp_path / "apisix.yaml"
    f.write_text("routes:\n"
                 "  - {id: r1, uri: /a, vars: [[arg_x, '<>', '1']], upstream: {nodes: {'127.0.0.1:1': 1}}}\n"
                 "  - {id: r2, uri: /b, service_id: nope, plugins: {key-auth: {header: 5}}}\n"
                 "  - {id: r3, uri: /c, upstream_id: missing}\n"
                 "consumers:\n  - {username: jack, plugins: {key-auth: {}}}\n#END\n")
    r = meshgate("validate", str(f))
    assert r.returncode == 1, r.stderr
    err = r.stderr
    assert "routes id=r1: /vars/0/1: unknown operator '<>'" in err            # the router's check
    assert 'routes id=r2: /plugins/key-auth/header: failed to check the configuration of plugin key-auth' in err
    assert 'consumers id=jack: /plugins/key-auth: failed to check the configuration of plugin key-auth err: ' \
           'property "key" is required' in err                                # the consumer schema
    # dangling references are warnings, as APISIX accepts them from files
    assert 'warning: ' in err and 'routes id=r3: /upstream_id: references upstream "missing"' in err
    assert "invalid: 3 error(s)" in err
    ok = tmp_path / "ok.yaml"
    ok.write_text("routes:\n  - {id: r3, uri: /c, upstream_id: missing}\n#END\n")
    r = meshgate("validate", str(ok))
    assert r.returncode == 0 and "references upstream" in r.stderr


def test_validate_checks_stream_routes_as_a_worker_compiles_them(tmp_path):
    f = tmp_path / "apisix.yaml"
    f.write_text("stream_routes:\n"
                 "  - {id: s1, server_port: 9100, upstream: {nodes: {'127.0.0.1:1': 1}}, plugins: {syslog: {host: x}}}\n"
                 "  - {id: s2, server_port: 9101, upstream_id: missing}\n"
                 "  - {id: s3, server_port: 9102, upstream: {nodes: {'127.0.0.1:1': 1}}}\n#END\n")
    r = meshgate("validate", str(f))
    assert r.returncode == 1, r.stderr
    assert "stream_routes id=s1: /plugins: plugin syslog does not run on stream routes" in r.stderr
    assert "stream_routes id=s2: /upstream: no upstream" in r.stderr
    assert "id=s3" not in r.stderr


def test_port_in_use_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        conf = tmp_path / "config.yaml"
        conf.write_text(f"apisix:\n  node_listen: [{{ip: 127.0.0.1, port: {port}}}]\n  control: {{port: {free_port()}}}\n"
                        "deployment:\n  role: data_plane\n  role_data_plane: {config_provider: yaml}\n")
        (tmp_path / "apisix.yaml").write_text("routes: []\n#END\n")
        r = meshgate("run", "-c", str(conf))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and f"{port}" in r.stderr
