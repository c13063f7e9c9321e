"""The plugin runtime through the real gateway: order, merge precedence, consumers, _meta,
async hooks, body access, filters, third-party plugins (docs/plugins.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gwtools import Upstream, http, start_gateway

# Test plugins: each appends "<name>:<tag>" to the X-Order request header in its rewrite
# (or access) phase, so the upstream sees the order and which conf won.
ORDER_PLUGIN = '''
NAME = "{name}"
PRIORITY = {prio}
SCHEMA = {{"type": "object", "properties": {{"tag": {{"type": "string"}}}}}}

def {phase}(conf, ctx):
    prev = ctx.req_header("x-order")
    item = "{name}:" + conf.get("tag", "-")
    ctx.set_req_header("X-Order", prev + "," + item if prev else item)
'''

AUTH_PLUGIN = '''
NAME = "t-auth"
PRIORITY = 2500
TYPE = "auth"
SCHEMA = {"type": "object"}
CONSUMER_SCHEMA = {"type": "object", "properties": {"user": {"type": "string"}}, "required": ["user"]}

def rewrite(conf, ctx):
    user = ctx.req_header("x-user")
    if user is None:
        return 401, {"message": "Missing user"}
    found = ctx.find_consumer("t-auth", "user", user)
    if found is None:
        return 401, {"message": "Invalid user/key"}
    ctx.attach_consumer(found[0], found[1])
'''

ASYNC_PLUGIN = '''
import asyncio
NAME = "t-async"
PRIORITY = 50
SCHEMA = {"type": "object"}

async def access(conf, ctx):
    body = await ctx.read_body()
    await asyncio.sleep(0.01)
    if body == b"deny":
        return 403, "denied by body\\n", {"X-Why": "body"}
    if body:
        ctx.set_body(body.upper())
    ctx.set_req_header("X-Async", "done")
'''

FILTER_PLUGIN = '''
NAME = "t-filter"
PRIORITY = 40
SCHEMA = {"type": "object"}

def rewrite(conf, ctx):
    ctx.set_resp_header("X-Early", "1")

def header_filter(conf, ctx):
    ctx.set_resp_header("X-Status-Seen", str(ctx.resp_status))
    ctx.body_modified()

def body_filter(conf, ctx):
    ctx.chunk = ctx.chunk.replace(b"GET", b"got")
    if ctx.eof:
        ctx.chunk += b"[end]"
'''


DENY_PLUGIN = '''
NAME = "t-deny"
PRIORITY = 60
SCHEMA = {"type": "object"}

def access(conf, ctx):
    if ctx.req_header("x-deny") == "bare":
        return 403
    if ctx.req_header("x-deny") == "nobody":
        return 429, None, {"Retry-After": "1"}
'''


def write_plugins(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, prio, phase in (("p-a", 300, "rewrite"), ("p-b", 200, "rewrite"), ("p-c", 100, "rewrite"),
                              ("p-g", 250, "rewrite"), ("p-x", 150, "access")):
        (d / f"{name.replace('-', '_')}.py").write_text(ORDER_PLUGIN.format(name=name, prio=prio, phase=phase))
    (d / "t_auth.py").write_text(AUTH_PLUGIN)
    (d / "t_async.py").write_text(ASYNC_PLUGIN)
    (d / "t_filter.py").write_text(FILTER_PLUGIN)
    (d / "t_deny.py").write_text(DENY_PLUGIN)
    return d


def gateway(tmp_path: Path, routes: dict, extra: dict[str, str] | None = None, **kw):
    """A gateway loading the test plugins (and ``extra``: file name -> source) from a directory."""
    plugins = write_plugins(tmp_path / "plugins")
    for fn, src in (extra or {}).items():
        (plugins / fn).write_text(src)
    return start_gateway(tmp_path / "gw", routes, node={"apisix": {"plugin_dirs": [str(plugins)]}}, **kw)


def ups(up: Upstream) -> dict:
    return {"type": "roundrobin", "nodes": {up.addr: 1}}


async def test_priority_order_and_merge_precedence(tmp_path, up):
    doc = {
        "services": [{"id": "s1", "upstream": ups(up),
                      "plugins": {"p-a": {"tag": "service"}, "p-b": {"tag": "service"}, "p-c": {"tag": "service"}}}],
        "plugin_configs": [{"id": "pc1", "plugins": {"p-b": {"tag": "plugin_config"}, "p-c": {"tag": "plugin_config"}}}],
        "routes": [{"id": "r1", "uri": "/*", "service_id": "s1", "plugin_config_id": "pc1",
                    "plugins": {"p-c": {"tag": "route"}, "p-x": {"tag": "route"}}}],
        "global_rules": [{"id": "g1", "plugins": {"p-g": {"tag": "global"}}}],
    }
    gw = gateway(tmp_path, doc)
    try:
        r = await http(gw.addr, "GET", "/x")
        assert r.status == 200
        # global rewrite first, then the route's rewrite by priority; access (p-x) after;
        # route > plugin_config > service for the same plugin
        assert up.requests[-1].header("x-order") == \
            "p-g:global,p-a:service,p-b:plugin_config,p-c:route,p-x:route"
    finally:
        gw.stop()


async def test_global_rules_run_when_no_route_matches(tmp_path, up):
    doc = {"routes": [{"id": "r1", "uri": "/only", "upstream": ups(up)}],
           "global_rules": [{"id": "g1", "plugins": {"t-filter": {}}}]}
    gw = gateway(tmp_path, doc)
    try:
        r = await http(gw.addr, "GET", "/nope")
        assert r.status == 404
        assert r.body == b'{"error_msg":"404 Route Not Found"}\n[end]'
        assert r.header("x-early") == "1" and r.header("x-status-seen") == "404"
    finally:
        gw.stop()


async def test_consumer_and_group_plugins_override_route(tmp_path, up):
    doc = {
        "consumer_groups": [{"id": "gold", "plugins": {"p-b": {"tag": "group"}, "p-c": {"tag": "group"}}}],
        "consumers": [{"username": "jack", "group_id": "gold",
                       "plugins": {"t-auth": {"user": "jack"}, "p-c": {"tag": "consumer"}, "p-x": {"tag": "consumer"}}},
                      {"username": "rose", "plugins": {"t-auth": {"user": "rose"}}}],
        "routes": [{"id": "r1", "uri": "/*", "upstream": ups(up),
                    "plugins": {"t-auth": {}, "p-b": {"tag": "route"}, "p-c": {"tag": "route"}}}],
    }
    gw = gateway(tmp_path, doc)
    try:
        r = await http(gw.addr, "GET", "/x")
        assert r.status == 401
        assert r.body == b'{"message":"Missing user"}\n'
        assert r.header("content-type") == "text/plain"
        r = await http(gw.addr, "GET", "/x", headers={"X-User": "nobody"})
        assert (r.status, r.body) == (401, b'{"message":"Invalid user\\/key"}\n')   # cjson escapes "/"
        assert up.requests == []

        r = await http(gw.addr, "GET", "/x", headers={"X-User": "rose"})
        assert r.status == 200
        got = up.requests[-1]
        assert got.header("x-consumer-username") == "rose"
        assert got.header("x-order") == "p-b:route,p-c:route"

        r = await http(gw.addr, "GET", "/x", headers={"X-User": "jack"})
        assert r.status == 200
        got = up.requests[-1]
        assert got.header("x-consumer-username") == "jack"
        # the route's rewrite ran with the route's confs before jack was known; then the
        # plugins jack's side added (p-x) ran their rewrite... p-x has only access, which runs
        # with jack's conf, as does everything after authentication
        assert got.header("x-order") == "p-b:route,p-c:route,p-x:consumer"
    finally:
        gw.stop()


async def test_meta_disable_filter_priority_error_response(tmp_path, up):
    doc = {"routes": [
        {"id": "r1", "uri": "/meta/*", "upstream": ups(up),
         "plugins": {"p-a": {"tag": "a", "_meta": {"disable": True}},
                     "p-b": {"tag": "b", "_meta": {"filter": [["arg_b", "==", "1"]]}},
                     "p-c": {"tag": "c", "_meta": {"priority": 1000}}}},
        {"id": "r2", "uri": "/auth", "upstream": ups(up),
         "plugins": {"t-auth": {"_meta": {"error_response": {"message": "nope"}}}}},
    ]}
    gw = gateway(tmp_path, doc)
    try:
        await http(gw.addr, "GET", "/meta/x")
        assert up.requests[-1].header("x-order") == "p-c:c"
        await http(gw.addr, "GET", "/meta/x?b=1")
        assert up.requests[-1].header("x-order") == "p-c:c,p-b:b"
        r = await http(gw.addr, "GET", "/auth")
        assert (r.status, r.body) == (401, b'{"message":"nope"}\n')
    finally:
        gw.stop()


async def test_async_hook_reads_and_replaces_the_body(tmp_path, up):
    doc = {"routes": [{"id": "r1", "uri": "/*", "upstream": ups(up), "plugins": {"t-async": {}}}]}
    gw = gateway(tmp_path, doc)
    try:
        r = await http(gw.addr, "POST", "/b", body=b"hello body")
        assert r.status == 200
        got = up.requests[-1]
        assert got.body == b"HELLO BODY" and got.header("content-length") == "10"
        assert got.header("x-async") == "done"
        r = await http(gw.addr, "POST", "/b", body=b"deny")
        assert (r.status, r.body, r.header("x-why")) == (403, b"denied by body\n", "body")
        r = await http(gw.addr, "GET", "/b")
        assert r.status == 200 and up.requests[-1].header("x-async") == "done"
        # chunked request body, read whole by the plugin
        import asyncio
        reader, writer = await asyncio.open_connection(*gw.addr)
        writer.write(b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        from gwtools import read_response
        resp = await read_response(reader)
        writer.close()
        assert resp is not None and resp.status == 200
        assert up.requests[-1].body == b"ABCDE"
    finally:
        gw.stop()


async def test_header_and_body_filters_on_upstream_response(tmp_path, up):
    doc = {"routes": [{"id": "r1", "uri": "/*", "upstream": ups(up), "plugins": {"t-filter": {}}}]}
    gw = gateway(tmp_path, doc)
    try:
        r = await http(gw.addr, "GET", "/f")
        assert r.status == 200
        assert r.header("x-status-seen") == "200" and r.header("x-early") == "1"
        assert r.header("content-length") is None and r.header("transfer-encoding") == "chunked"
        assert r.body.endswith(b"[end]")
        assert json.loads(r.body[:-5])["method"] == "got"
    finally:
        gw.stop()


async def test_broken_third_party_plugin_is_refused_and_the_rest_serves(tmp_path, up):
    plugins = write_plugins(tmp_path / "plugins")
    (plugins / "broken.py").write_text("NAME = 'broken'\nPRIORITY = 'high'\ndef rewrite(conf, ctx):\n    pass\n")
    (plugins / "crash.py").write_text("raise RuntimeError('boom at import')\n")
    doc = {"routes": [{"id": "r1", "uri": "/*", "upstream": ups(up), "plugins": {"p-a": {"tag": "ok"}}}]}
    gw = start_gateway(tmp_path / "gw", doc, node={"apisix": {"plugin_dirs": [str(plugins)]}})
    try:
        r = await http(gw.addr, "GET", "/x")
        assert r.status == 200 and up.requests[-1].header("x-order") == "p-a:ok"
        log = gw.log()
        assert "broken.py refused: plugin broken" in log and "PRIORITY must be an integer" in log
        assert "crash.py refused: boom at import" in log
    finally:
        gw.stop()


def test_contract_checks(tmp_path):
    from meshgate.errors import PluginError
    from meshgate.plugins import PluginRegistry

    reg = PluginRegistry()
    cases = {
        "noname.py": ("PRIORITY = 1\n", "has no NAME"),
        "arity.py": ("NAME = 'x'\nPRIORITY = 1\ndef access(conf):\n    pass\n", "access must take (conf, ctx)"),
        "asyncfilter.py": ("NAME = 'y'\nPRIORITY = 1\nasync def header_filter(conf, ctx):\n    pass\n",
                           "header_filter cannot be async"),
        "schema.py": ("NAME = 'z'\nPRIORITY = 1\nSCHEMA = {'type': 'nope'}\n", "invalid SCHEMA"),
    }
    for f, (src, _) in cases.items():
        (tmp_path / f).write_text(src)
    (tmp_path / "fine.py").write_text("NAME = 'fine'\nPRIORITY = 1\nimport logging\nlog = logging.getLogger('x')\n"
                                      "def rewrite(conf, ctx):\n    return None\n")
    assert reg.load_directory(tmp_path) == ["fine"]
    for f, (_, msg) in cases.items():
        assert any(f in e and msg in e for e in reg.errors), (f, reg.errors)
    assert reg.get("fine") is not None and reg.get("fine").phases == ("rewrite",)
    with pytest.raises(PluginError):
        import types
        reg.register_module(types.ModuleType("m"))


async def test_answer_without_body_is_nginx_page(tmp_path, up):
    doc = {"routes": [{"id": "r1", "uri": "/*", "upstream": ups(up), "plugins": {"t-deny": {}}}]}
    gw = gateway(tmp_path, doc)
    try:
        r = await http(gw.addr, "GET", "/x", headers={"X-Deny": "bare"})
        assert r.status == 403 and r.header("content-type") == "text/html; charset=utf-8"
        assert b"<h1>403 Forbidden</h1>" in r.body
        r = await http(gw.addr, "GET", "/x", headers={"X-Deny": "nobody"})
        assert r.status == 429 and r.header("retry-after") == "1"
        assert up.requests == []
    finally:
        gw.stop()


VERSIONED = '''
NAME = "t-ver"
PRIORITY = 10
SCHEMA = {{"type": "object"}}

def rewrite(conf, ctx):
    ctx.set_req_header("X-Ver", "{ver}")
'''


async def test_plugin_reload_while_traffic_flows(tmp_path, up):
    import asyncio
    import time
    import urllib.request

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "t_ver.py").write_text(VERSIONED.format(ver=1))
    doc = {"routes": [{"id": "r1", "uri": "/*", "upstream": ups(up), "plugins": {"t-ver": {}}}]}
    gw = start_gateway(tmp_path / "gw", doc, workers=2, node={"apisix": {"plugin_dirs": [str(plugins)]}})
    try:
        listed = gw.control("/v1/plugins")
        mine = [p for p in listed["plugins"] if p["name"] == "t-ver"]
        assert mine and mine[0]["source"].endswith("t_ver.py") and mine[0]["phases"] == ["rewrite"]
        assert {"key-auth", "limit-count", "prometheus"} <= {p["name"] for p in listed["plugins"]}

        statuses: list[int] = []
        stop = asyncio.Event()

        async def client() -> None:
            deadline = time.monotonic() + 20
            while not stop.is_set() and time.monotonic() < deadline:
                statuses.append((await http(gw.addr, "GET", "/x")).status)

        tasks = [asyncio.create_task(client()) for _ in range(4)]
        await asyncio.sleep(0.3)
        (plugins / "t_ver.py").write_text(VERSIONED.format(ver=2))
        (plugins / "t_bad.py").write_text("NAME = 'bad'\n")   # refused at reload, the rest serves
        req = urllib.request.Request(f"http://127.0.0.1:{gw.control_port}/v1/plugins/reload", method="PUT")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200 and r.read() == b"done"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            recent = [q.header("x-ver") for q in up.requests[-8:]]
            if len(recent) == 8 and set(recent) == {"2"}:
                break
        stop.set()
        await asyncio.gather(*tasks)
        assert statuses and set(statuses) == {200}, set(statuses)
        assert {q.header("x-ver") for q in up.requests} == {"1", "2"}
        assert [q.header("x-ver") for q in up.requests[-8:]] == ["2"] * 8
        assert any("t_bad.py" in e and "PRIORITY" in e for e in gw.control("/v1/plugins")["errors"])
    finally:
        gw.stop()


async def test_entry_point_plugin_and_the_enabled_list(tmp_path, up, monkeypatch):
    site = tmp_path / "site"
    (site / "acme_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "acme_plugin.py").write_text(
        "NAME = 'acme'\nPRIORITY = 5\ndef rewrite(conf, ctx):\n    ctx.set_req_header('X-Acme', 'yes')\n")
    (site / "acme_plugin-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-plugin\n"
                                                                  "Version: 1.0\n")
    (site / "acme_plugin-1.0.dist-info" / "entry_points.txt").write_text("[meshgate.plugins]\nacme = acme_plugin\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    doc = {"routes": [{"id": "r1", "uri": "/*", "upstream": ups(up), "plugins": {"acme": {}}},
                      {"id": "r2", "uri": "/limited", "upstream": ups(up), "plugins": {"limit-count": {
                          "count": 1, "time_window": 60}}}]}
    gw = start_gateway(tmp_path / "gw", doc)
    try:
        await http(gw.addr, "GET", "/x")
        assert up.requests[-1].header("x-acme") == "yes"
        mine = [p for p in gw.control("/v1/plugins")["plugins"] if p["name"] == "acme"]
        assert mine and mine[0]["source"] == "entry point acme"
    finally:
        gw.stop()
    # config.yaml `plugins:` enables only the listed ones (APISIX): a route naming another is refused
    gw = start_gateway(tmp_path / "gw2", doc, node={"plugins": ["acme", "prometheus"]})
    try:
        assert (await http(gw.addr, "GET", "/x")).status == 200
        assert (await http(gw.addr, "GET", "/limited")).status == 404
        assert "unknown plugin 'limit-count'" in gw.log()
        assert {p["name"] for p in gw.control("/v1/plugins")["plugins"]} == {"acme", "prometheus"}
    finally:
        gw.stop()


FAULTY = '''
NAME = "t-faulty"
PRIORITY = 70
SCHEMA = {"type": "object"}

def access(conf, ctx):
    if ctx.req_header("x-boom") == "access":
        raise RuntimeError("boom in access")

async def rewrite(conf, ctx):
    if ctx.req_header("x-boom") == "async":
        raise ValueError("boom after an await")

def header_filter(conf, ctx):
    if ctx.req_header("x-boom") == "header":
        raise KeyError("boom in header_filter")

def log(conf, ctx):
    raise RuntimeError("boom in log")
'''


async def test_a_failing_plugin_never_takes_the_gateway_down(tmp_path, up):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "t_faulty.py").write_text(FAULTY)
    doc = {"routes": [{"id": "r1", "uri": "/*", "upstream": ups(up), "plugins": {"t-faulty": {}}}]}
    gw = start_gateway(tmp_path / "gw", doc, node={"apisix": {"plugin_dirs": [str(plugins)]}})
    try:
        for boom in ("access", "async"):
            r = await http(gw.addr, "GET", "/x", headers={"X-Boom": boom})
            assert r.status == 500 and b"500 Internal Server Error" in r.body
        assert up.requests == []
        # a filter or log hook failing: the response is already decided and still goes out
        r = await http(gw.addr, "GET", "/x", headers={"X-Boom": "header"})
        assert r.status == 200 and r.json()["path"] == "/x"
        r = await http(gw.addr, "GET", "/x")
        assert r.status == 200
        log = gw.log()
        assert "boom in access" in log and "boom after an await" in log and "boom in log" in log
        assert "plugin t-faulty failed in header_filter" in log
    finally:
        assert gw.stop() == 0


async def test_read_body_answers_expect_100_continue(tmp_path, up):
    import asyncio

    from gwtools import read_response

    doc = {"routes": [{"id": "r1", "uri": "/*", "upstream": ups(up), "plugins": {"t-async": {}}}]}
    gw = gateway(tmp_path, doc)
    try:
        reader, writer = await asyncio.open_connection(*gw.addr)
        writer.write(b"POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        # the plugin waits for the body: the gateway must say 100 Continue first, and only once
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert first.startswith(b"HTTP/1.1 100 Continue")
        writer.write(b"hello")
        resp = await read_response(reader)
        writer.close()
        assert resp is not None and resp.status == 200
        assert up.requests[-1].body == b"HELLO"
    finally:
        gw.stop()


FIELDS_PLUGIN = '''
NAME = "t-fields"
PRIORITY = 1
SCHEMA = {"type": "object"}
NAMES = ("route_id", "route_name", "service_id", "service_name", "matched_uri", "matched_host", "consumer_name",
         "balancer_ip", "status", "upstream_response_time", "request_time", "request_length", "bytes_sent",
         "response_source", "request_type", "request_llm_model", "llm_model")

def rewrite(conf, ctx):
    if ctx.req_header("x-set-var"):
        ctx.set_var("route_name", "renamed")

def log(conf, ctx):
    got = ctx.metric_fields()
    want = tuple(ctx.var(n) for n in NAMES)
    with open(conf["out"], "a") as f:
        f.write(repr(got == want) + " " + repr(got) + "\\n")
'''


async def test_metric_fields_answer_as_var_does(tmp_path, up):
    """The one-call accessor the prometheus plugin uses gives what var() gives, name by name,
    with and without variables set by a plugin."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "t_fields.py").write_text(FIELDS_PLUGIN)
    out = tmp_path / "fields.txt"
    doc = {"routes": [{"id": "r1", "name": "one", "uri": "/f", "upstream": ups(up),
                       "plugins": {"t-fields": {"out": str(out)}}},
                      {"id": "r2", "uri": "/nothing", "plugins": {"t-fields": {"out": str(out)}}}]}
    gw = start_gateway(tmp_path / "gw", doc, node={"apisix": {"plugin_dirs": [str(plugins)]}})
    try:
        assert (await http(gw.addr, "GET", "/f")).status == 200
        assert (await http(gw.addr, "GET", "/f", headers={"X-Set-Var": "1"})).status == 200
        assert (await http(gw.addr, "GET", "/nothing")).status in (502, 503)
        import asyncio
        for _ in range(100):
            if out.exists() and len(out.read_text().splitlines()) == 3:
                break
            await asyncio.sleep(0.05)
        lines = out.read_text().splitlines()
        assert len(lines) == 3 and all(line.startswith("True ") for line in lines), lines
        assert "'renamed'" in lines[1] and "'r1'" in lines[0] and "'upstream'" in lines[0]
    finally:
        gw.stop()


