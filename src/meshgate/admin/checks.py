"""What the Admin API checks before it writes an object, in APISIX's order and words.

Theory of operation
-------------------
APISIX checks an Admin API write in a fixed order (``apisix/admin/<resource>.lua``
``check_conf``): a few whole-object rules, the JSON schema of the kind, the inline
upstream, the objects the item references (which must exist in etcd), each plugin
conf, then rules expressed in code.  The first failure is the answer, as one
``error_msg`` string such as ``invalid configuration: property "uri" validation
failed: ...``; clients and APISIX's own tests compare those strings, so they are
reproduced here:

* schema errors: lua-jsonschema stops at the first failing keyword, in its own
  traversal order (type, then each property in turn, then required, ..., then
  allOf/anyOf/oneOf/not).  :func:`schema_error` asks ``jsonschema`` for every error,
  picks the one lua-jsonschema meets first (:func:`_lua_order`) and words it with
  :func:`meshgate.plugins.schema_message` (the wording plugin conf errors use too);
* the checks APISIX writes in code (``only one of host or hosts is allowed``,
  ``failed to fetch upstream info by upstream id [1], response code: 404``,
  ``duplicate key of plugin key-auth found with consumer: bob``...) with its texts.

After APISIX's checks, every item also goes through Meshgate's own
:func:`meshgate.model.validate_item`, the validator every config source uses, so the
Admin API never stores what the data plane would refuse (config-supplied Lua above
all: ``filter_func``, ``script``, ``_meta.pre_function``; CVE-2020-13945).  Its
findings are reported in the same ``invalid configuration: property "x" validation
failed: ...`` shape.

Reference lookups go through :class:`Refs` (the etcd store of the Admin API) so that
this module stays free of I/O details.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError

from ..errors import ConfigError
from ..model import SCHEMAS
from ..model.schemas import (
    CREDENTIAL_SCHEMA,
    SECRET_MANAGER_SCHEMAS,
    UPSTREAM_HASH_HEADER_PATTERN,
    UPSTREAM_HASH_VARS_PATTERN,
    UPSTREAM_SCHEMA,
)
from ..plugins import META_SCHEMA, PluginRegistry, schema_message
from ..router import compile_expr

__all__ = ["Refs", "CheckInput", "check_item", "schema_error", "plugins_error", "SECRET_REF", "item_schema",
           "cjson", "safety_net", "model_message"]


class Refs(Protocol):
    """Read access to the stored objects (paths relative to the etcd prefix)."""

    async def fetch(self, path: str) -> Any | None:
        """``/upstreams/1`` → the stored value (decrypted), or None when there is none."""

    async def values(self, path: str) -> list[tuple[str, Any]]:
        """Every ``(key relative to the prefix, value)`` under the directory ``path``."""


class CheckInput:
    """One write to check: resource name, id (as APISIX passes it to its checker), the conf."""

    __slots__ = ("res", "id", "conf", "need_id", "secret_type", "consumer", "skip_refs")

    def __init__(self, res: str, id: str | None, conf: dict[str, Any], *, need_id: bool,
                 secret_type: str | None = None, consumer: str | None = None, skip_refs: bool = False) -> None:
        self.res = res
        self.id = id
        self.conf = conf
        self.need_id = need_id
        self.secret_type = secret_type
        self.consumer = consumer          # credentials: the consumer the credential belongs to
        self.skip_refs = skip_refs


SECRET_REF = re.compile(r"^\$(secret|env|ENV)://")

# --- schema errors in lua-jsonschema's order ---------------------------------------------------

_FORMAT_CHECKER = Draft7Validator.FORMAT_CHECKER
_VALIDATORS: dict[int, tuple[Mapping[str, Any], Draft7Validator]] = {}

# the order in which lua-jsonschema's generated validator tests the keywords of one schema
_RANK = {k: i for i, k in enumerate((
    "type", "properties", "required", "dependencies", "patternProperties", "additionalProperties",
    "minProperties", "maxProperties", "minItems", "maxItems", "items", "additionalItems", "uniqueItems",
    "minLength", "maxLength", "pattern", "minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum",
    "multipleOf", "enum", "allOf", "anyOf", "oneOf", "if", "not", "format", "const", "contains"))}
_RANK["additionalProperties"] = _RANK["patternProperties"]   # one walk over the keys in lua


def _validator(schema: Mapping[str, Any]) -> Draft7Validator:
    got = _VALIDATORS.get(id(schema))
    if got is None or got[0] is not schema:
        got = (schema, Draft7Validator(schema, format_checker=_FORMAT_CHECKER))
        _VALIDATORS[id(schema)] = got
    return got[1]


def _lua_order(root: Mapping[str, Any], err: ValidationError) -> tuple[int, ...]:
    """Sort key: where lua-jsonschema would meet ``err`` while checking ``root``.

    Walks the schema path; at each level (rank of the keyword, position, sub-position):
    a property's position is its place in ``properties`` (lua checks a missing required
    property, and that property's dependencies, where it checks the property)."""
    key: list[int] = []
    node: Any = root
    tokens = list(err.absolute_schema_path)
    path = list(err.absolute_path)
    i = j = 0
    while i < len(tokens) and isinstance(node, Mapping):
        t = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        props = list(node.get("properties") or ())
        if t == "properties" and nxt is not None:
            key += (_RANK["properties"], props.index(str(nxt)) if nxt in props else 0, 0)
            node = node["properties"].get(nxt)
            i, j = i + 2, j + 1
        elif t == "patternProperties" and nxt is not None:
            key += (_RANK[t], 0, 0)
            node = node[t].get(nxt)
            i, j = i + 2, j + 1
        elif t == "additionalProperties" and i + 1 < len(tokens):
            key += (_RANK[t], 0, 0)
            node = node[t]
            i, j = i + 1, j + 1
        elif t == "items" and i + 1 < len(tokens):
            if isinstance(nxt, int):
                key += (_RANK[t], nxt, 0)
                node = node[t][nxt]
                i += 2
            else:
                here = path[j] if j < len(path) else 0
                key += (_RANK[t], here if isinstance(here, int) else 0, 0)
                node = node[t]
                i += 1
            j += 1
        elif t in ("allOf", "anyOf", "oneOf") and isinstance(nxt, int):
            key += (_RANK[t], nxt, 0)
            node = node[t][nxt]
            i += 2
        elif t == "dependencies" and nxt is not None and i + 2 < len(tokens):
            key += (_RANK["properties"], props.index(nxt), 1) if nxt in props else (_RANK[t], 0, 0)
            node = node[t].get(nxt)
            i += 2
        elif t in ("then", "else") and i + 1 < len(tokens):   # the if keyword's branches
            key += (_RANK["if"], 0, 0)
            node = node.get(t)
            i += 1
        else:   # the failing keyword
            vv: Any = err.validator_value
            if t == "required" and isinstance(err.instance, Mapping):
                missing = [k for k in vv if k not in err.instance]
                first = min(missing, key=lambda k: props.index(k) if k in props else len(props)) if missing else ""
                key += (_RANK["properties"], props.index(first), 2) if first in props else (_RANK[t], 0, 0)
            elif t == "dependencies" and isinstance(err.instance, Mapping):
                owners = [p for p in vv if p in err.instance]
                first = owners[0] if owners else ""
                key += (_RANK["properties"], props.index(first), 1) if first in props else (_RANK[t], 0, 0)
            else:
                key += (_RANK.get(str(t), 99), 0, 0)
            i += 1
    return tuple(key)


