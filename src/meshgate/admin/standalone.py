"""API-driven standalone mode: ``/apisix/admin/configs`` (``deployment.role: traditional`` with
``config_provider: yaml``), the full-state push used by apisix-ingress-controller and ADC.

Behaviour matched (APISIX 3.18, ``apisix/admin/standalone.lua``, ``apisix/admin/config_validate.lua``,
``apisix/core/config_yaml.lua``; tests ``t/admin/standalone.spec.ts``, ``t/admin/standalone.t``):

``GET /apisix/admin/configs``
    The last accepted document as it was pushed, plus ``<key>_conf_version`` for every key and
    the ``X-Last-Modified`` / ``X-Digest`` metadata (in the body, as APISIX keeps them in its
    shared dict, and as response headers).  Before the first push: every counter at 0 and no
    metadata.  YAML when ``Accept`` starts with ``application/yaml``, JSON otherwise.
``HEAD /apisix/admin/configs``
    200 with the two metadata headers only.
``PUT /apisix/admin/configs``
    ``X-Digest`` is required (400 ``missing digest header``); the body is YAML when
    ``Content-Type`` starts with ``application/yaml``, JSON otherwise.  A digest equal to the
    last accepted one answers 204 without looking further.  Then the whole document is validated
    and the first problem answers 400 ``{"error_msg": ...}``: nothing is applied.  Per key,
    ``<key>_conf_version`` greater than the current one rebuilds that kind from the document,
    equal keeps the kind as it is (whatever the document says), lower is refused; absent means
    current + 1.  Within a rebuilt kind an item whose ``modifiedIndex`` equals the one already
    served keeps its old value (config_yaml.lua ``sync_data``).  Answer: 202 with the metadata
    headers.
``POST /apisix/admin/configs/validate``
    The same validation, every problem listed: 400 ``{"error_msg": "Configuration validation
    failed", "errors": [{resource_type, resource_id, index, error}]}``, or 200 ``{}``.
Anything else
    nginx's 404 page (APISIX's admin router has no other route in this mode).

Validation is :func:`.config_doc.check_document`, the one the etcd-mode validate endpoint uses
too: each item through the Admin API's checker of its kind (:mod:`.checks`), in APISIX's words
(``invalid configuration: property "uri" validation failed: ...``, ``unknown plugin [x]``,
``found duplicate id r1 in routes``...).  Dangling references (``upstream_id`` ...) are accepted
and logged: APISIX validates pushes with ``skip_references_check`` (the request fails at run
time), and one missing object must not block the rest of a controller's state.

The counters, the document and the digest live as long as the process, shared by every
``StandaloneAPI`` built on the same :class:`ConfigStore` (APISIX keeps them in the
``standalone-config`` shared dict); the store's snapshot is what the workers serve.
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from ..config import ConfigStore, load_yaml
from ..errors import ConfigError
from ..model import KINDS, check_references, type_name
from ..plugins import PluginRegistry
from .config_doc import (CONFIG_KEYS, VERSION_SUFFIX, CheckedDocument, Number, check_document, is_number,
                         lua_tostring, validation_answer)
from .httpserver import ApiRequest, Response, json_response

__all__ = ["StandaloneAPI"]

log = logging.getLogger("meshgate.admin")

# Not the standard Last-Modified: APISIX avoids it so client caches are not affected.
LAST_MODIFIED = "X-Last-Modified"
DIGEST = "X-Digest"
MAX_VALIDATE_BODY = 1572864  # config_validate.lua: 1.5 MiB, as other Admin API handlers

_NOT_FOUND_PAGE = (b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n"
                   b"<center><h1>404 Not Found</h1></center>\r\n<hr><center>meshgate</center>\r\n"
                   b"</body>\r\n</html>\r\n")


@dataclass(slots=True)
class _State:
    """What APISIX keeps in the ``standalone-config`` shared dict: the accepted document with
    its counters and metadata (None before the first push)."""

    config: dict[str, Any] | None = None

    def version(self, key: str) -> Number:
        v = self.config.get(key + VERSION_SUFFIX, 0) if self.config is not None else 0
        return v if is_number(v) else 0


# One state per store, for the life of the process, whoever builds the handler.
_STATES: weakref.WeakKeyDictionary[ConfigStore, _State] = weakref.WeakKeyDictionary()


class StandaloneAPI:
    """Handler of ``/apisix/admin/configs[/validate]``; authentication is the caller's."""

    def __init__(self, store: ConfigStore, plugins: PluginRegistry, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.plugins = plugins
        self._clock = clock
        state = _STATES.get(store)
        if state is None:
            state = _STATES[store] = _State()
        self._state = state

    # --- read-only views (Control API, tests) ----------------------------------------------

    @property
    def conf_versions(self) -> dict[str, Number]:
        return {key: self._state.version(key) for key in CONFIG_KEYS}

    @property
    def digest(self) -> str | None:
        cfg = self._state.config
        return None if cfg is None else cfg.get(DIGEST)

    # --- dispatch ----------------------------------------------------------------------------

    async def handle(self, req: ApiRequest, sub: str) -> Response:
        """``sub`` is the path after ``/apisix/admin/configs``: ``""`` or ``"/validate"``."""
        method = req.method.upper()
        if sub == "":
            if method == "GET":
                return self._get(req)
            if method == "HEAD":
                return 200, self._meta_headers(), b""
            if method == "PUT":
                return await self._put(req)
        elif sub == "/validate" and method == "POST":
            return await self._validate(req)
        # APISIX's admin router has no route for it: ngx.exit(404), nginx's page
        return 404, {"Content-Type": "text/html"}, _NOT_FOUND_PAGE

    # --- GET ---------------------------------------------------------------------------------

    def _meta_headers(self) -> dict[str, str]:
        cfg = self._state.config
        out: dict[str, str] = {}
        if cfg is not None:
            for name in (LAST_MODIFIED, DIGEST):
                if cfg.get(name) is not None:
                    out[name] = str(cfg[name])
        return out

    def _get(self, req: ApiRequest) -> Response:
        cfg = self._state.config
        if cfg is None:
            cfg = {key + VERSION_SUFFIX: 0 for key in CONFIG_KEYS}
        headers = self._meta_headers()
        if req.headers.get("accept", "application/json").startswith("application/yaml"):
            body = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True, default_flow_style=False)
            return 200, {"Content-Type": "application/yaml", **headers}, body.encode()
        return 200, {"Content-Type": "application/json", **headers}, json.dumps(cfg, separators=(",", ":")).encode()

    # --- PUT ---------------------------------------------------------------------------------

    async def _put(self, req: ApiRequest) -> Response:
        digest = req.headers.get("x-digest")
        if digest is None:
            return _error(400, "missing digest header")
        data, err = _decode(req)
        if err is not None:
            return _error(400, err)
        state = self._state
        if state.config is not None and state.config.get(DIGEST) == digest:
            # accepted, not modified: the client pushed this state already
            return 204, {}, b""
        if not isinstance(data, Mapping):
            return _error(400, f"invalid request body: expected an object at top level, got {type_name(data, json=True)}")
        checked = await check_document(data, self.plugins, standalone=True, source="PUT /apisix/admin/configs")
        if checked.first_error is not None:
            log.warning("PUT /apisix/admin/configs refused: %s", checked.first_error)
            return _error(400, checked.first_error)
        assert checked.parsed is not None

        new_versions: dict[str, Number] = {}
        for key in CONFIG_KEYS:
            cur = state.version(key)
            given = checked.versions.get(key)
            if given is None:
                new_versions[key] = cur + 1
            elif given < cur:
                return _error(400, f"{key}{VERSION_SUFFIX} must be greater than or equal to ({lua_tostring(cur)})")
            else:
                new_versions[key] = given

        old_cfg = state.config or {}
        snap = self.store.snapshot
        new_cfg: dict[str, Any] = {}
        items: dict[str, dict[str, Mapping[str, Any]]] = {}
        indexes: dict[tuple[str, str], tuple[int, int]] = {}
        for key in CONFIG_KEYS:
            version = new_versions[key]
            unchanged = version == state.version(key)
            pushed = old_cfg.get(key) if unchanged else data.get(key)
            if isinstance(pushed, list) and pushed:
                new_cfg[key] = _copy(pushed)
            new_cfg[key + VERSION_SUFFIX] = version
            if key not in KINDS:
                continue
            if unchanged:
                served = snap.items(key)
                items[key] = {id: res.value for id, res in served.items()}
                indexes.update({(key, id): (res.created_index, res.modified_index) for id, res in served.items()})
            else:
                items[key] = self._rebuild(key, checked, int(version), indexes)
        new_cfg[LAST_MODIFIED] = int(self._clock())
        new_cfg[DIGEST] = digest

        for ref in check_references(items):
            # APISIX: pushes are checked with skip_references_check; the request fails at run time
            log.warning("PUT /apisix/admin/configs: accepted with a dangling reference: %s", ref)
        new_snap = self.store.replace_all(items, indexes=indexes)
        state.config = new_cfg
        log.info("standalone config accepted (digest %s, %s)", digest,
                 f"snapshot version {new_snap.version}" if new_snap is not None else "nothing changed")
        return 202, self._meta_headers(), b""

    def _rebuild(self, kind: str, checked: CheckedDocument, version: int,
                 indexes: dict[tuple[str, str], tuple[int, int]]) -> dict[str, Mapping[str, Any]]:
        """The new items of a rebuilt kind, with their (created, modified) indexes.

        ``modifiedIndex`` is the item's own or the kind's conf_version (config_yaml.lua);
        an item whose given ``modifiedIndex`` equals the served one keeps the served value.
        An item pushed again unchanged and without ``modifiedIndex`` keeps its Resource (and
        with it the workers' compiled state: balancers, health, counters).  Items already
        served keep their place, new ones follow in document order (APISIX's values array).
        """
        assert checked.parsed is not None
        served = self.store.snapshot.items(kind)
        positions = checked.parsed.positions.get(kind, {})
        new: dict[str, Mapping[str, Any]] = {}
        for id, value in checked.parsed.items[kind].items():
            given = checked.modified.get((kind, positions[id]))
            old = served.get(id)
            if old is not None and (old.modified_index == given if given is not None else old.value == value):
                new[id] = old.value
                indexes[(kind, id)] = (old.created_index, old.modified_index)
                continue
            mod = given if given is not None else version
            new[id] = value
            indexes[(kind, id)] = (old.created_index if old is not None else mod, mod)
        ordered = {id: new[id] for id in served if id in new}
        ordered.update((id, v) for id, v in new.items() if id not in ordered)
        return ordered

    # --- validate ----------------------------------------------------------------------------

    async def _validate(self, req: ApiRequest) -> Response:
        if len(req.body) > MAX_VALIDATE_BODY:
            return _error(400, f"invalid request body: request size {len(req.body)} is greater than the "
                               f"maximum size {MAX_VALIDATE_BODY} allowed")
        data, err = _decode(req)
        if err is not None:
            return _error(400, err)
        checked = await check_document(data, self.plugins, standalone=True,
                                       source="POST /apisix/admin/configs/validate")
        return json_response(*validation_answer(checked))


