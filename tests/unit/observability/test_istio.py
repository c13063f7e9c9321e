"""Label values of Istio's standard metrics (meshgate.observability.istio), as istio.stats reports them."""

from __future__ import annotations

from meshgate.observability.istio import LABELS, TCP_LABELS, node_peer, request_labels

ME = node_peer({"NAMESPACE": "default", "SERVICE_ACCOUNT": "bookinfo-productpage", "WORKLOAD_NAME": "productpage-v1",
                "LABELS": {"app": "productpage", "version": "v1"}, "CLUSTER_ID": "Kubernetes"})
REVIEWS = {"host": "reviews.default.svc.cluster.local", "name": "reviews", "namespace": "default"}


def _labels(**kw: object) -> dict[str, str]:
    args: dict[str, object] = {"inbound": False, "me": ME, "service": REVIEWS,
                               "workload": "reviews-v2;default;reviews;v2;Kubernetes", "protocol": "http", "code": 200}
    args.update(kw)
    values = request_labels(**args)  # type: ignore[arg-type]
    assert len(values) == len(LABELS)
    return dict(zip(LABELS, values))


def test_outbound_plaintext() -> None:
    lab = _labels()
    assert lab["reporter"] == "source"
    assert (lab["source_workload"], lab["source_workload_namespace"], lab["source_app"], lab["source_version"],
            lab["source_canonical_service"], lab["source_canonical_revision"], lab["source_cluster"]) == (
        "productpage-v1", "default", "productpage", "v1", "productpage", "v1", "Kubernetes")
    assert (lab["destination_workload"], lab["destination_app"], lab["destination_version"],
            lab["destination_canonical_service"], lab["destination_canonical_revision"],
            lab["destination_cluster"]) == ("reviews-v2", "reviews", "v2", "reviews", "v2", "Kubernetes")
    assert (lab["destination_service"], lab["destination_service_name"], lab["destination_service_namespace"]) == (
        "reviews.default.svc.cluster.local", "reviews", "default")
    # principals are the certificates' SANs: none on a plaintext connection
    assert lab["source_principal"] == lab["destination_principal"] == "unknown"
    assert lab["connection_security_policy"] == "unknown"
    assert (lab["request_protocol"], lab["response_code"], lab["response_flags"]) == ("http", "200", "-")


def test_inbound_plaintext_and_mtls() -> None:
    lab = _labels(inbound=True, service={"host": "productpage.default.svc.cluster.local",
                                         "name": "productpage", "namespace": "default"}, workload=None)
    assert lab["reporter"] == "destination"
    assert lab["source_workload"] == lab["source_app"] == lab["source_principal"] == "unknown"
    assert lab["destination_workload"] == "productpage-v1" and lab["destination_principal"] == "unknown"
    assert lab["destination_service"] == "productpage.default.svc.cluster.local"
    assert lab["connection_security_policy"] == "none"
    lab = _labels(inbound=True, service=None, workload=None, mtls=True,
                  peer_principal="spiffe://cluster.local/ns/default/sa/gw")
    assert lab["source_principal"] == "spiffe://cluster.local/ns/default/sa/gw"
    assert lab["destination_principal"] == "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
    assert lab["connection_security_policy"] == "mutual_tls"


def test_outbound_mtls_and_unknowns() -> None:
    lab = _labels(mtls=True, peer_principal="spiffe://cluster.local/ns/default/sa/bookinfo-reviews")
    assert lab["source_principal"] == "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
    assert lab["destination_principal"] == "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
    # a ServiceEntry's service is named after its host by istiod; no endpoint chosen (a local reply)
    lab = _labels(service={"host": "ratings.default.svc.cluster.local", "name": "ratings.default.svc.cluster.local",
                           "namespace": "default"}, workload=None, code=500, flags="FI")
    assert lab["destination_service_name"] == "ratings.default.svc.cluster.local"
    assert lab["destination_workload"] == lab["destination_app"] == "unknown"
    assert lab["destination_workload_namespace"] == "default"
    assert (lab["response_code"], lab["response_flags"]) == ("500", "FI")
    lab = _labels(service=None, workload=None)
    assert lab["destination_service"] == lab["destination_service_name"] == "unknown"


def test_tcp_labels_drop_the_http_ones() -> None:
    assert set(LABELS) - set(TCP_LABELS) == {"request_protocol", "response_code", "grpc_response_status"}
