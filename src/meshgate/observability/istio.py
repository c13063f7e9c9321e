"""Istio's standard metrics, as the ``istio.stats`` filter of an Envoy sidecar reports them.

Kiali draws its graph and Grafana's Istio dashboards read these series: same names, same
labels, same meaning (https://istio.io/latest/docs/reference/config/metrics/).  A sidecar
reports each request twice in a mesh: the client's sidecar with ``reporter="source"``
(outbound clusters), the server's with ``reporter="destination"`` (inbound clusters).  The
proxy's own side of the labels comes from its node metadata (``WORKLOAD_NAME``,
``NAMESPACE``, ``LABELS``, ``CLUSTER_ID``); the other side from what istiod puts on the
cluster (``istio.services``) and on the chosen endpoint (``istio.workload``).  Without
peer metadata exchange the caller of an inbound request is ``unknown``, as Envoy reports
it when the peer sent no metadata.

``source_principal`` / ``destination_principal`` are the SPIFFE identities of the two ends
*of an mTLS connection* (Istio's metric reference: "set when peer authentication is used";
istio.stats reads them from the TLS session's certificates): on a plaintext connection both
are ``unknown``, however the workload's service account is known.  The proxy's own identity
(what its certificate would say) is kept on :class:`IstioPeer` as ``identity`` and only
reported when the caller says the connection was mutual TLS.

Recording is one counter and three histogram updates into the worker's registry; the
label tuple of a (route, endpoint) pair is built once and cached.
"""

from __future__ import annotations

from typing import Any, Mapping

from .metrics import REGISTRY

__all__ = ["LABELS", "TCP_LABELS", "IstioPeer", "node_peer", "record_request", "request_labels", "tcp_labels",
           "REQUESTS", "DURATION", "REQUEST_BYTES", "RESPONSE_BYTES", "TCP_SENT", "TCP_RECEIVED", "TCP_OPENED",
           "TCP_CLOSED"]

LABELS = ("reporter", "source_workload", "source_workload_namespace", "source_principal", "source_app",
          "source_version", "source_canonical_service", "source_canonical_revision", "source_cluster",
          "destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
          "destination_version", "destination_service", "destination_service_name",
          "destination_service_namespace", "destination_canonical_service", "destination_canonical_revision",
          "destination_cluster", "request_protocol", "response_code", "grpc_response_status", "response_flags",
          "connection_security_policy")
TCP_LABELS = tuple(n for n in LABELS if n not in ("request_protocol", "response_code", "grpc_response_status"))

# Istio's default buckets (milliseconds / bytes)
_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000,
       3600000)
_BYTES = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000)

_KEEP = ("reporter", "response_code")
REQUESTS = REGISTRY.counter("istio_requests_total", "Requests processed by the proxy", LABELS,
                            keep_on_overflow=_KEEP)
DURATION = REGISTRY.histogram("istio_request_duration_milliseconds", "Request duration", LABELS, buckets=_MS,
                              keep_on_overflow=_KEEP)
REQUEST_BYTES = REGISTRY.histogram("istio_request_bytes", "Request body size", LABELS, buckets=_BYTES,
                                   keep_on_overflow=_KEEP)
RESPONSE_BYTES = REGISTRY.histogram("istio_response_bytes", "Response body size", LABELS, buckets=_BYTES,
                                    keep_on_overflow=_KEEP)
TCP_SENT = REGISTRY.counter("istio_tcp_sent_bytes_total", "Bytes sent during response handling of a TCP connection",
                            TCP_LABELS, keep_on_overflow=("reporter",))
TCP_RECEIVED = REGISTRY.counter("istio_tcp_received_bytes_total",
                                "Bytes received during request handling of a TCP connection", TCP_LABELS,
                                keep_on_overflow=("reporter",))
TCP_OPENED = REGISTRY.counter("istio_tcp_connections_opened_total", "TCP connections opened", TCP_LABELS,
                              keep_on_overflow=("reporter",))
TCP_CLOSED = REGISTRY.counter("istio_tcp_connections_closed_total", "TCP connections closed", TCP_LABELS,
                              keep_on_overflow=("reporter",))

UNKNOWN = "unknown"


class IstioPeer:
    """One side of a request: a workload and the service it was reached as."""

    __slots__ = ("workload", "namespace", "principal", "app", "version", "canonical_service",
                 "canonical_revision", "cluster", "identity")

    def __init__(self, *, workload: str = UNKNOWN, namespace: str = UNKNOWN, principal: str = UNKNOWN,
                 app: str = UNKNOWN, version: str = UNKNOWN, canonical_service: str = UNKNOWN,
                 canonical_revision: str = UNKNOWN, cluster: str = UNKNOWN, identity: str = "") -> None:
        self.identity = identity   # SPIFFE id of the workload's certificate ("" if unknown)
        self.workload = workload
        self.namespace = namespace
        self.principal = principal
        self.app = app
        self.version = version
        self.canonical_service = canonical_service
        self.canonical_revision = canonical_revision
        self.cluster = cluster

    def labels(self) -> tuple[str, ...]:
        return (self.workload, self.namespace, self.principal, self.app, self.version, self.canonical_service,
                self.canonical_revision, self.cluster)


