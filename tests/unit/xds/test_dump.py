"""config_dump: Envoy's shape, and Istio's own filters (whose protos Envoy's API lacks) shown
as such instead of failing the whole dump."""

from __future__ import annotations

from google.protobuf import any_pb2, json_format

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshgate.xds.ads import CDS, LDS
from meshgate.xds.dump import config_dump
from meshgate.xds.state import MeshState


def _listener_with_istio_stats() -> listener_pb2.Listener:
    lst = json_format.ParseDict({
        "name": "10.96.0.1_443", "address": {"socket_address": {"address": "10.96.0.1", "port_value": 443}},
        "bind_to_port": False}, listener_pb2.Listener())
    ch = lst.filter_chains.add()
    stats = ch.filters.add(name="istio.stats")
    # what istiod sends: stats.PluginConfig, a type not in Envoy's API
    stats.typed_config.CopyFrom(any_pb2.Any(type_url="type.googleapis.com/stats.PluginConfig", value=b""))
    tcp = ch.filters.add(name="envoy.filters.network.tcp_proxy")
    tcp.typed_config.Pack(tcp_proxy_pb2.TcpProxy(stat_prefix="x", cluster="outbound|443||kubernetes"))
    return lst


def test_dump_in_envoys_shape_with_unknown_istio_filters() -> None:
    st = MeshState()
    c = json_format.ParseDict({"name": "outbound|443||kubernetes", "type": "STATIC", "connect_timeout": "1s",
                               "load_assignment": {"cluster_name": "outbound|443||kubernetes"}},
                              cluster_pb2.Cluster())
    st.apply(CDS, {c.name: c}, ())
    lst = _listener_with_istio_stats()
    st.apply(LDS, {lst.name: lst}, ())
    dump = config_dump(st, versions={CDS: "7", LDS: "8"})
    types = [x["@type"] for x in dump["configs"]]
    assert types == ["type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
                     "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                     "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                     "type.googleapis.com/envoy.admin.v3.RoutesConfigDump"]
    clusters = dump["configs"][1]
    assert clusters["version_info"] == "7"
    assert clusters["dynamic_active_clusters"][0]["cluster"]["name"] == "outbound|443||kubernetes"
    dl = dump["configs"][2]["dynamic_listeners"][0]
    assert dl["name"] == "10.96.0.1_443" and dl["active_state"]["version_info"] == "8"
    filters = dl["active_state"]["listener"]["filter_chains"][0]["filters"]
    assert filters[0]["typed_config"] == {
        "@type": "type.googleapis.com/google.protobuf.StringValue",
        "value": "not decoded by Meshgate's admin: type.googleapis.com/stats.PluginConfig"}
    assert filters[1]["typed_config"]["cluster"] == "outbound|443||kubernetes"
    # the accepted message itself is untouched (what the next dump and the translation read)
    assert st.listeners[lst.name].message.filter_chains[0].filters[0].typed_config.type_url.endswith(
        "stats.PluginConfig")
    only = config_dump(st, resource="dynamic_listeners")
    assert [x["name"] for x in only["configs"]] == ["10.96.0.1_443"]
