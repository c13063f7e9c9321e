"""Flags of the two controllers refused with a clear message before anything connects."""

from __future__ import annotations

import pytest

from meshgate.cli import main


@pytest.mark.parametrize("argv, text", [
    (["ingress-controller"], "give one of --admin-url (the gateway's Admin API) or --etcd (the gateways' etcd)"),
    (["ingress-controller", "--admin-url", "http://a:9180", "--etcd", "http://e:2379"], "give one of --admin-url"),
    (["ingress-controller", "--admin-url", "a:9180"], "--admin-url must be an http(s) URL, got 'a:9180'"),
    (["ingress-controller", "--etcd", "ftp://e"], "--etcd[0]: expected http(s)://HOST:PORT, got 'ftp://e'"),
    (["mesh-controller", "--listen", "nowhere"], "--listen: "),
    (["mesh-controller", "--probe-address", "unix:/x"], "--probe-address: expected HOST:PORT"),
])
def test_bad_flags_exit_2_with_the_reason(argv: list[str], text: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert text in err, err
