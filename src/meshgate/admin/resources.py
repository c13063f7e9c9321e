"""The Admin API's resources: APISIX's CRUD semantics over the etcd key layout.

Theory of operation
-------------------
One generic implementation (APISIX's ``apisix/admin/resource.lua``) serves every
resource; the per-resource differences are data (:data:`RESOURCES`: the word used in
messages, unsupported methods, keyed by name rather than id, list filters) plus the
checks of :mod:`.checks` and the delete checks below.

* Keys: ``<prefix>/<resource>/<id>``; credentials under their consumer
  (``consumers/<username>/credentials/<id>``), secrets under their manager
  (``secrets/<manager>/<id>``), plugin metadata under the plugin's name.  Values are JSON
  with the id inside (consumers carry ``username``).
* Every write is checked completely before the first etcd write, so a refused request
  leaves etcd as it was.  Values are stored as the client sent them plus ``id`` and the
  server-set ``create_time``/``update_time``: schema defaults are not written
  (APISIX 3.14+, apache/apisix#12603).
* PUT and PATCH are compare-and-swap writes on the revision read just before (PUT also
  learns from that read whether it creates, 201, or replaces, 200, and which
  ``create_time`` to keep); PATCH answers ``value changed before overwritten`` when
  someone else wrote in between, as APISIX.  POST ids are the revision of a write to
  ``<prefix>/gen_id``, zero-padded to 20 digits (``core.etcd.push``).
* Fields APISIX keeps encrypted (plugins' ``encrypt_fields``, private keys) go through
  the optional cipher: encrypted on write, decrypted for GET (private keys excepted:
  an ssl's ``key``/``keys`` are never shown, an upstream ``tls.client_key`` is shown as
  stored, as APISIX does).
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs

from ..config.etcd import KV, EtcdClient
from ..model.describe import schema_type_name
from ..plugins import PluginRegistry
from .checks import CheckInput, check_item

__all__ = ["Resource", "RESOURCES", "Store", "Resources", "Result", "Cipher", "NOT_FOUND"]

Result = tuple[int, Any]
NOT_FOUND: Any = {"message": "Key not found"}


class Cipher(Protocol):
    def encrypt_item(self, kind: str, value: Mapping[str, Any], *, id: str | None = None) -> dict[str, Any]: ...

    def decrypt_item(self, kind: str, value: Mapping[str, Any], *, id: str | None = None) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Resource:
    name: str                                   # path segment (credentials live under consumers)
    kind: str                                   # APISIX's word in messages: "wrong route id"
    unsupported: frozenset[str] = frozenset()   # lower-case methods answered 405
    no_id: bool = False                         # keyed by username / plugin name, no id checks
    filter_fields: frozenset[str] = frozenset()  # ?filter= fields (routes, stream_routes)

    @property
    def cipher_kind(self) -> str:
        return "consumers" if self.name == "credentials" else self.name


def _res(name: str, kind: str, unsupported: tuple[str, ...] = (), **kw: Any) -> Resource:
    return Resource(name, kind, frozenset(unsupported), **kw)


_REF_FILTERS = frozenset(("service_id", "upstream_id"))

# apisix/admin/<resource>.lua: name, kind, unsupported_methods
RESOURCES: dict[str, Resource] = {r.name: r for r in (
    _res("routes", "route", filter_fields=_REF_FILTERS),
    _res("services", "service"),
    _res("upstreams", "upstream"),
    _res("consumers", "consumer", ("post", "patch"), no_id=True),
    _res("credentials", "credential", ("post", "patch")),
    _res("ssls", "ssl"),
    _res("protos", "proto", ("patch",)),
    _res("global_rules", "global rule", ("post",)),
    _res("stream_routes", "stream route", ("patch",), filter_fields=_REF_FILTERS),
    _res("plugin_metadata", "plugin_metadata", ("post", "patch"), no_id=True),
    _res("plugin_configs", "plugin config", ("post",)),
    _res("consumer_groups", "consumer group", ("post",)),
    _res("secrets", "secret", ("post",)),
)}


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw.decode("utf-8", "replace")


def _encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _placeholder(kv: KV) -> bool:
    """APISIX's ``apisix init_etcd`` directory placeholders (value ``init_dir``)."""
    return kv.key.endswith("/") or kv.value in (b"", b"init_dir", b'"init_dir"')


