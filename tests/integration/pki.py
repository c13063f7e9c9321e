"""A throwaway PKI for TLS tests: CAs and leaf certificates made with the openssl CLI."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["PKI", "make_ca", "make_leaf", "make_pki"]


def _openssl(d: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=30)


def _key_args(rsa: bool) -> list[str]:
    return ["-newkey", "rsa:2048"] if rsa else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]


def make_ca(d: Path, name: str, cn: str) -> None:
    _openssl(d, "req", "-x509", *_key_args(False), "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt",
             "-days", "2", "-subj", f"/CN={cn}")


def make_leaf(d: Path, name: str, ca: str, subj: str, *, dns: tuple[str, ...] = (), client: bool = False,
          rsa: bool = False, serial: str | None = None) -> None:
    _openssl(d, "req", "-new", *_key_args(rsa), "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", subj)
    ext = ["basicConstraints=CA:FALSE", f"extendedKeyUsage={'clientAuth' if client else 'serverAuth'}"]
    if dns:
        ext.append("subjectAltName=" + ",".join(f"DNS:{n}" for n in dns))
    (d / f"{name}.ext").write_text("\n".join(ext) + "\n")
    _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-out",
             f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", *(["-set_serial", serial] if serial else []))


class PKI:
    def __init__(self, d: Path) -> None:
        self.dir = d

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def pem(self, name: str) -> str:
        return (self.dir / name).read_text()

    def pair(self, name: str) -> dict[str, str]:
        return {"cert": self.pem(f"{name}.crt"), "key": self.pem(f"{name}.key")}


def make_pki(d: Path, leaves: dict[str, tuple[str, ...]]) -> PKI:
    """A CA ("ca") and one server certificate per name, for those DNS names (CN: the first)."""
    make_ca(d, "ca", "Meshgate Test CA")
    for name, dns in leaves.items():
        make_leaf(d, name, "ca", f"/CN={dns[0]}", dns=dns)
    return PKI(d)
