"""``GET :15000/config_dump`` in Envoy's admin shape (``envoy.admin.v3.ConfigDump``).

Tools that read Envoy's dump (``istioctl proxy-config``, Kiali, scripts diffing two
proxies) read Meshgate's: the accepted resources as they were received, per type, with
their version and update time, the last rejected update per type as ``error_state``, and
the EDS section only with ``?include_eds`` (as Envoy).  JSON keys keep the proto field
names, as Envoy prints them.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Mapping

from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.any_pb2 import Any as AnyMsg
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.wrappers_pb2 import StringValue

from envoy.admin.v3 import config_dump_pb2, config_dump_shared_pb2 as shared

from .ads import CDS, EDS, LDS, RDS
from .state import Accepted, MeshState

__all__ = ["config_dump"]

_SECTIONS = ("BootstrapConfigDump", "ClustersConfigDump", "EndpointsConfigDump", "ListenersConfigDump",
             "RoutesConfigDump")


def _ts(t: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


def _pack(msg: Any) -> AnyMsg:
    a = AnyMsg()
    a.Pack(_printable(msg))
    return a


_loaded = False


def _load_types() -> None:
    """Import every Envoy extension's messages once, so that the typed_config of any filter
    istiod sends prints as JSON (json_format needs the message type of each Any)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for pkg_name in ("envoy.extensions", "envoy.config", "udpa.type", "xds.type"):
        try:
            pkg = importlib.import_module(pkg_name)
        except ImportError:
            continue
        for mod in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
            if mod.name.endswith("_pb2"):
                try:
                    importlib.import_module(mod.name)
                except Exception:   # a module that does not import is a type we print opaque
                    continue


def _known(type_url: str) -> bool:
    try:
        descriptor_pool.Default().FindMessageTypeByName(type_url.rsplit("/", 1)[-1])
        return True
    except KeyError:
        return False


def _printable(msg: Message) -> Message:
    """``msg``, or a copy whose Any values of unknown types (Istio's own filters, whose protos
    Envoy's API does not carry) say so as a string instead of failing the whole dump."""
    if not _has_unknown(msg):
        return msg
    out = type(msg)()
    out.CopyFrom(msg)
    _replace_unknown(out)
    return out


def _children(msg: Message) -> list[Message]:
    """The message-typed values directly inside ``msg`` (singular, repeated and map values)."""
    out: list[Message] = []
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        if fd.message_type.GetOptions().map_entry:
            if fd.message_type.fields_by_name["value"].message_type is not None:
                out.extend(value.values())
        elif fd.is_repeated:
            out.extend(value)
        else:
            out.append(value)
    return out


def _unpacked(a: AnyMsg) -> Message:
    desc = descriptor_pool.Default().FindMessageTypeByName(a.type_url.rsplit("/", 1)[-1])
    inner: Message = message_factory.GetMessageClass(desc)()
    a.Unpack(inner)
    return inner


def _has_unknown(msg: Message) -> bool:
    if isinstance(msg, AnyMsg):
        return not _known(msg.type_url) or _has_unknown(_unpacked(msg))
    return any(_has_unknown(v) for v in _children(msg))


def _replace_unknown(msg: Message) -> None:
    for v in _children(msg):
        if not isinstance(v, AnyMsg):
            _replace_unknown(v)
        elif not _known(v.type_url):
            v.Pack(StringValue(value=f"not decoded by Meshgate's admin: {v.type_url}"))
        else:
            inner = _unpacked(v)
            if _has_unknown(inner):
                _replace_unknown(inner)
                v.Pack(inner)


def config_dump(state: MeshState, *, node: Any = None, versions: Mapping[str, str] | None = None,
                errors: Mapping[str, str] | None = None, include_eds: bool = False,
                resource: str | None = None) -> dict[str, Any]:
    """The dump as a JSON-able dict.  ``versions``: the accepted version per type URL;
    ``errors``: the last NACK detail per type URL; ``resource``: only one section
    (``dynamic_active_clusters``, ``dynamic_listeners``, ... as Envoy's ``?resource=``)."""
    _load_types()
    versions = versions or {}
    errors = errors or {}
    configs: list[AnyMsg] = []

    def ver(t: str, a: Accepted) -> str:
        return a.version or versions.get(t, "")

    boot = config_dump_pb2.BootstrapConfigDump()
    if node is not None:
        boot.bootstrap.node.CopyFrom(node)
    configs.append(_pack(boot))

    cl = shared.ClustersConfigDump(version_info=versions.get(CDS, ""))
    for name, a in state.clusters.items():
        d = cl.dynamic_active_clusters.add(version_info=ver(CDS, a))
        d.cluster.Pack(_printable(a.message))
        d.last_updated.CopyFrom(_ts(a.updated))
    configs.append(_pack(cl))

    if include_eds:
        ep = shared.EndpointsConfigDump()
        for name, a in state.endpoints.items():
            e = ep.dynamic_endpoint_configs.add(version_info=ver(EDS, a))
            e.endpoint_config.Pack(_printable(a.message))
            e.last_updated.CopyFrom(_ts(a.updated))
        configs.append(_pack(ep))

    ls = shared.ListenersConfigDump(version_info=versions.get(LDS, ""))
    for name, a in state.listeners.items():
        dl = ls.dynamic_listeners.add(name=name)
        # a listener waiting for its route configurations shows as Envoy shows it: warming
        st = dl.warming_state if name in state.warming else dl.active_state
        st.version_info = ver(LDS, a)
        st.listener.Pack(_printable(a.message))
        st.last_updated.CopyFrom(_ts(a.updated))
    if errors.get(LDS):
        dl = ls.dynamic_listeners.add(name="")
        dl.error_state.details = errors[LDS]
    configs.append(_pack(ls))

    rs = shared.RoutesConfigDump()
    for name, a in state.routes.items():
        r = rs.dynamic_route_configs.add(version_info=ver(RDS, a))
        r.route_config.Pack(_printable(a.message))
        r.last_updated.CopyFrom(_ts(a.updated))
    configs.append(_pack(rs))

    dump = config_dump_pb2.ConfigDump(configs=configs)
    out: dict[str, Any] = json_format.MessageToDict(dump, preserving_proto_field_name=True)
    if resource:
        picked = []
        for section in out.get("configs", []):
            for item in section.get(resource, []):
                picked.append(item)
        return {"configs": picked}
    return out