class Store:
    """etcd under the prefix, values decoded (and decrypted for internal reads)."""

    def __init__(self, etcd: EtcdClient, prefix: str, cipher: Cipher | None) -> None:
        self.etcd = etcd
        self.prefix = prefix.rstrip("/")
        self.cipher = cipher

    def full(self, rel: str) -> str:
        return self.prefix + rel

    def rel(self, key: str) -> str:
        return key[len(self.prefix):] if key.startswith(self.prefix) else key

    async def kv(self, rel: str) -> KV | None:
        return await self.etcd.get(self.full(rel))

    def plain(self, rel: str, value: Any) -> Any:
        """A stored value in clear text (for checks, references, PATCH)."""
        if self.cipher is None or not isinstance(value, dict):
            return value
        parts = rel.split("/")
        kind = parts[1] if len(parts) > 1 else ""
        return self.cipher.decrypt_item(kind, value, id=parts[-1] if kind == "plugin_metadata" else None)

    async def fetch(self, path: str) -> Any | None:
        kv = await self.kv(path)
        if kv is None or _placeholder(kv):
            return None
        return self.plain(path, _decode(kv.value))

    async def children(self, dir_rel: str) -> list[KV]:
        """Every real key under ``dir_rel/`` (placeholders skipped), key order."""
        _, kvs = await self.etcd.get_prefix(self.full(dir_rel) + "/")
        return [kv for kv in kvs if not _placeholder(kv)]

    async def values(self, path: str) -> list[tuple[str, Any]]:
        return [(self.rel(kv.key), self.plain(self.rel(kv.key), _decode(kv.value)))
                for kv in await self.children(path)]

    async def direct(self, dir_rel: str, depth: int = 1) -> list[tuple[KV, Any]]:
        """The items of a directory: keys exactly ``depth`` segments below it (a consumers
        list leaves out credentials, a services list graphql cost decorations)."""
        out = []
        base = len(self.full(dir_rel)) + 1
        for kv in await self.children(dir_rel):
            rest = kv.key[base:].split("/")
            if len(rest) == depth and all(rest):
                out.append((kv, _decode(kv.value)))
        return out


def _id_text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _now() -> int:
    return int(time.time())


def _merge(origin: dict[str, Any], extend: Mapping[str, Any]) -> dict[str, Any]:
    """APISIX's ``core.table.merge`` for PATCH: objects merged deeply, arrays replaced,
    ``null`` deletes the key.  An empty object replaces (Lua cannot tell ``{}`` from an
    empty array): ``{"plugins": {}}`` clears the plugins."""
    for k, v in extend.items():
        if v is None:
            origin.pop(k, None)
        elif isinstance(v, Mapping) and v and isinstance(origin.get(k), dict) and origin[k]:
            _merge(origin[k], v)
        elif isinstance(v, Mapping):
            origin[k] = _without_nulls(v)
        else:
            origin[k] = copy.deepcopy(v)
    return origin


