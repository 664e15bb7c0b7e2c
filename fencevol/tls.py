"""TLS for the control connection (and the remote I/O that travels on it):
contexts from PEM files, one-line errors (docs/SECURITY.md, "TLS").

TLS hides and protects the traffic; who may do what is still decided by the
HMAC handshake inside it (cluster key or node credential)."""

from __future__ import annotations

import ssl

from .errors import InvalidArgument


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as exc:
        raise InvalidArgument(f"TLS: {exc.filename} does not exist") from None
    except (ssl.SSLError, OSError) as exc:
        raise InvalidArgument(f"TLS: cannot load certificate {cert_file} / key {key_file}: "
                              f"{getattr(exc, 'reason', None) or exc}") from None
    return ctx


def client_context(ca_file: str) -> ssl.SSLContext:
    """Verifies the server's certificate against ``ca_file`` and its name (or IP
    address) against the address the client dials."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except FileNotFoundError:
        raise InvalidArgument(f"TLS: CA file {ca_file} does not exist") from None
    except (ssl.SSLError, OSError) as exc:
        raise InvalidArgument(f"TLS: cannot load CA file {ca_file}: "
                              f"{getattr(exc, 'reason', None) or exc}") from None
    return ctx
