"""Test TLS certificates (openssl): a CA and a server certificate signed by it."""

from __future__ import annotations

import subprocess


def make_ca(d, name: str) -> str:
    """A throw-away CA in directory ``d``; returns its certificate's path."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.pem", "-days", "2",
                    "-subj", f"/CN={name}"], check=True, capture_output=True)
    return f"{d}/{name}.pem"


def make_server_cert(d, ca: str) -> tuple[str, str]:
    """A server certificate for 127.0.0.1/localhost signed by CA ``ca`` (made by
    make_ca in ``d``); returns (certificate, key) paths."""
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    subprocess.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", f"{d}/srv.key", "-out", f"{d}/srv.csr", "-subj", "/CN=vserver"],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", f"{d}/srv.csr", "-CA", f"{d}/{ca}.pem",
                    "-CAkey", f"{d}/{ca}.key", "-CAcreateserial", "-out", f"{d}/srv.pem", "-days", "2",
                    "-extfile", f"{d}/ext"], check=True, capture_output=True)
    return f"{d}/srv.pem", f"{d}/srv.key"
