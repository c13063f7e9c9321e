from __future__ import annotations

import pytest

from meshgate.errors import ConfigError
from meshgate.upstream import Node, default_port, parse_addr, parse_nodes


def test_hash_form_basic_and_order():
    nodes = parse_nodes({"10.0.0.1:8080": 5, "example.com:81": 0, "b:1": 1})
    assert nodes == [
        Node("10.0.0.1", 8080, 5),
        Node("example.com", 81, 0),
        Node("b", 1, 1),
    ]
    assert all(n.priority == 0 and n.metadata is None for n in nodes)


def test_hash_form_default_port_by_scheme():
    assert parse_nodes({"a": 1}) == [Node("a", 80, 1)]
    assert parse_nodes({"a": 1}, scheme="https") == [Node("a", 443, 1)]
    assert parse_nodes({"a": 1}, scheme="grpcs") == [Node("a", 443, 1)]
    assert parse_nodes({"a": 1}, scheme="grpc") == [Node("a", 80, 1)]
    assert default_port("http") == 80 and default_port("https") == 443


def test_hash_form_ipv6():
    nodes = parse_nodes({"[::1]:8080": 1, "[fe80::1]": 2, "2001:db8::5": 3}, scheme="https")
    assert nodes == [Node("::1", 8080, 1), Node("fe80::1", 443, 2), Node("2001:db8::5", 443, 3)]
    assert nodes[0].addr == "[::1]:8080"
    assert Node("10.0.0.1", 80, 1).addr == "10.0.0.1:80"


def test_empty_placeholders():
    assert parse_nodes({}) == []
    assert parse_nodes([]) == []


def test_array_form():
    nodes = parse_nodes(
        [
            {"host": "a", "port": 1980, "weight": 2, "priority": 1, "metadata": {"zone": "x"}},
            {"host": "b", "weight": 1},
            {"host": "[::1]", "port": 9, "weight": 0, "priority": -1},
        ],
        scheme="https",
    )
    assert nodes[0].host == "a" and nodes[0].port == 1980 and nodes[0].weight == 2 and nodes[0].priority == 1
    assert dict(nodes[0].metadata) == {"zone": "x"}
    assert nodes[1] == Node("b", 443, 1)
    assert nodes[2] == Node("::1", 9, 0, -1)


def test_nodes_are_hashable_with_metadata():
    (n,) = parse_nodes([{"host": "a", "port": 1, "weight": 1, "metadata": {"k": [1, 2]}}])
    assert n in {n}
    with pytest.raises(TypeError):
        n.metadata["k"] = 3  # read-only view


@pytest.mark.parametrize(
    ("nodes", "pointer"),
    [
        ({"a:80": -1}, "/nodes/a:80"),
        ({"a:80": 1.5}, "/nodes/a:80"),
        ({"a:80": True}, "/nodes/a:80"),
        ({"a:0": 1}, "/nodes/a:0"),
        ({"a:70000": 1}, "/nodes/a:70000"),
        ({"a:x": 1}, "/nodes/a:x"),
        ({":80": 1}, "/nodes/:80"),
        ({"[::1": 1}, "/nodes/[::1"),
        ({"[::1]x": 1}, "/nodes/[::1]x"),
        ({"a/b:1": -1}, "/nodes/a~1b:1"),
        ({"": 1}, "/nodes/"),
        ([{"port": 80, "weight": 1}], "/nodes/0/host"),
        ([{"host": "a", "weight": 1}, {"host": "b"}], "/nodes/1/weight"),
        ([{"host": "a", "weight": "1"}], "/nodes/0/weight"),
        ([{"host": "a", "weight": 1, "port": 0}], "/nodes/0/port"),
        ([{"host": "a", "weight": 1, "port": "80"}], "/nodes/0/port"),
        ([{"host": "a", "weight": 1, "priority": "high"}], "/nodes/0/priority"),
        ([{"host": "a", "weight": 1, "metadata": []}], "/nodes/0/metadata"),
        (["a:80"], "/nodes/0"),
        ("a:80", "/nodes"),
    ],
)
def test_errors_carry_pointer(nodes, pointer):
    with pytest.raises(ConfigError) as exc:
        parse_nodes(nodes)
    assert exc.value.pointer == pointer
    assert pointer in str(exc.value)


def test_pointer_prefix():
    with pytest.raises(ConfigError) as exc:
        parse_nodes({"a:80": -1}, pointer="/upstream/nodes")
    assert exc.value.pointer == "/upstream/nodes/a:80"


def test_parse_addr():
    assert parse_addr("h:1") == ("h", 1)
    assert parse_addr("h", scheme="https") == ("h", 443)
    assert parse_addr("[::]:5") == ("::", 5)