def node_peer(metadata: Mapping[str, Any]) -> IstioPeer:
    """This proxy's workload from its node metadata (what istio-agent puts there)."""
    labels = metadata.get("LABELS") or {}
    if not isinstance(labels, Mapping):
        labels = {}
    app = str(labels.get("app") or labels.get("app.kubernetes.io/name") or UNKNOWN)
    version = str(labels.get("version") or labels.get("app.kubernetes.io/version") or UNKNOWN)
    ns = str(metadata.get("NAMESPACE") or UNKNOWN)
    sa = metadata.get("SERVICE_ACCOUNT")
    return IstioPeer(
        workload=str(metadata.get("WORKLOAD_NAME") or metadata.get("NAME") or UNKNOWN), namespace=ns,
        identity=f"spiffe://cluster.local/ns/{ns}/sa/{sa}" if sa else "", app=app, version=version,
        canonical_service=str(labels.get("service.istio.io/canonical-name") or (app if app != UNKNOWN else UNKNOWN)),
        canonical_revision=str(labels.get("service.istio.io/canonical-revision")
                               or (version if version != UNKNOWN else "latest")),
        cluster=str(metadata.get("CLUSTER_ID") or "Kubernetes"))


def _endpoint_peer(workload: Any, service: Mapping[str, Any] | None) -> IstioPeer:
    if isinstance(workload, str):
        parts = workload.split(";")
        workload = dict(zip(("name", "namespace", "canonical_service", "canonical_revision", "cluster_id"), parts))
    w = workload if isinstance(workload, Mapping) else {}
    ns = str(w.get("namespace") or (service or {}).get("namespace") or UNKNOWN)
    cs = str(w.get("canonical_service") or UNKNOWN)
    cr = str(w.get("canonical_revision") or UNKNOWN)
    return IstioPeer(workload=str(w.get("name") or UNKNOWN), namespace=ns, app=cs, version=cr,
                     canonical_service=cs, canonical_revision=cr, cluster=str(w.get("cluster_id") or UNKNOWN))


def request_labels(*, inbound: bool, me: IstioPeer, service: Mapping[str, Any] | None, workload: Any,
                   protocol: str, code: int, flags: str = "-", grpc_status: str = "", mtls: bool = False,
                   peer_principal: str = "") -> tuple[str, ...]:
    """The label values of one request, in :data:`LABELS` order.

    ``mtls``: the connection to the peer (downstream when ``inbound``, else upstream) was mutual
    TLS; ``peer_principal`` is then the SAN of the peer's certificate."""
    svc = service or {}
    if inbound:
        src, dst = IstioPeer(), me
    else:
        src, dst = me, _endpoint_peer(workload, svc)
    host = str(svc.get("host") or UNKNOWN)
    mine = (me.identity or UNKNOWN) if mtls else UNKNOWN
    theirs = (peer_principal or UNKNOWN) if mtls else UNKNOWN
    src_principal, dst_principal = (theirs, mine) if inbound else (mine, theirs)
    s = src.labels()
    d = dst.labels()
    # connection_security_policy: Envoy reports "unknown" on the client side; on the server
    # side "mutual_tls" or "none" (plaintext)
    return ("destination" if inbound else "source", s[0], s[1], src_principal, *s[3:], d[0], d[1], dst_principal,
            d[3], d[4], host, str(svc.get("name") or UNKNOWN), str(svc.get("namespace") or UNKNOWN),
            dst.canonical_service, dst.canonical_revision, dst.cluster, protocol, str(code), grpc_status, flags,
            ("mutual_tls" if mtls else "none") if inbound else "unknown")


_TCP_INDEX = tuple(i for i, n in enumerate(LABELS) if n in TCP_LABELS)


def tcp_labels(*, inbound: bool, me: IstioPeer, service: Mapping[str, Any] | None, workload: Any) -> tuple[str, ...]:
    """The label values of a TCP connection (``istio_tcp_*``), in :data:`TCP_LABELS` order."""
    full = request_labels(inbound=inbound, me=me, service=service, workload=workload, protocol="tcp", code=0)
    return tuple(full[i] for i in _TCP_INDEX)


def record_request(labels: tuple[str, ...], duration_ms: float, req_bytes: int, resp_bytes: int) -> None:
    REQUESTS.inc(labels)
    DURATION.observe(labels, duration_ms)
    REQUEST_BYTES.observe(labels, float(req_bytes))
    RESPONSE_BYTES.observe(labels, float(resp_bytes))