def _without_nulls(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _without_nulls(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_without_nulls(x) for x in v]
    return v


def _patch_path(node: dict[str, Any], sub_path: str, conf: Any) -> tuple[dict[str, Any] | None, str | None]:
    """APISIX's ``core.table.patch``: replace the value at ``a/b/c`` (missing objects made)."""
    names = sub_path.split("/")
    here: Any = node
    for i, name in enumerate(names[:-1]):
        if not isinstance(here, dict):
            return None, "invalid sub-path: /" + "/".join(names[:i])
        if here.get(name) is None:
            here[name] = {}
        here = here[name]
        if not isinstance(here, dict):
            return None, "invalid sub-path: /" + "/".join(names[:i + 1])
    if not isinstance(here, dict):
        return None, "invalid sub-path: /" + sub_path
    last = names[-1]
    if last:
        here[last] = conf
        return node, None
    if not isinstance(conf, dict):
        return None, "invalid configuration"
    return conf, None


def _forbidden_time(conf: Mapping[str, Any]) -> str | None:
    """``create_time``/``update_time`` are set by the server on PUT and POST."""
    def set_(d: Any, k: str) -> bool:
        return isinstance(d, Mapping) and d.get(k) not in (None, False)

    for where, d in (("", conf), ("upstream.", conf.get("upstream")), ("plugins.", conf.get("plugins"))):
        for k in ("create_time", "update_time"):
            if set_(d, k):
                return f"the property is forbidden:  {where}{k}"
    return None


def _arg(args: Mapping[str, list[str]], name: str) -> str | None:
    v = args.get(name)
    return v[0] if v else None


def _number(s: str | None) -> float | None:
    if s is None:
        return None
    try:
        f = float(s.strip())
    except ValueError:
        return None
    return f if f == f and f not in (float("inf"), float("-inf")) else None


def _search(pattern: str, text: Any) -> bool:
    if not isinstance(text, str):
        return False
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return False      # ngx.re.find answers nil (no match) for a bad pattern


class Resources:
    """GET / PUT / POST / PATCH / DELETE of one resource, each returning ``(status, body)``."""

    def __init__(self, store: Store, plugins: PluginRegistry) -> None:
        self.store = store
        self.plugins = plugins

    # -- helpers ----------------------------------------------------------------------------

    def _unsupported(self, res: Resource, method: str) -> Result | None:
        if method in res.unsupported:
            return 405, {"error_msg": f"not supported `{method.upper()}` method for {res.kind}"}
        return None

    def _prepare(self, res: Resource, id: str | None, conf: Any, *, need_id: bool,
                 allow_time: bool) -> tuple[Any, str | None]:
        """APISIX's ``resource:check_conf`` up to the checker: (id, error)."""
        if conf is None:
            return None, "missing configurations"
        if not isinstance(conf, dict):
            return None, f"invalid configuration: wrong type: expected object, got {schema_type_name(conf)}"
        if not res.no_id:
            if id is None and conf.get("id") is not None:
                id = conf["id"]
            if need_id and id is None:
                return None, f"missing {res.kind} id"
            if not need_id and id is not None:
                return None, f"wrong {res.kind} id, do not need it"
            if need_id and conf.get("id") is not None and _id_text(conf["id"]) != _id_text(id):
                return None, f"wrong {res.kind} id"
            if id is None:
                conf.pop("id", None)
            else:
                conf["id"] = id
        if not allow_time:
            err = _forbidden_time(conf)
            if err:
                return None, err
        return id, None

    async def _check(self, res: Resource, id: Any, conf: dict[str, Any], *, need_id: bool,
                     secret_type: str | None = None, consumer: str | None = None) -> str | None:
        ci = CheckInput(res.name, None if id is None else _id_text(id), copy.deepcopy(conf), need_id=need_id,
                        secret_type=secret_type, consumer=consumer)
        return await check_item(ci, self.plugins, self.store)

    def _encrypt(self, res: Resource, value: dict[str, Any], id: str | None) -> dict[str, Any]:
        c = self.store.cipher
        if c is None:
            return value
        return c.encrypt_item(res.cipher_kind, value, id=id if res.name == "plugin_metadata" else None)

    def _show(self, res: Resource, value: Any, id: str | None) -> Any:
        """A stored value as GET shows it: plugin fields decrypted, private keys not shown
        (ssl) or shown as stored (upstream tls.client_key)."""
        if not isinstance(value, dict):
            return value
        out = value
        c = self.store.cipher
        if c is not None:
            out = c.decrypt_item(res.cipher_kind, value, id=id if res.name == "plugin_metadata" else None)
            for up_out, up_raw in ((out, value), (out.get("upstream"), value.get("upstream"))):
                tls_raw = up_raw.get("tls") if isinstance(up_raw, dict) else None
                tls_out = up_out.get("tls") if isinstance(up_out, dict) else None
                if isinstance(tls_raw, dict) and isinstance(tls_out, dict) and "client_key" in tls_raw:
                    tls_out["client_key"] = tls_raw["client_key"]
        if res.name == "ssls":
            out = {k: v for k, v in out.items() if k not in ("key", "keys")}
        return out

    async def _lease(self, args: Mapping[str, list[str]]) -> int:
        ttl = _number(_arg(args, "ttl"))
        if ttl is None:
            return 0
        return await self.store.etcd.grant_lease(max(1, int(ttl)))

    @staticmethod
    def _stamp(conf: dict[str, Any], prev: Any, patch: Any = None) -> None:
        """APISIX's ``inject_timestamp``: create_time kept from the previous value,
        update_time renewed (a PATCH may set it explicitly)."""
        now = _now()
        if conf.get("create_time") is None:
            if isinstance(prev, Mapping) and prev.get("create_time") is not None:
                conf["create_time"] = prev["create_time"]
            else:
                conf["create_time"] = now
        if conf.get("update_time") is None or patch is True or (
                isinstance(patch, Mapping) and patch.get("update_time") is None):
            conf["update_time"] = now

    # -- GET --------------------------------------------------------------------------------

    async def get(self, res: Resource, id: str | None, sub_path: str, args: Mapping[str, list[str]],
                  consumer: str | None = None) -> Result:
        if (r := self._unsupported(res, "get")) is not None:
            return r
        depth = 1
        if res.name == "secrets":
            typ, id = id, _first(sub_path)
            if typ is None:
                directory, depth = "/secrets", 2
            else:
                directory = f"/secrets/{typ}"
        elif res.name == "credentials":
            directory = f"/consumers/{consumer}/credentials"
            if id is None and await self.store.kv(f"/consumers/{consumer}") is None:
                return 404, NOT_FOUND
        else:
            directory = f"/{res.name}"
        if id is not None:
            kv = await self.store.kv(f"{directory}/{id}")
            if kv is None or _placeholder(kv):
                return 404, NOT_FOUND
            return 200, self._envelope(res, kv, _decode(kv.value), id)
        items = [(kv, self._show(res, v, kv.key.rsplit("/", 1)[-1]))
                 for kv, v in await self.store.direct(directory, depth)]
        return self._list(res, items, args)

    def _envelope(self, res: Resource, kv: KV, value: Any, id: str | None) -> dict[str, Any]:
        return {"key": kv.key, "value": self._show(res, value, id), "createdIndex": kv.create_revision,
                "modifiedIndex": kv.mod_revision}

    def _list(self, res: Resource, items: list[tuple[KV, Any]], args: Mapping[str, list[str]]) -> Result:
        """v3_adapter's filter (name, label, uri, filter) and paging (page, page_size)."""
        name, label, uri = _arg(args, "name"), _arg(args, "label"), _arg(args, "uri")
        flt = _arg(args, "filter")
        wanted: dict[str, str] = {}
        if flt is not None:
            for k, vs in parse_qs(flt, keep_blank_values=True).items():
                if k in res.filter_fields:
                    wanted[k] = vs[-1]
        kept = []
        for kv, value in items:
            v = value if isinstance(value, Mapping) else {}
            if name is not None and not _search(name, v.get("name")):
                continue
            if label is not None and not (isinstance(v.get("labels"), Mapping) and label in v["labels"]):
                continue
            if uri is not None:
                uris: list[Any] = v["uris"] if isinstance(v.get("uris"), list) else []
                if not (_search(uri, v.get("uri")) or any(_search(uri, u) for u in uris)):
                    continue
            if any(v.get(k) is None or _id_text(v[k]) != want for k, want in wanted.items()):
                continue
            kept.append((kv, value))
        total = len(kept)
        page, size = _number(_arg(args, "page")), _number(_arg(args, "page_size"))
        if page is not None and size is not None:
            if size < 10 or size > 500:
                return 400, "page_size must be between 10 and 500"
            p = max(1, int(page))
            kept.sort(key=lambda e: e[0].create_revision)
            kept = kept[(p - 1) * int(size):p * int(size)]
        return 200, {"total": total, "list": [
            {"key": kv.key, "value": value, "createdIndex": kv.create_revision, "modifiedIndex": kv.mod_revision}
            for kv, value in kept]}

    # -- PUT --------------------------------------------------------------------------------

    async def put(self, res: Resource, id: str | None, conf: Any, sub_path: str, args: Mapping[str, list[str]],
                  consumer: str | None = None) -> Result:
        if (r := self._unsupported(res, "put")) is not None:
            return r
        typ = None
        base = f"/{res.name}"
        if res.name == "secrets":
            typ, id = id, _first(sub_path)
            if typ is None:
                return 400, {"error_msg": "missing secret type"}
            if id is None:
                return 400, {"error_msg": "missing secret id"}
            id = f"{typ}/{id}"
            base = "/secrets"
        need_id = not res.no_id
        id, err = self._prepare(res, id, conf, need_id=need_id, allow_time=False)
        if err:
            return 400, {"error_msg": err}
        err = await self._check(res, id, conf, need_id=need_id, secret_type=typ, consumer=consumer)
        if err:
            return 400, {"error_msg": err}
        if res.name == "consumers":
            id = conf["username"]     # consumers are keyed by username
        key = f"/consumers/{consumer}/credentials/{id}" if res.name == "credentials" else f"{base}/{_id_text(id)}"
        if res.name == "credentials" and await self.store.kv(f"/consumers/{consumer}") is None:
            return 404, {"error_msg": "consumer not found"}
        if res.name == "plugin_metadata":
            conf["id"] = id
        lease = await self._lease(args)
        for _ in range(8):   # compare-and-swap on the revision read; retried on a concurrent write
            prev = await self.store.kv(key)
            value = dict(conf)
            if res.name != "plugin_metadata":
                self._stamp(value, _decode(prev.value) if prev is not None else None)
            stored = self._encrypt(res, value, _id_text(id))
            rev = await self.store.etcd.put_if(self.store.full(key), _encode(stored),
                                               mod_revision=prev.mod_revision if prev is not None else 0, lease=lease)
            if rev is not None:
                return (200 if prev is not None else 201), {"key": self.store.full(key), "value": stored}
        return 503, {"error_msg": "value changed before overwritten"}

    # -- POST -------------------------------------------------------------------------------

    async def post(self, res: Resource, id: str | None, conf: Any, sub_path: str,
                   args: Mapping[str, list[str]]) -> Result:
        if (r := self._unsupported(res, "post")) is not None:
            return r
        _, err = self._prepare(res, id, conf, need_id=False, allow_time=False)
        if err:
            return 400, {"error_msg": err}
        err = await self._check(res, None, conf, need_id=False)
        if err:
            return 400, {"error_msg": err}
        self._stamp(conf, None)
        lease = await self._lease(args)
        rev = await self.store.etcd.put(self.store.full("/gen_id"), b"1")
        new_id = f"{rev:020d}"
        value = {**conf, "id": new_id}
        stored = self._encrypt(res, value, new_id)
        key = self.store.full(f"/{res.name}/{new_id}")
        await self.store.etcd.put(key, _encode(stored), lease=lease)
        return 201, {"key": key, "value": stored}

    # -- PATCH ------------------------------------------------------------------------------

    async def patch(self, res: Resource, id: str | None, conf: Any, sub_path: str,
                    args: Mapping[str, list[str]]) -> Result:
        if (r := self._unsupported(res, "patch")) is not None:
            return r
        typ = None
        base = f"/{res.name}"
        if res.name == "secrets":
            segs = _segs(sub_path)
            if not segs:
                return 400, {"error_msg": "no secret id"}
            typ, id, sub_path = id, segs[0], "/".join(segs[1:])
            base = f"/secrets/{typ}"
        if id is None:
            return 400, {"error_msg": f"missing {res.kind} id"}
        key = f"{base}/{id}"
        if conf is None:
            return 400, {"error_msg": "missing new configuration"}
        if not sub_path and not isinstance(conf, dict):
            return 400, {"error_msg": "invalid configuration"}
        prev = await self.store.kv(key)
        if prev is None or _placeholder(prev):
            return 404, NOT_FOUND
        old = self.store.plain(key, _decode(prev.value))
        if not isinstance(old, dict):
            return 400, {"error_msg": "invalid configuration"}
        if sub_path:
            node, perr = _patch_path(old, sub_path, copy.deepcopy(conf))
            if perr or node is None:
                return 400, {"error_msg": perr or "invalid configuration"}
            self._stamp(node, None, True)
        else:
            node = _merge(old, conf)
            self._stamp(node, None, conf)
        full_id: Any = f"{typ}/{id}" if typ is not None else id
        _, err = self._prepare(res, full_id, node, need_id=True, allow_time=True)
        if err:
            return 400, {"error_msg": err}
        err = await self._check(res, full_id, node, need_id=True, secret_type=typ)
        if err:
            return 400, {"error_msg": err}
        stored = self._encrypt(res, node, _id_text(id))
        lease = await self._lease(args)
        rev = await self.store.etcd.put_if(self.store.full(key), _encode(stored), mod_revision=prev.mod_revision,
                                           lease=lease)
        if rev is None:
            return 503, {"error_msg": "value changed before overwritten"}
        return 200, {"key": self.store.full(key), "value": stored}

    # -- DELETE -----------------------------------------------------------------------------

    async def delete(self, res: Resource, id: str | None, sub_path: str, args: Mapping[str, list[str]],
                     consumer: str | None = None) -> Result:
        if (r := self._unsupported(res, "delete")) is not None:
            return r
        base = f"/{res.name}"
        if res.name == "secrets":
            typ, id = id, _first(sub_path)
            base = f"/secrets/{typ}"
        if id is None:
            return 400, {"error_msg": f"missing {res.kind} id"}
        key = f"/consumers/{consumer}/credentials/{id}" if res.name == "credentials" else f"{base}/{id}"
        if _arg(args, "force") != "true":
            err = await self._delete_check(res, id)
            if err:
                return 400, {"error_msg": err}
        if res.name == "consumers":
            # a consumer's credentials go with it (APISIX: rmdir <key>/credentials/)
            await self.store.etcd.delete(self.store.full(key + "/credentials/"), prefix=True)
        if await self.store.etcd.delete(self.store.full(key)) == 0:
            return 404, NOT_FOUND
        return 200, {"deleted": "1", "key": self.store.full(key)}

    async def _items(self, name: str) -> list[dict[str, Any]]:
        return [v for _, v in await self.store.direct(f"/{name}") if isinstance(v, dict)]

    async def _delete_check(self, res: Resource, id: str) -> str | None:
        """APISIX's delete checkers: refuse while another object refers to this one."""
        if res.name == "upstreams":
            direct = {"route": "routes", "service": "services"}
            for word, name in (("route", "routes"), ("service", "services"), ("plugin_config", "plugin_configs"),
                               ("consumer", "consumers"), ("consumer_group", "consumer_groups"),
                               ("global_rules", "global_rules")):
                for item in await self._items(name):
                    oid = item.get("username") if name == "consumers" else item.get("id")
                    if _upstream_in_plugins(item.get("plugins"), id):
                        return f"can not delete this upstream, plugin in {word} [{_id_text(oid)}] is still using it now"
                    if word in direct and item.get("upstream_id") is not None and _id_text(item["upstream_id"]) == id:
                        return f"can not delete this upstream, {word} [{_id_text(oid)}] is still using it now"
        elif res.name == "services":
            for word, name in (("route", "routes"), ("stream_route", "stream_routes")):
                for item in await self._items(name):
                    if item.get("service_id") is not None and _id_text(item["service_id"]) == id:
                        return (f"can not delete this service directly, {word} [{_id_text(item.get('id'))}] "
                                "is still using it now")
        elif res.name == "plugin_configs":
            for item in await self._items("routes"):
                if item.get("plugin_config_id") is not None and _id_text(item["plugin_config_id"]) == id:
                    return f"can not delete this plugin config, route [{_id_text(item.get('id'))}] is still using it now"
        elif res.name == "consumer_groups":
            for item in await self._items("consumers"):
                if item.get("group_id") is not None and _id_text(item["group_id"]) == id:
                    return (f"can not delete this consumer group, consumer [{item.get('username')}] "
                            "is still using it now")
        elif res.name == "protos":
            for word, name in (("route", "routes"), ("service", "services")):
                for item in await self._items(name):
                    gt = item.get("plugins", {}).get("grpc-transcode") if isinstance(item.get("plugins"), dict) else None
                    if isinstance(gt, dict) and gt.get("proto_id") is not None and _id_text(gt["proto_id"]) == id:
                        return f"can not delete this proto, {word} [{_id_text(item.get('id'))}] is still using it now"
        elif res.name == "stream_routes":
            for item in await self._items("stream_routes"):
                proto = item.get("protocol")
                if isinstance(proto, dict) and proto.get("superior_id") is not None \
                        and _id_text(proto["superior_id"]) == id:
                    return (f"can not delete this stream route directly, stream route [{_id_text(item.get('id'))}] "
                            "is still using it as superior_id")
        return None


def _upstream_in_plugins(plugins: Any, up_id: str) -> bool:
    """A traffic-split rule sending traffic to this upstream by id."""
    ts = plugins.get("traffic-split") if isinstance(plugins, dict) else None
    rules = ts.get("rules") if isinstance(ts, dict) else None
    for rule in rules if isinstance(rules, list) else ():
        ups = rule.get("weighted_upstreams") if isinstance(rule, dict) else None
        for u in ups if isinstance(ups, list) else ():
            if isinstance(u, dict) and u.get("upstream_id") is not None and _id_text(u["upstream_id"]) == up_id:
                return True
    return False


def _first(sub_path: str) -> str | None:
    segs = _segs(sub_path)
    return segs[0] if segs else None


def _segs(sub_path: str) -> list[str]:
    return [s for s in sub_path.split("/") if s] if sub_path else []


