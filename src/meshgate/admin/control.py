"""Control API (APISIX ``127.0.0.1:9090``): read-only views of the running gateway.

``/v1/healthcheck``, ``/v1/routes``, ``/v1/route/{id}``, ``/v1/services``,
``/v1/upstreams``, ``/v1/upstream/{id}``, ``PUT /v1/plugins/reload`` as APISIX, plus
Meshgate's ``/v1/config`` (the config version each worker runs), ``/v1/match`` (which route
a request would take, and why) and ``/v1/plugins`` (the loaded plugins and those refused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..http import Request
from .httpserver import ApiRequest, Response, json_response

__all__ = ["ControlAPI"]


@dataclass
class ControlAPI:
    supervisor: Any                  # proxy.Supervisor (duck-typed: snapshot, runtime, health, worker_versions())
    store_revision: Callable[[], int] = lambda: 0
    source: Any = None               # config.EtcdSource when the gateway follows etcd

    async def handle(self, req: ApiRequest) -> Response:
        p = req.path.rstrip("/") or "/"
        sup = self.supervisor
        if p == "/v1/plugins/reload":
            # APISIX's plugin reload: re-import third-party plugins, recompile, tell every worker
            if req.method != "PUT":
                return json_response(405, {"error_msg": f"method {req.method} not allowed"})
            if sup.reload_plugins() is None:
                return json_response(503, {"error_msg": "no configuration loaded"})
            return 200, {"Content-Type": "text/plain"}, b"done"
        if req.method not in ("GET", "HEAD"):
            return json_response(405, {"error_msg": f"method {req.method} not allowed"})
        snap = sup.snapshot
        if p == "/v1/healthcheck":
            return json_response(200, sup.health.status())
        if p.startswith("/v1/healthcheck/"):
            rest = p[len("/v1/healthcheck/"):]
            for item in sup.health.status():
                if item["name"] == f"/apisix/{rest}":
                    return json_response(200, item)
            return json_response(404, {"error_msg": "not found"})
        if p == "/v1/config":
            body: dict[str, Any] = {"version": snap.version if snap else 0, "revision": self.store_revision(),
                                    "workers": sup.worker_versions(),
                                    "counts": snap.counts() if snap else {},
                                    "errors": [str(e) for e in (sup.runtime.errors if sup.runtime else [])]}
            src = self.source
            if src is not None:
                body["etcd"] = {"connected": src.connected, "revision": src.revision, "resyncs": src.resyncs,
                                "last_error": src.last_error,
                                "rejected": [str(e) for errs in src.rejected.values() for e in errs]}
            return json_response(200, body)
        for kind, single in (("routes", "route"), ("services", "service"), ("upstreams", "upstream"),
                             ("plugin_metadata", "plugin_metadata")):
            if p == f"/v1/{kind}" or (kind == "plugin_metadata" and p == "/v1/plugin_metadatas"):
                return json_response(200, [self._item(r) for r in snap.items(kind).values()] if snap else [])
            if p.startswith(f"/v1/{single}/"):
                id = p[len(f"/v1/{single}/"):]
                res = snap.get(kind, id) if snap else None
                if res is None:
                    return json_response(404, {"error_msg": f"{single} {id} not found"})
                return json_response(200, self._item(res))
        if p == "/v1/match":
            return self._match(req)
        if p == "/v1/plugins":
            return json_response(200, {"plugins": sup.plugins.describe(), "errors": list(sup.plugins.errors)})
        if p == "/v1/schema":
            from ..model import SCHEMAS

            return json_response(200, SCHEMAS)
        return json_response(404, {"error_msg": "not found"})

    @staticmethod
    def _item(res: Any) -> dict[str, Any]:
        return {"key": f"/apisix/{res.kind}/{res.id}", "value": res.value,
                "createdIndex": res.created_index, "modifiedIndex": res.modified_index}

    def _match(self, q: ApiRequest) -> Response:
        rt = self.supervisor.runtime
        if rt is None:
            return json_response(503, {"error_msg": "no configuration loaded"})
        uri = q.arg("uri") or q.arg("path") or "/"
        host_arg = q.arg("host") or ""
        req = Request()
        req.method = (q.arg("method") or "GET").upper()
        req.http_host = host_arg
        req.host = host_arg.lower().rsplit(":", 1)[0] if not host_arg.startswith("[") else host_arg.lower()
        from ..http import parse_target
        from ..errors import ProtocolError

        try:
            t = parse_target(uri.encode("utf-8"))
        except ProtocolError as e:
            return json_response(400, {"error_msg": f"invalid uri: {e.reason}"})
        req.path, req.upstream_path, req.query = t.path, t.upstream_path, t.query
        req.target = uri.encode("utf-8")
        req.remote_addr = q.arg("remote_addr") or "127.0.0.1"
        for k, vals in q.query.items():
            if k.startswith("header_") or k.startswith("http_"):
                name = k.split("_", 1)[1].replace("_", "-")
                req.headers.append((name.encode("latin-1"), vals[0].encode("latin-1")))
        explained = rt.router.explain(req)
        m = rt.router.match(req)
        out: dict[str, Any] = {"request": {"method": req.method, "host": req.host, "uri": req.path,
                                           "remote_addr": req.remote_addr}}
        out.update(explained)
        if m is not None:
            out["route"] = {"id": m.route_id, "value": m.route, "params": dict(m.params)}
            rr = rt.routes.get(m.route_id)
            if rr is not None and rr.upstream is not None:
                out["upstream"] = {"key": rr.upstream.key, "nodes": [n.addr for n in rr.upstream.nodes]}
        return json_response(200, out)
