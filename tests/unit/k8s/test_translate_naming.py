"""Names, ids and labels (meshgate.k8s.translate.naming)."""

from __future__ import annotations

import re
import zlib

from meshgate.k8s.translate.naming import (DESC, consumer_name, fit_name, gen_id, labels, route_name,
                                           ssl_name, stream_route_name, upstream_name)
from meshgate.model.validate import validate_item


def test_gen_id_is_crc32_ieee_lower_hex() -> None:
    assert gen_id("default_httpbin-route_r1") == format(zlib.crc32(b"default_httpbin-route_r1"), "x")
    assert gen_id("a") == "e8b7be43"  # Go: fmt.Sprintf("%x", crc32.ChecksumIEEE([]byte("a")))
    assert gen_id("") == ""
    assert gen_id("x") == gen_id("x")


def test_names_as_aic() -> None:
    assert route_name("ns", "ar", "rule1") == "ns_ar_rule1"
    assert upstream_name("ns", "ar", 0, 2) == "ns_ar_0_2"
    assert stream_route_name("ns", "ar", "s", "UDP") == "ns_ar_s_UDP"
    assert stream_route_name("ns", "ar", "s", "") == "ns_ar_s_TCP"
    assert ssl_name("ApisixTls", "ns", "t") == "ApisixTls_ns_t"
    assert consumer_name("ns", "jack") == "ns_jack"
    assert DESC == "Created by apisix-ingress-controller, DO NOT modify it manually"


def test_long_and_invalid_names_fixed() -> None:
    long = "x" * 300
    assert fit_name(long) != long and len(fit_name(long)) == 256 and fit_name(long).endswith(gen_id(long))
    assert fit_name("short") == "short"
    assert consumer_name("ns", "jack.v1") == "ns_jack_v1"
    assert re.fullmatch(r"[a-zA-Z0-9_-]{256}", consumer_name("n" * 63, "y" * 253))


def test_labels() -> None:
    got = labels("ApisixRoute", "default", "r", object_labels={"app": "web", "blank": "", "k8s/kind": "evil"})
    assert got == {"app": "web", "k8s/kind": "ApisixRoute", "k8s/namespace": "default", "k8s/name": "r",
                   "k8s/controller-name": "apisix.apache.org/apisix-ingress-controller",
                   "manager-by": "apisix-ingress-controller"}
    custom = labels("ApisixTls", "ns", "t", controller_name="example.com/mine")
    assert custom["k8s/controller-name"] == "example.com/mine"
    weird = labels("ApisixRoute", "ns", "n" * 300, controller_name="has space")
    assert len(weird["k8s/name"]) == 256 and weird["k8s/controller-name"] == "has_space"
    assert validate_item("upstreams", {"nodes": [], "labels": weird}) == []