def schema_error(schema: Mapping[str, Any], value: Any) -> str | None:
    """The first error lua-jsonschema reports for ``value``, in its words; None when valid."""
    try:
        errors = list(_validator(schema).iter_errors(value))
    except RecursionError:
        return "value is nested too deeply"
    except TypeError:   # non-string keys: impossible from JSON
        return "expected object keys to be strings"
    if not errors:
        return None
    err = min(errors, key=lambda e: _lua_order(schema, e))
    msg = schema_message(err)
    if err.validator == "anyOf":
        # lua-jsonschema lists the alternatives when they are "required" sets
        reqs = [json.dumps(b["required"], separators=(",", ":")) for b in err.validator_value
                if isinstance(b, Mapping) and isinstance(b.get("required"), list)]
        if reqs:
            msg += ": " + " or ".join(reqs)
    return msg


def cjson(v: Any) -> str:
    """A value as lua-cjson writes it inside messages (compact)."""
    try:
        return json.dumps(v, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(v)


# --- the safety net: Meshgate's own validator ----------------------------------------------------


def _chain(conf: Any, pointer: str, message: str) -> str:
    """``/upstream/nodes/0/port`` + message as lua-jsonschema nests it."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]] if pointer else []
    words: list[str] = []
    node = conf
    for p in parts:
        if isinstance(node, list) and p.isdigit():
            words.append(f"failed to validate item {int(p) + 1}: ")
            node = node[int(p)] if int(p) < len(node) else None
        else:
            words.append(f'property "{p}" validation failed: ')
            node = node.get(p) if isinstance(node, Mapping) else None
    return "".join(words) + message


def safety_net(model_kind: str, conf: Mapping[str, Any], id: str | None) -> str | None:
    """Meshgate's validator (what every config source applies) on the value to store."""
    from ..model import validate_item

    errors = validate_item(model_kind, conf, id=id)
    if not errors:
        return None
    # the refusal of config-supplied Lua says more than what follows from it
    e = next((x for x in errors if x.message.startswith("not supported")), errors[0])
    return model_message(conf, e.pointer, e.message)


def model_message(conf: Any, pointer: str, message: str) -> str:
    """A finding of Meshgate's validator at ``pointer`` (relative to ``conf``) in APISIX's shape:
    ``invalid configuration: property "upstream" validation failed: ...``."""
    return "invalid configuration: " + _chain(conf, pointer, message)


# --- plugins ---------------------------------------------------------------------------------

# what APISIX injects as the ``_meta`` property of every plugin schema (pre_function is
# accepted by the schema and refused afterwards by Meshgate's validator: no Lua from config)
_META = {**META_SCHEMA, "properties": {**META_SCHEMA["properties"], "pre_function": {"type": "string"}}}
_CHECK_PREFIX = "failed to check the configuration of plugin "


def plugins_error(plugins: Mapping[str, Any], registry: PluginRegistry, schema_type: str = "route") -> str | None:
    """APISIX's ``plugin.check_schema``: the first plugin conf that does not check."""
    for name, conf in plugins.items():
        if not isinstance(conf, dict):
            return f"invalid plugin conf {cjson(conf)} for plugin [{name}]"
        p = registry.get(name)
        if p is None:
            return f"unknown plugin [{name}]"
        meta = conf.get("_meta")
        if meta is not None:
            err = schema_error(_META, meta)
            if err is not None:
                return f'{_CHECK_PREFIX}{name} err: property "_meta" validation failed: {err}'
            if isinstance(meta, Mapping) and meta.get("filter"):
                try:
                    compile_expr(meta["filter"], "/_meta/filter")
                except ConfigError as e:
                    return f"failed to validate the 'vars' expression: {e.message}"
        checked = conf
        if isinstance(meta, Mapping) and "pre_function" in meta:
            # refused by the safety net with Meshgate's reason; the registry's _meta check
            # (which has no pre_function) must not answer first with a vaguer one
            checked = {**conf, "_meta": {k: v for k, v in meta.items() if k != "pre_function"}}
        try:
            registry.validate(name, checked, pointer=f"/plugins/{name}", schema_type=schema_type)
        except ConfigError as e:
            return e.message
    return None


def metadata_error(name: str, conf: Mapping[str, Any], registry: PluginRegistry) -> str | None:
    """A plugin_metadata body against the plugin's metadata schema (``invalid configuration: ...``)."""
    try:
        registry.validate(name, dict(conf), pointer="", schema_type="metadata")
    except ConfigError as e:
        msg = e.message
        prefix = f"{_CHECK_PREFIX}{name} err: "
        return "invalid configuration: " + (msg[len(prefix):] if msg.startswith(prefix) else msg)
    return None


# --- the per-kind checks ---------------------------------------------------------------------


def item_schema(res: str, secret_type: str | None = None) -> Mapping[str, Any] | None:
    """The JSON schema APISIX checks a resource with (None: checked otherwise)."""
    if res == "credentials":
        return CREDENTIAL_SCHEMA
    if res == "secrets":
        return SECRET_MANAGER_SCHEMAS.get(secret_type or "")
    if res == "plugin_metadata":
        return None
    return SCHEMAS.get(res)


Check = Callable[[CheckInput, PluginRegistry, Refs], Awaitable["str | None"]]


async def _ref(refs: Refs, what: str, words: str, value: Any) -> str | None:
    """``failed to fetch <words> info by <words> id [x], response code: 404``."""
    if value is None:
        return None
    if await refs.fetch(f"/{what}/{_id_text(value)}") is None:
        return f"failed to fetch {words} info by {words} id [{_id_text(value)}], response code: 404"
    return None


def _id_text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _schema(ci: CheckInput) -> str | None:
    schema = item_schema(ci.res, ci.secret_type)
    if schema is None:
        return None
    err = schema_error(schema, ci.conf)
    return None if err is None else "invalid configuration: " + err


async def _check_route(ci: CheckInput, reg: PluginRegistry, refs: Refs) -> str | None:
    c = ci.conf
    if "host" in c and "hosts" in c:
        return "only one of host or hosts is allowed"
    if "remote_addr" in c and "remote_addrs" in c:
        return "only one of remote_addr or remote_addrs is allowed"
    err = _schema(ci)
    if err:
        return err
    if isinstance(c.get("upstream"), dict):
        err = await upstream_error(c["upstream"], refs, skip_refs=ci.skip_refs)
        if err:
            return err
    if not ci.skip_refs:
        for field, what, words in (("upstream_id", "upstreams", "upstream"), ("service_id", "services", "service"),
                                   ("plugin_config_id", "plugin_configs", "plugin config")):
            err = await _ref(refs, what, words, c.get(field))
            if err:
                return err
    if isinstance(c.get("plugins"), dict):
        err = plugins_error(c["plugins"], reg)
        if err:
            return err
    if "vars" in c:
        try:
            compile_expr(c["vars"], "/vars")
        except ConfigError as e:
            return f"failed to validate the 'vars' expression: {e.message}"
    return None


async def _check_service(ci: CheckInput, reg: PluginRegistry, refs: Refs) -> str | None:
    c = ci.conf
    err = _schema(ci)
    if err:
        return err
    if isinstance(c.get("upstream"), dict):
        err = await upstream_error(c["upstream"], refs, skip_refs=ci.skip_refs)
        if err:
            return err
    if not ci.skip_refs:
        err = await _ref(refs, "upstreams", "upstream", c.get("upstream_id"))
        if err:
            return err
    if isinstance(c.get("plugins"), dict):
        return plugins_error(c["plugins"], reg)
    return None


async def _check_upstream(ci: CheckInput, reg: PluginRegistry, refs: Refs) -> str | None:
    return await upstream_error(ci.conf, refs, skip_refs=ci.skip_refs)


def _is_ipv6(host: Any) -> bool:
    if not isinstance(host, str):
        return False
    try:
        return isinstance(ipaddress.ip_address(host.split("%", 1)[0]), ipaddress.IPv6Address)
    except ValueError:
        return False


def _port_of(addr: str) -> int | None:
    """The port of a ``nodes`` key as APISIX's ``parse_addr`` finds it (None: no port)."""
    if addr.startswith("["):
        if addr.endswith("]"):
            return None
        host, _, port = addr.rpartition(":")
        if not host.endswith("]"):
            return None
    elif "." not in addr and addr.count(":") >= 2:
        return None   # a bare IPv6 literal
    else:
        _, sep, port = addr.rpartition(":")
        if not sep:
            return None
    try:
        return int(port)
    except ValueError:
        return None


async def upstream_error(up: dict[str, Any], refs: Refs, *, skip_refs: bool = False) -> str | None:
    """APISIX's ``check_upstream_conf`` (admin side)."""
    nodes = up.get("nodes")
    if isinstance(nodes, list):
        for node in nodes:
            if isinstance(node, Mapping) and _is_ipv6(node.get("host")):
                return "invalid configuration: IPv6 address must be enclosed with '[' and ']'"
    err = schema_error(UPSTREAM_SCHEMA, up)
    if err:
        return "invalid configuration: " + err
    if isinstance(nodes, Mapping):
        for addr in nodes:
            port = _port_of(str(addr))
            if port is not None and not 1 <= port <= 65535:
                return f"invalid port {port}"
    tls = up.get("tls")
    ssl_id = tls.get("client_cert_id") if isinstance(tls, Mapping) else None
    if ssl_id is not None and not skip_refs:
        ssl = await refs.fetch(f"/ssls/{_id_text(ssl_id)}")
        if ssl is None:
            return f"failed to fetch ssl info by ssl id [{_id_text(ssl_id)}], response code: 404"
        if not isinstance(ssl, Mapping) or ssl.get("type") != "client":
            return f"failed to fetch ssl info by ssl id [{_id_text(ssl_id)}], wrong ssl type"
    if up.get("pass_host") == "rewrite" and not up.get("upstream_host"):
        return "`upstream_host` can't be empty when `pass_host` is `rewrite`"
    if isinstance(tls, Mapping) and isinstance(tls.get("client_cert"), str):
        err = pem_error(tls["client_cert"], tls.get("client_key"))
        if err:
            return err
    if up.get("type") != "chash":
        return None
    hash_on = up.get("hash_on", "vars")
    key = up.get("key")
    if hash_on != "consumer" and not key:
        return "missing key"
    pattern = {"vars": UPSTREAM_HASH_VARS_PATTERN, "header": UPSTREAM_HASH_HEADER_PATTERN,
               "cookie": UPSTREAM_HASH_HEADER_PATTERN}.get(str(hash_on))
    if pattern is not None and isinstance(key, str) and not re.search(pattern, key):
        return f'invalid configuration: failed to match pattern "{pattern}" with "{key}"'
    return None


def pem_error(cert: Any, key: Any) -> str | None:
    """APISIX's ``ssl.validate``: the certificate (chain) and, when given, the key parse."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if not isinstance(cert, str):
        return "failed to parse cert: PEM_read_bio_X509_AUX() failed"
    try:
        if not x509.load_pem_x509_certificates(cert.encode()):
            raise ValueError("no certificate")
    except ValueError:
        return "failed to parse cert: PEM_read_bio_X509_AUX() failed"
    if key is None:
        return None
    if not isinstance(key, str):
        return "failed to parse key: PEM_read_bio_PrivateKey() failed"
    try:
        serialization.load_pem_private_key(key.encode(), password=None)
    except (ValueError, TypeError):
        return "failed to parse key: PEM_read_bio_PrivateKey() failed"
    return None


async def _check_ssl(ci: CheckInput, reg: PluginRegistry, refs: Refs) -> str | None:
    c = ci.conf
    err = _schema(ci)
    if err:
        return err

    def ref(v: Any) -> bool:
        return isinstance(v, str) and SECRET_REF.match(v) is not None

    if not ref(c.get("cert")) and not ref(c.get("key")):
        err = pem_error(c.get("cert"), c.get("key"))
        if err:
            return err
    if c.get("type") == "client":
        return None
    certs, keys = c.get("certs") or [], c.get("keys") or []
    if len(certs) != len(keys):
        return "mismatched number of certs and keys"
    for i, (cert, key) in enumerate(zip(certs, keys), start=1):
        if not ref(cert) and not ref(key):
            err = pem_error(cert, key)
            if err:
                return f"failed to handle cert-key pair[{i}]: {err}"
    client = c.get("client")
    if isinstance(client, Mapping) and not ref(client.get("ca")):
        err = pem_error(client.get("ca"), None)
        if err:
            return f"failed to validate client_cert: {err}"
    return None


_UNIQUE_KEY_ATTRS = {"key-auth": "key", "basic-auth": "username", "jwt-auth": "key", "hmac-auth": "key_id",
                     "ldap-auth": "user_dn", "ldap-auth-advanced": "user_dn"}


async def _duplicate_key(plugins: Mapping[str, Any], consumer: str, credential: str | None,
                         refs: Refs) -> str | None:
    """APISIX's ``check_duplicate_key``: an auth key identifies one consumer only."""
    wanted = {name: conf[attr] for name, attr in _UNIQUE_KEY_ATTRS.items()
              if isinstance(conf := plugins.get(name), Mapping) and isinstance(conf.get(attr), str)
              and not SECRET_REF.match(conf[attr])}
    if not wanted:
        return None
    for key, value in await refs.values("/consumers"):
        parts = key.split("/")     # ["", "consumers", name] or [..., name, "credentials", id]
        if len(parts) == 3:
            owner_name, owner_cred = parts[2], None
        elif len(parts) == 5 and parts[3] == "credentials":
            owner_name, owner_cred = parts[2], parts[4]
        else:
            continue
        if not isinstance(value, Mapping) or not isinstance(value.get("plugins"), Mapping):
            continue
        if credential is not None:
            is_self = owner_name == consumer and owner_cred == credential
        else:
            is_self = owner_name == consumer
        if is_self:
            continue
        for name, want in wanted.items():
            conf = value["plugins"].get(name)
            if isinstance(conf, Mapping) and conf.get(_UNIQUE_KEY_ATTRS[name]) == want:
                owner = (f"credential: {owner_cred} of consumer: {owner_name}" if owner_cred is not None
                         else f"consumer: {owner_name}")
                return f"duplicate {_UNIQUE_KEY_ATTRS[name]} of plugin {name} found with {owner}"
    return None


async def _check_consumer(ci: CheckInput, reg: PluginRegistry, refs: Refs) -> str | None:
    c = ci.conf
    err = _schema(ci)
    if err:
        return err
    if ci.id is not None and ci.id != c.get("username"):
        return "wrong username"
    if isinstance(c.get("plugins"), dict):
        err = plugins_error(c["plugins"], reg, "consumer")
        if err:
            return "invalid plugins configuration: " + err
        if not ci.skip_refs:
            err = await _duplicate_key(c["plugins"], str(c.get("username")), None, refs)
            if err:
                return err
    if not ci.skip_refs and c.get("group_id") is not None:
        err = await _ref(refs, "consumer_groups", "consumer group", c["group_id"])
        if err:
            return err
    return None


async def _check_credential(ci: CheckInput, reg: PluginRegistry, refs: Refs) -> str | None:
    c = ci.conf
    err = _schema(ci)
    if err:
        return err
    plugins = c.get("plugins")
    if isinstance(plugins, dict):
        err = plugins_error(plugins, reg, "consumer")
        if err:
            return "invalid plugins configuration: " + err
        for name in plugins:
            p = reg.get(name)
            if p is None:
                return f"unknown plugin {name}"
            if p.type != "auth":
                return "only supports auth type plugins in consumer credential"
        if ci.consumer is not None and not ci.skip_refs:
            return await _duplicate_key(plugins, ci.consumer, ci.id, refs)
    return None


async def _check_with_plugins(ci: CheckInput, reg: PluginRegistry, refs: Refs) -> str | None:
    """consumer_groups, plugin_configs: schema, then the plugins."""
    err = _schema(ci)
    if err:
        return err
    plugins = ci.conf.get("plugins")
    return plugins_error(plugins, reg) if isinstance(plugins, dict) else None


async def _check_global_rule(ci: CheckInput, reg: PluginRegistry, refs: Refs) -> str | None:
    err = await _check_with_plugins(ci, reg, refs)
    if err:
        return err
    plugins = ci.conf.get("plugins")
    if not isinstance(plugins, dict) or ci.skip_refs:
        return None
    # a plugin may be configured by one global rule only (APISIX 3.14+)
    for _, other in await refs.values("/global_rules"):
        if not isinstance(other, Mapping) or other.get("id") is None or _id_text(other["id"]) == _id_text(ci.id):
            continue
        theirs = other.get("plugins")
        if isinstance(theirs, Mapping):
            for name in plugins:
                if name in theirs:
                    return f"plugin '{name}' already exists in global rule with id '{_id_text(other['id'])}'"
    return None


def _cidr_ok(v: str) -> bool:
    try:
        ipaddress.ip_network(v, strict=False)
        return True
    except ValueError:
        return False


async def _check_stream_route(ci: CheckInput, reg: PluginRegistry, refs: Refs) -> str | None:
    c = ci.conf
    err = _schema(ci)
    if err:
        return err
    if not ci.skip_refs:
        for field, what, words in (("upstream_id", "upstreams", "upstream"), ("service_id", "services", "service")):
            err = await _ref(refs, what, words, c.get(field))
            if err:
                return err
    proto = c.get("protocol")
    if isinstance(proto, Mapping) and proto.get("superior_id") is not None and not ci.skip_refs:
        sup = _id_text(proto["superior_id"])
        if ci.id is not None and sup == _id_text(ci.id):
            return "stream route can not set itself as superior_id"
        superior = await refs.fetch(f"/stream_routes/{sup}")
        if superior is None:
            return f"failed to fetch stream routes[{sup}], response code: 404"
        sp = superior.get("protocol") if isinstance(superior, Mapping) else None
        if isinstance(sp, Mapping) and sp.get("name") != proto.get("name"):
            return (f"protocol mismatch: subordinate protocol [{proto.get('name')}] does not match "
                    f"superior protocol [{sp.get('name')}]")
    if isinstance(c.get("plugins"), dict):
        err = plugins_error(c["plugins"], reg)
        if err:
            return err
    for field in ("remote_addr", "server_addr"):
        if isinstance(c.get(field), str) and not _cidr_ok(c[field]):
            return f"invalid {field}: {c[field]}"
    if isinstance(proto, Mapping):
        # Meshgate implements no xRPC protocol (APISIX: redis, dubbo as stream subsystems)
        return f"unknown protocol [{proto.get('name')}]"
    return None


async def _check_plugin_metadata(ci: CheckInput, reg: PluginRegistry, refs: Refs) -> str | None:
    if not ci.id:
        return "missing plugin name"
    if reg.get(ci.id) is None:
        return "invalid plugin name"
    return metadata_error(ci.id, ci.conf, reg)


async def _check_proto(ci: CheckInput, reg: PluginRegistry, refs: Refs) -> str | None:
    return _schema(ci)


async def _check_secret(ci: CheckInput, reg: PluginRegistry, refs: Refs) -> str | None:
    if not ci.secret_type:
        return "missing secret type"
    if ci.secret_type not in SECRET_MANAGER_SCHEMAS:
        return f"invalid secret manager: {ci.secret_type}"
    return _schema(ci)


_CHECKS: dict[str, Check] = {
    "routes": _check_route,
    "services": _check_service,
    "upstreams": _check_upstream,
    "consumers": _check_consumer,
    "credentials": _check_credential,
    "consumer_groups": _check_with_plugins,
    "plugin_configs": _check_with_plugins,
    "global_rules": _check_global_rule,
    "ssls": _check_ssl,
    "stream_routes": _check_stream_route,
    "plugin_metadata": _check_plugin_metadata,
    "protos": _check_proto,
    "secrets": _check_secret,
}


async def check_item(ci: CheckInput, registry: PluginRegistry, refs: Refs) -> str | None:
    """Every check of one write: APISIX's, then Meshgate's validator.  The first problem, or None."""
    err = await _CHECKS[ci.res](ci, registry, refs)
    if err:
        return err
    model_kind = "credentials" if ci.res == "credentials" else ci.res
    if ci.res == "plugin_metadata":
        return None     # the envelope is the plugin's metadata, checked above
    return safety_net(model_kind, ci.conf, _model_id(ci))


def _model_id(ci: CheckInput) -> str | None:
    if ci.res == "consumers":
        u = ci.conf.get("username")
        return u if isinstance(u, str) else None
    return None if ci.id is None else _id_text(ci.id)