EDIT_PLUGIN = '''
NAME = "t-edit"
PRIORITY = 10
SCHEMA = {"type": "object"}

def access(conf, ctx):
    ctx.set_resp_header("x-up", "plugin")        # the upstream sends X-Up itself: replaced
    ctx.set_resp_header("X-New", "1")
    ctx.add_resp_header("X-Add", "a")
    ctx.add_resp_header("X-Add", "b")            # added twice: both lines
    if ctx.req_header("x-twice"):
        ctx.set_resp_header("X-New", "2")        # set twice: the last one
    if ctx.req_header("x-drop"):
        ctx.set_resp_header("X-Gone", None)      # removes the upstream's
'''


async def test_header_edits_before_the_response(tmp_path, up):
    """Header edits made before the response exists (limit-count's X-RateLimit-*) apply to the
    upstream's fields as APISIX's do: set replaces, add appends, set twice keeps the last, None
    removes; the response otherwise keeps the upstream's fields as sent."""
    up.handler = lambda req: (200, {"X-Up": "upstream", "X-Gone": "x", "X-Keep": "k"}, b"ok")
    doc = {"routes": [{"id": "r1", "uri": "/*", "upstream": ups(up), "plugins": {"t-edit": {}}}]}
    gw = gateway(tmp_path, doc, extra={"t_edit.py": EDIT_PLUGIN})
    try:
        for extra, new in (({}, ["1"]), ({"X-Twice": "1"}, ["2"]), ({"X-Drop": "1"}, ["1"])):
            r = await http(gw.addr, "GET", "/e", headers=extra)
            assert r.status == 200 and r.body == b"ok"
            assert r.headers_all("x-up") == ["plugin"]
            assert r.headers_all("x-new") == new
            assert r.headers_all("x-add") == ["a", "b"]
            assert r.headers_all("x-keep") == ["k"]
            assert r.headers_all("x-gone") == ([] if extra.get("X-Drop") else ["x"])
    finally:
        gw.stop()