# --- helpers ----------------------------------------------------------------------------------


def _error(status: int, msg: str) -> Response:
    return json_response(status, {"error_msg": msg})


def _decode(req: ApiRequest) -> tuple[Any, str | None]:
    """The body as data, or the ``error_msg`` to answer (standalone.lua / config_validate.lua)."""
    if not req.body:
        return None, "invalid request body: empty request body"
    if req.headers.get("content-type", "application/json").startswith("application/yaml"):
        try:
            text = req.body.decode("utf-8")
            data = load_yaml(text)
        except UnicodeDecodeError as e:
            return None, f"invalid request body: invalid yaml request body: not UTF-8 ({e.reason} at byte {e.start})"
        except ConfigError as e:
            return None, f"invalid request body: invalid yaml request body: {e.message}"
        if not isinstance(data, (Mapping, list)):
            return None, "invalid request body: invalid yaml request body"
        return data, None
    try:
        return json.loads(req.body), None
    except UnicodeDecodeError as e:
        return None, f"invalid request body: not UTF-8 ({e.reason} at byte {e.start})"
    except (ValueError, RecursionError) as e:
        return None, f"invalid request body: {e}"


def _copy(v: Any) -> Any:
    """A JSON-shaped deep copy (what APISIX's shared dict round trip keeps)."""
    return json.loads(json.dumps(v))
