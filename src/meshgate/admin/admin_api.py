"""Admin API v3 (APISIX's ``/apisix/admin/...``), backed by etcd.

Theory of operation
-------------------
A request goes through the same gates, in the same order, as in APISIX (the nginx
``server`` block the CLI renders, then ``apisix/admin/init.lua``):

1. ``allow_admin``: the socket peer must be in one of the CIDRs (nginx ``allow``/``deny
   all``), else nginx's 403 page.  Only the peer counts: ``X-Forwarded-For`` and
   ``X-Real-IP`` are whatever the client wants them to be.
2. ``location /apisix/admin``; CORS headers on every answer when ``enable_admin_cors``
   (an ``OPTIONS`` preflight is answered right there, before authentication).
3. The admin router: ``HEAD /apisix/admin``; ``GET /apisix/admin/plugins/list``;
   ``POST /apisix/admin/schema/validate/<resource>``; ``PUT /apisix/admin/plugins/reload``
   (other methods: 405); ``POST /apisix/admin/configs/validate``; everything else under
   ``/apisix/admin/`` with GET/PUT/POST/DELETE/PATCH goes to the resource dispatcher.
   With ``config_provider: yaml`` (API-driven standalone) only ``HEAD /apisix/admin`` and
   ``/apisix/admin/configs[/validate]`` exist.  No route: nginx's 404 page.
4. Every handler but HEAD first checks the token (``check_token``): query ``api_key``,
   header ``X-API-KEY``, cookie ``x_api_key``, compared in constant time with every
   configured key; the viewer role may only GET.
5. The dispatcher (``run``) reads ``<resource>/<id>/<sub path>``, the JSON body (at most
   1.5 MiB) and ``?ttl``, and hands over to :mod:`.resources`, whose answers carry
   ``X-API-VERSION: v3``.

etcd being unreachable is answered 503 ``{"error_msg": ...}`` naming the endpoints
and the failure, at any step; every check happens before the first write, so a refused
or failed request writes nothing (POST may have consumed an id, as in APISIX).
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import ipaddress
import json
import logging
import re
from collections.abc import Callable, Mapping
from http.cookies import CookieError, SimpleCookie
from typing import Any

from ..config import AdminConfig
from ..config.etcd import EtcdClient, EtcdError
from ..plugins import META_SCHEMA, PluginRegistry, encode_body
from .checks import item_schema, safety_net, schema_error
from .config_doc import check_document, validation_answer
from .httpserver import MAX_BODY, ApiRequest, Response
from .resources import RESOURCES, Cipher, Resources, Store

__all__ = ["AdminAPI", "WELL_KNOWN_KEYS"]

log = logging.getLogger("meshgate.admin")

ADMIN = "/apisix/admin"

# The keys APISIX 2.x shipped enabled (CVE-2020-13945): refused, whoever configures them.
WELL_KNOWN_KEYS = frozenset(("edd1c9f034335f136f87ad84b625c8f1", "4054f7cf07e344346cd3f287985e76a2"))

_CRUD_METHODS = frozenset(("GET", "PUT", "POST", "DELETE", "PATCH"))

# GET /apisix/admin/schema/<name>: the names of APISIX's core.schema
_CORE_SCHEMAS = ("route", "service", "consumer", "credential", "upstream", "ssl", "proto", "global_rule",
                 "stream_route", "plugins", "plugin_config", "consumer_group")

def _nginx_page(status: int, reason: str) -> Response:
    body = (f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
            f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>meshgate</center>\r\n"
            "</body>\r\n</html>\r\n").encode()
    return status, {"Content-Type": "text/html"}, body


class AdminAPI:
    """The Admin API handler (``ApiServer(AdminAPI(...).handle)``)."""

    def __init__(self, *, etcd: EtcdClient | None, prefix: str = "/apisix", admin: AdminConfig,
                 plugins: PluginRegistry, cipher: Cipher | None = None, standalone: Any = None,
                 config_provider: str = "etcd", reload_plugins: Callable[[], Any] | None = None,
                 stream_enabled: bool = False) -> None:
        if admin.admin_key_required and not any(k.key for k in admin.admin_key):
            raise ValueError("deployment.admin.admin_key: the Admin API needs at least one key "
                             "(or admin_key_required: false)")
        for k in admin.admin_key:
            if k.key in WELL_KNOWN_KEYS:
                raise ValueError(f"deployment.admin.admin_key: key {k.name!r} is the well-known default key of "
                                 "APISIX 2.x (CVE-2020-13945); choose a random one")
        self.etcd = etcd
        self.prefix = prefix.rstrip("/")
        self.admin = admin
        self.plugins = plugins
        self.cipher = cipher
        self.standalone = standalone
        self.config_provider = config_provider
        self.reload_plugins = reload_plugins
        self.stream_enabled = stream_enabled
        self._allow = [ipaddress.ip_network(c, strict=False) for c in admin.allow_admin]
        self._keys = [(k.key.encode(), k.role) for k in admin.admin_key]
        self._resources = Resources(Store(etcd, self.prefix, cipher), plugins) if etcd is not None else None
        self._deadline = 1.5 * float(getattr(etcd, "timeout", 30.0)) + 1.0

    @staticmethod
    def too_large(size: int) -> Response:
        """APISIX's answer to a body over 1.5 MiB; serve with
        ``ApiServer(api.handle, too_large=api.too_large)``."""
        return 400, {"Content-Type": "application/json"}, encode_body(
            {"error_msg": f"invalid request body: request size {size} is greater than the maximum size "
                          f"{MAX_BODY} allowed"})

    # -- the gates ---------------------------------------------------------------------------

    def _allowed(self, peer: str) -> bool:
        try:
            ip = ipaddress.ip_address(peer.strip("[]").split("%", 1)[0])
        except ValueError:
            return False     # a unix socket or nothing: no CIDR covers it
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._allow)

    def _cors(self) -> dict[str, str]:
        if not self.admin.enable_admin_cors:
            return {}
        return {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Credentials": "true",
                "Access-Control-Expose-Headers": "*", "Access-Control-Max-Age": "3600"}

    @staticmethod
    def _token(req: ApiRequest) -> str | None:
        tok = req.arg("api_key")
        if tok is not None:
            return tok
        tok = req.headers.get("x-api-key")
        if tok is not None:
            return tok
        raw = req.headers.get("cookie")
        if raw:
            try:
                jar = SimpleCookie(raw)
            except CookieError:
                return None
            # APISIX reads the variable cookie_x_api_key; X-API-KEY as documented is taken too
            for name, morsel in jar.items():
                if name.lower().replace("-", "_") == "x_api_key":
                    return morsel.value
        return None

    def _check_token(self, req: ApiRequest) -> str | None:
        """None when the request may go on, else the 401 description."""
        if not self.admin.admin_key_required:
            return None
        tok = self._token(req)
        if tok is None:
            return "missing apikey"
        given = tok.encode()
        role = None
        for key, r in self._keys:    # every key is compared: the time taken says nothing
            if hmac.compare_digest(given, key) and role is None:
                role = r
        if role is None:
            return "wrong apikey"
        if role == "viewer" and req.method != "GET":
            return "invalid method for role viewer"
        return None

    # -- entry -------------------------------------------------------------------------------

    async def handle(self, req: ApiRequest) -> Response:
        if not self._allowed(req.peer):
            return _nginx_page(403, "Forbidden")
        path = re.sub("/{2,}", "/", req.path)
        if not path.startswith(ADMIN):
            return _nginx_page(404, "Not Found")
        cors = self._cors()
        if cors and req.method == "OPTIONS":
            return 200, {**cors, "Access-Control-Allow-Methods": "POST, GET, PUT, OPTIONS, DELETE, PATCH",
                         "Access-Control-Allow-Headers": "*", "Content-Type": "text/plain"}, b""
        headers = {"Content-Type": "application/json", **cors}
        try:
            status, extra, body = await self._route(req, path)
        except EtcdError as e:
            log.error("admin %s %s: %s", req.method, req.path, e)
            status, extra, body = 503, {}, encode_body({"error_msg": str(e)})
        if extra.get("Content-Type") == "text/html":   # nginx's own pages carry no CORS headers of ours
            return status, extra, body
        return status, {**headers, **extra}, body

    def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
        return status, headers or {}, encode_body(body)

    def _unauthorized(self, req: ApiRequest) -> Response | None:
        why = self._check_token(req)
        if why is None:
            return None
        log.warning("admin %s %s from %s: failed to check token: %s", req.method, req.path, req.peer, why)
        return self._answer(401, {"error_msg": "failed to check token", "description": why})

    async def _route(self, req: ApiRequest, path: str) -> Response:
        m = req.method
        if path == ADMIN and m == "HEAD":
            return 200, {}, b""
        if self.config_provider == "yaml":
            if (path == f"{ADMIN}/configs" and m in ("GET", "PUT", "HEAD")) or \
                    (path == f"{ADMIN}/configs/validate" and m == "POST"):
                return await self._standalone(req, path)
            return _nginx_page(404, "Not Found")
        if path == f"{ADMIN}/configs/validate" and m == "POST":
            return await self._validate_configs(req, path)
        if path == f"{ADMIN}/plugins/list" and m == "GET":
            return self._plugins_list(req)
        if path.startswith(f"{ADMIN}/schema/validate/") and m == "POST":
            return self._schema_validate(req, path)
        if path == f"{ADMIN}/plugins/reload" and m in _CRUD_METHODS:
            return await self._reload(req)
        if path.startswith(f"{ADMIN}/") and m in _CRUD_METHODS:
            return await self._run(req, path)
        return _nginx_page(404, "Not Found")

    # -- body --------------------------------------------------------------------------------

    def _body(self, req: ApiRequest) -> tuple[Any, Response | None]:
        raw = req.body
        if len(raw) > MAX_BODY:
            return None, self._answer(400, {"error_msg": f"invalid request body: request size {len(raw)} is greater "
                                                         f"than the maximum size {MAX_BODY} allowed"})
        if not raw:
            return None, None
        text = raw.decode("utf-8", "replace")

        def no_constants(c: str) -> Any:
            raise ValueError(f"invalid number {c}")

        try:
            return json.loads(raw.decode("utf-8"), parse_constant=no_constants), None
        except json.JSONDecodeError as e:
            why = f"{e.msg} at character {e.pos + 1}"
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            why = str(e) or type(e).__name__
        return None, self._answer(400, {"error_msg": f"invalid request body: {why}", "req_body": text})

    # -- /apisix/admin/<resource>/... --------------------------------------------------------

    async def _run(self, req: ApiRequest, path: str) -> Response:
        if (denied := self._unauthorized(req)) is not None:
            return denied
        segs = path.split("/")
        while segs and segs[-1] == "":
            segs.pop()       # ngx.re.split drops trailing empty fields: /routes/ lists routes
        seg_res = segs[3] if len(segs) > 3 else ""
        seg_id = segs[4] if len(segs) > 4 else None
        sub_path = "/".join(segs[5:])
        if seg_res == "schema" and seg_id == "plugins":
            # /apisix/admin/schema/plugins/<name>
            seg_res, seg_id, sub_path = "plugins", (segs[5] if len(segs) > 5 else None), "/".join(segs[6:])
        if seg_res == "stream_routes" and not self.stream_enabled:
            return self._answer(400, {"error_msg": "stream mode is disabled, can not add stream routes"})
        consumer = None
        if seg_res == "consumers" and len(segs) >= 6 and segs[5] == "credentials":
            consumer = seg_id
            seg_res, seg_id, sub_path = "credentials", (segs[6] if len(segs) > 6 else None), "/".join(segs[7:])
        if seg_res not in RESOURCES and seg_res not in ("schema", "plugins") or \
                (seg_res == "credentials" and consumer is None):
            return self._answer(404, {"error_msg": f"Unsupported resource type: {seg_res}"})
        m = req.method.lower()
        if seg_res in ("schema", "plugins") and m != "get":
            return self._answer(404, {"error_msg": "not found"})
        conf, bad = self._body(req)
        if bad is not None:
            return bad
        ttl = req.arg("ttl")
        if ttl is not None and _number(ttl) is None:
            return self._answer(400, {"error_msg": "invalid argument ttl: should be a number"})
        if seg_res == "schema":
            code, data = self._core_schema(seg_id)
        elif seg_res == "plugins":
            code, data = self._plugin_schema(req, seg_id)
        else:
            if self._resources is None:
                return self._answer(503, {"error_msg": "etcd is not configured"})
            res = RESOURCES[seg_res]
            r = self._resources
            if m == "get":
                op = r.get(res, seg_id, sub_path, req.query, consumer)
            elif m == "put":
                op = r.put(res, seg_id, conf, sub_path, req.query, consumer)
            elif m == "post":
                op = r.post(res, seg_id, conf, sub_path, req.query)
            elif m == "patch":
                op = r.patch(res, seg_id, conf, sub_path, req.query)
            else:
                op = r.delete(res, seg_id, sub_path, req.query, consumer)
            try:
                # every etcd call has its own deadline; this bounds the request as a whole,
                # also against a call that never completes
                code, data = await asyncio.wait_for(op, self._deadline)
            except EtcdError as e:
                # the resource's own answer to a store failure (APISIX: 503 {"error_msg": err})
                log.error("admin %s %s: %s", req.method, req.path, e)
                code, data = 503, {"error_msg": str(e)}
            except asyncio.TimeoutError:
                log.error("admin %s %s: etcd did not answer within %.0f s", req.method, req.path, self._deadline)
                code, data = 503, {"error_msg": f"etcd did not answer within {self._deadline:.0f} s"}
        return self._answer(code, data, {"X-API-VERSION": "v3"})

    # -- schemas and plugins -----------------------------------------------------------------

    def _core_schema(self, name: str | None) -> tuple[int, Any]:
        from ..model import schema_for

        if name in _CORE_SCHEMAS:
            return 200, schema_for(name)
        if name == "id_schema":
            from ..model.schemas import ID_SCHEMA

            return 200, ID_SCHEMA
        return 400, {"error_msg": f"not found schema: {name}"}

    def _plugin_schema(self, req: ApiRequest, name: str | None) -> tuple[int, Any]:
        subsystem = req.arg("subsystem") or "http"
        if subsystem not in ("http", "stream"):
            return 400, {"error_msg": f"unsupported subsystem: {subsystem}"}
        if req.arg("all") == "true":
            if subsystem == "stream":
                return 200, {}
            return 200, {p.name: _plugin_info(p) for p in self.plugins.plugins()}
        p = self.plugins.get(name) if name and subsystem == "http" else None
        if p is None:
            return 404, {"error_msg": f"plugin not found in subsystem {subsystem}"}
        schema_type = req.arg("schema_type")
        if schema_type == "consumer":
            schema: Any = p.consumer_schema
        elif schema_type == "metadata":
            schema = p.metadata_schema
        else:
            schema = _with_meta(p.schema)
        if schema is None:
            return 400, {"error_msg": "not found schema"}
        return 200, schema

    def _plugins_list(self, req: ApiRequest) -> Response:
        if (r := self._unauthorized(req)) is not None:
            return r
        subsystem = req.arg("subsystem") or "http"
        if subsystem == "stream":
            return self._answer(200, [])    # Meshgate has no stream plugins
        if subsystem != "http":
            return self._answer(400, "invalid subsystem passed")
        plugins = sorted(self.plugins.plugins(), key=lambda p: (-p.priority, p.name))
        return self._answer(200, [p.name for p in plugins])

    async def _reload(self, req: ApiRequest) -> Response:
        if (r := self._unauthorized(req)) is not None:
            return r
        if req.method != "PUT":
            return self._answer(405, {"error_msg": "please use PUT method to reload the plugins, "
                                                   f"{req.method} method is not allowed."})
        if self.reload_plugins is None:
            return self._answer(503, {"error_msg": "plugin reload is not available in this process"})
        try:
            got = self.reload_plugins()
            if inspect.isawaitable(got):
                await got
        except Exception as e:   # a broken third-party plugin must not take the Admin API down
            log.exception("plugins reload failed")
            return self._answer(503, {"error_msg": f"failed to reload plugins: {e}"})
        if self.etcd is not None and self.config_provider == "etcd":
            # APISIX (admin/init.lua sync_local_conf_to_etcd): the reloading node publishes its
            # plugin list under <prefix>/plugins; every node following etcd reloads with it
            names = [{"name": n} for n in self.plugins.names()]
            await self.etcd.put(f"{self.prefix}/plugins", json.dumps(names, separators=(",", ":")).encode())
        return self._answer(200, "done")

    def _schema_validate(self, req: ApiRequest, path: str) -> Response:
        if (r := self._unauthorized(req)) is not None:
            return r
        segs = path.split("/")
        res = segs[5] if len(segs) > 5 else ""
        if res not in RESOURCES and res not in ("schema", "plugins"):
            return self._answer(404, {"error_msg": f"Unsupported resource type: {res}"})
        body, bad = self._body(req)
        if bad is not None:
            return bad
        schema = item_schema(res) if res in RESOURCES else None
        if schema is None:
            return self._answer(400, {"error_msg": f"not found schema: {res}"})
        err = schema_error(schema, body)
        if err is None and isinstance(body, dict):
            # what every config source refuses (config-supplied Lua...) is not valid either
            err = safety_net(res, body, None)
            if err is not None:
                err = err.removeprefix("invalid configuration: ")
        if err is not None:
            return self._answer(400, {"error_msg": err})
        return 200, {}, b""

    # -- /apisix/admin/configs ---------------------------------------------------------------

    async def _standalone(self, req: ApiRequest, path: str) -> Response:
        if (r := self._unauthorized(req)) is not None:
            return r
        if self.standalone is None:
            return self._answer(503, {"error_msg": "the standalone configuration API is not available"})
        # StandaloneAPI.handle(req, sub): sub is the path after /apisix/admin/configs ("" or "/validate")
        got = self.standalone.handle(req, path[len(f"{ADMIN}/configs"):])
        if inspect.isawaitable(got):
            got = await got
        status, headers, body = got
        return int(status), dict(headers), bytes(body)

    async def _validate_configs(self, req: ApiRequest, path: str) -> Response:
        """``POST /apisix/admin/configs/validate`` in etcd mode (``admin/config_validate.lua``):
        every item of a full configuration checked, nothing stored."""
        if self.standalone is not None:
            return await self._standalone(req, path)
        if (r := self._unauthorized(req)) is not None:
            return r
        if len(req.body) > MAX_BODY:
            return self._answer(400, {"error_msg": f"invalid request body: request size {len(req.body)} is "
                                                   f"greater than the maximum size {MAX_BODY} allowed"})
        if not req.body:
            return self._answer(400, {"error_msg": "invalid request body: empty request body"})
        if req.headers.get("content-type", "").startswith("application/yaml"):
            import yaml

            try:
                doc = yaml.safe_load(req.body)
            except yaml.YAMLError:
                doc = None
            if not isinstance(doc, dict):
                return self._answer(400, {"error_msg": "invalid request body: invalid yaml request body"})
        else:
            doc, bad = self._body(req)
            if bad is not None:
                return self._answer(400, {"error_msg": json.loads(bad[2])["error_msg"]})
        checked = await check_document(doc, self.plugins, standalone=False,
                                       source="POST /apisix/admin/configs/validate")
        return self._answer(*validation_answer(checked))


def _number(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def _with_meta(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A plugin schema as APISIX serves it: with the injected ``_meta`` property."""
    out = dict(schema)
    out["properties"] = {**(schema.get("properties") or {}), "_meta": META_SCHEMA}
    return out


def _plugin_info(p: Any) -> dict[str, Any]:
    try:
        version: Any = float(p.version)
    except ValueError:
        version = p.version
    info: dict[str, Any] = {"version": version, "priority": p.priority, "schema": _with_meta(p.schema)}
    if p.consumer_schema is not None:
        info["consumer_schema"] = p.consumer_schema
    if p.metadata_schema is not None:
        info["metadata_schema"] = p.metadata_schema
    if p.type is not None:
        info["type"] = p.type
    return info