BATCH_PLUGIN = '''
NAME = "t-batch"
PRIORITY = 10
SCHEMA = {"type": "object"}
NAMES = ("X-Rl-Limit", "X-Rl-Remaining", "X-Rl-Reset")
TWICE = ("X-Rl-A", "x-rl-a")

def access(conf, ctx):
    if ctx.req_header("x-twice"):
        ctx.set_resp_headers(TWICE, ("1", "2"))              # one name twice: the last one wins
    else:
        ctx.set_resp_headers(NAMES, ("10", 9, "59.5"))       # values as set_resp_header takes them
    if ctx.req_header("x-more"):
        ctx.add_resp_header("X-Rl-Limit", "extra")           # edits after a batch still apply
'''


async def test_header_batches_before_the_response(tmp_path, up):
    """ctx.set_resp_headers (limit-count's X-RateLimit-*): appended when the upstream did not send
    the names, replacing the upstream's when it did, the same as set_resp_header one by one."""
    def handler(req):
        if req.path == "/has":
            return 200, {"x-rl-remaining": "upstream", "X-Other": "o"}, b"ok"
        return 200, {"X-Other": "o"}, b"ok"
    up.handler = handler
    doc = {"routes": [{"id": "r1", "uri": "/*", "upstream": ups(up), "plugins": {"t-batch": {}}}]}
    gw = gateway(tmp_path, doc, extra={"t_batch.py": BATCH_PLUGIN})
    try:
        for path, extra in (("/new", {}), ("/has", {}), ("/new", {"X-More": "1"})):
            r = await http(gw.addr, "GET", path, headers=extra)
            assert r.status == 200 and r.body == b"ok"
            assert r.headers_all("x-rl-limit") == (["10", "extra"] if extra else ["10"])
            assert r.headers_all("x-rl-remaining") == ["9"]
            assert r.headers_all("x-rl-reset") == ["59.5"]
            assert r.headers_all("x-other") == ["o"]
        r = await http(gw.addr, "GET", "/has", headers={"X-Twice": "1"})
        assert r.headers_all("x-rl-a") == ["2"] and r.headers_all("x-rl-remaining") == ["upstream"]
    finally:
        gw.stop()
